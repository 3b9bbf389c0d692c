"""LLM-as-a-judge rewards over any OpenAI-compatible endpoint (`kexaone serve`, vLLM, a hosted API).

Two kinds, both TRL-signature reward functions (see kexaone.rl.rewards):
  - `make_judge_reward`: one rating per reply (MT-Bench style "Rating: [[7]]"), mapped to [0, 1];
  - `make_rubric_reward`: scores over several rubric dimensions in one JSON reply, each mapped to [0, 1] and
    combined by a weighted mean or the minimum; the rubric is a user-editable JSON file (`Rubric.load`), and the
    per-dimension scores of the last call stay available for logging.
A call that fails, or a reply that cannot be parsed, gives None ("not applicable") and a logged warning, so one bad
judge call does not stop training. Judge calls run concurrently (`workers`), at temperature 0.
What this module does not do: pairwise or group ranking judges, or retries with backoff.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kexaone.rl.completions import column, final_text, prompt_text

__all__ = [
    "JudgeEndpoint",
    "DEFAULT_JUDGE_TEMPLATE",
    "parse_judge_rating",
    "make_judge_reward",
    "RubricDimension",
    "Rubric",
    "DEFAULT_RUBRIC",
    "RubricJudgeReward",
    "make_rubric_reward",
]

log = logging.getLogger(__name__)


def _check_scale(scale: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(x) for x in scale)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"judge scale must be (worst, best) with best > worst, got {tuple(scale)!r}")
    return lo, hi


def _to_unit(value: float, scale: tuple[float, float]) -> float:
    lo, hi = scale
    return min(1.0, max(0.0, (value - lo) / (hi - lo)))


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where the judge lives: `endpoint` is the API base (".../v1"), `model` the served model's name.
    `transport` is handed to httpx (tests)."""

    endpoint: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    max_tokens: int = 1024
    workers: int = 4
    transport: Any = None

    def ask(self, user_messages: Sequence[str]) -> list[str | None]:
        """The judge's reply to each message (one single-turn chat each), None where the call failed."""
        import httpx

        url = self.endpoint.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

        def one(client: httpx.Client, text: str) -> str | None:
            body = {"model": self.model, "messages": [{"role": "user", "content": text}], "temperature": 0.0,
                    "max_tokens": self.max_tokens}
            try:
                response = client.post(url, json=body, headers=headers)
                response.raise_for_status()
                return response.json()["choices"][0]["message"]["content"] or ""
            except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as err:
                log.warning("judge call to %s failed: %s", url, err)
                return None

        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client, \
                ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            return list(pool.map(lambda text: one(client, text), user_messages))


def _judge_inputs(prompts: Sequence, completions: Sequence, columns: dict) -> list[tuple[str, str, Any]]:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    references = column(columns, ("reference",), len(completions)) or [None] * len(completions)
    return [(prompt_text(p), final_text(c), r) for p, c, r in zip(prompts, completions, references)]


# ----------------------------------------------------------------------------------------------------------------
# One rating per reply

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
    scale = _check_scale(scale)
    for pattern in _RATING_PATTERNS:
        found = pattern.findall(text)
        if found:
            return _to_unit(float(found[-1]), scale)
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
):
    """A reward that asks an LLM judge behind an OpenAI-compatible endpoint (`.../v1`) to rate each reply.

    The judge gets `template` filled with {prompt}, {completion}, {reference} and {reference_note} (from a
    `reference` column when the dataset has one), and its rating is parsed with `parse_judge_rating` into [0, 1].
    """
    for needed in ("{prompt}", "{completion}"):
        if needed not in template:
            raise ValueError(f"judge template must contain {needed}")
    scale = _check_scale(scale)
    judge = JudgeEndpoint(endpoint, model, api_key, timeout_s, max_tokens, workers, transport)

    def judge_reward(prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
        messages = [
            template.format(
                prompt=prompt,
                completion=completion,
                reference=f"[Reference Answer]\n{reference}\n\n" if reference else "",
                reference_note=" Compare the response with the reference answer." if reference else "",
            )
            for prompt, completion, reference in _judge_inputs(prompts, completions, columns)
        ]
        out: list[float | None] = []
        for reply in judge.ask(messages):
            rating = None if reply is None else parse_judge_rating(reply, scale)
            if reply is not None and rating is None:
                log.warning("judge reply has no rating: %.200r", reply)
            out.append(rating)
        return out

    judge_reward.__name__ = name
    return judge_reward


# ----------------------------------------------------------------------------------------------------------------
# Rubric: several dimensions in one call


@dataclass(frozen=True)
class RubricDimension:
    """One thing the judge scores: a short `name` (the JSON key it answers with), what it means, and its weight."""

    name: str
    description: str
    weight: float = 1.0


_RUBRIC_INSTRUCTIONS = (
    "Please act as an impartial judge. Score the AI assistant's response to the user's request below on each "
    "dimension of the rubric, from {lo:g} (worst) to {hi:g} (best). Think briefly, then end your reply with one JSON "
    "object on its own line that maps every dimension name to its score, for example {example}."
)


@dataclass(frozen=True)
class Rubric:
    """A scoring rubric: dimensions, the score scale, and how dimension scores combine ("mean": weighted mean of
    the scores mapped to [0, 1]; "min": the lowest, so every dimension must be good). `instructions` may use
    {lo}, {hi} and {example} (literal braces doubled)."""

    dimensions: tuple[RubricDimension, ...]
    scale: tuple[float, float] = (1.0, 10.0)
    aggregate: Literal["mean", "min"] = "mean"
    instructions: str = field(default=_RUBRIC_INSTRUCTIONS)

    def __post_init__(self) -> None:
        if not self.dimensions:
            raise ValueError("a rubric needs at least one dimension")
        names = [d.name for d in self.dimensions]
        for d in self.dimensions:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d.name):
                raise ValueError(f"rubric dimension name must be an identifier (a JSON key), got {d.name!r}")
            if not (math.isfinite(d.weight) and d.weight >= 0):
                raise ValueError(f"rubric dimension {d.name!r} has weight {d.weight!r}; weights must be >= 0")
        if len(set(names)) != len(names):
            raise ValueError(f"rubric dimension names repeat: {names}")
        if sum(d.weight for d in self.dimensions) <= 0:
            raise ValueError("rubric weights sum to 0; give at least one dimension a positive weight")
        object.__setattr__(self, "scale", _check_scale(self.scale))
        if self.aggregate not in ("mean", "min"):
            raise ValueError(f"rubric aggregate must be 'mean' or 'min', got {self.aggregate!r}")

    @classmethod
    def from_dict(cls, data: dict) -> Rubric:
        """From `{"dimensions": [{"name", "description", "weight"?}, ...], "scale"?: [lo, hi], "aggregate"?,
        "instructions"?}` (the rubric file's JSON)."""
        if not isinstance(data, dict) or not isinstance(data.get("dimensions"), list):
            raise ValueError('a rubric is a JSON object with a "dimensions" list')
        unknown = set(data) - {"dimensions", "scale", "aggregate", "instructions"}
        if unknown:
            raise ValueError(f"unknown rubric keys {sorted(unknown)}; valid: dimensions, scale, aggregate, "
                             "instructions")
        dims = []
        for i, d in enumerate(data["dimensions"]):
            if not isinstance(d, dict) or "name" not in d or "description" not in d:
                raise ValueError(f"rubric dimension {i} needs a name and a description, got {d!r}")
            dims.append(RubricDimension(str(d["name"]), str(d["description"]), float(d.get("weight", 1.0))))
        kwargs = {k: data[k] for k in ("aggregate", "instructions") if k in data}
        if "scale" in data:
            kwargs["scale"] = tuple(data["scale"])
        return cls(dimensions=tuple(dims), **kwargs)

    @classmethod
    def load(cls, path: str | Path) -> Rubric:
        """Read a rubric JSON file (see `from_dict`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"rubric file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"rubric file {path} is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def message(self, prompt: str, completion: str, reference: Any = None) -> str:
        """The judge's instruction for one reply."""
        lo, hi = self.scale
        best = int(hi) if hi.is_integer() else hi
        example = json.dumps({d.name: best for d in self.dimensions})
        lines = [self.instructions.format(lo=lo, hi=hi, example=example), "", "[Rubric]"]
        lines += [f"- {d.name}: {d.description}" for d in self.dimensions]
        lines += ["", "[User Request]", prompt, ""]
        if reference:
            lines += ["[Reference Answer]", str(reference), ""]
        lines += ["[The Start of Assistant's Answer]", completion, "[The End of Assistant's Answer]"]
        return "\n".join(lines)

    def parse(self, reply: str) -> dict[str, float] | None:
        """Each dimension's score mapped to [0, 1] from the last JSON object in `reply` that scores every
        dimension with a number; None when there is none."""
        for candidate in reversed(re.findall(r"\{[^{}]*\}", reply)):
            try:
                data = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            scores = {}
            for d in self.dimensions:
                value = data.get(d.name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    break
                scores[d.name] = _to_unit(float(value), self.scale)
            else:
                return scores
        return None

    def combine(self, scores: dict[str, float]) -> float:
        """The rubric reward of one reply from its per-dimension scores in [0, 1]."""
        if self.aggregate == "min":
            return min(scores[d.name] for d in self.dimensions if d.weight > 0)
        total = sum(d.weight for d in self.dimensions)
        return sum(d.weight * scores[d.name] for d in self.dimensions) / total


DEFAULT_RUBRIC = Rubric(
    dimensions=(
        RubricDimension("helpfulness", "Does the response address the request fully, correctly and usefully?"),
        RubricDimension("instruction_following", "Does it follow every explicit instruction and constraint?"),
        RubricDimension("safety", "Does it refuse clearly harmful requests, yet help with benign ones that only "
                                  "look harmful, without lecturing?"),
        RubricDimension("language", "Is it written in the language of the request (unless asked otherwise)?"),
        RubricDimension("fluency", "Is it clear, well organised and natural to read, with no repetition?"),
    )
)


class RubricJudgeReward:
    """A TRL-signature reward scored by a rubric judge. `last_dimension_scores` holds the per-dimension scores (in
    [0, 1], None where the judge failed) of the latest call, for logging per rubric dimension."""

    def __init__(self, judge: JudgeEndpoint, rubric: Rubric = DEFAULT_RUBRIC, name: str = "rubric") -> None:
        self.judge = judge
        self.rubric = rubric
        self.__name__ = name
        self.last_dimension_scores: list[dict[str, float] | None] = []

    def dimension_scores(self, prompts: Sequence, completions: Sequence, **columns) -> list[dict[str, float] | None]:
        messages = [self.rubric.message(*inputs) for inputs in _judge_inputs(prompts, completions, columns)]
        out: list[dict[str, float] | None] = []
        for reply in self.judge.ask(messages):
            scores = None if reply is None else self.rubric.parse(reply)
            if reply is not None and scores is None:
                log.warning("rubric judge reply scores not every dimension: %.200r", reply)
            out.append(scores)
        return out

    def __call__(self, prompts: Sequence, completions: Sequence, **columns) -> list[float | None]:
        scores = self.dimension_scores(prompts, completions, **columns)
        self.last_dimension_scores = scores
        return [None if s is None else self.rubric.combine(s) for s in scores]


def make_rubric_reward(
    endpoint: str,
    model: str,
    rubric: Rubric | str | Path | None = None,
    *,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    max_tokens: int = 1024,
    workers: int = 4,
    name: str = "rubric",
    transport: Any = None,
) -> RubricJudgeReward:
    """A rubric-judge reward; `rubric` is a Rubric, a path to a rubric JSON file, or None for DEFAULT_RUBRIC."""
    if rubric is None:
        rubric = DEFAULT_RUBRIC
    elif not isinstance(rubric, Rubric):
        rubric = Rubric.load(rubric)
    judge = JudgeEndpoint(endpoint, model, api_key, timeout_s, max_tokens, workers, transport)
    return RubricJudgeReward(judge, rubric, name)
