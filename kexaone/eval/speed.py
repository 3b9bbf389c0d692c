"""Decode speed: plain decoding vs MTP self-speculative decoding of the same model, measured side by side.

Both modes decode greedily from the same prompts for the same number of new tokens; runs are interleaved
(plain, speculative, plain, ...) after one warm-up each, because this machine is shared and noisy, and the
median of the repeats is reported. Greedy speculative decoding must reproduce plain greedy decoding exactly;
`identical` records whether it did, so a speed-up never hides a wrong answer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def _stat(stats: Any, *names: str) -> float | None:
    """Read the first present statistic among `names` from a dict or an object (engine stats)."""
    for n in names:
        v = stats.get(n) if isinstance(stats, dict) else getattr(stats, n, None)
        if v is not None:
            return float(v)
    return None


@dataclass
class SpeedResult:
    new_tokens: int
    """Tokens requested per generation."""
    draft_tokens: int
    plain_tokens_per_s: float
    mtp_tokens_per_s: float
    acceptance_rate: float | None
    """Share of drafted tokens the main model accepted."""
    tokens_per_forward: float | None
    """Tokens emitted per main-model forward in speculative mode (1.0 for plain decoding)."""
    identical: bool
    """Greedy speculative output equals greedy plain output for every prompt."""
    repeats: int
    plain_runs: list[float] = field(default_factory=list)
    mtp_runs: list[float] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.mtp_tokens_per_s / self.plain_tokens_per_s if self.plain_tokens_per_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["speedup"] = self.speedup
        return d


def _run(engine, prompts: Sequence[Sequence[int]], new_tokens: int, speculative: str | None,
         draft_tokens: int) -> tuple[float, list[list[int]], list[Any]]:
    """(tokens per second over all prompts, generated ids per prompt, stats per prompt)."""
    outs, stats, n = [], [], 0
    t0 = time.perf_counter()
    for ids in prompts:
        res = engine.generate(list(ids), max_new_tokens=new_tokens, temperature=0.0, speculative=speculative,
                              draft_tokens=draft_tokens, stop=None)
        outs.append(list(res.tokens))
        stats.append(res.stats)
        n += len(res.tokens)
    dt = time.perf_counter() - t0
    return n / dt, outs, stats


def measure_decode_speed(engine, prompts: Sequence[Sequence[int]], new_tokens: int = 128, repeats: int = 3,
                         draft_tokens: int = 2) -> SpeedResult:
    """Median tokens/s of plain and MTP-speculative greedy decoding over `repeats` interleaved rounds."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    if repeats < 1 or new_tokens < 1:
        raise ValueError(f"repeats and new_tokens must be >= 1, got {repeats} and {new_tokens}")
    warm = [list(prompts[0])]
    _run(engine, warm, min(8, new_tokens), None, draft_tokens)
    _run(engine, warm, min(8, new_tokens), "mtp", draft_tokens)
    plain_runs, mtp_runs = [], []
    identical = True
    accept, per_fwd = [], []
    for _ in range(repeats):
        tps_p, outs_p, _ = _run(engine, prompts, new_tokens, None, draft_tokens)
        tps_m, outs_m, stats_m = _run(engine, prompts, new_tokens, "mtp", draft_tokens)
        plain_runs.append(tps_p)
        mtp_runs.append(tps_m)
        identical &= outs_p == outs_m
        for s in stats_m:
            a = _stat(s, "acceptance_rate", "accept_rate")
            f = _stat(s, "tokens_per_forward", "tokens_per_step")
            if a is not None:
                accept.append(a)
            if f is not None:
                per_fwd.append(f)
    return SpeedResult(new_tokens=new_tokens, draft_tokens=draft_tokens,
                       plain_tokens_per_s=statistics.median(plain_runs), mtp_tokens_per_s=statistics.median(mtp_runs),
                       acceptance_rate=statistics.fmean(accept) if accept else None,
                       tokens_per_forward=statistics.fmean(per_fwd) if per_fwd else None,
                       identical=identical, repeats=repeats, plain_runs=plain_runs, mtp_runs=mtp_runs)
