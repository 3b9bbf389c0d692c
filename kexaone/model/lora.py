"""LoRA adapters through `peft`, with module names that are `transformers`' ExaoneMoe names.

kexaone's modules carry exactly the names of `transformers`' ExaoneMoeForCausalLM (`model.layers.{l}.self_attn.q_proj`,
`model.layers.{l}.mlp.shared_experts.gate_proj`, stacked routed experts `model.layers.{l}.mlp.experts.gate_up_proj`
[E, 2I, H] ...), so an adapter that peft saves from a kexaone model loads with `PeftModel.from_pretrained` onto the
`transformers` model and gives the same logits (tests/test_lora.py).

Targets: attention (q, k, v, o), the dense layer-0 MLP and the shared experts by default; the routed experts
optionally (peft's `target_parameters`, one low-rank update per stacked tensor). The MTP block and the router are
never adapted: `transformers` has no MTP module (an adapter on it would not load there), and a frozen router is
the RL convention. `merge_lora` folds the update into the weights (peft's merge_and_unload) for a full checkpoint.

What it does not do: train (the trainer does, with whatever parameters require grad) or choose learning rates.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# A full-match regex over module names: main-stack layers only (the MTP block lives under `mtp.`).
_LAYER = r"model\.layers\.\d+\."
TARGET_GROUPS = {
    "attention": _LAYER + r"self_attn\.(q_proj|k_proj|v_proj|o_proj)",
    "dense": _LAYER + r"mlp\.(gate_proj|up_proj|down_proj)",
    "shared": _LAYER + r"mlp\.shared_experts\.(gate_proj|up_proj|down_proj)",
}
DEFAULT_TARGETS = ("attention", "dense", "shared")
EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def lora_config(rank: int, alpha: float | None = None, targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
                dropout: float = 0.0):
    """A peft LoraConfig for kexaone / ExaoneMoe. `targets` are group names (attention, dense, shared, experts);
    alpha defaults to the rank (scale 1)."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    unknown = [t for t in targets if t not in TARGET_GROUPS and t != "experts"]
    if unknown:
        raise ValueError(f"unknown LoRA target group(s) {unknown}; choose from {sorted(TARGET_GROUPS) + ['experts']}")
    modules = [TARGET_GROUPS[t] for t in targets if t in TARGET_GROUPS]
    if not modules:
        raise ValueError("LoRA needs at least one module group besides the experts (attention, dense, shared)")
    kwargs = {}
    if "experts" in targets:
        kwargs["target_parameters"] = list(EXPERT_PARAMETERS)
    return LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), lora_dropout=dropout,
                      target_modules="^(" + "|".join(modules) + ")$", bias="none", **kwargs)


def apply_lora(model: torch.nn.Module, rank: int, alpha: float | None = None,
               targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS, dropout: float = 0.0):
    """Wrap `model` (a KExaoneForCausalLM) with LoRA adapters; only the adapter weights require grad afterwards.
    Returns the peft model, which is called exactly like the kexaone model."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(rank, alpha, targets, dropout))


def save_adapter(peft_model, out_dir: str | os.PathLike, base_model_path: str | None = None) -> Path:
    """peft's own format (adapter_config.json + adapter_model.safetensors), loadable by PeftModel.from_pretrained
    onto `transformers`' ExaoneMoeForCausalLM."""
    out = Path(out_dir)
    if base_model_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = str(base_model_path)
    # No embedding layer is adapted, so peft need not compare vocabularies with the base (it would load its config).
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return out


def load_adapter(model: torch.nn.Module, adapter_dir: str | os.PathLike, trainable: bool = False):
    """Put a saved adapter (ours or any peft adapter for ExaoneMoe) onto a kexaone model."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no adapter_config.json (not a peft adapter directory)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def load_adapter_on_transformers(hf_model: torch.nn.Module, adapter_dir: str | os.PathLike):
    """Put a kexaone adapter onto `transformers`' ExaoneMoeForCausalLM with peft, exactly as trained.

    Why not plain `PeftModel.from_pretrained(hf_model, dir)`: peft 0.21 assumes every adapter it loads onto a
    transformers-5 MoE model was trained on transformers 4's per-expert modules, and rewrites any target whose leaf
    name is gate_proj / up_proj / down_proj into the fused routed experts (`mlp.experts.gate_up_proj`). For
    ExaoneMoe that also catches the dense layer-0 MLP and the shared experts, which keep those names in 5.x. Plain
    peft is exact for attention and routed-expert adapters; this loader is exact for all of them, by hiding the
    model type from that v4 -> v5 conversion while peft injects the adapter."""
    from peft import PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no adapter_config.json (not a peft adapter directory)")
    config = hf_model.config
    model_type = config.model_type
    try:
        config.model_type = "kexaone-adapter-load"  # unknown to peft's conversion table: no rewrite
        return PeftModel.from_pretrained(hf_model, str(path))
    finally:
        config.model_type = model_type


def merge_lora(peft_model) -> torch.nn.Module:
    """The base kexaone model with the adapter folded into its weights (the adapter modules removed)."""
    return peft_model.merge_and_unload()


def unwrap_lora(model: torch.nn.Module) -> torch.nn.Module:
    """The kexaone model under a peft wrapper (itself when not wrapped), for code that needs its attributes."""
    base = getattr(model, "base_model", None)
    inner = getattr(base, "model", None)
    return inner if inner is not None and hasattr(inner, "config") and base is not model else model
