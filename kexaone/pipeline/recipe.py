"""The speedrun's stages: tokenizer -> pretrain -> evaluate -> generate -> report.

Each stage function reads the run parameters (`budget`, `data`, `seed`) and the outputs of earlier stages from its
StageContext, writes into its own directory, and returns the paths (relative to the run directory) and headline
numbers that later stages and the report read. The stage runner (kexaone.pipeline.stages) makes them resumable.

What each stage does:
1. tokenizer: trains the SuperBPE tokenizer and, on the same text with the same vocabulary size, a plain byte-level
   BPE baseline (the same trainer with no superword stage); measures both on held-out text.
2. pretrain: `run_pretraining` on the embedded three-stage curriculum (plus --data) with MTP and MoE balancing;
   killed mid-way, it resumes from the trainer's last checkpoint. The model is exported in the HF layout.
3. evaluate: held-out loss and bits per byte per (domain, language), and accuracy on the held-out synthetic tasks,
   for the trained model and for the untrained initial model (same config and seed).
4. generate: sampled answers in reasoning and non-reasoning mode; decode speed plain vs MTP speculative.
5. report: report.md, report.html, report.json in the run directory.

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

STAGE_NAMES = ("tokenizer", "pretrain", "evaluate", "generate", "report")


def _budget(ctx: StageContext) -> Budget:
    return Budget(**ctx.params["budget"])


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
    steps = b.train_steps
    return TrainConfig(
        preset=b.preset, model_overrides=dict(b.config_overrides), data=list(ctx.params.get("data", [])),
        synthetic_size=b.corpus_size, mix_synthetic=bool(ctx.params.get("data")),
        tokenizer=str(ctx.path(ctx.outputs["tokenizer"]["dir"])), out=str(ctx.stage_dir),
        max_steps=steps, seq_len=b.seq_len, batch_size=b.batch_size, lr=b.lr, adamw_lr=b.adamw_lr,
        warmup_steps=max(1, round(b.warmup_fraction * steps)), decay_fraction=b.decay_fraction,
        precision=b.precision, bias_update_rate=b.bias_update_rate, seed=ctx.params["seed"],
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


# ---------------------------------------------------------------------------------------------- 3. evaluate
def _load_trained(ctx: StageContext):
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.tokenizer import KExaoneTokenizer

    model_dir = ctx.path(ctx.outputs["pretrain"]["model_dir"])
    model = KExaoneForCausalLM.from_pretrained(model_dir).eval()
    tok = KExaoneTokenizer.from_dir(model_dir)
    return model, tok


def _harness(model, tok, tasks, config, out_dir: Path, label: str) -> tuple[dict, dict[str, list[dict]]]:
    """Run `tasks` through the evaluation harness (kexaone eval's code path) on a local model: the results dict and
    each task's per-sample records."""
    import json

    from kexaone.engine.engine import Engine
    from kexaone.eval.backends import LocalBackend
    from kexaone.eval.harness import run_eval
    from kexaone.eval.results import SampleStore

    res = run_eval(LocalBackend(Engine(model, tok), batch_size=64), tasks, config, out_dir, model=label,
                   progress=False)
    samples = {t.name: sorted(SampleStore(out_dir, t.name).records.values(), key=lambda r: int(r["id"])
                              if str(r["id"]).isdigit() else 0) for t in tasks}
    json.dumps(res)  # results must stay JSON (they are copied into eval.json)
    return res, samples


def _heldout_rows(records: list[dict]) -> list[dict]:
    """The harness's held-out records as kexaone.eval.heldout.HeldoutResult dicts (what the report reads)."""
    rows = []
    for r in records:
        domain, _, lang = str(r["id"]).partition("/")
        rows.append({"domain": domain, "language": lang, "documents": r.get("documents"), "tokens": r["tokens"], "bytes": r["bytes"],
                     "loss": r["loss"], "bits_per_byte": r["score"],
                     "bytes_per_token": r["bytes"] / max(1, r["tokens"])})
    return rows


def stage_evaluate(ctx: StageContext) -> dict[str, Any]:
    """Held-out bits per byte and the synthetic tasks, trained vs untrained, through the evaluation harness; the
    harness's own files (results.json / results.md / samples) are kept under `harness/{trained,untrained}`."""
    import torch

    from kexaone.eval.families.synthetic import heldout_task, task_from_spec
    from kexaone.eval.harness import EvalConfig
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.pipeline import corpus

    b = _budget(ctx)
    model, tok = _load_trained(ctx)
    torch.manual_seed(ctx.params["seed"])
    untrained = KExaoneForCausalLM(model.config).eval()  # the initial model: same config, same seed, no training

    groups = corpus.heldout_groups(tok, b, ctx.params.get("data", []), seed=ctx.params["seed"])
    specs = corpus.task_specs(b, tok, seed=ctx.params["seed"])
    tasks = [heldout_task(groups)] + [task_from_spec(s) for s in specs]
    config = EvalConfig(heldout_seq_len=b.seq_len)
    ctx.log(f"[evaluate] harness: held-out bits per byte on {len(groups)} groups and {len(specs)} tasks")
    t0 = time.perf_counter()
    res, samples = _harness(model, tok, tasks, config, ctx.stage_dir / "harness" / "trained", "trained")
    res_u, samples_u = _harness(untrained, tok, tasks, config, ctx.stage_dir / "harness" / "untrained", "untrained")
    out_tasks = []
    for spec in specs:
        r, u = res["tasks"][spec.name], res_u["tasks"][spec.name]
        examples = [{"prompt": x["prompt"][-300:], "output": str(x.get("response") or "")[:300],
                     "answer": x.get("gold"), "correct": bool(x["score"])} for x in samples[spec.name][:3]]
        out_tasks.append({"task": spec.name, "items": r["n"], "accuracy": r["score"], "stderr": r["stderr"],
                          "chance": spec.chance, "untrained_accuracy": u["score"],
                          "baseline": max(spec.chance, u["score"]),
                          "scoring": "mean log-likelihood of each choice" if spec.items and spec.items[0].choices
                          else "greedy decoding, exact answer", "examples": examples})
        ctx.log(f"[evaluate] {spec.name}: {r['score']:.3f} (chance {spec.chance:.3f}, untrained {u['score']:.3f})")
    ctx.log(f"[evaluate] done in {time.perf_counter() - t0:.1f} s")
    ev = {"heldout": _heldout_rows(samples["heldout"]), "heldout_untrained": _heldout_rows(samples_u["heldout"]),
          "tasks": out_tasks,
          "harness": {"trained": ctx.rel(ctx.stage_dir / "harness" / "trained" / "results.md"),
                      "untrained": ctx.rel(ctx.stage_dir / "harness" / "untrained" / "results.md")}}
    _write_json(ctx.stage_dir / "eval.json", ev)
    return {"eval": ctx.rel(ctx.stage_dir / "eval.json"),
            "accuracy": {t["task"]: t["accuracy"] for t in out_tasks},
            "baseline": {t["task"]: t["baseline"] for t in out_tasks}}


# ---------------------------------------------------------------------------------------------- 4. generate
def stage_generate(ctx: StageContext) -> dict[str, Any]:
    from kexaone.engine.engine import Engine
    from kexaone.eval.generation import sample_answers
    from kexaone.eval.speed import measure_decode_speed
    from kexaone.pipeline import corpus

    b = _budget(ctx)
    model, tok = _load_trained(ctx)
    engine = Engine(model, tok)
    questions = corpus.chat_questions(b, seed=ctx.params["seed"])
    samples = sample_answers(engine, tok, questions, b.generation_max_new_tokens, seed=ctx.params["seed"])
    prompts = corpus.speed_prompts(tok, b, seed=ctx.params["seed"])
    ctx.log(f"[generate] decode speed: {len(prompts)} prompts x {b.speed_new_tokens} tokens, plain vs MTP with "
            f"{', '.join(map(str, b.speed_draft_counts))} draft tokens")
    # Each draft count is measured side by side with plain decoding; the headline is the fastest, and the report
    # shows every count (how many drafts pay off depends on the machine and on how well the MTP head predicts).
    speeds = [measure_decode_speed(engine, prompts, new_tokens=b.speed_new_tokens, repeats=b.speed_repeats,
                                   draft_tokens=k) for k in b.speed_draft_counts]
    speed = max(speeds, key=lambda r: r.speedup)
    gen = {"samples": [s.to_dict() for s in samples], "speed": speed.to_dict(),
           "speed_by_draft_tokens": [r.to_dict() for r in speeds]}
    _write_json(ctx.stage_dir / "generation.json", gen)
    return {"generation": ctx.rel(ctx.stage_dir / "generation.json"), "speedup": speed.speedup,
            "acceptance_rate": speed.acceptance_rate}


# ---------------------------------------------------------------------------------------------- 5. report
def stage_report(ctx: StageContext) -> dict[str, Any]:
    from kexaone.report.card import write_report

    return write_report(ctx.out_dir)


def speedrun_stages(threads: int = 0) -> list[Stage]:
    """The five stages; `threads` (0 = torch's default) is handed to the trainer, which sets torch's CPU threads."""
    import functools

    return [
        Stage("tokenizer", stage_tokenizer, "train the SuperBPE tokenizer and a plain-BPE baseline"),
        Stage("pretrain", functools.partial(stage_pretrain, threads=threads),
              "pre-train through the three-stage curriculum (MTP, MoE balancing)"),
        Stage("evaluate", stage_evaluate, "held-out bits/byte and task accuracy vs baselines"),
        Stage("generate", stage_generate, "sample answers; decode speed plain vs MTP speculative"),
        Stage("report", stage_report, "write report.md / report.html"),
    ]
