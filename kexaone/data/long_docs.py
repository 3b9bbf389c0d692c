"""Whole long documents for context extension: built from the synthetic world and, when present, from the training
corpus `../shared/corpora/train` (never its siblings text/, code/ or tasks/, which are evaluation-only).

A long document is a run of consecutive whole sections joined by blank lines, grown until it reaches a target
length in characters (the caller converts its token target with the tokenizer's bytes per token):
- synthetic: long retrieval documents (hundreds of key-value records with questions about earlier records, the
  long-range copy skill a needle gate measures) interleaved with knowledge documents of the synthetic world;
- corpus text files (`*.txt`, one paragraph per line): consecutive paragraphs of one file starting at a seeded
  line, so a novel stays in reading order;
- corpus code (`code/`): whole source files, consecutive in sorted order (files of one project sit together).
Sections are never cut: a document ends within OVERSHOOT x its target (longer sections are skipped). The extension stage then packs these
documents without truncation (kexaone.data.docpacking, truncate=False).

Not here: tokenizing and packing (kexaone.data.shards / docpacking), the mixture weights (kexaone.train.extend).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from kexaone.data.sources import Document

FORBIDDEN_CORPORA = ("text", "code", "tasks")
"""Sub-directories of ../shared/corpora that are evaluation sets: never read here."""


def default_corpus_root() -> Path | None:
    """`<corpora>/train` (kexaone.pipeline.corpus.corpora_dir: env KEXAONE_CORPORA, else <repo>/../shared/corpora);
    None when absent."""
    from kexaone.pipeline.corpus import corpora_dir

    root = corpora_dir() / "train"
    return root if root.is_dir() else None


def check_corpus_root(root: Path) -> Path:
    """The training-corpus directory, refusing the evaluation corpora (a path ending in text/, code/ or tasks/
    directly under corpora/)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"long-document corpus {root} is not a directory")
    if root.resolve().name in FORBIDDEN_CORPORA and root.resolve().parent.name == "corpora":
        raise ValueError(f"{root} is an evaluation corpus; long documents come from corpora/train only")
    return root


OVERSHOOT = 1.25
"""A document may end at most this factor past its target: a section that would push it further is skipped (a
document is never cut, so an oversized section would widen the whole batch it lands in)."""
MAX_SKIPS = 200


def _join_until(sections: Iterator[str], target_chars: int) -> str:
    """Whole sections, in order, until target_chars UTF-8 bytes are reached; sections that would overshoot the target by more
    than OVERSHOOT are skipped (after MAX_SKIPS skips in a row the document ends with what it has, or, when it is
    still empty, is the next section alone; a source that runs out before anything fits gives its first section)."""
    parts, n, skips = [], 0, 0
    limit = OVERSHOOT * target_chars
    first_skipped = None
    for s in sections:
        size = len(s.encode("utf-8"))  # bytes: what the caller's bytes-per-token estimate converts
        if n + size + 2 > limit and (parts or skips < MAX_SKIPS):
            skips += 1
            first_skipped = s if first_skipped is None else first_skipped
            if skips >= MAX_SKIPS and parts:
                break
            continue
        parts.append(s)
        n += size + 2
        skips = 0
        if n >= target_chars:
            break
    if not parts and first_skipped is not None:  # the source ran out before anything fitted
        return first_skipped
    return "\n\n".join(parts)


def synthetic_long_documents(target_chars: int, n_docs: int, seed: int = 0, world_size: str = "tiny"
                             ) -> list[Document]:
    """n_docs documents of >= target_chars: long retrieval documents interleaved with knowledge documents."""
    from kexaone.data.synthetic.knowledge import knowledge_documents
    from kexaone.data.synthetic.retrieval import retrieval_documents
    from kexaone.data.synthetic.world import World

    # Long retrieval documents (hundreds of records, ~15-40K characters) where they fit, else short ones.
    retrieval = retrieval_documents(seed + 7919, long_fraction=1.0 if target_chars >= 40_000 else 0.0)
    knowledge = knowledge_documents(World(seed, world_size), seed)

    def sections() -> Iterator[str]:
        while True:
            yield next(retrieval).text
            k = next(knowledge, None)
            if k is not None:
                yield k.text

    stream = sections()
    return [Document(_join_until(stream, target_chars), "long/synthetic") for _ in range(n_docs)]


def _text_documents(path: Path, target_chars: int, n_docs: int, rng: random.Random) -> list[Document]:
    lines = [ln.rstrip("\n") for ln in path.open(encoding="utf-8") if ln.strip()]
    if not lines:
        return []
    out = []
    for _ in range(n_docs):
        start = rng.randrange(len(lines))
        out.append(Document(_join_until(iter(lines[start:] + lines[:start]), target_chars), f"long/{path.stem}"))
    return out


def _code_documents(code_dir: Path, target_chars: int, n_docs: int, rng: random.Random) -> list[Document]:
    files = sorted(p for p in code_dir.rglob("*") if p.is_file())
    if not files:
        return []
    out = []
    for _ in range(n_docs):
        start = rng.randrange(len(files))

        def texts(start: int = start) -> Iterator[str]:
            for p in files[start:] + files[:start]:
                try:
                    yield f"# file: {p.name}\n{p.read_text(encoding='utf-8')}"
                except UnicodeDecodeError:
                    continue

        out.append(Document(_join_until(texts(), target_chars), "long/code"))
    return out


def corpus_long_documents(root: Path, target_chars: int, n_docs: int, seed: int = 0) -> list[Document]:
    """n_docs documents spread over the corpus's text files and code/ (round-robin), each >= target_chars when
    its source is long enough."""
    root = check_corpus_root(root)
    rng = random.Random(f"kexaone-long-docs|{seed}")
    sources: list[Path] = sorted(root.glob("*.txt"))
    if (root / "code").is_dir():
        sources.append(root / "code")
    if not sources:
        return []
    per = [n_docs // len(sources) + (i < n_docs % len(sources)) for i in range(len(sources))]
    out: list[Document] = []
    for src, k in zip(sources, per):
        if k:
            out += (_code_documents(src, target_chars, k, rng) if src.is_dir()
                    else _text_documents(src, target_chars, k, rng))
    return out


def long_documents(target_chars: int, n_docs: int, seed: int = 0, corpus_root: Path | None = None,
                   corpus_share: float = 0.5) -> list[Document]:
    """The long documents of one extension stage: `corpus_share` of them from the corpus (when a root is given),
    the rest synthetic; shuffled with the seed."""
    if target_chars < 1 or n_docs < 1:
        raise ValueError(f"target_chars and n_docs must be >= 1, got {target_chars} and {n_docs}")
    if not 0.0 <= corpus_share <= 1.0:
        raise ValueError(f"corpus_share must be in [0, 1], got {corpus_share}")
    n_corpus = round(n_docs * corpus_share) if corpus_root is not None else 0
    docs = corpus_long_documents(corpus_root, target_chars, n_corpus, seed) if n_corpus else []
    docs += synthetic_long_documents(target_chars, n_docs - len(docs), seed)
    random.Random(f"kexaone-long-shuffle|{seed}").shuffle(docs)
    return docs


def write_jsonl(path: Path, docs: list[Document]) -> Path:
    """Documents as JSONL records {"text", "domain", "lang"} (the corpus format), written atomically."""
    from kexaone.utils.io import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        for d in docs:
            domain, _, lang = d.tag.partition("/")
            f.write(json.dumps({"text": d.text, "domain": domain, "lang": lang}, ensure_ascii=False) + "\n")
    return path
