"""The scheduler thread on its own (no HTTP): batching of concurrent requests, no head-of-line blocking, results
equal to direct generation, cancellation, deadlines, and isolation of a failing batch."""

from __future__ import annotations

import queue
import time

import pytest

from kexaone.engine import Engine, SamplingParams
from kexaone.engine.batching import QueueFullError, Request, Scheduler, SchedulerStopped
from test_engine_models import SwitchableProcessor, one_thread, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_model(0), logits_processors=[SwitchableProcessor()])


class Inbox:
    def __init__(self):
        self.q = queue.Queue()

    def __call__(self, kind, payload):
        self.q.put((time.monotonic(), kind, payload))

    def final(self, timeout=60):
        while True:
            t, kind, payload = self.q.get(timeout=timeout)
            if kind in ("done", "error"):
                return t, kind, payload


def _req(ids, inbox, **kw):
    return Request(prompt_ids=ids, params=SamplingParams(temperature=0, stop_token_ids=(), **kw), on_event=inbox)


def test_concurrent_requests_are_batched_and_equal_direct_generation(engine):
    prompts = [[5, 6, 7], [9], list(range(30, 50)), [3, 3]]
    expect = [engine.generate(p, max_new_tokens=25, temperature=0, stop_token_ids=()).tokens for p in prompts]
    sched = Scheduler(engine, max_batch_size=4)
    boxes = [Inbox() for _ in prompts]
    for p, b in zip(prompts, boxes):  # submitted before the loop starts: admitted together as one batch
        sched.submit(_req(p, b, max_new_tokens=25))
    sched.start()
    try:
        results = [b.final()[2] for b in boxes]
    finally:
        sched.stop()
    assert [r.tokens for r in results] == expect
    assert results[0].stats.rows == 4  # one batch served all four
    assert sched.steps == 24


@pytest.mark.parametrize("merge,join", [(True, "slots"), (True, "reprefill"), (False, "slots")])
def test_short_request_is_not_blocked_by_a_long_one(engine, merge, join):
    """A request arriving while a long one runs joins its batch (continuous batching) or starts its own, and in
    both cases finishes first; the outputs equal direct generation."""
    expect_long = engine.generate([1, 2, 3], max_new_tokens=150, temperature=0, stop_token_ids=()).tokens
    expect_short = engine.generate([4, 5], max_new_tokens=5, temperature=0, stop_token_ids=()).tokens
    sched = Scheduler(engine, max_batch_size=4, merge=merge, join=join).start()
    try:
        long_box, short_box = Inbox(), Inbox()
        sched.submit(_req([1, 2, 3], long_box, max_new_tokens=150))
        long_box.q.get(timeout=30)  # the long one is running
        sched.submit(_req([4, 5], short_box, max_new_tokens=5))
        t_short, kind, res = short_box.final()
        assert kind == "done" and res.tokens == expect_short
        t_long, _, res_long = long_box.final(timeout=120)
        assert t_short < t_long and res_long.tokens == expect_long
        assert sched.merges == (1 if merge else 0)
        if merge and join == "slots":
            # only the newcomer's prompt was prefilled (reprefill would count the long row's history again)
            assert res_long.stats.prompt_tokens == 3 + 2
    finally:
        sched.stop()


def test_slots_join_frees_finished_rows_and_reuses_them(engine):
    """With join='slots', rows leave the batch when they finish and later requests take their place in the same
    running batch; every output equals direct generation."""
    prompts = [[1, 2, 3]] + [[10 + i, 20 + i] for i in range(6)]
    budgets = [120] + [4 + i for i in range(6)]
    expect = [engine.generate(p, max_new_tokens=n, temperature=0, stop_token_ids=()).tokens
              for p, n in zip(prompts, budgets)]
    sched = Scheduler(engine, max_batch_size=2, max_active_batches=1, join="slots").start()
    try:
        boxes = [Inbox() for _ in prompts]
        sched.submit(_req(prompts[0], boxes[0], max_new_tokens=budgets[0]))
        boxes[0].q.get(timeout=30)
        for p, n, b in zip(prompts[1:], budgets[1:], boxes[1:]):
            sched.submit(_req(p, b, max_new_tokens=n))
        results = [b.final(timeout=120)[2] for b in boxes]
        assert [r.tokens for r in results] == expect
        # the short ones were served one after another in the long one's batch (one running batch at most)
        assert sched.merges == 6
        assert results[0].stats.rows == 7
    finally:
        sched.stop()


def test_cancel_and_deadline(engine):
    sched = Scheduler(engine).start()
    try:
        box = Inbox()
        r = sched.submit(_req([1, 2], box, max_new_tokens=2000))
        box.q.get(timeout=30)
        r.cancel()
        _, kind, res = box.final()
        assert kind == "done" and res.finish_reason == "abort" and len(res.tokens) < 2000
        box = Inbox()
        r = _req([1, 2], box, max_new_tokens=2000)
        r.deadline = time.monotonic() + 0.2
        sched.submit(r)
        _, kind, res = box.final()
        assert kind == "done" and res.finish_reason == "timeout"
    finally:
        sched.stop()


def test_failing_batch_fails_only_its_requests(engine):
    proc = engine.logits_processors[0]
    sched = Scheduler(engine, max_batch_size=1).start()
    try:
        proc.fail = True
        bad = Inbox()
        sched.submit(_req([1, 2], bad, max_new_tokens=5))
        _, kind, err = bad.final()
        assert kind == "error" and "injected failure" in str(err)
        proc.fail = False
        good = Inbox()
        sched.submit(_req([1, 2], good, max_new_tokens=5))
        _, kind, res = good.final()
        assert kind == "done" and len(res.tokens) == 5
        assert sched.failures == 1 and sched.running
    finally:
        proc.fail = False
        sched.stop()


def test_queue_bound_and_stopped_scheduler(engine):
    sched = Scheduler(engine, max_queue=1, max_active_batches=1, max_batch_size=1).start()
    try:
        first, second = Inbox(), Inbox()
        sched.submit(_req([1, 2], first, max_new_tokens=3000))
        first.q.get(timeout=30)  # running: the queue is empty again
        sched.submit(_req([1, 2], second, max_new_tokens=3000))
        with pytest.raises(QueueFullError):
            sched.submit(_req([1, 2], Inbox(), max_new_tokens=3))
    finally:
        sched.stop()
    # requests still running or waiting at shutdown get an error event; a stopped scheduler refuses new ones
    assert first.final()[1] == "error" and second.final()[1] == "error"
    with pytest.raises(SchedulerStopped):
        sched.submit(_req([1], Inbox(), max_new_tokens=1))
    with pytest.raises(ValueError, match="max_batch_size"):
        Scheduler(engine, max_batch_size=0)


def test_speculative_requests_through_the_scheduler(engine):
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    expect = [engine.generate(p, max_new_tokens=20, temperature=0, stop_token_ids=()).tokens for p in prompts]
    sched = Scheduler(engine)
    boxes = [Inbox() for _ in prompts]
    for p, b in zip(prompts, boxes):
        r = _req(p, b, max_new_tokens=20)
        r.speculative, r.draft_tokens = "mtp", 2
        sched.submit(r)
    sched.start()
    try:
        results = [b.final()[2] for b in boxes]
    finally:
        sched.stop()
    assert [r.tokens for r in results] == expect
    assert results[0].stats.draft_tokens > 0


def test_call_runs_model_work_on_the_scheduler_thread_between_steps(engine):
    import threading

    sched = Scheduler(engine, max_batch_size=2, max_queue=2).start()
    try:
        box = Inbox()
        sched.submit(_req([5, 6, 7], box, max_new_tokens=40))
        fut = sched.call(lambda: (threading.current_thread().name, engine.score([5, 6, 7, 8]).logprobs))
        name, logprobs = fut.result(timeout=60)
        assert name == "kexaone-scheduler" and logprobs[0] is None and len(logprobs) == 4
        with pytest.raises(ValueError, match="prompt is empty"):
            sched.call(lambda: engine.score([])).result(timeout=60)  # the caller gets the exception...
        assert box.final()[1] == "done"  # ...and the loop serves on
    finally:
        sched.stop()
    with pytest.raises(SchedulerStopped):
        sched.call(lambda: None)


def test_flush_hooks_run_after_each_round_with_its_events_and_at_shutdown(engine):
    """A consumer that buffers events hands them over in the flush after the round that produced them: when a
    hook runs, every event emitted before it is already recorded; a failing hook does not stop the loop."""
    seen: list[tuple[str, int]] = []  # ("event", n) per event, ("flush", events so far) per flush
    events = 0

    def on_event(kind, payload):
        nonlocal events
        events += 1
        seen.append(("event", events))

    def broken():
        raise RuntimeError("a broken consumer")

    sched = Scheduler(engine, max_batch_size=2)
    sched.add_flush_hook(broken)
    sched.add_flush_hook(lambda: seen.append(("flush", events)))
    r = _req([5, 6, 7], on_event, max_new_tokens=6)
    sched.submit(r)
    sched.start()
    deadline = time.monotonic() + 60
    while not r.reported and time.monotonic() < deadline:
        time.sleep(0.01)
    sched.stop()
    assert r.reported and r.state.tokens
    flushes = [n for what, n in seen if what == "flush"]
    # 6 tokens: one round admits (token 1), five rounds step; each round's events precede its flush
    assert len(flushes) >= 6 and flushes == sorted(flushes) and flushes[-1] == events
    last_event = max(i for i, (what, _) in enumerate(seen) if what == "event")
    assert any(what == "flush" for what, _ in seen[last_event:])
