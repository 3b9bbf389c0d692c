"""MoE balancing as a component of the training loop, and the one "router frozen" switch.

`ExpertBalancer` installs the aux-loss-free expert-bias update (`kexaone.model.balance`, SPEC section 3) as a
post-step hook of the optimizer (the way torchtitan attaches its load balancing): every successful
`optimizer.step()` sums the routed-token counts over the ranks, nudges the biases and resets the counts. A skipped
step never calls `optimizer.step()`, so the trainer calls `discard()` to drop that step's counts.

`freeze_router(model)` is the single switch for a frozen router (RL, fine-tuning of a balanced model): router weights
get no gradient, the MoE layers stop counting routed tokens, and no balancer is installed (see Trainer), so the
router weights and `e_score_correction_bias` stay bit-identical.

Not here: the balance maths (kexaone.model.balance) and the aux loss (an objective term).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kexaone.model.balance import BalanceStats, moe_layers, reset_expert_counts, update_expert_biases


class ExpertBalancer:
    """Applies `update_expert_biases(model, rate)` after every optimizer step it is installed on."""

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.model, self.rate = model, float(rate)
        self.last: BalanceStats | None = None
        self._handle: Any = None

    def install(self, optimizer: torch.optim.Optimizer) -> "ExpertBalancer":
        self._handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.update())
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def update(self) -> BalanceStats:
        self.last = update_expert_biases(self.model, self.rate)
        return self.last

    def discard(self) -> None:
        """Forget the routed counts of a step that was skipped (they must not drive the next update)."""
        reset_expert_counts(self.model)

    def pop_stats(self) -> BalanceStats | None:
        stats, self.last = self.last, None
        return stats


def freeze_router(model: nn.Module) -> list[str]:
    """Stop router gradients and routed-token counting in every MoE layer; returns the frozen parameter names.
    Call before the optimizer is built and the model wrapped (both then leave the router out)."""
    names = []
    for layer in moe_layers(model):
        layer.gate.weight.requires_grad_(False)
        layer.count_tokens = False
    for name, p in model.named_parameters():
        if name.endswith("gate.weight") and not p.requires_grad:
            names.append(name)
    return names
