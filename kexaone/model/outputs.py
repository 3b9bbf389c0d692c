"""KExaoneOutput: what KExaoneForCausalLM.forward returns (a plain dataclass, no dict/tuple magic)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KExaoneOutput:
    logits: torch.Tensor | None
    """[B, T', V]: next-token logits (T' = T, or logits_to_keep); None when labels were given without
    return_logits=True (the loss was computed in chunks, see vocab_loss.py)."""
    hidden_states: torch.Tensor
    """[B, T, H]: the main model's output after its final norm (what the MTP block reads)."""
    loss: torch.Tensor | None = None
    """ce + mtp_loss_weight * mtp + aux_loss_coef * aux, when labels are given."""
    ce_loss: torch.Tensor | None = None
    """Mean next-token cross-entropy over the targets that count (labels != -100, same document)."""
    mtp_loss: torch.Tensor | None = None
    """Mean cross-entropy of the MTP head (token t+2 from position t); None without MTP."""
    aux_loss: torch.Tensor | None = None
    """Sum over MoE layers of the sequence-level balance loss, unweighted (0-d; 0 without MoE layers)."""
    mtp_logits: torch.Tensor | None = None
    """[B, T-1, V]: MTP logits at positions 0..T-2 (position t predicts token t+2), when computed."""
