"""A keeper's turn of reads into a session's ring (`SessionRing.fill`), compiled
(actors/terminal/_cring.c) and in Python (ring.py's `_fill_python`, the fallback): from a real
PTY, the same bytes at the same offsets, the same header cells (so a successor's `recover`
reads either the same way), the same limits and the same end; and the compiled one is what
this process runs when it was built, and without it the Python one serves."""

from __future__ import annotations

import errno
import importlib.util
import os
import pty
import select
import tty
from collections.abc import Callable, Iterator

import pytest

from moorage.actors.terminal import ring as ring_mod
from moorage.actors.terminal.ring import RING_CORE, Fill, SessionRing, _canary
from tests.interpreter import printed

pytestmark = pytest.mark.timeout(60)

CAP = 8192


def core(name: str) -> Fill:
    """`name`'s filler; the compiled one skips where it was not built."""
    if name not in ring_mod.FILLS:
        pytest.skip("the compiled ring filler was not built here (no compiler): Python only")
    return ring_mod.FILLS[name]


CORES = ("compiled", "python")


@pytest.fixture(params=CORES)
def fill(request) -> Fill:
    return core(request.param)


@pytest.fixture
def ptypair() -> Iterator[list[int]]:
    """[master, slave] of a raw PTY (no echo, no CR/LF change): what is written to the slave
    is read as it is. A test that closes the slave sets it to -1."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    pair = [master, slave]
    try:
        yield pair
    finally:
        for fd in pair:
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def new_ring() -> Iterator[Callable[[int], SessionRing]]:
    """Rings of CAP bytes (a window of half that) whose stream starts at a given offset,
    closed after the test."""
    made: list[SessionRing] = []

    def make(at: int) -> SessionRing:
        ring = SessionRing.create(CAP, CAP // 2)
        made.append(ring)
        ring.start_at(at)
        return ring

    yield make
    for ring in made:
        ring.close()


def counted(fd: int) -> None:
    """Wait until the master has bytes to read (what the slave wrote has come through)."""
    assert select.select([fd], [], [], 10)[0], "nothing came through the PTY"


def drain(fill: Fill, ring: SessionRing, fd: int, want: int) -> list[tuple[int, int]]:
    """Turns of `fill` until `want` bytes are in past the ack; the (got, end) of each."""
    turns = []
    while ring.write_off - ring.ack_off < want:
        got, end = fill(ring, fd, ring.room(), 1 << 20)
        turns.append((got, end))
        assert end == -1 and len(turns) < 1000, turns
        if not got:  # nothing counted yet: what the slave wrote is still on its way
            assert select.select([fd], [], [], 10)[0], f"nothing more after {turns}"
    return turns


def test_every_byte_value_arrives_in_order_across_the_ring_s_wrap(fill, ptypair, new_ring):
    master, slave = ptypair
    data = bytes(range(256)) * 12  # 3,072 bytes
    ring = new_ring(5 * CAP - 7)  # a read across the end of the data wraps, as its canary does
    os.write(slave, data)
    drain(fill, ring, master, len(data))
    assert ring.write_off == 5 * CAP - 7 + len(data)
    assert ring.read(5 * CAP - 7, ring.write_off) == data
    assert ring._header[6] == 0  # no read in progress


def test_the_canary_written_down_is_the_one_recover_checks(fill, ptypair, new_ring):
    """The cells a read leaves are `_canary` of its offset, cut to its length: a successor's
    `recover` (Python) reads what either core wrote."""
    master, slave = ptypair
    ring = new_ring(CAP - 9)
    for size in (1, 5, 16, 300):  # (the second read's canary wraps)
        start = ring.write_off
        os.write(slave, b"t" * size)
        turns = drain(fill, ring, master, ring.write_off - ring.ack_off + size)
        assert ring.write_off == start + size and sum(g for g, _ in turns) == size
        last = ring._header[5]  # the last read: from here to the write offset
        assert start <= last < ring.write_off
        want = _canary(last)[: min(ring.write_off - last, 16)].ljust(16, b"\0")
        got = ring._header[8].to_bytes(8, "little") + ring._header[9].to_bytes(8, "little")
        assert got == want
        ring.ack_off = ring.write_off
        # that read written down but not committed, its bytes come: recover takes it in
        end = ring.write_off
        ring._header[2] = last
        ring._header[6] = end - last
        assert ring.recover() == end - last and ring.write_off == end


def test_a_turn_stops_at_its_room_and_at_its_batch(fill, ptypair, new_ring):
    master, slave = ptypair
    ring = new_ring(0)
    os.write(slave, b"r" * 3000)
    counted(master)
    got, end = fill(ring, master, 100, 1 << 20)
    assert (got, end) == (100, -1) and ring.write_off == 100
    got, end = fill(ring, master, 4096, 1)  # a batch of 1: one read, of what is counted
    assert end == -1 and 1 <= got <= 2900 and ring.write_off == 100 + got
    drain(fill, ring, master, 3000)
    assert ring.read(0, ring.write_off) == b"r" * 3000


def test_a_turn_never_reads_more_than_the_ring_holds_whatever_room_it_is_told(fill, new_ring):
    """The room comes from the header's cells, which any holder of the ring can write: told
    more room than the ring has, a turn still reads at most its cap, and nothing lands past
    the data. (A pipe hands over all it counts in one read, unlike a PTY's 4 KiB; the
    compiled turn read it all, its second half past the data, into the state slots.)"""
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        os.write(w, b"p" * (3 * CAP))
        ring = new_ring(0)
        got, end = fill(ring, r, 1 << 40, 1 << 40)
        assert (got, end) == (CAP, -1) and ring.write_off == CAP
        assert ring.read(0, CAP) == b"p" * CAP
        assert not any(ring._meta), "bytes written past the ring's data"
    finally:
        os.close(r)
        os.close(w)


def test_a_hung_up_pty_ends_the_turn_with_eio_after_its_last_bytes(fill, ptypair, new_ring):
    master, slave = ptypair
    ring = new_ring(0)
    os.write(slave, b"last words")
    counted(master)
    os.close(slave)
    ptypair[1] = -1
    total, end = 0, -1
    for _ in range(10):
        got, end = fill(ring, master, ring.room(), 1 << 20)
        total += got
        if end != -1:
            break
    assert (total, end) == (10, errno.EIO)
    assert ring.read(0, ring.write_off) == b"last words" and ring._header[6] == 0


def test_nothing_waiting_reads_nothing(fill, ptypair, new_ring):
    master, _ = ptypair
    ring = new_ring(0)
    assert fill(ring, master, ring.room(), 1 << 20) == (0, -1)
    assert ring.write_off == 0 and ring._header[6] == 0


def test_the_compiled_core_is_the_one_this_process_runs_when_built() -> None:
    if importlib.util.find_spec("moorage.actors.terminal._cring") is None:
        pytest.skip("the compiled ring filler was not built here (no compiler): Python only")
    assert RING_CORE == "compiled" and sorted(ring_mod.FILLS) == ["compiled", "python"]
    assert ring_mod._fill is ring_mod.FILLS["compiled"]


def test_without_the_compiled_core_a_ring_fills_in_python() -> None:
    code = ("import os, pty, select; from moorage.actors.terminal import ring as r; "
            "m, s = pty.openpty(); os.write(s, b'abc'); select.select([m], [], [], 5); "
            "g = r.SessionRing.create(4096, 4096); print(r.RING_CORE, sorted(r.FILLS), r._fill is "
            "r._fill_python, g.fill(m, 4096, 4096)[0] >= 3)")
    assert printed(code, MOORAGE_TERMINAL_CORE="python") == ["python", "['python']", "True",
                                                             "True"]
