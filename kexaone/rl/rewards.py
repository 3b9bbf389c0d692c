"""Reward functions for RL and preference learning, with TRL's calling convention, and their weighted combination.

Every reward is a callable `f(prompts, completions, **columns) -> list[float | None]`: one value per completion,
None where the reward does not apply (a math reward on a code prompt). `columns` are the dataset's other columns,
one list each, aligned with the completions (TRL's GRPOTrainer passes them the same way, so TRL reward functions
work here and ours work in TRL). Completions are read by kexaone.rl.completions: a string or a conversation, and
in reasoning mode only what follows the last `</think>` is scored.

Built in here: `math_reward` (final-answer equivalence), `code_reward` (tests run in the sandbox), `ifeval_reward`
/ `ifeval_all_reward` (IFEval instructions). LLM judges (one rating, or a rubric) are in kexaone.rl.judge.
Rule rewards (language, length, tool calls, refusals) are in kexaone.rl.rules. `combine_rewards`
weighs several rewards; `parse_reward_spec` reads the CLI's `NAME[:weight]`.
What this module does not do: sample completions or compute advantages (see kexaone.rl.objectives).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from kexaone.rl.completions import column, final_text, prompt_text
from kexaone.rl.rules import language_match_reward, length_reward, refusal_reward, tool_call_reward
from kexaone.rl.sandbox import run_tests
from kexaone.rl.verifiers.ifeval import check_instructions
from kexaone.rl.verifiers.math import answers_equal, extract_final_answer, gsm8k_gold

__all__ = [
    "RewardFunc",
    "extract_code",
    "math_reward",
    "code_reward",
    "ifeval_reward",
    "ifeval_all_reward",
    "combine_rewards",
    "parse_reward_spec",
    "REWARDS",
]

RewardFunc = Callable[..., list]


# ----------------------------------------------------------------------------------------------------------------
# Math


def _gold_answer(gold: Any) -> str | None:
    if gold is None:
        return None
    gold = str(gold)
    if "####" in gold:
        return gsm8k_gold(gold)
    # A worked solution (MATH's `solution` column) ends in a boxed answer; a short gold answer is itself.
    return extract_final_answer(gold) if "\\boxed" in gold or "\\fbox" in gold else gold.strip()


_BARE_ANSWER_CHARS = 64


def math_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
    """1.0 when the reply's final answer (see `extract_final_answer`; a reply that is one short line is its own
    answer) equals the gold answer in the `solution` or
    `answer` column (a GSM8K `#### N` field, a worked solution with a boxed answer, or a bare answer), else 0.0;
    None where the row has no gold answer."""
    golds = column(columns, ("solution", "answer"), len(completions))
    if golds is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, golds):
        gold_answer = _gold_answer(gold)
        if not gold_answer:
            out.append(None)
            continue
        text = final_text(completion)
        pred = extract_final_answer(text)
        if pred is None and "\n" not in text and len(text) <= _BARE_ANSWER_CHARS:
            pred = text  # a bare one-line answer ("42") announces itself
        out.append(1.0 if answers_equal(pred, gold_answer) else 0.0)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Code

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The program in a reply: the last ```python (or ```py) block, else the last fenced block of any language,
    else the whole text."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return blocks[-1][1]
    return text


def _tests_of(value: Any) -> list | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                return json.loads(stripped)  # stdio cases stored as a JSON string (LiveCodeBench style)
            except json.JSONDecodeError:
                pass
        return stripped or None
    return list(value)


def code_reward(
    prompts: Sequence,
    completions: Sequence,
    *,
    tests: Sequence | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    workers: int = 2,
    **columns,
) -> list[float | None]:
    """Fraction of the `tests` column's cases the reply's program passes in the sandbox (see `run_tests`): a list of
    {"input", "output"} stdio cases (or its JSON string), or assert-style Python. None where a row has no tests.
    Completions are run `workers` at a time (each run is its own process)."""
    if tests is None:
        return [None] * len(completions)
    if len(tests) != len(completions):
        raise ValueError(f"column 'tests' has {len(tests)} values for {len(completions)} completions")

    def score(pair) -> float | None:
        completion, case = pair
        parsed = _tests_of(case)
        if not parsed:
            return None
        code = extract_code(final_text(completion))
        if not code.strip():
            return 0.0
        return run_tests(code, parsed, timeout_s=timeout_s, memory_mb=memory_mb)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(score, zip(completions, tests)))


# ----------------------------------------------------------------------------------------------------------------
# Instruction following


def _ifeval_scores(prompts, completions, instruction_id_list, kwargs, all_or_nothing: bool) -> list[float | None]:
    if instruction_id_list is None:
        return [None] * len(completions)
    n = len(completions)
    if len(instruction_id_list) != n or (kwargs is not None and len(kwargs) != n):
        raise ValueError(f"columns 'instruction_id_list' and 'kwargs' must have one entry per completion ({n})")
    out: list[float | None] = []
    for i, completion in enumerate(completions):
        ids = instruction_id_list[i]
        if not ids:
            out.append(None)
            continue
        row_kwargs = kwargs[i] if kwargs is not None else [{}] * len(ids)
        prompt = prompt_text(prompts[i]) if i < len(prompts) else ""
        strict = check_instructions(final_text(completion), ids, row_kwargs, prompt).strict
        out.append(float(all(strict)) if all_or_nothing else sum(strict) / len(strict))
    return out


def ifeval_reward(prompts: Sequence, completions: Sequence, *, instruction_id_list=None, kwargs=None,
                  **columns) -> list[float | None]:
    """Fraction of the row's IFEval instructions (columns `instruction_id_list`, `kwargs`) the reply follows
    strictly; None where a row has no instructions."""
    return _ifeval_scores(prompts, completions, instruction_id_list, kwargs, all_or_nothing=False)


def ifeval_all_reward(prompts: Sequence, completions: Sequence, *, instruction_id_list=None, kwargs=None,
                      **columns) -> list[float | None]:
    """1.0 when the reply follows every IFEval instruction of its row strictly, else 0.0 (IFEval's prompt-level
    accuracy); None where a row has no instructions."""
    return _ifeval_scores(prompts, completions, instruction_id_list, kwargs, all_or_nothing=True)


# ----------------------------------------------------------------------------------------------------------------
# Combining rewards


def _reward_name(func: Callable) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def combine_rewards(
    funcs_with_weights: Sequence[tuple[Callable, float] | tuple[str, Callable, float]],
    prompts: Sequence,
    completions: Sequence,
    columns: Mapping[str, Sequence] | None = None,
    *,
    aggregate: Literal["mean", "sum"] = "mean",
) -> tuple[list[float], dict[str, list[float | None]]]:
    """Run each reward and combine them per completion: (total [n], per_reward {name: [n] values or None}).

    Items are (func, weight) or (name, func, weight); the name defaults to the function's `__name__`. A reward
    that returns None for a completion is skipped for it, as in TRL (which turns None into NaN and uses nansum).
    `aggregate="mean"` (default) is the weighted mean over the rewards that apply,
    sum_k w_k r_k / sum_k w_k, so rewards in [0, 1] combine into [0, 1]; `aggregate="sum"` is TRL's weighted sum
    sum_k w_k r_k. A completion no reward applies to gets 0.0 and a warning (TRL does the same).
    """
    if aggregate not in ("mean", "sum"):
        raise ValueError(f"aggregate must be 'mean' or 'sum', got {aggregate!r}")
    columns = dict(columns or {})
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions; repeat each prompt once per completion")
    named: list[tuple[str, Callable, float]] = []
    for item in funcs_with_weights:
        name, func, weight = item if len(item) == 3 else (_reward_name(item[0]), item[0], item[1])
        if not callable(func):
            raise TypeError(f"reward {name!r} is not callable")
        if not math.isfinite(weight):
            raise ValueError(f"reward {name!r} has a non-finite weight {weight!r}")
        if any(name == other for other, _, _ in named):
            raise ValueError(f"two rewards are named {name!r}; give (name, func, weight) to tell them apart")
        named.append((name, func, float(weight)))
    if not named:
        raise ValueError("combine_rewards needs at least one (func, weight)")

    per_reward: dict[str, list[float | None]] = {}
    for name, func, _ in named:
        values = func(prompts=prompts, completions=completions, **columns)
        if len(values) != n:
            raise ValueError(f"reward {name!r} returned {len(values)} values for {n} completions")
        clean: list[float | None] = []
        for value in values:
            if value is None:
                clean.append(None)
                continue
            if isinstance(value, str) or not hasattr(value, "__float__"):
                raise ValueError(f"reward {name!r} returned {value!r}; expected a number or None")
            number = float(value)  # numpy and torch scalars too
            clean.append(None if math.isnan(number) else number)  # NaN is TRL's spelling of None
        per_reward[name] = clean

    totals: list[float] = []
    for i in range(n):
        applicable = [(w, per_reward[name][i]) for name, _, w in named if per_reward[name][i] is not None]
        if not applicable:
            warnings.warn(f"no reward applies to completion {i}; its reward is 0.0", stacklevel=2)
            totals.append(0.0)
            continue
        weighted = sum(w * r for w, r in applicable)
        if aggregate == "sum":
            totals.append(weighted)
        else:
            weight_sum = sum(w for w, _ in applicable)
            totals.append(weighted / weight_sum if weight_sum != 0 else 0.0)
    return totals, per_reward


REWARDS: dict[str, RewardFunc] = {
    "math": math_reward,
    "code": code_reward,
    "ifeval": ifeval_reward,
    "ifeval_all": ifeval_all_reward,
    "language": language_match_reward,
    "length": length_reward,
    "tool_call": tool_call_reward,
    "refusal": refusal_reward,
}


def parse_reward_spec(spec: str) -> tuple[str, RewardFunc, float]:
    """Read a CLI reward spec `NAME[:weight]` into (name, func, weight).

    NAME is a built-in (`math`, `code`, `ifeval`, `ifeval_all`, `language`, `length`, `tool_call`, `refusal`) or an
    importable `package.module:function` with TRL's signature; the weight defaults to 1.0. (LLM judges need an
    endpoint, so they are built with kexaone.rl.judge, not named here.)
    """
    head, weight = spec, 1.0
    if ":" in spec:
        left, _, right = spec.rpartition(":")
        try:
            weight = float(right)
            head = left
        except ValueError:
            head = spec
    if head in REWARDS:
        return head, REWARDS[head], weight
    if ":" in head:
        module_name, _, attr = head.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"reward {head!r} cannot be imported: {err}") from err
        if not callable(func):
            raise ValueError(f"reward {head!r} is not callable")
        return attr, func, weight
    raise ValueError(
        f"unknown reward {head!r}; use one of {', '.join(REWARDS)} or an importable 'package.module:function'"
    )
