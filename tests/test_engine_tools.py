"""Tool calling in the engine: the reply grammar (kexaone.engine.tool_grammar), the constrained-decoding processor
(kexaone.engine.constrained), `Engine.chat(tools=..., tool_choice=...)`, schema validation and the streaming
parser's tool-call deltas.

The model has random weights, so it cannot follow a request: what is tested is that the constraint alone makes
every reply a call of an allowed function whose arguments parse and satisfy the schema (checked with jsonschema
and the chat format's own parser, independently of the grammar), whatever the seed, mode and budget.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from kexaone.engine import Engine
from kexaone.engine.chat_io import ReplyStreamParser, parse_reply, tool_schemas, validate_tool_calls
from kexaone.engine.constrained import (
    SingleCallProcessor,
    ToolCallProcessor,
    compiled_grammar,
    resolve_tool_choice,
    tool_call_processor,
)
from kexaone.tokenizer.chat import arguments_text, parse_assistant
from test_engine_models import byte_tokenizer, one_thread, tiny_model
from tool_support import PICK, parallel_calling_engine

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer"}},
    "required": ["city", "unit"]}}}
RICH = {"type": "function", "function": {"name": "book", "parameters": {
    "type": "object",
    "properties": {
        "guests": {"type": "integer"}, "price": {"type": "number"}, "vip": {"type": "boolean"},
        "note": {"type": ["string", "null"]}, "nights": {"type": "array", "items": {"type": "integer"}},
        "room": {"type": "object", "properties": {"floor": {"type": "integer"}, "view": {"const": "sea"}},
                 "required": ["floor"]},
        "anything": {}},
    "required": ["guests", "room"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER, RICH, TIME]
MSGS = [{"role": "user", "content": "Book a room and tell me the weather in Paris."}]


@pytest.fixture(scope="module")
def engine():
    with one_thread():
        tok = byte_tokenizer()
        yield Engine(tiny_model(0, vocab_size=tok.vocab_size), tok)


def _grammar(tok, tools=TOOLS, max_calls=1, reasoning=False):
    return compiled_grammar(tok, tool_schemas(tools), max_calls, reasoning)


def _syms(cg, text: str) -> list[int]:
    """The grammar symbols of `text` encoded by the tokenizer (specials are symbols of their own)."""
    return [s for t in _encode(text) for s in cg.index.syms[t]]


_TOK = byte_tokenizer()


def _encode(text):
    return _TOK.encode(text)


# ------------------------------------------------------------------------------------------------ the grammar
def test_grammar_accepts_the_templates_spelling_and_measures_the_shortest_reply():
    cg = _grammar(_TOK)
    g = cg.grammar
    call = '<tool_call>{"name": "book", "arguments": {"room": {"floor": 3, "view": "sea"}, "guests": 2, ' \
           '"nights": [1, 2], "note": null, "vip": true, "price": -1.5e3, "anything": {"a": [1, "x"]}}}</tool_call>'
    st = g.feed_all(g.initial(), _syms(cg, call + "<|endofturn|>"))
    assert st is not None and g.is_final(st)
    # the shortest reply, written by hand: the shortest name with its required arguments
    shortest = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call><|endofturn|>'
    n = len(_syms(cg, shortest))
    assert g.needed(g.initial()) == n
    assert g.is_final(g.feed_all(g.initial(), _syms(cg, shortest)))
    # every prefix of the shortest reply needs exactly the rest of it
    st = g.initial()
    for k, s in enumerate(_syms(cg, shortest)):
        st = g.feed(st, s)
        assert g.needed(st) == n - k - 1


def test_needed_matches_a_breadth_first_search_over_the_grammar():
    """needed(state) is the true shortest completion (an exhaustive search over short symbol strings agrees)."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yy"]}}, "required": ["b"]}}}]
    cg = _grammar(_TOK, tools)
    g = cg.grammar
    alphabet = sorted(set(b'{}[]":, 0123456789-.xyabeflnrstu') | {g.eot, g.call_close, g.call_open})
    start = g.feed_all(g.initial(), _syms(cg, '<tool_call>{"name": "f", "arguments": {'))
    assert start is not None
    frontier, depth = {start}, 0
    dist = {start: 0}
    while frontier and depth < 16:
        depth += 1
        nxt = set()
        for st in frontier:
            for s in alphabet:
                t = g.feed(st, s)
                if t is not None and t not in dist:
                    dist[t] = depth
                    nxt.add(t)
        frontier = nxt
    finals = [d for st, d in dist.items() if g.is_final(st)]
    # `"b": "x"` (8), `}` (arguments), `}` (call), `</tool_call>`, `<|endofturn|>` (one symbol each)
    assert finals and min(finals) == g.needed(start) == 12


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',  # undeclared function
    '<tool_call>{"name": "get_weather", "arguments": {"city": "x"}}</tool_call>',  # required 'unit' missing
    '<tool_call>{"name": "get_weather", "arguments": {"city": 5, "unit": "celsius"}}',  # wrong type
    '<tool_call>{"name": "get_weather", "arguments": {"city": "a", "unit": "kelvin"}}',  # not in the enum
    '<tool_call>{"name": "get_weather", "arguments": {"town": "a"}}',  # undeclared key
    '<tool_call>{"name": "get_weather", "arguments": {"city": "a", "city": "b"}}',  # key twice
    '<tool_call>{"name": "book", "arguments": {"guests": 1.5}}',  # integer
    '<tool_call>{"name": "get_weather", "arguments": {"city": "a</tool_call>',  # a closing tag spelled in bytes
    'Sure!<tool_call>',  # content before the call
    '<tool_call>{"name":"get_time","arguments":{}}',  # not the template's spacing
])
def test_grammar_refuses(text):
    cg = _grammar(_TOK)
    assert cg.grammar.feed_all(cg.grammar.initial(), _syms(cg, text)) is None


def test_grammar_spells_closing_tags_only_as_special_tokens():
    cg = _grammar(_TOK)
    g = cg.grammar
    ok = g.feed_all(g.initial(), _syms(cg, '<tool_call>{"name": "get_weather", "arguments": {"city": "a</tool_call'))
    assert ok is not None and g.feed(ok, ord(">")) is None
    think = _grammar(_TOK, reasoning=True).grammar
    st = think.feed_all(think.initial(), _syms(cg, "plan </think"))
    assert st is not None and think.feed(st, ord(">")) is None  # `</think>` only as the special token
    assert think.feed(think.initial(), think.think_close) is not None


def test_masks_equal_brute_force_simulation():
    """The cached masks (stable-byte shortcut inside strings and reasoning, first-symbol buckets elsewhere) equal
    simulating every token from the state."""
    cg = _grammar(_TOK, reasoning=True)
    g, ix = cg.grammar, cg.index
    prefixes = ["", "let me think <", "x</think>\n\n<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"P",
                "x</think>\n\n<tool_call>{\"name\": \"book\", \"arguments\": {\"guests\": 1",
                "x</think>\n\n<tool_call>{\"name\": \"book\", \"arguments\": {\"note\": ",
                "x</think>\n\n<tool_call>{\"name\": \"b"]
    for p in prefixes:
        st = g.feed_all(g.initial(), _syms(cg, p))
        assert st is not None, p
        same, ends = cg.moves(st)
        got = {t for toks in ends.values() for t in toks.tolist()}
        if same is not None:
            got |= set(same.nonzero().flatten().tolist())
        brute = {t for t in range(ix.size) if g.feed_all(st, ix.syms[t]) is not None}
        assert got == brute, p


# ------------------------------------------------------------------------------------------------ Engine.chat
def _check_reply(r, allowed: set[str], tools=TOOLS, max_calls=1):
    assert r.finish_reason == "tool_calls", (r.text, r.errors)
    assert r.errors == [] and r.validation_errors == []
    assert 1 <= len(r.tool_calls) <= max_calls
    schemas = tool_schemas(tools)
    for c, text in zip(r.tool_calls, r.arguments_text):
        assert c["name"] in allowed
        assert json.loads(text) == c["arguments"]
        jsonschema.validate(c["arguments"], schemas[c["name"]] or {})
    # the chat format's own parser reads the same calls from the raw text
    assert parse_assistant(r.text).tool_calls == r.tool_calls or r.text.count("</think>") == 1


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "book"}}])
def test_chat_forced_calls_always_parse_and_validate(engine, thinking, choice):
    allowed = {"book"} if isinstance(choice, dict) else {"get_weather", "book", "get_time"}
    for seed in range(2):
        r = engine.chat(MSGS, tools=TOOLS, tool_choice=choice, enable_thinking=thinking, max_new_tokens=96,
                        seed=seed, parallel_tool_calls=False)
        _check_reply(r, allowed)
        assert len(set(r.message()["tool_calls"][0]["id"])) > 0


def test_chat_batched_and_speculative_rows_keep_their_constraints(engine):
    """Rows of one batch with different constraints (and one free row) each keep theirs; MTP drafts too."""
    from kexaone.engine.chat_io import chat_prompt

    tok = engine.tokenizer
    prompt, _ = chat_prompt(MSGS, tools=TOOLS, enable_thinking=False)
    ids = tok.encode(prompt)
    params = []
    for name in ("book", "get_weather", None):
        proc = tool_call_processor(tok, TOOLS, {"type": "function", "function": {"name": name}} if name else "auto",
                                   reasoning=False, max_new_tokens=120)
        params.append(engine.make_params(max_new_tokens=120, seed=3, logits_processor=proc))
    for spec in (None, "mtp"):
        res = engine.generate_batch([ids, ids[:-3] + ids[-3:], ids], params=params, speculative=spec)
        for r, name in zip(res[:2], ("book", "get_weather")):
            p = parse_reply("<think>\n\n</think>\n\n" + r.text)
            assert [c["name"] for c in p.tool_calls] == [name] and p.errors == []
            assert validate_tool_calls([{"id": "x", "function": {"name": name, "arguments": p.arguments_text[0]}}],
                                       TOOLS) == []


def test_budget_exactly_the_shortest_reply_still_completes(engine):
    cg = _grammar(engine.tokenizer, [TIME, WEATHER], reasoning=True)
    n = cg.grammar.needed(cg.grammar.initial())
    for seed in range(3):
        r = engine.chat(MSGS, tools=[TIME, WEATHER], tool_choice="required", enable_thinking=True, max_new_tokens=n,
                        seed=seed, parallel_tool_calls=False)
        _check_reply(r, {"get_time", "get_weather"}, tools=[TIME, WEATHER])
        assert len(r.tokens) <= n


def test_parallel_calls_and_the_single_call_flag():
    with one_thread():
        eng = parallel_calling_engine()
        r = eng.chat(MSGS, tools=[PICK], tool_choice="required", enable_thinking=False, max_new_tokens=120, seed=0)
        assert len(r.tool_calls) >= 2 and r.validation_errors == [] and r.errors == []
        assert all(c["name"] == "pick" and c["arguments"]["x"] in (1, 2) for c in r.tool_calls)
        ids = [c["id"] for c in r.message()["tool_calls"]]
        assert len(set(ids)) == len(ids)
        one = eng.chat(MSGS, tools=[PICK], tool_choice="required", enable_thinking=False, max_new_tokens=120,
                       seed=0, parallel_tool_calls=False)
        assert len(one.tool_calls) == 1 and one.finish_reason == "tool_calls"


def test_single_call_processor_ends_the_turn_after_the_first_call():
    tok = byte_tokenizer()
    proc = tool_call_processor(tok, [TIME], "auto", parallel_tool_calls=False)
    assert isinstance(proc, SingleCallProcessor)
    logits = torch.zeros(tok.vocab_size)
    assert torch.equal(proc(tok.encode("<tool_call>{"), logits), logits)
    out = proc(tok.encode('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'), logits)
    assert out.argmax().item() == tok.eos_id and torch.isinf(out).sum().item() == tok.vocab_size - 1
    assert tool_call_processor(tok, [TIME], "auto") is None and tool_call_processor(tok, [TIME], "none") is None


def test_processor_follows_speculative_histories_and_gives_up_off_grammar():
    tok = byte_tokenizer()
    cg = _grammar(tok)
    proc = ToolCallProcessor(cg, max_new_tokens=200)
    good = tok.encode('<tool_call>{"name": "get_')
    a = proc.allowed(good, tok.vocab_size)
    proc.allowed(good + tok.encode("weather"), tok.vocab_size)  # a draft branch
    assert torch.equal(proc.allowed(good, tok.vocab_size), a)  # back on the shorter history
    assert set(a.nonzero().flatten().tolist()) == {tok.encode("w")[0], tok.encode("t")[0]}
    assert proc.allowed(tok.encode("hello"), tok.vocab_size) is None
    logits = torch.randn(tok.vocab_size)
    assert torch.equal(proc(tok.encode("hello"), logits), logits)


@pytest.mark.parametrize("tools,choice,msg", [
    (TOOLS, {"type": "function", "function": {"name": "launch"}}, "not among the declared tools"),
    (None, "required", "needs at least one tool"),
    (TOOLS, "sometimes", "tool_choice must be"),
    (TOOLS, {"type": "function"}, "named tool_choice"),
])
def test_bad_tool_choices_are_clear_errors(engine, tools, choice, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_tool_choice(tools, choice)
    with pytest.raises(ValueError, match=msg):
        engine.chat(MSGS, tools=tools, tool_choice=choice, max_new_tokens=4)


def test_invalid_schema_is_a_clear_error(engine):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "city"}}}
    with pytest.raises(ValueError, match=r"tools\[0\] \(f\): parameters is not a valid JSON schema"):
        engine.chat(MSGS, tools=[bad], max_new_tokens=4)


def test_validation_reports_schema_failures_and_undeclared_functions():
    calls = [{"id": "a", "function": {"name": "get_weather", "arguments": '{"city": 5, "unit": "celsius"}'}},
             {"id": "b", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius"}'}},
             {"id": "c", "function": {"name": "launch", "arguments": "{}"}},
             {"id": "d", "function": {"name": "get_time", "arguments": "[1]"}}]
    errs = validate_tool_calls(calls, TOOLS)
    assert [(e["index"], e["id"]) for e in errs] == [(0, "a"), (2, "c"), (3, "d")]
    assert "city: 5 is not of type 'string'" in errs[0]["message"]
    assert "not among the declared tools" in errs[1]["message"] and "must be a JSON object" in errs[2]["message"]


def test_chat_reports_a_schema_invalid_call_instead_of_raising():
    tok = byte_tokenizer()
    from test_engine_models import ScriptedProcessor

    script = tok.encode('<tool_call>{"name": "get_weather", "arguments": {"city": 5}}</tool_call>') + [tok.eos_id]
    with one_thread():
        eng = Engine(tiny_model(0, vocab_size=tok.vocab_size), tok, logits_processors=[ScriptedProcessor(script)])
        r = eng.chat(MSGS, tools=TOOLS, enable_thinking=False, max_new_tokens=100)
    assert r.finish_reason == "tool_calls" and r.tool_calls == [{"name": "get_weather", "arguments": {"city": 5}}]
    assert len(r.validation_errors) == 1 and r.validation_errors[0]["id"] == r.message()["tool_calls"][0]["id"]
    assert "'unit' is a required property" in r.validation_errors[0]["message"]


# ------------------------------------------------------------------------------------------------ parsing, streaming
def test_arguments_text_is_the_models_own_json():
    assert arguments_text('{"name": "f", "arguments": {"b": 1.50,  "a": "\\u00e9"}}') == '{"b": 1.50,  "a": "\\u00e9"}'
    assert arguments_text('{"arguments": "{\\"x\\": 1}", "name": "f"}') == '{"x": 1}'
    assert arguments_text('{"name": "f"}') is None and arguments_text("[1]") is None
    p = parse_assistant('<tool_call>{"name": "f", "arguments": {"n": 1.50}}</tool_call>')
    assert p.arguments_text == ['{"n": 1.50}'] and p.tool_calls == [{"name": "f", "arguments": {"n": 1.5}}]


def _stream(text: str, step: int = 1, opened: str = ""):
    parser = ReplyStreamParser(opened)
    events = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i:i + step])
    return parser, events + parser.finish()


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_stream_deltas_have_openai_shape_and_add_up(step):
    text = ('Let me check.\n</think>\n\n<tool_call>{"name": "get_weather", "arguments": {"city": "Se}oul", '
            '"unit": "celsius"}}</tool_call>\n<tool_call>{"arguments": {}, "name": "get_time"}</tool_call>')
    parser, events = _stream(text, step, opened="<think>\n")
    tools = [e for k, e in events if k == "tool"]
    whole = parse_reply("<think>\n" + text)
    for i, (call, args) in enumerate(zip(whole.tool_calls, whole.arguments_text)):
        mine = [e for e in tools if e["index"] == i]
        assert mine[0]["id"].startswith("call_") and mine[0]["type"] == "function"
        assert mine[0]["function"] == {"name": call["name"], "arguments": ""}
        assert all("id" not in e and "name" not in e["function"] for e in mine[1:])
        assert "".join(e["function"]["arguments"] for e in mine) == args
    assert len({e["id"] for e in tools if "id" in e}) == 2
    if step == 1:  # streamed in pieces while the call was being written
        assert len([e for e in tools if e["index"] == 0]) > 5
    assert "".join(e for k, e in events if k == "reasoning") == "Let me check."
    assert [c["function"]["name"] for c in parser.openai_calls()] == ["get_weather", "get_time"]


def test_stream_flags_an_announced_call_that_breaks():
    parser, events = _stream('<tool_call>{"name": "f", "arguments": {"a": 1,,}}</tool_call>', opened="")
    assert parser.failed == [0] and parser.openai_calls() == []
    assert [e for k, e in events if k == "tool"][0]["function"]["name"] == "f"
