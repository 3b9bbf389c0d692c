"""Document-aligned packing: whole documents placed best-fit into rows, never cut across two rows.

Beside `kexaone.data.packing.PackedBatches` (a continuous token stream cut into rows, no padding), for stages whose
documents must stay whole (SFT conversations, RL prompts, long-context documents). Each source's training documents
are read in the same seeded per-epoch order as the stream packer, in chunks of `chunk_docs` documents; each chunk is
packed by best-fit decreasing (longest document first, into the row with the least room left that still fits it),
and its rows are served in order. A document is `tokens + eot` with its own `doc_ids` value inside the row, so
attention and targets never cross documents; the rest of a row is padding (`pad_id`, label -100, loss mask 0, its
own document id).

Long documents: with `truncate=True` (default) a document longer than `seq_len` keeps its first `seq_len` tokens
(the cut tokens are counted in `truncated_tokens`); with `truncate=False` it gets a row of its own and that batch is
widened to its length (rows of a batch are padded to the longest), so no token is ever dropped.

Mixture, rank sharding and exact resume follow PackedBatches: row j of the global batch at step s comes from source
`choices(s)[j]`, every rank replays all choices, and the state (step + per source: chunk and row) is the same on
every rank. Not here: tokenizing (kexaone.data.shards) and the stream packer.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import torch

from kexaone.data.packing import PackedBatches, PackedRow, SourceStream, eot_mask
from kexaone.data.shards import TokenShards

DOC_STATE_VERSION = 1


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices, in placement order) holding items of `lengths` within `capacity` each, by
    best-fit decreasing; an item longer than capacity gets a bin of its own. Deterministic (ties: lower index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if n <= capacity and k < len(free):
            room, b = free.pop(k)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            if n < capacity:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


class _DocumentRows:
    """The rows of one source: chunks of its document stream, each packed by best-fit decreasing."""

    def __init__(self, stream: SourceStream, seq_len: int, truncate: bool, chunk_docs: int) -> None:
        self.stream, self.seq_len, self.truncate, self.chunk_docs = stream, seq_len, truncate, chunk_docs
        self.full_lengths = stream.shards.doc_lengths() + 1  # per shard document: tokens + eot
        self.chunk, self.row = 0, 0
        self._cached: tuple[int, list[list[int]], np.ndarray] | None = None

    def _docs(self, chunk: int) -> np.ndarray:
        """Shard document indices of stream positions [chunk * K, (chunk + 1) * K) (crossing epochs)."""
        n = len(self.stream.doc_indices)
        pos = np.arange(chunk * self.chunk_docs, (chunk + 1) * self.chunk_docs)
        out = np.empty(len(pos), dtype=np.int64)
        for epoch in np.unique(pos // n):
            sel = pos // n == epoch
            out[sel] = self.stream._order(int(epoch))[0][pos[sel] % n]
        return out

    def piece_length(self, doc: int) -> int:
        n = int(self.full_lengths[doc])
        return min(n, self.seq_len) if self.truncate else n

    def _packed(self) -> tuple[list[list[int]], np.ndarray]:
        if self._cached is None or self._cached[0] != self.chunk:
            docs = self._docs(self.chunk)
            bins = best_fit_decreasing([self.piece_length(int(d)) for d in docs], self.seq_len)
            self._cached = (self.chunk, [[int(docs[i]) for i in b] for b in bins], docs)
        return self._cached[1], self._cached[2]

    def next_row(self) -> list[int]:
        """The shard documents of the next row (advances the position)."""
        bins, _ = self._packed()
        if self.row == len(bins):
            self.chunk, self.row = self.chunk + 1, 0
            bins, _ = self._packed()
        self.row += 1
        return bins[self.row - 1]

    def materialize(self, docs: list[int], eot_id: int) -> PackedRow:
        """The row's tokens, doc ids and loss mask (unpadded)."""
        shards = self.stream.shards
        ids, dids, masks = [], [], []
        for k, d in enumerate(docs):
            toks = np.concatenate([shards.document(d).astype(np.int64), [eot_id]])
            keep = self.piece_length(d)
            ids.append(toks[:keep])
            dids.append(np.full(keep, k, dtype=np.int64))
            if shards.has_loss_mask:
                m = shards.loss_mask(d).astype(np.int64)
                masks.append(np.concatenate([m, [eot_mask(m)]])[:keep])
        mask = np.concatenate(masks) if masks else None
        return PackedRow(np.concatenate(ids), np.concatenate(dids), mask)


class DocumentPackedBatches(PackedBatches):
    """Batches of whole documents packed best-fit (see the module docstring). Same arguments as PackedBatches plus
    `truncate` and `chunk_docs` (documents packed together: larger packs tighter, costs a little memory).

    Each item: `input_ids`, `labels` (-100 on padding), `doc_ids`, and `loss_mask` when a source stores one, all
    [B_rank, T] int64 with T = seq_len (or the longest untruncated document of that global batch)."""

    def __init__(self, sources_with_weights: Sequence[tuple[TokenShards, float]], seq_len: int, batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1,
                 heldout: float | int | Sequence[float | int] = 0.01, *,
                 truncate: bool = True, chunk_docs: int = 256) -> None:
        super().__init__(sources_with_weights, seq_len, batch_size, seed, rank, world_size, heldout)
        if chunk_docs < 1:
            raise ValueError(f"chunk_docs must be >= 1, got {chunk_docs}")
        self.truncate, self.chunk_docs = bool(truncate), int(chunk_docs)
        self.rows = [_DocumentRows(s, seq_len, self.truncate, self.chunk_docs) for s in self.streams]
        self.real_tokens = 0  # global non-padding tokens yielded
        self.truncated_tokens = 0  # global tokens dropped by truncation

    @property
    def tokens_consumed(self) -> int:
        return self.real_tokens

    def __next__(self) -> dict[str, torch.Tensor]:
        mine: list[PackedRow] = []
        width = self.seq_len
        for j, s in enumerate(self.choices(self.step)):
            src = self.rows[int(s)]
            docs = src.next_row()
            lengths = [src.piece_length(d) for d in docs]
            full = sum(int(src.full_lengths[d]) for d in docs)
            self.real_tokens += sum(lengths)
            self.truncated_tokens += full - sum(lengths)
            width = max(width, sum(lengths))
            if j % self.world_size == self.rank:
                mine.append(src.materialize(docs, self.eot_id))
        self.step += 1
        return self._pad(mine, width)

    def _pad(self, rows: list[PackedRow], width: int) -> dict[str, torch.Tensor]:
        B = len(rows)
        ids = np.full((B, width), self.pad_id, dtype=np.int64)
        labels = np.full((B, width), -100, dtype=np.int64)
        doc = np.empty((B, width), dtype=np.int64)
        mask = np.zeros((B, width), dtype=np.int64)
        for i, r in enumerate(rows):
            n = len(r.input_ids)
            ids[i, :n] = labels[i, :n] = r.input_ids
            doc[i, :n] = r.doc_ids
            doc[i, n:] = (int(r.doc_ids[-1]) + 1) if n else 0  # padding is its own document
            mask[i, :n] = r.loss_mask if r.loss_mask is not None else 1
        out = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels), "doc_ids": torch.from_numpy(doc)}
        if any(s.has_loss_mask for s in self.sources):
            out["loss_mask"] = torch.from_numpy(mask)
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(packing={"version": DOC_STATE_VERSION, "truncate": self.truncate, "chunk_docs": self.chunk_docs},
                     rows=[[r.chunk, r.row] for r in self.rows], real_tokens=self.real_tokens,
                     truncated_tokens=self.truncated_tokens)
        return state

    def load_state_dict(self, state: dict) -> None:
        mine = {"version": DOC_STATE_VERSION, "truncate": self.truncate, "chunk_docs": self.chunk_docs}
        if state.get("packing") != mine:
            raise ValueError(f"cannot resume: saved document packing {state.get('packing')!r} differs from this "
                             f"loader's {mine!r}")
        super().load_state_dict(state)
        for r, (chunk, row) in zip(self.rows, state["rows"], strict=True):
            r.chunk, r.row = int(chunk), int(row)
        self.real_tokens = int(state["real_tokens"])
        self.truncated_tokens = int(state["truncated_tokens"])
