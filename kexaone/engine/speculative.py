"""Speculative-sampling acceptance: which drafted tokens the main model keeps, and the token that follows them.

The rule of Leviathan et al. / Chen et al. (2023): draft token d_j (drawn from the draft distribution q_j) is
accepted with probability min(1, p_j(d_j) / q_j(d_j)), where p_j is the main model's distribution at that
position; at the first rejection the next token is drawn from max(0, p_j - q_j) renormalised; when every draft
is accepted a bonus token is drawn from p_{K}. Each emitted token is then distributed exactly as the main model's
p, whatever q is. With greedy rows p and q are one-hots, so a draft is accepted iff it equals the main model's
argmax and the correction is that argmax: the output is token for token the plain greedy output.

This module is pure tensor arithmetic: drafting with the MTP head and the cache bookkeeping live in engine.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kexaone.engine.sampling import BatchSampling, draw_inverse_cdf


@dataclass
class Verdict:
    accepted_B: torch.Tensor
    """int64 [B]: drafts accepted per row (0..K), counting from the first."""
    next_B: torch.Tensor
    """int64 [B]: the token after the accepted drafts (residual draw on rejection, bonus draw when all accepted)."""


def verify(draft_ids_BK: torch.Tensor, draft_probs_BKV: torch.Tensor, target_probs_BKV1: torch.Tensor,
           sampling: BatchSampling) -> Verdict:
    """Apply the acceptance rule to K drafted tokens per row.

    draft_ids_BK: the drafted tokens; draft_probs_BKV: q_j, the distribution each was drawn from;
    target_probs_BKV1: [B, K+1, V] the main model's p at the K draft positions and one past them.
    Uses K+1 uniforms per row from the row's generator on every call (a fixed count, so seeded runs repeat).
    """
    B, K = draft_ids_BK.shape
    assert target_probs_BKV1.shape[:2] == (B, K + 1), (target_probs_BKV1.shape, (B, K + 1))
    u_BK1 = sampling.uniform(K + 1).to(draft_probs_BKV.device)
    idx_BK1 = draft_ids_BK.unsqueeze(-1)
    q_BK = draft_probs_BKV.gather(-1, idx_BK1).squeeze(-1).double()
    p_BK = target_probs_BKV1[:, :K].gather(-1, idx_BK1).squeeze(-1).double()
    # accept iff u <= p/q, written without a division (q can be 0 only for a token that was never drawn)
    ok_BK = u_BK1[:, :K] * q_BK <= p_BK
    accepted_B = ok_BK.long().cumprod(dim=1).sum(dim=1)

    # The distribution of the token after the accepted prefix: residual at the first rejection, p_K otherwise.
    rows_B = torch.arange(B, device=draft_ids_BK.device)
    p_next_BV = target_probs_BKV1[rows_B, accepted_B].double()
    q_pad_BKV1 = torch.cat([draft_probs_BKV, torch.zeros_like(draft_probs_BKV[:, :1])], dim=1)
    q_next_BV = q_pad_BKV1[rows_B, accepted_B].double()
    resid_BV = (p_next_BV - q_next_BV).clamp_(min=0.0)
    # A rejection implies p(d) < q(d), hence mass elsewhere; the guard only catches rounding to all zeros.
    empty_B = resid_BV.sum(dim=-1) <= 0
    resid_BV[empty_B] = p_next_BV[empty_B]
    next_B = draw_inverse_cdf(resid_BV, u_BK1[:, K])
    greedy_B = sampling.greedy_B.to(next_B.device)
    next_B = torch.where(greedy_B, p_next_BV.argmax(dim=-1), next_B)
    return Verdict(accepted_B=accepted_B, next_B=next_B)
