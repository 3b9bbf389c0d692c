"""The run scaffold every training stage shares, so a stage module only builds its data and objective.

    with stage_run(cfg) as run:          # checks, torch.distributed, threads, tokenizer, model (seeded)
        data, eval_set = <the stage's data>(cfg, run.tokenizer, run.dist)
        trainer = Trainer(run.model, run.tokenizer, data, cfg, objective=<the stage's>, eval_set=eval_set,
                          dist=run.dist, out_dir=run.out)
        return finish_stage(run, trainer, trainer.fit(), stage="sft")   # export, loss plot, result.json

`cfg` is any stage config made of the sections of `kexaone.train.config` (it needs at least ModelSection,
DataSection, ParallelSection, CheckpointSection), e.g.

    @dataclass
    class SFTConfig(SFTSection, ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection,
                    CheckpointSection, StageConfig): ...      # SFTSection may redeclare `out: str = "runs/sft"`

with flags from `kexaone.train.cli_fields.add_config_arguments(parser, sections, config_cls=SFTConfig)` and
`config_from_args(SFTConfig, args)`. What `stage_run` does, in order:
- output checks: `<out>` creatable and writable; `--resume` needs a checkpoint, and an existing checkpoint needs
  `--resume`; every `--data` / `--eval-data` path exists (all before any work);
- joins torch.distributed when launched by torchrun, picks the torch thread count (`set_threads`);
- the tokenizer: `--tokenizer`, else the `--init-from` checkpoint's, else the copy in `<out>/tokenizer` (a
  resumed run tokenizes identically), else the cached default SuperBPE tokenizer (rank 0 builds, others wait);
  saved to `<out>/tokenizer`;
- the model: `KExaoneForCausalLM.from_pretrained(--init-from)` (any HF-layout `exaone_moe` checkpoint), else the
  preset + model_overrides sized to the tokenizer, initialised after `seed_all(cfg.seed)`.
`finish_stage` exports `<out>/model` (HF layout + tokenizer, collective under FSDP / expert parallelism), draws
`<out>/loss_curve.png` and writes `<out>/result.json` (rank 0), then returns a `StageResult`.

Not here: data, objectives, the loop (kexaone.train.trainer), stage-specific flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 1


@dataclass
class RunContext:
    """What a stage builds on: its config, output directory, process group, tokenizer and (seeded) model."""

    cfg: Any
    out: Path
    dist: Any
    tokenizer: Any
    model: Any

    def barrier(self) -> None:
        from kexaone.train.distributed import barrier

        barrier(self.dist)


@dataclass
class StageResult:
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
    """None when not evaluated or when the held-out set has no byte counts (SFT)."""
    interrupted: bool
    signal_name: str | None
    skipped_steps: int
    world_size: int
    rank: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------- checks
def check_output_dir(out: Path) -> None:
    """Fail before any work when the output directory cannot be created or written."""
    from kexaone.utils.io import ensure_writable_dir

    ensure_writable_dir(out, "output directory")


def check_run_inputs(cfg: Any, out: Path) -> None:
    """Output directory, resume state, data sources and --init-from, checked before any work."""
    from kexaone.data.sources import parse_spec, resolve_files

    check_output_dir(out)
    ckpts = out / "checkpoints"
    if cfg.resume and not any(ckpts.glob("*")):
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpts}")
    if not cfg.resume and ckpts.is_dir() and any(ckpts.iterdir()):
        raise ValueError(f"{ckpts} already holds checkpoints; pass --resume to continue that run, or choose "
                         "another --out")
    for spec in list(getattr(cfg, "data", [])) + list(getattr(cfg, "eval_data", [])):
        path = parse_spec(spec).path
        if not path.startswith("hf:"):  # hub datasets are checked when they are opened
            resolve_files(path)  # raises FileNotFoundError naming the path
    if cfg.init_from is not None and not (Path(cfg.init_from) / "config.json").is_file():
        raise FileNotFoundError(f"--init-from {cfg.init_from}: not a checkpoint directory (no config.json)")


def set_threads(cfg: Any, dist: Any) -> int:
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


# ---------------------------------------------------------------------------------------------- tokenizer
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


def load_tokenizer(cfg: Any, out: Path, preset_vocab: int, is_main: bool, barrier: Callable[[], None]) -> Any:
    """The run's tokenizer (see the module docstring for the order), saved to <out>/tokenizer by rank 0."""
    from kexaone.tokenizer import KExaoneTokenizer

    saved = out / "tokenizer"
    init = Path(cfg.init_from) if cfg.init_from else None
    if cfg.tokenizer is not None:
        path = Path(cfg.tokenizer)
        if not path.exists():
            raise FileNotFoundError(f"--tokenizer {path} does not exist")
        tok = KExaoneTokenizer.from_dir(path)
    elif init is not None and (init / "tokenizer.json").is_file():
        tok = KExaoneTokenizer.from_dir(init)
    elif (saved / "tokenizer.json").is_file():
        tok = KExaoneTokenizer.from_dir(saved)
    else:
        vocab = cfg.tokenizer_vocab_size or preset_vocab
        size = getattr(cfg, "synthetic_size", "default")
        if is_main:
            default_tokenizer(vocab, size, cfg.workers)
        barrier()
        tok = default_tokenizer(vocab, size, cfg.workers)
    if is_main and not (saved / "tokenizer.json").is_file():
        saved.mkdir(parents=True, exist_ok=True)
        tok.save(saved)
    barrier()
    return tok


# ---------------------------------------------------------------------------------------------- model
def loss_weight_overrides(cfg: Any) -> dict[str, float]:
    """The loss weights a run sets (ObjectiveSection fields that are not None): written into the model config, so
    the model config is the one place a run's weights live (objectives read it through resolve_weights)."""
    names = ("aux_loss_coef", "mtp_loss_weight", "bias_update_rate")
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n, None) is not None}


def build_model_config(cfg: Any, tokenizer: Any) -> Any:
    """Preset + overrides, with the vocabulary and special ids of the tokenizer and the run's loss coefficients
    (kept in the model config so the export records what the run trained with)."""
    from kexaone.config import KExaoneConfig

    mc = KExaoneConfig.preset(cfg.preset)
    changes: dict[str, Any] = dict(cfg.model_overrides)
    changes.update(vocab_size=int(tokenizer.vocab_size), pad_token_id=tokenizer.pad_id,
                   eos_token_id=tokenizer.eos_id, bos_token_id=None, **loss_weight_overrides(cfg))
    unknown = sorted(set(cfg.model_overrides) - set(KExaoneConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"model_overrides has unknown KExaoneConfig field(s) {unknown}")
    return mc.replace(**changes)


def build_model(cfg: Any, tokenizer: Any, dist: Any = None) -> Any:
    """The stage's starting model: the --init-from checkpoint, or a fresh preset model (seeded by cfg.seed).

    Under torchrun (`dist.distributed`) the model is built on the meta device and holds no memory: the Trainer
    (kexaone.train.parallelize) allocates each rank's shards and fills them, from the seed (identical to this
    function's single-process initialisation) or streamed from --init-from."""
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.distributed import seed_all

    seed_all(cfg.seed)
    if dist is not None and dist.distributed:
        from kexaone.config import KExaoneConfig

        if cfg.init_from is not None:
            from kexaone.model.hf import read_weight_map

            mc = KExaoneConfig.from_json_file(Path(cfg.init_from) / "config.json")
            if mc.num_nextn_predict_layers and not any(k.startswith("mtp.") for k in read_weight_map(cfg.init_from)):
                import warnings

                # as KExaoneForCausalLM.from_pretrained does: a checkpoint saved by transformers drops mtp.*
                warnings.warn(f"{cfg.init_from} holds no mtp.* weights: loading with MTP disabled", stacklevel=2)
                mc = mc.replace(num_nextn_predict_layers=0)
            if tokenizer.vocab_size > mc.vocab_size:
                raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the --init-from checkpoint "
                                 f"{cfg.init_from} only {mc.vocab_size}; use the checkpoint's tokenizer")
            mc = mc.replace(**loss_weight_overrides(cfg))
        else:
            mc = build_model_config(cfg, tokenizer)
        model = KExaoneForCausalLM.from_config(mc, device="meta")
    elif cfg.init_from is not None:
        model = KExaoneForCausalLM.from_pretrained(cfg.init_from)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the --init-from checkpoint "
                             f"{cfg.init_from} only {model.config.vocab_size}; use the checkpoint's tokenizer")
        model.config = model.config.replace(**loss_weight_overrides(cfg))
    else:
        model = KExaoneForCausalLM(build_model_config(cfg, tokenizer))
    model.gradient_checkpointing = cfg.activation_checkpointing
    return model


@contextmanager
def stage_run(cfg: Any) -> Iterator[RunContext]:
    """Checks, distributed init, threads, tokenizer and model of one stage run (see the module docstring); the
    process group is destroyed on exit."""
    from kexaone.config import KExaoneConfig
    from kexaone.train.distributed import barrier, destroy_distributed, init_distributed

    out = Path(cfg.out)
    check_run_inputs(cfg, out)
    dist = init_distributed(cfg.device)
    set_threads(cfg, dist)
    clean = False
    try:
        preset_vocab = KExaoneConfig.preset(cfg.preset).vocab_size
        tok = load_tokenizer(cfg, out, preset_vocab, dist.is_main, lambda: barrier(dist))
        yield RunContext(cfg=cfg, out=out, dist=dist, tokenizer=tok, model=build_model(cfg, tok, dist))
        clean = True
    finally:
        # A run that did its work meets its peers at a barrier before the group goes (see shutdown_process_group).
        destroy_distributed(dist, clean=clean)


# ---------------------------------------------------------------------------------------------- the end
def export_model(trainer: Any, model_dir: Path, tokenizer: Any) -> Path | None:
    """Save the trained (fp32 master) weights in the HF layout plus the tokenizer to `model_dir` (rank 0; returns
    None on the other ranks). Call on every rank: sharded weights are gathered one parameter at a time and written
    shard by shard (kexaone.train.parallelize); under FP8 the state dict is that of plain linears."""
    if trainer.parallel.export_hf(model_dir) is None:
        return None
    tokenizer.save(model_dir)
    return model_dir


def finish_stage(run: RunContext, trainer: Any, res: Any, stage: str) -> StageResult:
    """Export, loss plot and result record of a finished (or interrupted) run; every rank calls it."""
    from kexaone.train.metrics import plot_loss_curve
    from kexaone.utils.io import atomic_write_text

    cfg, out = run.cfg, run.out
    model_dir = plot = None
    if not res.interrupted:
        if cfg.export:  # collective under FSDP: every rank takes part in gathering the weights
            model_dir = export_model(trainer, out / "model", run.tokenizer)
        if run.dist.is_main:
            plot = plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png",
                                   title=f"kexaone {stage} ({cfg.preset}, {cfg.optimizer}, {cfg.precision})")
    run.barrier()
    result = StageResult(out_dir=out, model_dir=model_dir, metrics_path=out / "metrics.jsonl",
                         checkpoint_dir=out / "checkpoints", tokenizer_dir=out / "tokenizer", loss_plot=plot,
                         steps=res.steps, tokens=res.tokens, final_loss=res.final_loss, eval_loss=res.eval_loss,
                         eval_bpb=res.eval_bpb, interrupted=res.interrupted, signal_name=res.signal_name,
                         skipped_steps=res.skipped_steps, world_size=run.dist.world_size, rank=run.dist.rank)
    if run.dist.is_main:
        atomic_write_text(out / "result.json", json.dumps({"stage": stage, **result.to_dict(),
                                                           "objective": trainer.objective.describe()}, indent=1))
    return result


def report(result: StageResult) -> int:
    """The exit code and closing lines of a stage command (rank 0 prints): 0 done, 130 interrupted."""
    import sys

    if result.rank == 0:
        if result.interrupted:
            print(f"interrupted ({result.signal_name}) at step {result.steps}; checkpoint saved in "
                  f"{result.checkpoint_dir}. Continue with --resume.", file=sys.stderr)
        else:
            line = f"done: {result.steps} steps, {result.tokens:,} tokens"
            if result.final_loss is not None:
                line += f", final loss {result.final_loss:.4f}"
            if result.eval_loss is not None:
                line += f", held-out loss {result.eval_loss:.4f}"
                if result.eval_bpb is not None:  # None where the held-out set has no byte counts (SFT)
                    line += f" ({result.eval_bpb:.3f} bits/byte)"
            print(line)
            if result.model_dir is not None:
                print(f"model: {result.model_dir}")
            print(f"metrics: {result.metrics_path}")
    return EXIT_INTERRUPTED if result.interrupted else 0


def run_stage_command(command: str, config_cls: type, args: Any, run_stage: Callable[[Any], Any],
                      summarise: Callable[[Any, Any], StageResult] | None = None) -> int:
    """The body of a stage command's `run(args)`: its config from --config and the flags, then `run_stage(cfg)`.
    `summarise(cfg, returned)`, when given, prints the stage's own closing lines (rank 0) and returns the
    StageResult inside what `run_stage` returned (e.g. SFT's result wraps one). Bad input (ValueError,
    FileNotFoundError, NotADirectoryError, PermissionError) prints `kexaone <command>: error: <why>` and exits 2,
    as `kexaone.cli.main` does for every command; a diverged run exits EXIT_DIVERGED; otherwise `report`'s code."""
    import sys

    from kexaone.train import cli_fields
    from kexaone.train.trainer import TrainingDiverged

    try:
        cfg = cli_fields.config_from_args(config_cls, args)
        returned = run_stage(cfg)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"kexaone {command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"kexaone {command}: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    return report(summarise(cfg, returned) if summarise is not None else returned)
