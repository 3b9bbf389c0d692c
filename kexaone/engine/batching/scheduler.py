"""The scheduler: a single thread that owns the model and decodes every active request, batched.

Requests arrive from any thread (`submit`), wait in a bounded queue, and are admitted as a cohort: everything
waiting (up to `max_batch_size`) is prefilled together into one `DecodeBatch` with its own KV cache. Several
cohorts may be active at once (up to `max_active_batches`); the loop advances them in turn, one decode step each,
so a request arriving while a long generation runs starts within one step instead of waiting for it to finish.
Rows of a cohort cannot leave its cache early (all rows share one cache length), so a finished or cancelled row
rides along until its cohort ends; new arrivals form a new cohort instead of joining a running one.

Isolation: an exception while prefilling or stepping a cohort fails that cohort's requests (each gets an error
event) and the loop keeps serving the others. Deadlines and cancellations are checked before every step.

Events go to each request's `on_event(kind, payload)` from the scheduler thread: ("text", str) for streamed
text, ("tokens", int) with the running count of generated tokens, then exactly one terminal event,
("done", GenerationResult) or ("error", Exception). HTTP lives in server.py.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kexaone.engine.sampling import SamplingParams
from kexaone.engine.sequence import FINISH_ABORT, FINISH_TIMEOUT, SequenceState

log = logging.getLogger("kexaone.scheduler")

EventCallback = Callable[[str, Any], None]


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the caller should retry later (HTTP 429)."""


class SchedulerStopped(RuntimeError):
    """The scheduler is not running (not started, or shutting down)."""


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: EventCallback
    speculative: str | None = None
    draft_tokens: int = 2
    deadline: float | None = None
    """time.monotonic() after which the request is ended with finish_reason 'timeout'."""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: bool = False
    state: SequenceState | None = None
    reported: bool = False

    def cancel(self) -> None:
        """Ask the scheduler to stop this request (safe from any thread; takes effect before its next step)."""
        self.cancelled = True


@dataclass
class _Cohort:
    batch: Any
    requests: list[Request]


class Scheduler:
    def __init__(self, engine, max_batch_size: int = 8, max_active_batches: int = 4, max_queue: int = 64):
        for name, v in (("max_batch_size", max_batch_size), ("max_active_batches", max_active_batches),
                        ("max_queue", max_queue)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_active_batches = max_active_batches
        self.max_queue = max_queue
        self._pending: collections.deque[Request] = collections.deque()
        self._active: list[_Cohort] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.failures = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Scheduler":
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="kexaone-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the loop; requests still waiting or running get an error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def load(self) -> dict:
        with self._cond:
            return {"queued": len(self._pending),
                    "active": sum(1 for c in self._active for r in c.requests if not r.reported),
                    "batches": len(self._active), "steps": self.steps, "failures": self.failures}

    # ------------------------------------------------------------------ submission
    def submit(self, req: Request) -> Request:
        """Queue a request (before `start`, it waits until the loop starts). Raises QueueFullError when
        `max_queue` requests are already waiting, SchedulerStopped after `stop`."""
        with self._cond:
            if self._stopping:
                raise SchedulerStopped("the generation scheduler is stopped")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests are already waiting (limit {self.max_queue})")
            self._pending.append(req)
            self._cond.notify_all()
        return req

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._active:
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    break
                cohort_reqs = self._take_cohort() if len(self._active) < self.max_active_batches else []
            if cohort_reqs:
                self._admit(cohort_reqs)
            for cohort in list(self._active):
                self._advance(cohort)
        self._shutdown()

    def _take_cohort(self) -> list[Request]:
        """Waiting requests that can share a batch (same decoding mode), oldest first; drops cancelled ones."""
        out: list[Request] = []
        keep: collections.deque[Request] = collections.deque()
        mode = None
        while self._pending:
            r = self._pending.popleft()
            if r.cancelled or (r.deadline is not None and time.monotonic() > r.deadline):
                self._finish_unstarted(r)
                continue
            key = (r.speculative, r.draft_tokens)
            if len(out) < self.max_batch_size and (mode is None or key == mode):
                mode = key
                out.append(r)
            else:
                keep.append(r)
        self._pending = keep
        return out

    def _finish_unstarted(self, r: Request) -> None:
        state = SequenceState(r.prompt_ids, r.params, r.params.stop_token_ids or (), None)
        state.abort(FINISH_TIMEOUT if not r.cancelled else FINISH_ABORT)
        r.state = state
        self._report(r)

    def _admit(self, reqs: list[Request]) -> None:
        def sink(r: Request) -> Callable[[str], None]:
            return lambda delta: self._safe_event(r, "text", delta)

        try:
            batch = self.engine.start([r.prompt_ids for r in reqs], [r.params for r in reqs],
                                      speculative=reqs[0].speculative, draft_tokens=reqs[0].draft_tokens,
                                      on_text=[sink(r) for r in reqs])
        except Exception as e:  # noqa: BLE001 - one bad cohort must not stop the server
            log.exception("prefill failed for %d request(s)", len(reqs))
            self.failures += 1
            for r in reqs:
                self._fail(r, e)
            return
        for r, s in zip(reqs, batch.seqs):
            r.state = s
        cohort = _Cohort(batch, reqs)
        with self._cond:
            self._active.append(cohort)
        self._after_step(cohort)

    def _advance(self, cohort: _Cohort) -> None:
        now = time.monotonic()
        for r in cohort.requests:
            if r.reported or r.state is None:
                continue
            if r.cancelled:
                r.state.abort(FINISH_ABORT)
            elif r.deadline is not None and now > r.deadline:
                r.state.abort(FINISH_TIMEOUT)
        if not cohort.batch.done:
            try:
                self.engine.step(cohort.batch)
                self.steps += 1
            except Exception as e:  # noqa: BLE001
                log.exception("decode step failed; failing its %d request(s)", len(cohort.requests))
                self.failures += 1
                for r in cohort.requests:
                    if not r.reported:
                        self._fail(r, e)
                self._drop(cohort)
                return
        self._after_step(cohort)

    def _after_step(self, cohort: _Cohort) -> None:
        for r in cohort.requests:
            if r.reported or r.state is None:
                continue
            self._safe_event(r, "tokens", len(r.state.tokens))
            if r.state.finished:
                self._report(r, cohort.batch.stats)
        if cohort.batch.done:
            self._drop(cohort)

    def _drop(self, cohort: _Cohort) -> None:
        with self._cond:
            if cohort in self._active:
                self._active.remove(cohort)

    def _report(self, r: Request, stats=None) -> None:
        r.reported = True
        self._safe_event(r, "done", r.state.result(stats))

    def _fail(self, r: Request, e: BaseException) -> None:
        r.reported = True
        self._safe_event(r, "error", e)

    def _safe_event(self, r: Request, kind: str, payload: Any) -> None:
        try:
            r.on_event(kind, payload)
        except Exception:  # noqa: BLE001 - a broken consumer only loses its own events
            log.exception("event callback of request %s failed", r.id)
            r.cancelled = True

    def _shutdown(self) -> None:
        with self._cond:
            pending, self._pending = list(self._pending), collections.deque()
            active, self._active = self._active, []
        err = SchedulerStopped("the server is shutting down")
        for r in pending:
            self._fail(r, err)
        for c in active:
            for r in c.requests:
                if not r.reported:
                    self._fail(r, err)
