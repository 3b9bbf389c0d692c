"""Resumable stage runner: runs named stages in order and remembers, in `<out>/stages.json`, which finished.

A pipeline (the speedrun, and later ones: context extension, SFT, RL) is a list of `Stage`s. Each stage is a
function of a `StageContext` that returns a small JSON-serialisable dict of outputs (paths relative to the run
directory, numbers); later stages read earlier outputs from `ctx.outputs`. The state file is rewritten atomically
after every transition, so killing the process at any moment leaves a state that a re-run understands:

- a stage recorded `done` is skipped on re-run (its outputs are reused);
- a stage recorded `running` (the process died inside it) is run again *without* wiping its directory, so a stage
  that checkpoints (pre-training) continues from its own checkpoint;
- `from_stage=NAME` forgets NAME and every later stage and wipes their directories: they are redone from scratch.

The parameters a run was started with (budget, data, seed) are stored too; re-running the same directory with
different parameters is refused unless `from_stage` says what to redo, so a report never mixes two runs silently.
An advisory lock (`<out>/.lock`) keeps two processes from driving the same run directory at once.

This module knows nothing about tokenizers or models; see kexaone.pipeline.recipe for the speedrun's stages.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kexaone.utils.io import atomic_write_text

STATE_FILE = "stages.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. `run(ctx)` returns JSON-serialisable outputs (a dict)."""

    name: str
    run: Callable[["StageContext"], dict]
    help: str = ""


@dataclass
class StageContext:
    """What a stage function sees: where to write, the run parameters, and the outputs of earlier stages."""

    out_dir: Path
    stage_dir: Path
    params: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    log: Callable[[str], None] = print
    resumed: bool = False
    """True when this stage was interrupted before and is being run again (its directory kept)."""

    def path(self, rel: str | os.PathLike) -> Path:
        """Resolve a path stored relative to the run directory (as stage outputs store them)."""
        p = Path(rel)
        return p if p.is_absolute() else self.out_dir / p

    def rel(self, p: str | os.PathLike) -> str:
        """A path relative to the run directory when it lies inside it, so a run directory can be moved."""
        p = Path(p).resolve()
        try:
            return str(p.relative_to(self.out_dir.resolve()))
        except ValueError:
            return str(p)


@dataclass
class StageRecord:
    status: str  # "running" | "done" | "failed"
    started_at: str
    finished_at: str | None = None
    seconds: float | None = None
    attempts: int = 1
    prior_seconds: float = 0.0
    """Time spent in earlier, interrupted attempts (known when they were stopped by Ctrl-C / SIGTERM)."""
    cpu_seconds: float | None = None
    """CPU time (user + system, this process and its finished children) of the last attempt: on a shared machine
    this is close to what the stage costs on one idle core, whatever the load was."""
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageRecord":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _cpu_time() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def read_state(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed stages.json of a run directory ({} when the run has not started)."""
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to start the run over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} is not a version-{STATE_VERSION} stage state file; delete it to start over")
    return state


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive advisory lock on the run directory (released automatically if the process dies)."""
    try:
        import fcntl
    except ImportError:  # non-POSIX: no locking, as documented
        yield
        return
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another process is running a pipeline in {out_dir}; wait for it or use another --out") \
                from None
        yield
    finally:
        os.close(fd)


class StageRunner:
    """Run `stages` in order inside `out_dir`, skipping those already done (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, stages: list[Stage], params: dict[str, Any],
                 log: Callable[[str], None] = print):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for n in names:
            if not n or "/" in n or n.startswith("."):
                raise ValueError(f"stage name {n!r} must be a plain, non-empty directory name")
        self.out_dir = Path(out_dir)
        self.stages = list(stages)
        self.params = json.loads(json.dumps(params))  # normalise to what JSON round-trips (tuples -> lists)
        self.log = log

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    # ------------------------------------------------------------------ state
    def _write(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.out_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=False) + "\n")

    def _fresh_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "params": self.params, "order": self.names, "created_at": _now(),
                "stages": {}}

    def _check_params(self, state: dict[str, Any], from_stage: str | None) -> None:
        old = state.get("params", {})
        if old == self.params:
            return
        diff = sorted(k for k in set(old) | set(self.params) if old.get(k) != self.params.get(k))
        if from_stage is None:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {self.params.get(k)!r}" for k in diff)
            raise ValueError(
                f"{self.out_dir} holds a run started with other parameters ({detail}); use another --out, or "
                f"--from STAGE (one of {self.names}) to redo the stages that depend on them")
        self.log(f"parameters changed ({', '.join(diff)}); redoing from stage {from_stage!r}")
        state["params"] = self.params

    def status(self) -> dict[str, StageRecord]:
        state = read_state(self.out_dir)
        return {k: StageRecord.from_dict(v) for k, v in state.get("stages", {}).items()}

    # ------------------------------------------------------------------ running
    def run(self, from_stage: str | None = None, until: str | None = None) -> dict[str, dict[str, Any]]:
        """Run every stage not yet done (from `from_stage` on, everything is redone), stopping after `until`.
        Returns the outputs of every stage run or reused."""
        for arg, value in (("from_stage", from_stage), ("until", until)):
            if value is not None and value not in self.names:
                raise ValueError(f"{arg}={value!r} is not a stage; choose one of {self.names}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with _run_lock(self.out_dir):
            state = read_state(self.out_dir) or self._fresh_state()
            self._check_params(state, from_stage)
            records = {k: StageRecord.from_dict(v) for k, v in state.get("stages", {}).items()}
            if from_stage is not None:
                for name in self.names[self.names.index(from_stage):]:
                    if records.pop(name, None) is not None or (self.out_dir / name).exists():
                        self.log(f"[{name}] redoing: previous result discarded")
                    shutil.rmtree(self.out_dir / name, ignore_errors=True)
            state["order"] = self.names
            state["stages"] = {k: v.to_dict() for k, v in records.items()}
            self._write(state)

            outputs: dict[str, dict[str, Any]] = {}
            for stage in self.stages:
                rec = records.get(stage.name)
                if rec is not None and rec.status == "done":
                    self.log(f"[{stage.name}] already done ({rec.seconds:.1f} s): skipped")
                    outputs[stage.name] = rec.outputs
                else:
                    outputs[stage.name] = self._run_one(stage, state, records, outputs)
                if stage.name == until:
                    break
            return outputs

    def _run_one(self, stage: Stage, state: dict[str, Any], records: dict[str, StageRecord],
                 outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        prev = records.get(stage.name)
        resumed = prev is not None  # interrupted ("running") or failed before: keep its directory
        stage_dir = self.out_dir / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        prior = (prev.prior_seconds + (prev.seconds or 0.0)) if prev else 0.0
        rec = StageRecord(status="running", started_at=_now(), attempts=(prev.attempts + 1) if prev else 1,
                          prior_seconds=prior)
        records[stage.name] = rec
        state["stages"][stage.name] = rec.to_dict()
        self._write(state)
        self.log(f"[{stage.name}] {'resuming' if resumed else 'starting'}" + (f": {stage.help}" if stage.help else ""))
        ctx = StageContext(out_dir=self.out_dir, stage_dir=stage_dir, params=self.params, outputs=dict(outputs),
                           log=self.log, resumed=resumed)
        t0, c0 = time.perf_counter(), _cpu_time()
        try:
            result = stage.run(ctx)
        except BaseException as e:
            # KeyboardInterrupt/SystemExit leave "running" (resumable); a real error is recorded as failed.
            rec.seconds, rec.cpu_seconds = time.perf_counter() - t0, _cpu_time() - c0
            if isinstance(e, Exception):
                rec.status, rec.error = "failed", f"{type(e).__name__}: {e}"
            state["stages"][stage.name] = rec.to_dict()
            self._write(state)
            raise
        if not isinstance(result, dict):
            raise TypeError(f"stage {stage.name!r} returned {type(result).__name__}, expected a dict of outputs")
        rec.status, rec.finished_at = "done", _now()
        rec.seconds, rec.cpu_seconds = time.perf_counter() - t0, _cpu_time() - c0
        rec.outputs = json.loads(json.dumps(result))  # fail here, not at the next run, if not JSON-serialisable
        state["stages"][stage.name] = rec.to_dict()
        self._write(state)
        self.log(f"[{stage.name}] done in {rec.seconds:.1f} s")
        return rec.outputs
