"""The chat page in a real headless browser (Debian's chromium, driven by Playwright): type a message, see the
streamed answer with its reasoning open while it streams and folded once the answer starts, markdown with a
code block and the model's HTML shown as text; stop an answer and see the server abort it; reload and see
the conversation; edit-and-resend, regenerate, clear. Nothing is loaded from another host.

The model is the taught tiny checkpoint (tests/serve_helpers.py), so what it says is known: "hi" gets
reasoning then markdown, "count" gets an endless " ab ab". Each engine step is paced by 25 ms so the page's
states while streaming are observable. With NANOSEEK_SCREENSHOTS=DIR set, the test saves the page's
screenshots there (docs/ holds the ones from the last run).
"""

import os
import re
import time
from pathlib import Path

import pytest

from nanoseek.engine import Engine
from serve_helpers import ANSWER, REASONING, running, taught_checkpoint, wait_idle

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright never downloads a browser
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

# Records the newest answer's state at every DOM change: is the reasoning block open, what it and the answer hold.
RECORDER = """() => {
  window.__states = [];
  new MutationObserver(() => {
    const all = document.querySelectorAll('.msg.assistant');
    const m = all[all.length - 1];
    if (!m) return;
    const d = m.querySelector('details.reasoning');
    window.__states.push({reasoning: m.querySelector('.thoughts').textContent,
                          content: m.querySelector('.content').textContent, open: d.open, hidden: d.hidden});
  }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true,
                                                   attributes: true});
}"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        msg = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # a persistent context on a fresh, empty profile folder: nothing from another run
        ctx = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                   executable_path=CHROMIUM, args=FLAGS, headless=True,
                                                   viewport={"width": 1000, "height": 760})
        yield ctx
        ctx.close()


@pytest.fixture(scope="module")
def site():
    engine = Engine.load(taught_checkpoint())
    step = engine.step

    def paced():
        time.sleep(0.025)
        return step()

    engine.step = paced
    with running(engine, model_name="nanoseek-tiny") as server:
        yield server, engine


def _assistant_texts(page):
    return page.eval_on_selector_all(".msg.assistant .content", "els => els.map(e => e.textContent)")


def _shot(page, name):
    folder = os.environ.get("NANOSEEK_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def test_the_chat_page_in_a_browser(browser, site):
    server, engine = site
    page = browser.new_page()
    problems, elsewhere = [], []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))  # alert() = XSS
    page.on("request", lambda r: None if r.url.startswith(server.url) or r.url.startswith("data:")
            else elsewhere.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent === 'nanoseek-tiny'")  # a function:
    # the page's CSP forbids eval, which Playwright uses for bare expressions

    # settings: greedy, room for a long answer
    page.click("#settings-toggle")
    for sel, value in (("#temperature", "0"), ("#max-tokens", "300")):
        page.fill(sel, value)
        page.dispatch_event(sel, "change")
    page.click("#settings-toggle")

    # 1. a streamed answer: reasoning open while it streams, folded when the answer starts
    page.evaluate(RECORDER)
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant .stats:has-text('tok/s')", timeout=30_000)
    states = page.evaluate("window.__states")
    assert any(s["reasoning"] and not s["content"] and s["open"] for s in states), states
    assert all(not s["open"] for s in states if s["content"]), states
    assert states[-1]["reasoning"] == REASONING
    answer = page.locator(".msg.assistant").last
    assert answer.locator("details.reasoning").evaluate("d => d.open") is False
    assert answer.locator("details.reasoning summary").inner_text().startswith("Reasoning")
    assert answer.locator(".thoughts").text_content() == REASONING
    assert answer.locator(".content pre code").inner_text() == "print(1 < 2)"
    assert answer.locator(".content strong").inner_text() == "world"
    # the model's own HTML is text on the page, never markup
    assert "<script>alert(1)</script>" in answer.locator(".content").inner_text()
    assert answer.locator(".content script").count() == 0
    assert re.search(r"^\d+ tokens · [\d.]+ tok/s · first token [\d.]+ s$", answer.locator(".stats").inner_text())
    _shot(page, "chat.png")
    answer.locator("details.reasoning summary").click()
    assert answer.locator("details.reasoning").evaluate("d => d.open") is True
    _shot(page, "chat-reasoning.png")

    # 2. stop: the server aborts the request and frees its row
    aborted = engine.scheduler.counters.aborted
    page.fill("#input", "count")
    page.press("#input", "Enter")
    page.wait_for_function("() => { const m = document.querySelectorAll('.msg.assistant .content');"
                           " return m.length === 2 && m[1].textContent.includes('ab ab ab'); }", timeout=30_000)
    assert engine.scheduler.num_running == 1
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    assert wait_idle(engine), "the server kept generating after the page pressed stop"
    assert engine.scheduler.counters.aborted == aborted + 1
    page.wait_for_selector(".msg.assistant >> nth=1 >> .stats:has-text('stopped')")
    stopped_text = _assistant_texts(page)[1]
    _shot(page, "chat-stopped.png")
    assert 0 < stopped_text.count("ab") < 300

    # 3. reload: the conversation is still there (localStorage), the reasoning folded
    page.reload()
    page.wait_for_selector(".msg.assistant >> nth=1")
    assert page.eval_on_selector_all(".msg .content", "els => els.length") == 4
    assert page.locator(".msg.user .content").all_inner_texts() == ["hi", "count"]
    assert _assistant_texts(page)[1] == stopped_text
    first = page.locator(".msg.assistant").first
    assert first.locator(".thoughts").text_content() == REASONING
    assert first.locator("details.reasoning").evaluate("d => d.open") is False
    assert "<script>alert(1)</script>" in first.locator(".content").inner_text()

    # 4. edit-and-resend: editing the first message drops the turns after it and answers it again
    page.locator(".msg.user >> nth=0 >> .edit").click()
    page.fill(".edit-box textarea", "hi")
    page.click(".edit-box .save-send")
    page.wait_for_selector(".msg.assistant .stats:has-text('tok/s')", timeout=30_000)
    assert page.locator(".msg.user .content").all_inner_texts() == ["hi"]
    assert page.locator(".msg.assistant").count() == 1
    assert page.locator(".msg.assistant .thoughts").text_content() == REASONING

    # 5. regenerate the last answer (greedy: the same answer again, in place)
    requests_before = engine.scheduler.counters.requests
    page.click(".regenerate")
    page.wait_for_function("() => document.querySelectorAll('.msg.assistant').length === 1 && "
                           "document.querySelector('#stop').hidden && "
                           "document.querySelector('.msg.assistant .stats').textContent.includes('tok/s')",
                           timeout=30_000)
    assert engine.scheduler.counters.requests == requests_before + 1
    assert page.locator(".msg.assistant .thoughts").text_content() == REASONING

    # 6. clear, and it stays cleared after a reload
    page.click("#clear")
    assert page.locator(".msg").count() == 0
    page.reload()
    page.wait_for_selector(".empty")
    assert page.locator(".msg").count() == 0

    # 7. an answer cut off inside its reasoning says so, instead of an empty box
    page.click("#settings-toggle")
    page.fill("#max-tokens", "6")
    page.dispatch_event("#max-tokens", "change")
    page.click("#settings-toggle")
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant >> .stats:has-text('max tokens reached')", timeout=30_000)
    cut = page.locator(".msg.assistant").last
    thoughts = cut.locator(".thoughts").text_content()
    assert thoughts and REASONING.startswith(thoughts), (thoughts, cut.locator(".content").inner_text())
    assert cut.locator(".content").inner_text() == (
        "(no answer: max tokens reached while reasoning; raise Max tokens in Settings)")

    assert not problems, problems
    assert not elsewhere, f"the page asked other hosts for {elsewhere}"
    assert wait_idle(engine)
    page.close()
