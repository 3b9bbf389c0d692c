"""The speedrun's stages: tokenizer -> pretrain -> extend -> sft -> rl -> pref -> evaluate -> generate -> report.

Each stage function reads the run parameters (`budget`, `data`, `seed`) and the outputs of earlier stages from its
StageContext, writes into its own directory, and returns the paths (relative to the run directory) and headline
numbers that later stages and the report read. The stage runner (kexaone.pipeline.stages) makes them resumable.

What each stage does:
1. tokenizer: trains the SuperBPE tokenizer and, on the same text with the same vocabulary size, a plain byte-level
   BPE baseline (the same trainer with no superword stage); measures both on held-out text.
2. pretrain: `run_pretraining` on the embedded three-stage curriculum (plus --data) with MTP and MoE balancing;
   killed mid-way, it resumes from the trainer's last checkpoint. The model is exported in the HF layout.
3. extend (kexaone.pipeline.extend_stage): context 4x the pre-training length; NIAH before and per round.
4. sft (kexaone.pipeline.sft_stage): SFT of the extended model on the default chat set; sft-chat before and after.
5. rl, 6. pref (kexaone.pipeline.rl_stage): AGAPO with verifiable rewards, then GROUPER preference optimisation;
   held-out pass rate / preference score before and after. Each stage starts from the newest earlier model
   (kexaone.pipeline.chain); what each spends is the budget's (kexaone.pipeline.budgets).
7. evaluate (kexaone.pipeline.evaluate_stage): every stage's model and the untrained initial model (same config and
   seed) on held-out bits per byte, the held-out synthetic tasks, safety and tool calls, through the harness.
8. generate: the final model's sampled answers in reasoning and non-reasoning mode; decode speed plain vs MTP.
9. report: report.md, report.html, report.json in the run directory.

The data these stages read (synthetic corpus, held-out documents and tasks) comes from kexaone.pipeline.corpus.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kexaone.pipeline.budgets import Budget
from kexaone.pipeline.stages import Stage, StageContext
from kexaone.utils.io import atomic_write_text

STAGE_NAMES = ("tokenizer", "pretrain", "extend", "sft", "rl", "pref", "evaluate", "generate", "report")


def _budget(ctx: StageContext) -> Budget:
    return Budget.from_dict(ctx.params["budget"])


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _workers() -> int:
    from kexaone.utils.cpu import usable_cores

    return max(1, min(4, usable_cores()))


# ---------------------------------------------------------------------------------------------- 1. tokenizer
def stage_tokenizer(ctx: StageContext) -> dict[str, Any]:
    from kexaone.pipeline import corpus
    from kexaone.tokenizer.superbpe import train_superbpe

    b = _budget(ctx)
    texts = corpus.tokenizer_texts(ctx.params.get("data", []), b.tokenizer_train_bytes, b.corpus_size,
                                   seed=ctx.params["seed"])
    train_bytes = sum(len(t.encode("utf-8")) for t in texts)
    ctx.log(f"[tokenizer] training on {len(texts):,} documents, {train_bytes / 1e6:.2f} MB")
    inputs = [(t, None) for t in texts]  # (text, language): None lets the trainer detect the script per text
    t0 = time.perf_counter()
    tok = train_superbpe(inputs, b.tokenizer_vocab_size, out_dir=ctx.stage_dir / "tokenizer", workers=_workers(),
                         seed=ctx.params["seed"])
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    # transition == vocab_size: stage 1 only, i.e. ordinary byte-level BPE with whitespace pre-tokenization.
    base = train_superbpe(inputs, b.tokenizer_vocab_size, out_dir=ctx.stage_dir / "bpe_baseline",
                          transition=b.tokenizer_vocab_size, workers=_workers(), seed=ctx.params["seed"])
    baseline_seconds = time.perf_counter() - t0

    rows = []
    for group, docs in corpus.tokenizer_eval_groups(b, seed=ctx.params["seed"]).items():
        rows.append({"group": group, "bytes": sum(len(d.encode("utf-8")) for d in docs),
                     "superbpe_tokens": sum(len(x) for x in tok.encode_batch(docs)),
                     "bpe_tokens": sum(len(x) for x in base.encode_batch(docs))})
    ev = {"vocab_size": tok.vocab_size, "baseline_vocab_size": base.vocab_size, "train_bytes": train_bytes,
          "train_documents": len(texts), "superword_share": superword_share(tok), "seconds": seconds,
          "baseline_seconds": baseline_seconds, "rows": rows}
    _write_json(ctx.stage_dir / "tokenizer_eval.json", ev)
    return {"dir": ctx.rel(ctx.stage_dir / "tokenizer"), "baseline_dir": ctx.rel(ctx.stage_dir / "bpe_baseline"),
            "eval": ctx.rel(ctx.stage_dir / "tokenizer_eval.json"), "vocab_size": tok.vocab_size}


def superword_share(tok: Any) -> float:
    """Share of the vocabulary whose tokens span a space between two non-space bytes (several words)."""
    n = 0
    specials = set(tok.special_ids.values())
    for i in range(tok.vocab_size):
        if i in specials:
            continue
        b = tok.token_bytes(i).strip()
        n += b" " in b
    return n / max(1, tok.vocab_size - len(specials))


# ---------------------------------------------------------------------------------------------- 2. pretrain
def pretrain_config(ctx: StageContext, resume: bool, threads: int = 0):
    """The TrainConfig of the speedrun's pre-training (what `kexaone pretrain` flags would say)."""
    from kexaone.train.config import TrainConfig

    b = _budget(ctx)
    steps = b.train_steps + b.copy_warmup_steps
    return TrainConfig(
        preset=b.preset, model_overrides=dict(b.config_overrides), data=list(ctx.params.get("data", [])),
        synthetic_size=b.corpus_size, mix_synthetic=bool(ctx.params.get("data")),
        tokenizer=str(ctx.path(ctx.outputs["tokenizer"]["dir"])), out=str(ctx.stage_dir),
        max_steps=steps, seq_len=b.seq_len, batch_size=b.batch_size, lr=b.lr, adamw_lr=b.adamw_lr,
        warmup_steps=max(1, round(b.warmup_fraction * steps)), decay_fraction=b.decay_fraction,
        precision=b.precision, bias_update_rate=b.bias_update_rate, seed=ctx.params["seed"],
        copy_warmup_steps=b.copy_warmup_steps,
        save_every=b.checkpoint_every,
        eval_every=max(1, steps // 4), eval_batches=4, log_every=1, resume=resume, tensorboard=False,
        workers=_workers(),
        threads=threads,
    )


def stage_pretrain(ctx: StageContext, threads: int = 0) -> dict[str, Any]:
    from kexaone.train.pretrain import run_pretraining

    import shutil

    from kexaone.train.checkpoint import CheckpointManager

    ckpt = ctx.stage_dir / "checkpoints"
    latest = CheckpointManager(ckpt).latest() if ckpt.is_dir() else None
    resume = latest is not None
    if resume:
        ctx.log(f"[pretrain] resuming from the checkpoint {latest}")
    elif ckpt.is_dir():
        # Killed while writing its first checkpoint: nothing usable to resume from, so start the stage over.
        shutil.rmtree(ckpt)
    from kexaone.pipeline.corpus import induction_probe_callback
    from kexaone.tokenizer import KExaoneTokenizer

    # The induction / key-value recall probes (eval mode, no routed-token counting: training is unchanged).
    probe = induction_probe_callback(KExaoneTokenizer.from_dir(ctx.path(ctx.outputs["tokenizer"]["dir"])), _budget(ctx),
                                     seed=ctx.params["seed"])
    t0 = time.perf_counter()
    res = run_pretraining(pretrain_config(ctx, resume, threads), callbacks=[probe] if probe is not None else ())
    if res.interrupted:
        # The trainer saved a checkpoint and returned; leave the stage unfinished so a re-run resumes it.
        raise KeyboardInterrupt(f"pre-training interrupted ({res.signal_name}) at step {res.steps}")
    if res.model_dir is None:
        raise RuntimeError("pre-training finished without exporting a model directory")
    return {"model_dir": ctx.rel(res.model_dir), "metrics": ctx.rel(res.metrics_path),
            "out_dir": ctx.rel(ctx.stage_dir),
            "steps": res.steps, "tokens": res.tokens, "final_loss": res.final_loss, "eval_loss": res.eval_loss,
            "eval_bpb": res.eval_bpb, "seconds": time.perf_counter() - t0, "resumed": resume}


# ---------------------------------------------------------------------------------------------- generate
def stage_generate(ctx: StageContext) -> dict[str, Any]:
    """Samples and decode speed of the final model: the newest of the model stages that ran."""
    from kexaone.engine.engine import Engine
    from kexaone.eval.generation import sample_answers
    from kexaone.eval.speed import measure_decode_speed
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.pipeline import corpus
    from kexaone.pipeline.chain import newest_model
    from kexaone.tokenizer import KExaoneTokenizer

    b = _budget(ctx)
    stage, model_dir = newest_model(ctx)
    ctx.log(f"[generate] the final model: {stage} ({ctx.rel(model_dir)})")
    model = KExaoneForCausalLM.from_pretrained(model_dir).eval()
    tok = KExaoneTokenizer.from_dir(model_dir)
    n = b.speed_draft_vocab
    engine = Engine(model, tok, draft_vocab=None if n is None else min(n, model.config.vocab_size))
    draft_vocab = engine.draft_vocab  # None when it covers the whole vocabulary
    questions = corpus.chat_questions(b, seed=ctx.params["seed"])
    samples = sample_answers(engine, tok, questions, b.generation_max_new_tokens, seed=ctx.params["seed"])
    prompts = corpus.speed_prompts(tok, b, seed=ctx.params["seed"])
    ctx.log(f"[generate] decode speed: {len(prompts)} prompts x {b.speed_new_tokens} tokens, plain vs MTP with "
            f"{', '.join(map(str, b.speed_draft_counts))} draft tokens"
            + (f", drafts from token ids < {draft_vocab}" if draft_vocab else ""))
    # Each draft count is measured side by side with plain decoding; the headline is the fastest, and the report
    # shows every count (how many drafts pay off depends on the machine and on how well the MTP head predicts).
    speeds = [measure_decode_speed(engine, prompts, new_tokens=b.speed_new_tokens, repeats=b.speed_repeats,
                                   draft_tokens=k) for k in b.speed_draft_counts]
    speed = max(speeds, key=lambda r: r.speedup)
    gen = {"model_stage": stage, "model_dir": ctx.rel(model_dir), "samples": [s.to_dict() for s in samples],
           "speed": {**speed.to_dict(), "draft_vocab": draft_vocab},
           "speed_by_draft_tokens": [{**r.to_dict(), "draft_vocab": draft_vocab} for r in speeds]}
    _write_json(ctx.stage_dir / "generation.json", gen)
    return {"generation": ctx.rel(ctx.stage_dir / "generation.json"), "model_stage": stage,
            "model_dir": ctx.rel(model_dir), "speedup": speed.speedup, "acceptance_rate": speed.acceptance_rate}


# ---------------------------------------------------------------------------------------------- report
def stage_report(ctx: StageContext) -> dict[str, Any]:
    from kexaone.report.card import write_report

    return write_report(ctx.out_dir)


def speedrun_stages(threads: int = 0) -> list[Stage]:
    """The stages of STAGE_NAMES, in order; `threads` (0 = torch's default) is handed to every training stage,
    which sets torch's CPU threads."""
    import functools

    from kexaone.pipeline.evaluate_stage import stage_evaluate
    from kexaone.pipeline.extend_stage import stage_extend
    from kexaone.pipeline.rl_stage import stage_pref, stage_rl
    from kexaone.pipeline.sft_stage import stage_sft

    stages = [
        Stage("tokenizer", stage_tokenizer, "train the SuperBPE tokenizer and a plain-BPE baseline"),
        Stage("pretrain", functools.partial(stage_pretrain, threads=threads),
              "pre-train through the three-stage curriculum (MTP, MoE balancing)"),
        Stage("extend", functools.partial(stage_extend, threads=threads),
              "extend the context 4x (rounds until the NIAH / bits-per-byte gate is green)"),
        Stage("sft", functools.partial(stage_sft, threads=threads),
              "SFT on the default chat set; before vs after on held-out chat tasks"),
        Stage("rl", functools.partial(stage_rl, threads=threads), "RL with verifiable rewards (AGAPO)"),
        Stage("pref", functools.partial(stage_pref, threads=threads), "preference optimisation (GROUPER)"),
        Stage("evaluate", stage_evaluate,
              "every stage's model: held-out bits/byte, tasks, safety, tool calls vs baselines"),
        Stage("generate", stage_generate, "sample answers; decode speed plain vs MTP speculative"),
        Stage("report", stage_report, "write report.md / report.html"),
    ]
    assert tuple(s.name for s in stages) == STAGE_NAMES
    return stages
