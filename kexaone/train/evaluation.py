"""Held-out evaluation data and its scoring for the training loop: a fixed `EvalSet` of whole documents built
from token shards, and the summed negative log-likelihood of its batches through the one scoring primitive
(kexaone.model.scoring.token_logprobs). Bits per byte is then `scoring.bits_per_byte(nats, eval_set.n_bytes)`,
the same definition as kexaone.eval.heldout.

Not here: sharding the batches over ranks and all-reducing the sums (the Trainer does it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

@dataclass
class EvalSet:
    """Fixed held-out micro-batches of whole documents, the number of tokens they score and the UTF-8 bytes of
    those documents: bits per byte = summed nats / ln 2 / n_bytes (kexaone.model.scoring.bits_per_byte)."""

    batches: list[dict[str, torch.Tensor]]
    n_tokens: int
    n_bytes: int

    def __len__(self) -> int:
        return len(self.batches)


def eval_set_from_shards(sources: Sequence[tuple[Any, Any]], seq_len: int, batch_size: int,
                         max_rows: int) -> EvalSet | None:
    """Held-out batches from (TokenShards, document indices) pairs: whole documents, each scored as
    `[eot, t1 .. tn]` (the text's own tokens, as kexaone.eval.heldout does) and cut into rows of seq_len (one
    document per row, padding labelled -100, see kexaone.data.packing.iter_document_batches). Documents are taken
    one at a time round-robin over the sources, each only if all its rows still fit in max_rows (the first always
    does), until max_rows or the documents run out; then the rows are grouped into batches of batch_size. The rows do not depend on batch_size, so runs with different
    per-rank batches evaluate on the same text. None when there is no held-out document."""
    import numpy as np

    from kexaone.data.packing import iter_document_batches

    queues = [(shards, [int(d) for d in np.asarray(idx, dtype=np.int64)]) for shards, idx in sources]
    queues = [q for q in queues if q[1]]
    rows: list[dict[str, torch.Tensor]] = []
    n_tok = n_bytes = 0
    while queues and len(rows) < max_rows:
        for q in list(queues):
            shards, docs = q
            d = docs.pop(0)
            if not docs:
                queues.remove(q)
            doc_rows = list(iter_document_batches(shards, [d], seq_len, 1, close_with_eot=False))
            if rows and len(rows) + len(doc_rows) > max_rows:
                continue  # does not fit in the rows left: a later, shorter document may
            rows += doc_rows
            n_tok += int(shards.doc_lengths()[d])
            n_bytes += int(shards.doc_bytes[d])
    if not rows:
        return None
    batches = [{k: torch.cat([r[k] for r in rows[i:i + batch_size]]) for k in ("input_ids", "labels", "doc_ids")}
               for i in range(0, len(rows), batch_size)]
    return EvalSet(batches, n_tok, n_bytes)


@torch.no_grad()
def heldout_nats(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: torch.device,
                 autocast: Callable[[], Any]) -> tuple[float, int]:
    """(summed negative log-prob in nats, number of scored tokens) of `batches` (labels != -100 are scored)."""
    from kexaone.model.scoring import token_logprobs

    nats, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        scored = batch["labels"] != -100
        with autocast():
            lp = token_logprobs(model, batch["input_ids"], mask=scored, doc_ids=batch.get("doc_ids"))
        nats -= float(lp.sum())
        count += int(scored[:, 1:].sum())
    return nats, count
