"""The files `kexaone eval` writes, and the per-sample store that lets a re-run reuse finished samples.

- `samples/<task>.jsonl`: one record per (item, repeat): id, repeat, prompt, response, extracted answer, score, plus
  family fields; each carries `key` = hash(task, item id, repeat, config hash + item content hash), so a re-run
  with the same model and settings skips what is done, and a changed setting or edited item is recomputed.
- `results.json`: `{"tasks": {name: {"score", "metric", "n", "stderr", ...}}, "config", "model", "revision"}`.
- `results.md`: the same as a table.

Every file is written atomically (kexaone.utils.io). This module runs no model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kexaone.utils.io import atomic_write_text


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def sample_key(task: str, item_id: str, repeat: int, cfg_hash: str) -> str:
    return config_hash([task, str(item_id), int(repeat), cfg_hash])


def safe_name(task: str) -> str:
    """A task name as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in task)


class SampleStore:
    """Per-sample records of one task in `out/samples/<task>.jsonl`."""

    def __init__(self, out_dir: str | Path, task: str):
        self.path = Path(out_dir) / "samples" / f"{safe_name(task)}.jsonl"
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # an old file cut short by hand: that sample is simply recomputed
                if isinstance(rec, dict) and "key" in rec:
                    self.records[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def add(self, records: Iterable[dict]) -> None:
        for r in records:
            self.records[r["key"]] = r

    def save(self, keep: Sequence[str] | None = None) -> None:
        """Write the records (only those in `keep`, in that order, when given) atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        recs = [self.records[k] for k in keep if k in self.records] if keep is not None \
            else list(self.records.values())
        atomic_write_text(self.path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in recs))


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); stderr 0 for fewer than 2 values."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var / len(vals))


def write_results(out_dir: str | Path, results: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(out / "results.md", results_markdown(results))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return "" if v is None else str(v)


def results_markdown(results: dict) -> str:
    lines = [f"# Evaluation of {results.get('model', '?')}", ""]
    if results.get("revision"):
        lines += [f"revision: `{results['revision']}`", ""]
    lines += ["| task | metric | score | stderr | n |", "|---|---|---:|---:|---:|"]
    for name, r in results.get("tasks", {}).items():
        lines.append(f"| {name} | {r.get('metric', '')} | {_fmt(r.get('score'))} | {_fmt(r.get('stderr'))} | "
                     f"{r.get('n', '')} |")
    extras = {n: r for n, r in results.get("tasks", {}).items() if r.get("breakdown")}
    for name, r in extras.items():
        lines += ["", f"## {name}", "", "| part | value |", "|---|---:|"]
        for k, v in r["breakdown"].items():
            lines.append(f"| {k} | {_fmt(v)} |")
    cfg = results.get("config")
    if cfg:
        lines += ["", "## config", "", "```json", json.dumps(cfg, indent=2, ensure_ascii=False, default=str), "```"]
    return "\n".join(lines) + "\n"
