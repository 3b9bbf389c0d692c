"""Reward functions for RL and preference learning, with TRL's calling convention, and their weighted combination.

Every reward is a callable `f(prompts, completions, **columns) -> list[float | None]`: one value per completion,
None where the reward does not apply (a math reward on a code prompt). `columns` are the dataset's other columns,
one list each, aligned with the completions (TRL's GRPOTrainer passes them the same way, so TRL reward functions
work here and ours work in TRL). A completion is a string, or a conversation whose last assistant message is the
reply (TRL's conversational format). In reasoning mode only what follows the last `</think>` is scored; a reply
whose reasoning never closed has no answer.

Built in: `math_reward` (final-answer equivalence), `code_reward` (tests run in the sandbox), `ifeval_reward` /
`ifeval_all_reward` (IFEval instructions), and `make_judge_reward` (an LLM judge behind any OpenAI-compatible
endpoint). `combine_rewards` weighs several of them; `parse_reward_spec` reads the CLI's `NAME[:weight]`.
What this module does not do: sample completions or compute advantages (see kexaone.rl.objectives).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from kexaone.rl.sandbox import run_tests
from kexaone.rl.verifiers.ifeval import check_instructions
from kexaone.rl.verifiers.math import answers_equal, extract_final_answer, gsm8k_gold
from kexaone.tokenizer.specials import THINK_CLOSE, THINK_OPEN

__all__ = [
    "RewardFunc",
    "completion_text",
    "final_text",
    "extract_code",
    "math_reward",
    "code_reward",
    "ifeval_reward",
    "ifeval_all_reward",
    "make_judge_reward",
    "parse_judge_rating",
    "combine_rewards",
    "parse_reward_spec",
    "REWARDS",
]

log = logging.getLogger(__name__)

RewardFunc = Callable[..., list]


# ----------------------------------------------------------------------------------------------------------------
# Reading completions and prompts


def completion_text(completion: Any) -> str:
    """The reply text of a completion: a string as is; for a conversation (list of {"role", "content"}) the content
    of its last assistant message; for one message dict its content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        for message in reversed(completion):
            if isinstance(message, Mapping) and message.get("role", "assistant") == "assistant":
                return str(message.get("content") or "")
        return ""
    raise TypeError(f"a completion must be a str or a list of messages, got {type(completion).__name__}")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m.get("content") or "" for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return ""


def final_text(completion: Any) -> str:
    """The part of a reply that is scored: after the last `</think>`; "" when reasoning was opened and never closed
    (the reply ran out before answering); the whole reply in non-reasoning mode."""
    text = completion_text(completion)
    if THINK_CLOSE in text:
        return text.rpartition(THINK_CLOSE)[2].strip()
    if THINK_OPEN in text:
        return ""
    return text.strip()


def _column(columns: Mapping[str, Any], names: Sequence[str], n: int) -> list | None:
    for name in names:
        values = columns.get(name)
        if values is not None:
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
            return list(values)
    return None


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
    golds = _column(columns, ("solution", "answer"), len(completions))
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
        prompt = _prompt_text(prompts[i]) if i < len(prompts) else ""
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
# LLM as a judge

DEFAULT_JUDGE_TEMPLATE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
    "user question displayed below. Consider helpfulness, relevance, accuracy, depth and level of detail, and "
    "whether the response is in the language of the question.{reference_note} Begin your evaluation with a short "
    "explanation. Be as objective as possible. After your explanation, rate the response on a scale of 1 to 10 by "
    "strictly following this format: \"Rating: [[5]]\".\n\n"
    "[Question]\n{prompt}\n\n{reference}[The Start of Assistant's Answer]\n{completion}\n[The End of Assistant's "
    "Answer]"
)

_RATING_PATTERNS = (
    re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]"),
    re.compile(r"rating\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE),
    re.compile(r"(-?\d+(?:\.\d+)?)\s*/\s*10\b"),
)


def parse_judge_rating(text: str, scale: tuple[float, float] = (1.0, 10.0)) -> float | None:
    """A judge's rating mapped to [0, 1]: the last `[[x]]` (MT-Bench format), else the last "Rating: x", else the
    last "x/10"; `scale` is the rating's (worst, best). None when the text holds no rating; out-of-scale ratings are
    clamped."""
    lo, hi = scale
    if not hi > lo:
        raise ValueError(f"judge scale must be (worst, best) with best > worst, got {scale!r}")
    for pattern in _RATING_PATTERNS:
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return min(1.0, max(0.0, (value - lo) / (hi - lo)))
    return None


def make_judge_reward(
    endpoint: str,
    model: str,
    *,
    template: str = DEFAULT_JUDGE_TEMPLATE,
    scale: tuple[float, float] = (1.0, 10.0),
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_tokens: int = 1024,
    workers: int = 4,
    name: str = "judge",
    transport: Any = None,
) -> RewardFunc:
    """A reward that asks an LLM judge behind an OpenAI-compatible endpoint (`.../v1`) to rate each reply.

    The judge gets `template` filled with {prompt}, {completion}, {reference} and {reference_note} (from a
    `reference` column when the dataset has one), at temperature 0, and its rating is parsed with
    `parse_judge_rating` into [0, 1]. A judge call that fails or returns no rating gives None (not applicable),
    logged as a warning, so one bad call does not stop training. `transport` is passed to httpx (tests).
    """
    import httpx

    for field in ("{prompt}", "{completion}"):
        if field not in template:
            raise ValueError(f"judge template must contain {field}")
    parse_judge_rating("", scale)  # validates the scale now rather than at the first call
    url = endpoint.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def rate(client: httpx.Client, prompt: Any, completion: Any, reference: Any) -> float | None:
        filled = template.format(
            prompt=_prompt_text(prompt),
            completion=final_text(completion),
            reference=f"[Reference Answer]\n{reference}\n\n" if reference else "",
            reference_note=" Compare the response with the reference answer." if reference else "",
        )
        body = {"model": model, "messages": [{"role": "user", "content": filled}], "temperature": 0.0,
                "max_tokens": max_tokens}
        try:
            response = client.post(url, json=body, headers=headers)
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"] or ""
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as err:
            log.warning("judge call to %s failed: %s", url, err)
            return None
        rating = parse_judge_rating(content, scale)
        if rating is None:
            log.warning("judge reply has no rating: %.200r", content)
        return rating

    def judge_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
        references = _column(columns, ("reference",), len(completions)) or [None] * len(completions)
        prompt_list = list(prompts) if len(prompts) == len(completions) else [None] * len(completions)
        with httpx.Client(timeout=timeout_s, transport=transport) as client, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(lambda args: rate(client, *args), zip(prompt_list, completions, references)))

    judge_reward.__name__ = name
    return judge_reward


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
}


def parse_reward_spec(spec: str) -> tuple[str, RewardFunc, float]:
    """Read a CLI reward spec `NAME[:weight]` into (name, func, weight).

    NAME is a built-in (`math`, `code`, `ifeval`, `ifeval_all`) or an importable `package.module:function` with
    TRL's signature; the weight defaults to 1.0. (The LLM judge needs an endpoint, so it is built with
    `make_judge_reward`, not named here.)
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
