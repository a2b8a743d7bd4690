"""The loop's timer heap: cancelled timers do not pile up, and compaction keeps order."""

from __future__ import annotations

import os

from moorage.actors.runtime.loop import COMPACT_MIN, Loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cancelled_timers_are_dropped_from_the_heap_and_the_rest_still_run_in_order():
    clock = FakeClock()
    loop = Loop(clock)
    try:
        ran: list[int] = []
        keep = [loop.call_later(0.001 * (i % 7), lambda i=i: ran.append(i)) for i in range(50)]
        guards = [loop.call_later(3600, lambda: ran.append(-1)) for _ in range(10 * COMPACT_MIN)]
        for t in guards:
            t.cancel()
            t.cancel()  # twice: counted once
        assert loop.timers_queued < 2 * COMPACT_MIN + len(keep)
        keep[3].cancel()
        clock.now += 0.01  # every kept timer is due
        loop.run_once(0)
        assert -1 not in ran and 3 not in ran and len(ran) == len(keep) - 1
        assert ran == sorted(ran, key=lambda i: (i % 7, i))  # due order, then creation order
        keep[5].cancel()  # after it ran: changes nothing
        clock.now += 7200
        loop.run_once(0)
        assert -1 not in ran and loop.timers_queued == 0
    finally:
        loop.close()


def test_a_timer_a_month_away_does_not_break_the_wait():
    """zmq_poll takes its timeout as a C int (about 24.8 days in ms): a timer further away
    (a deferred call's guard at a far deadline) raised OverflowError out of the loop's turn,
    and the actor died. The wait is capped; a ready descriptor ends it at once."""
    loop = Loop()
    r, w = os.pipe()
    try:
        loop.call_later(40 * 86400, lambda: None)
        seen: list[bytes] = []
        loop.add_reader(r, lambda: seen.append(os.read(r, 1)))
        os.write(w, b"x")
        loop.run_once()
        assert seen == [b"x"]
    finally:
        loop.remove_reader(r)
        os.close(r)
        os.close(w)
        loop.close()
