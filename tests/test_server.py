"""The OpenAI-compatible server, exercised with the official `openai` client and raw HTTP against a uvicorn server
started on 127.0.0.1 (free port) in a background thread.

The model is a random tiny model with a byte-level tokenizer. Where a test needs a particular reply (reasoning,
a tool call), a logits processor inside the engine forces the tokens, so the reply goes through the real
sampling, scheduling, parsing and streaming path; nothing in the server is stubbed.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import torch

from kexaone.engine import Engine
from kexaone.engine.app import create_app
from kexaone.engine.server import ServerSettings
from kexaone.tokenizer.chat import render
from test_engine_models import ServerThread, SwitchableProcessor, byte_tokenizer, one_thread, tiny_model

openai = pytest.importorskip("openai")

MODEL = "kexaone-test"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def stack():
    with one_thread():
        tok = byte_tokenizer()
        proc = SwitchableProcessor()
        engine = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=[proc])
        settings = ServerSettings(model_name=MODEL, max_prompt_tokens=1000, max_tokens=200, default_max_tokens=160,
                                  timeout=20.0, max_batch_size=4, max_queue=64)
        server = ServerThread(create_app(engine, settings)).start()
        try:
            yield server, engine, tok, proc
        finally:
            server.stop()


@pytest.fixture
def client(stack):
    server, _, _, proc = stack
    proc.script, proc.fail = None, False
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def _script(proc, tok, text):
    proc.script = tok.encode(text) + [tok.eos_id]
    return proc.script


def _extra(obj, name):
    return (obj.model_extra or {}).get(name)


# ------------------------------------------------------------------------------------------------ happy paths
def test_models_and_health(stack, client):
    server = stack[0]
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["queued"] == 0


def test_chat_completion_with_reasoning(stack, client):
    _, _, tok, proc = stack
    script = _script(proc, tok, "Two plus two.\n</think>\n\nIt is 4.")
    messages = [{"role": "user", "content": "What is 2+2?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.8)
    msg = r.choices[0].message
    assert msg.content == "It is 4." and _extra(msg, "reasoning_content") == "Two plus two."
    assert r.choices[0].finish_reason == "stop" and msg.tool_calls is None
    prompt = render(messages, enable_thinking=True, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.usage.completion_tokens == len(script)


def test_chat_completion_streaming(stack, client):
    _, _, tok, proc = stack
    _script(proc, tok, "Two plus two.\n</think>\n\nIt is 4, 네.")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "2+2?"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(_extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices)
    assert content == "It is 4, 네." and reasoning == "Two plus two."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(proc.script)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed


def test_thinking_off_uses_the_empty_think_block(stack, client):
    _, _, tok, proc = stack
    _script(proc, tok, "Just the answer.")
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model=MODEL, messages=messages,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content == "Just the answer."
    assert not _extra(r.choices[0].message, "reasoning_content")
    prompt = render(messages, enable_thinking=False, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(tok.encode(prompt))


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call(stack, client, stream):
    _, _, tok, proc = stack
    _script(proc, tok, 'Check the weather.\n</think>\n\n<tool_call>{"name": "get_weather", "arguments": '
                       '{"city": "Seoul"}}</tool_call>')
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Weather in Seoul?"}], tools=[WEATHER_TOOL])
    if not stream:
        r = client.chat.completions.create(**kw)
        choice = r.choices[0]
        calls = choice.message.tool_calls
        finish = choice.finish_reason
        content = choice.message.content
    else:
        chunks = list(client.chat.completions.create(stream=True, **kw))
        deltas = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls
                  for tc in c.choices[0].delta.tool_calls]
        # OpenAI's shape: the first delta of a call has its id and name, the arguments follow in pieces
        calls = [tc for tc in deltas if tc.id]
        calls[0].function.arguments = "".join(tc.function.arguments or "" for tc in deltas if tc.index == 0)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert finish == "tool_calls" and len(calls) == 1 and content == ""
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert json.loads(calls[0].function.arguments) == {"city": "Seoul"}
    # the tool's result goes back in a follow-up turn, and the declared tool reaches the prompt
    _script(proc, tok, "\n</think>\n\nIt is sunny in Seoul.")
    follow = client.chat.completions.create(model=MODEL, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "Weather in Seoul?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": calls[0].id, "type": "function", "function": {
            "name": "get_weather", "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"sky": "sunny"}'}])
    assert follow.choices[0].message.content == "It is sunny in Seoul."


def test_completions_match_the_engine(stack, client):
    _, engine, _, _ = stack
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True) if c.choices)
    expect = engine.generate("Once upon a time", max_new_tokens=12, temperature=0)
    assert r.choices[0].text == expect.text == streamed
    assert r.choices[0].finish_reason == ("stop" if expect.finish_reason == "stop" else "length")
    assert r.usage.completion_tokens == len(expect.tokens)
    ids = engine.tokenizer.encode("Once upon a time")
    r2 = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0, echo=True)
    assert r2.choices[0].text == "Once upon a time" + expect.text


# ------------------------------------------------------------------------------------------------ bad requests
def _post(url, path, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=data, headers={"Content-Type": "application/json", **(headers or {})},
                      timeout=30)


@pytest.mark.parametrize("body,param,status", [
    (b'{"model": "kexaone-test", "messages": [', None, 400),  # malformed JSON
    (b'\xff\xfe{"messages": []}', None, 400),  # invalid UTF-8
    (b'[1, 2]', None, 400),  # not an object
    ({"messages": "hello"}, "messages", 400),
    ({"model": MODEL}, "messages", 400),  # missing field
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, "max_tokens", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**15}, "max_tokens", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}, "max_tokens", 400),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", 400),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, "n", 400),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools[0].function", 400),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, "messages", 400),  # prompt too long
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, "model", 404),
])
def test_bad_chat_requests_get_clear_errors(stack, body, param, status):
    server = stack[0]
    r = _post(server.url, "/v1/chat/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    assert err["param"] == param
    if param == "messages" and "x" * 10 in json.dumps(body):
        assert "prompt too long" in err["message"]


def test_lone_surrogates_in_json_strings_are_answered(stack):
    server = stack[0]
    raw = b'{"prompt": "ab\\ud800cd", "max_tokens": 3, "echo": true, "temperature": 0}'
    r = _post(server.url, "/v1/completions", raw)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"].startswith("ab\ufffdcd")
    raw = b'{"messages": [{"role": "user", "content": "\\udc80 hi"}], "max_tokens": 3}'
    assert _post(server.url, "/v1/chat/completions", raw).status_code == 200


def test_bad_completion_requests_and_unknown_routes(stack):
    server = stack[0]
    for body, param in [({"prompt": [999999]}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"),
                        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
                        ({"prompt": "hi", "stop": ["a"] * 40}, "stop")]:
        r = _post(server.url, "/v1/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_failure_in_one_request_does_not_take_the_server_down(stack, client):
    server, _, tok, proc = stack
    proc.fail = True
    r = _post(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "boom"}]})
    assert r.status_code == 500 and "injected failure" in r.json()["error"]["message"]
    proc.fail = False
    _script(proc, tok, "\n</think>\n\nstill here")
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]) \
        .choices[0].message.content == "still here"
    assert httpx.get(server.url + "/health").json()["failures"] >= 1


def test_many_concurrent_clients_get_correct_answers(stack):
    server, engine, tok, proc = stack
    proc.script = None
    expect = engine.generate("abc", max_new_tokens=20, temperature=0).text
    results, errors = [], []

    def one(i):
        try:
            with httpx.stream("POST", server.url + "/v1/completions", timeout=60, json={
                    "model": MODEL, "prompt": "abc", "max_tokens": 20, "temperature": 0, "stream": True}) as r:
                assert r.status_code == 200
                text = ""
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        text += json.loads(line[6:])["choices"][0]["text"]
                results.append(text)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors and results == [expect] * 12
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_client_leaving_a_stream_stops_its_generation(stack):
    server, _, _, proc = stack
    proc.script = None
    steps0 = httpx.get(server.url + "/health").json()["steps"]
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30, json={
            "prompt": "abc", "max_tokens": 200, "stream": True, "temperature": 1.0}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # first chunk arrived: leave
    deadline = time.monotonic() + 20
    while httpx.get(server.url + "/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
    health = httpx.get(server.url + "/health").json()
    assert health["active"] == 0 and health["queued"] == 0
    assert health["steps"] - steps0 < 150  # cancelled well before its 200 tokens


# ------------------------------------------------------------------------------------------------ settings
def _small_server(logits_processors=(), **settings):
    tok = byte_tokenizer()
    engine = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=logits_processors)
    return ServerThread(create_app(engine, ServerSettings(model_name=MODEL, **settings))).start()


def _never_ends(tok):
    """A logits processor that bans every special token, so a request runs to its max_tokens (a random model
    samples the end-of-turn token every few hundred steps, and a fast machine finishes that within any timeout)."""
    banned = torch.tensor(sorted(tok.special_ids.values()))

    def processor(generated, logits_V):
        out = logits_V.clone()
        out[banned] = float("-inf")
        return out

    return processor


def test_api_key_is_required_when_set():
    with one_thread():
        server = _small_server(api_key="s3cret")
        try:
            r = _post(server.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            r = _post(server.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2},
                      headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            good = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
            assert good.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens >= 1
            assert httpx.get(server.url + "/health").status_code == 200  # health stays open
        finally:
            server.stop()


def test_timeout_and_full_queue():
    with one_thread():
        server = _small_server(logits_processors=[_never_ends(byte_tokenizer())], timeout=0.3, max_tokens=100_000,
                               max_queue=1, max_batch_size=1, max_active_batches=1)
        try:
            r = _post(server.url, "/v1/completions", {"prompt": "hi", "max_tokens": 3000, "temperature": 1.0})
            assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
            # one request running, one waiting: the others are turned away with 429 and the server stays up
            codes = []

            def one():
                codes.append(_post(server.url, "/v1/completions",
                                   {"prompt": "hi", "max_tokens": 3000}).status_code)

            threads = [threading.Thread(target=one) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert 429 in codes and set(codes) <= {429, 504}
            assert httpx.get(server.url + "/health").json()["status"] == "ok"
        finally:
            server.stop()


def test_speculative_server_needs_an_mtp_head():
    tok = byte_tokenizer()
    no_mtp = Engine(tiny_model(0, vocab_size=tok.vocab_size, num_nextn_predict_layers=0), tok)
    with pytest.raises(ValueError, match="MTP head"):
        create_app(no_mtp, ServerSettings(speculative="mtp"))
    with pytest.raises(ValueError, match="draft_tokens"):
        create_app(Engine(tiny_model(0, vocab_size=tok.vocab_size), tok),
                   ServerSettings(speculative="mtp", draft_tokens=50))


def test_speculative_server_answers_like_plain_decoding():
    with one_thread():
        tok = byte_tokenizer()
        engine = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok)
        expect = engine.generate("abc", max_new_tokens=16, temperature=0).text
        server = ServerThread(create_app(engine, ServerSettings(model_name=MODEL, speculative="mtp"))).start()
        try:
            r = _post(server.url, "/v1/completions", {"prompt": "abc", "max_tokens": 16, "temperature": 0})
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == expect
        finally:
            server.stop()
