"""Tokenizer evaluation: bytes per token per file or domain, the superword share of the vocabulary and of encoded
tokens, a round-trip check, side by side with a baseline tokenizer. Used by `kexaone tokenizer eval` and the
benchmark; it does not train anything.

A *superword* token is one whose bytes, without leading/trailing whitespace, still contain a space: it spans
(parts of) at least two words.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from kexaone.data.sources import iter_documents, parse_spec
from kexaone.tokenizer.pretokenize import fix_surrogates


def is_superword(data: bytes) -> bool:
    return b" " in data.strip()


def superword_ids(tok) -> set[int]:
    """Ids of the superword tokens of `tok` (specials excluded)."""
    specials = set(tok.special_ids.values())
    return {i for i in range(tok.vocab_size) if i not in specials and is_superword(tok.token_bytes(i))}


def vocab_superword_share(tok) -> float:
    """Fraction of the learned (non-special) vocabulary that are superword tokens."""
    learned = tok.vocab_size - len(tok.special_ids)
    return len(superword_ids(tok)) / max(1, learned)


@dataclass
class DomainResult:
    """One tokenizer on one file or domain."""

    name: str
    bytes: int
    tokens: int
    bytes_per_token: float
    superword_token_share: float  # fraction of the encoded tokens that are superwords
    round_trip_ok: bool  # decode(encode(x)) == NFC(x) for every document

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_documents(tok, name: str, docs: list[str], superwords: set[int] | None = None) -> DomainResult:
    """Encode `docs` (in parallel batches) and measure them."""
    superwords = superword_ids(tok) if superwords is None else superwords
    encoded = tok.encode_batch(docs)
    n_bytes = sum(len(fix_surrogates(d).encode("utf-8")) for d in docs)
    n_tokens = sum(len(ids) for ids in encoded)
    n_super = sum(1 for ids in encoded for i in ids if i in superwords)
    ok = all(tok.decode(ids) == unicodedata.normalize("NFC", fix_surrogates(d)) for ids, d in zip(encoded, docs))
    return DomainResult(name, n_bytes, n_tokens, n_bytes / max(1, n_tokens), n_super / max(1, n_tokens), ok)


def load_documents(spec: str, text_field: str = "text") -> tuple[str, list[str]]:
    """`path` or `name=path` -> (name, documents), read by `kexaone.data.sources`: a text file gives one document
    per line (line ending kept, so newlines are measured too), JSONL/Parquet/`datasets` records their `text_field`,
    code and markup files one document each; a directory or glob gives the documents of every file in it. The
    name defaults to the file stem (directory name)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    return name or parse_spec(path).name, list(iter_documents(path, text_field=text_field, txt_mode="line_eol"))


def compare(tok, docs_by_name: dict[str, list[str]], baseline=None) -> list[dict]:
    """One row per domain: the tokenizer's numbers, and the baseline's with the bytes/token ratio when given."""
    sw = superword_ids(tok)
    sw_base = superword_ids(baseline) if baseline is not None else None
    rows = []
    for name, docs in docs_by_name.items():
        r = evaluate_documents(tok, name, docs, sw).to_dict()
        if baseline is not None:
            b = evaluate_documents(baseline, name, docs, sw_base)
            r["baseline_bytes_per_token"] = b.bytes_per_token
            r["baseline_round_trip_ok"] = b.round_trip_ok
            r["ratio"] = r["bytes_per_token"] / b.bytes_per_token
        rows.append(r)
    return rows


def markdown_table(rows: Iterable[dict]) -> str:
    rows = list(rows)
    has_base = any("ratio" in r for r in rows)
    head = ["domain", "bytes", "tokens", "bytes/token", "superword tokens", "round trip"]
    if has_base:
        head += ["baseline bytes/token", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["name"], f"{r['bytes']:,}", f"{r['tokens']:,}", f"{r['bytes_per_token']:.3f}",
                 f"{100 * r['superword_token_share']:.1f}%", "ok" if r["round_trip_ok"] else "FAIL"]
        if has_base:
            cells += [f"{r['baseline_bytes_per_token']:.3f}", f"{r['ratio']:.3f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
