"""Tokenized corpora cached on disk as memory-mapped uint32 token shards with document boundaries.

`build_token_shards(documents, tokenizer, out_dir)` tokenizes a source once (in parallel chunks through the
tokenizer's batch encoder) and writes, into `out_dir/<content key>-<tokenizer key>/`:

- `tokens-00000.bin`, ...  raw little-endian uint32 token ids, documents back to back (no separator: the packer
                           inserts `eot_id` after each document), a document never split across two shards
- `offsets.npy`            int64 [num_documents + 1], document i is tokens [offsets[i], offsets[i+1])
- `doc_bytes.npy`          int64 [num_documents], UTF-8 bytes of each document (for bits per byte)
- `doc_hash.npy`           uint64 [num_documents], a hash of each document's tokens (held-out split, dedup-safe)
- `doc_tag.npy`            int32 [num_documents], index into meta["tags"] ("domain/lang" or source name)
- `mask-00000.bin`, ...    optional (meta["loss_mask"] true): one uint8 per token of the matching token shard,
                           1 = train on this token (SFT trains on answers, not prompts); no file: every token.
                           Text sources get it when a document carries answer spans (a JSONL `"answers"` field,
                           `Document.answers`): only the tokens that overlap an answer are targets in those
                           documents, every token in the others
- `meta.json`              written last: a directory without it is never used

The directory is built under a temporary name and renamed into place, so a crash never leaves a half cache that
looks complete. The key is (content hash of the source, tokenizer fingerprint): a changed file or tokenizer gets a
new directory, an unchanged one is reused without tokenizing again.

This module does not sample or pack; see `kexaone.data.packing`.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kexaone.data.sources import Document, SourceSpec, iter_tagged_documents, parse_spec, source_fingerprint
from kexaone.utils.io import atomic_write_text, ensure_writable_dir, fsync_dir

FORMAT = "kexaone-token-shards"
VERSION = 2
"""2: text documents with answer spans get a loss mask (caches of version 1 ignored them; new names)."""
DEFAULT_SHARD_TOKENS = 1 << 28  # 1 GiB of uint32 per shard file
_HASH_DENOM = float(2**64)


# ----------------------------------------------------------------------------- tokenizer adapter
def tokenizer_vocab_size(tokenizer: Any) -> int:
    v = getattr(tokenizer, "vocab_size", None)
    if v is None and hasattr(tokenizer, "get_vocab_size"):
        v = tokenizer.get_vocab_size(with_added_tokens=True)
    if not isinstance(v, int) or v <= 0:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no positive integer vocab_size (got {v!r})")
    return v


def tokenizer_special_ids(tokenizer: Any) -> tuple[int, int]:
    """(eot_id, pad_id) of a KExaoneTokenizer-like object."""
    eot = getattr(tokenizer, "eot_id", None)
    if not isinstance(eot, int):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no integer eot_id (the document separator)")
    pad = getattr(tokenizer, "pad_id", 0)
    return eot, int(pad if pad is not None else 0)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable identity of a tokenizer: its `fingerprint` if it has one, else a hash of its serialised form
    (`to_str()`, or the files `save(dir)` writes). Pass `tokenizer_id=` to build_token_shards to name it yourself."""
    fp = getattr(tokenizer, "fingerprint", None)
    if callable(fp):
        fp = fp()
    if isinstance(fp, str) and fp:
        return fp
    h = hashlib.sha256(b"kexaone-tokenizer-v1|")
    for obj in (tokenizer, getattr(tokenizer, "tokenizer", None), getattr(tokenizer, "_tokenizer", None)):
        if obj is not None and callable(getattr(obj, "to_str", None)):
            h.update(obj.to_str().encode())
            return h.hexdigest()
    if callable(getattr(tokenizer, "save", None)):
        with tempfile.TemporaryDirectory() as d:
            tokenizer.save(d)
            for p in sorted(Path(d).rglob("*")):
                if p.is_file():
                    h.update(p.name.encode() + b"\0" + p.read_bytes())
        return h.hexdigest()
    raise ValueError(
        f"cannot fingerprint tokenizer {type(tokenizer).__name__}: give it a `fingerprint`, a `to_str()` or "
        "`save(dir)`, or pass tokenizer_id="
    )


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    out = tokenizer.encode_batch(texts)
    if out and hasattr(out[0], "ids"):  # a raw `tokenizers.Tokenizer` returns Encoding objects
        return [e.ids for e in out]
    return out


def answer_mask(offsets: Sequence[tuple[int, int]], answers: Sequence[tuple[int, int]]) -> np.ndarray:
    """uint8 per token: 1 where the token's [start, end) character span overlaps an answer span."""
    mask = np.zeros(len(offsets), dtype=np.uint8)
    if not len(offsets):
        return mask
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    for a, b in answers:
        mask |= ((off[:, 0] < b) & (off[:, 1] > a)).astype(np.uint8)
    return mask


def _encode_docs(tokenizer: Any, docs: list[Document]) -> tuple[list[list[int]], list[np.ndarray | None]]:
    """Token ids of each document and, for those with answer spans, their answer mask (None for the others).
    A document with answer spans is encoded once, with offsets, so its mask comes from the very encoding its ids
    do; the others are encoded together in one batch."""
    ids: list[list[int] | None] = [None] * len(docs)
    masks: list[np.ndarray | None] = [None] * len(docs)
    plain = [k for k, d in enumerate(docs) if d.answers is None]
    if plain:
        for k, doc_ids in zip(plain, _encode_batch(tokenizer, [docs[k].text for k in plain]), strict=True):
            ids[k] = doc_ids
    for k, d in enumerate(docs):
        if d.answers is None:
            continue
        if not hasattr(tokenizer, "encode_with_offsets"):
            raise ValueError(f"documents with answer spans need a tokenizer with encode_with_offsets (a "
                             f"KExaoneTokenizer), got {type(tokenizer).__name__}")
        doc_ids, offsets = tokenizer.encode_with_offsets(d.text)
        ids[k] = list(doc_ids)
        masks[k] = answer_mask(offsets, d.answers)
    return ids, masks


# ----------------------------------------------------------------------------- the cache
@dataclass
class TokenShards:
    """A tokenized source on disk. Arrays are loaded (small: per document), token shards memory-mapped."""

    path: Path
    meta: dict
    offsets: np.ndarray  # int64 [N+1]
    doc_bytes: np.ndarray  # int64 [N]
    doc_hash: np.ndarray  # uint64 [N]
    doc_tag: np.ndarray  # int32 [N]
    _maps: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    # --- identity and sizes
    @property
    def num_documents(self) -> int:
        return len(self.doc_bytes)

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_bytes(self) -> int:
        return int(self.doc_bytes.sum())

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])

    @property
    def tags(self) -> list[str]:
        return list(self.meta["tags"])

    @property
    def fingerprint(self) -> str:
        """Identity of this cache: content key + tokenizer fingerprint (used to validate resumed loaders)."""
        return f"{self.meta['content_key']}-{self.meta['tokenizer_fingerprint']}"

    @property
    def has_loss_mask(self) -> bool:
        """True when the cache stores a per-token loss mask (see `loss_mask`)."""
        return bool(self.meta.get("loss_mask", False))

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    # --- reading
    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenShards":
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path} is not a finished token cache (no meta.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: corrupt token-cache metadata ({e.msg})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} cache (format={meta.get('format')!r})")
        arrays = {}
        for name in ("offsets", "doc_bytes", "doc_hash", "doc_tag"):
            f = path / f"{name}.npy"
            if not f.exists():
                raise FileNotFoundError(f"token cache {path} is missing {f.name}")
            arrays[name] = np.load(f, allow_pickle=False)
        n = int(meta["num_documents"])
        if len(arrays["offsets"]) != n + 1 or any(len(arrays[k]) != n for k in ("doc_bytes", "doc_hash", "doc_tag")):
            raise ValueError(f"token cache {path}: array lengths disagree with num_documents={n}")
        for s in meta["shards"]:
            f = path / s["file"]
            if not f.exists():
                raise FileNotFoundError(f"token cache {path} is missing shard {s['file']}")
            if f.stat().st_size != 4 * s["num_tokens"]:
                raise ValueError(f"token shard {f} has {f.stat().st_size} bytes, expected {4 * s['num_tokens']}")
            m = path / _mask_file(s["file"])
            if meta.get("loss_mask") and (not m.exists() or m.stat().st_size != s["num_tokens"]):
                raise ValueError(f"token cache {path}: loss-mask file {m.name} is missing or not one byte per token")
        return cls(path=path, meta=meta, **arrays)

    def _shard(self, i: int, kind: str = "tokens") -> np.ndarray:
        m = self._maps.get((kind, i))
        if m is None:
            s = self.meta["shards"][i]
            dtype = "<u4" if kind == "tokens" else "u1"
            name = s["file"] if kind == "tokens" else _mask_file(s["file"])
            if s["num_tokens"] == 0:
                m = np.zeros(0, dtype=dtype)
            else:
                m = np.memmap(self.path / name, dtype=dtype, mode="r", shape=(s["num_tokens"],))
            self._maps[(kind, i)] = m
        return m

    def _slice(self, i: int, kind: str) -> np.ndarray:
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} out of range [0, {self.num_documents})")
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        starts = self.meta["shard_starts"]
        s = int(np.searchsorted(starts, start, side="right")) - 1
        # A zero-length document at a shard boundary belongs to either shard; both slices are empty.
        s = max(s, 0)
        base = starts[s]
        return self._shard(s, kind)[start - base : end - base]

    def document(self, i: int) -> np.ndarray:
        """Token ids of document i (uint32, a read-only view into the memory map)."""
        return self._slice(i, "tokens")

    def loss_mask(self, i: int) -> np.ndarray | None:
        """The loss mask of document i (uint8 [len], 1 = train on the token), or None when the cache has none."""
        return self._slice(i, "mask") if self.has_loss_mask else None

    def __getstate__(self) -> dict:
        # Memory maps are reopened lazily after unpickling (e.g. in DataLoader workers).
        d = dict(self.__dict__)
        d["_maps"] = {}
        return d

    # --- splits
    def heldout_mask(self, heldout: float | int = 0.01) -> np.ndarray:
        """Which documents are held out for evaluation (bool [N]).

        A float in [0, 1) holds out the documents whose token hash falls in that fraction of the hash space; an int
        n holds out, per tag, the n documents with the smallest hashes (never more than half of a tag's
        documents). Both depend only on document contents, so identical documents land on the same side and the
        split is the same on every machine and every run.
        """
        if isinstance(heldout, bool) or not isinstance(heldout, (int, float)):
            raise ValueError(f"heldout must be a fraction in [0, 1) or a document count >= 0, got {heldout!r}")
        if isinstance(heldout, float):
            if not 0.0 <= heldout < 1.0:
                raise ValueError(f"heldout fraction must be in [0, 1), got {heldout}")
            return (self.doc_hash.astype(np.float64) / _HASH_DENOM) < heldout
        if heldout < 0:
            raise ValueError(f"heldout document count must be >= 0, got {heldout}")
        mask = np.zeros(self.num_documents, dtype=bool)
        if heldout == 0:
            return mask
        for t in np.unique(self.doc_tag):
            idx = np.flatnonzero(self.doc_tag == t)
            k = min(heldout, len(idx) // 2)
            if k:
                order = np.argsort(self.doc_hash[idx], kind="stable")
                mask[idx[order[:k]]] = True
        return mask

    def split_indices(self, heldout: float | int = 0.01) -> tuple[np.ndarray, np.ndarray]:
        """(train document indices, held-out document indices), each sorted."""
        mask = self.heldout_mask(heldout)
        return np.flatnonzero(~mask), np.flatnonzero(mask)

    def documents_by_tag(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Document indices grouped by tag name (restricted to `indices` when given)."""
        idx = np.arange(self.num_documents) if indices is None else np.asarray(indices)
        tags = self.meta["tags"]
        return {tags[t]: idx[self.doc_tag[idx] == t] for t in np.unique(self.doc_tag[idx])}


# ----------------------------------------------------------------------------- building
def _mask_file(token_file: str) -> str:
    return token_file.replace("tokens-", "mask-", 1)


def _doc_hash(ids: np.ndarray) -> int:
    return int.from_bytes(hashlib.blake2b(ids.tobytes(), digest_size=8).digest(), "little")


def _as_documents(items: Iterable) -> Iterator[Document]:
    for i, d in enumerate(items):
        if isinstance(d, Document):
            yield d
        elif isinstance(d, str):
            yield Document(d, "")
        elif isinstance(d, tuple) and len(d) == 2 and isinstance(d[0], str):
            yield Document(d[0], str(d[1]))
        elif hasattr(d, "text") and isinstance(d.text, str):
            yield Document(d.text, str(getattr(d, "tag", "") or ""), getattr(d, "answers", None))
        else:
            raise ValueError(f"document {i} must be a str, a Document or a (text, tag) pair, got {type(d).__name__}")


def _hash_documents(docs: Sequence) -> str:
    h = hashlib.sha256(b"kexaone-docs-v1|")
    for d in _as_documents(docs):
        if not d.text.strip():  # skipped when tokenizing too, so a list and an iterator of it share a key
            continue
        b = d.text.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b + b"\0" + d.tag.encode() + b"\0")
        if d.answers is not None:
            h.update(repr(d.answers).encode() + b"\0")
    return h.hexdigest()


def _chunks(docs: Iterator[Document], n: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    for d in docs:
        if not d.text.strip():
            continue
        chunk.append(d)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _ShardWriter:
    """Appends token chunks into shard files inside a temporary directory; produces the arrays and meta."""

    def __init__(self, tmp: Path, vocab_size: int, shard_tokens: int, with_mask: bool = False):
        self.tmp, self.vocab_size, self.shard_tokens = tmp, vocab_size, shard_tokens
        self.with_mask = with_mask
        self._mask_f = None
        self.offsets = [0]
        self.doc_bytes: list[int] = []
        self.doc_hash: list[int] = []
        self.doc_tag: list[int] = []
        self.tags: dict[str, int] = {}
        self.shards: list[dict] = []
        self._f = None
        self._in_shard = 0
        self.content = hashlib.sha256(b"kexaone-docs-v1|")

    def _enable_mask(self) -> None:
        """Start the loss-mask channel mid-way (the first document with answer spans): the tokens written so far
        were all targets, so their masks are ones."""
        self.with_mask = True
        for i, sh in enumerate(self.shards):
            last = i == len(self.shards) - 1 and self._f is not None
            f = open(self.tmp / _mask_file(sh["file"]), "wb")
            ones = np.ones(sh["num_tokens"], dtype=np.uint8).tobytes()
            f.write(ones)
            self.content.update(ones)
            if last:
                self._mask_f = f
            else:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def _open_shard(self) -> None:
        self._close_shard()
        name = f"tokens-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "num_tokens": 0})
        self._f = open(self.tmp / name, "wb")
        if self.with_mask:
            self._mask_f = open(self.tmp / _mask_file(name), "wb")
        self._in_shard = 0

    def _close_shard(self) -> None:
        for f in (self._f, self._mask_f):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
        self._f = self._mask_f = None

    def add(self, docs: list[Document], ids_list: list[list[int]], where: str,
            masks: Sequence[Sequence[int] | None] | None = None) -> None:
        """Append documents; `masks[k]` None (or no `masks`) means every token of document k is a target."""
        if masks is not None and not self.with_mask and any(m is not None for m in masks):
            self._enable_mask()
        for k, (d, ids) in enumerate(zip(docs, ids_list, strict=True)):
            arr = np.asarray(ids, dtype=np.int64)
            if self.with_mask:
                given = masks[k] if masks is not None else None
                mask = np.asarray(given, dtype=np.int64) if given is not None else np.ones(arr.shape, np.int64)
                if mask.shape != arr.shape or not np.isin(mask, (0, 1)).all():
                    raise ValueError(f"{where}: the loss mask of document {len(self.doc_bytes)} must be 0/1 values, "
                                     f"one per token ({arr.size}), got shape {mask.shape}")
            if arr.size and (arr.max() >= self.vocab_size or arr.min() < 0):
                bad = int(arr.max()) if arr.max() >= self.vocab_size else int(arr.min())
                raise ValueError(
                    f"{where}: token id {bad} is outside the tokenizer's vocabulary [0, {self.vocab_size}) "
                    f"(document {len(self.doc_bytes)}); the tokenizer and its vocab_size disagree"
                )
            arr = arr.astype("<u4")
            if self._f is None or (self._in_shard and self._in_shard + arr.size > self.shard_tokens):
                self._open_shard()
            self._f.write(arr.tobytes())
            if self.with_mask:
                self._mask_f.write(mask.astype(np.uint8).tobytes())
                self.content.update(mask.astype(np.uint8).tobytes())
            self._in_shard += arr.size
            self.shards[-1]["num_tokens"] += int(arr.size)
            self.offsets.append(self.offsets[-1] + int(arr.size))
            b = d.text.encode("utf-8")
            self.content.update(len(b).to_bytes(8, "little") + b + b"\0" + d.tag.encode() + b"\0")
            self.doc_bytes.append(len(b))
            self.doc_hash.append(_doc_hash(arr))
            self.doc_tag.append(self.tags.setdefault(d.tag, len(self.tags)))

    def finish(self, meta: dict) -> None:
        self._close_shard()
        np.save(self.tmp / "offsets.npy", np.asarray(self.offsets, dtype=np.int64))
        np.save(self.tmp / "doc_bytes.npy", np.asarray(self.doc_bytes, dtype=np.int64))
        np.save(self.tmp / "doc_hash.npy", np.asarray(self.doc_hash, dtype=np.uint64))
        np.save(self.tmp / "doc_tag.npy", np.asarray(self.doc_tag, dtype=np.int32))
        for name in ("offsets", "doc_bytes", "doc_hash", "doc_tag"):
            with open(self.tmp / f"{name}.npy", "rb+") as f:
                os.fsync(f.fileno())
        starts, acc = [], 0
        for s in self.shards:
            starts.append(acc)
            acc += s["num_tokens"]
        meta.update(
            num_documents=len(self.doc_bytes), num_tokens=self.offsets[-1], num_bytes=int(sum(self.doc_bytes)),
            shards=self.shards, shard_starts=starts, tags=list(self.tags), loss_mask=self.with_mask,
        )
        atomic_write_text(self.tmp / "meta.json", json.dumps(meta, indent=1))


def _publish(tmp: Path, final: Path) -> TokenShards:
    """Rename a finished temporary cache directory into place (atomic), unless an equal one already is there."""
    if (final / "meta.json").exists():  # built meanwhile by another process, or an iterable seen before
        shutil.rmtree(tmp, ignore_errors=True)
        return TokenShards.load(final)
    if final.exists():  # a leftover without meta.json is never valid: replace it
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process published the same content first
    fsync_dir(final.parent)
    return TokenShards.load(final)


def _cache_name(content_key: str, tok_fp: str) -> str:
    return f"{content_key[:24]}-{hashlib.sha256(f'v{VERSION}|{tok_fp}'.encode()).hexdigest()[:12]}"


def build_token_shards(
    documents: str | SourceSpec | Iterable,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    num_workers: int | None = None,
    *,
    tokenizer_id: str | None = None,
    text_field: str = "text",
    txt_mode: str = "line",
    chunk_docs: int = 256,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = False,
) -> TokenShards:
    """Tokenize `documents` into a cached TokenShards under `out_dir` (reused when already built).

    documents: a source spec string (`path[@weight]`, see kexaone.data.sources), a list of texts / Documents /
    (text, tag) pairs, or any iterable of those (consumed once; hashed while it is tokenized).
    tokenizer: anything with `encode_batch(texts)`, `vocab_size` and `eot_id` (a KExaoneTokenizer);
    `tokenizer_id` overrides its fingerprint. num_workers: parallel encode calls (threads; the Rust tokenizer
    releases the GIL); None = one per CPU core, at most 8. Empty text documents are skipped.
    Raises ValueError when a token id is outside [0, vocab_size) or no document is left.
    """
    vocab = tokenizer_vocab_size(tokenizer)
    eot_id, pad_id = tokenizer_special_ids(tokenizer)
    tok_fp = tokenizer_id or tokenizer_fingerprint(tokenizer)
    tok_fp = f"{tok_fp}|v{vocab}|eot{eot_id}|pad{pad_id}"
    if chunk_docs < 1 or shard_tokens < 1:
        raise ValueError(f"chunk_docs and shard_tokens must be >= 1, got {chunk_docs}, {shard_tokens}")
    out_dir = Path(out_dir)
    ensure_writable_dir(out_dir, "token cache directory")

    where = "documents"
    content_key: str | None = None
    if isinstance(documents, SourceSpec):
        documents = documents.path
    if isinstance(documents, str):
        where = parse_spec(documents).path
        content_key = source_fingerprint(documents, text_field=text_field, txt_mode=txt_mode)
        docs_iter: Iterator[Document] = iter_tagged_documents(documents, text_field=text_field, txt_mode=txt_mode)
    elif isinstance(documents, Sequence):
        content_key = _hash_documents(documents)
        docs_iter = _as_documents(documents)
    else:
        docs_iter = _as_documents(documents)

    if content_key is not None:
        final = out_dir / _cache_name(content_key, tok_fp)
        if (final / "meta.json").exists():
            return TokenShards.load(final)

    tmp = out_dir / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        writer = _ShardWriter(tmp, vocab, shard_tokens)
        workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
        chunks = _chunks(docs_iter, chunk_docs)
        bar = _progress_bar(progress, where)
        for docs, (ids, masks) in _encode_chunks(tokenizer, chunks, max(1, workers)):
            writer.add(docs, ids, where, masks)
            if bar is not None:
                bar.update(sum(len(x) for x in ids))
        if bar is not None:
            bar.close()
        if len(writer.doc_bytes) == 0:
            raise ValueError(f"{where}: no non-empty document to tokenize")
        if content_key is None:
            content_key = writer.content.hexdigest()
        final = out_dir / _cache_name(content_key, tok_fp)
        writer.finish({
            "format": FORMAT, "version": VERSION, "content_key": content_key, "tokenizer_fingerprint": tok_fp,
            "vocab_size": vocab, "eot_id": eot_id, "pad_id": pad_id, "source": where,
        })
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_token_shards_from_ids(
    docs_ids: Iterable[Sequence[int]],
    out_dir: str | os.PathLike,
    vocab_size: int,
    eot_id: int,
    pad_id: int = 0,
    tags: Sequence[str] | None = None,
    *,
    loss_masks: Iterable[Sequence[int]] | None = None,
    source_id: str = "token-ids",
    tokenizer_id: str | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
) -> TokenShards:
    """A TokenShards from already tokenized documents (lists of ids), e.g. data tokenized elsewhere. Cached by the
    ids themselves (and masks); `doc_bytes` is 0 (no text is known, so bits per byte are unavailable for such
    sources). `loss_masks`: one 0/1 sequence per document, as long as its ids (1 = a training target), stored as
    the cache's loss-mask channel. `tokenizer_id`: the fingerprint of the tokenizer that made the ids
    (tokenizer_fingerprint), so these shards mix with text shards of that tokenizer; default `source_id`."""
    if vocab_size < 1 or not 0 <= eot_id < vocab_size or not 0 <= pad_id < vocab_size:
        raise ValueError(f"need 0 <= eot_id, pad_id < vocab_size, got {eot_id}, {pad_id}, {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        writer = _ShardWriter(tmp, vocab_size, shard_tokens, with_mask=loss_masks is not None)
        mask_iter = iter(loss_masks) if loss_masks is not None else None
        for i, ids in enumerate(docs_ids):
            tag = tags[i] if tags is not None else ""
            arr = np.asarray(ids, dtype=np.int64)
            mask = None
            if mask_iter is not None:
                mask = next(mask_iter, None)
                if mask is None:
                    raise ValueError(f"{source_id}: loss_masks has fewer entries than documents ({i})")
            writer.add([Document("", tag)], [arr], source_id, None if mask is None else [mask])
            writer.content.update(arr.tobytes())
        if not writer.doc_bytes:
            raise ValueError(f"{source_id}: no document given")
        content_key = writer.content.hexdigest()
        tok_fp = f"{tokenizer_id or source_id}|v{vocab_size}|eot{eot_id}|pad{pad_id}"
        final = out_dir / _cache_name(content_key, f"{source_id}|{tok_fp}")
        writer.finish({
            "format": FORMAT, "version": VERSION, "content_key": content_key, "tokenizer_fingerprint": tok_fp,
            "vocab_size": vocab_size, "eot_id": eot_id, "pad_id": pad_id, "source": source_id,
        })
        return _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _encode_chunks(tokenizer: Any, chunks: Iterator[list[Document]], workers: int):
    """Yield (docs, (ids, answer masks)) per chunk, in order, with up to 2 x workers chunks in flight."""
    if workers <= 1:
        for docs in chunks:
            yield docs, _encode_docs(tokenizer, docs)
        return
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[tuple[list[Document], cf.Future]] = []
        for docs in chunks:
            pending.append((docs, pool.submit(_encode_docs, tokenizer, docs)))
            if len(pending) >= 2 * workers:
                d0, fut = pending.pop(0)
                yield d0, fut.result()
        for d0, fut in pending:
            yield d0, fut.result()


def _progress_bar(enabled: bool, where: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc=f"tokenizing {Path(where).name}", unit="tok", unit_scale=True, leave=False)
