"""The server's hand-over of scheduler events into the event loop (`_LoopInbox`): events from another thread
arrive in order, only after a flush, with one wake-up of the loop per flush however many events it carries; a
closed loop is reported to the producer and never raises from a flush."""

from __future__ import annotations

import asyncio
import threading

import pytest

from kexaone.engine.app import _LoopInbox


def test_events_arrive_in_order_with_one_wakeup_per_flush():
    async def main():
        loop = asyncio.get_running_loop()
        inbox = _LoopInbox(loop)
        queues = [asyncio.Queue(), asyncio.Queue()]
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*a, **kw):
            nonlocal wakeups
            wakeups += 1
            return real(*a, **kw)

        loop.call_soon_threadsafe = counting

        def producer():
            for n in range(3):  # three rounds of 50 events each, flushed once per round
                for i in range(50):
                    inbox.put(queues[i % 2], (n, i))
                inbox.flush()

        t = threading.Thread(target=producer)
        t.start()
        await asyncio.to_thread(t.join)
        got = [[], []]
        for q, out in zip(queues, got):
            while len(out) < 75:
                out.append(await asyncio.wait_for(q.get(), 5))
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got[0] == [(n, i) for n in range(3) for i in range(0, 50, 2)]
    assert got[1] == [(n, i) for n in range(3) for i in range(1, 50, 2)]
    assert 1 <= wakeups <= 3  # a flush while a drain is still pending adds nothing


def test_nothing_arrives_before_a_flush():
    async def main():
        loop = asyncio.get_running_loop()
        inbox, q = _LoopInbox(loop), asyncio.Queue()
        inbox.put(q, "a")
        await asyncio.sleep(0.05)
        before = q.qsize()
        inbox.flush()
        return before, await asyncio.wait_for(q.get(), 5)

    assert asyncio.run(main()) == (0, "a")


def test_closed_loop_is_reported_to_the_producer_and_flush_stays_quiet():
    loop = asyncio.new_event_loop()
    inbox, q = _LoopInbox(loop), asyncio.Queue()
    inbox.put(q, "kept")
    loop.close()
    inbox.flush()  # the loop is gone: the buffered event is dropped, no exception
    with pytest.raises(RuntimeError, match="closed"):
        inbox.put(q, "late")
