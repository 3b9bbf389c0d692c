"""A document with the character spans of its answers (`SpanDocument`) and the builder that records them.

Synthetic generators whose answers are identifiable (kexaone.data.synthetic.recall, .retrieval) build their text
with `SpanBuilder`, so a loss on the answer tokens only is possible once a tokenizer maps the spans to tokens
(kexaone.data.synthetic.recall.answer_token_mask). A SpanDocument has `text`, `tag` and `answers` like a
kexaone.data.sources.Document, so the corpus pipeline takes it as one, answers included.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpanDocument:
    text: str
    answers: tuple[tuple[int, int], ...]
    """Character spans [start, end) of the answers in `text`, in order; each starts with the space before the
    answer, which byte-level BPE tokens carry at their front."""
    tag: str = "retrieval/en"

    def answer_texts(self) -> list[str]:
        return [self.text[a:b] for a, b in self.answers]


class SpanBuilder:
    """Appends text pieces and records the character spans of those marked as answers."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.n = 0
        self.spans: list[tuple[int, int]] = []

    def add(self, s: str, answer: bool = False) -> None:
        if answer:
            self.spans.append((self.n, self.n + len(s)))
        self.parts.append(s)
        self.n += len(s)

    def build(self, tag: str = "retrieval/en") -> SpanDocument:
        return SpanDocument("".join(self.parts), tuple(self.spans), tag)
