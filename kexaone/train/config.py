"""Run configuration: typed sections every training stage shares, and TrainConfig (pre-training) built from them.

Sections (each a dataclass with its own checks): `ModelSection` (preset / --init-from), `DataSection` (sources,
tokenizer, sequence length, batch), `OptimSection` (length of the run, optimizer, schedule), `ParallelSection`
(precision, devices, parallelism, threads, seed), `CheckpointSection` (output, checkpoints, logging, evaluation,
export) and `ObjectiveSection` (loss weights and the router switch). A stage's config is the union of the sections
it uses (dataclass inheritance: `class SFTConfig(ModelSection, DataSection, ..., StageConfig)`), so fields stay
flat (`cfg.lr`; a `--config` file may be flat or use one table per section, `[optim] lr = 3e-3`) and the CLI flags
are derived from the fields (`kexaone.train.cli_fields`): the attribute docstrings below are the flags' help.
Each stage has its own `seq_len` (DataSection), so SFT, context extension and pre-training each pick theirs.

This module holds no tensors and imports no torch, so the CLI can build and check a config cheaply. It does not
describe the model architecture (that is `kexaone.config.KExaoneConfig`); it only names a preset plus overrides.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PRECISIONS = ("fp32", "bf16", "fp8")
OPTIMIZERS = ("muon", "adamw")
PARALLEL = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
DECAY_SHAPES = ("linear", "1-sqrt")
FP8_FORMATS = ("e4m3", "e5m2")
SYNTHETIC_SIZES = ("tiny", "default", "large")
PACKINGS = ("stream", "document")

Need = Callable[[bool, str, str], None]


def opt(default: Any = None, **meta: Any) -> Any:
    """A field with CLI metadata: choices, metavar, flag (another flag name), append (repeatable), cli=False."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------- sections
@dataclass
class ModelSection:
    """model and initialisation"""

    preset: str = "tiny"
    """model preset: tiny, small or k-exaone-236b-a23b; vocab_size is always the tokenizer's"""
    model_overrides: dict[str, Any] = opt({}, cli=False)
    """KExaoneConfig fields to change on top of the preset (e.g. {"num_hidden_layers": 2})"""
    init_from: str | None = opt(None, metavar="DIR")
    """start from this HF-layout exaone_moe checkpoint (weights, config and its tokenizer) instead of a preset"""
    activation_checkpointing: bool = False
    """recompute each decoder layer in backward (less memory, ~30% more compute)"""

    def _check_model(self, need: Need) -> None:
        need(isinstance(self.model_overrides, dict), "model_overrides", "must be a table of KExaoneConfig fields")
        need(self.init_from is None or (isinstance(self.init_from, str) and bool(self.init_from)), "init_from",
             "must be a checkpoint directory (or None)")
        need(not (self.init_from and self.model_overrides), "model_overrides",
             "cannot be combined with init_from (the checkpoint fixes the architecture)")


@dataclass
class DataSection:
    """data and batch"""

    data: list[str] = opt([], metavar="PATH[@WEIGHT]", append=True)
    """training source (txt/jsonl/parquet/HF datasets dir/glob), repeatable"""
    eval_data: list[str] = opt([], metavar="PATH", append=True)
    """held-out source(s) for evaluation (default: a held-out split of the training data)"""
    tokenizer: str | None = None
    """tokenizer directory (default: the --init-from checkpoint's, else a SuperBPE tokenizer trained on the
    synthetic corpus, cached)"""
    tokenizer_vocab_size: int | None = None
    """vocabulary of the default tokenizer (default: the preset's)"""
    workers: int = 0
    """tokenization workers (0 = one per core, at most 8)"""
    seq_len: int = 256
    """tokens per training row"""
    batch_size: int = 8
    """rows per micro-batch per rank"""
    grad_accum: int = 1
    """micro-batches per optimizer step (global batch = batch_size x world size x grad_accum rows)"""
    packing: str = opt("stream", choices=PACKINGS)
    """how documents become rows: stream (one token stream cut into full rows; documents run across rows) or
    document (whole documents placed best-fit, the rest padded; kexaone.data.docpacking)"""
    truncate_documents: bool = True
    """with --packing document: a document longer than seq_len keeps its first seq_len tokens (else it gets a row
    of its own and that batch widens, so no token is dropped)"""

    def _check_data(self, need: Need) -> None:
        need(self.packing in PACKINGS, "packing", f"choose one of {list(PACKINGS)}")
        for name in ("seq_len", "batch_size", "grad_accum"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(_is_int(self.workers) and self.workers >= 0, "workers", "must be an integer >= 0")
        need(self.tokenizer_vocab_size is None or (_is_int(self.tokenizer_vocab_size)
                                                   and self.tokenizer_vocab_size >= 300),
             "tokenizer_vocab_size", "must be an integer >= 300 (256 bytes + specials) or None")
        for spec in self.data + self.eval_data:
            if not isinstance(spec, str) or not spec:
                raise ValueError(f"TrainConfig.data entries must be non-empty 'path[@weight]' strings, got {spec!r}")


@dataclass
class OptimSection:
    """optimisation"""

    max_steps: int | None = None
    """optimizer steps (default 100 unless --tokens)"""
    tokens: int | None = None
    """token budget: ceil(tokens / tokens per step) steps (used when --max-steps is not given)"""
    optimizer: str = opt("muon", choices=OPTIMIZERS)
    """muon (Muon for hidden matrices + AdamW for the rest) or adamw"""
    lr: float = 3e-4
    """peak learning rate of the WSD schedule"""
    muon_ns_dtype: str = opt("auto", choices=("auto", "float32", "bfloat16"))
    """dtype of Muon's Newton-Schulz iterations. auto: bfloat16 under --precision bf16 and on CUDA, else float32.
    On a CPU with AMX or AVX512_BF16 bfloat16 makes them 2.3-3.3x faster (kexaone.train.muon.resolve_ns_dtype)"""
    adamw_lr: float | None = None
    """peak LR of Muon's AdamW groups: embeddings, output head, router, norms (default --lr). Small models want
    these far higher than the hidden matrices: on a copy probe of the `small` preset with Muon at 3e-3, these at
    3e-3 left the copy unlearned after 100 steps (loss 6.26, chance 6.38) and at 3e-2 learned it (0.17)"""
    min_lr_ratio: float = 0.0
    """final LR as a fraction of --lr at the end of the decay"""
    warmup_steps: int | None = None
    """warmup steps (default 2% of the run, at least 1)"""
    decay_fraction: float = 0.2
    """fraction of the run spent decaying"""
    decay_shape: str = opt("linear", choices=DECAY_SHAPES)
    """shape of the decay"""
    weight_decay: float = 0.1
    """decoupled weight decay"""
    betas: tuple[float, float] = opt((0.9, 0.95), metavar=("B1", "B2"))
    """AdamW betas"""
    momentum: float = 0.95
    """Muon Nesterov momentum"""
    grad_clip: float = 1.0
    """max global gradient norm (0 disables clipping)"""

    def _check_optim(self, need: Need) -> None:
        for name in ("lr", "min_lr_ratio", "decay_fraction", "weight_decay", "momentum", "grad_clip"):
            need(_is_num(getattr(self, name)), name, "must be a number")
        need(self.adamw_lr is None or _is_num(self.adamw_lr), "adamw_lr", "must be a number (or None)")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"choose one of {list(OPTIMIZERS)}")
        need(self.decay_shape in DECAY_SHAPES, "decay_shape", f"choose one of {list(DECAY_SHAPES)}")
        need(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps >= 1), "max_steps",
             "must be an integer >= 1 (or None)")
        need(self.tokens is None or (_is_int(self.tokens) and self.tokens >= 1), "tokens",
             "must be an integer >= 1 (or None)")
        need(self.warmup_steps is None or (_is_int(self.warmup_steps) and self.warmup_steps >= 0), "warmup_steps",
             "must be an integer >= 0 (or None)")
        need(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a finite number > 0")
        need(self.adamw_lr is None or (math.isfinite(self.adamw_lr) and self.adamw_lr > 0), "adamw_lr",
             "must be a finite number > 0 (or None)")
        need(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", "must be in [0, 1]")
        need(0.0 <= self.decay_fraction <= 1.0, "decay_fraction", "must be in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas",
             "must be two numbers in [0, 1)")
        need(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables clipping)")


@dataclass
class ParallelSection:
    """precision, devices, parallelism"""

    precision: str = opt("bf16", choices=PRECISIONS)
    """fp32, bf16 (autocast, fp32 master weights) or fp8 (emulated on CPU, torchao on CUDA)"""
    fp8_format: str = opt("e4m3", choices=FP8_FORMATS)
    """FP8 format of the forward pass"""
    device: str = opt("auto", choices=DEVICES)
    """auto (CUDA when available), cpu or cuda"""
    parallel: str = opt("ddp", choices=PARALLEL)
    """data parallelism under torchrun: ddp or fsdp (FSDP2 fully_shard per decoder layer)"""
    expert_parallel: bool = False
    """shard the routed experts over the torchrun ranks (with --parallel ddp, a world size > 1 dividing
    num_experts, and the same micro-batch shape on every rank)"""
    threads: int = 0
    """CPU threads for torch per process (0 = auto: torch's default, at most usable cores / ranks, and 1 when
    every core is busy right now: oversubscribed OpenMP threads are 10-100x slower)"""
    peak_flops: float | None = None
    """peak FLOP/s per rank for MFU (default: measured once at startup with a matmul)"""
    seed: int = 0
    """seed of every random choice (weights, data order)"""

    def _check_parallel(self, need: Need) -> None:
        for name, choices in (("precision", PRECISIONS), ("parallel", PARALLEL), ("device", DEVICES),
                              ("fp8_format", FP8_FORMATS)):
            need(getattr(self, name) in choices, name, f"choose one of {list(choices)}")
        for name in ("seed", "threads"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an integer >= 0")
        need(self.peak_flops is None or (_is_num(self.peak_flops) and self.peak_flops > 0), "peak_flops",
             "must be > 0 (or None to measure)")
        need(not (self.expert_parallel and self.parallel != "ddp"), "expert_parallel",
             f"works with parallel='ddp' only (got parallel={self.parallel!r})")


@dataclass
class CheckpointSection:
    """output, checkpoints, evaluation"""

    out: str = "runs/pretrain"
    """output directory: checkpoints/, metrics.jsonl, loss_curve.png, expert_load.jsonl, tokenizer/, model/, result.json"""
    resume: bool = False
    """continue from the latest checkpoint in <out>/checkpoints (an error if there is none)"""
    save_every: int = 100
    """checkpoint every N steps (0: only at the end and on interruption)"""
    keep_checkpoints: int = 3
    """checkpoints kept (older ones are deleted)"""
    log_every: int = 1
    """log a metrics record every N steps"""
    eval_every: int = 100
    """evaluate every N steps (0: only at the end)"""
    eval_batches: int = 8
    """held-out micro-batches per rank per evaluation (0 = none)"""
    max_bad_steps: int = 5
    """stop after N consecutive steps with a NaN/inf loss or gradient"""
    progress: bool = True
    """show a progress bar"""
    tensorboard: bool = True
    """also log to TensorBoard when it is installed"""
    export: bool = True
    """write the final model (HF layout) and tokenizer to <out>/model"""

    def _check_checkpoint(self, need: Need) -> None:
        for name in ("log_every", "keep_checkpoints", "max_bad_steps"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("eval_every", "save_every", "eval_batches"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an integer >= 0")
        need(isinstance(self.out, str) and bool(self.out), "out", "must be a non-empty path")


@dataclass
class ObjectiveSection:
    """loss weights and MoE balance (default: the model config's K-EXAONE values)"""

    aux_loss_coef: float | None = None
    """sequence aux-loss weight (default 1e-4)"""
    mtp_loss_weight: float | None = None
    """MTP loss weight (default 0.05; 0 does not run the MTP block)"""
    bias_update_rate: float | None = None
    """expert-bias update factor (default 1e-4; 0 only measures the load)"""
    router_frozen: bool = False
    """freeze the MoE routers: no router gradient, no expert-bias update, no routed-token counting"""

    def _check_objective(self, need: Need) -> None:
        for name in ("aux_loss_coef", "mtp_loss_weight", "bias_update_rate"):
            v = getattr(self, name)
            need(v is None or (_is_num(v) and math.isfinite(v) and v >= 0), name,
                 "must be a finite number >= 0 (or None)")


@dataclass
class SyntheticSection:
    """pre-training corpus"""

    synthetic_size: str = opt("default", choices=SYNTHETIC_SIZES)
    """size of the embedded synthetic corpus used when --data is empty (or with --mix-synthetic)"""
    mix_synthetic: bool = False
    """with --data: train on the synthetic three-stage curriculum with your data joining every stage (30% of
    each) instead of your data alone"""
    copy_warmup_steps: int = 0
    """optimizer steps, counted in the run's total, that first train on fresh retrieval-dense documents alone
    (recall lists, repeated runs, pass keys; loss on their answers), so that the model learns to copy from its
    context early; 0: none"""

    def _check_synthetic(self, need: Need) -> None:
        need(self.synthetic_size in SYNTHETIC_SIZES, "synthetic_size", f"choose one of {list(SYNTHETIC_SIZES)}")
        need(_is_int(self.copy_warmup_steps) and self.copy_warmup_steps >= 0, "copy_warmup_steps",
             "must be an integer >= 0")


# ---------------------------------------------------------------------------------------------- a stage's config
class StageConfig:
    """Behaviour shared by every stage config (mix it in last): normalisation, validation of every section,
    derived numbers, dict/file loading. Section tables in files (`[optim]`) are flattened."""

    SECTION_TABLES = ("model", "data", "optim", "parallel", "checkpoint", "objective", "synthetic")

    def __post_init__(self) -> None:
        for name in ("data", "eval_data"):
            if hasattr(self, name):
                v = getattr(self, name)
                if isinstance(v, str) or not isinstance(v, (list, tuple)):
                    raise ValueError(f"{self._name()}.{name} = {v!r} is invalid: must be a list of 'path[@weight]' "
                                     "strings")
                setattr(self, name, list(v))
        if hasattr(self, "betas"):
            if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
                raise ValueError(f"{self._name()}.betas = {self.betas!r} is invalid: must be two numbers")
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    @classmethod
    def _name(cls) -> str:
        return cls.__name__

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what would be valid."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{self._name()}.{name} = {getattr(self, name)!r} is invalid: {allowed}")

        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.type in ("bool", bool):
                need(isinstance(getattr(self, f.name), bool), f.name, "must be true or false")
        for klass in type(self).__mro__:
            for attr, fn in vars(klass).items():
                if attr.startswith("_check_") and callable(fn):
                    fn(self, need)

    # ------------------------------------------------------------------ derived
    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seq_len * self.batch_size * self.grad_accum * world_size

    def total_steps(self, world_size: int = 1) -> int:
        """Optimizer steps of the run: max_steps, else ceil(tokens / tokens per step), else 100."""
        if self.max_steps is not None:
            return self.max_steps
        if self.tokens is not None:
            return max(1, math.ceil(self.tokens / self.tokens_per_step(world_size)))
        return 100

    def resolved_warmup(self, world_size: int = 1) -> int:
        total = self.total_steps(world_size)
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total)
        return max(1, min(total, round(0.02 * total)))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        if "betas" in d:
            d["betas"] = list(self.betas)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    # ------------------------------------------------------------------ files
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config"):
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a training config must be a table/object, got {type(d).__name__}")
        flat: dict[str, Any] = {}
        tables = {k: v for k, v in d.items() if k in cls.SECTION_TABLES and isinstance(v, dict)}  # `[optim] lr = 1`
        for value in tables.values():
            flat.update(value)
        flat.update({k: v for k, v in d.items() if k not in tables})  # flat keys (and flags) win
        names = set(cls.field_names())
        unknown = sorted(set(flat) - names)
        if unknown:
            raise ValueError(f"{source}: unknown {cls._name()} field(s) {unknown}; valid fields: {sorted(names)}")
        try:
            return cls(**flat)
        except TypeError as e:  # wrong value types that dataclass construction trips on
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike):
        """Load a JSON (.json) or TOML (.toml) file of fields (flat, or one table per section)."""
        return cls.from_dict(load_config_file(path), source=str(path))


@dataclass
class TrainConfig(ModelSection, DataSection, SyntheticSection, OptimSection, ObjectiveSection, ParallelSection,
                  CheckpointSection, StageConfig):
    """A pre-training run. Field names are the keys of a `--config` file and (with `-` for `_`) the CLI flags."""


TRAIN_SECTIONS = (ModelSection, DataSection, SyntheticSection, OptimSection, ObjectiveSection, ParallelSection,
                  CheckpointSection)
"""The sections of TrainConfig in CLI order (kexaone.train.cli_fields groups the flags by them)."""


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict of a JSON or TOML config file, with clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ValueError(f"config file {path} must end in .json or .toml, got {suffix or 'no suffix'!r}")
    try:
        if suffix == ".toml":
            with open(path, "rb") as f:
                return tomllib.load(f)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {path} is not valid {suffix[1:].upper()}: {e}") from None
