"""Policy-gradient micro-batches: rollouts turned into the tensors the AGAPO / GROUPER trainer objectives read, and
the one forward both objectives share.

A batch (every tensor has B rows; T = the longest prompt + response of the micro-batch, right-padded):
    input_ids [B, T] int64   prompt + response, padded with the tokenizer's pad id
    labels    [B, T] int64   input_ids on response tokens, -100 elsewhere (the trainer's batch convention)
    loss_mask [B, T] float   1 on response tokens (target-aligned: position t scores token t)
    rollout_logprobs [B, T]  log-prob of each response token under the distribution it was sampled from
    advantages [B] float32   one per response
    valid     [B] float32    1 = a real response, 0 = a filler row (a micro-batch the step has no rows for)
Filler rows exist because the trainer runs a fixed number of micro-batches per step while zero-variance filtering
changes how many responses a step keeps; they are never counted and carry no gradient.
What this module does not do: sample, score or compute advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Sample", "make_microbatches", "policy_forward"]


@dataclass
class Sample:
    """One response to train on: prompt and response token ids, the rollout's per-token log-probs, its
    advantage."""

    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    advantage: float


def _rows_to_batch(samples: Sequence[Sample], pad_id: int, n_fill: int) -> dict[str, torch.Tensor]:
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples] or [2]
    T = max(max(lengths), 2)
    B = len(samples) + n_fill
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T)
    old = torch.zeros(B, T)
    adv = torch.zeros(B)
    valid = torch.zeros(B)
    for b, s in enumerate(samples):
        P, R = len(s.prompt_ids), len(s.response_ids)
        if len(s.rollout_logprobs) != R:
            raise ValueError(f"a response has {R} tokens but {len(s.rollout_logprobs)} rollout log-probs")
        ids[b, :P + R] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        mask[b, P:P + R] = 1.0
        old[b, P:P + R] = torch.tensor(s.rollout_logprobs, dtype=torch.float32)
        adv[b] = float(s.advantage)
        valid[b] = 1.0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "labels": labels, "loss_mask": mask, "rollout_logprobs": old, "advantages": adv,
            "valid": valid}


def make_microbatches(samples: Sequence[Sample], n_micro: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Exactly `n_micro` micro-batches holding `samples` in order (sizes differ by at most one); a micro-batch left
    without samples gets one filler row (valid 0)."""
    if n_micro < 1:
        raise ValueError(f"n_micro must be >= 1, got {n_micro}")
    out = []
    per, extra = divmod(len(samples), n_micro)
    start = 0
    for i in range(n_micro):
        size = per + (1 if i < extra else 0)
        chunk = list(samples[start:start + size])
        start += size
        out.append(_rows_to_batch(chunk, pad_id, n_fill=0 if chunk else 1))
    return out


def policy_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(log-probs [N, T] with grad, rollout log-probs [N, T], mask [N, T], mean entropy of the response positions)
    of the batch's valid rows. The log-probs are `kexaone.model.scoring.token_logprobs` (one forward, from which
    the entropy of the policy at each response position is also read, without grad)."""
    from kexaone.model.scoring import logprobs_from_logits

    keep = batch["valid"] > 0
    # The forward runs on every row (a filler row keeps a micro-batch non-empty), the loss reads the valid ones.
    logits = model(batch["input_ids"], compute_mtp=False).logits[keep]  # [N, T, V]
    ids = batch["input_ids"][keep]
    mask = batch["loss_mask"][keep]
    lp = logprobs_from_logits(logits, ids, mask)
    if ids.shape[0] == 0:  # no valid row: keep the (zero) loss attached to the graph so backward() works
        lp = lp + logits.sum() * 0.0
    with torch.no_grad():
        # position t-1's distribution is the one that scored token t
        m = mask[:, 1:].to(torch.bool)
        ent_sum, count = 0.0, int(m.sum())
        for b in range(ids.shape[0]):
            if m[b].any():
                row = torch.log_softmax(logits[b, :-1][m[b]].float(), dim=-1)
                ent_sum += float(-(row.exp() * row).sum())
        entropy = ent_sum / max(count, 1)
    return lp, batch["rollout_logprobs"][keep], mask, entropy
