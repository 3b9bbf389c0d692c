"""The objective protocol of the trainer, and pre-training as one objective.

An objective says what to minimise on a micro-batch; the loop (`kexaone.train.trainer.Trainer`) does everything else
(accumulation, data parallelism, clipping, schedule, precision, checkpoints, resume). Its loss is a weighted sum of
*terms*, each a sum over some units (targets, sequences, completions...) divided by the number of those units in the
WHOLE optimizer step (all micro-batches, all ranks):

    loss = sum_k  weight_k * (sum over the step of term k) / (units of term k in the step)

so gradient accumulation and data parallelism give exactly the loss of one big batch. The protocol:

    class Objective:
        terms: tuple[Term, ...]                            # name, weight, and whether loss() gives a sum or a mean
        def denominators(self, batch) -> dict[str, float]  # units of each term in this micro-batch, before forward
        def loss(self, model, batch) -> tuple[dict[str, Tensor], dict[str, float]]
            # (value of each term on this micro-batch: its sum, or its mean when Term.mean; extra metrics)
        def uses_mtp(self, model) -> bool                  # False: the MTP block is idle (DDP is told so)

`denominators` is separate from `loss` because the trainer needs the step-wide totals (one all-reduce) before the
first backward: micro-batch i is backpropagated before micro-batch i+1 is run (a step total of 0 units is taken
as 1, so an empty term adds 0). `model` is the (possibly DDP/FSDP wrapped) model to call, e.g. through
`kexaone.model.scoring.token_logprobs(model, ids, mask, doc_ids)` for per-token log-probs; the trainer runs `loss`
under the precision's autocast. Extra metrics are logged as their mean over the step's micro-batches and ranks;
they are never differentiated. The single-term shape `loss(model, batch) -> (loss_sum, denominator, metrics)` is
`terms = (Term("loss"),)`, `denominators -> {"loss": n}`, `loss -> ({"loss": loss_sum}, metrics)`.

The trainer logs each term's step value (`sum / units`) under its name and `loss` = the weighted sum. Batch values
that are not tensors are dropped before `loss` sees the batch (put per-row data such as advantages in tensors).

A new objective is one small module (see `kexaone.train.masked_ce`). `PretrainObjective` is CE + w x MTP + c x aux,
with its weights resolved once from the model config (overridable: `resolve_weights`), the single source of the
loss weights of a run.

Batches (see `kexaone.train.trainer`): `input_ids`, `labels` [B, T] (-100 ignored), optionally `doc_ids` [B, T]
and `loss_mask` [B, T] (1 = the token at that position is a target; target-aligned like
`kexaone.model.scoring.token_logprobs`). `loss_targets(batch)` folds the mask into the labels for every objective.

Not here: the loop, the optimizer, MoE balancing (`kexaone.train.balancing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Term:
    """One summand of an objective's loss. `mean`: loss() returns the term's mean over this micro-batch's units
    (the trainer multiplies it back by their count) instead of their sum."""

    name: str
    weight: float = 1.0
    mean: bool = False


class Objective:
    """Base class of the objectives (see the module docstring for the protocol)."""

    name = "objective"
    terms: tuple[Term, ...] = ()

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        raise NotImplementedError

    def uses_mtp(self, model: torch.nn.Module) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        """What the run records in its config line: the objective's name and term weights."""
        return {"name": self.name, "weights": {t.name: t.weight for t in self.terms}}


# ---------------------------------------------------------------------------------------------- helpers
def loss_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The labels [B, T] with -100 wherever `loss_mask` (if the batch has one) is 0."""
    labels = batch["labels"]
    mask = batch.get("loss_mask")
    if mask is None:
        return labels
    if mask.shape != labels.shape:
        raise ValueError(f"loss_mask must have the shape of labels {tuple(labels.shape)}, got {tuple(mask.shape)}")
    return labels.masked_fill(mask == 0, IGNORE_INDEX)


def target_count(batch: dict[str, torch.Tensor], shift: int) -> int:
    """Targets the model scores at distance `shift` (1: next token, 2: the MTP token) in a micro-batch: labels not
    -100 (after the loss mask) and not across a document boundary."""
    from kexaone.model.mtp import shifted_targets

    return int((shifted_targets(loss_targets(batch), shift, batch.get("doc_ids")) != IGNORE_INDEX).sum())


def resolve_weights(model_config: Any, **overrides: float | None) -> dict[str, float]:
    """Loss weights of a run: each override that is not None, else the model config's value (K-EXAONE's defaults:
    mtp_loss_weight 0.05, aux_loss_coef 1e-4, bias_update_rate 1e-4). The one place they are decided."""
    return {k: float(v if v is not None else getattr(model_config, k)) for k, v in overrides.items()}


# ---------------------------------------------------------------------------------------------- pre-training
class PretrainObjective(Objective):
    """Next-token CE + mtp_weight x MTP CE + aux_coef x the sequence-wise aux loss (SPEC section 3).

    CE and MTP are means over every target of the step (they have different counts: MTP loses one more target per
    document); the aux loss is a mean over the step's sequences. MTP is neither run nor counted when its weight is
    0 or the model has no MTP block. A `loss_mask` in the batch restricts both CEs to the masked-in targets."""

    name = "pretrain"

    def __init__(self, mtp_weight: float, aux_coef: float, has_mtp: bool = True) -> None:
        if not (mtp_weight >= 0 and aux_coef >= 0):
            raise ValueError(f"loss weights must be >= 0, got mtp_weight={mtp_weight}, aux_coef={aux_coef}")
        self.mtp_weight, self.aux_coef = float(mtp_weight), float(aux_coef)
        self._mtp = has_mtp and self.mtp_weight > 0
        self.terms = (Term("ce", 1.0, mean=True),
                      *((Term("mtp", self.mtp_weight, mean=True),) if self._mtp else ()),
                      Term("aux", self.aux_coef, mean=True))

    @classmethod
    def for_model(cls, model: torch.nn.Module, mtp_loss_weight: float | None = None,
                  aux_loss_coef: float | None = None) -> "PretrainObjective":
        w = resolve_weights(model.config, mtp_loss_weight=mtp_loss_weight, aux_loss_coef=aux_loss_coef)
        return cls(w["mtp_loss_weight"], w["aux_loss_coef"], has_mtp=getattr(model, "mtp", None) is not None)

    def uses_mtp(self, model: torch.nn.Module) -> bool:
        return self._mtp

    def denominators(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        d = {"ce": float(target_count(batch, 1)), "aux": float(batch["input_ids"].shape[0])}
        if self._mtp:
            d["mtp"] = float(target_count(batch, 2))
        return d

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        out = model(batch["input_ids"], labels=loss_targets(batch), doc_ids=batch.get("doc_ids"),
                    compute_mtp=self._mtp)
        values = {"ce": out.ce_loss.float()}
        if self._mtp:
            values["mtp"] = out.mtp_loss.float()
        values["aux"] = (out.aux_loss if out.aux_loss is not None else out.ce_loss.new_zeros(())).float()
        return values, {}
