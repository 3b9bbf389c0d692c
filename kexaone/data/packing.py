"""Packing tokenized documents into fixed-length training rows: weighted mixtures, rank sharding, exact resume.

Each source is read as an endless *stream*: its training documents in a seeded random order (a new order every
epoch), each followed by `eot_id`. A row is the next `seq_len` tokens of one source's stream, so nothing is padded
and no token is thrown away; rows start and end mid-document. `doc_ids` number the documents inside each row
(0, 1, ...): the id changes exactly at the token after an inserted `eot_id`, so the model can keep attention and the
MTP target inside a document.

Sampling is defined on the *global* batch: at step s, row j of the global batch comes from source
`choice(seed, s)[j]` (weighted) and takes that source's next window. Rank r of w yields rows r, r+w, r+2w, ...
Every rank replays the (cheap) choices of all rows, so the union over ranks is exactly the single-process global
batch, and the state (step + one window counter per source) is the same on every rank: a run can resume on a
different number of ranks with the same global batch.

This module does not tokenize (kexaone.data.shards) nor schedule stages (kexaone.data.curriculum).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kexaone.data.shards import TokenShards

STATE_VERSION = 1
_MIX_SALT = 0x6D1C  # separates the RNG streams of source choice and document order
_ORDER_SALT = 0x0D0C


@dataclass
class PackedRow:
    """One row before batching: tokens and per-token document index, both int64 [T], and the loss mask (int64 [T],
    1 = train on the token) when the source stores one."""

    input_ids: np.ndarray
    doc_ids: np.ndarray
    loss_mask: np.ndarray | None = None


def eot_mask(doc_mask: np.ndarray) -> int:
    """Loss-mask value of the eot appended after a document: trained when the document's last token is (an answer
    that ends the document also teaches the model to stop), not after a masked-out tail."""
    return int(doc_mask[-1]) if len(doc_mask) else 0


def stack_rows(rows: Sequence[PackedRow], with_mask: bool) -> dict[str, torch.Tensor]:
    """A batch dict from equal-length rows: input_ids, labels (= input_ids), doc_ids, and loss_mask when asked
    (ones for rows of a source without a mask)."""
    input_ids = torch.from_numpy(np.stack([r.input_ids for r in rows]))
    out = {"input_ids": input_ids, "labels": input_ids.clone(),
           "doc_ids": torch.from_numpy(np.stack([r.doc_ids for r in rows]))}
    if with_mask:
        out["loss_mask"] = torch.from_numpy(np.stack([
            r.loss_mask if r.loss_mask is not None else np.ones_like(r.input_ids) for r in rows]))
    return out


class SourceStream:
    """The endless token stream of one source: documents (a subset, e.g. the training split) in a per-epoch seeded
    order, each followed by eot. `window(k, T)` returns stream tokens [k*T, (k+1)*T) and the document boundaries."""

    def __init__(self, shards: TokenShards, doc_indices: np.ndarray, seed: int, salt: int):
        if len(doc_indices) == 0:
            raise ValueError(f"source {shards.path} has no training document left (all held out?)")
        self.shards = shards
        self.doc_indices = np.asarray(doc_indices, dtype=np.int64)
        self.lengths = shards.doc_lengths()[self.doc_indices] + 1  # +1: the eot after each document
        self.epoch_tokens = int(self.lengths.sum())
        self.seed, self.salt = seed, salt
        self._orders: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(document indices in stream order, cumulative end offsets) of one epoch; the two latest are cached."""
        got = self._orders.get(epoch)
        if got is None:
            rng = np.random.default_rng([self.seed, _ORDER_SALT, self.salt, epoch])
            perm = rng.permutation(len(self.doc_indices))
            got = (self.doc_indices[perm], np.cumsum(self.lengths[perm]))
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = got
        return got

    def read(self, start: int, n: int, eot_id: int) -> PackedRow:
        """Stream tokens [start, start + n) with their row-local document ids."""
        out = np.empty(n, dtype=np.int64)
        mask = np.empty(n, dtype=np.int64) if self.shards.has_loss_mask else None
        is_first = np.zeros(n, dtype=bool)  # True at the first token of a document that starts inside the row
        filled = 0
        epoch, off = divmod(start, self.epoch_tokens)
        docs, ends = self._order(epoch)
        j = int(np.searchsorted(ends, off, side="right"))  # the document holding stream offset `off`
        within = off - (int(ends[j - 1]) if j else 0)  # position inside (document + eot)
        while filled < n:  # one (document + eot) piece per iteration, walking the order forward
            toks = self.shards.document(int(docs[j]))
            if within == 0 and filled > 0:
                is_first[filled] = True
            take = min(len(toks) + 1 - within, n - filled)
            from_doc = max(0, min(take, len(toks) - within))
            out[filled : filled + from_doc] = toks[within : within + from_doc]
            if take > from_doc:  # the piece reaches the eot that closes this document
                out[filled + from_doc] = eot_id
            if mask is not None:
                doc_mask = self.shards.loss_mask(int(docs[j]))
                mask[filled : filled + from_doc] = doc_mask[within : within + from_doc]
                if take > from_doc:
                    mask[filled + from_doc] = eot_mask(doc_mask)
            filled += take
            j, within = j + 1, 0
            if j == len(docs):  # next epoch: a fresh document order
                epoch += 1
                docs, ends = self._order(epoch)
                j = 0
        return PackedRow(out, np.cumsum(is_first, dtype=np.int64), mask)


class PackedBatches:
    """Iterator of packed batches from a weighted mixture of tokenized sources.

    sources_with_weights: a list of (TokenShards, weight) pairs (weights need not sum to 1).
    seq_len: tokens per row. batch_size: rows of the GLOBAL batch per step (summed over ranks); each rank yields
    batch_size // world_size rows (rows rank, rank + world_size, ... of the global batch), so batch_size must be a
    multiple of world_size. heldout: documents kept out of training (see TokenShards.heldout_mask), one value for
    every source or a list with one per source; use the same value when evaluating on the held-out split.

    Each item is a dict of int64 tensors [B_rank, T]: `input_ids`, `labels` (= input_ids, the model shifts; no
    padding occurs in packed rows, so no -100) and `doc_ids`, plus `loss_mask` when a source stores one (see
    `eot_mask` for the eot after a document). `tokens_consumed` counts global tokens.
    """

    def __init__(
        self,
        sources_with_weights: Sequence[tuple[TokenShards, float]],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        heldout: float | int | Sequence[float | int] = 0.01,
    ):
        if not sources_with_weights:
            raise ValueError("PackedBatches needs at least one (TokenShards, weight) source")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got seq_len={seq_len}, batch_size={batch_size}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} must be a multiple of world_size {world_size} "
                "(each rank takes every world_size-th row)"
            )
        weights = np.asarray([float(w) for _, w in sources_with_weights], dtype=np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0, finite and not all 0, got {weights.tolist()}")
        first = sources_with_weights[0][0]
        for s, _ in sources_with_weights:
            if s.eot_id != first.eot_id or s.meta["tokenizer_fingerprint"] != first.meta["tokenizer_fingerprint"]:
                raise ValueError(f"sources {first.path} and {s.path} were tokenized with different tokenizers")
        self.sources = [s for s, _ in sources_with_weights]
        self.weights = weights / weights.sum()
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        if isinstance(heldout, (list, tuple)):
            if len(heldout) != len(self.sources):
                raise ValueError(f"heldout has {len(heldout)} values for {len(self.sources)} sources")
            heldout = list(heldout)  # a list survives the state's JSON / torch.save round trip unchanged
        self.heldout = heldout
        per_source = heldout if isinstance(heldout, list) else [heldout] * len(self.sources)
        self.eot_id = first.eot_id
        self.pad_id = first.pad_id
        self.streams = [
            SourceStream(s, s.split_indices(h)[0], seed, salt=i)
            for i, (s, h) in enumerate(zip(self.sources, per_source))
        ]
        self.step = 0
        self.cursors = np.zeros(len(self.sources), dtype=np.int64)  # windows consumed per source

    # --- sizes
    @property
    def tokens_per_step(self) -> int:
        """Global tokens per step (all ranks)."""
        return self.batch_size * self.seq_len

    @property
    def tokens_consumed(self) -> int:
        """Global tokens yielded so far (all ranks together)."""
        return self.step * self.tokens_per_step

    # --- iteration
    def choices(self, step: int) -> np.ndarray:
        """Source index of each global row at `step` (int64 [batch_size])."""
        if len(self.sources) == 1:
            return np.zeros(self.batch_size, dtype=np.int64)
        rng = np.random.default_rng([self.seed, _MIX_SALT, step])
        return rng.choice(len(self.sources), size=self.batch_size, p=self.weights).astype(np.int64)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        src = self.choices(self.step)
        rows: list[PackedRow] = []
        for j, s in enumerate(src):
            k = int(self.cursors[s])
            self.cursors[s] += 1
            if j % self.world_size == self.rank:
                rows.append(self.streams[s].read(k * self.seq_len, self.seq_len, self.eot_id))
        self.step += 1
        return stack_rows(rows, with_mask=any(s.has_loss_mask for s in self.sources))

    # --- resume
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: plain Python values (JSON- and torch.save-friendly)."""
        return {
            "version": STATE_VERSION,
            "step": int(self.step),
            "cursors": [int(c) for c in self.cursors],
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "heldout": self.heldout,
            "sources": [s.fingerprint for s in self.sources],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a position saved by state_dict(). The sources, seed, seq_len, global batch and held-out split must
        match (the world size may differ)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported PackedBatches state version {state.get('version')!r}")
        mine = self.state_dict()
        for key in ("seed", "seq_len", "batch_size", "heldout", "sources"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"cannot resume: saved {key}={state.get(key)!r} differs from this loader's {mine[key]!r}"
                )
        self.step = int(state["step"])
        self.cursors = np.asarray(state["cursors"], dtype=np.int64)


def iter_document_batches(
    shards: TokenShards,
    doc_indices: np.ndarray,
    seq_len: int,
    batch_size: int,
    close_with_eot: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches over whole documents, in document order.

    Each document is scored as training sees it after a document boundary: `[eot, t1 .. tn, eot]` (without the
    closing eot when `close_with_eot` is False: bits per byte score the text's own tokens only), cut into rows of
    at most `seq_len` tokens that overlap by one token, so every document token (and the closing eot) is a target
    exactly once (targets of a row are its positions 1.., predicted from the row's earlier positions). Short rows
    are padded with pad_id, labels -100 there. Yields dicts with `input_ids`, `labels`, `doc_ids` ([B, T] int64)
    and `doc_index` ([B] int64: the document of each row), so losses can be summed per document, tag and byte.
    """
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got {seq_len}, {batch_size}")
    rows: list[tuple[np.ndarray, int]] = []
    eot = shards.eot_id
    for d in np.asarray(doc_indices, dtype=np.int64):
        toks = np.concatenate([[eot], shards.document(int(d)).astype(np.int64), [eot] if close_with_eot else []])
        for start in range(0, len(toks) - 1, seq_len - 1):
            rows.append((toks[start : start + seq_len], int(d)))
            if len(rows) == batch_size:
                yield _pad_rows(rows, seq_len, shards.pad_id)
                rows = []
    if rows:
        yield _pad_rows(rows, seq_len, shards.pad_id)


def _pad_rows(rows: list[tuple[np.ndarray, int]], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    b = len(rows)
    ids = np.full((b, seq_len), pad_id, dtype=np.int64)
    labels = np.full((b, seq_len), -100, dtype=np.int64)
    doc_ids = np.ones((b, seq_len), dtype=np.int64)  # padding is its own "document": nothing attends across
    for i, (toks, _) in enumerate(rows):
        ids[i, : len(toks)] = toks
        labels[i, : len(toks)] = toks
        doc_ids[i, : len(toks)] = 0
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "doc_ids": torch.from_numpy(doc_ids),
        "doc_index": torch.tensor([d for _, d in rows], dtype=torch.int64),
    }
