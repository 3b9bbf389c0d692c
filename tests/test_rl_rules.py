"""Rule-based rewards for preference learning (kexaone.rl.rules): language, length, tool-call validity."""

import pytest

from kexaone.rl.rules import language_match_reward, length_reward, tool_call_errors, tool_call_reward

KO_PROMPT = "서울에서 가볼 만한 곳을 추천해 주세요."
KO_REPLY = "경복궁과 북촌 한옥마을을 추천합니다. 가을에는 남산도 아름답습니다."
EN_REPLY = "I recommend Gyeongbokgung Palace and the Bukchon Hanok Village in autumn."


def test_language_match_from_prompt_and_column():
    prompts = [KO_PROMPT, KO_PROMPT, [{"role": "user", "content": "Recommend places to visit in Seoul, please."}],
               KO_PROMPT, KO_PROMPT]
    completions = [KO_REPLY, EN_REPLY, EN_REPLY, "<think>생각 중</think>", "12345 67890"]
    assert language_match_reward(prompts, completions) == [1.0, 0.0, 1.0, 0.0, None]
    # An explicit column wins over the prompt (a translation request asks for another language).
    assert language_match_reward([KO_PROMPT, KO_PROMPT], [EN_REPLY, KO_REPLY], language=["en", "en"]) == [1.0, 0.0]
    assert language_match_reward(["12345"], [EN_REPLY]) == [None]  # no language in the prompt


def test_length_reward():
    completions = ["one two three", "one two three four five six", "short", "no limits here"]
    rewards = length_reward(["p"] * 4, completions, max_words=[3, 3, None, None], min_words=[2, None, None, None],
                            max_chars=[None, None, 4, None])
    assert rewards == [1.0, 0.0, 0.0, None]
    assert length_reward(["p"], ["x"]) == [None]


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city"], "properties": {
            "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}, "days": {"type": "integer"},
        }},
    }},
    {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
]


def _call(body: str) -> str:
    return f"<think>\nneed a tool\n</think>\n\n<tool_call>{body}</tool_call>"


@pytest.mark.parametrize(
    "completion, expected_errors",
    [
        (_call('{"name": "get_weather", "arguments": {"city": "Seoul", "unit": "C", "days": 3}}'), []),
        (_call('{"name": "search", "arguments": {"query": "kimchi", "extra": 1}}'), []),  # extra keys allowed
        ("Just an answer, no tool.", []),
        (_call('{"name": "get_weather", "arguments": {"unit": "C"}}'), ["missing required argument 'city'"]),
        (_call('{"name": "get_weather", "arguments": {"city": "Seoul", "unit": "K"}}'), ["must be one of"]),
        (_call('{"name": "get_weather", "arguments": {"city": "Seoul", "days": true}}'), ["should be integer"]),
        (_call('{"name": "get_weather", "arguments": {"city": "Seoul", "when": "now"}}'), ["unknown argument 'when'"]),
        (_call('{"name": "book_flight", "arguments": {}}'), ["unknown tool 'book_flight'"]),
        (_call('{"name": "search", "arguments": {"query": '), ["invalid JSON"]),
        ("<tool_call>{\"name\": \"search\"}", ["not closed"]),
    ],
)
def test_tool_call_errors(completion, expected_errors):
    _, errors = tool_call_errors(completion, TOOLS)
    assert len(errors) == len(expected_errors), errors
    for error, expected in zip(errors, expected_errors):
        assert expected in error


def test_tool_call_reward():
    good = _call('{"name": "get_weather", "arguments": {"city": "Seoul"}}')
    bad = _call('{"name": "get_weather", "arguments": {}}')
    conversation = [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}]}]
    completions = [good, bad, "No tool needed.", "No tool needed.", conversation, good]
    rewards = tool_call_reward(["p"] * 6, completions, tools=[TOOLS] * 5 + [None],
                               tool_call_expected=[True, True, False, True, None, None])
    assert rewards == [1.0, 0.0, 1.0, 0.0, 1.0, None]
    assert tool_call_reward(["p"], [good]) == [None]
    with pytest.raises(ValueError, match="a tool must be"):
        tool_call_reward(["p"], [good], tools=[[{"type": "function"}]])
