"""The rule reward `kexaone pref` adds to kexaone.rl.rewards: reply format, and the preference reward registry
(`parse_pref_reward`).

  - `format_reward`: the assistant turn parses in the K-EXAONE chat format (no parse errors, a reasoning block
    that was opened is closed) and leaves a non-empty answer; 1.0 or 0.0, always applicable.
Every other rule (language, length, refusal-vs-help, tool calls, IFEval) is a built-in of kexaone.rl.rewards,
shared with `kexaone rl`. What this module does not do: call judges (kexaone.rl.judge) or combine rewards
(kexaone.rl.rewards).
"""

from __future__ import annotations

from collections.abc import Sequence

from kexaone.rl.completions import completion_text, final_text

__all__ = ["format_reward", "PREF_REWARDS", "DEFAULT_PREF_REWARDS", "parse_pref_reward"]


def format_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """1.0 when the reply parses cleanly and has a non-empty final answer (see the module), else 0.0."""
    from kexaone.tokenizer.chat import parse_assistant

    out: list[float | None] = []
    for completion in completions:
        text = completion_text(completion)
        parsed = parse_assistant(text)
        ok = not parsed.errors and (bool(final_text(completion)) or bool(parsed.tool_calls))
        out.append(float(ok))
    return out


PREF_REWARDS = {"format": format_reward}
DEFAULT_PREF_REWARDS = ("format", "language", "length", "refusal", "tool_call", "ifeval")


def parse_pref_reward(spec: str):
    """`NAME[:weight]` -> (name, func, weight): `format`, or anything kexaone.rl.rewards.parse_reward_spec knows
    (language, length, refusal, tool_call, ifeval, math, code, module:function)."""
    from kexaone.rl.rewards import parse_reward_spec

    head, weight = spec, 1.0
    left, sep, right = spec.rpartition(":")
    if sep:
        try:
            weight, head = float(right), left
        except ValueError:
            pass
    if head in PREF_REWARDS:
        return head, PREF_REWARDS[head], weight
    try:
        return parse_reward_spec(spec)
    except ValueError as e:
        raise ValueError(f"{e} (kexaone pref also knows: {', '.join(PREF_REWARDS)})") from None
