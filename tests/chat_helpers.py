"""Shared by the SFT and evaluation tests: a BPE tokenizer trained on task text, a tiny random checkpoint that
carries it, and SFT data written by the task generator."""

from __future__ import annotations

from pathlib import Path

import torch

import nanoseek
from nanoseek.config import preset
from nanoseek.data import tasks
from nanoseek.tokenizer import Tokenizer
from nanoseek.train.pretrain import write_tokenizer_files


def build_tokenizer(root: Path) -> Tokenizer:
    problems = [p for name in ("arithmetic", "sort", "word_problem") for p in tasks.generate(name, "train", 150, "1-3")]
    tok = Tokenizer.train([tasks.render_text(p) for p in problems], 512)
    tok.save(root / "tok")
    return Tokenizer.load(root / "tok")


def build_checkpoint(root: Path, tok: Tokenizer, seed: int = 0, **overrides) -> Path:
    """A random tiny model saved as a checkpoint directory with the tokenizer and generation_config.json."""
    torch.manual_seed(seed)
    cfg = preset("tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                 pad_token_id=tok.pad_id, **overrides)
    path = root / "ckpt"
    nanoseek.save_model(nanoseek.DeepSeekV3(cfg), path)
    write_tokenizer_files(tok, path)
    return path


def build_sft_data(path: Path, n: int = 120, split: str = "train") -> Path:
    """Arithmetic and sorting conversations with worked reasoning, mixed lengths (levels 1-3)."""
    problems = tasks.generate("arithmetic", split, n, "1-3") + tasks.generate("sort", split, n // 2, "1-2")
    tasks.write_sft(problems, path)
    return path
