"""A local document collection for the search agent: BM25 retrieval (bm25s) and passage lookup inside a document.

Documents come from any `kexaone.data.sources` spec (txt, md and other text files, JSONL, Parquet, `datasets`
directories); plain-text files are one document each by default (`txt_mode="file"`). Each document gets a short id
(`"0"`, `"1"`, ... in reading order) that the model passes to `open`, and a title (the JSONL/Parquet `title`
field is not visible through sources, so: the first line, cut to 80 characters).

Tokenization for BM25 (`search_tokens`): lower-cased words for alphabetic scripts, and overlapping character
bigrams for Hangul, Han and kana runs (plus the single character of a one-character run), since Korean words
carry particles (`서울에서`, `서울은`) that a whitespace tokenizer would keep apart from `서울`; bigrams match them
without a morphological analyser.

This module does not summarize (kexaone.agents.summarize) and has no dense retrieval.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from kexaone.data.sources import HUB_PREFIX, iter_tagged_documents, parse_spec, resolve_files

# Scripts written without spaces between words (or with particles glued on): Hangul syllables and jamo, CJK
# ideographs, hiragana, katakana.
_CJK = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af\u4e00-\u9fff\u3400-\u4dbf\u3040-\u309f\u30a0-\u30ff"
_TOKEN_RE = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+", re.UNICODE)
_CJK_RE = re.compile(rf"[{_CJK}]")
TITLE_CHARS = 80
SNIPPET_CHARS = 200


def search_tokens(text: str) -> list[str]:
    """BM25 terms of `text`: lower-cased words; CJK runs become overlapping character bigrams."""
    out: list[str] = []
    for m in _TOKEN_RE.finditer(text.lower()):
        run = m.group(0)
        if _CJK_RE.match(run):
            out.extend([run] if len(run) == 1 else [run[i:i + 2] for i in range(len(run) - 1)])
        else:
            out.append(run)
    return out


@dataclass(frozen=True)
class SearchDoc:
    id: str
    title: str
    text: str
    source: str  # the file (or hub dataset) it came from


def split_passages(text: str, max_chars: int = 600) -> list[str]:
    """Paragraphs (blank-line separated; single lines when a text has none), long ones cut at sentence ends near
    `max_chars`."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paras) <= 1:
        paras = [p.strip() for p in text.splitlines() if p.strip()] or [text.strip()]
    out: list[str] = []
    for p in paras:
        while len(p) > max_chars:
            cut = max(p.rfind(". ", 0, max_chars), p.rfind("다. ", 0, max_chars), p.rfind("。", 0, max_chars))
            cut = cut + 1 if cut > max_chars // 3 else max_chars
            out.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            out.append(p)
    return out


class DocumentIndex:
    """BM25 over a list of documents, plus `passages(doc_id, pattern)` for the `open` tool."""

    def __init__(self, docs: Sequence[SearchDoc], *, k1: float = 1.5, b: float = 0.75):
        import bm25s

        if not docs:
            raise ValueError("a document index needs at least one document")
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            raise ValueError("document ids must be unique")
        self.docs = list(docs)
        self.by_id = {d.id: d for d in self.docs}
        corpus = [search_tokens(d.title + "\n" + d.text) or [""] for d in self.docs]
        self.bm25 = bm25s.BM25(k1=k1, b=b)
        self.bm25.index(corpus, show_progress=False)

    @classmethod
    def from_texts(cls, texts: Iterable[str], titles: Iterable[str] | None = None) -> DocumentIndex:
        texts = list(texts)
        titles = list(titles) if titles is not None else [_title(t) for t in texts]
        if len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
        return cls([SearchDoc(str(i), ti, te, "texts") for i, (te, ti) in enumerate(zip(texts, titles))])

    @classmethod
    def from_sources(cls, specs: Sequence[str], *, text_field: str = "text", txt_mode: str = "file") -> DocumentIndex:
        """Index every document of the given source specs (see kexaone.data.sources)."""
        if isinstance(specs, str):
            specs = [specs]
        docs = []
        for spec in specs:
            path = parse_spec(spec).path
            # File by file, so each document can name the file it came from.
            parts = [path] if path.startswith(HUB_PREFIX) else [str(f) for f in resolve_files(path)]
            for part in parts:
                for d in iter_tagged_documents(part, text_field=text_field, txt_mode=txt_mode):
                    docs.append(SearchDoc(str(len(docs)), _title(d.text), d.text, part))
        return cls(docs)

    def __len__(self) -> int:
        return len(self.docs)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for `query` [n_docs]; query terms absent from the collection score 0."""
        vocab = self.bm25.vocab_dict
        ids = [vocab[t] for t in search_tokens(query) if t in vocab]
        if not ids:
            return np.zeros(len(self.docs), dtype=np.float32)
        return np.asarray(self.bm25.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, query: str, k: int = 5) -> list[dict]:
        """Top-`k` documents with a positive score, best first (ties: lower id first):
        `[{"doc", "title", "snippet", "score"}]`."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("search query must be a non-empty string")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        s = self.scores(query)
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        return [{"doc": self.docs[i].id, "title": self.docs[i].title, "snippet": self._snippet(self.docs[i], query),
                 "score": round(float(s[i]), 4)} for i in order if s[i] > 0]

    def _snippet(self, doc: SearchDoc, query: str) -> str:
        best = self.passages(doc.id, query, max_passages=1)
        text = best[0] if best else doc.text
        return text[:SNIPPET_CHARS] + ("…" if len(text) > SNIPPET_CHARS else "")

    def get(self, doc_id: str) -> SearchDoc:
        doc_id = str(doc_id).strip()
        if doc_id not in self.by_id:
            raise ValueError(f"unknown document {doc_id!r}; ids are the 'doc' values that search returns "
                             f"(0..{len(self.docs) - 1})")
        return self.by_id[doc_id]

    def passages(self, doc_id: str, pattern: str = "", max_passages: int = 5) -> list[str]:
        """Passages of a document that match `pattern`, in document order: first those containing it literally
        (case-insensitive) or as a regular expression; when none do, the passages sharing the most search terms
        with it; an empty pattern gives the first passages."""
        doc = self.get(doc_id)
        parts = split_passages(doc.text)
        pattern = (pattern or "").strip()
        if not pattern:
            return parts[:max_passages]
        low = pattern.lower()
        try:
            rx = re.compile(pattern, re.IGNORECASE)
        except re.error:
            rx = None
        hits = [i for i, p in enumerate(parts) if low in p.lower() or (rx is not None and rx.search(p))]
        if not hits:
            terms = set(search_tokens(pattern))
            overlap = [len(terms & set(search_tokens(p))) for p in parts]
            ranked = sorted((i for i in range(len(parts)) if overlap[i] > 0), key=lambda i: (-overlap[i], i))
            hits = sorted(ranked[:max_passages])
        return [parts[i] for i in hits[:max_passages]]


def _title(text: str) -> str:
    first = text.strip().splitlines()[0].strip().lstrip("#").strip() if text.strip() else ""
    return first[:TITLE_CHARS]
