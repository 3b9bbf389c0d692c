"""What every task family implements, and the JSONL reading and field checks they share.

A family turns rows (a user's JSONL file or a built-in source) into items (`load`), evaluates a chunk of items on a
backend into one record per item (`run`: prompt, response, extracted answer, score, ...), and summarises a task's
records (`summarize`: score, metric, n, stderr and family extras). The harness (kexaone.eval.harness) does the
chunking, resuming and file writing; families do not touch files except their own artefacts (e.g. a heat map).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kexaone.data.sources import iter_jsonl_rows
from kexaone.eval.results import mean_stderr


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (blank lines skipped); a clear error names the file and line of a bad row."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task file {p} does not exist")
    rows = [row for _, row in iter_jsonl_rows(p)]
    if not rows:
        raise ValueError(f"task file {p} has no rows")
    return rows


def require(row: dict, fields: Sequence[str], where: str, family: str) -> None:
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise ValueError(f"{where}: {family} rows need the field(s) {missing}; got {sorted(row)}")


def item_id(row: dict, index: int) -> str:
    for k in ("id", "key", "unique_id"):
        if row.get(k) is not None:
            return str(row[k])
    return str(index)


def load_items(rows: list[dict], source: str, family: str, fields: Sequence[str],
               make: Callable[[dict, str], dict]) -> list[dict]:
    """The row loop of a family's `load`: each row is checked for `fields` (`require`), then `make(row, where)`
    builds the item's own fields (raising ValueError that names `where`, e.g. "tasks.jsonl row 3", for a bad
    value); the item's `id` (`item_id`) comes first."""
    items = []
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        require(row, fields, where, family)
        items.append({"id": item_id(row, i), **make(row, where)})
    return items


class Family:
    """Base class; subclasses set `name`, `fields`, `default_max_tokens` and implement load/run/summarize."""

    name = ""
    fields = ""
    """The documented JSONL fields (for --help and error messages)."""
    default_max_tokens = 256
    uses_judge = False
    metric = "accuracy"

    def load(self, rows: list[dict], source: str) -> list[dict]:
        raise NotImplementedError

    def run(self, items: list[dict], ctx) -> list[dict]:
        raise NotImplementedError

    def config_view(self, config) -> dict:
        """The settings that change this family's samples (part of the resume key)."""
        return {"temperature": config.temperature, "top_p": config.top_p,
                "max_new_tokens": config.max_new_tokens or self.default_max_tokens,
                "thinking": config.thinking, "seed": config.seed}

    def chunk_size(self, config) -> int:
        return config.chunk_size

    def summarize(self, records: list[dict], ctx) -> dict:
        """Mean per-item score (repeats averaged first), stderr over items."""
        return summarize_scores(records, self.metric)


def per_item_scores(records: list[dict], field: str = "score") -> list[float]:
    """Each item's score averaged over its repeats (records without a score are left out)."""
    by_id: dict[str, list[float]] = {}
    for r in records:
        v = r.get(field)
        if v is not None:
            by_id.setdefault(r["id"], []).append(float(v))
    return [sum(v) / len(v) for v in by_id.values()]


def summarize_scores(records: list[dict], metric: str, field: str = "score") -> dict[str, Any]:
    scores = per_item_scores(records, field)
    m, se = mean_stderr(scores)
    return {"score": m, "metric": metric, "n": len(scores), "stderr": se}


def reply_text(reply) -> str:
    """The answer of a chat reply; the reasoning when the model put nothing after it."""
    return reply.content if reply.content.strip() or not reply.reasoning else reply.reasoning
