"""Training metrics: a JSONL log (one JSON object per line), optional TensorBoard mirroring, per-step expert-load
matrices for heat maps (one append-only `expert_load.jsonl` per run, not one file per step), and the loss-curve plot.

The JSONL file is append-only; its byte length is stored in every checkpoint so that a resumed run truncates the
lines written after that checkpoint and the file reads as one uninterrupted run. Only rank 0 writes (the caller
decides: a disabled logger is a no-op). This module does not compute metrics; the trainer does.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kexaone.utils.io import atomic_open

LOAD_FILE = "expert_load.jsonl"
LEGACY_LOAD_DIR = "expert_load"
"""Where runs before expert_load.jsonl wrote one step_XXXXXXXX.npy per step; still read."""


def _jsonable(v: Any) -> Any:
    """Plain JSON values: floats that are NaN/inf become strings, tensors/arrays become lists."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class MetricsLogger:
    """Append records to `<dir>/metrics.jsonl` (and TensorBoard under `<dir>/tensorboard` when asked and installed).

    `resume_offset`: truncate the JSONL file to this many bytes first (the position stored in the checkpoint a run
    resumes from); None starts a fresh file.
    """

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = False,
                 resume_offset: int | None = None, filename: str = "metrics.jsonl") -> None:
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / filename
        self._file = None
        self._load_file = None
        self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_offset is None:
            self._file = open(self.path, "w", encoding="utf-8")
        else:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size < resume_offset:
                warnings.warn(f"{self.path} is shorter ({size} bytes) than the checkpoint's position "
                              f"({resume_offset}); earlier metrics lines are missing", stacklevel=2)
            self._file = open(self.path, "a+", encoding="utf-8")
            self._file.truncate(min(size, resume_offset))
            self._file.seek(0, os.SEEK_END)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

                self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                self._tb = None

    def position(self) -> int:
        """Bytes written so far (what a checkpoint stores to resume the log exactly)."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{kind}/{k}", v, record["step"])

    def save_expert_load(self, step: int, load_LE: Any) -> Path | None:
        """Append the [L, E] expert-load matrix (routed token-slot counts per MoE layer and expert) of one step to
        `<dir>/expert_load.jsonl` as `{"step": s, "load": [[...], ...]}`. Flushed, not fsynced: a line torn by a
        crash is skipped when read, and a resumed run's repeated steps are resolved by the last line."""
        if not self.enabled:
            return None
        arr = np.asarray(load_LE.detach().cpu().double().numpy() if hasattr(load_LE, "detach") else load_LE,
                         dtype=np.float32)
        if self._load_file is None:
            self._load_file = open(self.out_dir / LOAD_FILE, "a", encoding="utf-8")
        self._load_file.write(json.dumps({"step": int(step), "load": arr.tolist()}) + "\n")
        self._load_file.flush()
        return self.out_dir / LOAD_FILE

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._load_file is not None:
            self._load_file.close()
            self._load_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file (optionally only those with `kind`), skipping a torn last line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out


def read_expert_loads(out_dir: str | os.PathLike) -> tuple[list[int], np.ndarray]:
    """(steps, loads [S, L, E]) in step order from `<out_dir>/expert_load.jsonl` (and the per-step .npy files of
    older runs); the last record of a step wins. FileNotFoundError when there is none."""
    out_dir = Path(out_dir)
    by_step: dict[int, np.ndarray] = {}
    legacy = out_dir / LEGACY_LOAD_DIR
    for f in sorted(legacy.glob("step_*.npy")) if legacy.is_dir() else []:
        by_step[int(f.stem.split("_")[1])] = np.load(f)
    if (out_dir / LOAD_FILE).is_file():
        for line in (out_dir / LOAD_FILE).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn by a crash
            by_step[int(rec["step"])] = np.asarray(rec["load"], dtype=np.float32)
    if not by_step:
        raise FileNotFoundError(f"no expert-load matrices in {out_dir / LOAD_FILE}")
    steps = sorted(by_step)
    return steps, np.stack([by_step[s] for s in steps])


def plot_loss_curve(metrics_path: str | os.PathLike, out_png: str | os.PathLike,
                    title: str = "kexaone pre-training") -> Path:
    """Plot training loss per curriculum stage, training CE and held-out loss against step (the report card's
    figure, `kexaone.report.plots.loss_curves`) into out_png, atomically."""
    from kexaone.report.data import loss_curves as loss_curves_data
    from kexaone.report.plots import loss_curves

    c = loss_curves_data(read_metrics(metrics_path))
    out_png = Path(out_png)
    with atomic_open(out_png, "wb", encoding=None) as f:
        f.write(loss_curves(c.by_stage, c.heldout, c.ce, xlabel="optimizer step", title=title))
    return out_png


def summarize(records: Iterable[dict[str, Any]], key: str = "loss", last: int = 10) -> float | None:
    """Mean of `key` over the last `last` records that have a finite value (None when there is none)."""
    vals = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(vals[-last:]) / len(vals[-last:]) if vals else None
