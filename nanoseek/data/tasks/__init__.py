"""Verifiable tasks: generated reasoning problems with exact checkers and worked solutions, and your own.

    from nanoseek.data import tasks
    problems = tasks.generate("countdown", "train", 1000, difficulty="1-3", seed=0)
    p = problems[0]; p.prompt, p.answer            # "Make 46 from 3, 7, 25 using + - * / ...", "25+7*3"
    tasks.check_answer(p, "7*3+25")                # True: any valid expression counts
    tasks.worked_solution(p)                       # Solution(reasoning="try 25+7=32, ...", answer="25+7*3")
    tasks.write_sft(problems, "sft.jsonl")         # chat JSONL with reasoning, for SFT

Built-in tasks (see `TASKS`, `nanoseek tasks list`): arithmetic, countdown, sort, digit_sum, units,
word_problem; "custom" holds problems read from JSONL. A problem's split (train/val/test) follows from its
canonical key alone, so the splits never share a problem whatever the seed, size or difficulty.
"""

from nanoseek.data.tasks.checkers import Checker, find_number, make_checker, parse_number
from nanoseek.data.tasks.countdown import ExpressionError
from nanoseek.data.tasks.drills import drill_documents
from nanoseek.data.tasks.countdown import evaluate as evaluate_countdown
from nanoseek.data.tasks.files import (PROMPT_STYLES, chat_messages, earlier_problems, earlier_turns, plain_prompt, problem_from_record,
                                       problem_record, prompt_ids, read_jsonl, read_problems, render_text, sft_record,
                                       write_documents, write_problems, write_sft, write_text)
from nanoseek.data.tasks.problem import SPLITS, Problem, Solution, Task, split_of
from nanoseek.data.tasks.registry import (TASKS, answer_key, check_answer, check_disjoint, generate, generate_up_to, generated_tasks,
                                          get_task, parse_difficulty, problem_set, worked_solution)
from nanoseek.data.tasks.wordings import WORDING_SETS

__all__ = ["Checker", "find_number", "make_checker", "parse_number", "ExpressionError", "evaluate_countdown",
           "drill_documents", "PROMPT_STYLES", "chat_messages", "earlier_problems", "earlier_turns", "plain_prompt", "prompt_ids", "problem_from_record",
           "problem_record", "read_jsonl", "read_problems", "render_text", "sft_record", "write_documents",
           "write_problems", "write_sft", "write_text", "SPLITS", "Problem", "Solution", "Task", "split_of", "TASKS",
           "answer_key", "check_answer", "check_disjoint", "generate", "generate_up_to", "generated_tasks", "get_task", "parse_difficulty",
           "problem_set", "worked_solution", "WORDING_SETS"]
