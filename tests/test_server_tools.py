"""OpenAI tool calling against the server, with the official `openai` client.

Most tests run against `kexaone serve` started here as a subprocess on 127.0.0.1 (a saved tiny random model with a
byte-level tokenizer), as a user runs it. Random weights cannot follow a request, so what is tested is the
server's side: `tool_choice` "required" and a named function always give a parsed call of an allowed function
with JSON arguments that satisfy the schema (streamed and not), a schema-invalid call is reported in the reply
(`tool_call_errors`) rather than failing, a tool-role follow-up is answered, and OpenAI's 400s for bad tool
fields. Parallel calls need the model steered (a bias towards starting another call), so that test serves the
same app in-process with a biased engine.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from serve_support import serve_subprocess
from test_engine_models import ServerThread, byte_tokenizer, one_thread, tiny_model
from tool_support import PICK, parallel_calling_engine

openai = pytest.importorskip("openai")

MODEL = "tools-test"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}, "hour24": {"type": "boolean"}}, "required": ["tz"]}}}
# a constraint the grammar does not enforce (string lengths): every forced call breaks it
LONG = {"type": "function", "function": {"name": "shout", "parameters": {
    "type": "object", "properties": {"text": {"type": "string", "minLength": 500}}, "required": ["text"]}}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS + [LONG]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tok = byte_tokenizer()
    tiny_model(0, vocab_size=tok.vocab_size).save_pretrained(path)
    tok.save(path)
    with serve_subprocess(path, "--served-model-name", MODEL, "--log-level", "warning", "--max-tokens", "160",
                          startup_s=120) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def _streamed(chunks):
    """(calls rebuilt from the deltas by index, the raw tool-call deltas, finish reason, tool_call_errors)."""
    deltas, finish, errors = [], None, None
    for c in chunks:
        if not c.choices:
            continue
        d = c.choices[0].delta
        deltas += d.tool_calls or []
        errors = (d.model_extra or {}).get("tool_call_errors") or errors
        finish = c.choices[0].finish_reason or finish
    calls: dict[int, dict] = {}
    for tc in deltas:
        call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
        if tc.id:
            assert call["id"] is None, "a call's id comes once, in its first delta"
            call["id"], call["name"] = tc.id, tc.function.name
        else:
            assert call["id"] is not None and tc.function.name is None, "the name comes first, alone"
        call["arguments"] += tc.function.arguments or ""
    return [calls[i] for i in sorted(calls)], deltas, finish, errors


def _check(calls, allowed):
    for c in calls:
        assert c["name"] in allowed
        jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])
    assert len({c["id"] for c in calls}) == len(calls)


@pytest.mark.slow
@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_streamed_and_not(client, choice, thinking):
    allowed = {"get_time"} if isinstance(choice, dict) else {"get_weather", "get_time"}
    kw = dict(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=100, temperature=1.0, seed=7,
              parallel_tool_calls=False, extra_body={"chat_template_kwargs": {"enable_thinking": thinking}})
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and len(msg.tool_calls) == 1
    calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in msg.tool_calls]
    _check(calls, allowed)
    assert (msg.model_extra or {}).get("tool_call_errors") is None
    assert msg.content == "" and ((msg.model_extra or {}).get("reasoning_content") is not None) == thinking
    # streamed with the same seed: the same call, announced by name then its arguments in pieces
    s_calls, deltas, finish, errors = _streamed(client.chat.completions.create(stream=True, **kw))
    assert finish == "tool_calls" and errors is None and len(s_calls) == 1
    assert [(c["name"], c["arguments"]) for c in s_calls] == [(c["name"], c["arguments"]) for c in calls]
    assert deltas[0].type == "function" and deltas[0].function.arguments == "" and len(deltas) > 2


@pytest.mark.slow
def test_tool_result_follow_up_is_answered(client, server):
    first = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=100, seed=1, parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True, include={"role", "content",
                                                                                       "tool_calls"}),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
    follow = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=12, seed=2,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert follow.usage.completion_tokens > 0 and follow.usage.prompt_tokens > first.usage.prompt_tokens
    # the prompt is the chat format's rendering, the call and its result in their turns
    from kexaone.engine.chat_io import chat_prompt

    prompt, _ = chat_prompt(history, tools=TOOLS, enable_thinking=False)
    assert '<|tool|>\n<tool_result>{"temperature": 21}</tool_result><|endofturn|>' in prompt
    assert f'<tool_call>{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}</tool_call>' \
        in prompt
    assert follow.usage.prompt_tokens == len(byte_tokenizer().encode(prompt))
    # and a forced call works after a tool result too
    again = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="required",
                                           max_tokens=100, seed=3, parallel_tool_calls=False)
    assert again.choices[0].finish_reason == "tool_calls"


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_schema_invalid_call_is_reported_not_a_500(client, stream):
    kw = dict(model=MODEL, messages=ASK, tools=[LONG], tool_choice="required", max_tokens=60, seed=0,
              parallel_tool_calls=False, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    if stream:
        calls, _, finish, errors = _streamed(client.chat.completions.create(stream=True, **kw))
    else:
        r = client.chat.completions.create(**kw)
        m = r.choices[0].message
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in m.tool_calls]
        finish, errors = r.choices[0].finish_reason, m.model_extra["tool_call_errors"]
    assert finish == "tool_calls" and [c["name"] for c in calls] == ["shout"]
    assert isinstance(json.loads(calls[0]["arguments"])["text"], str)  # the call itself is still returned
    assert len(errors) == 1 and errors[0]["index"] == 0 and errors[0]["id"] == calls[0]["id"]
    assert "is too short" in errors[0]["message"] and errors[0]["name"] == "shout"


@pytest.mark.slow
@pytest.mark.parametrize("body,param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}, "tools"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "c1", "content": "x"}]}, "messages[1].role"),
    ({"messages": ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "x"}]}, "messages[2].tool_call_id"),
    ({"messages": ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "content": "x"}]}, "messages[2].tool_call_id"),
    ({"messages": ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"}, {"role": "user", "content": "and?"}]}, "messages[3]"),
])
def test_bad_tool_fields_get_openai_400s(server, body, param):
    r = httpx.post(server + "/v1/chat/completions", timeout=30,
                   json={"model": MODEL, "messages": ASK, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["message"]


@pytest.mark.slow
def test_answered_calls_with_ids_are_accepted(server):
    """Several calls answered in any order (ids matched, not positions) are fine, as OpenAI accepts them."""
    msgs = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"}]
    r = httpx.post(server + "/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": msgs, "tools": TOOLS, "max_tokens": 4})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------------------------------------ parallel calls
@pytest.mark.parametrize("stream", [False, True])
def test_parallel_calls_get_distinct_ids_and_the_flag_limits_them(stream):
    from kexaone.engine.app import create_app
    from kexaone.engine.server import ServerSettings

    with one_thread():
        engine = parallel_calling_engine()
        srv = ServerThread(create_app(engine, ServerSettings(model_name=MODEL, max_tokens=200, timeout=60.0))).start()
        try:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
            for parallel in (True, False):
                kw = dict(model=MODEL, messages=ASK, tools=[PICK], tool_choice="required", max_tokens=120, seed=0,
                          parallel_tool_calls=parallel,
                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})
                if stream:
                    calls, _, finish, _ = _streamed(client.chat.completions.create(stream=True, **kw))
                else:
                    r = client.chat.completions.create(**kw)
                    finish = r.choices[0].finish_reason
                    calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                             for c in r.choices[0].message.tool_calls]
                assert finish == "tool_calls"
                assert (len(calls) >= 2) if parallel else (len(calls) == 1)
                assert len({c["id"] for c in calls}) == len(calls)
                assert all(c["name"] == "pick" and json.loads(c["arguments"])["x"] in (1, 2) for c in calls)
        finally:
            srv.stop()
