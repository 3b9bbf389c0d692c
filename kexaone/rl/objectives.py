"""The post-training objectives of K-EXAONE (SPEC.md section 5): AGAPO for RL, GROUPER for preference learning.

AGAPO (off-policy policy gradient with truncated importance sampling, no KL, no PPO clip):
    A_group_i  = r_i - 1/(G-1) sum_{j != i} r_j                      leave-one-out baseline within a group
    A_i        = (A_group_i - mean) / std                             over the kept entries of the batch
    loss       = -(1/N) sum_i (1/|o_i|) sum_t sg(min(rho_it, cap)) * A_i * log pi(o_it),  rho = pi / pi_rollout
Groups whose G rewards are all equal carry no signal; they are dropped *before* the batch statistics, since their
zeros would shrink the std and inflate every other advantage.

GROUPER (group-wise SimPER, no reference model):
    z_i = (r_i - mean) / std within the group,   A_i = 2 (z_i - min z) / (max z - min z) - 1  in [-1, 1]
    loss = -(1/N) sum_i A_i * exp((1/|o_i|) sum_t log pi(o_it))       exp(mean log-prob) = 1 / perplexity

Standard deviations are population ones (divide by the count). Log-probs are per response token, as
`kexaone.model.scoring.token_logprobs` gives them; `mask` marks the response tokens (|o_i| = its row sum).
What this module does not do: sample, score rewards or step an optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "agapo_advantages",
    "agapo_loss",
    "agapo_is_stats",
    "ISStats",
    "grouper_advantages",
    "grouper_loss",
    "EQUAL_REWARD_TOL",
]

EQUAL_REWARD_TOL = 1e-8  # a group with max - min below this is "all equal" (never test std == 0 on floats)


def _rewards_2d(rewards) -> torch.Tensor:
    r = torch.as_tensor(rewards)
    if r.ndim != 2:
        raise ValueError(f"rewards must have shape [P, G] (prompts x responses), got shape {tuple(r.shape)}")
    if r.shape[1] < 2:
        raise ValueError(f"a group needs at least 2 responses (G >= 2), got G = {r.shape[1]}")
    if not r.is_floating_point():
        r = r.to(torch.float32)
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN or infinity; every response needs a finite reward")
    return r


def _group_range(r64: torch.Tensor) -> torch.Tensor:
    return r64.amax(dim=1) - r64.amin(dim=1)  # [P]


def agapo_advantages(rewards) -> tuple[torch.Tensor, torch.Tensor]:
    """AGAPO advantages: rewards [P, G] -> (advantages [P, G], keep [P] bool).

    Leave-one-out within each group, zero-variance groups dropped (keep False, advantage 0), then standardised over
    the kept entries of the whole batch with the population std. With no kept group every advantage is 0.
    """
    r = _rewards_2d(rewards)
    r64 = r.to(torch.float64)  # the statistics in float64: rewards are few, precision is cheap
    G = r64.shape[1]
    loo = r64 - (r64.sum(dim=1, keepdim=True) - r64) / (G - 1)  # [P, G]
    keep = _group_range(r64) >= EQUAL_REWARD_TOL  # [P]
    advantages = torch.zeros_like(r64)
    if keep.any():
        kept = loo[keep]  # [P_kept, G]
        mean = kept.mean()
        std = kept.std(unbiased=False)
        advantages[keep] = (kept - mean) / (std if std > 0 else 1.0)
    return advantages.to(r.dtype), keep


def _check_tokens(name: str, x: torch.Tensor, shape: torch.Size) -> None:
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)} like logprobs [N, T], got {tuple(x.shape)}")


def _response_lengths(mask: torch.Tensor) -> torch.Tensor:
    # A row without response tokens contributes 0 (its sum is 0) instead of 0/0.
    return mask.sum(dim=1).clamp(min=1)


def agapo_loss(
    logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    is_cap: float = 2.0,
    *,
    normalize: Literal["sequence", "token"] = "sequence",
) -> torch.Tensor:
    """The AGAPO loss (a scalar to minimise).

    logprobs [N, T]: current policy per-token log-probs (with grad); rollout_logprobs [N, T]: those of the
    distribution the rollout engine sampled from; advantages [N]; mask [N, T]: 1 on response tokens.
        -(1/N) sum_i (1/|o_i|) sum_t sg(min(exp(logprobs - rollout_logprobs), is_cap)) * A_i * logprobs_it
    `normalize="token"` replaces the per-response mean by one mean over all response tokens of the batch (DAPO's
    token mean, which has no length bias); "sequence" is the report's equation and the default.
    """
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must have shape [N, T], got {tuple(logprobs.shape)}")
    _check_tokens("rollout_logprobs", rollout_logprobs, logprobs.shape)
    _check_tokens("mask", mask, logprobs.shape)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape [N] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if not is_cap > 0:
        raise ValueError(f"is_cap must be positive, got {is_cap!r}")
    if normalize not in ("sequence", "token"):
        raise ValueError(f"normalize must be 'sequence' or 'token', got {normalize!r}")
    m = mask.to(device=logprobs.device, dtype=torch.bool)
    # Zero the padding first: exp() of garbage there could be inf, and inf * 0 in the backward pass is NaN.
    lp = torch.where(m, logprobs, torch.zeros_like(logprobs))
    old = torch.where(m, rollout_logprobs.to(device=lp.device, dtype=lp.dtype), torch.zeros_like(lp))
    weight = torch.exp(lp.detach() - old).clamp(max=is_cap)  # sg(min(rho, cap)); 1 at padding
    per_token = weight * advantages.to(device=lp.device, dtype=lp.dtype)[:, None] * lp * m  # [N, T]
    if normalize == "token":
        return -per_token.sum() / m.sum().clamp(min=1)
    return -(per_token.sum(dim=1) / _response_lengths(m)).mean()


@dataclass(frozen=True)
class ISStats:
    """Importance-sampling statistics over the response tokens, for logging the trainer/engine mismatch.

    ratio_mean / ratio_max: of rho = pi / pi_rollout; truncated_frac: fraction of tokens with rho > cap;
    logp_diff_mean: mean of log pi - log pi_rollout; k3_kl: mean of (rho - 1) - log rho, an estimate of
    KL(pi_rollout || pi) from the rollout's samples; n_tokens: the number of response tokens."""

    ratio_mean: float
    ratio_max: float
    truncated_frac: float
    logp_diff_mean: float
    k3_kl: float
    n_tokens: int


def agapo_is_stats(
    logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor, is_cap: float = 2.0
) -> ISStats:
    """IS statistics for the same inputs as `agapo_loss` (no gradient)."""
    _check_tokens("rollout_logprobs", rollout_logprobs, logprobs.shape)
    _check_tokens("mask", mask, logprobs.shape)
    with torch.no_grad():
        m = mask.to(torch.bool)
        diff = (logprobs.to(torch.float64) - rollout_logprobs.to(torch.float64))[m]
        if diff.numel() == 0:
            return ISStats(1.0, 1.0, 0.0, 0.0, 0.0, 0)
        ratio = diff.exp()
        return ISStats(
            ratio_mean=ratio.mean().item(),
            ratio_max=ratio.max().item(),
            truncated_frac=(ratio > is_cap).double().mean().item(),
            logp_diff_mean=diff.mean().item(),
            k3_kl=((ratio - 1) - diff).mean().item(),
            n_tokens=int(diff.numel()),
        )


def grouper_advantages(rewards) -> torch.Tensor:
    """GROUPER advantages: rewards [P, G] -> [P, G] in [-1, 1]; a group whose rewards are all equal gets 0.

    z-scored within each group (population std), then min-max scaled to [-1, 1]: the best response of a group
    gets +1 and the worst -1, whatever the absolute gap.
    """
    r = _rewards_2d(rewards)
    r64 = r.to(torch.float64)
    varied = _group_range(r64) >= EQUAL_REWARD_TOL  # [P]
    std = r64.std(dim=1, unbiased=False, keepdim=True)
    z = (r64 - r64.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))
    z_min, z_max = z.amin(dim=1, keepdim=True), z.amax(dim=1, keepdim=True)
    span = torch.where(varied[:, None], z_max - z_min, torch.ones_like(z_max))
    advantages = torch.where(varied[:, None], 2 * (z - z_min) / span - 1, torch.zeros_like(z))
    return advantages.to(r.dtype)


def grouper_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The GROUPER loss: -(1/N) sum_i A_i * exp((1/|o_i|) sum_t logprobs_it) over response tokens (mask)."""
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must have shape [N, T], got {tuple(logprobs.shape)}")
    _check_tokens("mask", mask, logprobs.shape)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape [N] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    m = mask.to(device=logprobs.device, dtype=torch.bool)
    lp = torch.where(m, logprobs, torch.zeros_like(logprobs))
    mean_logp = lp.sum(dim=1) / _response_lengths(m)  # [N]; exp of it is the inverse perplexity
    return -(advantages.to(device=lp.device, dtype=lp.dtype) * mean_logp.exp()).mean()
