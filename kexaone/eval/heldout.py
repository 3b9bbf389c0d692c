"""Held-out language-modelling evaluation: mean loss (nats per token) and bits per byte, per group of documents.

Bits per byte (kexaone.model.scoring.bits_per_byte: total cross-entropy in bits over the UTF-8 bytes of the text,
the same definition as the trainer's held-out evaluation) is what compares models with different tokenizers: a tokenizer that packs more bytes into each token lowers neither it nor raises it. Each
document is scored on its own, as pre-training sees it: `<|endoftext|>` then the document's tokens, every token of
the document predicted exactly once. Documents longer than `seq_len` are cut into consecutive windows (the context
restarts at each window), which only makes long documents look slightly harder.

This module does not choose the documents: callers pass groups keyed by (domain, language).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from kexaone.model.scoring import bits_per_byte, token_logprobs


@dataclass
class HeldoutResult:
    domain: str
    language: str
    documents: int
    tokens: int
    """Tokens predicted (document tokens, the leading separator excluded)."""
    bytes: int
    """UTF-8 bytes of the documents."""
    loss: float
    """Mean cross-entropy in nats per predicted token."""
    bits_per_byte: float

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(1, self.tokens)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bytes_per_token"] = self.bytes_per_token
        return d


def _windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """Cut [sep, t1..tn] into pieces of at most seq_len+1 tokens that overlap by one token, so that every
    t_i is a target exactly once (input = piece[:-1], target = piece[1:])."""
    out = []
    start = 0
    while start < len(ids) - 1:
        out.append(ids[start:start + seq_len + 1])
        start += seq_len
    return out


@torch.inference_mode()
def sequence_nll(model: torch.nn.Module, pieces: Sequence[Sequence[int]], pad_id: int, batch_size: int = 8,
                 device: str | torch.device = "cpu") -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, number of targets) for each piece, where piece[1:] is predicted
    from its prefix (kexaone.model.scoring.token_logprobs). Pieces are right-padded into batches: with causal
    attention the padding after a row's last real token is never seen by that row's real positions, and it is
    masked out of the score."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pieces)
    # Longest first keeps batches of similar length (less padding); results are put back in order.
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        width = max(len(pieces[i]) for i in idx)
        ids_BT = torch.full((len(idx), width), pad_id, dtype=torch.long)
        real_BT = torch.zeros(len(idx), width, dtype=torch.bool)
        for row, i in enumerate(idx):
            ids_BT[row, :len(pieces[i])] = torch.tensor(pieces[i], dtype=torch.long)
            real_BT[row, :len(pieces[i])] = True
        logp_BT = token_logprobs(model, ids_BT.to(device), mask=real_BT.to(device))
        for row, i in enumerate(idx):
            results[i] = (-float(logp_BT[row].sum()), len(pieces[i]) - 1)
    return results


def evaluate_heldout(model: torch.nn.Module, tokenizer, groups: Mapping[tuple[str, str], Iterable[str]],
                     seq_len: int, batch_size: int = 8, device: str | torch.device = "cpu") -> list[HeldoutResult]:
    """Loss and bits per byte of `model` on each (domain, language) group of documents."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    was_training = model.training
    model.eval()
    try:
        results = []
        for (domain, language), docs in groups.items():
            docs = [d for d in docs if d]
            if not docs:
                raise ValueError(f"held-out group ({domain!r}, {language!r}) has no non-empty documents")
            pieces: list[list[int]] = []
            for ids in tokenizer.encode_batch(docs):
                pieces.extend(_windows([tokenizer.eot_id] + list(ids), seq_len))
            scored = sequence_nll(model, pieces, tokenizer.pad_id, batch_size=batch_size, device=device)
            nll = sum(s for s, _ in scored)
            tokens = sum(n for _, n in scored)
            nbytes = sum(len(d.encode("utf-8")) for d in docs)
            results.append(HeldoutResult(
                domain=domain, language=language, documents=len(docs), tokens=tokens, bytes=nbytes,
                loss=nll / max(1, tokens), bits_per_byte=bits_per_byte(nll, nbytes)))
        return results
    finally:
        model.train(was_training)
