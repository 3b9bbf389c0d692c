"""Streaming text out of a growing token sequence: UTF-8-safe deltas and stop strings.

`IncrementalDetokenizer` turns token ids into text deltas that never end inside a character: a byte-level BPE
token may carry half of a multi-byte UTF-8 character (Korean syllables are 3 bytes, emoji 4), and decoding such
a prefix yields U+FFFD. The delta is held back until the character is complete.

`StopStringMatcher` cuts the text before the first stop string and holds back any tail that could still become
one, so a streamed answer never shows part of a stop string.

Neither class knows about models or sampling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


class IncrementalDetokenizer:
    """Text deltas for a token sequence that grows at the end.

    Only a short window of recent tokens is decoded at each step (not the whole sequence), so the cost per token
    stays constant. A window whose text ends in U+FFFD is held back; after `max_hold` held tokens the text is
    released anyway (a model can emit genuinely invalid byte sequences and the stream must not stall forever).
    """

    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = False, max_hold: int = 8):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._max_hold = max_hold
        self._ids: list[int] = []
        self._prefix = 0  # window start: a character boundary already emitted
        self._read = 0  # ids up to here have been turned into emitted text

    @property
    def ids(self) -> list[int]:
        return self._ids

    def push(self, ids: Iterable[int]) -> str:
        self._ids.extend(int(i) for i in ids)
        return self._advance(final=False)

    def finish(self) -> str:
        """Release whatever is held (called once the sequence is complete)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read >= len(self._ids):
            return ""
        before = self._tok.decode(self._ids[self._prefix:self._read], skip_special_tokens=self._skip)
        window = self._tok.decode(self._ids[self._prefix:], skip_special_tokens=self._skip)
        held = len(self._ids) - self._read
        if not final and window.endswith(REPLACEMENT_CHAR) and held < self._max_hold:
            return ""
        if window.startswith(before):
            delta = window[len(before):]
        else:  # a released U+FFFD was completed later: emit only what is new after the common prefix
            n = 0
            while n < min(len(before), len(window)) and before[n] == window[n]:
                n += 1
            delta = window[max(n, len(before)):]
        self._prefix, self._read = self._read, len(self._ids)
        return delta


class StopStringMatcher:
    """Finds stop strings in a text stream fed in pieces.

    `feed(delta)` returns (text safe to emit now, stopped). After a stop, everything from the stop string on is
    dropped (or the stop string is kept with `include_stop=True`) and later feeds return ("", True).
    """

    def __init__(self, stops: Sequence[str], include_stop: bool = False):
        self.stops = tuple(s for s in stops if s)
        self.include_stop = include_stop
        self._held = ""
        self.stopped = False
        self.matched: str | None = None
        self._max_len = max((len(s) for s in self.stops), default=0)

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return delta, False
        buf = self._held + delta
        best = -1
        for s in self.stops:
            i = buf.find(s)
            if i >= 0 and (best < 0 or i < best or (i == best and len(s) > len(self.matched or ""))):
                best, self.matched = i, s
        if best >= 0:
            self.stopped = True
            self._held = ""
            end = best + (len(self.matched) if self.include_stop else 0)
            return buf[:end], True
        keep = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """The held tail, when the stream ends for another reason (length, stop token)."""
        out, self._held = self._held, ""
        return "" if self.stopped else out

    def _partial_suffix_len(self, buf: str) -> int:
        for n in range(min(len(buf), self._max_len - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
