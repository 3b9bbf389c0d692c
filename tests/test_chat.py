"""K-EXAONE chat format: golden strings, parity with the jinja template under transformers' apply_chat_template,
loss masks, and parsing of generated replies."""

from __future__ import annotations

import pytest

from kexaone.tokenizer import KExaoneTokenizer, SPECIAL_TOKENS
from kexaone.tokenizer.chat import encode_chat, parse_assistant, render, render_segments

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}

SIMPLE = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Add them: 2+2=4."},
]
MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!", "reasoning_content": "Greet back."},
    {"role": "user", "content": "안녕?"},
    {"role": "assistant", "content": "네, 안녕하세요.", "reasoning_content": "Korean greeting."},
]
TOOLS = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "Weather in Seoul?"},
    {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "서울"}}}]},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21°C.", "reasoning_content": "Report it."},
]


def test_golden_reasoning_on():
    assert render(SIMPLE) == (
        "<|system|>\nYou are helpful.<|endofturn|>\n"
        "<|user|>\nWhat is 2+2?<|endofturn|>\n"
        "<|assistant|>\n<think>\nAdd them: 2+2=4.\n</think>\n\n4<|endofturn|>\n"
    )
    assert render(SIMPLE[:2], add_generation_prompt=True).endswith("<|user|>\nWhat is 2+2?<|endofturn|>\n"
                                                                   "<|assistant|>\n<think>\n")


def test_golden_reasoning_off():
    assert render(SIMPLE, enable_thinking=False) == (
        "<|system|>\nYou are helpful.<|endofturn|>\n"
        "<|user|>\nWhat is 2+2?<|endofturn|>\n"
        "<|assistant|>\n<think>\n\n</think>\n\n4<|endofturn|>\n"
    )
    assert render(SIMPLE[:2], enable_thinking=False, add_generation_prompt=True).endswith(
        "<|assistant|>\n<think>\n\n</think>\n\n")


def test_golden_multi_turn_drops_earlier_reasoning():
    assert render(MULTI) == (
        "<|user|>\nHi<|endofturn|>\n"
        "<|assistant|>\nHello!<|endofturn|>\n"
        "<|user|>\n안녕?<|endofturn|>\n"
        "<|assistant|>\n<think>\nKorean greeting.\n</think>\n\n네, 안녕하세요.<|endofturn|>\n"
    )


def test_golden_tools():
    assert render(TOOLS, tools=[WEATHER, CLOCK]) == (
        "<|system|>\nUse tools.<|endofturn|>\n"
        '<|tool_declare|>\n<tool>{"type": "function", "function": {"name": "get_weather", "description": "Current '
        'weather in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}</tool>\n'
        '<tool>{"type": "function", "function": {"name": "now", "parameters": {"type": "object", '
        '"properties": {}}}}</tool><|endofturn|>\n'
        "<|user|>\nWeather in Seoul?<|endofturn|>\n"
        '<|assistant|>\n<think>\nNeed the tool.\n</think>\n\n<tool_call>{"name": "get_weather", "arguments": '
        '{"city": "서울"}}</tool_call><|endofturn|>\n'
        '<|tool|>\n<tool_result>{"temp": 21}</tool_result><|endofturn|>\n'
        "<|assistant|>\n<think>\nReport it.\n</think>\n\nIt is 21°C.<|endofturn|>\n"
    )


def test_tool_declaration_without_system_and_call_forms():
    msgs = [{"role": "user", "content": "t?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"name": "now", "arguments": "{\"tz\": \"KST\"}"}, {"function": {"name": "now"}}]}]
    assert render(msgs, tools=[CLOCK], enable_thinking=False) == (
        '<|tool_declare|>\n<tool>{"type": "function", "function": {"name": "now", "parameters": {"type": "object", '
        '"properties": {}}}}</tool><|endofturn|>\n'
        "<|user|>\nt?<|endofturn|>\n"
        '<|assistant|>\n<think>\n\n</think>\n\nChecking.\n<tool_call>{"name": "now", "arguments": {"tz": "KST"}}'
        '</tool_call>\n<tool_call>{"name": "now", "arguments": {}}</tool_call><|endofturn|>\n'
    )


CASES = [
    (SIMPLE, None, True, False), (SIMPLE, None, False, False), (SIMPLE[:2], None, True, True),
    (SIMPLE[:2], None, False, True), (MULTI, None, True, False), (MULTI[:3], None, True, True),
    (TOOLS, [WEATHER, CLOCK], True, False), (TOOLS[:4], [WEATHER], False, True),
    ([{"role": "system", "content": "only"}], [CLOCK], True, True),
    ([{"role": "user", "content": "u"}], [WEATHER], True, True),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
      {"role": "tool", "content": {"ok": True}}, {"role": "assistant", "content": None}], None, True, False),
    ([{"role": "user", "content": "t?"}, {"role": "assistant", "content": "On it.", "tool_calls": [
        {"name": "now", "arguments": "{\"tz\": \"KST\"}"}, {"function": {"name": "now"}},
        {"function": {"name": "now", "arguments": None}}]}], [CLOCK], False, False),
]


@pytest.fixture(scope="module")
def byte_tok(tmp_path_factory):
    """A kexaone tokenizer with no merges (bytes + specials): enough for format tests, built instantly."""
    tok = KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])
    out = tmp_path_factory.mktemp("bytetok")
    tok.save(out)
    return tok, out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_jinja_template_matches_render_in_transformers(byte_tok, case):
    from transformers import AutoTokenizer

    messages, tools, thinking, gen = CASES[case]
    hf = AutoTokenizer.from_pretrained(str(byte_tok[1]))
    got = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen,
                                 enable_thinking=thinking)
    assert got == render(messages, tools=tools, enable_thinking=thinking, add_generation_prompt=gen)


def test_template_defaults_to_thinking(byte_tok):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(byte_tok[1]))
    assert hf.apply_chat_template(SIMPLE[:2], tokenize=False, add_generation_prompt=True) == render(
        SIMPLE[:2], add_generation_prompt=True)


@pytest.mark.parametrize("messages,tools", [(SIMPLE, None), (MULTI, None), (TOOLS, [WEATHER])])
def test_loss_mask_covers_exactly_assistant_bodies(byte_tok, messages, tools):
    tok = byte_tok[0]
    ids, mask = encode_chat(tok, messages, tools=tools)
    assert len(ids) == len(mask)
    assert ids == tok.encode(render(messages, tools=tools))
    bodies = "".join(text for text, is_body in render_segments(messages, tools) if is_body)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == bodies
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) + bodies != ""
    # Every assistant turn's closing <|endofturn|> is trained on; user/system/tool turn ends are not.
    eos = tok.eos_id
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    assert sum(1 for i, m in zip(ids, mask) if i == eos and m) == n_assistant
    assert sum(1 for i, m in zip(ids, mask) if i == eos and not m) == len(messages) - n_assistant + bool(tools)
    # The header "<|assistant|>\n" itself is never trained on.
    assistant = tok.special_ids["<|assistant|>"]
    assert all(m == 0 for i, m in zip(ids, mask) if i == assistant)


def test_parse_reply_with_reasoning_and_calls():
    text = ('Let me check.\n</think>\n\nSure.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Seoul"}}'
            '</tool_call>\n<tool_call>{"name": "now", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call><|endofturn|>')
    r = parse_assistant(text)
    assert r.reasoning == "Let me check."
    assert r.content == "Sure."
    assert r.tool_calls == [{"name": "get_weather", "arguments": {"city": "Seoul"}},
                            {"name": "now", "arguments": {"tz": "UTC"}}]
    assert r.errors == []


def test_parse_round_trips_rendered_turn():
    turn = render(TOOLS[:3], tools=[WEATHER]).split("<|assistant|>\n", 1)[1]
    r = parse_assistant(turn)
    assert r.reasoning == "Need the tool." and r.content == ""
    assert r.tool_calls == [{"name": "get_weather", "arguments": {"city": "서울"}}]


def test_parse_empty_think_and_plain():
    assert parse_assistant("<think>\n\n</think>\n\nHello") == parse_assistant("Hello") == \
        parse_assistant("Hello<|endofturn|>ignored")
    assert parse_assistant("Hello").reasoning is None


def test_parse_reports_malformed_calls_without_raising():
    r = parse_assistant('<think>\nx\n</think>\n\nA <tool_call>{"name": "f", "arguments": {oops}</tool_call> B'
                        '<tool_call>{"arguments": {}}</tool_call><tool_call>[1]</tool_call>'
                        '<tool_call>{"name": "g", "arguments": 3}</tool_call><tool_call>{"name": "h"')
    assert r.reasoning == "x"
    assert r.tool_calls == []
    assert len(r.errors) == 5
    assert "invalid JSON" in r.errors[0] and "string 'name'" in r.errors[1] and "string 'name'" in r.errors[2]
    assert "must be an object" in r.errors[3] and "not closed" in r.errors[4]
    assert r.content == "A  B"
    unclosed = parse_assistant("<think>\nstill thinking")
    assert unclosed.reasoning == "still thinking" and unclosed.content == "" and unclosed.errors


def test_render_rejects_bad_messages():
    with pytest.raises(ValueError, match="role"):
        render([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="content"):
        render([{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="name"):
        render([{"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}])
    with pytest.raises(ValueError, match="messages"):
        render("hello")


@pytest.mark.parametrize("messages,tools", [(SIMPLE, None), (MULTI, None), (TOOLS, [WEATHER])])
def test_loss_mask_equals_transformers_assistant_tokens_mask(byte_tok, messages, tools):
    """transformers reads the template's {% generation %} blocks for return_assistant_tokens_mask: an outside
    oracle for the SFT loss mask (and for the ids of encode_chat)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(byte_tok[1]))
    out = hf.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                 return_assistant_tokens_mask=True)
    ids, mask = encode_chat(byte_tok[0], messages, tools=tools)
    assert list(out["input_ids"]) == ids
    assert list(out["assistant_masks"]) == mask
    assert sum(mask) > 0


def test_render_runs_the_template_file(monkeypatch, tmp_path):
    """template.jinja is the only source of the format: a changed template changes what render writes."""
    import kexaone.tokenizer.chat as chat

    changed = tmp_path / "template.jinja"
    changed.write_text(chat.TEMPLATE_PATH.read_text(encoding="utf-8").replace("'<|user|>\\n'", "'<|user|>\\n>> '"),
                       encoding="utf-8")
    monkeypatch.setattr(chat, "TEMPLATE_PATH", changed)
    chat._template.cache_clear()
    try:
        assert "<|user|>\n>> What is 2+2?" in render(SIMPLE)
    finally:
        monkeypatch.undo()
        chat._template.cache_clear()
    assert "<|user|>\nWhat is 2+2?" in render(SIMPLE)


@pytest.mark.parametrize("messages,match", [
    ([{"role": "user", "content": "a\ufdd0b"}], "U\\+FDD0"),
    ([{"role": "robot", "content": "x"}], "role must be one of"),
    ([{"role": "user", "content": 5}], "content must be a string"),
    ([{"role": "user", "content": ["x"]}], "content parts must be dicts"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}], "string 'name'"),
])
def test_render_rejects_bad_input_clearly(messages, match):
    with pytest.raises(ValueError, match=match):
        render(messages)
