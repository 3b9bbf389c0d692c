"""Reward functions (kexaone.rl.rewards, kexaone.rl.completions): math, code, instruction following, and their
combination with TRL's None semantics. The LLM judges are tested in test_rl_judge.py."""

import json

import pytest

from kexaone.rl.completions import completion_text, final_text
from kexaone.rl.rewards import (
    code_reward,
    combine_rewards,
    extract_code,
    ifeval_all_reward,
    ifeval_reward,
    math_reward,
    parse_reward_spec,
)


def test_completion_text_and_final_text():
    assert completion_text("plain") == "plain"
    conversation = [{"role": "assistant", "content": "first"}, {"role": "tool", "content": "x"},
                    {"role": "assistant", "content": "last"}]
    assert completion_text(conversation) == "last"
    assert completion_text({"role": "assistant", "content": "one"}) == "one"
    with pytest.raises(TypeError, match="str or a list of messages"):
        completion_text(5)
    assert final_text("<think>\nwork 2+2\n</think>\n\nThe answer is 4.") == "The answer is 4."
    assert final_text("<think>never closed, the answer is 4") == ""
    assert final_text("  no reasoning  ") == "no reasoning"


def test_math_reward():
    prompts = ["q"] * 6
    completions = [
        "<think>6/8</think>\nThe answer is $\\boxed{\\frac{3}{4}}$.",
        "I think it is 0.7. The answer is 0.7",
        [{"role": "assistant", "content": "#### 1,000"}],
        "<think>ran out before the answer is 1000",
        "Answer: 42",
        "Answer: 5",
    ]
    answers = ["0.75", "0.75", "Tom sold 1000 pens.\n#### 1,000", "#### 1000", None, "x = 5"]
    assert math_reward(prompts, completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, None, 1.0]
    # A MATH-style worked solution with a boxed answer in the `solution` column.
    solutions = ["So $x = \\boxed{2\\sqrt{2}}$."] * 2
    assert math_reward(["q", "q"], ["The answer is \\sqrt{8}", "The answer is 3"], solution=solutions) == [1.0, 0.0]
    assert math_reward(["q"], ["4"]) == [None]  # no gold column: not applicable
    assert math_reward(["q", "q"], ["  4 ", "4\nmore text"], answer=["4", "4"]) == [1.0, 0.0]  # a bare answer
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        math_reward(["q", "q"], ["1", "2"], answer=["1"])


def test_extract_code():
    reply = "Plan.\n```text\nnot code\n```\n```python\nprint(1)\n```\nand\n```py\nprint(2)\n```\n"
    assert extract_code(reply) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("print(4)") == "print(4)"


def test_code_reward():
    good = "```python\nimport sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\n```"
    wrong = "```python\nprint(0)\n```"
    hostile = "```python\nwhile True:\n    pass\n```"
    stdio = [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}]
    rewards = code_reward(
        ["p"] * 5,
        [good, wrong, hostile, "def f(x):\n    return 2 * x\n", good],
        tests=[stdio, json.dumps(stdio), stdio, "assert f(2) == 4\nassert f(0) == 0", None],
        timeout_s=1.0,
    )
    assert rewards == [1.0, 0.0, 0.0, 1.0, None]
    assert code_reward(["p"], [good]) == [None]
    with pytest.raises(ValueError, match="column 'tests' has 2 values for 1 completions"):
        code_reward(["p"], [good], tests=[stdio, stdio])


def test_ifeval_rewards():
    ids = [["punctuation:no_comma", "change_case:english_lowercase", "keywords:existence"], [], None]
    kwargs = [[{}, {}, {"keywords": ["river"]}], [], None]
    completions = ["The river, it flows.", "anything", "anything"]
    ids[2] = ["startend:quotation"]
    kwargs[2] = [{}]
    completions[2] = '"quoted"'
    assert ifeval_reward(["p"] * 3, completions, instruction_id_list=ids, kwargs=kwargs) == [
        pytest.approx(1 / 3), None, 1.0]
    assert ifeval_all_reward(["p"] * 3, completions, instruction_id_list=ids, kwargs=kwargs) == [0.0, None, 1.0]
    assert ifeval_reward(["p"], ["x"]) == [None]
    # The prompt (a conversation here) feeds combination:repeat_prompt when its kwargs lack prompt_to_repeat.
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "Repeat me."}]
    assert ifeval_reward([prompt], ["Repeat me. Done."], instruction_id_list=[["combination:repeat_prompt"]],
                         kwargs=[[{}]]) == [1.0]


def _length_reward(prompts, completions, **columns):
    return [min(1.0, len(c) / 10) for c in completions]


def _format_reward(prompts, completions, kind, **columns):
    return [None if k != "chat" else float(c.endswith(".")) for c, k in zip(completions, kind)]


def test_combine_rewards_weighted_mean_skips_none():
    prompts = ["p1", "p2", "p3"]
    completions = ["short.", "a longer reply", "x"]
    columns = {"kind": ["chat", "math", "math"], "answer": [None, "5", "x"]}
    funcs = [(_length_reward, 1.0), (_format_reward, 3.0), ("maths", math_reward, 2.0)]
    total, per = combine_rewards(funcs, prompts, completions, columns)
    assert per == {"_length_reward": [0.6, 1.0, 0.1], "_format_reward": [1.0, None, None],
                   "maths": [None, 0.0, 1.0]}
    # Row 0: (1*0.6 + 3*1.0) / 4; row 1: (1*1.0 + 2*0.0) / 3; row 2: (1*0.1 + 2*1.0) / 3.
    assert total == pytest.approx([3.6 / 4, 1.0 / 3, 2.1 / 3])
    total_sum, _ = combine_rewards(funcs, prompts, completions, columns, aggregate="sum")
    assert total_sum == pytest.approx([3.6, 1.0, 2.1])  # TRL: nansum of weighted rewards


def test_combine_rewards_edge_cases():
    never = lambda prompts, completions, **c: [None] * len(completions)  # noqa: E731
    with pytest.warns(UserWarning, match="no reward applies to completion 0"):
        total, per = combine_rewards([("never", never, 1.0)], ["p"], ["c"])
    assert total == [0.0] and per == {"never": [None]}
    nan_reward = lambda prompts, completions, **c: [float("nan"), 1]  # noqa: E731
    total, per = combine_rewards([("n", nan_reward, 2.0), (_length_reward, 1.0)], ["p", "p"], ["ab", "abcd"])
    assert per["n"] == [None, 1.0] and total == pytest.approx([0.2, (2 * 1.0 + 0.4) / 3])
    with pytest.raises(ValueError, match="returned 1 values for 2 completions"):
        combine_rewards([("bad", lambda prompts, completions, **c: [1.0], 1.0)], ["p", "p"], ["a", "b"])
    with pytest.raises(ValueError, match="returned 'yes'"):
        combine_rewards([("bad", lambda prompts, completions, **c: ["yes"], 1.0)], ["p"], ["a"])
    with pytest.raises(ValueError, match="two rewards are named"):
        combine_rewards([(_length_reward, 1.0), (_length_reward, 2.0)], ["p"], ["a"])
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        combine_rewards([(_length_reward, 1.0)], ["p", "q"], ["a"])
    with pytest.raises(ValueError, match="aggregate"):
        combine_rewards([(_length_reward, 1.0)], ["p"], ["a"], aggregate="max")


def test_parse_reward_spec():
    assert parse_reward_spec("math") == ("math", math_reward, 1.0)
    assert parse_reward_spec("code:0.5") == ("code", code_reward, 0.5)
    name, func, weight = parse_reward_spec("kexaone.rl.rewards:ifeval_all_reward:2")
    assert (name, func, weight) == ("ifeval_all_reward", ifeval_all_reward, 2.0)
    assert parse_reward_spec("kexaone.rl.rewards:math_reward:0.25") == ("math_reward", math_reward, 0.25)
    assert parse_reward_spec("tool_call:0.5")[0] == "tool_call"
    with pytest.raises(ValueError, match="unknown reward .nope..*math, code, ifeval"):
        parse_reward_spec("nope:1")
    with pytest.raises(ValueError, match="cannot be imported"):
        parse_reward_spec("kexaone.rl.rewards:missing")
