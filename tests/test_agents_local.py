"""The agent over a local model (LocalBackend over the engine): a random tiny model whose output is forced token by
token, so the path through the chat template, the engine and the reply parser is the real one."""

from __future__ import annotations

import json

import pytest
import torch

from test_engine_models import ScriptedProcessor, byte_tokenizer, one_thread, tiny_model

from kexaone.agents import AgentConfig, DocumentIndex, run_agent
from kexaone.engine.engine import Engine
from kexaone.eval.backends import LocalBackend


class CallScripts:
    """Forces the n-th generation of the engine to be scripts[n] (a new generation starts with no token yet)."""

    def __init__(self, tok, scripts):
        self.scripts = [tok.encode(s) + [tok.eos_id] for s in scripts]
        self.n = -1

    def __call__(self, generated, logits_V: torch.Tensor) -> torch.Tensor:
        if not generated:
            self.n += 1
        return ScriptedProcessor(self.scripts[self.n])(generated, logits_V)


def test_agent_with_local_backend(tmp_path):
    tok = byte_tokenizer()
    scripts = [
        'Search first.\n</think>\n\n<tool_call>{"name": "search", "arguments": {"query": "capital"}}</tool_call>',
        'Open it.\n</think>\n\n<tool_call>{"name": "open", "arguments": {"doc": "0", "pattern": "capital"}}</tool_call>',
        "Summary:\nSeoul is the capital.\n\nAnswer to the question:\nSeoul",  # the summarizer (thinking off)
        "Found it.\n</think>\n\nThe capital is Seoul.",
    ]
    proc = CallScripts(tok, scripts)
    prompts = []
    with one_thread():
        engine = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=[proc])
        backend = LocalBackend(engine)
        encode = tok.encode  # the engine renders and encodes each chat request (Engine.prepare_chat): record them
        tok.encode = lambda t: prompts.append(t) or encode(t)
        index = DocumentIndex.from_texts(["Korea\n\nSeoul is the capital of Korea.", "Japan\n\nTokyo is big."])
        res = run_agent("What is the capital of Korea?", backend, index=index,
                        config=AgentConfig(python=False, max_reply_tokens=200), trajectory_path=tmp_path / "t.json")
    assert res.stopped == "answer" and res.answer == "The capital is Seoul." and res.steps == 2
    events = res.trajectory["events"]
    assert [e["type"] for e in events] == ["model", "tool", "model", "summary", "tool", "model", "final"]
    assert events[0]["reply"]["reasoning"] == "Search first."
    assert json.loads(events[1]["content"])[0]["doc"] == "0"
    assert events[4]["content"] == "[doc 0] Korea\nSummary:\nSeoul is the capital.\n\nAnswer to the question:\nSeoul"
    # The last agent prompt holds K-EXAONE tool turns with the results, and the current step's reasoning.
    last = prompts[-1]
    assert "<|tool_declare|>" in last and '"name": "open"' in last
    assert '<tool_call>{"name": "search", "arguments": {"query": "capital"}}</tool_call>' in last
    assert f"<|tool|>\n<tool_result>{events[1]['content']}</tool_result>" in last
    assert f"<|tool|>\n<tool_result>{events[4]['content']}</tool_result>" in last
    assert "<think>\nOpen it.\n</think>" in last
    # Token accounting comes from the engine's own counts.
    assert res.tokens == sum(e["tokens"] for e in events if "tokens" in e and e["type"] != "final")
    assert events[0]["tokens"] == len(tok.encode(prompts[0])) + len(tok.encode(scripts[0])) + 1


def test_agent_cli_with_local_model_matches_python_api(tmp_path, capsys):
    from kexaone.cli import main

    tok = byte_tokenizer()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tiny_model(0, vocab_size=tok.vocab_size).save_pretrained(model_dir)
    tok.save(model_dir)
    docs = tmp_path / "notes.txt"
    docs.write_text("Seoul is the capital of Korea.", encoding="utf-8")
    out = tmp_path / "cli.json"
    with one_thread():
        rc = main(["agent", "--model", str(model_dir), "--docs", str(docs), "--question", "Capital of Korea?",
                   "--out", str(out), "--no-python", "--max-reply-tokens", "12", "--max-steps", "2"])
        assert rc == 0
        printed = capsys.readouterr().out
        saved = json.loads(out.read_text())
        # The same run through the Python API gives the same trajectory (greedy decoding, same seeds).
        ref = run_agent("Capital of Korea?", LocalBackend.from_pretrained(model_dir), docs=[str(docs)],
                        config=AgentConfig(python=False, max_reply_tokens=12, max_steps=2, seed=0))
    assert printed == ref.answer + "\n" and saved["answer"] == ref.answer
    assert saved["stopped"] == ref.stopped and saved["tokens"] == ref.tokens > 0
    strip = [{k: v for k, v in e.items() if k not in ("time", "seconds")} for e in saved["events"]]
    assert strip == [{k: v for k, v in e.items() if k not in ("time", "seconds")} for e in ref.trajectory["events"]]
