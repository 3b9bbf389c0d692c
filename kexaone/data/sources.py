"""Reading documents from disk: plain text, JSONL, Parquet, Hugging Face `datasets`, globs and weighted mixtures.

A *source spec* is a string naming where documents come from, optionally followed by `@weight` for mixtures:

- `corpus.txt`            one document per non-empty line (or the whole file with `txt_mode="file"`; with
                          `txt_mode="line_eol"` each line keeps its line ending, as the tokenizer wants to see it)
- `data.jsonl`            one JSON object per line; the document is its `text` field (configurable)
- `data.parquet`          the `text` column (configurable)
- `src/*.py`, `notes.md`  source code and markup files: one document per file, tagged "code/<extension>"
- `some/dir`              a directory written by `datasets.Dataset.save_to_disk` (or `DatasetDict`), else every
                          supported file under it, sorted
- `shards/*.jsonl`        a glob (sorted, so the order is deterministic)
- `hf:owner/name[:split]` a dataset on the Hugging Face hub (needs a network; offline this is a clear error)
- `corpus.txt@3`          the same source with mixture weight 3

Documents may carry a *tag* ("domain/lang") used to report held-out loss per domain and language: JSONL records and
Parquet rows with `domain` (and `lang`) fields get the tag from them, other documents the source's file stem.

This module is the one document reader: the token-shard cache, the speedrun's corpus and the tokenizer's training
and evaluation all read through it; `iter_records` gives whole records (dicts) of the same JSONL / Parquet /
`datasets` readers to stages whose examples are structured (SFT conversations). It only reads; tokenization and
caching live in `kexaone.data.shards`, sampling in `kexaone.data.packing`.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
# Source code and markup: each file is one document, tagged "code/<extension>".
CODE_SUFFIXES = (".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".go", ".rs", ".c", ".cc", ".cpp", ".h", ".hpp",
                 ".cs", ".rb", ".php", ".sh", ".swift", ".kt", ".scala", ".lua", ".sql", ".md", ".rst", ".tex",
                 ".html", ".css", ".toml", ".yaml", ".yml")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CODE_SUFFIXES
TXT_MODES = ("line", "file", "line_eol")
HUB_PREFIX = "hf:"
# Files whose presence marks a directory written by `datasets` save_to_disk.
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass(frozen=True)
class Document:
    """One document and the tag ("domain/lang" or a source name) it is reported under."""

    text: str
    tag: str = ""
    answers: tuple[tuple[int, int], ...] | None = None
    """[start, end) character spans of the answers when only they are training targets (a JSONL record's
    `"answers"`; kexaone.data.shards turns them into the loss-mask channel). None: every token is a target."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed `path[@weight]` spec."""

    path: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        """A short human name (file stem, or the glob / hub name) for logs and default tags."""
        if self.path.startswith(HUB_PREFIX):
            return self.path[len(HUB_PREFIX):]
        p = Path(self.path)
        return p.stem if p.suffix else p.name


def parse_spec(spec: str) -> SourceSpec:
    """Split `path[@weight]`. An `@` whose suffix is not a number stays part of the path (e.g. `user@host/x`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a data source spec must be a non-empty string like 'corpus.jsonl@2', got {spec!r}")
    spec = spec.strip()
    path, weight = spec, 1.0
    if "@" in spec:
        head, _, tail = spec.rpartition("@")
        try:
            weight = float(tail)
        except ValueError:
            head = ""
        if head:
            path = head
            if not (weight > 0 and weight != float("inf")):
                raise ValueError(f"mixture weight in {spec!r} must be a positive finite number, got {tail!r}")
        else:
            weight = 1.0
    return SourceSpec(path=path, weight=weight)


def parse_mixture(specs: str | Iterable[str]) -> list[SourceSpec]:
    """Parse a list of specs (or one comma-separated string) into SourceSpecs; weights are kept as given."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    out = [parse_spec(s) for s in specs]
    if not out:
        raise ValueError("a data mixture needs at least one source spec like 'corpus.jsonl@1'")
    return out


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in _HF_MARKERS)


def resolve_files(path: str) -> list[Path]:
    """The files a (non-hub) spec path stands for, sorted. Raises FileNotFoundError naming the path when nothing
    matches, ValueError for an unsupported file type."""
    if path.startswith(HUB_PREFIX):
        raise ValueError(f"{path!r} is a hub dataset name, not a local path")
    if any(ch in path for ch in "*?["):
        matches = sorted(Path(p) for p in _glob.glob(path, recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]
        if not files:
            raise FileNotFoundError(
                f"data glob {path!r} matches no {'/'.join(SUPPORTED_SUFFIXES)} file ({len(matches)} paths matched)"
            )
        return files
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data source {path!r} does not exist")
    if p.is_dir():
        if _is_hf_dir(p):
            return [p]
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"data directory {path!r} holds no {'/'.join(SUPPORTED_SUFFIXES)} file")
        return files
    if p.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ValueError(
            f"unsupported data file {path!r}: expected one of {', '.join(SUPPORTED_SUFFIXES)}, a glob, "
            "a `datasets` directory or hf:owner/name"
        )
    return [p]


def _tag_of(record: dict, default: str) -> str:
    domain = record.get("domain")
    if isinstance(domain, str) and domain:
        lang = record.get("lang")
        return f"{domain}/{lang}" if isinstance(lang, str) and lang else domain
    return default


def _check_text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _read_txt(path: Path, txt_mode: str) -> Iterator[Document]:
    tag = path.stem
    try:
        with open(path, encoding="utf-8", errors="strict", newline="") as f:
            if txt_mode == "file":
                text = f.read()
                if text.strip():
                    yield Document(text, tag)
                return
            for line in f:
                if line.strip():
                    yield Document(line if txt_mode == "line_eol" else line.rstrip("\r\n"), tag)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _read_code(path: Path) -> Iterator[Document]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if text.strip():
        yield Document(text, f"code/{path.suffix.lower().lstrip('.')}")


def iter_jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number from 1, record) for every JSON object line of a JSONL file, blank lines skipped: the one JSONL
    reader (corpora, eval task files, safety suites, RL prompts). Lazy, so a large shard is never held whole; a bad
    line is a ValueError naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl_rows(path: str | Path) -> list[tuple[int, dict]]:
    """`iter_jsonl_rows` read whole: [(line number, record)] for files small enough to hold (task and prompt files)."""
    return list(iter_jsonl_rows(path))


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    """("file:line", record) for every JSON object line of a JSONL file."""
    for lineno, record in iter_jsonl_rows(path):
        yield f"{path}:{lineno}", record


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    tag = path.stem
    for where, record in _jsonl_records(path):
        if text_field not in record:
            raise ValueError(
                f"{where}: record has no {text_field!r} field (fields: {sorted(record)[:10]}); "
                "name the text field (text_field=, --text-field)"
            )
        text = _check_text(record[text_field], where, text_field)
        if text.strip():
            yield Document(text, _tag_of(record, tag), _answer_spans(record.get("answers"), len(text), where))


def _answer_spans(value: object, n_chars: int, where: str) -> tuple[tuple[int, int], ...] | None:
    """A record's `"answers"` field as checked [start, end) character spans within its text (None when absent)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in v) for v in value):
        raise ValueError(f"{where}: field 'answers' must be a list of [start, end] character offsets, got "
                         f"{str(value)[:80]}")
    for a, b in value:
        if not 0 <= a < b <= n_chars:
            raise ValueError(f"{where}: answer span [{a}, {b}) is not within the text's {n_chars} characters")
    return tuple((int(a), int(b)) for a, b in value)


def _parquet_records(path: Path, columns: list[str] | None = None,
                     need: str | None = None) -> Iterator[tuple[str, dict]]:
    """(where, row as a dict) for every row of a Parquet file (only `columns` when given; `need`: a column that
    must exist, named in the error): the one Parquet reader."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if need is not None and need not in names:
        raise ValueError(f"{path}: Parquet file has no column {need!r} (columns: {names[:10]}); "
                         "name the text column (text_field=, --text-field)")
    cols = [c for c in columns if c in names] if columns is not None else None
    row = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"{path} row {row}", record


def _read_parquet(path: Path, text_field: str) -> Iterator[Document]:
    tag = path.stem
    for where, record in _parquet_records(path, [text_field, "domain", "lang"], need=text_field):
        text = record[text_field]
        if text is None:
            continue
        text = _check_text(text, where, text_field)
        if text.strip():
            yield Document(text, _tag_of(record, tag))


def _iter_hf_dataset(ds, where: str, text_field: str, default_tag: str) -> Iterator[Document]:
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_field not in columns:
        raise ValueError(f"{where}: dataset has no column {text_field!r} (columns: {list(columns)[:10]}); "
                         "name the text column (text_field=, --text-field)")
    for row in ds:
        text = row.get(text_field)
        if text is None:
            continue
        text = _check_text(text, where, text_field)
        if text.strip():
            yield Document(text, _tag_of(row, default_tag))


def _hf_dir_datasets(path: Path) -> Iterator[tuple[str, object]]:
    """(where, Dataset) of a `datasets` save_to_disk directory, one per split of a DatasetDict: the one reader
    of such directories."""
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{path} is a Hugging Face `datasets` directory; install `datasets` to read it") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        for split in sorted(ds):
            yield f"{path}[{split}]", ds[split]
    else:
        yield str(path), ds


def _read_hf_dir(path: Path, text_field: str) -> Iterator[Document]:
    for where, ds in _hf_dir_datasets(path):
        yield from _iter_hf_dataset(ds, where, text_field, path.name)


def _hub_rows(name: str, read) -> Iterator:
    """`read(dataset, where)` over a streamed hub dataset (the one hub reader), with a clear error offline."""
    repo, _, split = name.partition(":")
    split = split or "train"
    try:
        import datasets
    except ImportError:
        raise ValueError(f"hub dataset {repo!r} needs the `datasets` package") from None
    try:
        ds = datasets.load_dataset(repo, split=split, streaming=True)
        yield from read(ds, f"hf:{repo}:{split}")
    except (ConnectionError, OSError) as e:
        raise ValueError(
            f"could not load hub dataset {repo!r} (split {split!r}): {e}. Without a network, save it with "
            "`datasets` save_to_disk on a connected machine and pass that directory instead"
        ) from None


def _read_hub(name: str, text_field: str) -> Iterator[Document]:
    default_tag = name.partition(":")[0].split("/")[-1]
    yield from _hub_rows(name, lambda ds, where: _iter_hf_dataset(ds, where, text_field, default_tag))


def _dataset_records(ds, where: str) -> Iterator[tuple[str, dict]]:
    for i, row in enumerate(ds, 1):
        yield f"{where} row {i}", dict(row)


def iter_records(spec: str) -> Iterator[tuple[str, dict]]:
    """Every record of one source spec, whole, as (where, dict) in a deterministic order: JSONL objects, Parquet
    rows, `datasets` rows (local directory or hf:...). For stages whose examples are structured rather than one
    text field (SFT conversations with `messages`). `where` names the file and line/row for error messages.

    Raises FileNotFoundError for a missing path, ValueError for text or code files (they hold no records) and for
    a source without any record."""
    path = parse_spec(spec).path
    count = 0
    if path.startswith(HUB_PREFIX):
        gen: Iterable[tuple[str, dict]] = _hub_rows(path[len(HUB_PREFIX):], _dataset_records)
    else:
        gen = _iter_record_files(resolve_files(path))
    for item in gen:
        count += 1
        yield item
    if count == 0:
        raise ValueError(f"data source {spec!r} contains no record")


def _iter_record_files(files: list[Path]) -> Iterator[tuple[str, dict]]:
    for f in files:
        suffix = f.suffix.lower()
        if f.is_dir():
            for where, ds in _hf_dir_datasets(f):
                yield from _dataset_records(ds, where)
        elif suffix in JSONL_SUFFIXES:
            yield from _jsonl_records(f)
        elif suffix in PARQUET_SUFFIXES:
            yield from _parquet_records(f)
        else:
            raise ValueError(f"{f}: a {suffix} file holds text, not records; structured data (conversations) must "
                             "be JSONL, Parquet or a `datasets` directory")


def iter_tagged_documents(spec: str, text_field: str = "text", txt_mode: str = "line") -> Iterator[Document]:
    """Every document of one source spec (the `@weight` part is ignored), in a deterministic order.

    Raises FileNotFoundError for a missing path, ValueError for unsupported files, bad JSON lines, missing text
    fields, and a source that yields no non-empty document at all.
    """
    if txt_mode not in TXT_MODES:
        raise ValueError(f"txt_mode must be one of {TXT_MODES}, got {txt_mode!r}")
    path = parse_spec(spec).path
    count = 0
    if path.startswith(HUB_PREFIX):
        gen: Iterable[Document] = _read_hub(path[len(HUB_PREFIX):], text_field)
    else:
        gen = _iter_files(resolve_files(path), text_field, txt_mode)
    for doc in gen:
        count += 1
        yield doc
    if count == 0:
        raise ValueError(f"data source {spec!r} contains no non-empty document")


def _iter_files(files: list[Path], text_field: str, txt_mode: str) -> Iterator[Document]:
    for f in files:
        if f.is_dir():
            yield from _read_hf_dir(f, text_field)
            continue
        suffix = f.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            yield from _read_txt(f, txt_mode)
        elif suffix in JSONL_SUFFIXES:
            yield from _read_jsonl(f, text_field)
        elif suffix in CODE_SUFFIXES:
            yield from _read_code(f)
        else:
            yield from _read_parquet(f, text_field)


def iter_documents(spec: str, text_field: str = "text", txt_mode: str = "line") -> Iterator[str]:
    """The document texts of one source spec (see the module docstring for the spec syntax)."""
    for doc in iter_tagged_documents(spec, text_field=text_field, txt_mode=txt_mode):
        yield doc.text


def source_fingerprint(spec: str, text_field: str = "text", txt_mode: str = "line") -> str:
    """A content hash of a source: sha256 over the bytes of every file it reads (and the reading options).

    Two specs naming the same bytes share a fingerprint wherever the files live, so token caches survive moving a
    corpus. A hub dataset has no local bytes: its fingerprint is its name and split.
    """
    path = parse_spec(spec).path
    h = hashlib.sha256(f"kexaone-source-v1|{text_field}|{txt_mode}|".encode())
    if path.startswith(HUB_PREFIX):
        h.update(path.encode())
        return h.hexdigest()
    for f in resolve_files(path):
        inner = sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
        for p in inner:
            # The file name is hashed too: it becomes the default tag of the documents it holds.
            h.update(b"\0file\0")
            h.update(str(p.relative_to(f)).encode() if f.is_dir() else p.name.encode())
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()

