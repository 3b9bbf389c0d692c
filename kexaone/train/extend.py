"""`kexaone extend`: context extension in stages, each gated by needle-in-a-haystack ("green light"), and
`run_extension(cfg)`, the same run as a Python call (what the speedrun's `extend` stage uses).

Per stage (a target length L, e.g. `--stages 4096,16384`), rounds of `steps_per_round` optimizer steps on a mixture
of three sources, packed as whole documents at length L without truncation (kexaone.data.docpacking,
truncate=False):
- rehearsal: the pre-training distribution (`--data`, else the embedded synthetic corpus without its arithmetic);
- reasoning: the synthetic step-by-step arithmetic (chat format with reasoning);
- long: whole long documents of about L tokens (kexaone.data.long_docs: the synthetic world, and
  ../shared/corpora/train when present), the later stages with a larger share (the preset's `shares`).
After every round the gate measures (1) short-context held-out bits per byte on the rehearsal source's held-out
documents at the base length (kexaone.train.evaluation) and (2) NIAH over the stage's lengths x depths through the
evaluation harness (kexaone.eval.harness, family `niah`; a heat map per round). A stage is green when the grid's
mean exact match >= `niah_threshold` AND bpb <= (1 + `bpb_tolerance`) x the starting model's bpb; it repeats until
green or `rounds_per_stage` rounds are spent, and the next stage starts either way (the report says which round got
how far). Before any training the starting model's NIAH grid at the base length is recorded too.

The model's `max_position_embeddings` becomes the last stage's length. Nothing else changes for the new length:
sliding layers never see distances beyond their window (their RoPE needs no rescaling) and global layers are NoPE.
Writes `<out>/extend_report.md` + `.json`, heat maps under `<out>/stage<i>_<L>/round<j>/niah/`, the model under
`<out>/model`. Not here: the gate's evaluations themselves (eval harness, held-out scoring), the training loop.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HELP = ("Extend the context length in stages (rehearsal + reasoning + whole long documents), each repeated until "
        "needle-in-a-haystack is green and short-context bits per byte holds.")


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class ExtendPreset:
    """Budgets of an extension run; CLI flags override single fields."""

    name: str
    stages: tuple[int, ...]
    base_length: int
    """context the starting model was trained at (short-context evaluation and the 'before' NIAH grid)"""
    rounds_per_stage: int
    steps_per_round: int
    batch_size: int
    lr: float
    shares: tuple[tuple[float, float, float], ...]
    """(rehearsal, reasoning, long) sampling weights of stage 1, 2, ... (the last repeats for later stages)"""
    long_docs: int
    """long documents written per stage"""
    niah_fractions: tuple[float, ...]
    """NIAH lengths as fractions of the stage's length"""
    niah_depths: tuple[float, ...]
    niah_per_cell: int
    heldout_rows: int
    """rows of base_length scored for short-context bits per byte"""
    precision: str


PRESETS: dict[str, ExtendPreset] = {
    # K-EXAONE's schedule (SPEC section 4): 8K -> 32K -> 256K, the second stage with more long documents.
    "8k-32k-256k": ExtendPreset(
        "8k-32k-256k", stages=(32_768, 262_144), base_length=8192, rounds_per_stage=4, steps_per_round=500,
        batch_size=4, lr=3e-5, shares=((0.5, 0.2, 0.3), (0.35, 0.15, 0.5)), long_docs=2000,
        niah_fractions=(0.125, 0.25, 0.5, 0.75, 1.0), niah_depths=tuple(float(d) for d in range(0, 101, 10)),
        niah_per_cell=2, heldout_rows=256, precision="bf16"),
    # What this CPU can run: the speedrun's small model, base 256 -> 1024.
    "cpu-small": ExtendPreset(
        "cpu-small", stages=(1024,), base_length=256, rounds_per_stage=3, steps_per_round=30, batch_size=2,
        lr=3e-4, shares=((0.5, 0.2, 0.3), (0.35, 0.15, 0.5)), long_docs=48, niah_fractions=(0.5, 1.0),
        niah_depths=(0.0, 50.0, 100.0), niah_per_cell=1, heldout_rows=32, precision="fp32"),
}


NIAH_MIN_LENGTH = 256
"""Shortest NIAH length: below it the question and needle leave almost no haystack."""


def parse_stages(text: str | Sequence[int]) -> tuple[int, ...]:
    """'4096,16384' -> (4096, 16384): integers >= 64, strictly increasing."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p) for p in text]
    if not parts or any(not p for p in parts):
        raise ValueError(f"--stages {text!r} is invalid: give comma-separated target lengths, e.g. 4096,16384")
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--stages {text!r} is invalid: every stage must be an integer number of tokens, "
                         "e.g. 4096,16384") from None
    if any(x < 64 for x in out):
        raise ValueError(f"--stages {text!r} is invalid: every length must be >= 64 tokens")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"--stages {text!r} is invalid: lengths must strictly increase")
    return out


@dataclass
class ExtendConfig:
    """One extension run (see the module docstring); None fields take the preset's value."""

    init_from: str
    out: str
    preset_budget: str = "cpu-small"
    stages: tuple[int, ...] | None = None
    base_length: int | None = None
    data: list[str] = field(default_factory=list)
    rounds_per_stage: int | None = None
    steps_per_round: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    long_docs: int | None = None
    niah_threshold: float = 0.9
    bpb_tolerance: float = 0.03
    niah_depths: tuple[float, ...] | None = None
    corpus: str | None = "auto"
    """long documents also from this training-corpus directory; 'auto' = ../shared/corpora/train when present;
    None / 'none' = synthetic only"""
    synthetic_size: str = "default"
    precision: str | None = None
    device: str = "auto"
    activation_checkpointing: bool = False
    seed: int = 0
    threads: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.preset_budget not in PRESETS:
            raise ValueError(f"--preset-budget {self.preset_budget!r} is invalid: choose one of {sorted(PRESETS)}")
        p = PRESETS[self.preset_budget]
        self.stages = parse_stages(self.stages if self.stages is not None else p.stages)
        for name in ("base_length", "rounds_per_stage", "steps_per_round", "batch_size", "lr", "long_docs",
                     "niah_depths", "precision"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(p, name))
        for name in ("base_length", "rounds_per_stage", "steps_per_round", "batch_size", "long_docs"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} {v!r} is invalid: must be an integer >= 1")
        if self.base_length >= self.stages[0]:
            raise ValueError(f"--base-length {self.base_length} must be below the first stage ({self.stages[0]})")
        if not 0.0 <= self.niah_threshold <= 1.0:
            raise ValueError(f"--niah-threshold {self.niah_threshold} is invalid: must be in [0, 1]")
        if not (math.isfinite(self.bpb_tolerance) and self.bpb_tolerance >= 0):
            raise ValueError(f"--bpb-tolerance {self.bpb_tolerance} is invalid: must be a number >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr {self.lr} is invalid: must be > 0")
        self.niah_depths = tuple(float(d) for d in self.niah_depths)
        if not self.niah_depths or any(not 0 <= d <= 100 for d in self.niah_depths):
            raise ValueError(f"--niah-depths {self.niah_depths} is invalid: percentages in [0, 100]")

    @property
    def preset(self) -> ExtendPreset:
        return PRESETS[self.preset_budget]

    def shares(self, stage_index: int) -> tuple[float, float, float]:
        s = self.preset.shares
        return s[min(stage_index, len(s) - 1)]

    def niah_lengths(self, length: int) -> tuple[int, ...]:
        return tuple(sorted({max(NIAH_MIN_LENGTH, int(round(f * length))) for f in self.preset.niah_fractions}))


# ---------------------------------------------------------------------------------------------- the gate
@dataclass
class GateResult:
    niah: float
    """mean exact match over the stage's lengths x depths grid"""
    bpb: float
    base_bpb: float
    bpb_limit: float
    niah_ok: bool
    bpb_ok: bool

    @property
    def green(self) -> bool:
        return self.niah_ok and self.bpb_ok

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "green": self.green}


def gate_decision(niah: float, bpb: float, base_bpb: float, threshold: float = 0.9,
                  tolerance: float = 0.03) -> GateResult:
    """Green when NIAH >= threshold and bpb <= base_bpb x (1 + tolerance) (bpb: lower is better)."""
    limit = base_bpb * (1.0 + tolerance)
    return GateResult(niah=float(niah), bpb=float(bpb), base_bpb=float(base_bpb), bpb_limit=limit,
                      niah_ok=niah >= threshold, bpb_ok=bpb <= limit)


@dataclass
class RoundRecord:
    stage: int
    length: int
    round: int
    steps: int
    tokens: int
    train_loss: float | None
    gate: GateResult
    niah_grid: dict[str, float]
    heatmap: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gate"] = self.gate.to_dict()
        return d


def run_stage_rounds(rounds: int, train_round: Callable[[int], dict], evaluate: Callable[[int], tuple[GateResult,
                     dict]], on_round: Callable[[dict, GateResult, dict], None] = lambda *a: None
                     ) -> tuple[bool, int]:
    """Train and gate round after round until green or `rounds` are spent; (green, rounds run)."""
    for r in range(1, rounds + 1):
        trained = train_round(r)
        gate, extra = evaluate(r)
        on_round(trained, gate, extra)
        if gate.green:
            return True, r
    return False, rounds


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--init-from", required=True, metavar="DIR", help="HF-layout checkpoint to extend (with its tokenizer)")
    a("--out", required=True, metavar="DIR", help="output directory (report, heat maps, model/)")
    a("--stages", default=None, help="comma-separated target lengths, e.g. 4096,16384 (default: the preset's)")
    a("--preset-budget", default="cpu-small", choices=sorted(PRESETS), help="budgets (default cpu-small)")
    a("--data", action="append", default=[], metavar="PATH[@WEIGHT]",
      help="rehearsal source(s): the pre-training data (default: the embedded synthetic corpus)")
    a("--base-length", type=int, default=None, help="context the starting model was trained at")
    a("--rounds-per-stage", type=int, default=None, help="most rounds of a stage before giving up on green")
    a("--steps-per-round", type=int, default=None, help="optimizer steps per round")
    a("--batch-size", type=int, default=None, help="rows per step")
    a("--lr", type=float, default=None, help="peak learning rate (AdamW)")
    a("--long-docs", type=int, default=None, help="long documents per stage")
    a("--niah-threshold", type=float, default=0.9, help="NIAH grid mean needed for green (default 0.9)")
    a("--bpb-tolerance", type=float, default=0.03,
      help="short-context bits per byte may rise by this fraction of the starting model's (default 0.03)")
    a("--niah-depths", default=None, help="comma-separated depths in percent (default: the preset's)")
    a("--corpus", default="auto", help="training-corpus dir for long documents ('auto': ../shared/corpora/train "
                                       "when present; 'none')")
    a("--synthetic-size", default="default", choices=("tiny", "default", "large"))
    a("--precision", default=None, choices=("fp32", "bf16"))
    a("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a("--activation-checkpointing", action="store_true", help="recompute decoder layers in backward")
    a("--seed", type=int, default=0)
    a("--threads", type=int, default=0)


def config_from_args(args: argparse.Namespace) -> ExtendConfig:
    depths = None
    if args.niah_depths:
        try:
            depths = tuple(float(x) for x in args.niah_depths.split(","))
        except ValueError:
            raise ValueError(f"--niah-depths {args.niah_depths!r} is invalid: comma-separated numbers") from None
    return ExtendConfig(init_from=args.init_from, out=args.out, preset_budget=args.preset_budget, stages=args.stages,
                        base_length=args.base_length, data=list(args.data), rounds_per_stage=args.rounds_per_stage,
                        steps_per_round=args.steps_per_round, batch_size=args.batch_size, lr=args.lr,
                        long_docs=args.long_docs, niah_threshold=args.niah_threshold,
                        bpb_tolerance=args.bpb_tolerance, niah_depths=depths, corpus=args.corpus,
                        synthetic_size=args.synthetic_size, precision=args.precision, device=args.device,
                        activation_checkpointing=args.activation_checkpointing, seed=args.seed,
                        threads=args.threads)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        report = run_extension(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"kexaone extend: {e}", file=sys.stderr)
        return 2
    for s in report["stages"]:
        last = s["rounds"][-1]["gate"] if s["rounds"] else None
        state = "green" if s["green"] else "red"
        print(f"stage {s['stage']} ({s['length']} tokens): {state} after {len(s['rounds'])} round(s)"
              + (f", NIAH {last['niah']:.3f}, bpb {last['bpb']:.4f} (limit {last['bpb_limit']:.4f})" if last else ""))
    print(f"report: {Path(cfg.out) / 'extend_report.md'}")
    return 0


# ---------------------------------------------------------------------------------------------- the run
def _train_config(cfg: ExtendConfig, out: Path, **changes: Any) -> Any:
    from kexaone.train.config import TrainConfig

    base = dict(init_from=cfg.init_from, out=str(out), seq_len=cfg.base_length, batch_size=cfg.batch_size,
                optimizer="adamw", lr=cfg.lr, warmup_steps=max(1, cfg.steps_per_round // 10), decay_fraction=0.0,
                max_steps=cfg.steps_per_round, precision=cfg.precision, device=cfg.device, seed=cfg.seed,
                threads=cfg.threads, save_every=0, keep_checkpoints=1, eval_every=0, eval_batches=0,
                progress=cfg.progress, tensorboard=False, export=False,
                activation_checkpointing=cfg.activation_checkpointing, packing="document",
                truncate_documents=False)
    base.update(changes)
    return TrainConfig(**base)


@dataclass
class _Sources:
    rehearsal: list[tuple[Any, float]]
    reasoning: Any
    heldout: list[tuple[Any, Any]]
    split: float | int
    """The rehearsal sources' held-out split: pre-training's, so its held-out documents stay unseen."""

    def packer_heldout(self) -> list[float | int]:
        """Held-out split per source of a stage mixture (rehearsal..., reasoning, long documents)."""
        from kexaone.data.curriculum import SYNTHETIC_HELDOUT_DOCS

        return [self.split] * len(self.rehearsal) + [SYNTHETIC_HELDOUT_DOCS, 0]


def _sources(cfg: ExtendConfig, tok: Any) -> _Sources:
    """Token shards of the rehearsal sources (weights within rehearsal) and the reasoning source."""
    from kexaone.data.curriculum import SYNTHETIC_HELDOUT_DOCS
    from kexaone.data.shards import build_token_shards
    from kexaone.data.sources import parse_spec
    from kexaone.data.synthetic import write_corpus
    from kexaone.train.pretrain import HELDOUT_FRACTION
    from kexaone.train.run import cache_root

    cache = cache_root() / "tokens"
    paths = write_corpus(cache_root() / "synthetic" / cfg.synthetic_size, cfg.synthetic_size, seed=0)
    if cfg.data:  # held out as `kexaone pretrain --data` holds out
        rehearsal = [(build_token_shards(parse_spec(s).path, tok, cache), parse_spec(s).weight) for s in cfg.data]
        split: float | int = HELDOUT_FRACTION
    else:  # the synthetic corpus: the pre-training curriculum's held-out documents
        rehearsal = [(build_token_shards(str(p), tok, cache), 1.0) for d, p in paths.items() if d != "arithmetic"]
        split = SYNTHETIC_HELDOUT_DOCS
    reasoning = build_token_shards(str(paths["arithmetic"]), tok, cache)
    heldout = [(s, s.split_indices(split)[1]) for s, _ in rehearsal]
    return _Sources(rehearsal, reasoning, heldout, split)


def _corpus_root(cfg: ExtendConfig) -> Path | None:
    from kexaone.data.long_docs import check_corpus_root, default_corpus_root

    if cfg.corpus in (None, "none", ""):
        return None
    if cfg.corpus == "auto":
        return default_corpus_root()
    return check_corpus_root(Path(cfg.corpus))


def stage_mixture(cfg: ExtendConfig, stage_index: int, length: int, tok: Any, src: _Sources, out: Path
                  ) -> tuple[list[tuple[Any, float]], dict[str, Any]]:
    """(shards, weight) of one stage's mixture: rehearsal sources sharing the rehearsal weight, reasoning, and
    freshly written whole long documents of about `length` tokens; plus a description for the report."""
    from kexaone.data.long_docs import long_documents, write_jsonl
    from kexaone.data.shards import build_token_shards
    from kexaone.train.run import cache_root

    w_reh, w_rea, w_long = cfg.shares(stage_index)
    sample = src.reasoning.num_bytes / max(1, src.reasoning.num_tokens)  # bytes per token of this tokenizer
    # Aim at 85% of the row so most documents fill one row; longer ones still get a row of their own (no cut).
    target_chars = int(0.85 * length * sample)
    docs = long_documents(target_chars, cfg.long_docs, seed=cfg.seed + 1000 * stage_index,
                          corpus_root=_corpus_root(cfg))
    path = write_jsonl(out / "data" / f"long_{length}.jsonl", docs)
    long_shards = build_token_shards(str(path), tok, cache_root() / "tokens")
    total_reh = sum(w for _, w in src.rehearsal)
    mixture = [(s, w_reh * w / total_reh) for s, w in src.rehearsal]
    mixture += [(src.reasoning, w_rea), (long_shards, w_long)]
    lengths = long_shards.doc_lengths()
    info = {"shares": {"rehearsal": w_reh, "reasoning": w_rea, "long": w_long},
            "long_documents": int(long_shards.num_documents), "long_tokens_mean": float(lengths.mean()),
            "long_tokens_max": int(lengths.max()),
            "long_sources": sorted({t for t in long_shards.tags})}
    return mixture, info


def short_context_bpb(model: Any, src: _Sources, cfg: ExtendConfig, device: Any) -> float:
    """Bits per byte of the rehearsal held-out documents at the base length (kexaone.train.evaluation)."""
    import contextlib

    from kexaone.model.scoring import bits_per_byte
    from kexaone.train.evaluation import eval_set_from_shards, heldout_nats

    ev = eval_set_from_shards(src.heldout, cfg.base_length, cfg.batch_size, max_rows=cfg.preset.heldout_rows)
    if ev is None:
        raise ValueError("no held-out rehearsal documents to measure short-context bits per byte; give more --data")
    was = model.training
    model.eval()
    try:
        nats, _ = heldout_nats(model, ev.batches, device, contextlib.nullcontext)
    finally:
        model.train(was)
    return float(bits_per_byte(nats, ev.n_bytes))


def niah_grid(model: Any, tok: Any, lengths: Sequence[int], depths: Sequence[float], out_dir: Path,
              per_cell: int = 1, seed: int = 0) -> tuple[float, dict[str, float], Path | None]:
    """(grid mean, per-cell scores, heat map) of NIAH over lengths x depths through the eval harness."""
    import torch

    from kexaone.engine.engine import Engine
    from kexaone.eval.backends import LocalBackend
    from kexaone.eval.families.longctx import NIAH, make_niah_items
    from kexaone.eval.harness import EvalConfig, Task, run_eval

    model.config = model.config.replace(max_position_embeddings=max(int(model.config.max_position_embeddings),
                                                                     max(lengths)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():  # generation only (and the backend's parameter fingerprint needs no graph)
            backend = LocalBackend(Engine(model, tok), batch_size=2, seed=seed)
            ec = EvalConfig(niah_lengths=tuple(int(x) for x in lengths), niah_depths=tuple(depths),
                            max_new_tokens=12, seed=seed, chunk_size=2)
            items = make_niah_items(ec.niah_lengths, ec.niah_depths, backend.count_tokens, ec.max_new_tokens,
                                    seed=seed, per_cell=per_cell)
            task = Task("niah", NIAH(), items, options={"lengths": list(ec.niah_lengths),
                                                         "depths": list(ec.niah_depths), "per_cell": per_cell})
            res = run_eval(backend, [task], ec, out_dir, progress=False)["tasks"]["niah"]
    finally:
        model.train(was)
    heat = out_dir / res["heatmap"] if res.get("heatmap") else None
    return float(res["score"]), dict(res.get("breakdown", {})), heat


def run_extension(cfg: ExtendConfig) -> dict[str, Any]:
    """The whole extension run (see the module docstring); returns the report dict (also written to disk)."""
    from kexaone.data.docpacking import DocumentPackedBatches
    from kexaone.train.run import stage_run
    from kexaone.train.trainer import Trainer

    out = Path(cfg.out)
    if (out / "extend_report.json").exists():
        raise ValueError(f"{out} already holds an extension report; choose another --out")
    t_start = time.perf_counter()
    with stage_run(_train_config(cfg, out)) as run:
        model, tok = run.model, run.tokenizer
        src = _sources(cfg, tok)
        base_bpb = short_context_bpb(model, src, cfg, run.dist.device)
        base_lengths = cfg.niah_lengths(cfg.base_length)
        b_niah, b_grid, b_heat = niah_grid(model, tok, base_lengths, cfg.niah_depths, out / "baseline" / "niah",
                                           cfg.preset.niah_per_cell, cfg.seed)
        report: dict[str, Any] = {
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "baseline": {"length": cfg.base_length, "bpb": base_bpb, "niah": b_niah, "niah_lengths":
                         list(base_lengths), "niah_grid": b_grid, "heatmap": _rel(b_heat, out)},
            "stages": []}
        _write_report(out, report)
        for i, length in enumerate(cfg.stages):
            stage_dir = out / f"stage{i + 1}_{length}"
            mixture, info = stage_mixture(cfg, i, length, tok, src, out)
            data = DocumentPackedBatches(mixture, length, cfg.batch_size, seed=cfg.seed + i, truncate=False,
                                         heldout=src.packer_heldout())
            lengths = cfg.niah_lengths(length)
            model.config = model.config.replace(max_position_embeddings=max(length,
                                                                             model.config.max_position_embeddings))
            stage: dict[str, Any] = {"stage": i + 1, "length": length, "niah_lengths": list(lengths), **info,
                                     "rounds": [], "green": False}
            report["stages"].append(stage)
            clock = {"t": time.perf_counter()}

            def train_round(r: int, length=length, data=data, stage_dir=stage_dir) -> dict:
                clock["t"] = time.perf_counter()
                rdir = stage_dir / f"round{r}"
                tc = _train_config(cfg, rdir, seq_len=length, init_from=None)
                trainer = Trainer(model, tok, data, tc, dist=run.dist, out_dir=rdir, label="extend")
                res = trainer.fit()
                shutil.rmtree(rdir / "checkpoints", ignore_errors=True)  # the model lives on in memory
                return {"steps": res.steps, "tokens": res.tokens, "loss": res.final_loss,
                        "truncated_tokens": int(data.truncated_tokens)}

            def evaluate(r: int, lengths=lengths, stage_dir=stage_dir) -> tuple[GateResult, dict]:
                bpb = short_context_bpb(model, src, cfg, run.dist.device)
                niah, grid, heat = niah_grid(model, tok, lengths, cfg.niah_depths, stage_dir / f"round{r}" / "niah",
                                             cfg.preset.niah_per_cell, cfg.seed)
                return (gate_decision(niah, bpb, base_bpb, cfg.niah_threshold, cfg.bpb_tolerance),
                        {"grid": grid, "heatmap": heat})

            def on_round(trained: dict, gate: GateResult, extra: dict, stage=stage, length=length) -> None:
                rec = RoundRecord(stage=stage["stage"], length=length, round=len(stage["rounds"]) + 1,
                                  steps=trained["steps"], tokens=trained["tokens"], train_loss=trained["loss"],
                                  gate=gate, niah_grid=extra["grid"], heatmap=_rel(extra["heatmap"], out),
                                  seconds=time.perf_counter() - clock["t"])
                stage["rounds"].append(rec.to_dict())
                stage["truncated_tokens"] = trained["truncated_tokens"]
                _write_report(out, report)

            green, _ = run_stage_rounds(cfg.rounds_per_stage, train_round, evaluate, on_round)
            stage["green"] = green
            _write_report(out, report)
        model.config = model.config.replace(max_position_embeddings=max(cfg.stages[-1],
                                                                         model.config.max_position_embeddings))
        model_dir = out / "model"
        model.save_pretrained(model_dir)
        tok.save(model_dir)
        report["model"] = _rel(model_dir, out)
        report["seconds"] = time.perf_counter() - t_start
        _write_report(out, report)
    return report


def _rel(p: Path | None, out: Path) -> str | None:
    if p is None:
        return None
    try:
        return str(Path(p).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(p)


# ---------------------------------------------------------------------------------------------- the report
def render_report(report: dict[str, Any]) -> str:
    c, b = report["config"], report["baseline"]
    lines = ["# Context extension report (kexaone extend)", "",
             f"Starting model `{c['init_from']}`, preset budget `{c['preset_budget']}`, stages "
             f"{', '.join(str(x) for x in c['stages'])}; gate: NIAH grid mean >= {c['niah_threshold']} and "
             f"short-context bits per byte <= {1 + c['bpb_tolerance']:.3f} x the starting model's.", "",
             "## Before extension", "",
             f"Base length {b['length']}: short-context bits per byte {b['bpb']:.4f}; NIAH over lengths "
             f"{b['niah_lengths']} x depths {c['niah_depths']}: mean {b['niah']:.3f}.", ""]
    if b.get("heatmap"):
        lines += [f"![NIAH before extension]({b['heatmap']})", ""]
    for s in report["stages"]:
        sh = s["shares"]
        lines += [f"## Stage {s['stage']}: {s['length']} tokens ({'green' if s['green'] else 'not green'})", "",
                  f"Mixture: rehearsal {sh['rehearsal']:.2f}, reasoning {sh['reasoning']:.2f}, long documents "
                  f"{sh['long']:.2f} ({s['long_documents']} whole documents, mean {s['long_tokens_mean']:.0f} and "
                  f"max {s['long_tokens_max']} tokens, from {', '.join(s['long_sources'])}; truncated tokens: "
                  f"{s.get('truncated_tokens', 0)}). NIAH lengths {s['niah_lengths']}.", "",
                  "| round | steps | tokens | train loss | NIAH mean | bpb | bpb limit | NIAH ok | bpb ok | green | s |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
        for r in s["rounds"]:
            g = r["gate"]
            loss = "-" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
            lines.append(f"| {r['round']} | {r['steps']} | {r['tokens']:,} | {loss} | {g['niah']:.3f} | "
                         f"{g['bpb']:.4f} | {g['bpb_limit']:.4f} | {g['niah_ok']} | {g['bpb_ok']} | {g['green']} | "
                         f"{r['seconds']:.0f} |")
        for r in s["rounds"]:
            cells = ", ".join(f"{k}: {v:.2f}" for k, v in r["niah_grid"].items())
            lines += ["", f"Round {r['round']} NIAH cells: {cells}"]
            if r.get("heatmap"):
                lines += ["", f"![NIAH stage {s['stage']} round {r['round']}]({r['heatmap']})"]
        lines.append("")
    if report.get("model"):
        lines += [f"Model (max_position_embeddings = {c['stages'][-1]}): `{report['model']}`; "
                  f"{report.get('seconds', 0):.0f} s in all.", ""]
    return "\n".join(lines)


def _write_report(out: Path, report: dict[str, Any]) -> None:
    from kexaone.utils.io import atomic_write_text

    atomic_write_text(out / "extend_report.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out / "extend_report.md", render_report(report))
