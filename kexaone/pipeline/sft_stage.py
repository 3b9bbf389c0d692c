"""The speedrun's `sft` stage: supervised fine-tuning on the embedded default SFT set, then the starting model and
the SFT model side by side on the set's held-out chat tasks (`sft-chat`, both reasoning modes).

It starts from the newest earlier model (kexaone.pipeline.chain: the extended model, else the pre-trained one);
"base" in its outputs is that starting model. The number of steps and the evaluation size are the run budget's
`sft` (kexaone.pipeline.budgets.SFTBudget); a killed stage resumes from the trainer's last checkpoint, as the
pre-training stage does. Outputs: the SFT model directory, `sft_eval.json` (both models' sft-chat summaries: score
and well-formed rate overall, per mode and per category; the MTP acceptance before and after) and the headline
numbers for the report.

Not here: the SFT itself (kexaone.train.sft), the task and its scoring (kexaone.eval.families.chat).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kexaone.pipeline.chain import newest_model
from kexaone.pipeline.stages import StageContext
from kexaone.utils.io import atomic_write_text


def sft_config(ctx: StageContext, resume: bool, threads: int = 0):
    """The SFTConfig of the stage (what `kexaone sft` flags would say)."""
    from kexaone.data.curriculum import SYNTHETIC_HELDOUT_DOCS
    from kexaone.pipeline.budgets import Budget
    from kexaone.pipeline.corpus import rehearsal_specs
    from kexaone.train.sft import SFTConfig

    b = Budget.from_dict(ctx.params["budget"])
    s = b.sft
    rehearsal = rehearsal_specs(b, ctx.params.get("data", [])) if s.rehearsal_share > 0 else []
    return SFTConfig(
        init_from=newest_model(ctx, "sft")[1], out=str(ctx.stage_dir / "run"),
        max_steps=s.steps, seq_len=s.seq_len, batch_size=s.batch_size, default_examples=s.examples,
        rehearsal=rehearsal, rehearsal_share=s.rehearsal_share, rehearsal_heldout=SYNTHETIC_HELDOUT_DOCS,
        lr=b.lr * s.lr_scale, adamw_lr=(b.adamw_lr or b.lr) * s.lr_scale, warmup_steps=max(1, s.steps // 20),
        precision=b.precision, bias_update_rate=b.bias_update_rate, seed=ctx.params["seed"],
        save_every=b.checkpoint_every, eval_every=max(1, s.steps // 2), eval_batches=2, resume=resume,
        tensorboard=False, progress=False, threads=threads)


def evaluate_chat(model_dir: Any, out_dir: Any, limit: int | None, max_new_tokens: int | None,
                  seed: int = 0) -> dict[str, Any]:
    """The sft-chat summary (score, well_formed, by_thinking, by_category) of one model directory, greedy."""
    from kexaone.eval.backends import LocalBackend
    from kexaone.eval.families import sft_chat_task
    from kexaone.eval.harness import EvalConfig, run_eval

    backend = LocalBackend.from_pretrained(model_dir)
    config = EvalConfig(limit=limit, max_new_tokens=max_new_tokens, seed=seed)
    res = run_eval(backend, [sft_chat_task(limit)], config, out_dir, progress=False)
    return res["tasks"]["sft-chat"]


EVAL_DIRS = {"base": "eval_base", "sft": "eval_sft"}
"""Where the SFT stage's sft-chat evaluations of the two models go, under the stage directory."""


def item_scores(stage_dir: Any, which: str) -> dict[str, float]:
    """Per held-out item (its id and repeat): the sft-chat score of one model (`which`: base or sft), from the
    harness's sample store of that evaluation; {} when there is none."""
    from kexaone.eval.results import SampleStore

    records = SampleStore(Path(stage_dir) / EVAL_DIRS[which], "sft-chat").records.values()
    return {f"{r['id']}#{r.get('repeat', 0)}": float(r["score"]) for r in records}


def compare(base: dict[str, Any], sft: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers: score and well-formed rate of both models overall, per mode and per category."""
    def pick(s: dict[str, Any]) -> dict[str, Any]:
        return {"score": s["score"], "well_formed": s["well_formed"], "n": s["n"],
                "by_mode": {("reasoning" if k == "True" else "non-reasoning"): v
                            for k, v in s.get("by_thinking", {}).items()},
                "by_category": s.get("by_category", {})}

    b, f = pick(base), pick(sft)
    cats = sorted(set(b["by_category"]) | set(f["by_category"]))
    return {"base": b, "sft": f,
            "categories_improved": [c for c in cats if f["by_category"].get(c, {}).get("score", 0.0)
                                    > b["by_category"].get(c, {}).get("score", 0.0)],
            "categories": cats}


def stage_sft(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.pipeline.budgets import Budget
    from kexaone.train.checkpoint import CheckpointManager
    from kexaone.train.sft import run_sft

    s = Budget.from_dict(ctx.params["budget"]).sft
    start, base_dir = newest_model(ctx, "sft")
    ckpt = ctx.stage_dir / "run" / "checkpoints"
    resume = ckpt.is_dir() and CheckpointManager(ckpt).latest() is not None
    if resume:
        ctx.log(f"[sft] resuming from {CheckpointManager(ckpt).latest()}")
    elif ckpt.is_dir():
        shutil.rmtree(ckpt)  # killed while writing its first checkpoint: start over
    t0 = time.perf_counter()
    ctx.log(f"[sft] from the {start} model: {s.steps} steps of {s.batch_size} x {s.seq_len} tokens on {s.examples} "
            f"default conversations, {s.rehearsal_share:.0%} of the rows pre-training text")
    res = run_sft(sft_config(ctx, resume, threads))
    if res.stage.interrupted:
        raise KeyboardInterrupt(f"SFT interrupted ({res.stage.signal_name}) at step {res.stage.steps}")
    if res.model_dir is None:
        raise RuntimeError("SFT finished without exporting a model directory")
    seconds = time.perf_counter() - t0
    ctx.log(f"[sft] evaluating the {start} and SFT models on sft-chat (limit {s.eval_limit})")
    base = evaluate_chat(base_dir, ctx.stage_dir / EVAL_DIRS["base"], s.eval_limit, s.max_new_tokens,
                         ctx.params["seed"])
    tuned = evaluate_chat(res.model_dir, ctx.stage_dir / EVAL_DIRS["sft"], s.eval_limit, s.max_new_tokens,
                          ctx.params["seed"])
    summary = compare(base, tuned)
    summary.update(mtp_acceptance=res.mtp_acceptance, budget=asdict(s), steps=res.stage.steps,
                   final_loss=res.stage.final_loss, eval_loss=res.stage.eval_loss, seconds=seconds)
    atomic_write_text(ctx.stage_dir / "sft_eval.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    ctx.log(f"[sft] sft-chat score {base['score']:.3f} -> {tuned['score']:.3f}, well-formed "
            f"{base['well_formed']:.3f} -> {tuned['well_formed']:.3f}")
    return {"model_dir": ctx.rel(res.model_dir), "eval": ctx.rel(ctx.stage_dir / "sft_eval.json"), "init": start,
            "steps": res.stage.steps, "score": {"base": base["score"], "sft": tuned["score"]},
            "well_formed": {"base": summary["base"]["by_mode"], "sft": summary["sft"]["by_mode"]},
            "mtp_acceptance": res.mtp_acceptance, "seconds": seconds}
