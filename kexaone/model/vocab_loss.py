"""Cross-entropy through the vocabulary projection in row chunks, so the full [B, T, V] logits never exist.

At K-EXAONE's vocabulary (153,600) the logits of 8K tokens take 5 GB in fp32, and autograd keeps a log-softmax of
the same size for the backward pass. `linear_cross_entropy(hidden, head, targets)` instead:
- keeps only the rows whose target counts (targets != -100: prompt tokens of SFT, padding, document ends);
- projects and scores them `rows_per_chunk` at a time, each chunk under activation checkpointing, so the forward
  keeps one scalar per chunk and the backward recomputes one chunk's logits at a time.
Peak extra memory is about three fp32 [rows_per_chunk, V] buffers instead of several [B*T, V] ones; the price is a
second vocabulary projection per chunk in the backward pass. Loss and gradients equal `masked_cross_entropy` over
full logits up to summation order (tested). Autocast applies inside the chunks exactly as to a plain lm_head call.

It does not return logits: callers that need them (generation, scoring, tests) ask the model for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# fp32 logits elements per chunk (2**25: 128 MB, 218 rows at V = 153,600): large enough for efficient matmuls.
CHUNK_ELEMENTS = 1 << 25


def _chunk_ce_sum(head, hidden_NH: torch.Tensor, targets_N: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden_NH).float(), targets_N, reduction="sum")


def linear_cross_entropy(hidden_BTH: torch.Tensor, head, targets_BT: torch.Tensor, vocab_size: int,
                         rows_per_chunk: int | None = None) -> torch.Tensor:
    """Mean fp32 cross-entropy of `head(hidden)` against targets (-100 ignored) without materialising the logits of
    every position; 0 (with a graph) when no target counts. `head` maps [N, H] -> [N, vocab_size] (the lm_head)."""
    H = hidden_BTH.shape[-1]
    flat_h = hidden_BTH.reshape(-1, H)
    flat_t = targets_BT.reshape(-1).to(flat_h.device)
    keep = (flat_t != IGNORE_INDEX).nonzero().squeeze(1)
    n = keep.numel()
    if n == 0:
        return flat_h.sum() * 0.0
    h, t = flat_h.index_select(0, keep), flat_t.index_select(0, keep)
    if rows_per_chunk is None:
        rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab_size)
    if not isinstance(rows_per_chunk, int) or rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be an integer >= 1, got {rows_per_chunk!r}")
    grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    total = None
    for r0 in range(0, n, rows_per_chunk):
        hc, tc = h[r0:r0 + rows_per_chunk], t[r0:r0 + rows_per_chunk]
        part = checkpoint(_chunk_ce_sum, head, hc, tc, use_reentrant=False) if grad else _chunk_ce_sum(head, hc, tc)
        total = part if total is None else total + part
    return total / n
