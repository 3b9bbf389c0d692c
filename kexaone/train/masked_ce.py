"""Masked cross-entropy: next-token CE only where the batch's `loss_mask` is 1 (SFT trains on the assistant's
tokens, not on the prompt), a mean over every masked-in target of the step.

This module is the example of the objective protocol (`kexaone.train.objectives`): a new loss is a class with
`terms`, `denominators` and `loss`, passed as `Trainer(..., objective=MaskedCEObjective())`; the loop is untouched.
It does not run the MTP block nor add the MoE aux loss (the expert-bias balancing still runs unless the router is
frozen).
"""

from __future__ import annotations

import torch

from kexaone.train.objectives import Objective, Term, loss_targets, target_count


class MaskedCEObjective(Objective):
    name = "masked_ce"
    terms = (Term("ce"),)

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if "loss_mask" not in batch:
            raise ValueError("the masked-CE objective needs batches with a `loss_mask` [B, T] (1 = train on it)")
        return {"ce": float(target_count(batch, 1))}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        out = model(batch["input_ids"], labels=loss_targets(batch), doc_ids=batch.get("doc_ids"), compute_mtp=False)
        n = target_count(batch, 1)
        return {"ce": out.ce_loss.float() * n}, {"masked_fraction": 1.0 - n / max(1, batch["labels"].numel())}
