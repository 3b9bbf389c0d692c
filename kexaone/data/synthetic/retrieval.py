"""Documents of key-value records with questions about them: in-context retrieval.

A document lists records ("Locker 4821: Talvik.") in one of three formats and asks questions whose answers are
values stated earlier in the same document. The answer restates the record, key first ("Answer: Locker 4821:
Talvik."): copying the key from the question and then the value that followed that key in the context are two
plain copies (induction), where naming the value straight after "Answer:" needs a two-step lookup a small model
learns much later. Every format puts the value right after punctuation, so the value is its own pre-token and
tokenizes the same in the record and in the answer; in a format like "... holds the Talvik." SuperBPE merges
" holds the T" into one token, and copying the value would then mean re-spelling it.

Short documents (4 to 12 records, a few hundred tokens) then ask about every record, in random order. Long ones
(150 to 400 records, several thousand tokens) ask every four to eight records, mostly about one of the last eight
(within a sliding-attention window) and otherwise about any earlier record (only the global layers reach it), so a
model trained on windows shorter than the document still sees questions together with their answers. Questions
are dense on purpose: the answers are the tokens that teach copying from context (induction), which a small model
otherwise learns late, and the same skill restates the operands of an arithmetic problem.

`make_span_document` also returns the character spans of the answers (each restated record after "Answer:"), so a
loss on the answers only is possible; `retrieval_documents` yields such documents.

Held out by construction: keys whose hash falls in a reserved eighth (`is_reserved_key`) never appear in training
documents; every evaluation question asks about such a key (its context's other records use ordinary keys, like
training documents do).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from kexaone.data.synthetic.languages import qa_text
from kexaone.data.synthetic.names import pseudo_word
from kexaone.data.synthetic.spans import SpanBuilder, SpanDocument

DOMAIN = "retrieval"
RESERVED_MOD = 8

# (header, record template, question template)
FORMATS = (
    ("Locker registry.", "Locker {k}: {v}.", "What does locker {k} hold?"),
    ("Key-value table.", "key {k} = {v}", "What is the value of key {k}?"),
    ("Room code words.", "Room {k}, code word: {v}.", "What is the code word for room {k}?"),
)


def is_reserved_key(key: int) -> bool:
    return int.from_bytes(hashlib.blake2b(f"key|{key}".encode(), digest_size=8).digest(), "little") % RESERVED_MOD == 0


def _keys(rng: random.Random, n: int, reserved: bool) -> list[int]:
    keys: list[int] = []
    seen: set[int] = set()
    while len(keys) < n:
        k = rng.randint(1000, 9999)
        if k not in seen and is_reserved_key(k) == reserved:
            seen.add(k)
            keys.append(k)
    return keys


def _values(rng: random.Random, n: int) -> list[str]:
    vals: list[str] = []
    seen: set[str] = set()
    while len(vals) < n:
        v = pseudo_word(rng, rng.randint(2, 3))
        if v not in seen:
            seen.add(v)
            vals.append(v)
    return vals


@dataclass(frozen=True)
class RetrievalItem:
    prompt: str
    answer: str
    num_records: int


def _qa(fmt: tuple[str, str, str], k: int, v: str | None) -> str:
    """The question about key k; the answer (v given) restates the record, key first, then the value."""
    return qa_text(fmt[2].format(k=k), None if v is None else fmt[1].format(k=k, v=v), "en")


def make_item(rng: random.Random, num_records: int) -> RetrievalItem:
    """An evaluation item: `num_records` records, one (at a random depth) with a reserved key, asked about."""
    fmt = rng.choice(FORMATS)
    keys = _keys(rng, num_records - 1, reserved=False)
    target = _keys(rng, 1, reserved=True)[0]
    depth = rng.randrange(num_records)
    keys.insert(depth, target)
    vals = _values(rng, num_records)
    lines = [fmt[1].format(k=k, v=v) for k, v in zip(keys, vals)]
    prompt = fmt[0] + "\n\n" + "\n".join(lines) + "\n\n" + _qa(fmt, target, None)  # training layout
    return RetrievalItem(prompt, lines[depth], num_records)


def make_span_document(rng: random.Random, long: bool) -> SpanDocument:
    """One training document (no reserved key anywhere) with the spans of its answers (each restated record after
    "Answer:", from the space before it)."""
    fmt = rng.choice(FORMATS)
    n = rng.randint(150, 400) if long else rng.randint(4, 12)
    keys, vals = _keys(rng, n, reserved=False), _values(rng, n)
    b = SpanBuilder()

    def qa(j: int) -> None:
        b.add("\n\n" + _qa(fmt, keys[j], None))
        b.add(" " + fmt[1].format(k=keys[j], v=vals[j]), answer=True)

    b.add(fmt[0])
    block: list[str] = []
    next_q = rng.randint(4, 8)
    for i, (k, v) in enumerate(zip(keys, vals)):
        block.append(fmt[1].format(k=k, v=v))
        if long and i + 1 == next_q and i + 1 < n:
            j = rng.randrange(max(0, i - 7), i + 1) if rng.random() < 0.75 else rng.randrange(i + 1)
            b.add("\n\n" + "\n".join(block))
            qa(j)
            block = []
            next_q += rng.randint(4, 8)
    if block:
        b.add("\n\n" + "\n".join(block))
    asked = rng.sample(range(n), k=rng.randint(3, 8)) if long else rng.sample(range(n), k=n)
    for j in asked:
        qa(j)
    return b.build(f"{DOMAIN}/en")


def make_document(rng: random.Random, long: bool) -> str:
    """One training document's text (make_span_document without the spans)."""
    return make_span_document(rng, long).text


def retrieval_documents(seed: int = 0, long_fraction: float = 0.4) -> Iterator[SpanDocument]:
    """Endless training documents (with their answer spans); `long_fraction` of them several thousand tokens long."""
    rng = random.Random(f"kexaone-retrieval|{seed}")
    while True:
        yield make_span_document(rng, rng.random() < long_fraction)
