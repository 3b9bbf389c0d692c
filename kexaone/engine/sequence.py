"""Per-request generation state: tokens so far, streamed text, stop conditions, and the final result.

`SequenceState.append(token_ids)` is the single place where stop tokens, stop strings and the token budget are
applied, so the plain decoder, the speculative decoder and the server's scheduler all end requests the same way.
This module runs no model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kexaone.engine.detokenize import Decoder, IncrementalDetokenizer, StopStringMatcher
from kexaone.engine.sampling import SamplingParams

FINISH_STOP = "stop"  # a stop token or stop string
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_ABORT = "abort"  # cancelled by the caller (client gone, server shutting down)
FINISH_TIMEOUT = "timeout"  # the request's deadline passed
FINISH_ERROR = "error"  # the batch it ran in failed


@dataclass
class GenerationStats:
    """Counters of one generation call (shared by the rows of a batch where they are per batch)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    main_forwards: int = 0
    """Main-model forward passes after the prefill (each yields >= 1 token per row)."""
    draft_tokens: int = 0
    """Tokens drafted by the MTP head and offered for verification."""
    accepted_tokens: int = 0
    """Drafted tokens the main model accepted."""
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def tokens_per_forward(self) -> float | None:
        """Generated tokens per main-model forward (the prefill's forward, which yields the first token, counts)."""
        forwards = self.main_forwards + 1
        return self.generated_tokens / forwards if self.generated_tokens else None

    @property
    def decode_tokens_per_second(self) -> float | None:
        if self.decode_seconds <= 0 or self.generated_tokens <= 1:
            return None
        return (self.generated_tokens - 1) / self.decode_seconds

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "main_forwards": self.main_forwards,
            "draft_tokens": self.draft_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_forward": self.tokens_per_forward,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "decode_tokens_per_second": self.decode_tokens_per_second,
        }


@dataclass
class GenerationResult:
    """What one request produced. `tokens` include a final stop token when one ended the generation;
    `text` (None without a tokenizer) excludes stop tokens and stop strings."""

    tokens: list[int]
    text: str | None
    finish_reason: str
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended generation, when finish_reason is 'stop'."""
    prompt_tokens: int = 0
    stats: GenerationStats = field(default_factory=GenerationStats)


TextCallback = Callable[[str], None]


class SequenceState:
    """One request being generated."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, stop_token_ids: Sequence[int],
                 tokenizer: Decoder | None = None, on_text: TextCallback | None = None):
        if params.stop and tokenizer is None:
            raise ValueError(f"stop strings {list(params.stop)!r} need a tokenizer; pass stop_token_ids instead")
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.stop_token_ids = frozenset(int(i) for i in stop_token_ids)
        self.tokens: list[int] = []
        self.finished = params.max_new_tokens == 0
        self.finish_reason: str | None = FINISH_LENGTH if self.finished else None
        self.stop_reason: int | str | None = None
        self._detok = IncrementalDetokenizer(tokenizer, params.skip_special_tokens) if tokenizer else None
        self._stops = StopStringMatcher(params.stop, params.include_stop_str_in_output) if tokenizer else None
        self._pieces: list[str] = []
        self._on_text = on_text
        self.error: BaseException | None = None

    @property
    def text(self) -> str | None:
        return "".join(self._pieces) if self._detok is not None else None

    def append(self, token_ids: Sequence[int]) -> int:
        """Add tokens in order until the request finishes; returns how many were taken."""
        taken = 0
        for tok in token_ids:
            if self.finished:
                break
            tok = int(tok)
            self.tokens.append(tok)
            taken += 1
            if tok in self.stop_token_ids:
                self._finish(FINISH_STOP, tok)
                break
            if self._detok is not None:
                out, stopped = self._stops.feed(self._detok.push([tok]))
                self._emit(out)
                if stopped:
                    self._finish(FINISH_STOP, self._stops.matched)
                    break
            if len(self.tokens) >= self.params.max_new_tokens:
                self._finish(FINISH_LENGTH, None)
        return taken

    def abort(self, reason: str = FINISH_ABORT, error: BaseException | None = None) -> None:
        if not self.finished:
            self.error = error
            self._finish(reason, None)

    def _finish(self, reason: str, stop_reason: int | str | None) -> None:
        self.finished = True
        self.finish_reason = reason
        self.stop_reason = stop_reason
        if self._detok is not None and not self._stops.stopped:
            # Release held text: the part of a character still pending, then a tail that looked like the start
            # of a stop string but never became one (or did, in the released part).
            out, stopped = self._stops.feed(self._detok.finish())
            self._emit(out)
            if stopped:
                self.finish_reason, self.stop_reason = FINISH_STOP, self._stops.matched
            else:
                self._emit(self._stops.flush())

    def _emit(self, text: str) -> None:
        if text:
            self._pieces.append(text)
            if self._on_text is not None:
                self._on_text(text)

    def result(self, stats: GenerationStats | None = None) -> GenerationResult:
        return GenerationResult(tokens=list(self.tokens), text=self.text,
                                finish_reason=self.finish_reason or FINISH_LENGTH, stop_reason=self.stop_reason,
                                prompt_tokens=len(self.prompt_ids), stats=stats or GenerationStats())
