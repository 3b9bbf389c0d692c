"""The search agent end to end: a scripted OpenAI-compatible HTTP endpoint (started here on 127.0.0.1) drives
`kexaone agent` through search, open (with the summarizer), two compressions and a final answer; plus the limits,
the trajectory file, and the sandboxed python tool."""

from __future__ import annotations

import json
import os

import pytest
from test_agents_endpoint import ChatEndpoint, wire_call

from kexaone.agents import AgentConfig, DocumentIndex, ToolRegistry, run_agent
from kexaone.agents.compress import COMPRESS_SYSTEM, parse_record
from kexaone.agents.summarize import SUMMARY_SYSTEM
from kexaone.eval.backends import ChatReply, OpenAIBackend
from kexaone.tokenizer.chat import render

DOCS = {
    "seoul.md": "# Seoul\n\nSeoul is the capital of South Korea.\n\nIn 2020 Seoul had 9,586,195 inhabitants.\n",
    "busan.md": "# Busan\n\nBusan is a port city.\n\nBusan had 3,349,016 inhabitants in 2020.\n",
    "hangang.txt": "한강\n\n한강은 서울을 가로지르는 강이다. 길이는 494 km이다.\n",
}


_call = wire_call


class ScriptedEndpoint(ChatEndpoint):
    """Replies follow a script, one per chat request, in order. Each entry names the kind of request it expects
    (agent, summary, compress), checked on arrival; mismatches are collected in `errors`."""

    def __init__(self, script: list[tuple[str, dict]]):
        self.script = list(script)
        self.errors: list[str] = []
        super().__init__(self._respond)

    def _respond(self, body: dict) -> dict:
        if not self.script:
            self.errors.append("request after the end of the script")
            raise ValueError("script exhausted")
        kind, message = self.script.pop(0)
        system = body["messages"][0]["content"]
        seen = "summary" if system == SUMMARY_SYSTEM else "compress" if system == COMPRESS_SYSTEM else "agent"
        if seen != kind:
            self.errors.append(f"request {len(self.requests)}: expected a {kind} request, got {seen}")
        return message


def _record(facts, queries, nxt):
    return json.dumps({"key_facts": [{"fact": f, "source": s} for f, s in facts], "open_questions": ["population"],
                       "tried_queries": queries, "next_steps": nxt})


SCRIPT = [
    ("agent", {"content": "", "tool_calls": [_call("search", {"query": "Seoul inhabitants"}, "c1")]}),
    ("agent", {"content": "", "tool_calls": [_call("open", {"doc": "2", "pattern": "inhabitants"}, "c2")]}),
    ("summary", {"content": "Summary:\nSeoul had 9,586,195 inhabitants in 2020.\n\n"
                            "Answer to the question:\n9,586,195"}),
    ("compress", {"content": "Here is the record: " + _record([("Seoul had 9,586,195 inhabitants in 2020", "2")],
                                                                ["Seoul inhabitants"], ["check Busan"])}),
    ("agent", {"content": "", "tool_calls": [_call("search", {"query": "Busan inhabitants"}, "c3")]}),
    ("agent", {"content": "", "tool_calls": [_call("open", {"doc": "0", "pattern": "inhabitants"}, "c4")]}),
    ("summary", {"content": "Summary:\nBusan had 3,349,016 inhabitants in 2020.\n\nAnswer to the question:\nnot "
                            "found in this document"}),
    ("compress", {"content": "not json at all"}),  # the compressor falls back to a record built from summaries
    ("agent", {"content": "Seoul had 9,586,195 inhabitants in 2020, more than Busan (3,349,016).",
               "reasoning_content": "Both facts are in the record."}),
]


@pytest.fixture()
def doc_dir(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for name, text in DOCS.items():
        (d / name).write_text(text, encoding="utf-8")
    return d


def test_agent_against_scripted_endpoint(doc_dir, tmp_path):
    index = DocumentIndex.from_sources([str(doc_dir)])
    # Sorted file order gives the ids: 0 busan, 1 hangang, 2 seoul.
    assert [d.source for d in index.docs] == [str(doc_dir / n) for n in ("busan.md", "hangang.txt", "seoul.md")]
    assert [d.title for d in index.docs] == ["Busan", "한강", "Seoul"]
    out = tmp_path / "run.json"
    with ScriptedEndpoint(SCRIPT) as ep:
        backend = OpenAIBackend(ep.url, max_retries=0)
        res = run_agent("Which city had more inhabitants in 2020, Seoul or Busan?", backend, index=index,
                        config=AgentConfig(compress_every=2, python=False), trajectory_path=out)
    assert ep.errors == [] and ep.script == []
    assert res.stopped == "answer" and res.steps == 4 and res.compressions == 2
    assert res.answer.startswith("Seoul had 9,586,195")
    assert res.tokens == 9 * 110  # every call's usage, sub-agents included

    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(res.trajectory, default=str))
    kinds = [e["type"] for e in saved["events"]]
    assert kinds == ["model", "tool", "model", "summary", "tool", "compression",
                     "model", "tool", "model", "summary", "tool", "compression", "model", "final"]
    ev = saved["events"]
    search1 = ev[1]
    assert search1["name"] == "search" and search1["ok"]
    assert [h["doc"] for h in json.loads(search1["content"])][0] == "2"  # Seoul ranks first
    assert ev[3]["doc"] == "2" and ev[3]["passages"] == ["In 2020 Seoul had 9,586,195 inhabitants."]
    assert ev[4]["content"].startswith("[doc 2] Seoul\nSummary:\nSeoul had 9,586,195")
    c1, c2 = ev[5], ev[11]
    assert c1["trigger"] == c2["trigger"] == "steps" and (c1["step"], c2["step"]) == (2, 4)
    assert not c1["fallback"] and c1["record"]["key_facts"] == [
        {"fact": "Seoul had 9,586,195 inhabitants in 2020", "source": "2"}]
    assert c1["record"]["tried_queries"] == ["Seoul inhabitants"]
    # Fallback: the previous facts plus this segment's summary, and every query actually searched.
    assert c2["fallback"] and c2["error"] == "the compressor reply holds no JSON object"
    assert [f["source"] for f in c2["record"]["key_facts"]] == ["2", "0"]
    assert c2["record"]["tried_queries"] == ["Seoul inhabitants", "Busan inhabitants"]
    assert saved["answer"] == res.answer and saved["stopped"] == "answer" and saved["compressions"] == 2

    # What went over the wire: OpenAI tool messages, and the history replaced after each compression.
    agent_reqs = [r for r in ep.requests if r["messages"][0]["content"] not in (SUMMARY_SYSTEM, COMPRESS_SYSTEM)]
    assert [t["function"]["name"] for t in agent_reqs[0]["tools"]] == ["search", "open"]
    assert agent_reqs[0]["tool_choice"] == "auto"
    second = agent_reqs[1]["messages"]
    assert second[2]["role"] == "assistant" and second[2]["tool_calls"][0]["id"] == "c1"
    assert json.loads(second[2]["tool_calls"][0]["function"]["arguments"]) == {"query": "Seoul inhabitants"}
    assert second[3] == {"role": "tool", "tool_call_id": "c1", "content": search1["content"]}
    after = agent_reqs[2]["messages"]  # first request after compression 1
    assert [m["role"] for m in after] == ["system", "user"]
    assert json.loads(after[1]["content"].split("\n")[3]) == c1["record"]
    final_req = agent_reqs[-1]["messages"]
    assert [m["role"] for m in final_req] == ["system", "user"]
    assert json.loads(final_req[1]["content"].split("\n")[3]) == c2["record"]
    # The summarizer saw the question and the matching passage; the compressor saw the tool transcript.
    summ = [r for r in ep.requests if r["messages"][0]["content"] == SUMMARY_SYSTEM][0]["messages"][1]["content"]
    assert "Which city had more" in summ and "[1] In 2020 Seoul had 9,586,195 inhabitants." in summ
    comp = [r for r in ep.requests if r["messages"][0]["content"] == COMPRESS_SYSTEM][0]["messages"][1]["content"]
    assert 'CALLS search({"query": "Seoul inhabitants"})' in comp and "TOOL RESULT (c2): [doc 2] Seoul" in comp
    # kexaone's chat template renders the agent's history as K-EXAONE tool turns.
    text = render(second, tools=agent_reqs[1]["tools"])
    assert '<tool_call>{"name": "search", "arguments": {"query": "Seoul inhabitants"}}</tool_call>' in text
    assert "<|tool|>\n<tool_result>[{" in text


class FakeBackend:
    """Scripted replies in order, recording requests (for tests that need no HTTP)."""

    def __init__(self, replies):
        self.replies, self.requests = list(replies), []

    def chat(self, messages, **kw):
        self.requests.append((json.loads(json.dumps(messages)), kw))
        return self.replies.pop(0)


def _tc(name, args, cid="t"):
    return ChatReply(content="", tool_calls=[{"id": cid, "name": name, "arguments": args}], finish_reason="tool_calls",
                     usage={"total_tokens": 50})


def test_schema_errors_come_back_as_tool_results(tmp_path):
    reg = ToolRegistry()

    @reg.register
    def add(a: int, b: int = 1) -> int:
        """Add two integers.

        Args:
            a: First summand.
            b: Second summand.
        """
        return a + b

    backend = FakeBackend([_tc("add", {"a": "two"}, "x1"), _tc("add", {"a": 2, "c": 1}, "x2"), _tc("nope", {}, "x3"),
                           _tc("add", {"a": 2, "b": 5}, "x4"), ChatReply(content="7", usage={"total_tokens": 5})])
    res = run_agent("2+5?", backend, registry=reg, config=AgentConfig(python=False),
                    trajectory_path=tmp_path / "t.json")
    tools = [e for e in res.trajectory["events"] if e["type"] == "tool"]
    assert [t["ok"] for t in tools] == [False, False, False, True]
    assert tools[0]["content"] == "Error: invalid arguments for tool 'add' at a: 'two' is not of type 'integer'"
    assert "Additional properties are not allowed ('c' was unexpected)" in tools[1]["content"]
    assert tools[2]["content"].startswith("Error: unknown tool 'nope'; available tools: add")
    assert tools[3]["content"] == "7" and res.answer == "7" and res.stopped == "answer"
    # The model saw each error as the tool result of its call.
    last_msgs = backend.requests[-1][0]
    assert [m["content"] for m in last_msgs if m["role"] == "tool"] == [t["content"] for t in tools]
    assert [m["tool_call_id"] for m in last_msgs if m["role"] == "tool"] == ["x1", "x2", "x3", "x4"]


def test_step_and_token_limits_force_a_final_answer():
    reg = ToolRegistry()
    reg.register(lambda: "pong", name="ping", description="Ping.")
    loop_forever = [_tc("ping", {}, f"p{i}") for i in range(10)]
    backend = FakeBackend(loop_forever[:3] + [ChatReply(content="gave up", usage={"total_tokens": 5})])
    res = run_agent("q", backend, registry=reg, config=AgentConfig(python=False, max_steps=3))
    assert res.stopped == "max_steps" and res.steps == 3 and res.answer == "gave up"
    last_msgs, last_kw = backend.requests[-1]
    assert last_kw["tool_choice"] == "none" and "step limit is reached" in last_msgs[-1]["content"]
    assert res.trajectory["events"][-2]["forced_final"] is True

    backend = FakeBackend(loop_forever[:2] + [ChatReply(content="out of tokens", usage={"total_tokens": 5})])
    res = run_agent("q", backend, registry=reg, config=AgentConfig(python=False, max_total_tokens=100))
    assert res.stopped == "max_tokens" and res.steps == 2 and res.tokens == 105  # 50 + 50, then the final 5
    assert "token limit is reached" in backend.requests[-1][0][-1]["content"]


def test_agent_cli_against_scripted_endpoint(doc_dir, tmp_path, capsys):
    from kexaone.cli import main

    out = tmp_path / "cli.json"
    with ScriptedEndpoint(SCRIPT) as ep:
        rc = main(["agent", "--endpoint", ep.url, "--docs", str(doc_dir), "--question", "Seoul or Busan?",
                   "--out", str(out), "--compress-every", "2", "--no-python"])
    assert rc == 0 and ep.errors == []
    assert capsys.readouterr().out.strip().startswith("Seoul had 9,586,195 inhabitants")
    saved = json.loads(out.read_text())
    assert saved["compressions"] == 2 and sum(e["type"] == "summary" for e in saved["events"]) == 2


def test_agent_cli_user_tools_and_bad_input(tmp_path, capsys):
    from kexaone.cli import main

    tools_file = tmp_path / "mytools.py"
    tools_file.write_text("from kexaone.agents import tool\n\n@tool\ndef shout(text: str) -> str:\n"
                          "    \"\"\"Upper-case a text.\n\n    Args:\n        text: The text.\n    \"\"\"\n"
                          "    return text.upper()\n", encoding="utf-8")
    script = [("agent", {"content": "", "tool_calls": [_call("shout", {"text": "hi"}, "s1")]}),
              ("agent", {"content": "HI"})]
    out = tmp_path / "u.json"
    with ScriptedEndpoint(script) as ep:
        rc = main(["agent", "--endpoint", ep.url, "--tools", str(tools_file), "--question", "shout hi",
                   "--out", str(out), "--no-python"])
    assert rc == 0 and ep.errors == []
    assert ep.requests[0]["tools"][0]["function"]["parameters"]["properties"] == {
        "text": {"type": "string", "description": "The text."}}
    assert json.loads(out.read_text())["events"][1]["content"] == "HI"
    rc = main(["agent", "--endpoint", ep.url, "--question", "q", "--out", str(tmp_path / "no" / "x.json")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["agent", "--endpoint", ep.url, "--question", "q", "--out", str(out), "--compress-every", "-1",
               "--no-python"])
    assert rc == 2 and "compress_every must be >= 0" in capsys.readouterr().err


def test_compressor_record_parsing():
    rec = parse_record('blah {"x": 1} then {"key_facts": [], "open_questions": [], "tried_queries": ["a"], '
                       '"next_steps": []} tail')
    assert rec["tried_queries"] == ["a"]
    with pytest.raises(ValueError, match="not a record"):
        parse_record('{"key_facts": [{"fact": "no source"}], "open_questions": [], "tried_queries": [], '
                     '"next_steps": []}')
    with pytest.raises(ValueError, match="no JSON object"):
        parse_record("nothing here")


def test_python_tool_runs_in_the_sandbox_and_survives_a_timeout(tmp_path):
    pytest.importorskip("kexaone.rl.sandbox", reason="the code sandbox (kexaone.rl.sandbox) is not in this build")
    codes = ["while True:\n    pass\n",  # runs past the time limit
             "x = bytearray(600 * 1024 * 1024)\nprint(len(x))",  # past the memory limit
             "import socket\nsocket.create_connection(('127.0.0.1', 80))",  # no network
             f"import os\nprint(6 * 7, os.getpid() != {os.getpid()})"]  # another process, not this one
    backend = FakeBackend([_tc("python", {"code": c}, f"py{i}") for i, c in enumerate(codes)]
                          + [ChatReply(content="42", usage={"total_tokens": 5})])
    res = run_agent("6*7?", backend, config=AgentConfig(python=True, python_timeout_s=1.0, python_memory_mb=256),
                    trajectory_path=tmp_path / "py.json")
    tools = [e for e in res.trajectory["events"] if e["type"] == "tool"]
    out = [json.loads(t["content"]) for t in tools]
    assert all(t["ok"] for t in tools)  # the tool worked; the program's failure is its result
    assert out[0]["timed_out"] is True and out[0]["ok"] is False and out[0]["exit_code"] is None
    assert tools[0]["seconds"] < 10
    assert not out[1]["ok"] and "memory limit" in out[1]["reason"]
    assert not out[2]["ok"] and out[2]["reason"].startswith("blocked")
    assert out[3]["ok"] and out[3]["stdout"].strip() == "42 True"
    # The model read each result and the loop went on to its answer.
    assert [m["content"] for m in backend.requests[-1][0] if m["role"] == "tool"] == [t["content"] for t in tools]
    assert res.answer == "42" and res.stopped == "answer" and res.steps == 4


def test_parallel_calls_run_in_order_and_count_as_steps():
    reg = ToolRegistry()
    seen = []
    reg.register(lambda x: seen.append(x) or x * 2, name="double", parameters={
        "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]})
    two = ChatReply(content="", finish_reason="tool_calls", usage={"total_tokens": 1}, tool_calls=[
        {"id": "a", "name": "double", "arguments": {"x": 1}}, {"id": "b", "name": "double", "arguments": {"x": 2}}])
    backend = FakeBackend([two, ChatReply(content="2 and 4", usage={"total_tokens": 1})])
    res = run_agent("double 1 and 2", backend, registry=reg, config=AgentConfig(python=False))
    assert seen == [1, 2] and res.steps == 2 and res.answer == "2 and 4"
    msgs = backend.requests[-1][0]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in msgs[3:]] == [("a", "2"), ("b", "4")]
    assert [c["id"] for c in msgs[2]["tool_calls"]] == ["a", "b"]


def test_backend_failure_is_recorded_then_raised(tmp_path):
    class Down:
        def chat(self, messages, **kw):
            raise ConnectionError("endpoint went away")

    reg = ToolRegistry()
    reg.register(lambda: "x", name="noop", description="Nothing.")
    path = tmp_path / "err.json"
    with pytest.raises(ConnectionError):
        run_agent("q", Down(), registry=reg, config=AgentConfig(python=False), trajectory_path=path)
    saved = json.loads(path.read_text())
    assert saved["events"][-1]["type"] == "error" and "endpoint went away" in saved["events"][-1]["error"]
    assert saved["stopped"] is None


def test_compression_when_the_context_fills_up(tmp_path):
    reg = ToolRegistry()
    reg.register(lambda: "pong", name="ping", description="Ping.")

    def step(prompt_tokens, cid):
        return ChatReply(content="", tool_calls=[{"id": cid, "name": "ping", "arguments": {}}],
                         finish_reason="tool_calls", usage={"prompt_tokens": prompt_tokens, "completion_tokens": 1})

    record = ChatReply(content='{"key_facts": [], "open_questions": ["q"], "tried_queries": [], "next_steps": []}')
    backend = FakeBackend([step(100, "a"), step(900, "b"), record, step(120, "c"),
                           ChatReply(content="done", usage={"prompt_tokens": 1})])
    res = run_agent("q", backend, registry=reg, config=AgentConfig(python=False, compress_at_tokens=800))
    comps = [e for e in res.trajectory["events"] if e["type"] == "compression"]
    assert len(comps) == 1 and comps[0]["trigger"] == "context" and comps[0]["step"] == 2
    assert [m["role"] for m in backend.requests[3][0]] == ["system", "user"]  # restarted after the full prompt
    assert res.answer == "done" and res.compressions == 1
