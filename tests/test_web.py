"""The web chat page in headless Chromium (driven by Playwright's Python package with the system Chromium):
it sends a message, shows the streamed answer with the reasoning folded, keeps the conversation across turns and
page reloads, and switches thinking off.

Needs the Debian `chromium` package (or KEXAONE_CHROMIUM=/path/to/chrome) and the `playwright` pip package; the
test is skipped, saying which is missing, otherwise.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from kexaone.engine import Engine
from kexaone.engine.app import create_app
from kexaone.engine.server import ServerSettings
from test_engine_models import ServerThread, SwitchableProcessor, byte_tokenizer, one_thread, tiny_model

MODEL = "kexaone-web"
CHROMIUM = os.environ.get("KEXAONE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

sync_api = pytest.importorskip("playwright.sync_api", reason="pip package 'playwright' is not installed")
if CHROMIUM is None:
    pytest.skip("Chromium not found (apt-get install chromium, or set KEXAONE_CHROMIUM)", allow_module_level=True)


@pytest.fixture(scope="module")
def served():
    with one_thread():
        tok = byte_tokenizer()
        proc = SwitchableProcessor()
        engine = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=[proc])
        server = ServerThread(create_app(engine, ServerSettings(model_name=MODEL, max_prompt_tokens=2000,
                                                                max_tokens=400, default_max_tokens=300))).start()
        try:
            yield server, tok, proc
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _script(proc, tok, text):
    proc.script = tok.encode(text) + [tok.eos_id]


def test_page_streams_answer_keeps_conversation_and_toggles_thinking(served, browser):
    server, tok, proc = served
    page = browser.new_page()
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.method == "POST" else None)
    page.goto(server.url + "/")
    page.wait_for_function(f"document.getElementById('model').textContent === {MODEL!r}", timeout=15_000)
    # record every distinct text the answer shows while it streams
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const c = document.querySelector('.msg.assistant.streaming .content');
            if (c && c.textContent && window.__seen[window.__seen.length - 1] !== c.textContent)
                window.__seen.push(c.textContent);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
    }""")

    _script(proc, tok, "Greeting the user.\n</think>\n\nHello from kexaone! 안녕하세요.")
    proc.delay = 0.01  # paced, so the page sees the answer grow even when the browser batches fast reads
    page.fill("#input", "Hi there")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.done", timeout=30_000)
    proc.delay = 0.0
    answer = page.locator(".msg.assistant .content").first
    assert answer.text_content() == "Hello from kexaone! 안녕하세요."
    seen = page.evaluate("window.__seen")
    assert len(seen) >= 3 and seen[-1] == "Hello from kexaone! 안녕하세요."  # arrived in pieces
    assert all("Hello from kexaone! 안녕하세요.".startswith(s) for s in seen)
    box = page.locator(".msg.assistant .reasoning-box").first
    assert box.is_visible() and box.get_attribute("open") is None  # reasoning shown, folded
    assert page.locator(".msg.assistant .reasoning").first.text_content() == "Greeting the user."
    assert bodies[-1]["stream"] is True and bodies[-1]["chat_template_kwargs"] == {"enable_thinking": True}

    # second turn with thinking off: the request carries the whole conversation
    page.uncheck("#think")
    _script(proc, tok, "Second answer.")
    page.fill("#input", "And again?")
    page.keyboard.press("Enter")  # Enter sends
    page.wait_for_function("document.querySelectorAll('.msg.assistant.done').length === 2", timeout=30_000)
    last = bodies[-1]
    assert last["chat_template_kwargs"] == {"enable_thinking": False}
    assert [m["role"] for m in last["messages"]] == ["user", "assistant", "user"]
    assert last["messages"][1]["content"] == "Hello from kexaone! 안녕하세요."
    assert page.locator(".msg.assistant .content").nth(1).text_content() == "Second answer."

    # the conversation survives a reload; "New chat" clears it
    page.reload()
    page.wait_for_selector(".msg.assistant")
    assert page.locator(".msg.user").count() == 2 and page.locator(".msg.assistant").count() == 2
    assert page.is_checked("#think") is False
    page.click("#new-chat")
    assert page.locator(".msg").count() == 0
    page.close()


def test_page_shows_server_errors(served, browser):
    server, tok, proc = served
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function(f"document.getElementById('model').textContent === {MODEL!r}", timeout=15_000)
    page.fill("#max-tokens", "100000")  # above the server's limit: a 400 the page must show
    page.fill("#input", "hello")
    page.click("#send")
    err = page.wait_for_selector(".msg.error", timeout=15_000)
    assert "max_tokens" in err.text_content() and "limit" in err.text_content()
    assert not page.is_disabled("#send")  # the page recovers
    page.close()


def test_page_shows_tool_calls(served, browser):
    server, tok, proc = served
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function(f"document.getElementById('model').textContent === {MODEL!r}", timeout=15_000)
    _script(proc, tok, 'Need the weather.\n</think>\n\n<tool_call>{"name": "get_weather", "arguments": '
                       '{"city": "Seoul"}}</tool_call>')
    page.fill("#input", "Weather in Seoul?")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.done", timeout=30_000)
    tools = page.locator(".msg.assistant .tools").first
    assert tools.is_visible()
    assert tools.text_content() == 'tool call: get_weather({"city": "Seoul"})'
    assert "finish: tool_calls" in page.locator(".msg.assistant .meta").first.text_content()
    page.close()
