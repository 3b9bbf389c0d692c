"""The embedded default corpus: every synthetic domain generated deterministically and written as JSONL.

`write_corpus(out_dir, size)` writes one `<domain>.jsonl` per domain (records `{"text", "domain", "lang"}`, so the
data pipeline tags each document "domain/lang" for per-domain and per-language evaluation; retrieval documents also
carry `"answers"`, the [start, end) character spans of their answers) and `manifest.json`.
The same (size, seed, package version of the generators, installed stdlib) always gives the same bytes; a directory
that already holds that corpus is left alone.

Domains: knowledge (world facts in six languages), arithmetic (step-by-step reasoning in chat format), retrieval
(key-value documents with questions; in the `default` size half of them retrieval-dense recall lists, repeated
runs and passkeys, kexaone.data.synthetic.recall), tools (tool-use dialogues in chat format), code (Python stdlib).
Sizes: `tiny` (~0.6 MB of text, for smoke tests), `default` (~11 MB, what the CPU speedrun trains on for a few
epochs), `large` (~110 MB).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from kexaone.data.sources import Document
from kexaone.data.synthetic.arithmetic import arithmetic_documents
from kexaone.data.synthetic.code import code_documents
from kexaone.data.synthetic.knowledge import knowledge_documents
from kexaone.data.synthetic.recall import dense_recall_documents
from kexaone.data.synthetic.retrieval import retrieval_documents
from kexaone.data.synthetic.tools import tool_documents
from kexaone.data.synthetic.world import World
from kexaone.utils.io import atomic_open, atomic_write_text

GENERATOR_VERSION = 4
"""Bump when a generator's output changes, so cached corpora are rebuilt."""
DOMAINS = ("knowledge", "arithmetic", "retrieval", "tools", "code")


@dataclass(frozen=True)
class CorpusSize:
    name: str
    world: str
    """WORLD_SIZES key of the generated world."""
    chars: dict
    """Characters of text per domain (each domain stops at the first document that reaches its budget)."""
    retrieval_long_fraction: float = 0.25
    retrieval_dense_fraction: float = 0.0
    """Share of the retrieval domain's documents drawn from the retrieval-dense forms of
    kexaone.data.synthetic.recall (recall lists, repeated runs, passkeys) instead of record documents: answers that
    can only be copied from the context, which make induction heads form sooner (benchmarks/results/
    induction_study.md)."""


CORPUS_SIZES = {
    "tiny": CorpusSize("tiny", "tiny", {"knowledge": 250_000, "arithmetic": 120_000, "retrieval": 100_000,
                                        "tools": 60_000, "code": 100_000}),
    # The CPU speedrun's corpus: mostly short retrieval documents, whose questions fit a 128-token window, half of
    # them in the retrieval-dense forms (every answer copied from the context).
    "default": CorpusSize("default", "default", {"knowledge": 4_000_000, "arithmetic": 2_000_000,
                                                 "retrieval": 2_000_000, "tools": 1_000_000, "code": 2_500_000},
                          retrieval_long_fraction=0.05, retrieval_dense_fraction=0.5),
    "large": CorpusSize("large", "large", {"knowledge": 40_000_000, "arithmetic": 20_000_000,
                                           "retrieval": 20_000_000, "tools": 10_000_000, "code": 8_000_000}),
}


def get_size(size: str | CorpusSize) -> CorpusSize:
    if isinstance(size, CorpusSize):
        return size
    if size not in CORPUS_SIZES:
        raise ValueError(f"unknown corpus size {size!r}; choose one of {sorted(CORPUS_SIZES)}")
    return CORPUS_SIZES[size]


def _retrieval_mix(seed: int, size: CorpusSize) -> Iterator[Document]:
    """Record documents, with `retrieval_dense_fraction` of the documents from the retrieval-dense forms. Both kinds
    are SpanDocuments (text and tag like a Document, plus `answers`), whose spans write_corpus stores so a loss on
    answers only is possible downstream."""
    records = retrieval_documents(seed, size.retrieval_long_fraction)
    if size.retrieval_dense_fraction <= 0:
        yield from records
        return
    dense = dense_recall_documents(seed)
    rng = random.Random(f"kexaone-retrieval-mix|{seed}")
    while True:
        yield next(dense) if rng.random() < size.retrieval_dense_fraction else next(records)


def domain_documents(domain: str, size: str | CorpusSize = "default", seed: int = 0) -> Iterator[Document]:
    """The documents of one domain, stopping once `size.chars[domain]` characters are reached."""
    size = get_size(size)
    world = World(seed, size.world)
    gens = {
        "knowledge": lambda: knowledge_documents(world, seed),
        "arithmetic": lambda: arithmetic_documents(seed),
        "retrieval": lambda: _retrieval_mix(seed, size),
        "tools": lambda: tool_documents([c.name for c in world.cities], seed),
        "code": lambda: code_documents(heldout=False),
    }
    if domain not in gens:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose one of {DOMAINS}")
    budget, total = size.chars[domain], 0
    for doc in gens[domain]():
        if total >= budget:
            return
        total += len(doc.text)
        yield doc


def generate_corpus(size: str | CorpusSize = "default", seed: int = 0) -> dict[str, list[Document]]:
    """Every domain's documents in memory (for small sizes and tests; write_corpus streams to disk)."""
    return {d: list(domain_documents(d, size, seed)) for d in DOMAINS}


def _identity(size: CorpusSize, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "size": asdict(size), "seed": seed,
            "python": platform.python_version()}


def write_corpus(out_dir: str | os.PathLike, size: str | CorpusSize = "default", seed: int = 0) -> dict[str, Path]:
    """Write (or reuse) the corpus under `out_dir`; returns {domain: path of its JSONL file}."""
    size = get_size(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ident = _identity(size, seed)
    manifest_path = out / "manifest.json"
    paths = {d: out / f"{d}.jsonl" for d in DOMAINS}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = {}
        if old.get("identity") == ident and all(p.exists() for p in paths.values()):
            return paths
    domains = {d: {"file": paths[d].name, **_write_documents(paths[d], domain_documents(d, size, seed))}
               for d in DOMAINS}
    # The manifest is written last: a directory without a matching one is regenerated.
    atomic_write_text(manifest_path, json.dumps({"identity": ident, "domains": domains}, indent=1))
    return paths


def _write_documents(path: Path, docs: Iterator[Document], domain: str | None = None) -> dict:
    """Write documents as corpus records (atomically); `domain` replaces the one in their tags. Returns
    {documents, chars, sha256}."""
    h, n, chars = hashlib.sha256(), 0, 0
    with atomic_open(path, "w") as f:
        for doc in docs:
            tag_domain, _, lang = doc.tag.partition("/")
            rec = {"text": doc.text, "domain": domain or tag_domain, "lang": lang}
            if getattr(doc, "answers", None):
                rec["answers"] = [list(span) for span in doc.answers]  # character spans of the answers
            line = json.dumps(rec, ensure_ascii=False) + "\n"
            f.write(line)
            h.update(line.encode("utf-8"))
            n, chars = n + 1, chars + len(doc.text)
    return {"documents": n, "chars": chars, "sha256": h.hexdigest()}


COPY_WARMUP_SEED_OFFSET = 1000
"""The warm-up's documents come from dense_recall_documents(seed + this): not the retrieval domain's (seed) nor the
held-out probe's (kexaone.eval.induction.DOCUMENTS_SEED)."""


def write_copy_warmup_corpus(out_dir: str | os.PathLike, chars: int, seed: int = 0) -> Path:
    """Fresh retrieval-dense documents for a copy warm-up (recall lists, repeated runs, pass keys:
    kexaone.data.synthetic.recall.dense_recall_documents), at least `chars` characters of them, tagged `copy/<lang>`
    and written with their answer spans to `out_dir/copy_warmup-v<generator>-<seed>-<chars>.jsonl` (reused when
    present; written atomically).

    Why a file of its own: the induction study formed copying on `small` with every row such a document, streamed
    without repeats (benchmarks/results/induction_study_notes.md). The retrieval domain is only half dense forms
    (half record documents) and, at the default size, 0.85M tokens with the default run's tokenizer, so a warm-up of
    800 x 2048 tokens on it would read each document about twice. Size `chars` for the warm-up's tokens
    (kexaone.data.curriculum.CHARS_PER_WARMUP_TOKEN)."""
    if chars < 1:
        raise ValueError(f"chars must be >= 1, got {chars}")
    path = Path(out_dir) / f"copy_warmup-v{GENERATOR_VERSION}-{seed}-{chars}.jsonl"
    if path.exists():
        return path
    Path(out_dir).mkdir(parents=True, exist_ok=True)

    def take() -> Iterator[Document]:
        total = 0
        for doc in dense_recall_documents(seed + COPY_WARMUP_SEED_OFFSET):
            if total >= chars:
                return
            total += len(doc.text)
            yield doc

    _write_documents(path, take(), domain="copy")
    return path


def tokenizer_corpus(size: str | CorpusSize = "default", seed: int = 0, max_bytes: int | None = 6_000_000
                     ) -> Iterator[str]:
    """Texts to train the default tokenizer on: the domains interleaved in proportion to their budgets (so any
    prefix is a fair sample of the mixture), until `max_bytes` UTF-8 bytes (None: the whole corpus)."""
    size = get_size(size)
    total_chars = sum(size.chars.values())
    gens = {d: domain_documents(d, size, seed) for d in DOMAINS}
    credit = dict.fromkeys(DOMAINS, 0.0)
    used = 0
    for _ in itertools.count():
        if not gens:
            return
        # Deficit round-robin: the domain furthest behind its share of the bytes produced so far goes next.
        d = min(gens, key=lambda k: (credit[k] - size.chars[k] / total_chars * max(used, 1), k))
        doc = next(gens[d], None)
        if doc is None:
            del gens[d]
            continue
        b = len(doc.text.encode("utf-8"))
        if max_bytes is not None and used + b > max_bytes and used > 0:
            return
        credit[d] += b
        used += b
        yield doc.text
