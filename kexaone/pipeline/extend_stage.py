"""The speedrun's `extend` stage: the pre-trained model's context from its training length (the budget's seq_len)
to `factor` x (4), through `kexaone.train.extend.run_extension` with the run budget's `extend` settings
(kexaone.pipeline.budgets.ExtendBudget: the `cpu-small` preset unless it says otherwise; one stage, rounds until the
NIAH gate is green or the round budget is spent).

Reports, as the stage's outputs: the NIAH grid mean and short-context bits per byte of the pre-trained model at the
base length (before extension), then per round the gate's numbers (NIAH mean over the 4x grid, bpb, its limit,
green or not). A model trained for minutes on a CPU is not expected to turn green; the numbers say how far each
round got. It starts from the newest earlier model (kexaone.pipeline.chain: the pre-trained one). Re-running an
interrupted stage starts it over (the extension has no mid-run checkpoint).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

from kexaone.pipeline.chain import newest_model
from kexaone.pipeline.stages import StageContext

def extend_config(ctx: StageContext, threads: int = 0) -> Any:
    """The ExtendConfig of the speedrun (what `kexaone extend` flags would say)."""
    from kexaone.pipeline.budgets import Budget
    from kexaone.train.extend import ExtendConfig

    b = Budget.from_dict(ctx.params["budget"])
    e = b.extend
    return ExtendConfig(
        init_from=newest_model(ctx, "extend")[1], out=str(ctx.stage_dir / "run"),
        preset_budget=e.preset_budget, stages=(e.factor * b.seq_len,), base_length=b.seq_len,
        rounds_per_stage=e.rounds_per_stage, steps_per_round=e.steps_per_round,
        long_docs=e.long_docs, synthetic_size=b.corpus_size, seed=ctx.params["seed"], threads=threads,
        device="cpu" if b.precision == "fp32" else "auto")


def stage_extend(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.train.extend import run_extension

    cfg = extend_config(ctx, threads)
    run_dir = ctx.stage_dir / "run"
    if run_dir.exists():  # an interrupted attempt: start over
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    ctx.log(f"[extend] {cfg.base_length} -> {cfg.stages[-1]} tokens, up to {cfg.rounds_per_stage} round(s) of "
            f"{cfg.steps_per_round} steps")
    rep = run_extension(cfg)
    base = rep["baseline"]
    ctx.log(f"[extend] before: NIAH {base['niah']:.3f} at {base['niah_lengths']}, bpb {base['bpb']:.4f}")
    stages = []
    for s in rep["stages"]:
        rounds = [{"round": r["round"], "niah": r["gate"]["niah"], "bpb": r["gate"]["bpb"],
                   "bpb_limit": r["gate"]["bpb_limit"], "green": r["gate"]["green"], "steps": r["steps"],
                   "train_loss": r["train_loss"]} for r in s["rounds"]]
        for r in rounds:
            ctx.log(f"[extend] {s['length']} tokens round {r['round']}: NIAH {r['niah']:.3f}, bpb {r['bpb']:.4f} "
                    f"(limit {r['bpb_limit']:.4f}) -> {'green' if r['green'] else 'red'}")
        stages.append({"length": s["length"], "green": s["green"], "niah_lengths": s["niah_lengths"],
                       "rounds": rounds})
    return {"report": ctx.rel(run_dir / "extend_report.md"), "report_json": ctx.rel(run_dir / "extend_report.json"),
            "model_dir": ctx.rel(run_dir / rep["model"]), "base_length": cfg.base_length,
            "target_length": cfg.stages[-1], "baseline_niah": base["niah"], "baseline_bpb": base["bpb"],
            "baseline_niah_lengths": base["niah_lengths"], "baseline_heatmap": ctx.rel(run_dir / base["heatmap"])
            if base.get("heatmap") else None, "stages": stages, "green": all(s["green"] for s in stages),
            "seconds": time.perf_counter() - t0}
