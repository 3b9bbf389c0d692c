"""Build the pre-training optimizer from a model: which parameter gets Muon, which gets AdamW, with what decay.

K-EXAONE's rule (SPEC section 3), decided from `model.named_parameters()` (the `mtp.` block follows the same rules):

| parameter                                                       | optimizer | weight decay |
|-----------------------------------------------------------------|-----------|--------------|
| hidden 2-D matrices (attention q/k/v/o, dense and shared SwiGLU, MTP `fc`) | Muon | yes |
| 3-D expert stacks [E, out, in] (each expert on its own; a fused `gate_up_proj` is split into gate and up) | Muon | yes |
| token embeddings (`embed_tokens`), `lm_head`                    | AdamW     | yes          |
| MoE router weight (`*.gate.weight`)                             | AdamW     | yes          |
| every 1-D parameter (norm weights, biases)                      | AdamW     | no           |

`kind="adamw"` builds the baseline: `torch.optim.AdamW` for every parameter (decay on >= 2-D, none on 1-D).
This module also has the gradient-clipping helper. It does not schedule the learning rate (see schedule.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kexaone.train.muon import MuonAdamW, resolve_ns_dtype

MUON = "muon"
ADAMW = "adamw"
ADAMW_NO_DECAY = "adamw_no_decay"

_ADAMW_NAMES = ("embed_tokens", "lm_head")
_ROUTER_SUFFIX = ".gate.weight"
# Fused parameters holding several matrices stacked along the rows; each part is orthogonalised on its own.
_FUSED_SPLITS = {"gate_up_proj": 2}


def classify_parameter(name: str, param: torch.Tensor) -> str:
    """Return MUON, ADAMW (with decay) or ADAMW_NO_DECAY for a parameter named as in `model.named_parameters()`."""
    if param.ndim < 2:
        return ADAMW_NO_DECAY
    parts = name.split(".")
    if any(p in _ADAMW_NAMES for p in parts) or name.endswith(_ROUTER_SUFFIX) or name == "gate.weight":
        return ADAMW
    if param.ndim in (2, 3):
        return MUON
    # Higher-rank tensors (none in K-EXAONE) have no obvious matrix view: AdamW is the safe choice.
    return ADAMW


def muon_split(name: str) -> int:
    """How many matrices a Muon parameter stacks along its rows (2 for a fused expert `gate_up_proj`)."""
    parts = [p for p in name.split(".") if p != "weight"]
    return _FUSED_SPLITS.get(parts[-1], 1) if parts else 1


def parameter_groups(model: nn.Module, split_fused: bool = True) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Named trainable parameters of `model` sorted into tags: "muon", "muon_split{k}", "adamw", "adamw_no_decay".

    Parameters without requires_grad are left out (for example a frozen router during RL)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        tag = classify_parameter(name, p)
        if tag == MUON and split_fused:
            k = muon_split(name)
            if k > 1 and p.shape[-2] % k == 0:
                tag = f"muon_split{k}"
        groups.setdefault(tag, []).append((name, p))
    return groups


def build_optimizer(model: nn.Module, kind: str = "muon", lr: float = 3e-4, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95,
                    ns_steps: int = 5, nesterov: bool = True, ns_dtype: str = "auto",
                    adamw_lr: float | None = None, split_fused: bool = True) -> torch.optim.Optimizer:
    """One optimizer for `model`.

    kind="muon": a `MuonAdamW` with param groups tagged kind "muon"/"adamw" (see the module table); the Muon update
    is scaled by 0.2*sqrt(max(rows, cols)) so `lr` and `weight_decay` mean what they mean for AdamW.
    `adamw_lr` (default: `lr`) sets the AdamW groups' LR. kind="adamw": `torch.optim.AdamW` for every parameter.
    Every group carries `param_names`, so a state_dict says which tensor each state entry belongs to.
    """
    if kind not in ("muon", "adamw"):
        raise ValueError(f"optimizer kind must be 'muon' or 'adamw', got {kind!r}")
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    resolve_ns_dtype(ns_dtype, torch.device("cpu"))  # validate early, before any step
    groups = parameter_groups(model, split_fused=split_fused)
    if not groups:
        raise ValueError("the model has no trainable parameters (every parameter has requires_grad=False)")
    adamw_lr = lr if adamw_lr is None else adamw_lr

    if kind == "adamw":
        decay = [np for tag, items in groups.items() if tag != ADAMW_NO_DECAY for np in items]
        no_decay = groups.get(ADAMW_NO_DECAY, [])
        param_groups = [g for g in (
            {"params": decay, "weight_decay": weight_decay, "kind": ADAMW, "tag": "adamw"},
            {"params": no_decay, "weight_decay": 0.0, "kind": ADAMW, "tag": ADAMW_NO_DECAY},
        ) if g["params"]]
        return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    param_groups = []
    for tag in sorted(groups):  # a fixed order so state_dicts from two builds line up
        items = groups[tag]
        if tag.startswith(MUON):
            split = int(tag[len("muon_split"):]) if tag.startswith("muon_split") else 1
            param_groups.append({"params": items, "kind": MUON, "tag": tag, "lr": lr, "weight_decay": weight_decay,
                                 "split": split})
        else:
            param_groups.append({"params": items, "kind": ADAMW, "tag": tag, "lr": adamw_lr,
                                 "weight_decay": 0.0 if tag == ADAMW_NO_DECAY else weight_decay})
    return MuonAdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, momentum=momentum,
                     nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype)


def clip_grad_norm_(parameters: nn.Module | Iterable[torch.Tensor], max_norm: float | None,
                    norm_type: float = 2.0) -> torch.Tensor:
    """Clip gradients to a global norm of `max_norm` and return the norm before clipping (a 0-d fp32 tensor).

    `max_norm` None or <= 0 only measures. A non-finite norm leaves the gradients untouched (scaling by nan would
    poison every parameter): the caller should skip that step. Sharded (DTensor) gradients give the global norm.
    """
    params = [p for p in (parameters.parameters() if isinstance(parameters, nn.Module) else parameters)
              if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    # A DTensor norm is a partial result until reduced; clipping takes it as is, the caller gets a plain tensor.
    total_full = total.full_tensor() if hasattr(total, "full_tensor") else total
    if max_norm is not None and max_norm > 0 and torch.isfinite(total_full):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total_full.detach().float()
