"""`kexaone pretrain`: pre-train a K-EXAONE model from a preset, and `run_pretraining(train_cfg)`, the same run as
a Python call (what the speedrun uses).

A run: check the output directory is writable, join torch.distributed when launched by torchrun, load the tokenizer
(or build the default one from the embedded synthetic corpus, cached), size the model's vocabulary from it, build
the packed training data (the user's `--data` mixture, or the synthetic three-stage curriculum) and a held-out
evaluation set, train with `kexaone.train.trainer.Trainer`, then (rank 0) export the model and tokenizer in the
Hugging Face layout to `<out>/model` and draw the loss curve.

Exit codes of the command: 0 finished; 130 interrupted by SIGINT/SIGTERM after saving a checkpoint (continue with
`--resume`); 1 training diverged (too many non-finite steps; the last good checkpoint is intact); 2 bad input.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexaone.train.config import (DECAY_SHAPES, DEVICES, FP8_FORMATS, OPTIMIZERS, PARALLEL, PRECISIONS, SYNTHETIC_SIZES,
                                  TrainConfig)

HELP = "Pre-train a K-EXAONE model (Muon + WSD, MTP, MoE balancing, bf16/fp8, exact resume, torchrun-ready)."

EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 1


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every default is None so that a --config file's values survive unless a flag is actually given; the real
    # defaults live in TrainConfig.
    g = parser.add_argument_group("model and data")
    g.add_argument("--preset", help="model preset: tiny, small or k-exaone-236b-a23b (default tiny)")
    g.add_argument("--data", action="append", metavar="PATH[@WEIGHT]",
                   help="training source (txt/jsonl/parquet/HF datasets dir/glob), repeatable; default: the "
                        "embedded synthetic curriculum")
    g.add_argument("--synthetic-size", choices=SYNTHETIC_SIZES,
                   help="size of the embedded synthetic corpus (default 'default')")
    g.add_argument("--mix-synthetic", action="store_true", default=None,
                   help="with --data: train on the synthetic curriculum with your data joining every stage")
    g.add_argument("--eval-data", action="append", metavar="PATH", help="held-out source(s) for evaluation")
    g.add_argument("--tokenizer", help="tokenizer directory (default: a SuperBPE tokenizer trained on the "
                                       "synthetic corpus, cached)")
    g.add_argument("--tokenizer-vocab-size", type=int, help="vocabulary of the default tokenizer (default: preset)")
    g.add_argument("--workers", type=int, help="tokenization workers (0 = one per core)")
    g.add_argument("--config", metavar="FILE", help="JSON or TOML file of TrainConfig fields; flags override it")
    g = parser.add_argument_group("run length and batch")
    g.add_argument("--out", help="output directory (default runs/pretrain)")
    g.add_argument("--max-steps", type=int, help="optimizer steps (default 100 unless --tokens)")
    g.add_argument("--tokens", type=int, help="token budget (used when --max-steps is not given)")
    g.add_argument("--seq-len", type=int, help="tokens per row (default 256)")
    g.add_argument("--batch-size", type=int, help="rows per micro-batch per rank (default 8)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="peak learning rate (default 3e-4)")
    g.add_argument("--adamw-lr", type=float,
                   help="peak LR of Muon's AdamW groups: embeddings, output head, router, norms (default --lr)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="muon (default) or adamw")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--decay-fraction", type=float)
    g.add_argument("--decay-shape", choices=DECAY_SHAPES)
    g.add_argument("--min-lr-ratio", type=float, help="final LR as a fraction of --lr (default 0)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="AdamW betas (default 0.9 0.95)")
    g.add_argument("--momentum", type=float, help="Muon Nesterov momentum (default 0.95)")
    g.add_argument("--grad-clip", type=float, help="max gradient norm (0 disables; default 1.0)")
    g.add_argument("--aux-loss-coef", type=float, help="sequence aux-loss weight (default 1e-4)")
    g.add_argument("--mtp-loss-weight", type=float, help="MTP loss weight (default 0.05)")
    g.add_argument("--bias-update-rate", type=float, help="expert-bias update factor (default 1e-4; 0 disables)")
    g = parser.add_argument_group("precision, devices, bookkeeping")
    g.add_argument("--precision", choices=PRECISIONS, help="fp32, bf16 (default) or fp8")
    g.add_argument("--fp8-format", choices=FP8_FORMATS, help="FP8 format of the forward pass (default e4m3)")
    g.add_argument("--device", choices=DEVICES)
    g.add_argument("--parallel", choices=PARALLEL, help="data parallelism under torchrun: ddp (default) or fsdp")
    g.add_argument("--expert-parallel", action="store_true", default=None,
                   help="shard the routed experts over the torchrun ranks (with --parallel ddp, world size > 1)")
    g.add_argument("--threads", type=int, help="CPU threads for torch per process (0 = auto)")
    g.add_argument("--activation-checkpointing", action="store_true", default=None,
                   help="recompute decoder layers in backward to save memory")
    g.add_argument("--peak-flops", type=float, help="peak FLOP/s per rank for MFU (default: measured)")
    g.add_argument("--seed", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--eval-every", type=int, help="evaluate every N steps (0: only at the end)")
    g.add_argument("--eval-batches", type=int, help="held-out micro-batches per evaluation (default 8; 0 = none)")
    g.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end / on interrupt)")
    g.add_argument("--keep-checkpoints", type=int)
    g.add_argument("--max-bad-steps", type=int, help="stop after N consecutive non-finite steps (default 5)")
    g.add_argument("--resume", action="store_true", default=None, help="continue from <out>/checkpoints")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    g.add_argument("--no-export", dest="export", action="store_false", default=None)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from --config (if any) with every flag that was given laid over it."""
    from kexaone.train.config import load_config_file

    base: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    names = set(TrainConfig.field_names())
    for key, value in vars(args).items():
        if key in names and value is not None:
            base[key] = value
    return TrainConfig.from_dict(base, source=getattr(args, "config", None) or "command line")


def run(args: argparse.Namespace) -> int:
    from kexaone.train.trainer import TrainingDiverged

    cfg = config_from_args(args)
    try:
        result = run_pretraining(cfg)
    except TrainingDiverged as e:
        print(f"kexaone pretrain: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    if result.rank == 0:
        if result.interrupted:
            print(f"interrupted ({result.signal_name}) at step {result.steps}; checkpoint saved in "
                  f"{result.checkpoint_dir}. Continue with --resume.", file=sys.stderr)
        else:
            line = f"done: {result.steps} steps, {result.tokens:,} tokens"
            if result.final_loss is not None:
                line += f", final loss {result.final_loss:.4f}"
            if result.eval_loss is not None:
                line += f", held-out loss {result.eval_loss:.4f} ({result.eval_bpb:.3f} bits/byte)"
            print(line)
            if result.model_dir is not None:
                print(f"model: {result.model_dir}")
            print(f"metrics: {result.metrics_path}")
    return EXIT_INTERRUPTED if result.interrupted else 0


# ---------------------------------------------------------------------------------------------- Python API
@dataclass
class PretrainResult:
    out_dir: Path
    model_dir: Path | None
    """<out>/model (HF layout + tokenizer); None when interrupted, export disabled, or not rank 0."""
    metrics_path: Path
    checkpoint_dir: Path
    tokenizer_dir: Path
    loss_plot: Path | None
    steps: int
    tokens: int
    final_loss: float | None
    eval_loss: float | None
    eval_bpb: float | None
    interrupted: bool
    signal_name: str | None
    skipped_steps: int
    world_size: int
    rank: int


def check_output_dir(out: Path) -> None:
    """Fail before any work when the output directory cannot be created or written."""
    from kexaone.utils.io import ensure_writable_dir

    ensure_writable_dir(out, "output directory")


def cache_root() -> Path:
    """Where derived artefacts shared between runs are cached (env KEXAONE_CACHE, default ~/.cache/kexaone)."""
    return Path(os.environ.get("KEXAONE_CACHE") or Path.home() / ".cache" / "kexaone")


def default_tokenizer(vocab_size: int, size: str = "default", workers: int = 0) -> Any:
    """The SuperBPE tokenizer trained on (a fair sample of) the embedded synthetic corpus of `size`, cached by
    (vocab size, corpus fingerprint). Concurrent builders are safe: each writes a private directory and renames
    it into place."""
    from kexaone.data.synthetic import tokenizer_corpus
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.superbpe import train_superbpe

    texts = list(tokenizer_corpus(size))
    h = hashlib.sha256(f"v1|{vocab_size}|{size}|".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    target = cache_root() / "tokenizers" / f"synthetic-{size}-{vocab_size}-{h.hexdigest()[:16]}"
    if (target / "tokenizer.json").is_file():
        return KExaoneTokenizer.from_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = train_superbpe(iter(texts), vocab_size, workers=workers or None, show_progress=False)
        tok.save(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race: use its (identical) result
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return KExaoneTokenizer.from_dir(target)


def load_tokenizer(cfg: TrainConfig, out: Path, preset_vocab: int, is_main: bool, barrier: Callable[[], None]):
    """The run's tokenizer: --tokenizer, else the copy saved in <out>/tokenizer by an earlier run of this output
    directory (so a resumed run tokenizes identically), else the cached default. Rank 0 builds, others wait."""
    from kexaone.tokenizer import KExaoneTokenizer

    saved = out / "tokenizer"
    if cfg.tokenizer is not None:
        path = Path(cfg.tokenizer)
        if not path.exists():
            raise FileNotFoundError(f"--tokenizer {path} does not exist")
        tok = KExaoneTokenizer.from_dir(path)
    elif (saved / "tokenizer.json").is_file():
        tok = KExaoneTokenizer.from_dir(saved)
    else:
        vocab = cfg.tokenizer_vocab_size or preset_vocab
        if is_main:
            default_tokenizer(vocab, cfg.synthetic_size, cfg.workers)
        barrier()
        tok = default_tokenizer(vocab, cfg.synthetic_size, cfg.workers)
    if is_main and not (saved / "tokenizer.json").is_file():
        saved.mkdir(parents=True, exist_ok=True)
        tok.save(saved)
    barrier()
    return tok


def build_model_config(cfg: TrainConfig, tokenizer: Any):
    """Preset + overrides, with the vocabulary and special ids of the tokenizer and the run's loss coefficients."""
    from kexaone.config import KExaoneConfig

    mc = KExaoneConfig.preset(cfg.preset)
    changes: dict[str, Any] = dict(cfg.model_overrides)
    changes.update(vocab_size=int(tokenizer.vocab_size), pad_token_id=tokenizer.pad_id,
                   eos_token_id=tokenizer.eos_id, bos_token_id=None)
    for name in ("aux_loss_coef", "mtp_loss_weight", "bias_update_rate"):
        if getattr(cfg, name) is not None:
            changes[name] = getattr(cfg, name)
    unknown = sorted(set(cfg.model_overrides) - set(KExaoneConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"model_overrides has unknown KExaoneConfig field(s) {unknown}")
    return mc.replace(**changes)


def run_pretraining(train_cfg: TrainConfig, callbacks: Sequence[Callable[..., Any]] = ()) -> PretrainResult:
    """Run (or resume) one pre-training run end to end; see the module docstring. Under torchrun every rank calls
    this; rank 0 writes. Raises TrainingDiverged when the loss keeps being non-finite."""
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.distributed import barrier, destroy_distributed, init_distributed, seed_all
    from kexaone.train.metrics import plot_loss_curve
    from kexaone.train.trainer import Trainer

    cfg = train_cfg
    out = Path(cfg.out)
    check_output_dir(out)
    if cfg.resume and not any((out / "checkpoints").glob("*")):
        raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    if not cfg.resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ValueError(f"{out / 'checkpoints'} already holds checkpoints; pass --resume to continue that run, "
                         "or choose another --out")
    for spec in cfg.data + cfg.eval_data:
        _check_source_exists(spec)
    dist = init_distributed(cfg.device)
    set_threads(cfg, dist)
    try:
        from kexaone.config import KExaoneConfig

        preset_vocab = KExaoneConfig.preset(cfg.preset).vocab_size
        tok = load_tokenizer(cfg, out, preset_vocab, dist.is_main, lambda: barrier(dist))
        model_config = build_model_config(cfg, tok)
        seed_all(cfg.seed)
        model = KExaoneForCausalLM(model_config)
        model.gradient_checkpointing = cfg.activation_checkpointing
        data, heldout = build_train_data(cfg, tok, dist)
        eval_set = build_eval_data(cfg, tok, heldout, dist)
        trainer = Trainer(model, tok, data, cfg, eval_set=eval_set, dist=dist, out_dir=out, callbacks=callbacks)
        res = trainer.fit()
        model_dir = plot = None
        if not res.interrupted:
            if cfg.export:  # collective under FSDP: every rank takes part in gathering the weights
                model_dir = export_model(trainer, out / "model", tok)
            if dist.is_main:
                plot = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png",
                                       title=f"kexaone pretrain ({cfg.preset}, {cfg.optimizer}, {cfg.precision})")
        barrier(dist)
        return PretrainResult(out_dir=out, model_dir=model_dir, metrics_path=out / "metrics.jsonl",
                              checkpoint_dir=out / "checkpoints", tokenizer_dir=out / "tokenizer", loss_plot=plot,
                              steps=res.steps, tokens=res.tokens, final_loss=res.final_loss,
                              eval_loss=res.eval_loss, eval_bpb=res.eval_bpb, interrupted=res.interrupted,
                              signal_name=res.signal_name, skipped_steps=res.skipped_steps,
                              world_size=dist.world_size, rank=dist.rank)
    finally:
        destroy_distributed(dist)


def set_threads(cfg: TrainConfig, dist: Any) -> int:
    """CPU threads for torch: --threads when given; otherwise torch's default, at most the usable cores per rank,
    except on a machine whose cores are all busy right now (kexaone.utils.cpu), where extra OpenMP threads only
    spin against each other (measured 10-100x slower per small matmul): then 1 per process. A resumed run takes
    the checkpoint's count instead (see Trainer.load_state_dict)."""
    import torch

    from kexaone.utils.cpu import busy_cores, usable_cores

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif dist.device.type == "cpu":
        cores = usable_cores()
        per_rank = max(1, cores // dist.world_size)
        busy = busy_cores() >= cores - 0.5
        if busy or torch.get_num_threads() > per_rank:
            torch.set_num_threads(1 if busy else per_rank)
    return torch.get_num_threads()


def export_model(trainer: Any, model_dir: Path, tokenizer: Any) -> Path | None:
    """Save the trained (fp32 master) weights in the HF layout plus the tokenizer to `model_dir` (rank 0; returns
    None on the other ranks). Call on every rank: under FSDP the sharded weights are first gathered; under FP8
    the state dict is that of plain linears (FP8 only changes how the matmuls run)."""
    from kexaone.model.transformer import KExaoneForCausalLM

    model = trainer.raw_model
    if trainer.dist.distributed and trainer.cfg.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not trainer.dist.is_main:
            return None
        model = KExaoneForCausalLM.from_config(model.config, device="meta")
        model.load_state_dict(full, assign=True)
    elif trainer.dist.distributed and getattr(trainer, "expert_parallel", False):
        from kexaone.train.expert_parallel import gather_expert_state_dict

        full = gather_expert_state_dict(model, model.state_dict())  # collective: all experts on every rank
        if not trainer.dist.is_main:
            return None
        model = KExaoneForCausalLM.from_config(model.config, device="meta")
        model.load_state_dict(full, assign=True)
    elif not trainer.dist.is_main:
        return None
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(model_dir)
    tokenizer.save(model_dir)
    return model_dir


def _check_source_exists(spec: str) -> None:
    from kexaone.data.sources import parse_spec, resolve_files

    path = parse_spec(spec).path
    if not path.startswith("hf:"):  # hub datasets are checked when they are opened
        resolve_files(path)  # raises FileNotFoundError naming the path


# ---------------------------------------------------------------------------------------------- data
HELDOUT_FRACTION = 0.01
"""Documents of the training sources held out for evaluation (by content hash; the same split every run)."""


def _tokenize_sources(specs: Sequence[str], tok: Any, workers: int, is_main: bool,
                      barrier: Callable[[], None]) -> list[tuple[Any, float]]:
    """(TokenShards, weight) per `path[@weight]` spec, cached under cache_root()/tokens. Rank 0 tokenizes first;
    the other ranks then hit the cache."""
    from kexaone.data.shards import build_token_shards
    from kexaone.data.sources import parse_spec

    cache = cache_root() / "tokens"

    def build() -> list[tuple[Any, float]]:
        return [(build_token_shards(parse_spec(s).path, tok, cache, num_workers=workers or None),
                 parse_spec(s).weight) for s in specs]

    out = build() if is_main else []
    barrier()
    return out if is_main else build()


def build_train_data(cfg: TrainConfig, tok: Any, dist: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """(training batches, held-out (TokenShards, document indices) pairs). The loader's batch is the GLOBAL batch
    (batch_size x world size rows per micro-batch); each rank receives its own rows."""
    from kexaone.data.packing import PackedBatches
    from kexaone.train.distributed import barrier

    global_rows = cfg.batch_size * dist.world_size
    if cfg.data and not cfg.mix_synthetic:
        sources = _tokenize_sources(cfg.data, tok, cfg.workers, dist.is_main, lambda: barrier(dist))
        _check_vocab([s for s, _ in sources], tok)
        data = PackedBatches(sources, cfg.seq_len, global_rows, seed=cfg.seed, rank=dist.rank,
                             world_size=dist.world_size, heldout=HELDOUT_FRACTION)
        heldout = [(s, s.split_indices(HELDOUT_FRACTION)[1]) for s, _ in sources]
        return data, heldout
    return _synthetic_curriculum(cfg, tok, dist, global_rows)


def build_eval_data(cfg: TrainConfig, tok: Any, heldout: list[tuple[Any, Any]], dist: Any) -> Any:
    """The EvalSet: --eval-data sources (every document), else the held-out split of the training data."""
    import warnings

    from kexaone.train.distributed import barrier
    from kexaone.train.trainer import eval_set_from_shards

    if cfg.eval_data:
        sources = _tokenize_sources(cfg.eval_data, tok, cfg.workers, dist.is_main, lambda: barrier(dist))
        _check_vocab([s for s, _ in sources], tok)
        import numpy as np

        heldout = [(s, np.arange(s.num_documents)) for s, _ in sources]
    if cfg.eval_batches == 0:
        return None
    # eval_batches micro-batches per rank: the same rows whatever the world size (batches are sharded over ranks).
    ev = eval_set_from_shards(heldout, cfg.seq_len, cfg.batch_size,
                              max_rows=cfg.eval_batches * cfg.batch_size * dist.world_size)
    if ev is None and dist.is_main:
        warnings.warn("no held-out documents to evaluate on (the data is too small for a held-out split); "
                      "pass --eval-data to evaluate", stacklevel=2)
    return ev


def _check_vocab(shards: Sequence[Any], tok: Any) -> None:
    for s in shards:
        if s.vocab_size > tok.vocab_size:
            raise ValueError(f"token cache {s.path} was built for a vocabulary of {s.vocab_size} ids but the "
                             f"tokenizer has {tok.vocab_size}")


def _synthetic_curriculum(cfg: TrainConfig, tok: Any, dist: Any, global_rows: int) -> tuple[Any, list]:
    """The default data: the embedded synthetic corpus in K-EXAONE's three stages (foundational knowledge, domain
    expertise, reasoning) sized to the run's token budget, plus its held-out documents. Rank 0 writes and
    tokenizes the corpus (cached under cache_root()); the other ranks then read the cache."""
    from kexaone.data.curriculum import synthetic_training_data
    from kexaone.train.distributed import barrier

    total_tokens = cfg.total_steps(dist.world_size) * cfg.tokens_per_step(dist.world_size)

    def build() -> tuple[Any, list]:
        return synthetic_training_data(
            tok, cache_root() / "synthetic" / cfg.synthetic_size, cache_root() / "tokens", total_tokens,
            cfg.seq_len, global_rows, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
            size=cfg.synthetic_size, extra=tuple(cfg.data), num_workers=cfg.workers or None)

    out = build() if dist.is_main else None
    barrier(dist)
    return out if dist.is_main else build()
