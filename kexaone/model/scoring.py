"""Per-token log-probabilities: the one scoring primitive that training evaluation, held-out bits per byte,
multiple-choice scoring and the RL / preference losses all use, so they agree on what "the log-prob of a token" is.

Convention (target-aligned): `out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])` for t >= 1, computed from the
logits at position t - 1 in fp32. `out[:, 0]` is 0 (nothing predicts the first token), and so is every position
whose `mask` is False or that starts a new document in `doc_ids` (a packed row never scores one document from
another's context). Gradients flow when the caller has grad enabled (RL and preference objectives need them).

Bits per byte, the one definition used everywhere: the summed negative log-prob in nats of the scored tokens,
divided by ln 2, divided by the UTF-8 byte count of the text those tokens encode (`bits_per_byte`).

What it does not do: tokenize, batch or pad (callers pass ids and a mask; padded positions get mask False).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                   doc_ids: torch.Tensor | None = None, *, temperature: float = 1.0,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs [B, T] (fp32) of each token of input_ids [B, T] under `model` (target-aligned, see the module).

    mask [B, T] bool: positions to score (default all t >= 1). doc_ids [B, T]: packed documents (attention and
    scoring never cross a change of id). attention_mask [B, T]: 1 = token, 0 = left padding (the model's own
    padding convention). temperature: the logits are divided by it before the softmax (the distribution a sampler
    at that temperature draws from)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for log-probs, got {temperature}")
    B, T = input_ids.shape
    out = torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)
    if T < 2:
        return out
    logits = model(input_ids, doc_ids=doc_ids, attention_mask=attention_mask, compute_mtp=False).logits
    return logprobs_from_logits(logits, input_ids, mask, doc_ids, temperature=temperature).to(out.device)


def logprobs_from_logits(logits_BTV: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None,
                         doc_ids: torch.Tensor | None = None, *, temperature: float = 1.0) -> torch.Tensor:
    """The same target-aligned log-probs from logits the caller already has ([B, T, V], position t predicting
    t + 1). Computed row by row in fp32 so a [B, T, V] fp32 copy of the logits never exists at once."""
    B, T = input_ids.shape
    ids = input_ids.to(logits_BTV.device)
    out = logits_BTV.new_zeros(B, T, dtype=torch.float32)
    for b in range(B):
        row = logits_BTV[b, :-1].float()
        if temperature != 1.0:
            row = row / temperature
        lp = F.log_softmax(row, dim=-1)
        out[b, 1:] = lp.gather(-1, ids[b, 1:, None]).squeeze(-1)
    keep = torch.ones(B, T, dtype=torch.bool, device=out.device)
    keep[:, 0] = False
    if mask is not None:
        if mask.shape != input_ids.shape:
            raise ValueError(f"mask must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(mask.shape)}")
        keep &= mask.to(out.device, torch.bool)
    if doc_ids is not None:
        d = doc_ids.to(out.device)
        keep[:, 1:] &= d[:, 1:] == d[:, :-1]
    return out * keep


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Summed negative log-prob (nats) of a text's scored tokens -> bits per UTF-8 byte of that text."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {n_bytes}")
    return nats / LN2 / n_bytes
