"""The scheduler: a single thread that owns the model and decodes every active request, batched.

Requests arrive from any thread (`submit`) and wait in a bounded queue. Between decode steps the loop admits them
(continuous batching): when a running batch of the same decoding mode has free rows, the waiting requests join it.
With `join="slots"` (the default) that is `Engine.join`: only the newcomers' prompts are prefilled and their cache
rows are stacked onto the running rows (nothing is recomputed), and a row that finishes leaves the batch after the
step that finished it (`Engine.compact`), freeing its row for the next newcomer. `join="reprefill"` is the earlier
scheme, kept for side-by-side benchmarks: `Engine.merge` re-prefills the running rows with the new prompts, only
while the batch is at most `max_merge_positions` long, and finished rows are stepped until the batch is re-formed.
Otherwise newcomers start a new batch, up to `max_active_batches` batches, which the loop advances in turn, one
decode step each. Either way a request arriving while a long generation runs starts within one step instead of
waiting for it to finish.

Isolation: an exception while prefilling or stepping a cohort fails that cohort's requests (each gets an error
event) and the loop keeps serving the others. Deadlines and cancellations are checked before every step.

Model calls that are not generation (scoring a prompt's tokens for `logprobs`) are queued with `call(fn)` and run
on the same thread between steps, so the model is never used by two threads at once; the caller gets a Future.

Events go to each request's `on_event(kind, payload)` from the scheduler thread: ("text", str) for streamed
text, ("tokens", int) with the running count of generated tokens, then exactly one terminal event,
("done", GenerationResult) or ("error", Exception). HTTP lives in server.py.
"""

from __future__ import annotations

import collections
import concurrent.futures
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
JOIN_MODES = ("slots", "reprefill")


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
    """Aligned with batch.seqs."""
    mode: tuple

    def live(self) -> int:
        return sum(1 for r in self.requests if not r.reported)


class Scheduler:
    def __init__(self, engine, max_batch_size: int = 8, max_active_batches: int = 4, max_queue: int = 64,
                 merge: bool = True, max_merge_positions: int = 2048, join: str = "slots"):
        if join not in JOIN_MODES:
            raise ValueError(f"join must be one of {JOIN_MODES}, got {join!r}")
        for name, v in (("max_batch_size", max_batch_size), ("max_active_batches", max_active_batches),
                        ("max_queue", max_queue)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_active_batches = max_active_batches
        self.max_queue = max_queue
        self.merge = merge
        self.max_merge_positions = max_merge_positions
        self.join = join
        self.merges = 0
        self._pending: collections.deque[Request] = collections.deque()
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._active: list[_Cohort] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.failures = 0
        self._flush_hooks: list[Callable[[], None]] = []

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
                    "batches": len(self._active), "steps": self.steps, "merges": self.merges,
                    "failures": self.failures}

    def add_flush_hook(self, fn: Callable[[], None]) -> None:
        """Run `fn()` on the scheduler thread after admissions, after every round (one step of each running batch)
        and at shutdown: a consumer that buffers events delivers them then, in one hand-over."""
        self._flush_hooks.append(fn)

    def _flush(self) -> None:
        for fn in self._flush_hooks:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a broken consumer must not stop the loop
                log.exception("flush hook %r failed", fn)

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

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn()` on the scheduler thread between decode steps; its result (or exception) goes to the returned
        Future. Counts against `max_queue` like a waiting request."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise SchedulerStopped("the generation scheduler is stopped")
            if len(self._pending) + len(self._calls) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending) + len(self._calls)} requests are already waiting "
                                     f"(limit {self.max_queue})")
            self._calls.append((fn, fut))
            self._cond.notify_all()
        return fut

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                fn, fut = self._calls.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - the caller gets it; the loop serves on
                fut.set_exception(e)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._pending and not self._active and not self._calls:
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    break
                target, reqs = self._plan()
            self._run_calls()
            if reqs:
                if target is not None:
                    self._merge(target, reqs)
                else:
                    self._admit(reqs)
                self._flush()  # the newcomers' first tokens go out now, not after the round's decode steps
            for cohort in list(self._active):
                self._advance(cohort)
            self._flush()
        self._shutdown()

    def _plan(self) -> tuple[_Cohort | None, list[Request]]:
        """Which waiting requests to admit now, and the running batch they join (None: a new batch)."""
        while self._pending and (self._pending[0].cancelled or self._expired(self._pending[0])):
            self._finish_unstarted(self._pending.popleft())
        if not self._pending:
            return None, []
        mode = (self._pending[0].speculative, self._pending[0].draft_tokens)
        target, room = None, self.max_batch_size
        if self.merge:
            for c in self._active:
                live = c.live()
                if c.mode == mode and live < self.max_batch_size and not c.batch.done \
                        and (self.join == "slots" or c.batch.positions <= self.max_merge_positions):
                    target, room = c, self.max_batch_size - live
                    break
        if target is None and len(self._active) >= self.max_active_batches:
            return None, []
        return target, self._take(mode, room)

    @staticmethod
    def _expired(r: Request) -> bool:
        return r.deadline is not None and time.monotonic() > r.deadline

    def _take(self, mode: tuple, n: int) -> list[Request]:
        """Up to n waiting requests of decoding mode `mode`, oldest first; drops cancelled or expired ones."""
        out: list[Request] = []
        keep: collections.deque[Request] = collections.deque()
        while self._pending:
            r = self._pending.popleft()
            if r.cancelled or self._expired(r):
                self._finish_unstarted(r)
            elif len(out) < n and (r.speculative, r.draft_tokens) == mode:
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
        cohort = _Cohort(batch, reqs, (reqs[0].speculative, reqs[0].draft_tokens))
        with self._cond:
            self._active.append(cohort)
        self._after_step(cohort)

    def _merge(self, cohort: _Cohort, reqs: list[Request]) -> None:
        def sink(r: Request) -> Callable[[str], None]:
            return lambda delta: self._safe_event(r, "text", delta)

        try:
            joiner = self.engine.join if self.join == "slots" else self.engine.merge
            batch = joiner(cohort.batch, [r.prompt_ids for r in reqs], [r.params for r in reqs],
                           on_text=[sink(r) for r in reqs])
        except Exception:  # noqa: BLE001 - the running batch is untouched: start the newcomers on their own
            log.exception("merging %d request(s) into a running batch failed; starting a new batch", len(reqs))
            self._admit(reqs)
            return
        kept = [r for r in cohort.requests if not r.state.finished]
        for r, s in zip(reqs, batch.seqs[len(kept):]):
            r.state = s
        cohort.batch, cohort.requests = batch, kept + reqs
        self.merges += 1
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
        elif self.join == "slots" and len(cohort.requests) > cohort.live():
            # finished rows leave now: later steps do not compute them and their rows are free for newcomers
            kept = self.engine.compact(cohort.batch)
            cohort.requests = [cohort.requests[i] for i in kept]

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
            calls, self._calls = list(self._calls), collections.deque()
        err = SchedulerStopped("the server is shutting down")
        for _, fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(err)
        for r in pending:
            self._fail(r, err)
        for c in active:
            for r in c.requests:
                if not r.reported:
                    self._fail(r, err)
        self._flush()
