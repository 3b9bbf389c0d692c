"""The rounds of `kexaone rl` and the scoring shared with `kexaone pref`.

`RLRounds` is the data stream handed to the shared trainer: each time the trainer asks for a micro-batch and the
current round is used up, it runs a round with the weights the trainer has just updated:
    rollouts (G per prompt, rollout log-probs)  ->  rewards (combine_rewards)  ->  agapo_advantages (zero-variance
    groups dropped)  ->  micro-batches of the kept responses, served for K optimizer steps (updates_per_rollout)
A round whose groups are all zero-variance is sampled again (up to `max_resample` times; DAPO's dynamic sampling),
since it carries no gradient. The round's statistics (reward per verifier, pass rate, filtered fraction,
rollout / training tokens per second) go to `objective.round_metrics`, which the objective logs with every step,
and to `<out>/rounds.jsonl`.
`before_round(i)` runs before round i samples (i >= 1): an endpoint's weights are pushed there.

Also here: `score_groups` (rows x G completions -> rewards [P, G] and per-reward values), `evaluate_rows` (held-out
reward and pass rate of a sampler), `plot_reward_curve` (the reward curve PNG from metrics.jsonl).
What this module does not do: build the model, the trainer or the samplers (kexaone.rl.cli / rollout).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PASS_THRESHOLD", "row_columns", "score_groups", "reward_metrics", "RLRounds", "evaluate_rows", "plot_reward_curve"]

PASS_THRESHOLD = 1.0 - 1e-6
"""A response passes when its combined reward is (numerically) 1: every reward that applies is fully met."""
_NOT_COLUMNS = ("prompt", "id", "key")


def row_columns(rows: Sequence[dict], group_size: int) -> dict[str, list]:
    """The reward columns of `rows`, each repeated G times (one entry per completion), None where a row lacks it."""
    names = sorted({k for r in rows for k in r if k not in _NOT_COLUMNS})
    return {n: [r.get(n) for r in rows for _ in range(group_size)] for n in names}


def score_groups(rows: Sequence[dict], completions: Sequence[Sequence[str]],
                 rewards: Sequence[tuple[str, Callable, float]]) -> tuple[list[list[float]], dict[str, list]]:
    """Combined rewards [P][G] (weighted mean of the rewards that apply, kexaone.rl.rewards.combine_rewards) and
    {reward name: flat [P * G] values, None where not applicable}."""
    import warnings

    from kexaone.rl.rewards import combine_rewards

    G = len(completions[0]) if completions else 0
    if any(len(c) != G for c in completions):
        raise ValueError("every prompt needs the same number of completions")
    prompts = [r["prompt"] for r in rows for _ in range(G)]
    flat = [c for group in completions for c in group]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no reward applies")  # such a row simply scores 0
        totals, per = combine_rewards(list(rewards), prompts, flat, row_columns(rows, G))
    return [totals[p * G:(p + 1) * G] for p in range(len(rows))], per


def _stats(values: Sequence[float | None]) -> tuple[float, float, int]:
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return float("nan"), float("nan"), 0
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)), len(xs)


def reward_metrics(totals: Sequence[Sequence[float]], per: dict[str, list], prefix: str = "") -> dict[str, float]:
    flat = [x for g in totals for x in g]
    mean, std, _ = _stats(flat)
    out = {f"{prefix}reward_mean": mean, f"{prefix}reward_std": std,
           f"{prefix}pass_rate": sum(x >= PASS_THRESHOLD for x in flat) / max(1, len(flat))}
    for name, values in per.items():
        m, s, n = _stats(values)
        if n:
            out[f"{prefix}reward_{name}_mean"], out[f"{prefix}reward_{name}_std"] = m, s
    return out


class RLRounds:
    """The trainer's data: micro-batches of rollout rounds (see the module docstring)."""

    def __init__(self, rows: Sequence[dict], sampler: Any, rewards: Sequence[tuple[str, Callable, float]],
                 objective: Any, *, group_size: int, prompts_per_round: int, updates_per_rollout: int,
                 micro_batches: int, pad_id: int, seed: int = 0, max_resample: int = 2,
                 before_round: Callable[[int], None] | None = None, log_path: str | Path | None = None) -> None:
        if group_size < 2:
            raise ValueError(f"--group-size must be >= 2 (a group needs a baseline), got {group_size}")
        if not rows:
            raise ValueError("no prompts to train on")
        self.rows, self.sampler, self.rewards, self.objective = list(rows), sampler, list(rewards), objective
        self.G, self.P, self.K = group_size, min(prompts_per_round, len(rows)), updates_per_rollout
        self.micro, self.pad_id, self.seed, self.max_resample = micro_batches, pad_id, seed, max_resample
        self.before_round, self.log_path = before_round, Path(log_path) if log_path else None
        self.round = 0
        self._order: list[int] = []
        self._queue: list[dict] = []
        self._train_tokens = 0
        self._t_train_start: float | None = None

    def state_dict(self) -> dict:
        return {"round": self.round}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state.get("round", 0))

    def _next_rows(self) -> list[dict]:
        out = []
        while len(out) < self.P:
            if not self._order:
                order = list(range(len(self.rows)))
                random.Random(f"rl-order|{self.seed}|{self.round}|{len(out)}").shuffle(order)
                self._order = order
            out.append(self.rows[self._order.pop()])
        return out

    def sample_round(self) -> tuple[list[dict], dict[str, float]]:
        """One round: rollouts, rewards, advantages; returns (micro-batches for one update, round metrics)."""
        import torch

        from kexaone.rl.objectives import agapo_advantages
        from kexaone.rl.policy_batch import Sample, make_microbatches

        metrics: dict[str, float] = {}
        if self._t_train_start is not None:  # the K updates of the previous round have just run
            metrics["train_tok_per_s"] = self._train_tokens / max(time.perf_counter() - self._t_train_start, 1e-9)
        if self.round > 0 and self.before_round is not None:
            self.before_round(self.round)
        tries = 0
        while True:
            rows = self._next_rows()
            t0 = time.perf_counter()
            groups = self.sampler.sample(rows, self.G, seed=self.seed * 1_000_003 + self.round * 10_007 + tries * 101)
            dt = time.perf_counter() - t0
            n_tokens = sum(len(r.tokens) for g in groups for r in g)
            totals, per = score_groups(rows, [[r.text for r in g] for g in groups], self.rewards)
            adv, keep = agapo_advantages(torch.tensor(totals, dtype=torch.float64))
            if bool(keep.any()) or tries >= self.max_resample:
                break
            tries += 1
        metrics.update(reward_metrics(totals, per))
        metrics.update({"filtered_frac": 1.0 - float(keep.double().mean()), "rollout_tok_per_s": n_tokens / max(dt, 1e-9),
                        "rollout_response_len": n_tokens / max(1, self.P * self.G), "resampled": float(tries),
                        "round": float(self.round)})
        samples = [Sample(r.prompt_ids, r.tokens, r.logprobs, float(adv[p, g]))
                   for p, g_ in enumerate(groups) if keep[p] for g, r in enumerate(g_)]
        batches = make_microbatches(samples, self.micro, self.pad_id)
        self._train_tokens = self.K * sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"round": self.round, **metrics}) + "\n")
        self.round += 1
        return batches, metrics

    def __iter__(self) -> Iterator[dict]:
        while True:
            if not self._queue:
                batches, metrics = self.sample_round()
                self.objective.round_metrics = metrics
                self._queue = [b for _ in range(self.K) for b in batches]
                self._t_train_start = time.perf_counter()
            yield self._queue.pop(0)


def evaluate_rows(sampler: Any, rows: Sequence[dict], rewards: Sequence[tuple[str, Callable, float]],
                  samples: int, seed: int) -> dict[str, Any]:
    """Held-out reward and pass rate of `sampler` on `rows` (`samples` responses each), overall and per category."""
    groups = sampler.sample(rows, samples, seed=seed)
    totals, per = score_groups(rows, [[r.text for r in g] for g in groups], rewards)
    out: dict[str, Any] = reward_metrics(totals, per)
    by_cat: dict[str, list[float]] = {}
    for row, g in zip(rows, totals):
        by_cat.setdefault(str(row.get("category", "all")), []).extend(g)
    out["pass_rate_by_category"] = {c: sum(x >= PASS_THRESHOLD for x in v) / len(v) for c, v in sorted(by_cat.items())}
    out["reward_by_category"] = {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}
    out["n_prompts"], out["samples"] = len(rows), samples
    # per prompt, in row order: a later evaluation of the same rows with the same seed pairs with this one
    out["per_prompt_reward"] = [sum(g) / len(g) for g in totals]
    out["per_prompt_pass"] = [sum(x >= PASS_THRESHOLD for x in g) / len(g) for g in totals]
    return out


def plot_reward_curve(metrics_path: str | Path, out_png: str | Path, keys: Sequence[str] | None = None,
                      title: str = "kexaone rl") -> Path | None:
    """Reward mean, pass rate and each verifier's mean against step (from the trainer's metrics.jsonl), as a PNG
    written atomically; None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from kexaone.utils.io import atomic_write_bytes

    records = []
    for line in Path(metrics_path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("kind") == "train":
                records.append(rec)
    if not records:
        return None
    if keys is None:
        keys = ["reward_mean", "pass_rate"] + sorted({k for r in records for k in r
                                                      if k.startswith("reward_") and k.endswith("_mean")
                                                      and k != "reward_mean"})
    fig, ax = plt.subplots(figsize=(8, 4))
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.4 if k == "reward_mean" else 1.0, label=k)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward / rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return Path(out_png)
