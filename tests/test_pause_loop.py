"""The loop's record of its own stalls, and the timers that do not count them: a timeout
that gives up on another process (a child's start, its exit) is pushed out by a stall of the
loop (its process stopped with the tree), and still fires once the time it was given has
passed awake. The clock is the loop's injected one: a pause of seconds, without the wait."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from moorage.actors.runtime.loop import STALL_S, Loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[Loop]:
    lp = Loop(clock)
    try:
        yield lp
    finally:
        lp.close()


TICK = 0.2  # a periodic timer, as a supervisor's heartbeat or the consumer sweep keeps


def run_to(loop: Loop, clock: FakeClock, until: float) -> None:
    """Turn the loop every TICK of its clock up to `until` (a loop awake all along)."""
    while clock.now + TICK <= until + 1e-9:
        clock.now += TICK
        loop.run_once(0)


def test_a_pause_pushes_an_awake_timer_out_by_its_length_and_it_fires_after_the_rest(
        loop, clock):
    loop.call_every(TICK, lambda: None)
    fired: list[float] = []
    loop.call_later_awake(10.0, lambda: fired.append(clock.now))
    run_to(loop, clock, 1003.0)
    clock.now += 20.0  # stopped for 20 s: the next turn runs its timers that late
    loop.run_once(0)
    assert fired == []
    began, seen = loop.stalls[-1]
    assert seen == clock.now and seen - began == pytest.approx(20.0 - TICK)
    # 7 s of its 10 were left at the pause; the stall is measured from the first timer due
    # in it (a tick after the pause began), so it gets a tick less
    run_to(loop, clock, 1029.6)
    assert fired == []
    run_to(loop, clock, 1030.2)
    assert fired == [pytest.approx(1029.8)]


def test_a_plain_timer_still_fires_at_once_and_a_late_turn_below_stall_s_is_no_stall(
        loop, clock):
    loop.call_every(TICK, lambda: None)
    fired: list[str] = []
    loop.call_later(10.0, lambda: fired.append("plain"))
    loop.call_later_awake(10.0, lambda: fired.append("awake"))
    clock.now += STALL_S * 0.9  # a loaded machine's late wake: not a stall
    loop.run_once(0)
    assert not loop.stalls
    clock.now += 20.0
    loop.run_once(0)
    assert fired == ["plain"] and len(loop.stalls) == 1


def test_what_the_other_process_lost_pushes_it_out_too_and_a_cancel_holds_after_a_rearm(
        loop, clock):
    loop.call_every(TICK, lambda: None)
    fired: list[str] = []
    waits = [0.0]
    loop.call_later_awake(1.0, lambda: fired.append("starved"), lambda: waits[0])
    waits[0] = 0.8  # it waited 0.8 s of its second for a CPU
    run_to(loop, clock, 1001.6)
    assert fired == []
    run_to(loop, clock, 1002.0)
    assert fired == ["starved"]

    cancelled = loop.call_later_awake(1.0, lambda: fired.append("cancelled"))
    clock.now += 5.0
    loop.run_once(0)  # a stall: armed again for the rest
    cancelled.cancel()
    run_to(loop, clock, clock.now + 10.0)
    assert fired == ["starved"]
