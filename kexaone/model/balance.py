"""Aux-loss-free expert balancing (SPEC section 3): the per-expert bias update and the MaxVio balance metric.

Each `KExaoneMoE` accumulates how many (token, slot) pairs it routed to each expert during training forwards
(`tokens_per_expert`). After each optimizer step the trainer calls `update_expert_biases(model, rate)`, which, per
layer: sums the counts over all ranks, nudges every expert's router bias by `rate * sign(mean_load - load_i)`
(underloaded experts become more attractive), removes the mean of that nudge so the biases do not drift as a whole,
and resets the counters. Because counts accumulate until the update, gradient accumulation needs no special care.

Data parallelism: the counters are buffers, so wrap with DDP(broadcast_buffers=False); otherwise DDP copies rank
0's counters over every rank's at each forward and the all-reduced load is wrong. FSDP2 leaves buffers alone.

Not here: the aux loss (computed in `moe.py`, weighted by the model) and when to call the update (the trainer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kexaone.model.moe import KExaoneMoE


@dataclass
class BalanceStats:
    """What one bias update saw: `load` [L, E] routed counts per MoE layer (summed over ranks, float64) and
    `max_vio` (one MaxVio per layer, in the order of `moe_layers`)."""

    load: torch.Tensor
    max_vio: list[float]

    @property
    def mean_max_vio(self) -> float:
        return sum(self.max_vio) / len(self.max_vio) if self.max_vio else 0.0

    @property
    def worst_max_vio(self) -> float:
        return max(self.max_vio) if self.max_vio else 0.0


def moe_layers(model: nn.Module) -> list[KExaoneMoE]:
    """Every MoE layer of a model (main stack and MTP alike), in module order."""
    return [m for m in model.modules() if isinstance(m, KExaoneMoE)]


def max_violation(load_E: torch.Tensor) -> float:
    """MaxVio = (max_i load_i - mean load) / mean load; 0 for a perfectly balanced (or empty) load."""
    load = load_E.detach().double()
    mean = load.mean()
    if load.numel() == 0 or float(mean) == 0.0:
        return 0.0
    return float((load.max() - mean) / mean)


@torch.no_grad()
def update_expert_biases(model: nn.Module, rate: float,
                         process_group: dist.ProcessGroup | None = None) -> BalanceStats:
    """Apply the aux-loss-free bias update to every MoE layer of `model`, then reset its counters.

    `rate` is the step (K-EXAONE: 1e-4, `config.bias_update_rate`); 0 only measures and resets. When
    torch.distributed is initialised the counts are summed over `process_group` (default: the world) in one
    all-reduce, so every rank applies the same update and the biases stay identical across data-parallel ranks.
    A layer that routed nothing since the last update keeps its bias."""
    if not (isinstance(rate, (int, float)) and rate >= 0):
        raise ValueError(f"bias update rate must be a number >= 0, got {rate!r}")
    layers = moe_layers(model)
    if not layers:
        return BalanceStats(load=torch.zeros(0, 0, dtype=torch.float64), max_vio=[])
    counts_LE = torch.stack([layer.tokens_per_expert for layer in layers])  # int64, exact
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts_LE, op=dist.ReduceOp.SUM, group=process_group)
    load_LE = counts_LE.double()
    # Every layer at once, and one host read (the MaxVio list) for the whole update instead of two per layer.
    mean_L1 = load_LE.mean(dim=1, keepdim=True)
    busy_L1 = mean_L1 > 0  # a layer that routed nothing keeps its bias and has MaxVio 0
    vio_L = torch.where(busy_L1, (load_LE.amax(dim=1, keepdim=True) - mean_L1) / mean_L1.clamp_min(1e-300), 0.0)
    if rate > 0:
        step_LE = torch.sign(mean_L1 - load_LE) * rate
        step_LE -= step_LE.mean(dim=1, keepdim=True)
        step_LE *= busy_L1
        for layer, step_E in zip(layers, step_LE):
            layer.gate.e_score_correction_bias += step_E.to(layer.gate.e_score_correction_bias.dtype)
    for layer in layers:
        layer.tokens_per_expert.zero_()
    max_vio = vio_L.squeeze(1).tolist()
    return BalanceStats(load=load_LE.cpu(), max_vio=max_vio)


@torch.no_grad()
def reset_expert_counts(model: nn.Module) -> None:
    """Discard the counts accumulated so far (e.g. after evaluation forwards run in training mode)."""
    for layer in moe_layers(model):
        layer.tokens_per_expert.zero_()
