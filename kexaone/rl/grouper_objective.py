"""GROUPER (group-wise SimPER) as an objective of the shared trainer, for `kexaone pref`.

One term, `grouper`: on each micro-batch `kexaone.rl.grouper_loss` over its valid rows (a mean), weighted by the
trainer with the step's row count, so a step's loss is `grouper_loss` on all of its responses (tested). No
reference model; the batch's `rollout_logprobs` are not used. Metrics: the mean inverse perplexity
exp(mean log-prob) of the responses, the policy's entropy and the response length, plus `round_metrics`.
What this module does not do: sample, score or compute advantages.
"""

from __future__ import annotations

import torch

from kexaone.rl.objectives import grouper_loss
from kexaone.rl.policy_batch import policy_forward
from kexaone.train.objectives import Objective, Term


class GROUPERObjective(Objective):
    name = "grouper"

    def __init__(self) -> None:
        self.terms = (Term("grouper", 1.0, mean=True),)
        self.round_metrics: dict[str, float] = {}

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {"grouper": float(batch["valid"].sum())}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        lp, _, mask, entropy = policy_forward(model, batch)
        if lp.shape[0] == 0:
            return {"grouper": lp.sum() * 0.0}, dict(self.round_metrics)
        adv = batch["advantages"][batch["valid"] > 0]
        value = grouper_loss(lp, adv, mask)
        with torch.no_grad():
            inv_ppl = ((lp * mask).sum(1) / mask.sum(1).clamp(min=1)).exp().mean()
        return {"grouper": value}, {"inv_ppl": float(inv_ppl), "entropy": entropy,
                                    "response_len": float(mask.sum(dim=1).float().mean()), **self.round_metrics}
