"""The variants `kexaone ablate` compares: each one small, declarative change to the baseline run.

A `Variant` says which KExaoneConfig fields (`model`), which TrainConfig fields (`train`) and which tokenizer
(`tokenizer`: "superbpe" or the plain-BPE baseline "bpe" at the same vocabulary size) differ from the baseline, the
K-EXAONE recipe at the budget's scale. `train` values may name a budget field with a "budget:" prefix (for example
the AdamW variant's learning rate, which each budget sets). Nothing here runs anything: kexaone.pipeline.ablate
applies a variant with `apply_variant`.

What the baseline is: the budget's preset with K-EXAONE's mechanisms (window 128 on sliding layers, NoPE global
layers, QK-norm, one MTP layer at weight 0.05, aux-loss-free bias update, sequence aux loss, dropless routing,
SuperBPE, Muon, the budget's precision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOKENIZERS = ("superbpe", "bpe")


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    """KExaoneConfig fields set on top of the budget's preset and overrides."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields; a string value "budget:FIELD" is replaced by that field of the budget."""
    tokenizer: str = "superbpe"

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"variant {self.name!r}: tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")


BASELINE = "baseline"

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant(BASELINE, "K-EXAONE recipe: window 128, NoPE global layers, QK-norm, MTP 0.05, bias update, seq aux "
                      "loss, dropless, SuperBPE, Muon"),
    Variant("window-512", "sliding window 512 instead of 128", model={"sliding_window": 512}),
    Variant("window-4096", "sliding window 4096 instead of 128", model={"sliding_window": 4096}),
    Variant("all-global", "every layer global attention (no sliding window; RoPE everywhere, transformers' rule)",
            model={"sliding_window": None}),
    Variant("global-rope", "RoPE on the global layers too (baseline: NoPE there)", model={"global_rope": True}),
    Variant("no-qk-norm", "QK-norm off", model={"qk_norm": False}),
    Variant("no-mtp", "no MTP layer (and so no MTP loss and no speculative decoding)",
            model={"num_nextn_predict_layers": 0}),
    Variant("mtp-0.3", "MTP loss weight 0.3 instead of 0.05", train={"mtp_loss_weight": 0.3}),
    Variant("no-bias-update", "aux-loss-free expert-bias update off", train={"bias_update_rate": 0.0}),
    Variant("no-seq-aux", "sequence-level aux balance loss off", train={"aux_loss_coef": 0.0}),
    Variant("capacity-1.25", "capacity factor 1.25 with token dropping instead of dropless routing",
            model={"moe_capacity_factor": 1.25}),
    Variant("bpe", "plain byte-level BPE at the same vocabulary size instead of SuperBPE (compare bits per byte)",
            tokenizer="bpe"),
    Variant("adamw", "AdamW for every parameter instead of Muon, at the budget's AdamW learning rate",
            train={"optimizer": "adamw", "lr": "budget:adamw_variant_lr", "adamw_lr": None}),
    Variant("fp8", "FP8 matmuls (emulated on CPU, torchao on CUDA) instead of the budget's precision",
            train={"precision": "fp8"}),
    Variant("bf16", "bf16 autocast instead of the budget's precision", train={"precision": "bf16"}),
)}
"""Every variant by name; `baseline` is always run and is what deltas are taken against."""


LR_SUFFIX = "@lr="


def get_variant(name: str) -> Variant:
    """A variant by name. `NAME@lr=X` is variant NAME at learning rate X, one point of a learning-rate sweep
    (`adamw@lr=0.01`, `baseline@lr=0.001`): with a sweep of each optimizer, the report compares them at their
    best learning rates. X is written canonically (`1e-2` becomes `0.01`) so one setting has one run directory."""
    base, sep, value = name.partition(LR_SUFFIX)
    if base not in VARIANTS or (not sep and "@" in name):
        raise ValueError(f"unknown variant {name!r}; valid: all, {', '.join(VARIANTS)}, or NAME{LR_SUFFIX}X")
    if not sep:
        return VARIANTS[base]
    try:
        lr = float(value)
    except ValueError:
        lr = float("nan")
    if not (0 < lr < float("inf")):
        raise ValueError(f"variant {name!r}: the learning rate after {LR_SUFFIX!r} must be a positive number")
    v = VARIANTS[base]
    return Variant(f"{base}{LR_SUFFIX}{lr:g}", f"{v.description}; learning rate {lr:g}", model=v.model,
                   train={**v.train, "lr": lr}, tokenizer=v.tokenizer)


def sweep_family(name: str) -> str:
    """The variant a sweep point belongs to (`adamw@lr=0.01` -> `adamw`); a plain name is its own family."""
    return name.partition(LR_SUFFIX)[0]


def parse_variants(spec: str | Sequence[str]) -> list[Variant]:
    """Variants from a comma-separated list (or a list of names, `NAME@lr=X` sweep points included); "all" means
    every named variant. The baseline is always included, first. Unknown names raise ValueError listing the valid
    ones."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if "all" in names:
        names = [n for n in names if n != "all"] + list(VARIANTS)
    unknown = []
    for n in names:
        try:
            get_variant(n)
        except ValueError:
            unknown.append(n)
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; valid: all, {', '.join(VARIANTS)}, or NAME{LR_SUFFIX}X "
                         f"(a learning-rate sweep point)")
    variants = [get_variant(n) for n in names]  # canonical names
    ordered = [BASELINE] + [n for n in dict.fromkeys(v.name for v in variants) if n != BASELINE]
    return [get_variant(n) for n in ordered]


def resolve_train_fields(variant: Variant, budget: Any) -> dict[str, Any]:
    """The variant's TrainConfig changes with "budget:FIELD" values looked up on `budget`."""
    out = {}
    for k, v in variant.train.items():
        if isinstance(v, str) and v.startswith("budget:"):
            name = v[len("budget:"):]
            if not hasattr(budget, name):
                raise ValueError(f"variant {variant.name!r}: budget has no field {name!r}")
            v = getattr(budget, name)
        out[k] = v
    return out


def apply_variant(variant: Variant, train_cfg: Any, budget: Any) -> Any:
    """A copy of the baseline TrainConfig with the variant's model overrides and train fields applied."""
    import dataclasses

    from kexaone.config import KExaoneConfig

    bad = sorted(set(variant.model) - set(KExaoneConfig.__dataclass_fields__))
    if bad:
        raise ValueError(f"variant {variant.name!r}: unknown KExaoneConfig field(s) {bad}")
    train = resolve_train_fields(variant, budget)
    bad = sorted(set(train) - {f.name for f in dataclasses.fields(train_cfg)})
    if bad:
        raise ValueError(f"variant {variant.name!r}: unknown TrainConfig field(s) {bad}")
    overrides = {**train_cfg.model_overrides, **variant.model}
    return dataclasses.replace(train_cfg, model_overrides=overrides, **train)
