"""Cross-entropy through the vocabulary projection in row chunks, so the full [B, T, V] logits never exist.

At K-EXAONE's vocabulary (153,600) the logits of 8K tokens take 5 GB in fp32, and autograd keeps a log-softmax of
the same size for the backward pass. `linear_cross_entropy(hidden, head, targets)` instead:
- keeps only the rows whose target counts (targets != -100: prompt tokens of SFT, padding, document ends);
- projects and scores them `rows_per_chunk` at a time. For a plain `nn.Linear` head (the lm_head) with autograd on,
  `_FusedLinearCE` forms each chunk's gradients in the forward pass, while its logits are at hand (softmax minus
  one-hot, then the two gradient matmuls), and keeps only d loss / d hidden [N, H] and d loss / d W [V, H] for the
  backward: no recomputation, three matmuls per chunk as an unfused step has. Other heads (LoRA-wrapped, sharded
  DTensor weights whose module hooks must run) go through activation checkpointing per chunk instead, which
  recomputes each chunk's logits in the backward.
Peak extra memory is a few fp32 [rows_per_chunk, V] buffers (plus one [V, H] gradient, which the weight's own
gradient needs anyway) instead of several [B*T, V] ones. Loss and gradients equal `masked_cross_entropy` over full
logits up to summation order (tested). Under autocast the chunks are projected in the autocast dtype, as a plain
lm_head call would be.

It does not return logits: callers that need them (generation, scoring, tests) ask the model for them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# fp32 logits elements per chunk (2**25: 128 MB, 218 rows at V = 153,600): large enough for efficient matmuls.
CHUNK_ELEMENTS = 1 << 25


class _FusedLinearCE(torch.autograd.Function):
    """sum_n CE(h[n] @ W^T + b, t[n]) with the gradients formed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(ctx, h_NH, weight_VH, bias_V, targets_N, rows: int, cdtype: torch.dtype):  # noqa: D401
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = h_NH.shape[0]
        dev = h_NH.device
        w = weight_VH.to(cdtype)
        b = None if bias_V is None else bias_V.to(cdtype)
        grad_h = torch.empty(h_NH.shape, dtype=h_NH.dtype, device=dev) if need_h else None
        grad_w = torch.zeros(weight_VH.shape, dtype=torch.float32, device=dev) if need_w else None
        grad_b = torch.zeros(weight_VH.shape[0], dtype=torch.float32, device=dev) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=dev)
        with torch.autocast(dev.type, enabled=False):
            for r0 in range(0, n, rows):
                hc = h_NH[r0:r0 + rows].to(cdtype)
                tc = targets_N[r0:r0 + rows]
                logits = hc @ w.T
                if b is not None:
                    logits = logits + b
                logits = logits.float()  # [c, V]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
                if need_h or need_w or need_b:
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(g.shape[0], device=dev), tc] -= 1.0
                    if need_b:
                        grad_b += g.sum(0)
                    g = g.to(cdtype)
                    if need_h:
                        grad_h[r0:r0 + rows] = (g @ w).to(h_NH.dtype)
                    if need_w:
                        grad_w += (g.T @ hc).float()
        ctx.save_for_backward(*(x for x in (grad_h, grad_w, grad_b) if x is not None))
        ctx.have = (need_h, need_w, need_b)
        ctx.dtypes = (weight_VH.dtype, None if bias_V is None else bias_V.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = list(ctx.saved_tensors)
        out = []
        for have, dtype in zip(ctx.have, (None, *ctx.dtypes)):
            if not have:
                out.append(None)
                continue
            g = saved.pop(0) * grad_out
            out.append(g if dtype is None else g.to(dtype))
        return (*out, None, None, None)


def _fusable(head) -> bool:
    if type(head) is not torch.nn.Linear:
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return True
    return not isinstance(head.weight, DTensor)


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
        # Still through the head: under FSDP every rank must run the same forward/backward collectives, and a rank
        # whose batch has no target (a window of an answers-only document) would otherwise skip the head's.
        return head(flat_h[:1]).float().sum() * 0.0
    h, t = flat_h.index_select(0, keep), flat_t.index_select(0, keep)
    if rows_per_chunk is None:
        rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab_size)
    if not isinstance(rows_per_chunk, int) or rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be an integer >= 1, got {rows_per_chunk!r}")
    grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    if grad and _fusable(head):
        dev = h.device.type
        cdtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        return _FusedLinearCE.apply(h, head.weight, head.bias, t, rows_per_chunk, cdtype) / n
    total = None
    for r0 in range(0, n, rows_per_chunk):
        hc, tc = h[r0:r0 + rows_per_chunk], t[r0:r0 + rows_per_chunk]
        part = checkpoint(_chunk_ce_sum, head, hc, tc, use_reentrant=False) if grad else _chunk_ce_sum(head, hc, tc)
        total = part if total is None else total + part
    return total / n
