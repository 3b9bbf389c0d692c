"""KV cache for generation with K-EXAONE's hybrid attention.

- Sliding-window layers keep a ring buffer of `window + extra_slots` positions: memory is constant in the context
  length. The extra slots exist so that rejecting up to `extra_slots` speculative draft tokens (`rollback`) never
  needs an entry that was overwritten.
- Global layers (and the MTP layer, an extra slot at index `num_hidden_layers`) keep a growing buffer whose
  capacity grows geometrically (x1.25), so appending is amortised O(1) per token instead of a `torch.cat` per step,
  and at most a quarter of the buffer is spare.
- Rows of a batch share one length; rows that are shorter are left-padded and the padding is remembered (per-row
  `pad_len`) and masked in every later step.
- Continuous batching edits the rows without recomputing them: `select_rows` keeps some rows (finished requests
  leave), `KVCache.concat` stacks caches of different lengths (a newcomer prefilled on its own joins a running
  batch: the shorter side is left-padded by `shift`, which moves positions, never recomputes keys), and `shift`
  with a negative count drops leading positions that every row has as padding.

Layout of every buffer: [B, kv_heads, slots, head_dim], so a prefix slice is a strided view that SDPA reads
without a copy. This module stores and returns tensors; attention maths lives in attention.py.
"""

from __future__ import annotations

import torch

_MIN_CAPACITY = 256
_GROW_ROUND = 64


class _RingSlot:
    """Sliding-window layer: position p lives at slot p % size; only the last window-1 old keys are ever read."""

    def __init__(self, window: int, extra: int) -> None:
        self.window = window
        self.size = window + extra
        self.length = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        B, h, T, D = k_new.shape
        if self.k is None:
            self.k = k_new.new_zeros(B, h, self.size, D)
            self.v = v_new.new_zeros(B, h, self.size, D)
        L = self.length
        n_old = min(L, self.window - 1)
        if n_old:
            k_all = self._gather_with(self.k, L - n_old, n_old, k_new)
            v_all = self._gather_with(self.v, L - n_old, n_old, v_new)
        else:
            k_all, v_all = k_new, v_new
        m = min(T, self.size)  # only the newest `size` positions can survive in the ring
        self._write(self.k, L + T - m, k_new[:, :, T - m:])
        self._write(self.v, L + T - m, v_new[:, :, T - m:])
        self.length = L + T
        return k_all, v_all, L - n_old

    def _gather_with(self, buf: torch.Tensor, first: int, n: int, new: torch.Tensor) -> torch.Tensor:
        """[B, h, n + T, D]: positions first..first+n-1 read from the ring (at most two contiguous pieces, as
        slices: no index tensor), followed by `new`; one copy of each element (decode reads this every step)."""
        B, h, T, D = new.shape
        out = new.new_empty(B, h, n + T, D)
        s = first % self.size
        a = min(n, self.size - s)  # the piece before the ring wraps
        out[:, :, :a] = buf[:, :, s:s + a]
        if a < n:
            out[:, :, a:n] = buf[:, :, :n - a]
        out[:, :, n:] = new
        return out

    def _write(self, buf: torch.Tensor, first: int, x: torch.Tensor) -> None:
        """Store x [B, h, m, D] (m <= size) at positions first.. of the ring (one or two slice copies)."""
        m = x.shape[2]
        s = first % self.size
        a = min(m, self.size - s)
        buf[:, :, s:s + a] = x[:, :, :a]
        if a < m:
            buf[:, :, :m - a] = x[:, :, a:]

    def max_rollback(self) -> int:
        return self.size - self.window

    def shift(self, d: int) -> None:
        """Renumber every position p as p + d (the ring's slot of a position changes, so entries move)."""
        L = self.length
        if self.k is None or L == 0:
            self.length = max(0, L + d) if self.k is not None else 0
            return
        n = min(L, self.size)
        first = L - n + d  # new position of the oldest entry kept
        skip = max(0, -first)  # entries that fall before position 0 (padding of every row: dropped)
        bufs = []
        for buf in (self.k, self.v):
            ordered = self._gather_with(buf, L - n, n, buf[:, :, :0])[:, :, skip:]
            new = torch.zeros_like(buf)
            if ordered.shape[2]:
                self._write(new, first + skip, ordered)
            bufs.append(new)
        self.k, self.v = bufs
        self.length = L + d

    def rows(self, idx: torch.Tensor) -> "_RingSlot":
        out = _RingSlot(self.window, self.size - self.window)
        out.length = self.length
        if self.k is not None:
            out.k, out.v = self.k.index_select(0, idx), self.v.index_select(0, idx)
        return out

    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


class _GrowSlot:
    """Global (or MTP) layer: every position is kept; capacity grows by 1.25x when full (or is reserved once when
    the caller knows the final length)."""

    def __init__(self, reserve: int | None = None) -> None:
        self.length = 0
        self.reserve = reserve or 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        B, h, T, D = k_new.shape
        L = self.length
        cap = 0 if self.k is None else self.k.shape[2]
        if L + T > cap:
            # Geometric growth (x1.25) keeps appends amortised O(1) while wasting at most a quarter of the buffer
            # (doubling could hold 2x the needed memory at long contexts).
            new_cap = max(_MIN_CAPACITY, L + T, cap + cap // 4)
            new_cap = -(-new_cap // _GROW_ROUND) * _GROW_ROUND
            if L + T <= self.reserve:
                new_cap = self.reserve  # the caller's bound: one allocation, nothing spare at the end
            k = k_new.new_zeros(B, h, new_cap, D)
            v = v_new.new_zeros(B, h, new_cap, D)
            if L:
                k[:, :, :L] = self.k[:, :, :L]
                v[:, :, :L] = self.v[:, :, :L]
            self.k, self.v = k, v
        self.k[:, :, L:L + T] = k_new
        self.v[:, :, L:L + T] = v_new
        self.length = L + T
        return self.k[:, :, :L + T], self.v[:, :, :L + T], 0

    def max_rollback(self) -> int:
        return self.length

    def shift(self, d: int) -> None:
        """Renumber every position p as p + d: d > 0 prepends d (zero) positions, d < 0 drops the first -d."""
        L = self.length
        if self.k is None or L == 0:
            return  # an unused slot (e.g. the MTP slot of a plain decode) stays empty
        cap = max(self.k.shape[2], L + d)
        k = self.k.new_zeros(self.k.shape[0], self.k.shape[1], cap, self.k.shape[3])
        v = torch.zeros_like(k)
        k[:, :, max(0, d):L + d] = self.k[:, :, max(0, -d):L]
        v[:, :, max(0, d):L + d] = self.v[:, :, max(0, -d):L]
        self.k, self.v, self.length = k, v, L + d

    def rows(self, idx: torch.Tensor) -> "_GrowSlot":
        out = _GrowSlot(self.reserve)
        out.length = self.length
        if self.k is not None:
            out.k, out.v = self.k.index_select(0, idx), self.v.index_select(0, idx)
        return out

    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


def _pad_slots(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, h, S, D] with S grown to n (zeros at the end): global buffers of different capacities stack."""
    return x if x.shape[2] == n else torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[2]))


class KVCache:
    """Per-layer key/value storage for a batch of `batch_size` rows (see the module docstring).

    `seq_len` counts positions of the main model (padding included); the MTP slot has its own `mtp_seq_len`
    because it runs one step behind (its input at position t needs token t+1).
    """

    def __init__(self, config, batch_size: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", extra_slots: int = 8, max_seq_len: int | None = None) -> None:
        """max_seq_len: optional bound on the positions this cache will hold (prompt + new tokens + drafts); global
        layers then allocate exactly that once instead of growing. Exceeding it is allowed (growth resumes)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(extra_slots, int) or extra_slots < 0:
            raise ValueError(f"extra_slots must be an integer >= 0, got {extra_slots!r}")
        if max_seq_len is not None and (not isinstance(max_seq_len, int) or max_seq_len < 1):
            raise ValueError(f"max_seq_len must be an integer >= 1 or None, got {max_seq_len!r}")
        self.config = config
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = torch.device(device)
        self.extra_slots = extra_slots
        self.num_layers = config.num_hidden_layers
        self.mtp_slot = config.num_hidden_layers if config.num_nextn_predict_layers else None
        self._slots: list[_RingSlot | _GrowSlot] = [
            _RingSlot(config.sliding_window, extra_slots) if config.is_sliding(i) else _GrowSlot(max_seq_len)
            for i in range(config.num_hidden_layers)
        ]
        if self.mtp_slot is not None:
            self._slots.append(_GrowSlot(max_seq_len))  # the MTP layer attends globally (see mtp.py)
        self.pad_len = torch.zeros(batch_size, dtype=torch.long, device=self.device)

    @property
    def pad_len(self) -> torch.Tensor:
        """[B] long: left-padding length of each row (read-only in place: assign a new tensor to change it)."""
        return self._pad_len

    @pad_len.setter
    def pad_len(self, value: torch.Tensor) -> None:
        self._pad_len = value
        # Read by every attention layer of every step: kept as a Python bool so that asking costs no device sync.
        self._has_padding = bool(value.any())

    # ------------------------------------------------------------------ state
    @property
    def seq_len(self) -> int:
        return self._slots[0].length if self.num_layers else 0

    @property
    def mtp_seq_len(self) -> int:
        return 0 if self.mtp_slot is None else self._slots[self.mtp_slot].length

    @property
    def has_padding(self) -> bool:
        return self._has_padding

    def set_left_padding(self, attention_mask_BT: torch.Tensor, new_tokens: int) -> None:
        """Record (first call) or check (later calls) the left padding given by an attention mask of either the
        new tokens [B, new_tokens] or the whole sequence [B, seq_len + new_tokens] (the transformers style)."""
        if attention_mask_BT.dim() != 2 or attention_mask_BT.shape[0] != self.batch_size:
            raise ValueError(f"attention_mask must be [batch={self.batch_size}, T], got {tuple(attention_mask_BT.shape)}")
        m = attention_mask_BT.to(self.pad_len.device).bool()
        total = self.seq_len + new_tokens
        if m.shape[1] == total and self.seq_len:
            m_old, m_new = m[:, :self.seq_len], m[:, self.seq_len:]
            if not torch.equal(m_old.sum(1), self.seq_len - self.pad_len):
                raise ValueError("attention_mask disagrees with the padding already recorded in the cache")
            m = m_new
        elif m.shape[1] != new_tokens:
            raise ValueError(f"attention_mask has {m.shape[1]} columns; expected {new_tokens} (new tokens) or "
                             f"{total} (cached + new)")
        if self.seq_len:
            if not bool(m.all()):
                raise ValueError("only left padding is supported: after the first step every new token must have "
                                 "attention_mask == 1")
            return
        pad = (~m).sum(1)
        # left padding means the zeros form a prefix: the first `pad` columns are 0 and the rest 1
        expect = torch.arange(m.shape[1], device=m.device)[None, :] >= pad[:, None]
        if not torch.equal(expect, m):
            raise ValueError("attention_mask must be left padding (a row of 0s followed by 1s); "
                             "right or interior padding is not supported with a cache")
        self.pad_len = pad.to(torch.long)

    def update(self, layer_idx: int, k_BhTD: torch.Tensor, v_BhTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Append new keys/values of one layer; return the keys/values to attend (oldest first) and the position of
        the first returned key."""
        if k_BhTD.dtype != self.dtype:  # (a no-op `.to` still costs a dispatch, twice per layer and step)
            k_BhTD, v_BhTD = k_BhTD.to(self.dtype), v_BhTD.to(self.dtype)
        return self._slots[layer_idx].update(k_BhTD, v_BhTD)

    def key_valid(self, layer_idx: int, key_start: int, n: int) -> torch.Tensor | None:
        """[B, n] bool for keys at positions key_start.., False on left padding; None when nothing is padded."""
        if not self.has_padding:
            return None
        pos = torch.arange(key_start, key_start + n, device=self.pad_len.device)
        return pos[None, :] >= self.pad_len[:, None]

    def position_ids(self, new_tokens: int, mtp: bool = False) -> torch.Tensor:
        """[B, new_tokens]: position of each new token, counting from each row's first real token."""
        start = self.mtp_seq_len if mtp else self.seq_len
        pos = torch.arange(start, start + new_tokens, device=self.pad_len.device)[None, :] - self.pad_len[:, None]
        return pos.clamp_min(0)

    # ------------------------------------------------------------------ editing
    def rollback(self, k: int) -> None:
        """Drop the last k positions of the main model (k <= extra_slots is always possible). The MTP slot is cut
        to at most the new seq_len (its entries past it were computed from dropped hidden states)."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"rollback count must be an integer >= 0, got {k!r}")
        if k > self.seq_len:
            raise ValueError(f"cannot roll back {k} positions: the cache holds {self.seq_len}")
        limit = min((s.max_rollback() for s in self._slots[:self.num_layers] if isinstance(s, _RingSlot)),
                    default=k)
        if k > limit:
            raise ValueError(f"cannot roll back {k} positions: sliding-window layers keep only {limit} extra slots "
                             f"(create the cache with extra_slots >= {k})")
        for s in self._slots[:self.num_layers]:
            s.length -= k
        if self.mtp_slot is not None:
            mtp = self._slots[self.mtp_slot]
            mtp.length = min(mtp.length, self.seq_len)

    def rollback_mtp(self, k: int) -> None:
        """Drop the last k positions of the MTP slot only (e.g. draft steps whose tokens were rejected)."""
        if self.mtp_slot is None:
            raise ValueError("this cache has no MTP slot (config.num_nextn_predict_layers == 0)")
        mtp = self._slots[self.mtp_slot]
        if not isinstance(k, int) or not 0 <= k <= mtp.length:
            raise ValueError(f"MTP rollback count must be in [0, {mtp.length}], got {k!r}")
        mtp.length -= k

    # ------------------------------------------------------------------ rows (continuous batching)
    def shift(self, d: int) -> None:
        """Renumber every position of every row and layer as p + d without recomputing anything: d > 0 left-pads
        every row by d more positions, d < 0 drops the first -d positions, which must be padding in every row."""
        if not isinstance(d, int):
            raise ValueError(f"shift must be an integer, got {d!r}")
        if d < 0 and (-d > self.seq_len or bool((self.pad_len < -d).any())):
            raise ValueError(f"cannot drop {-d} leading positions: some row has only {int(self.pad_len.min())} "
                             f"positions of padding")
        if d == 0:
            return
        for s in self._slots:
            s.shift(d)
        self.pad_len = self.pad_len + d

    def select_rows(self, rows) -> "KVCache":
        """A new cache holding `rows` (indices, in that order) of this one; leading positions that are padding in
        every kept row are dropped, so the cache never grows longer than its longest row."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        if idx.numel() == 0 or bool(((idx < 0) | (idx >= self.batch_size)).any()):
            raise ValueError(f"rows must be a non-empty list of indices in [0, {self.batch_size}), got {list(rows)}")
        out = self._like(idx.numel())
        out._slots = [s.rows(idx) for s in self._slots]
        out.pad_len = self.pad_len.index_select(0, idx)
        common = int(out.pad_len.min())
        if common:
            out.shift(-common)
        return out

    @classmethod
    def concat(cls, caches: list["KVCache"]) -> "KVCache":
        """Stack the rows of several caches into one: the shorter ones are left-padded (`shift`) to the longest.
        Every cache must hold as many MTP positions relative to its main positions (or all none)."""
        if not caches:
            raise ValueError("concat needs at least one cache")
        first = caches[0]
        for c in caches[1:]:
            if c.config is not first.config and c.config != first.config or c.dtype != first.dtype \
                    or c.extra_slots != first.extra_slots:
                raise ValueError("caches of different models, dtypes or extra_slots cannot be concatenated")
        lags = {(c.seq_len - c.mtp_seq_len) if c.mtp_seq_len else None for c in caches}
        if len(lags) != 1:
            raise ValueError(f"caches disagree on the MTP slot's length relative to the main layers: {lags}")
        L = max(c.seq_len for c in caches)
        parts = []
        for c in caches:
            c = c.select_rows(range(c.batch_size)) if c.seq_len < L else c  # a copy: the caller's cache is kept
            c.shift(L - c.seq_len)
            parts.append(c)
        out = first._like(sum(c.batch_size for c in parts))
        for i, s in enumerate(out._slots):
            srcs = [c._slots[i] for c in parts]
            s.length = srcs[0].length
            if all(x.k is None for x in srcs):
                continue
            if any(x.k is None for x in srcs):
                raise ValueError(f"layer {i} holds keys in some caches and none in others")
            n = max(x.k.shape[2] for x in srcs)
            s.k = torch.cat([_pad_slots(x.k, n) for x in srcs])
            s.v = torch.cat([_pad_slots(x.v, n) for x in srcs])
        out.pad_len = torch.cat([c.pad_len for c in parts])
        return out

    def _like(self, batch_size: int) -> "KVCache":
        out = KVCache(self.config, batch_size, dtype=self.dtype, device=self.device, extra_slots=self.extra_slots)
        for s, o in zip(out._slots, self._slots):
            if isinstance(s, _GrowSlot):
                s.reserve = o.reserve
        return out

    def reset(self) -> None:
        """Forget every position (buffers are kept for reuse)."""
        for s in self._slots:
            s.length = 0
        self.pad_len = torch.zeros_like(self.pad_len)

    def nbytes(self) -> int:
        """Bytes held by key/value buffers (allocated capacity, not only the used part)."""
        return sum(s.nbytes() for s in self._slots)

    def used_nbytes(self) -> int:
        """Bytes of the key/value entries a forward can still read (sliding layers: up to their ring size)."""
        total = 0
        for s in self._slots:
            if s.k is None:
                continue
            per_pos = 2 * s.k.shape[0] * s.k.shape[1] * s.k.shape[3] * s.k.element_size()
            total += per_pos * (min(s.length, s.size) if isinstance(s, _RingSlot) else s.length)
        return total

    def __repr__(self) -> str:
        return (f"KVCache(batch={self.batch_size}, seq_len={self.seq_len}, mtp_seq_len={self.mtp_seq_len}, "
                f"layers={len(self._slots)}, nbytes={self.nbytes()})")
