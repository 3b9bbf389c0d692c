"""TrainConfig: every knob of a pre-training run, with validation and loading from a JSON or TOML file.

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
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp8")
OPTIMIZERS = ("muon", "adamw")
PARALLEL = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
DECAY_SHAPES = ("linear", "1-sqrt")
FP8_FORMATS = ("e4m3", "e5m2")
SYNTHETIC_SIZES = ("tiny", "default", "large")


@dataclass
class TrainConfig:
    """A pre-training run. Field names are the keys of a `--config` file and (with `-` for `_`) the CLI flags."""

    # --- model ---
    preset: str = "tiny"
    """KExaoneConfig preset name; vocab_size is always replaced by the tokenizer's."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """KExaoneConfig fields to change on top of the preset (e.g. {"num_hidden_layers": 2})."""

    # --- data and tokenizer ---
    data: list[str] = field(default_factory=list)
    """Training sources, `path[@weight]` each (txt/jsonl/parquet/HF datasets dir/glob). Empty: the embedded
    synthetic curriculum."""
    synthetic_size: str = "default"
    """Size of the embedded synthetic corpus used when `data` is empty (or mix_synthetic): tiny, default, large."""
    mix_synthetic: bool = False
    """With `data`: train on the synthetic three-stage curriculum with the user sources joining every stage
    (30% of each stage) instead of the user sources alone."""
    eval_data: list[str] = field(default_factory=list)
    """Held-out sources for evaluation. Empty: held-out synthetic documents (never seen in training)."""
    tokenizer: str | None = None
    """Tokenizer directory. None: a SuperBPE tokenizer trained on the synthetic corpus, cached."""
    tokenizer_vocab_size: int | None = None
    """Vocabulary size of the default tokenizer (None: the preset's vocab_size)."""
    workers: int = 0
    """Tokenization worker processes (0: one per CPU core, at most 8)."""

    # --- output ---
    out: str = "runs/pretrain"
    """Output directory: checkpoints/, metrics.jsonl, loss_curve.png, expert_load/, tokenizer/, model/."""

    # --- length of the run and batch ---
    max_steps: int | None = None
    """Optimizer steps. If both max_steps and tokens are None, 100 steps."""
    tokens: int | None = None
    """Token budget; the step count is ceil(tokens / tokens per step). Ignored when max_steps is given."""
    seq_len: int = 256
    """Tokens per packed training row."""
    batch_size: int = 8
    """Rows per micro-batch on each rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step. Global batch = batch_size x world size x grad_accum rows."""

    # --- optimisation ---
    optimizer: str = "muon"
    """'muon' (Muon for hidden matrices + AdamW for the rest) or 'adamw'."""
    lr: float = 3e-4
    """Peak learning rate of the WSD schedule."""
    adamw_lr: float | None = None
    """Peak learning rate of the AdamW groups of the Muon optimizer (token embedding, output head, router, norms);
    None: `lr`. Small models want these far higher than the hidden matrices (nanochat and modded-nanogpt do the
    same): on a copy probe of the `small` preset with Muon at 3e-3, these at 3e-3 left the copy unlearned after 100
    steps (loss 6.26, chance 6.38) and at 3e-2 learned it (0.17). Ignored by optimizer 'adamw'."""
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of lr at the end of the decay."""
    warmup_steps: int | None = None
    """Warmup steps (None: 2% of the run, at least 1)."""
    decay_fraction: float = 0.2
    """Fraction of the run spent decaying."""
    decay_shape: str = "linear"
    """'linear' or '1-sqrt'."""
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.95
    """Muon (Nesterov) momentum."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""

    # --- losses and MoE balance (None: the model config's K-EXAONE values) ---
    aux_loss_coef: float | None = None
    mtp_loss_weight: float | None = None
    bias_update_rate: float | None = None
    router_frozen: bool = False
    """Freeze the MoE routers: no router gradient, no expert-bias update, no routed-token counting (one switch,
    kexaone.train.balancing.freeze_router)."""

    # --- precision and devices ---
    precision: str = "bf16"
    """'fp32', 'bf16' (autocast, fp32 master weights) or 'fp8' (emulated on CPU, torchao on CUDA)."""
    fp8_format: str = "e4m3"
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    parallel: str = "ddp"
    """Data parallelism under torchrun: 'ddp' or 'fsdp' (FSDP2 fully_shard per decoder layer)."""
    expert_parallel: bool = False
    """Shard the routed experts over the torchrun ranks (kexaone.train.expert_parallel; needs parallel='ddp', a
    world size > 1 dividing num_experts, and the same micro-batch shape on every rank)."""
    threads: int = 0
    """CPU threads for torch per process. 0: auto (torch's default, at most usable cores / ranks, and 1 when every
    core is busy right now: oversubscribed OpenMP threads are 10-100x slower)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in backward (less memory, ~30% more compute)."""
    peak_flops: float | None = None
    """Peak FLOP/s per rank for MFU (None: measured once at startup with a matmul)."""

    # --- bookkeeping ---
    seed: int = 0
    log_every: int = 1
    eval_every: int = 100
    """Evaluate every N steps (0: only at the end)."""
    eval_batches: int = 8
    """Held-out micro-batches per rank per evaluation (eval_batches x batch_size x world size rows in all)."""
    save_every: int = 100
    """Checkpoint every N steps (0: only at the end and on interruption)."""
    keep_checkpoints: int = 3
    resume: bool = False
    """Continue from the latest checkpoint in <out>/checkpoints (it is an error if there is none)."""
    max_bad_steps: int = 5
    """Stop after this many consecutive steps with a NaN/inf loss or gradient."""
    progress: bool = True
    tensorboard: bool = True
    """Also log to TensorBoard when `tensorboard` is installed."""
    export: bool = True
    """Write the final model (HF layout) and tokenizer to <out>/model."""

    def __post_init__(self) -> None:
        for name in ("data", "eval_data"):
            v = getattr(self, name)
            if isinstance(v, str) or not isinstance(v, (list, tuple)):
                raise ValueError(f"TrainConfig.{name} = {v!r} is invalid: must be a list of 'path[@weight]' strings")
            setattr(self, name, list(v))
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas = {self.betas!r} is invalid: must be two numbers")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what would be valid."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: {allowed}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for name in ("lr", "min_lr_ratio", "decay_fraction", "weight_decay", "momentum", "grad_clip"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool), name, "must be a number")
        for name in ("adamw_lr", "aux_loss_coef", "mtp_loss_weight", "bias_update_rate", "peak_flops"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), name,
                 "must be a number (or None)")
        for name in ("resume", "progress", "tensorboard", "export", "mix_synthetic", "activation_checkpointing",
                     "expert_parallel", "router_frozen"):
            need(isinstance(getattr(self, name), bool), name, "must be true or false")
        need(isinstance(self.model_overrides, dict), "model_overrides", "must be a table of KExaoneConfig fields")
        for name, choices in (("precision", PRECISIONS), ("optimizer", OPTIMIZERS), ("parallel", PARALLEL),
                              ("device", DEVICES), ("decay_shape", DECAY_SHAPES), ("fp8_format", FP8_FORMATS),
                              ("synthetic_size", SYNTHETIC_SIZES)):
            need(getattr(self, name) in choices, name, f"choose one of {list(choices)}")
        for name in ("seq_len", "batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_bad_steps"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        for name in ("eval_every", "save_every", "eval_batches", "workers", "seed", "threads"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "must be an integer >= 0")
        need(self.max_steps is None or (is_int(self.max_steps) and self.max_steps >= 1), "max_steps",
             "must be an integer >= 1 (or None)")
        need(self.tokens is None or (is_int(self.tokens) and self.tokens >= 1), "tokens",
             "must be an integer >= 1 (or None)")
        need(self.warmup_steps is None or (is_int(self.warmup_steps) and self.warmup_steps >= 0), "warmup_steps",
             "must be an integer >= 0 (or None)")
        need(self.tokenizer_vocab_size is None or (is_int(self.tokenizer_vocab_size)
                                                   and self.tokenizer_vocab_size >= 300),
             "tokenizer_vocab_size", "must be an integer >= 300 (256 bytes + specials) or None")
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
        for name in ("aux_loss_coef", "mtp_loss_weight", "bias_update_rate"):
            v = getattr(self, name)
            need(v is None or (math.isfinite(v) and v >= 0), name, "must be a finite number >= 0 (or None)")
        need(self.peak_flops is None or self.peak_flops > 0, "peak_flops", "must be > 0 (or None to measure)")
        need(isinstance(self.out, str) and bool(self.out), "out", "must be a non-empty path")
        need(not (self.expert_parallel and self.parallel != "ddp"), "expert_parallel",
             f"works with parallel='ddp' only (got parallel={self.parallel!r})")
        for spec in self.data + self.eval_data:
            if not isinstance(spec, str) or not spec:
                raise ValueError(f"TrainConfig.data entries must be non-empty 'path[@weight]' strings, got {spec!r}")

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

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    # ------------------------------------------------------------------ files
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a training config must be a table/object, got {type(d).__name__}")
        names = set(cls.field_names())
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{source}: unknown TrainConfig field(s) {unknown}; valid fields: {sorted(names)}")
        try:
            return cls(**d)
        except TypeError as e:  # wrong value types that dataclass construction trips on
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "TrainConfig":
        """Load a JSON (.json) or TOML (.toml) file of TrainConfig fields."""
        return cls.from_dict(load_config_file(path), source=str(path))


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
