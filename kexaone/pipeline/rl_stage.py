"""The speedrun's post-training stages `rl` (AGAPO, `kexaone rl`) and `pref` (GROUPER, `kexaone pref`), ready for
the recipe to list after `sft`:

    Stage("rl", stage_rl, "RL with verifiable rewards (AGAPO)"), Stage("pref", stage_pref, "preference (GROUPER)")

`stage_rl` starts from the newest model among the outputs `sft`, then `pretrain` (`model_dir`); `stage_pref` from
`rl`, `sft`, then `pretrain`. Sizes come from `RLStageBudget` / `PrefStageBudget` (small enough for a CPU
speedrun), overridable per run with `ctx.params["rl"]` / `ctx.params["pref"]` dicts of the same field names (the
budgets module is the recipe's; these stay separate until the lead folds them in). Each stage records the held-out
numbers before and after (pass rate and reward for RL; preference score per rule for GROUPER) in its outputs.
A stage that was interrupted is run again from scratch (its directory wiped): RL rounds are not resumable mid-run.
What this module does not do: decide the stage order (kexaone.pipeline.recipe).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

from kexaone.pipeline.stages import StageContext

__all__ = ["RLStageBudget", "PrefStageBudget", "stage_rl", "stage_pref"]


@dataclass(frozen=True)
class RLStageBudget:
    rounds: int = 12
    prompts_per_round: int = 8
    group_size: int = 8
    updates_per_rollout: int = 2
    max_new_tokens: int = 48
    n_prompts: int = 200
    eval_n: int = 40
    eval_samples: int = 4
    lr: float = 1e-5
    rewards: tuple[str, ...] = ("math", "code", "ifeval")


@dataclass(frozen=True)
class PrefStageBudget:
    n_prompts: int = 64
    group_size: int = 4
    epochs: int = 2
    prompts_per_step: int = 8
    max_new_tokens: int = 48
    eval_n: int = 24
    eval_samples: int = 2
    lr: float = 1e-6
    rewards: tuple[str, ...] = ("format", "language", "length", "refusal", "tool_call", "ifeval")


def _budget(cls, ctx: StageContext, key: str):
    given = dict(ctx.params.get(key) or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"params[{key!r}] has unknown field(s) {unknown}; valid: {sorted(names)}")
    if "rewards" in given:
        given["rewards"] = tuple(given["rewards"])
    return cls(**given)


def _start_model(ctx: StageContext, order: tuple[str, ...]) -> str:
    for name in order:
        out = ctx.outputs.get(name) or {}
        if out.get("model_dir"):
            return str(ctx.path(out["model_dir"]))
    raise ValueError(f"no model to start from: none of the stages {list(order)} has run")


def _fresh(ctx: StageContext) -> None:
    if ctx.resumed and ctx.stage_dir.exists():
        shutil.rmtree(ctx.stage_dir)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)


def stage_rl(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.rl.cli import RLConfig, run_rl

    b = _budget(RLStageBudget, ctx, "rl")
    _fresh(ctx)
    cfg = RLConfig(init_from=_start_model(ctx, ("sft", "pretrain")), out=str(ctx.stage_dir / "run"),
                   reward=list(b.rewards), rounds=b.rounds, prompts_per_round=b.prompts_per_round,
                   group_size=b.group_size, updates_per_rollout=b.updates_per_rollout,
                   max_new_tokens=b.max_new_tokens, n_prompts=b.n_prompts, eval_n=b.eval_n,
                   eval_samples=b.eval_samples, lr=b.lr, seed=int(ctx.params.get("seed", 0)), threads=threads,
                   progress=False, tensorboard=False)
    t0 = time.perf_counter()
    res = run_rl(cfg)
    held = res.rl["heldout"]
    ctx.log(f"[rl] held-out pass rate {held['before']['pass_rate']:.3f} -> {held['after']['pass_rate']:.3f}")
    return {"model_dir": ctx.rel(res.model_dir), "metrics": ctx.rel(res.metrics_path),
            "reward_curve": ctx.rel(ctx.stage_dir / "run" / "reward_curve.png"), "steps": res.steps,
            "heldout_before": held["before"], "heldout_after": held["after"], "budget": asdict(b),
            "seconds": time.perf_counter() - t0}


def stage_pref(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.rl.pref_cli import PrefConfig, run_pref

    b = _budget(PrefStageBudget, ctx, "pref")
    _fresh(ctx)
    cfg = PrefConfig(init_from=_start_model(ctx, ("rl", "sft", "pretrain")), out=str(ctx.stage_dir / "run"),
                     reward=list(b.rewards), n_prompts=b.n_prompts, group_size=b.group_size, epochs=b.epochs,
                     prompts_per_step=b.prompts_per_step, max_new_tokens=b.max_new_tokens, eval_n=b.eval_n,
                     eval_samples=b.eval_samples, lr=b.lr, seed=int(ctx.params.get("seed", 0)), threads=threads,
                     progress=False, tensorboard=False)
    t0 = time.perf_counter()
    res = run_pref(cfg)
    held = res.pref["heldout"]
    ctx.log(f"[pref] held-out preference score {held['before']['reward_mean']:.3f} -> "
            f"{held['after']['reward_mean']:.3f}")
    return {"model_dir": ctx.rel(res.model_dir), "metrics": ctx.rel(res.metrics_path), "steps": res.steps,
            "heldout_before": held["before"], "heldout_after": held["after"], "budget": asdict(b),
            "seconds": time.perf_counter() - t0}
