"""The speedrun's post-training stages `rl` (AGAPO, `kexaone rl`) and `pref` (GROUPER, `kexaone pref`), which the
recipe runs after `sft`.

Each starts from the newest earlier model (kexaone.pipeline.chain: rl from sft, else extend, else pretrain; pref
from rl first). Sizes are the run budget's `rl` / `pref` (kexaone.pipeline.budgets.RLBudget / PrefBudget),
overridable per run with `ctx.params["rl"]` / `ctx.params["pref"]` dicts of the same field names. Each stage
records the held-out numbers before and after (pass rate and reward for RL; preference score per rule for GROUPER)
in its outputs. A stage that was interrupted is run again from scratch (its directory wiped): RL rounds are not
resumable mid-run. What this module does not do: decide the stage order (kexaone.pipeline.recipe).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, fields, replace
from typing import Any

from kexaone.pipeline.chain import newest_model
from kexaone.pipeline.stages import StageContext

__all__ = ["stage_rl", "stage_pref"]


def _budget(ctx: StageContext, key: str):
    """The run budget's `key` stage budget, with the fields of `ctx.params[key]` (a dict, optional) replaced."""
    from kexaone.pipeline.budgets import Budget

    given = dict(ctx.params.get(key) or {})
    if "budget" not in ctx.params:
        raise ValueError("the run parameters have no 'budget' (kexaone.pipeline.budgets.Budget.to_dict())")
    base = getattr(Budget.from_dict(ctx.params["budget"]), key)
    names = {f.name for f in fields(base)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"params[{key!r}] has unknown field(s) {unknown}; valid: {sorted(names)}")
    for name in ("rewards", "categories"):
        if name in given:
            given[name] = tuple(given[name])
    return replace(base, **given)


def _fresh(ctx: StageContext) -> None:
    if ctx.resumed and ctx.stage_dir.exists():
        shutil.rmtree(ctx.stage_dir)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)


def stage_rl(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.rl.cli import RLConfig, run_rl

    b = _budget(ctx, "rl")
    _fresh(ctx)
    start, init = newest_model(ctx, "rl")
    ctx.log(f"[rl] from the {start} model")
    cfg = RLConfig(init_from=init, out=str(ctx.stage_dir / "run"),
                   reward=list(b.rewards), categories=list(b.categories), rounds=b.rounds,
                   prompts_per_round=b.prompts_per_round,
                   group_size=b.group_size, updates_per_rollout=b.updates_per_rollout,
                   max_new_tokens=b.max_new_tokens, n_prompts=b.n_prompts, eval_n=b.eval_n,
                   eval_samples=b.eval_samples, lr=b.lr, seed=int(ctx.params.get("seed", 0)), threads=threads,
                   progress=False, tensorboard=False)
    t0 = time.perf_counter()
    res = run_rl(cfg)
    _raise_if_interrupted("rl", res)
    held = res.rl["heldout"]
    ctx.log(f"[rl] held-out pass rate {held['before']['pass_rate']:.3f} -> {held['after']['pass_rate']:.3f}")
    return {"model_dir": ctx.rel(res.model_dir), "metrics": ctx.rel(res.metrics_path),
            "reward_curve": ctx.rel(ctx.stage_dir / "run" / "reward_curve.png"), "steps": res.steps,
            "heldout_before": held["before"], "heldout_after": held["after"], "budget": asdict(b), "init": start,
            "seconds": time.perf_counter() - t0}


def _raise_if_interrupted(stage: str, res: Any) -> None:
    """A run stopped by a signal (Ctrl-C, SIGTERM) has no after-training evaluation: the stage stays unfinished
    (the runner records it as running and the next run redoes it), as SFT's does."""
    if res.interrupted:
        raise KeyboardInterrupt(f"{stage} interrupted ({res.signal_name}) at step {res.steps}")


def stage_pref(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.rl.pref_cli import PrefConfig, run_pref

    b = _budget(ctx, "pref")
    _fresh(ctx)
    start, init = newest_model(ctx, "pref")
    ctx.log(f"[pref] from the {start} model")
    judge = ctx.params.get("judge") or {}  # the speedrun's --judge-endpoint / --judge-model / --rubric
    cfg = PrefConfig(init_from=init, out=str(ctx.stage_dir / "run"), judge_endpoint=judge.get("endpoint"),
                     judge_model=judge.get("model") or "judge", rubric=judge.get("rubric"),
                     reward=list(b.rewards), n_prompts=b.n_prompts, group_size=b.group_size, epochs=b.epochs,
                     prompts_per_step=b.prompts_per_step, max_new_tokens=b.max_new_tokens, eval_n=b.eval_n,
                     eval_samples=b.eval_samples, lr=b.lr, seed=int(ctx.params.get("seed", 0)), threads=threads,
                     progress=False, tensorboard=False)
    t0 = time.perf_counter()
    res = run_pref(cfg)
    _raise_if_interrupted("pref", res)
    held = res.pref["heldout"]
    ctx.log(f"[pref] held-out preference score {held['before']['reward_mean']:.3f} -> "
            f"{held['after']['reward_mean']:.3f}")
    return {"model_dir": ctx.rel(res.model_dir), "metrics": ctx.rel(res.metrics_path), "steps": res.steps,
            "heldout_before": held["before"], "heldout_after": held["after"], "budget": asdict(b), "init": start,
            "seconds": time.perf_counter() - t0}
