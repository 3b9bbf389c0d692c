"""`kexaone generate` and `kexaone chat` on a model saved to a temporary directory, plus Engine.from_pretrained and
Engine.chat (reasoning, answer and tool calls parsed from the generated turn)."""

from __future__ import annotations

import io
import json

import pytest

from kexaone.cli import main
from kexaone.engine import Engine
from kexaone.engine.cli_chat import ChatSession, repl
from test_engine_models import ScriptedProcessor, SwitchableProcessor, byte_tokenizer, one_thread, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = byte_tokenizer()
    d = tmp_path_factory.mktemp("model")
    tiny_model(0, vocab_size=tok.vocab_size).save_pretrained(d)
    tok.save(d)
    return d


def test_from_pretrained_generates_like_the_in_memory_model(model_dir):
    eng = Engine.from_pretrained(model_dir)
    assert eng.tokenizer is not None and eng.has_mtp
    assert not any(m.training for m in eng.model.modules())  # loaded for inference: no mode switch per step
    ref = Engine(tiny_model(0, vocab_size=eng.tokenizer.vocab_size), eng.tokenizer)
    a = eng.generate("hello", max_new_tokens=20, temperature=0)
    assert a.tokens == ref.generate("hello", max_new_tokens=20, temperature=0).tokens
    assert a.text == eng.tokenizer.decode([t for t in a.tokens if t != eng.tokenizer.eos_id])
    with pytest.raises(FileNotFoundError):
        Engine.from_pretrained(model_dir / "missing")


def test_generate_cli_prints_the_engine_output(model_dir, capsys):
    rc = main(["generate", "--model", str(model_dir), "--prompt", "hello", "--max-tokens", "20",
               "--temperature", "0", "--speculative", "mtp", "--draft-tokens", "2", "--stats"])
    out, err = capsys.readouterr()
    assert rc == 0
    expect = Engine.from_pretrained(model_dir).generate("hello", max_new_tokens=20, temperature=0).text
    assert out == expect + "\n"
    assert "MTP acceptance" in err and "tokens/forward" in err


def test_generate_cli_reports_bad_arguments(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_engine_chat_parses_reasoning_answer_and_tool_calls():
    tok = byte_tokenizer()
    reply = 'Need weather.\n</think>\n\nLet me check.\n<tool_call>{"name": "get_weather", "arguments": ' \
            '{"city": "Busan"}}</tool_call>'
    eng = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok,
                 logits_processors=[ScriptedProcessor(tok.encode(reply) + [tok.eos_id])])
    res = eng.chat([{"role": "user", "content": "Weather?"}], tools=[{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}], max_new_tokens=300)
    assert res.reasoning == "Need weather." and res.content == "Let me check."
    assert res.finish_reason == "tool_calls" and res.errors == []
    msg = res.message()
    assert msg["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Busan"}


def test_chat_repl_multi_turn_think_toggle_and_reset():
    tok = byte_tokenizer()
    proc = SwitchableProcessor()
    eng = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=[proc])
    session = ChatSession(eng, max_new_tokens=200, temperature=0.5)
    replies = iter([
        "Thinking hard.\n</think>\n\nFirst reply.",
        "Second reply.",
    ])
    lines = iter(["hello", "/think off", "again", "/reset", "/bogus", "/exit", "never read"])
    prompts_seen = []

    def read(prompt):
        line = next(lines)
        if not line.startswith("/"):
            proc.script = tok.encode(next(replies)) + [tok.eos_id]
            prompts_seen.append(len(session.messages))
        return line

    out = io.StringIO()
    assert repl(session, read, out) == 0
    text = out.getvalue()
    assert "[thinking] Thinking hard.\nFirst reply." in text
    assert "(reasoning off)" in text and "Second reply." in text
    assert "(conversation reset)" in text and "unknown command '/bogus'" in text
    assert prompts_seen == [0, 2]  # the second turn saw the first exchange
    assert session.messages == []  # reset
    assert session.enable_thinking is False
