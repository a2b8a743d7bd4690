"""The output coalescer (actors/terminal/outbuf.py) on its own, with a clock and timers the
test moves by hand; the terminal tests cover it in a tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moorage.actors.terminal.outbuf import PROMPT_END, OutputBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Timer:
    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """call_later that fires only when the test says time has passed."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pending: list[Timer] = []

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        t = Timer(self.clock.now + delay, fn)
        self.pending.append(t)
        return t

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        due = [t for t in self.pending if t.when <= self.clock.now and not t.cancelled]
        self.pending = [t for t in self.pending if t not in due and not t.cancelled]
        for t in due:
            t.fn()


def make(window_s: float = 0.005, chunk: int = 1 << 17, max_held: int | None = None):
    clock = Clock()
    timers = Timers(clock)
    sent: list[Any] = []
    flushed: list[int] = []
    buf = OutputBuffer(window_s, timers, lambda off, data, replay: sent.append(
        ("out", off, data, replay)), lambda record: sent.append(("cmd", record)),
        published=0, chunk=chunk, max_held=max_held,
        on_timed_flush=lambda: flushed.append(buf.published), clock=clock)
    return buf, timers, sent, flushed


def test_output_after_a_quiet_spell_goes_at_once() -> None:
    buf, timers, sent, _ = make()
    buf.output(0, b"a", False)
    assert sent == [("out", 0, b"a", False)] and buf.published == 1
    timers.advance(0.010)
    buf.output(1, b"b", False)  # quiet for longer than the window: a keystroke's echo
    assert sent[-1] == ("out", 1, b"b", False) and buf.published == 2


def test_output_within_the_window_waits_for_its_burst_and_goes_as_one_message() -> None:
    buf, timers, sent, flushed = make()
    buf.output(0, b"echo x\r\n", False)
    buf.output(8, b"x\r\n", False)
    buf.output(11, b"more", False)
    assert sent == [("out", 0, b"echo x\r\n", False)]
    assert buf.published == 8 and buf.held_bytes == 7
    timers.advance(0.004)
    assert len(sent) == 1  # the window runs from the first piece held
    timers.advance(0.002)
    assert sent[-1] == ("out", 8, b"x\r\nmore", False)
    assert buf.published == 15 and buf.held_bytes == 0 and flushed == [15]
    assert buf.messages == 2


def test_the_prompt_end_sends_what_is_held_at_once() -> None:
    buf, timers, sent, flushed = make()
    buf.output(0, b"$ ", False)
    buf.output(2, b"out\r\n", False)
    buf.output(7, b"\x1b]633;D;0;n\x07$ " + PROMPT_END + b"n\x07", False)
    assert [s[1] for s in sent] == [0, 2]
    assert sent[1][2].startswith(b"out\r\n\x1b]633;D") and buf.published == len(
        b"$ out\r\n\x1b]633;D;0;n\x07$ " + PROMPT_END + b"n\x07")
    assert not [t for t in timers.pending if not t.cancelled]
    timers.advance(1)
    assert flushed == []  # the timer was cancelled with the flush


def test_records_raised_while_output_is_held_follow_that_output() -> None:
    buf, timers, sent, _ = make()
    buf.command({"event": "start"})  # nothing held: at once
    buf.output(0, b"a", False)
    buf.output(1, b"b", False)
    buf.command({"event": "end"})
    buf.output(2, b"c", False)
    assert sent == [("cmd", {"event": "start"}), ("out", 0, b"a", False)]
    timers.advance(0.005)
    assert sent[2:] == [("out", 1, b"bc", False), ("cmd", {"event": "end"})]


def test_replayed_output_and_gaps_are_never_merged_and_messages_stay_under_the_chunk() -> None:
    buf, timers, sent, _ = make(chunk=8, max_held=1 << 20)
    buf.output(0, b"r", True)  # at once
    buf.output(1, b"rr", True)
    buf.output(3, b"nn", False)  # no longer a replay
    buf.output(10, b"gap", False)  # not contiguous (the session logs such a jump)
    buf.output(13, b"12345", False)
    buf.output(18, b"6789", False)  # would make 9 bytes with what is before it
    timers.advance(0.005)
    assert [(s[1], s[2], s[3]) for s in sent] == [
        (0, b"r", True), (1, b"rr", True), (3, b"nn", False), (10, b"gap12345", False),
        (18, b"6789", False)]
    assert buf.published == 22


def test_a_full_hold_goes_at_once() -> None:
    buf, _, sent, _ = make(max_held=10)
    buf.output(0, b"x", False)
    buf.output(1, b"0123456789", False)
    assert sent[-1] == ("out", 1, b"0123456789", False) and buf.held_bytes == 0


def test_window_zero_sends_every_piece_as_it_comes() -> None:
    buf, timers, sent, _ = make(window_s=0)
    for i in range(5):
        buf.output(i, b"x", False)
    buf.command({"event": "end"})
    assert len(sent) == 6 and buf.messages == 5 and not timers.pending


def test_flush_with_nothing_held_sends_nothing() -> None:
    buf, _, sent, _ = make()
    buf.flush()
    assert sent == [] and buf.messages == 0
