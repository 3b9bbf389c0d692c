"""`kexaone ablate`: the same pre-training budget, data and evaluation for each variant of the K-EXAONE recipe
(kexaone.pipeline.ablate_variants), several seeds each, then a report with every delta and its seed noise.

    kexaone ablate --budget cpu --variants all --seeds 2 --out runs/ablate [--jobs 2] [--max-seeds 4]

Layout of DIR:
- `ablate.json`: the budget the directory was started with (re-running with another budget is refused);
- `shared/`: the SuperBPE tokenizer and the plain-BPE baseline (same text, same vocabulary), and the held-out
  documents (as text, so every variant, whatever its tokenizer, is scored on the same bytes);
- `runs/<variant>/seed<k>/`: one run: `train/` (the `kexaone pretrain` run: checkpoints, metrics.jsonl, model),
  `eval/` (the harness's results.json and samples), `summary.json` (written last: the run is finished).
A finished run (summary.json present) is skipped; an unfinished one resumes: training from its last checkpoint,
the harness from its stored samples. `--jobs N` runs N (variant, seed) runs at once as separate processes; stopping
the grid (Ctrl-C or SIGTERM) stops them first, each saving a checkpoint. A run's `lock` file names the process
running it, so two grids on one directory never train the same run at once.

Learning rates: `NAME@lr=X` is variant NAME at learning rate X. Sweeping the baseline (Muon) and `adamw` over a few
rates (`--variants adamw,adamw@lr=0.001,baseline@lr=0.01`) gives the report's comparison at tuned learning rates.

Seeds: the baseline always gets at least 2. `--max-seeds M` (> --seeds) adds seeds automatically: after each
round, every variant whose held-out bits-per-byte delta is within 3 standard errors of zero (noise: the pooled
seed variance when a variant has one seed) gets one more seed, until none is left or each has M.

Per run: held-out bits per byte by (domain, language) (harness family `heldout`), the synthetic tasks, NIAH at the
training length and 4x it, the induction and recall probe (kexaone.eval.induction, when that module is present),
MaxVio over training, training tokens/s, KV-cache bytes at 32K, MTP acceptance and speculative speed-up.

Not here: the variants (ablate_variants), the statistics and report (kexaone.report.ablation).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexaone.utils.io import atomic_write_text

HELP = "Ablate K-EXAONE's mechanisms: the same budget per variant, several seeds, a report of deltas with noise."

SYNTHETIC_TASKS = ("arithmetic", "crosslingual_recall", "retrieval", "code_completion")
KV_CONTEXT = 32_768


@dataclass(frozen=True)
class AblationBudget:
    name: str
    description: str
    preset: str
    corpus_size: str
    tokenizer_vocab_size: int
    tokenizer_train_bytes: int
    seq_len: int
    batch_size: int
    train_steps: int
    lr: float
    adamw_lr: float | None
    adamw_variant_lr: float
    """Learning rate of the `adamw` variant (every parameter on AdamW)."""
    precision: str = "fp32"
    bias_update_rate: float | None = 1e-3
    config_overrides: dict[str, Any] = field(default_factory=dict)
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.3
    heldout_docs: int = 8
    task_items: int = 40
    niah_depths: tuple[float, ...] = (10.0, 50.0, 90.0)
    niah_base: int | None = None
    """Base NIAH length in tokens (None: seq_len, the training length); NIAH also runs at 4x it. Small budgets
    set 256: the NIAH prompt alone takes ~150 tokens of a small vocabulary."""
    speed_new_tokens: int = 48
    speed_repeats: int = 1
    speed_draft_tokens: int = 2
    checkpoint_every: int = 50
    eval_every: int = 50
    eval_batches: int = 4

    def pipeline_budget(self) -> Any:
        """The speedrun Budget with the same data sizes (what kexaone.pipeline.corpus reads)."""
        from kexaone.pipeline.budgets import Budget

        return Budget(name=f"ablate-{self.name}", description=self.description, preset=self.preset,
                      corpus_size=self.corpus_size, tokenizer_vocab_size=self.tokenizer_vocab_size,
                      tokenizer_train_bytes=self.tokenizer_train_bytes, seq_len=self.seq_len,
                      batch_size=self.batch_size, train_tokens=self.train_steps * self.seq_len * self.batch_size,
                      heldout_docs=self.heldout_docs, task_items=self.task_items)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


BUDGETS: dict[str, AblationBudget] = {b.name: b for b in (
    AblationBudget("smoke", "seconds per run, for tests: the tiny preset, 6 steps", preset="tiny",
                   corpus_size="tiny", tokenizer_vocab_size=512, tokenizer_train_bytes=60_000, seq_len=64,
                   batch_size=4, train_steps=6, lr=3e-3, adamw_lr=None, adamw_variant_lr=3e-3, heldout_docs=2,
                   task_items=2, niah_depths=(50.0,), niah_base=256, speed_new_tokens=6, checkpoint_every=3,
                   eval_every=3, eval_batches=1),
    AblationBudget("cpu-quick", "what fits in under an hour on 2 shared CPU cores: the tiny preset with window "
                   "128, 80 steps of 4 x 256 tokens (a few minutes a run at 1 thread); window-512/4096 equal "
                   "all-global at this length", preset="tiny", corpus_size="tiny", tokenizer_vocab_size=1024,
                   tokenizer_train_bytes=300_000, seq_len=256, batch_size=4, train_steps=80, lr=3e-3, adamw_lr=3e-2,
                   adamw_variant_lr=3e-3, config_overrides={"sliding_window": 128}, heldout_docs=4, task_items=16,
                   niah_depths=(50.0,), niah_base=256, speed_new_tokens=32, checkpoint_every=20, eval_every=40,
                   eval_batches=2),
    AblationBudget("cpu", "the CPU grid: the tiny preset widened (H 128) with window 128, 400 steps of 2 x 1024 "
                   "tokens, about 6 minutes a run at 1 thread on an idle core, a few hours for every variant x 2 "
                   "seeds; window-4096 equals all-global at this length", preset="tiny", corpus_size="tiny",
                   tokenizer_vocab_size=2048, tokenizer_train_bytes=600_000, seq_len=1024, batch_size=2,
                   train_steps=400, lr=3e-3, adamw_lr=3e-2, adamw_variant_lr=3e-3,
                   config_overrides={"hidden_size": 128, "intermediate_size": 384, "moe_intermediate_size": 64,
                                     "head_dim": 32, "sliding_window": 128},
                   heldout_docs=8, task_items=50, speed_new_tokens=64, checkpoint_every=100, eval_every=100),
    AblationBudget("gpu", "for one GPU: the `small` preset (window 128), 3000 steps of 8 x 4096 tokens (~100M "
                   "tokens) in bf16", preset="small", corpus_size="large", tokenizer_vocab_size=16_384,
                   tokenizer_train_bytes=20_000_000, seq_len=4096, batch_size=8, train_steps=3000, lr=2e-3,
                   adamw_lr=2e-2, adamw_variant_lr=1e-3, precision="bf16", heldout_docs=60, task_items=200,
                   niah_depths=(0.0, 25.0, 50.0, 75.0, 100.0), speed_new_tokens=128, speed_repeats=3,
                   checkpoint_every=500, eval_every=500, eval_batches=16),
)}


def get_budget(name: str) -> AblationBudget:
    if name not in BUDGETS:
        raise ValueError(f"unknown ablation budget {name!r}; choose one of {sorted(BUDGETS)}")
    return BUDGETS[name]


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", default="cpu", help=f"one of {', '.join(BUDGETS)} (default cpu)")
    parser.add_argument("--variants", default="all",
                        help="comma-separated variant names, 'all', and learning-rate sweep points NAME@lr=X "
                             "(the baseline is always run)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant (the baseline gets at least 2)")
    parser.add_argument("--max-seeds", type=int, default=None,
                        help="add seeds (up to this many) to variants whose effect is within 3 standard errors")
    parser.add_argument("--out", required=True, help="the ablation directory (resumable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, as separate processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--list", action="store_true", help="list the variants and budgets and exit")
    parser.add_argument("--report-only", action="store_true", help="only (re)write the report of finished runs")
    parser.add_argument("--run-one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from kexaone.pipeline.ablate_variants import LR_SUFFIX, VARIANTS, get_variant, parse_variants

    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:16s} {v.description}")
        print(f"{'NAME' + LR_SUFFIX + 'X':16s} variant NAME at learning rate X (a sweep point, e.g. adamw{LR_SUFFIX}0.01)")
        for b in BUDGETS.values():
            print(f"budget {b.name:10s} {b.description}")
        return 0
    try:
        budget = get_budget(args.budget)
        variants = parse_variants(args.variants)
        if args.seeds < 1 or args.jobs < 1:
            raise ValueError(f"--seeds and --jobs must be >= 1, got {args.seeds} and {args.jobs}")
        if args.max_seeds is not None and args.max_seeds < args.seeds:
            raise ValueError(f"--max-seeds ({args.max_seeds}) must be >= --seeds ({args.seeds})")
    except ValueError as e:
        print(f"kexaone ablate: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.run_one:
        try:
            variant = get_variant(args.run_one[0])
        except ValueError as e:
            print(f"kexaone ablate: {e}", file=sys.stderr)
            return 2
        run_one(out, budget, variant, int(args.run_one[1]), threads=args.threads)
        return 0
    if args.report_only:
        from kexaone.report.ablation import write_report

        print(write_report(out))
        return 0
    _sigterm_stops_the_grid()
    ablate(out, budget, [v.name for v in variants], args.seeds, max_seeds=args.max_seeds, jobs=args.jobs,
           threads=args.threads)
    return 0


def _sigterm_stops_the_grid() -> None:
    """SIGTERM to the grid process stops it as Ctrl-C does (its running runs are stopped first), instead of
    leaving them to train on unattended."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)


# ---------------------------------------------------------------------------------------------- the grid
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / variant / f"seed{seed}"


def is_finished(out: Path, variant: str, seed: int) -> bool:
    return (run_dir(out, variant, seed) / "summary.json").is_file()


def check_params(out: Path, budget: AblationBudget) -> None:
    """Record the budget in DIR/ablate.json; refuse a directory started with another budget."""
    out.mkdir(parents=True, exist_ok=True)
    p = out / "ablate.json"
    if p.is_file():
        old = json.loads(p.read_text(encoding="utf-8")).get("budget")
        if old != json.loads(json.dumps(budget.to_dict())):
            raise ValueError(f"{out} was started with budget {old.get('name')!r} (other settings); use another "
                             f"--out, or the same budget")
    else:
        _write_json(p, {"budget": budget.to_dict()})


def plan(variants: list[str], seeds: int) -> list[tuple[str, int]]:
    """(variant, seed) pairs of the first round: `seeds` each, at least 2 for the baseline."""
    from kexaone.pipeline.ablate_variants import BASELINE

    return [(v, s) for v in variants for s in range(max(seeds, 2) if v == BASELINE else seeds)]


def ablate(out: Path, budget: AblationBudget, variants: list[str], seeds: int, *, max_seeds: int | None = None,
           jobs: int = 1, threads: int = 1, log=print, after_run=None) -> Path:
    """Run every missing (variant, seed), add seeds where the effect is within 3 standard errors (up to
    max_seeds), and write the report. `after_run(variant, seed)` is called after each in-process run (tests)."""
    from kexaone.pipeline.ablate_variants import get_variant, parse_variants
    from kexaone.report.ablation import seeds_wanted, write_report

    variants = [v.name for v in parse_variants(list(variants))]  # validated, the baseline first
    out = Path(out)
    check_params(out, budget)
    prepare_shared(out, budget, log=log)
    todo = plan(variants, seeds)
    while todo:
        pending = [(v, s) for v, s in todo if not is_finished(out, v, s)]
        for v, s in todo:
            if (v, s) not in pending:
                log(f"[ablate] {v} seed {s}: finished earlier, skipped")
        if jobs == 1:
            for v, s in pending:
                run_one(out, budget, get_variant(v), s, threads=threads, log=log)
                if after_run is not None:
                    after_run(v, s)
        else:
            _run_parallel(out, budget, pending, jobs, threads, log)
        todo = []
        if max_seeds is not None:
            want = seeds_wanted(out, variants, max_seeds)
            todo = [(v, s) for v, n in want.items() for s in range(n) if not is_finished(out, v, s)]
            if todo:
                log(f"[ablate] adding seeds (effect within 3 standard errors): {sorted(set(v for v, _ in todo))}")
    path = write_report(out)
    log(f"[ablate] report: {path}")
    return path


def run_one_command(out: Path, budget: AblationBudget, variant: str, seed: int, threads: int) -> list[str]:
    """The command line of one (variant, seed) run in its own process."""
    return [sys.executable, "-m", "kexaone", "ablate", "--budget", budget.name, "--out", str(out),
            "--threads", str(threads), "--run-one", variant, str(seed)]


STOP_GRACE_S = 300.0
"""How long a stopped grid waits for its runs to save a checkpoint and exit before it kills them."""


def _run_parallel(out: Path, budget: AblationBudget, pending: list[tuple[str, int]], jobs: int, threads: int,
                  log) -> None:
    """Each run in its own process (`kexaone ablate --run-one`), at most `jobs` at once; logs in the run dir.
    When the grid is stopped (Ctrl-C, or SIGTERM through the CLI), the runs get SIGTERM, save a checkpoint and
    exit before the grid does, so no run keeps training unattended and a re-run resumes each of them."""
    queue = list(pending)
    running: list[tuple[subprocess.Popen, str, int, Any]] = []
    failed = []
    try:
        while queue or running:
            while queue and len(running) < jobs:
                v, s = queue.pop(0)
                d = run_dir(out, v, s)
                d.mkdir(parents=True, exist_ok=True)
                logf = open(d / "log.txt", "a", encoding="utf-8")
                proc = subprocess.Popen(run_one_command(out, budget, v, s, threads), stdout=logf,
                                        stderr=subprocess.STDOUT, env=os.environ.copy())
                running.append((proc, v, s, logf))
                log(f"[ablate] {v} seed {s}: started (pid {proc.pid})")
            time.sleep(1.0)
            for item in list(running):
                p, v, s, logf = item
                if p.poll() is not None:
                    logf.close()
                    running.remove(item)
                    log(f"[ablate] {v} seed {s}: exit {p.returncode}")
                    if p.returncode != 0:
                        failed.append((v, s))
    except BaseException:
        _stop_runs(running, log)
        raise
    if failed:
        raise RuntimeError(f"runs failed (see their log.txt): {failed}")


def _stop_runs(running: list[tuple[subprocess.Popen, str, int, Any]], log) -> None:
    import signal

    for p, v, s, _ in running:
        if p.poll() is None:
            log(f"[ablate] {v} seed {s}: stopping (SIGTERM to pid {p.pid}; it saves a checkpoint)")
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p, v, s, logf in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log(f"[ablate] {v} seed {s}: no exit after {STOP_GRACE_S:.0f} s, killed")
            p.kill()
            p.wait()
        logf.close()


# ---------------------------------------------------------------------------------------------- shared inputs
def prepare_shared(out: Path, budget: AblationBudget, log=print) -> None:
    """Both tokenizers and the held-out documents, once per ablation directory."""
    from kexaone.pipeline import corpus
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.superbpe import train_superbpe

    shared = out / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    pb = budget.pipeline_budget()
    texts = None
    for name, transition in (("superbpe", None), ("bpe", budget.tokenizer_vocab_size)):
        if (shared / name / "tokenizer.json").is_file():
            continue
        if texts is None:
            texts = [(t, None) for t in corpus.tokenizer_texts([], budget.tokenizer_train_bytes, budget.corpus_size)]
        log(f"[ablate] training the {name} tokenizer ({budget.tokenizer_vocab_size} ids)")
        tmp = shared / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        kw = {} if transition is None else {"transition": transition}
        train_superbpe(texts, budget.tokenizer_vocab_size, out_dir=tmp, workers=1, **kw)
        os.replace(tmp, shared / name)
    if not (shared / "heldout.json").is_file():
        tok = KExaoneTokenizer.from_dir(shared / "superbpe")
        groups = corpus.heldout_groups(tok, pb, [])
        _write_json(shared / "heldout.json", [{"domain": d, "lang": lang, "docs": docs}
                                              for (d, lang), docs in groups.items()])
        # Tokenize the curriculum with the BPE tokenizer here too, so concurrent runs find the token cache built.
        corpus.heldout_groups(KExaoneTokenizer.from_dir(shared / "bpe"), pb, [])


def load_heldout(out: Path) -> dict[tuple[str, str], list[str]]:
    rows = json.loads((out / "shared" / "heldout.json").read_text(encoding="utf-8"))
    return {(r["domain"], r["lang"]): r["docs"] for r in rows}


# ---------------------------------------------------------------------------------------------- one run
def train_config(out: Path, budget: AblationBudget, variant: Any, seed: int, threads: int = 1) -> Any:
    """The TrainConfig of one (variant, seed) run: the budget's baseline with the variant applied."""
    from kexaone.pipeline.ablate_variants import apply_variant
    from kexaone.train.config import TrainConfig

    d = run_dir(out, variant.name, seed) / "train"
    steps = budget.train_steps
    ckpt = d / "checkpoints"
    base = TrainConfig(
        preset=budget.preset, model_overrides=dict(budget.config_overrides), synthetic_size=budget.corpus_size,
        tokenizer=str(out / "shared" / variant.tokenizer), out=str(d), max_steps=steps, seq_len=budget.seq_len,
        batch_size=budget.batch_size, lr=budget.lr, adamw_lr=budget.adamw_lr,
        warmup_steps=max(1, round(budget.warmup_fraction * steps)), decay_fraction=budget.decay_fraction,
        precision=budget.precision, bias_update_rate=budget.bias_update_rate, seed=seed,
        save_every=budget.checkpoint_every, eval_every=budget.eval_every, eval_batches=budget.eval_batches,
        log_every=1, resume=ckpt.is_dir() and any(ckpt.iterdir()), tensorboard=False, progress=False, workers=1,
        threads=threads)
    return apply_variant(variant, base, budget)


def _train(out: Path, budget: AblationBudget, variant: Any, seed: int, threads: int, log) -> dict:
    from kexaone.train.checkpoint import CheckpointManager
    from kexaone.train.pretrain import run_pretraining

    d = run_dir(out, variant.name, seed) / "train"
    done = d / "result.json"
    if done.is_file() and (d / "model" / "config.json").is_file():
        res = json.loads(done.read_text(encoding="utf-8"))
        if not res.get("interrupted"):
            return res
    ckpt = d / "checkpoints"
    if ckpt.is_dir() and CheckpointManager(ckpt).latest() is None:
        shutil.rmtree(ckpt)  # killed while writing its first checkpoint: nothing to resume from
    cfg = train_config(out, budget, variant, seed, threads)
    log(f"[ablate] {variant.name} seed {seed}: training {budget.train_steps} steps"
        + (" (resuming)" if cfg.resume else ""))
    t0 = time.perf_counter()
    r = run_pretraining(cfg)
    if r.interrupted:
        raise KeyboardInterrupt(f"{variant.name} seed {seed}: interrupted ({r.signal_name}) at step {r.steps}")
    res = r.to_dict()
    res["seconds"] = time.perf_counter() - t0
    return res


def training_curves(metrics_path: Path) -> dict[str, list]:
    """Per-step loss, MaxVio and tokens/s from a trainer's metrics.jsonl (the last record of a step wins: a resumed
    run may log a step twice)."""
    loss, vio, tps = {}, {}, {}
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if r.get("kind") != "train":
            continue
        s = int(r["step"])
        if r.get("loss") is not None:
            loss[s] = float(r["loss"])
        if r.get("max_vio") is not None:
            vio[s] = float(r["max_vio"])
        if r.get("tok_per_s") is not None:
            tps[s] = float(r["tok_per_s"])
    return {"loss": sorted(loss.items()), "max_vio": sorted(vio.items()), "tok_per_s": sorted(tps.items())}


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


def _evaluate(out: Path, budget: AblationBudget, variant: Any, seed: int, log) -> dict:
    import torch

    from kexaone.engine.engine import Engine
    from kexaone.eval.backends import LocalBackend
    from kexaone.eval.families import NIAH, make_niah_items
    from kexaone.eval.families.synthetic import heldout_task, synthetic_tasks
    from kexaone.eval.harness import EvalConfig, Task, run_eval
    from kexaone.eval.speed import measure_decode_speed
    from kexaone.model.info import kv_cache_bytes
    from kexaone.pipeline import corpus

    d = run_dir(out, variant.name, seed)
    engine = Engine.from_pretrained(d / "train" / "model")
    backend = LocalBackend(engine, seed=seed)
    backend.model_path = str((d / "train" / "model").resolve())
    tok, model, config = backend.tokenizer, engine.model, engine.model.config
    torch.manual_seed(seed)
    base_len = budget.niah_base or budget.seq_len
    lengths = (base_len, 4 * base_len)
    ecfg = EvalConfig(seed=0, heldout_seq_len=budget.seq_len, niah_lengths=lengths, niah_depths=budget.niah_depths,
                      synthetic_size=budget.corpus_size, max_new_tokens=None)
    tasks = [heldout_task(load_heldout(out))]
    tasks += synthetic_tasks(list(SYNTHETIC_TASKS), size=budget.corpus_size, seed=0, n_items=budget.task_items,
                             tokenizer=tok, max_prompt_tokens=budget.seq_len - 16)
    niah_gen = 12
    for L in lengths:
        items = make_niah_items((L,), budget.niah_depths, backend.count_tokens, niah_gen, seed=0)
        tasks.append(Task(f"niah-{L}", NIAH(), items, options={"lengths": [L], "depths": list(budget.niah_depths)}))
    log(f"[ablate] {variant.name} seed {seed}: evaluating {len(tasks)} tasks")
    ecfg = dataclasses.replace(ecfg, max_new_tokens=niah_gen)
    res = run_eval(backend, tasks, ecfg, d / "eval", progress=False)["tasks"]
    heldout = res["heldout"]
    ev: dict[str, Any] = {
        "heldout_bpb": heldout["score"], "heldout_bpb_by_group": heldout.get("breakdown", {}),
        "tasks": {n: res[n]["score"] for n in SYNTHETIC_TASKS if n in res},
        "niah": {str(L): res[f"niah-{L}"]["score"] for L in lengths},
        "kv_cache_bytes_32k": kv_cache_bytes(config, KV_CONTEXT),
    }
    try:
        from kexaone.eval.induction import probe_for_tokenizer, score_probe
    except ImportError:
        ev["induction"] = None  # kexaone.eval.induction is not on this branch
    else:
        ev["induction"] = score_probe(model, probe_for_tokenizer(tok, seed=0))
    if config.num_nextn_predict_layers > 0:
        prompts = corpus.speed_prompts(tok, budget.pipeline_budget(), seed=0)
        sp = measure_decode_speed(engine, prompts, new_tokens=budget.speed_new_tokens, repeats=budget.speed_repeats,
                                  draft_tokens=budget.speed_draft_tokens)
        ev["mtp_acceptance"] = sp.acceptance_rate
        ev["spec_speedup"] = sp.speedup
    else:
        ev["mtp_acceptance"] = ev["spec_speedup"] = None
    return ev


def run_one(out: Path, budget: AblationBudget, variant: Any, seed: int, threads: int = 1, log=print) -> dict:
    """Train (or resume) and evaluate one (variant, seed); write runs/<variant>/seed<k>/summary.json last."""
    d = run_dir(out, variant.name, seed)
    if (d / "summary.json").is_file():
        return json.loads((d / "summary.json").read_text(encoding="utf-8"))
    d.mkdir(parents=True, exist_ok=True)
    with run_lock(d):
        return _run_locked(out, budget, variant, seed, threads, log)


@contextlib.contextmanager
def run_lock(d: Path):
    """DIR/lock holds the pid of the one process running this (variant, seed): a second grid started on the same
    directory meanwhile fails this run with a clear error instead of training it twice into the same files. A lock
    left by a process that died is taken over."""
    path = d / "lock"
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                raise RuntimeError(f"{d} is being run by process {holder}; wait for it to finish or stop it")
            path.unlink(missing_ok=True)  # its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> int | str | None:
    """The live process holding a lock file, or None when it is gone."""
    try:
        text = path.read_text().strip()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if not text.isdigit():
        return "(starting)" if age < 10 else None  # created, pid not written yet; or left half-written
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return int(text)


def _run_locked(out: Path, budget: AblationBudget, variant: Any, seed: int, threads: int, log) -> dict:
    d = run_dir(out, variant.name, seed)
    if (d / "summary.json").is_file():  # finished by another process between the check and the lock
        return json.loads((d / "summary.json").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    tr = _train(out, budget, variant, seed, threads, log)
    curves = training_curves(d / "train" / "metrics.jsonl")
    vio = [v for _, v in curves["max_vio"]]
    tail = vio[-max(1, len(vio) // 10):] if vio else []
    summary = {
        "variant": variant.name, "seed": seed, "budget": budget.name,
        "description": variant.description, "model": variant.model, "train": variant.train,
        "tokenizer": variant.tokenizer,
        "steps": tr.get("steps"), "tokens": tr.get("tokens"), "final_loss": tr.get("final_loss"),
        "eval_loss": tr.get("eval_loss"),
        "tok_per_s": _median([v for _, v in curves["tok_per_s"]]),
        "max_vio_final": (sum(tail) / len(tail)) if tail else None,
        "max_vio_mean": (sum(vio) / len(vio)) if vio else None,
        "curves": curves,
    }
    summary.update(_evaluate(out, budget, variant, seed, log))
    summary["seconds"] = time.perf_counter() - t0
    for k, v in list(summary.items()):
        if isinstance(v, float) and not math.isfinite(v):
            summary[k] = None
    _write_json(d / "summary.json", summary)
    log(f"[ablate] {variant.name} seed {seed}: held-out {summary['heldout_bpb']:.4f} bits/byte "
        f"({summary['seconds']:.0f} s)")
    return summary
