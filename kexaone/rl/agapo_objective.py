"""AGAPO as an objective of the shared trainer (`kexaone.train.objectives` protocol), for `kexaone rl`.

One term, `agapo`: on each micro-batch the loss is `kexaone.rl.agapo_loss` over its valid rows (a mean over them);
the trainer weighs each micro-batch by its row count over the whole step, so a step's loss is exactly `agapo_loss`
on all of its responses at once (tested). Metrics per micro-batch: the importance-sampling statistics
(`agapo_is_stats`: ratio mean/max, truncated fraction, k3 KL), the policy's entropy on response tokens, the mean
response length, and whatever the rollout round publishes (`round_metrics`: rewards, pass rate, filtered groups,
throughput), logged with every step.
What this module does not do: sample, compute advantages (kexaone.rl.objectives) or freeze the router (the
trainer's `router_frozen` switch, which `kexaone rl` always sets).
"""

from __future__ import annotations

from typing import Any

import torch

from kexaone.rl.objectives import agapo_is_stats, agapo_loss
from kexaone.rl.policy_batch import policy_forward
from kexaone.train.objectives import Objective, Term


class AGAPOObjective(Objective):
    name = "agapo"

    def __init__(self, is_cap: float = 2.0, normalize: str = "sequence") -> None:
        if not is_cap > 0:
            raise ValueError(f"--is-cap must be > 0, got {is_cap!r}")
        self.is_cap, self.normalize = float(is_cap), normalize
        self.terms = (Term("agapo", 1.0, mean=True),)
        self.round_metrics: dict[str, float] = {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "is_cap": self.is_cap, "normalize": self.normalize}

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"agapo": float(batch["valid"].sum())}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        lp, old, mask, entropy = policy_forward(model, batch)
        if lp.shape[0] == 0:  # a filler micro-batch: zero loss, still connected to the graph
            return {"agapo": lp.sum() * 0.0}, dict(self.round_metrics)
        adv = batch["advantages"][batch["valid"] > 0]
        value = agapo_loss(lp, old, adv, mask, self.is_cap, normalize=self.normalize)
        st = agapo_is_stats(lp, old, mask, self.is_cap)
        metrics = {"is_ratio_mean": st.ratio_mean, "is_ratio_max": st.ratio_max,
                   "is_truncated_frac": st.truncated_frac, "is_k3_kl": st.k3_kl, "entropy": entropy,
                   "response_len": float(mask.sum(dim=1).float().mean()), **self.round_metrics}
        return {"agapo": value}, metrics
