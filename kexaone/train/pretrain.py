"""`kexaone pretrain`: pre-train a K-EXAONE model from a preset (or `--init-from` a checkpoint), and
`run_pretraining(train_cfg)`, the same run as a Python call (what the speedrun uses).

A thin stage over the shared scaffold (`kexaone.train.run`: checks, torch.distributed, threads, tokenizer, model,
export, result record): it builds the packed training data (the user's `--data` mixture, or the synthetic
three-stage curriculum) and a held-out evaluation set, and trains with `PretrainObjective` (CE + w x MTP + c x aux).
The flags are derived from TrainConfig's fields (`kexaone.train.cli_fields`).

Exit codes of the command: 0 finished; 130 interrupted by SIGINT/SIGTERM after saving a checkpoint (continue with
`--resume`); 1 training diverged (too many non-finite steps; the last good checkpoint is intact); 2 bad input.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from kexaone.train.config import TRAIN_SECTIONS, TrainConfig
from kexaone.train.run import StageResult, cache_root

HELP = "Pre-train a K-EXAONE model (Muon + WSD, MTP, MoE balancing, bf16/fp8, exact resume, torchrun-ready)."

PretrainResult = StageResult
"""The result of run_pretraining (the scaffold's StageResult)."""


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kexaone.train.cli_fields import add_config_arguments

    parser.add_argument("--config", metavar="FILE",
                        help="JSON or TOML file of TrainConfig fields (flat or one table per section); flags "
                             "override it")
    add_config_arguments(parser, TRAIN_SECTIONS, config_cls=TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from --config (if any) with every flag that was given laid over it."""
    from kexaone.train import cli_fields

    return cli_fields.config_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from kexaone.train.run import run_stage_command

    return run_stage_command("pretrain", TrainConfig, args, run_pretraining)


# ---------------------------------------------------------------------------------------------- Python API
def run_pretraining(train_cfg: TrainConfig, callbacks: Sequence[Callable[..., Any]] = ()) -> StageResult:
    """Run (or resume) one pre-training run end to end; see the module docstring. Under torchrun every rank calls
    this; rank 0 writes. Raises TrainingDiverged when the loss keeps being non-finite."""
    from kexaone.train.run import finish_stage, stage_run
    from kexaone.train.trainer import Trainer

    cfg = train_cfg
    with stage_run(cfg) as run:
        data, heldout = build_train_data(cfg, run.tokenizer, run.dist)
        eval_set = build_eval_data(cfg, run.tokenizer, heldout, run.dist)
        trainer = Trainer(run.model, run.tokenizer, data, cfg, eval_set=eval_set, dist=run.dist, out_dir=run.out,
                          callbacks=callbacks, label="pretrain")
        return finish_stage(run, trainer, trainer.fit(), stage="pretrain")


# ---------------------------------------------------------------------------------------------- data
HELDOUT_FRACTION = 0.01
"""Documents of the training sources held out for evaluation (by content hash; the same split every run)."""


def tokenize_sources(specs: Sequence[str], tok: Any, workers: int, is_main: bool,
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
    from kexaone.data.docpacking import DocumentPackedBatches
    from kexaone.data.packing import PackedBatches
    from kexaone.train.distributed import barrier

    global_rows = cfg.batch_size * dist.world_size
    if cfg.data and not cfg.mix_synthetic:
        if cfg.copy_warmup_steps:
            raise ValueError("--copy-warmup-steps trains on the synthetic corpus's retrieval documents: it needs the "
                             "synthetic curriculum (no --data, or --data with --mix-synthetic)")
        sources = tokenize_sources(cfg.data, tok, cfg.workers, dist.is_main, lambda: barrier(dist))
        _check_vocab([s for s, _ in sources], tok)
        packer, extra = PackedBatches, {}
        if cfg.packing == "document":
            packer, extra = DocumentPackedBatches, {"truncate": cfg.truncate_documents}
        data = packer(sources, cfg.seq_len, global_rows, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
                      heldout=HELDOUT_FRACTION, **extra)
        heldout = [(s, s.split_indices(HELDOUT_FRACTION)[1]) for s, _ in sources]
        return data, heldout
    return _synthetic_curriculum(cfg, tok, dist, global_rows)


def build_eval_data(cfg: TrainConfig, tok: Any, heldout: list[tuple[Any, Any]], dist: Any) -> Any:
    """The EvalSet: --eval-data sources (every document), else the held-out split of the training data."""
    import warnings

    from kexaone.train.distributed import barrier
    from kexaone.train.evaluation import eval_set_from_shards

    if cfg.eval_data:
        sources = tokenize_sources(cfg.eval_data, tok, cfg.workers, dist.is_main, lambda: barrier(dist))
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

    if cfg.packing != "stream":
        raise ValueError(f"--packing {cfg.packing} needs your own --data (without --mix-synthetic): the synthetic "
                         "curriculum packs token streams")

    steps, warmup = cfg.total_steps(dist.world_size), cfg.copy_warmup_steps
    if warmup >= steps:
        raise ValueError(f"--copy-warmup-steps {warmup} must be below the run's {steps} steps")
    per_step = cfg.tokens_per_step(dist.world_size)

    def build() -> tuple[Any, list]:
        return synthetic_training_data(
            tok, cache_root() / "synthetic" / cfg.synthetic_size, cache_root() / "tokens", (steps - warmup) * per_step,
            cfg.seq_len, global_rows, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size,
            size=cfg.synthetic_size, extra=tuple(cfg.data), num_workers=cfg.workers or None,
            copy_warmup_tokens=warmup * per_step)

    out = build() if dist.is_main else None
    barrier(dist)
    return out if dist.is_main else build()
