"""Sampling: per-request parameters, logits -> probabilities (temperature, top-k, top-p), and draws.

Every request in a batch may carry its own temperature, top-p, top-k and seed, so the functions here take
per-row parameters. Draws go through inverse-CDF sampling on uniforms taken from a per-row `torch.Generator`:
a seeded request gives the same tokens whatever else shares its batch.

This module does not run the model and knows nothing of caches or tokenizers (see engine.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

# Largest number of tokens one request may ask for; guards against typos like 10**12 that would never end.
MAX_NEW_TOKENS_LIMIT = 1 << 20

# Top-k/top-p truncation first looks at this many best tokens per row (`torch.topk`) and sorts the whole
# vocabulary only of the rows whose cut may lie beyond them. A trained model's distribution puts top-p's mass in a
# few dozen tokens, and the full sort is what costs: [8, 8192] logits took ~6 ms per decode step on this project's
# 2-core CPU, a fifth of a batch-8 step of the `small` preset.
TRUNCATION_PREFIX = 256


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    temperature 0 means greedy (argmax); otherwise logits are divided by the temperature, then top-k (0 = off)
    and top-p (1.0 = off) truncate the distribution, in that order (the order transformers uses). The defaults
    are K-EXAONE's recommended temperature 1.0 and top-p 0.95.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    """Stop strings: generation ends before the first occurrence of any of them (it is not part of the text)."""
    stop_token_ids: tuple[int, ...] | None = None
    """Token ids that end generation; None = the tokenizer's end-of-turn token (and the config's eos)."""
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = False
    """Drop special tokens from `.text`. Off by default: the chat parser needs `<think>` and `<tool_call>`."""
    logits_processor: Callable | None = field(default=None, compare=False)
    """This request's own `(generated_ids, logits_V) -> logits_V`, applied after the engine's processors (e.g.
    constrained tool calls, kexaone.engine.constrained). It may keep per-request state; it must be a function of
    the history it is given (drafts and re-scoring call it on other histories)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or not 0 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be an integer in [0, {MAX_NEW_TOKENS_LIMIT}], "
                             f"got {self.max_new_tokens!r}")
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not (0 < p <= 1):
            raise ValueError(f"top_p must be a number in (0, 1], got {p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        stop = tuple(stop)
        if any(not isinstance(s, str) or not s for s in stop):
            raise ValueError(f"stop must be non-empty strings, got {list(stop)!r}")
        object.__setattr__(self, "stop", stop)
        if self.stop_token_ids is not None:
            ids = tuple(self.stop_token_ids)
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in ids):
                raise ValueError(f"stop_token_ids must be non-negative integers, got {list(ids)!r}")
            object.__setattr__(self, "stop_token_ids", ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one request: seeded when asked, otherwise from fresh OS entropy (never global state)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed % (1 << 63))
    return g


@dataclass
class BatchSampling:
    """Per-row sampling parameters of a batch, as tensors, plus one generator per row."""

    temperature_B: torch.Tensor  # float32
    top_p_B: torch.Tensor  # float32
    top_k_B: torch.Tensor  # int64, 0 = off
    generators: list[torch.Generator]
    processors: list | None = None
    """Per row: the request's own logits processor or None (None for the whole list when no row has one)."""

    @classmethod
    def from_params(cls, params: Sequence[SamplingParams], device: torch.device | str = "cpu") -> "BatchSampling":
        return cls(
            temperature_B=torch.tensor([float(p.temperature) for p in params], dtype=torch.float32, device=device),
            top_p_B=torch.tensor([float(p.top_p) for p in params], dtype=torch.float32, device=device),
            top_k_B=torch.tensor([int(p.top_k) for p in params], dtype=torch.int64, device=device),
            generators=[make_generator(p.seed, device="cpu") for p in params],
            processors=_processors([p.logits_processor for p in params]),
        )

    @property
    def greedy_B(self) -> torch.Tensor:
        return self.temperature_B == 0

    @property
    def all_greedy(self) -> bool:
        return bool(self.greedy_B.all())

    @classmethod
    def cat(cls, parts: Sequence["BatchSampling"]) -> "BatchSampling":
        return cls(torch.cat([p.temperature_B for p in parts]), torch.cat([p.top_p_B for p in parts]),
                   torch.cat([p.top_k_B for p in parts]), [g for p in parts for g in p.generators],
                   _processors([x for p in parts for x in p.row_processors()]))

    def select(self, rows: torch.Tensor) -> "BatchSampling":
        idx = rows.tolist()
        procs = self.row_processors()
        return BatchSampling(self.temperature_B[rows], self.top_p_B[rows], self.top_k_B[rows],
                             [self.generators[i] for i in idx], _processors([procs[i] for i in idx]))

    def row_processors(self) -> list:
        return list(self.processors) if self.processors is not None else [None] * len(self.generators)

    def uniform(self, n: int = 1) -> torch.Tensor:
        """[B, n] float64 uniforms in (0, 1], row r drawn from row r's generator."""
        u = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) for g in self.generators])
        return 1.0 - u  # (0, 1]: a zero-probability token can never be hit by inverse-CDF sampling


def _processors(procs: list) -> list | None:
    return procs if any(p is not None for p in procs) else None


def logits_to_probs(logits_BV: torch.Tensor, sampling: BatchSampling) -> torch.Tensor:
    """The distribution each row samples from, float32 [B, V].

    Greedy rows get a one-hot at the argmax (so speculative acceptance and sampling need no special case);
    other rows get softmax(logits / T) truncated by top-k then top-p and renormalised.
    """
    logits_BV = logits_BV.float()
    B, V = logits_BV.shape
    greedy_B = sampling.greedy_B.to(logits_BV.device)
    probs_BV = torch.empty_like(logits_BV)
    if bool(greedy_B.any()):
        onehot = torch.zeros_like(logits_BV)
        onehot.scatter_(1, logits_BV.argmax(dim=-1, keepdim=True), 1.0)
        probs_BV[greedy_B] = onehot[greedy_B]
    if bool(greedy_B.all()):
        return probs_BV
    rows = (~greedy_B).nonzero().squeeze(1)
    x_RV = logits_BV[rows] / sampling.temperature_B.to(logits_BV.device)[rows].unsqueeze(1)
    top_k_R = sampling.top_k_B.to(logits_BV.device)[rows]
    top_p_R = sampling.top_p_B.to(logits_BV.device)[rows]
    need_k = bool(((top_k_R > 0) & (top_k_R < V)).any())
    need_p = bool((top_p_R < 1).any())
    if need_k or need_p:
        prefix = _prefix_truncation(x_RV, top_k_R, top_p_R) if V > TRUNCATION_PREFIX else None
        if prefix is None:
            mask_RV = _sorted_truncation(x_RV, top_k_R, top_p_R, need_k, need_p)
        else:
            mask_RV, decided_R = prefix
            if not bool(decided_R.all()):  # rows whose cut may lie beyond the prefix: sort those rows
                rest = (~decided_R).nonzero().squeeze(1)
                mask_RV[rest] = _sorted_truncation(x_RV[rest], top_k_R[rest], top_p_R[rest], need_k, need_p)
        x_RV = x_RV.masked_fill(~mask_RV, -math.inf)
    probs_BV[rows] = torch.softmax(x_RV, dim=-1)
    return probs_BV


def _prefix_truncation(x_RV: torch.Tensor, top_k_R: torch.Tensor,
                       top_p_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tokens top-k then top-p keep, read from each row's TRUNCATION_PREFIX best tokens: ([R, V] bool mask,
    [R] bool rows whose cut the prefix decides; the mask of any other row is not valid), or None when no row's can
    be. The same rule as `_sorted_truncation` (a token is kept when the mass of the tokens before it is below
    top_p), with the probabilities as exp(logit - logsumexp) instead of a softmax of the sorted row: equal up to
    the last bit of rounding."""
    V = x_RV.shape[1]
    n = TRUNCATION_PREFIX
    k_R = _effective_top_k(top_k_R, V)
    k_inside_R = k_R <= n
    untouched_R = (k_R >= V) & (top_p_R >= 1)  # neither cut applies to this row
    row_lse_R = torch.logsumexp(x_RV, dim=-1)
    # The prefix holds at most n x the largest probability: a row below top_p even so (a near-flat distribution,
    # e.g. a model with random weights) cannot be decided by it, and when no row can, topk is not worth running.
    maybe_R = untouched_R | k_inside_R | (n * torch.exp(x_RV.amax(dim=-1) - row_lse_R) >= top_p_R)
    if not bool(maybe_R.any()):
        return None
    vals_Rn, idx_Rn = torch.topk(x_RV, n, dim=-1)  # sorted, best first
    in_k_Rn = torch.arange(n, device=x_RV.device).unsqueeze(0) < k_R.unsqueeze(1)
    # top-p normalises over what top-k kept: the prefix's first k tokens, or the whole row when top-k is off
    lse_R = torch.where(k_inside_R, torch.logsumexp(vals_Rn.masked_fill(~in_k_Rn, -math.inf), dim=-1), row_lse_R)
    p_Rn = torch.exp(vals_Rn - lse_R.unsqueeze(1)).masked_fill(~in_k_Rn, 0.0)
    keep_Rn = in_k_Rn & ((p_Rn.cumsum(dim=-1) - p_Rn < top_p_R.unsqueeze(1)) | (top_p_R >= 1).unsqueeze(1))
    decided_R = untouched_R | k_inside_R | (p_Rn.sum(dim=-1) >= top_p_R)
    mask_RV = torch.zeros_like(x_RV, dtype=torch.bool).scatter_(1, idx_Rn, keep_Rn)
    mask_RV[untouched_R] = True
    return mask_RV, decided_R


def _effective_top_k(top_k_R: torch.Tensor, V: int) -> torch.Tensor:
    """[R] tokens top-k keeps per row: top_k, or the whole vocabulary V where top-k is off (0) or reaches it."""
    return torch.where((top_k_R > 0) & (top_k_R < V), top_k_R, torch.full_like(top_k_R, V))


def _sorted_truncation(x_RV: torch.Tensor, top_k_R: torch.Tensor, top_p_R: torch.Tensor, need_k: bool,
                       need_p: bool) -> torch.Tensor:
    """[R, V] bool: the tokens top-k then top-p keep, from a sort of the whole row."""
    V = x_RV.shape[1]
    sorted_RV, order_RV = torch.sort(x_RV, dim=-1, descending=True)
    keep_RV = torch.ones_like(sorted_RV, dtype=torch.bool)
    if need_k:
        rank_V = torch.arange(V, device=x_RV.device)
        keep_RV &= rank_V.unsqueeze(0) < _effective_top_k(top_k_R, V).unsqueeze(1)
    if need_p:
        p_sorted = torch.softmax(sorted_RV.masked_fill(~keep_RV, -math.inf), dim=-1)
        # Keep a token when the mass strictly before it is below top_p: the smallest prefix reaching top_p,
        # and never an empty set (the first token has zero mass before it).
        mass_before = p_sorted.cumsum(dim=-1) - p_sorted
        # (rows with top-p off keep everything: their running sum can round up to 1.0 before the tail ends)
        keep_RV &= (mass_before < top_p_R.unsqueeze(1)) | (top_p_R >= 1).unsqueeze(1)
    return torch.zeros_like(keep_RV).scatter(1, order_RV, keep_RV)


def sample_from_probs(probs_BV: torch.Tensor, sampling: BatchSampling) -> torch.Tensor:
    """One token per row [B] int64: argmax for greedy rows, inverse-CDF draw from the row's generator otherwise."""
    out_B = probs_BV.argmax(dim=-1)
    greedy_B = sampling.greedy_B.to(probs_BV.device)
    if bool(greedy_B.all()):
        return out_B
    u_B = sampling.uniform(1).squeeze(1).to(probs_BV.device)
    drawn_B = draw_inverse_cdf(probs_BV, u_B)
    return torch.where(greedy_B, out_B, drawn_B)


def draw_inverse_cdf(weights_BV: torch.Tensor, u_B: torch.Tensor) -> torch.Tensor:
    """Index i of each row with cdf[i-1] < u * total <= cdf[i] (weights need not be normalised). u in (0, 1]."""
    cdf_BV = weights_BV.double().cumsum(dim=-1)
    target_B1 = (u_B.double() * cdf_BV[:, -1]).unsqueeze(1)
    idx_B = torch.searchsorted(cdf_BV, target_B1).squeeze(1)
    return idx_B.clamp_(max=weights_BV.shape[1] - 1)
