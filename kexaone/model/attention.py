"""Grouped-query attention of K-EXAONE: per-head RMSNorm on q and k, RoPE on sliding-window layers only (global
layers are NoPE), causal, with the sliding window of `transformers` (a query at position p sees keys j with
p - window < j <= p).

Cost model (the reason this file exists instead of one masked SDPA call):
- sliding layers never build a T x T mask: queries are cut into blocks of C (64), each block attends to a window of
  C + window - 1 keys taken from an overlapping `unfold` view, with one small [C, C + window - 1] band mask, all
  blocks in one batched SDPA call. Time and memory are O(T x (window + C)), in training, prefill and cached
  multi-token steps alike;
- global layers call `scaled_dot_product_attention` (flash kernel on CPU/GPU, GQA without expanding k/v); when a
  mask is needed (padding, multi-token steps over a cache) it is built one query chunk at a time, so its memory is
  bounded too;
- global layers over packed documents (training rows with doc_ids, no cache, no padding mask) take the
  document-aligned path `_documents_varlen` (varlen-style): each row is cut at its document boundaries, a document
  longer than DOC_GROUP tokens is one causal (flash) SDPA call on its own slice, and runs of shorter documents are
  grouped into spans of at most DOC_GROUP tokens, each one masked SDPA call with a [span, span] block-diagonal
  mask. Nothing T x T is ever built (not the mask, not the scores): memory O(T x DOC_GROUP), and a 32K-token
  document costs what an unpacked 32K row costs.

It does not own the KV cache (cache.py) or decide positions (transformer.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kexaone.model.norm import RMSNorm
from kexaone.model.rope import apply_rope_tables

# Queries per block of blocked local attention. Each query reads C + window - 1 keys, so smaller blocks waste less;
# below ~32 the per-block overhead wins (measured on CPU: 64 is within 5% of the best at 1K and 16K tokens).
LOCAL_BLOCK = 64
# Upper bound on mask elements materialised at once by the chunked masked path (bools, so bytes).
MASK_BUDGET = 1 << 25
# At most this many queries over a cache without padding (speculative verification) use a cached band mask.
FEW_QUERIES = 16
# Longest span of short documents attended together by the document-aligned path (one masked call per span).
# Larger spans mean fewer calls but O(span^2) scores per call; 512 keeps a span's scores ~1 MB per head.
DOC_GROUP = 512


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw) -> torch.Tensor:
    """`scaled_dot_product_attention`, computed in fp32 when it trains in bf16/fp16 on a CPU (low-precision inputs,
    or CPU autocast, which would cast fp32 inputs down).

    The CPU flash kernel's reduced-precision backward is ~3x slower than its fp32 backward (measured on this
    machine's AMX CPU at the `small` preset: 0.74 s vs 0.26 s per training step), while the forward is as fast:
    upcasting q, k, v costs a copy of [B, H, T, D] and buys the faster (and more precise) backward. The result
    has the dtype the low-precision call would have returned."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _LOW_PRECISION
        if autocast or q.dtype in _LOW_PRECISION:
            out_dtype = torch.get_autocast_dtype("cpu") if autocast else q.dtype
            with torch.autocast("cpu", enabled=False):
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw).to(out_dtype)
    return F.scaled_dot_product_attention(q, k, v, **kw)


@dataclass
class AttentionInputs:
    """What every attention layer of one forward shares (built once by the model)."""

    token_valid_BT: torch.Tensor | None = None
    """Without a cache: False where a key is padding (attention_mask == 0). None: all valid."""
    doc_ids_BT: torch.Tensor | None = None
    """Packed-document ids: attention never crosses a change of id. None: one document per row."""
    _spans: list[list[tuple[int, int, bool]]] | None = field(default=None, repr=False)

    def document_spans(self, b: int) -> list[tuple[int, int, bool]]:
        """Row b's `document_spans`, computed for every row by the first global layer that needs them and reused by
        the others: the boundaries are read on the host once per forward, not once per row and layer."""
        if self._spans is None:
            self._spans = rows_document_spans(self.doc_ids_BT)
        return self._spans[b]


def _band(q_idx: torch.Tensor, k_idx: torch.Tensor, window: int | None) -> torch.Tensor:
    """[Tq, Tk] bool: key k visible from query q (causal, and within the window when one is given)."""
    diff = q_idx[:, None] - k_idx[None, :]
    vis = diff >= 0
    if window is not None:
        vis &= diff < window
    return vis


def attend(q_BHTD: torch.Tensor, k_BhSD: torch.Tensor, v_BhSD: torch.Tensor, *, scale: float,
           window: int | None, key_valid_BS: torch.Tensor | None = None,
           doc_q_BT: torch.Tensor | None = None, doc_k_BS: torch.Tensor | None = None,
           block: int | None = None, doc_spans: Callable[[int], list] | None = None) -> torch.Tensor:
    """Causal (optionally windowed) GQA attention where the T queries are the last T of the S keys.

    key_valid_BS masks keys (left padding); doc_q/doc_k forbid crossing documents. A query always sees itself, so a
    padded query gets a finite (ignored) output instead of NaN. doc_spans(b): row b's `document_spans` of doc_q
    when the caller has them (AttentionInputs.document_spans), else they are computed here. Returns [B, H, T, D].
    """
    T, S = q_BHTD.shape[2], k_BhSD.shape[2]
    assert S >= T, "queries must be the last T of the keys"
    gqa = q_BHTD.shape[1] != k_BhSD.shape[1]
    if window is not None and S <= window:
        window = None  # no query can reach past the window
    if window is not None and T > 2 * window:
        return _local_blocked(q_BHTD, k_BhSD, v_BhSD, scale=scale, window=window, key_valid_BS=key_valid_BS,
                              doc_q_BT=doc_q_BT, doc_k_BS=doc_k_BS, block=block)
    if window is None and doc_q_BT is not None and key_valid_BS is None and T == S and doc_k_BS is not None:
        return _documents_varlen(q_BHTD, k_BhSD, v_BhSD, doc_BT=doc_q_BT, scale=scale, spans=doc_spans)
    needs_mask = window is not None or key_valid_BS is not None or doc_q_BT is not None
    if not needs_mask and T == S:
        return _sdpa(q_BHTD, k_BhSD, v_BhSD, is_causal=T > 1, scale=scale, enable_gqa=gqa)
    if not needs_mask and T == 1:
        return _sdpa(q_BHTD, k_BhSD, v_BhSD, scale=scale, enable_gqa=gqa)
    if T == 1 and window is None and doc_q_BT is None:
        # One decoded token over a left-padded cache: the mask is only the key validity (plus the query's own key,
        # as in _masked_chunked); built directly as [B, 1, 1, S] instead of through the band machinery.
        vis_BS = key_valid_BS.clone()
        vis_BS[:, -1] = True
        return _sdpa(q_BHTD, k_BhSD, v_BhSD, attn_mask=vis_BS[:, None, None, :], scale=scale, enable_gqa=gqa)
    if key_valid_BS is None and doc_q_BT is None and T <= FEW_QUERIES and not torch.is_grad_enabled():
        # A few queries over an unpadded cache (the speculative verify step): the mask depends on (T, S, window)
        # alone, so one tensor serves every layer and step of that shape instead of a dozen kernels each time.
        return _sdpa(q_BHTD, k_BhSD, v_BhSD, attn_mask=_cached_band(T, S, window, q_BHTD.device), scale=scale,
                     enable_gqa=gqa)
    return _masked_chunked(q_BHTD, k_BhSD, v_BhSD, scale=scale, window=window, key_valid_BS=key_valid_BS,
                           doc_q_BT=doc_q_BT, doc_k_BS=doc_k_BS)


@functools.lru_cache(maxsize=64)
def _cached_band(T: int, S: int, window: int | None, device: torch.device) -> torch.Tensor:
    """[T, S] bool band of the last T queries over S keys (what _masked_chunked builds without padding), shared:
    callers must not modify it. Built outside inference mode so that it is an ordinary tensor wherever it is used."""
    with torch.inference_mode(False):
        return _band(torch.arange(S - T, S, device=device), torch.arange(S, device=device), window)


def _masked_chunked(q_BHTD, k_BhSD, v_BhSD, *, scale, window, key_valid_BS, doc_q_BT, doc_k_BS) -> torch.Tensor:
    B, _, T, _ = q_BHTD.shape
    S = k_BhSD.shape[2]
    dev = q_BHTD.device
    k_idx = torch.arange(S, device=dev)
    chunk = max(1, min(T, MASK_BUDGET // max(1, B * S)))
    outs = []
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        q_idx = torch.arange(S - T + t0, S - T + t1, device=dev)
        vis = _band(q_idx, k_idx, window)[None].expand(B, -1, -1)  # [B, tc, S]
        if key_valid_BS is not None:
            vis = vis & key_valid_BS[:, None, :]
        if doc_q_BT is not None:
            vis = vis & (doc_q_BT[:, t0:t1, None] == doc_k_BS[:, None, :])
        vis = vis | (q_idx[:, None] == k_idx[None, :])[None]
        outs.append(_sdpa(
            q_BHTD[:, :, t0:t1], k_BhSD, v_BhSD, attn_mask=vis[:, None], scale=scale,
            enable_gqa=q_BHTD.shape[1] != k_BhSD.shape[1]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def document_spans(doc_T: torch.Tensor, group: int = DOC_GROUP) -> list[tuple[int, int, bool]]:
    """The spans one row's attention is computed in: (start, end, single) with `single` True when the span is one
    document (attended with is_causal), False when it groups several short whole documents (a block-diagonal mask).
    Spans tile [0, T) in order; a document never straddles two spans."""
    return rows_document_spans(doc_T[None], group)[0]


def rows_document_spans(doc_BT: torch.Tensor, group: int = DOC_GROUP) -> list[list[tuple[int, int, bool]]]:
    """`document_spans` of every row, from one host read of the document boundaries of the whole batch."""
    B, T = doc_BT.shape
    changes: list[list[int]] = [[] for _ in range(B)]
    for b, t in torch.nonzero(doc_BT[:, 1:] != doc_BT[:, :-1]).tolist():
        changes[b].append(t + 1)
    return [_spans_from_bounds([0, *c, T], group) for c in changes]


def _spans_from_bounds(bounds: list[int], group: int) -> list[tuple[int, int, bool]]:
    """Long documents (> group tokens) alone; runs of short ones grouped up to `group` tokens. Adjacent documents
    differ in id, so a group is one document exactly when one document went into it."""
    spans: list[tuple[int, int, bool]] = []
    start, n_docs = None, 0  # the open group of short documents
    for s, e in zip(bounds[:-1], bounds[1:]):
        if start is not None and e - start > group:
            spans.append((start, s, n_docs == 1))
            start = None
        if e - s > group:
            spans.append((s, e, True))
        elif start is None:
            start, n_docs = s, 1
        else:
            n_docs += 1
    if start is not None:
        spans.append((start, bounds[-1], n_docs == 1))
    return spans


def _documents_varlen(q_BHTD, k_BhSD, v_BhSD, *, doc_BT, scale, group: int = DOC_GROUP,
                      spans: Callable[[int], list] | None = None) -> torch.Tensor:
    """Causal attention within each document of packed rows, never across (see the module docstring)."""
    B, H, T, D = q_BHTD.shape
    gqa = H != k_BhSD.shape[1]
    rows = []
    for b in range(B):
        parts = []
        for s, e, single in (spans(b) if spans is not None else document_spans(doc_BT[b], group)):
            q, k, v = q_BHTD[b:b + 1, :, s:e], k_BhSD[b:b + 1, :, s:e], v_BhSD[b:b + 1, :, s:e]
            if single:
                parts.append(_sdpa(q, k, v, is_causal=e - s > 1, scale=scale, enable_gqa=gqa))
            else:
                d = doc_BT[b, s:e]
                idx = torch.arange(e - s, device=d.device)
                vis = (d[:, None] == d[None, :]) & (idx[:, None] >= idx[None, :])  # [span, span]
                parts.append(_sdpa(q, k, v, attn_mask=vis, scale=scale, enable_gqa=gqa))
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    return rows[0] if B == 1 else torch.cat(rows, dim=0)


def _local_blocked(q_BHTD, k_BhSD, v_BhSD, *, scale, window, key_valid_BS, doc_q_BT, doc_k_BS,
                   block=None) -> torch.Tensor:
    """Sliding-window attention in O(T x window): block b of C queries reads keys [off + bC - W + 1, off + bC + C)."""
    B, H, T, D = q_BHTD.shape
    h, S = k_BhSD.shape[1], k_BhSD.shape[2]
    W = window
    C = block or LOCAL_BLOCK
    L = C + W - 1
    nb = -(-T // C)
    off = S - T
    base = off - W + 1  # key index read by query 0's window start
    front = max(0, -base)
    start = base + front
    need = start + (nb - 1) * C + L
    back = max(0, need - (S + front))

    def windows(x_BhSD: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x_BhSD, (0, 0, front, back))[:, :, start:start + need]
        # unfold: [B, h, nb, D, L] (overlapping view) -> [B, nb, h, L, D] (one copy of ~T*(1+W/C) rows)
        return xp.unfold(2, L, C).permute(0, 2, 1, 4, 3)

    k_win = windows(k_BhSD)
    v_win = windows(v_BhSD)
    qp = F.pad(q_BHTD, (0, 0, 0, nb * C - T)).view(B, H, nb, C, D).transpose(1, 2)  # [B, nb, H, C, D]

    dev = q_BHTD.device
    i = torch.arange(C, device=dev)[:, None]
    l = torch.arange(L, device=dev)[None, :]
    band_CL = (l >= i) & (l <= i + W - 1)
    diag_CL = l == i + W - 1
    if key_valid_BS is None and doc_q_BT is None and front == 0:
        mask = band_CL  # the same band for every block: broadcast, nothing per block is materialised
    else:
        valid = torch.ones(B, S, dtype=torch.bool, device=dev) if key_valid_BS is None else key_valid_BS
        valid = F.pad(valid, (front, back), value=False)[:, start:start + need].unfold(1, L, C)  # [B, nb, L]
        mask = band_CL & valid[:, :, None, :]  # [B, nb, C, L]
        if doc_q_BT is not None:
            dk = F.pad(doc_k_BS, (front, back), value=-1)[:, start:start + need].unfold(1, L, C)  # [B, nb, L]
            dq = F.pad(doc_q_BT, (0, nb * C - T), value=-2).view(B, nb, C)
            mask = mask & (dq[:, :, :, None] == dk[:, :, None, :])
        mask = (mask | diag_CL)[:, :, None]  # [B, nb, 1, C, L]
    gqa = H != h
    out = _sdpa(
        qp.reshape(B * nb, H, C, D), k_win.reshape(B * nb, h, L, D), v_win.reshape(B * nb, h, L, D),
        attn_mask=mask if mask.dim() == 2 else mask.reshape(B * nb, 1, C, L), scale=scale, enable_gqa=gqa)
    out = out.view(B, nb, H, C, D).transpose(1, 2).reshape(B, H, nb * C, D)
    return out[:, :, :T]


class Attention(nn.Module):
    """QK-normed GQA attention block for layer `layer_idx` (the MTP layer passes layer_idx = num_hidden_layers)."""

    def __init__(self, config, layer_idx: int, sliding: bool, use_rope: bool) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.sliding = sliding
        self.window = config.sliding_window if sliding else None
        self.use_rope = use_rope
        self.scale = self.head_dim ** -0.5
        H = config.hidden_size
        self.q_proj = nn.Linear(H, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(H, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, H, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qk_norm = getattr(config, "qk_norm", True)  # off only in the QK-norm ablation (weights kept, unused)

    def forward(self, x_BTH: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                inputs: AttentionInputs, cache=None) -> torch.Tensor:
        B, T, _ = x_BTH.shape
        q = self.q_proj(x_BTH).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x_BTH).view(B, T, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v_proj(x_BTH).view(B, T, self.num_kv_heads, self.head_dim)
        if self.use_rope:
            cos, signed_sin = rope  # RotaryEmbedding.tables
            q, k = apply_rope_tables(q, cos, signed_sin), apply_rope_tables(k, cos, signed_sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, D]
        if cache is None:
            valid, doc_k = inputs.token_valid_BT, inputs.doc_ids_BT
        else:
            k, v, key_start = cache.update(self.layer_idx, k, v)
            if k.dtype != q.dtype:  # a cache may be kept in another dtype than the activations
                k, v = k.to(q.dtype), v.to(q.dtype)
            valid = cache.key_valid(self.layer_idx, key_start, k.shape[2])
            doc_k = None
        o = attend(q, k, v, scale=self.scale, window=self.window, key_valid_BS=valid,
                   doc_q_BT=inputs.doc_ids_BT, doc_k_BS=doc_k,
                   doc_spans=inputs.document_spans if inputs.doc_ids_BT is not None else None)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
