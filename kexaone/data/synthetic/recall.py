"""Retrieval-dense synthetic data: forms whose answers can only be copied from the context, in two shapes.

Token form (for the induction probe, kexaone.eval.induction, and for studies that train on raw ids): a sequence of
token ids plus a bool mask of the answer positions, the ids drawn from given id ranges so any vocabulary works.
- `mqar_tokens`: multi-query associative recall (Zoology's MQAR): `n_pairs` key-value pairs (keys and values from
  disjoint id ranges), then queries `k v` in a new random order; the answers are the queried values.
- `repeat_tokens`: a random span, filler, the same span again (Olsson's repeated-tokens test with a varying gap, so a
  fixed-offset positional head cannot solve it); the answers are the second copy from its second token on.

Text form (documents for the corpus pipeline, `SpanDocument`: text plus the character spans of its answers, so a
loss on answers only is possible once a tokenizer maps them to tokens, `answer_token_mask`):
- `recall_document`: a compact key-value list ("4821 Talvik; 3310 Morra; ...") and then a recall list that restates
  pairs in another order; the answers are the recalled values.
- `repeat_document`: a run of random pseudo-words and numbers, a few filler sentences, then the run again.
- `passkey_document`: a pass key hidden in repetitive filler (NIAH-lite), asked for at the end.
Every answer follows a space or punctuation, so it is its own pre-token and tokenizes the same in the context and
in the answer (see kexaone.data.synthetic.retrieval for why that matters).

What this module does not do: decide how much of a corpus these forms take (kexaone.data.synthetic.corpus) or
tokenize (callers pass a tokenizer to `answer_token_mask`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from kexaone.data.synthetic.names import pseudo_word
from kexaone.data.synthetic.retrieval import is_reserved_key
from kexaone.data.synthetic.spans import SpanBuilder, SpanDocument

DOMAIN = "retrieval"


def _check_range(name: str, r: tuple[int, int], need: int) -> None:
    lo, hi = r
    if not (0 <= lo < hi):
        raise ValueError(f"{name} must be an id range (lo, hi) with 0 <= lo < hi, got {r}")
    if hi - lo < need:
        raise ValueError(f"{name} {r} holds {hi - lo} ids but {need} distinct ones are needed")


# ---------------------------------------------------------------------------------------------- token form
def mqar_tokens(rng: random.Random, n_pairs: int, key_range: tuple[int, int], value_range: tuple[int, int],
                n_queries: int | None = None) -> tuple[list[int], list[bool]]:
    """[k1 v1 ... kn vn | kq1 vq1 ... ] and the mask of the query values. Keys are distinct (a key names one value);
    values may repeat. `n_queries` (default all pairs) pairs are queried, each at most once."""
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    _check_range("key_range", key_range, n_pairs)
    _check_range("value_range", value_range, 1)
    if max(key_range[0], value_range[0]) < min(key_range[1], value_range[1]):
        raise ValueError(f"key_range {key_range} and value_range {value_range} must not overlap")
    nq = n_pairs if n_queries is None else n_queries
    if not 1 <= nq <= n_pairs:
        raise ValueError(f"n_queries must be in [1, n_pairs={n_pairs}], got {n_queries}")
    keys = rng.sample(range(*key_range), n_pairs)
    vals = [rng.randrange(*value_range) for _ in keys]
    ids = [t for kv in zip(keys, vals) for t in kv]
    mask = [False] * len(ids)
    for j in rng.sample(range(n_pairs), nq):
        ids += [keys[j], vals[j]]
        mask += [False, True]
    return ids, mask


def repeat_tokens(rng: random.Random, span: int, id_range: tuple[int, int], filler: tuple[int, int] = (0, 0),
                  prefix: tuple[int, int] = (0, 0)) -> tuple[list[int], list[bool]]:
    """[prefix | x1..xL | filler | x1..xL]: random ids from id_range, span length L; `filler`/`prefix` are (min, max)
    lengths of random ids before and between the copies. Mask: the second copy's x2..xL (x1 cannot be inferred
    from the context)."""
    if span < 2:
        raise ValueError(f"span must be >= 2 (the first token of a copy is not predictable), got {span}")
    _check_range("id_range", id_range, span + 1)
    for name, (a, b) in (("filler", filler), ("prefix", prefix)):
        if not 0 <= a <= b:
            raise ValueError(f"{name} must be (min, max) lengths with 0 <= min <= max, got {(a, b)}")
    # The span's ids are distinct and occur nowhere else in the row, so each token of the second copy has exactly
    # one earlier occurrence, and what followed it there is the answer.
    x = rng.sample(range(*id_range), span)
    used = set(x)

    def draw(n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            t = rng.randrange(*id_range)
            if t not in used:
                out.append(t)
        return out

    head, gap = draw(rng.randint(*prefix)), draw(rng.randint(*filler))
    ids = head + x + gap + x
    mask = [False] * (len(head) + span + len(gap)) + [False] + [True] * (span - 1)
    return ids, mask


# ---------------------------------------------------------------------------------------------- text form
def _words(rng: random.Random, n: int, syllables: tuple[int, int] = (2, 3)) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        w = pseudo_word(rng, rng.randint(*syllables))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def recall_document(rng: random.Random, n_pairs: int, n_queries: int | None = None, key_digits: int = 4
                    ) -> SpanDocument:
    """'Recall list.\\n4821 Talvik; 3310 Morra; ...\\nRecall: 3310 Morra; ...' (keys numbers of `key_digits`
    digits, never a key the retrieval task reserves for evaluation; values pseudo-words; the recalled values are
    the answers)."""
    if n_pairs < 1 or key_digits < 1:
        raise ValueError(f"n_pairs and key_digits must be >= 1, got {n_pairs}, {key_digits}")
    nq = n_pairs if n_queries is None else n_queries
    if not 1 <= nq <= n_pairs:
        raise ValueError(f"n_queries must be in [1, n_pairs={n_pairs}], got {n_queries}")
    if n_pairs > 9 * 10 ** (key_digits - 1) // 2:
        raise ValueError(f"{n_pairs} pairs need keys of more than {key_digits} digit(s)")
    lo = 10 ** (key_digits - 1)
    keys: list[int] = []
    while len(keys) < n_pairs:
        k = rng.randrange(lo, 10 * lo)
        # Keys the held-out retrieval task asks about never occur in training (kexaone.data.synthetic.retrieval).
        if k not in keys and not is_reserved_key(k):
            keys.append(k)
    vals = _words(rng, n_pairs)
    b = SpanBuilder()
    b.add("Recall list.\n" + "; ".join(f"{k} {v}" for k, v in zip(keys, vals)) + ".\nRecall:")
    for i, j in enumerate(rng.sample(range(n_pairs), nq)):
        b.add(f"{';' if i else ''} {keys[j]}")
        b.add(" " + vals[j], answer=True)
    b.add(".")
    return b.build()


_FILLER = ("The grass is green.", "The sky is blue.", "The sun is warm.", "Here we go again.",
           "The river flows on.", "Time passes slowly.")


def repeat_document(rng: random.Random, span_words: int, filler_sentences: tuple[int, int] = (1, 4)
                    ) -> SpanDocument:
    """'Sequence: Talvik 482 Morra ...\\n<filler>\\nAgain: Talvik 482 Morra ...' (the second run's words after the
    first are the answers: the first word of a copy is the cue)."""
    if span_words < 2:
        raise ValueError(f"span_words must be >= 2, got {span_words}")
    words = [str(rng.randint(10, 999)) if rng.random() < 0.3 else pseudo_word(rng, rng.randint(1, 3))
             for _ in range(span_words)]
    filler = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(*filler_sentences)))
    b = SpanBuilder()
    b.add("Sequence: " + " ".join(words) + ".\n" + filler + "\nAgain: " + words[0])
    for w in words[1:]:
        b.add(" " + w, answer=True)
    b.add(".")
    return b.build()


def passkey_document(rng: random.Random, filler_sentences: tuple[int, int] = (4, 20), digits: int = 5
                     ) -> SpanDocument:
    """Filler, 'The pass key is 48213. Remember it. 48213 is the pass key.' at a random depth, more filler, then
    'What is the pass key? The pass key is 48213.' (the final key is the answer)."""
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    key = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
    n = rng.randint(*filler_sentences)
    depth = rng.randint(0, n)
    sents = [rng.choice(_FILLER) for _ in range(n)]
    sents.insert(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")
    b = SpanBuilder()
    b.add(" ".join(sents) + "\nWhat is the pass key? The pass key is")
    b.add(" " + key, answer=True)
    b.add(".")
    return b.build()


FORMS = ("recall", "repeat", "passkey")


def dense_recall_documents(seed: int = 0, forms: dict[str, float] | None = None) -> Iterator[SpanDocument]:
    """Endless documents of the text forms, drawn with weights `forms` (default recall 0.6, repeat 0.25,
    passkey 0.15). Sizes are drawn to fit a 128-256-token context: 6 to 24 pairs, 6 to 16 repeated words."""
    forms = dict(forms or {"recall": 0.6, "repeat": 0.25, "passkey": 0.15})
    bad = sorted(set(forms) - set(FORMS))
    if bad or not forms or any(w < 0 for w in forms.values()) or sum(forms.values()) <= 0:
        raise ValueError(f"forms must map some of {FORMS} to weights >= 0 (not all 0), got {forms}")
    rng = random.Random(f"kexaone-recall|{seed}")
    names, weights = list(forms), list(forms.values())
    while True:
        form = rng.choices(names, weights)[0]
        if form == "recall":
            yield recall_document(rng, rng.randint(6, 24))
        elif form == "repeat":
            yield repeat_document(rng, rng.randint(6, 16))
        else:
            yield passkey_document(rng)


def answer_token_mask(tokenizer, doc: SpanDocument) -> tuple[list[int], list[bool]]:
    """(token ids of doc.text, mask of the answer tokens): a token is an answer token when it shares a character
    with an answer span (a token that merged an answer with its neighbour still carries the answer). Needs a
    tokenizer with `encode_with_offsets` (KExaoneTokenizer)."""
    from kexaone.data.shards import answer_mask

    ids, offsets = tokenizer.encode_with_offsets(doc.text)
    return list(ids), [bool(m) for m in answer_mask(offsets, doc.answers)]
