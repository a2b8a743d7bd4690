"""Liveness beats: each supervised process's loop keeps a slot its supervisor reads.

A supervisor must see a child whose loop no longer turns (a handler stuck in a loop or a
blocking call, a SIGSTOPped process) even though libzmq's I/O thread would still answer for
it. Asking the loop itself (a `sys.heartbeat` request every interval) proves that, at the cost
of a request and a reply per child per interval, and of waking every idle child for them. A
beat proves the same with no message and no wake-up:

  turn    the loop writes the monotonic clock into `turn` each time its wait returns, before
          it runs anything: a loop stuck in a handler or a timer stops changing it
  until   before it blocks, the loop writes when its wait will end at the latest (its next
          timer; WAIT_FOREVER with none), and 0 once the wait has returned

The supervisor reads both on its heartbeat tick (moorage.supervisor.supervisor). A child
shows life when `turn` changed since the last tick, or when it is blocked in its loop's wait
(`until` set and not past) and not stopped (SIGSTOP: its zygote, its parent, reports it;
/proc state T or t for a child whose zygote died): blocked there is idle, not hung. Anything
else is a missed beat; `misses` in a row and it is hung
(moorage.supervisor.policy.Heartbeat), as `misses` unanswered probes in a row were.

The board is a shared mapping of a memfd the supervisor creates before it forks its zygote,
so the zygote and every child it forks share it (no file to name, lock or clean up), and a
zygote started to replace a dead one maps it from the fd it is handed; a nested supervisor
makes its own for its children. Two 8-byte cells per child, written by the child
only: aligned 8-byte loads and stores do not tear, so no lock. A reader that sees a wait end
between its two loads counts one miss, which `misses` absorbs.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time

from moorage.actors.runtime.procstat import STATE, stat_fields

BOARD_SLOTS = 4096  # children per supervisor; untouched pages of the mapping cost nothing
WAIT_FOREVER = (1 << 64) - 1  # `until` of a wait with no timer to end it


class BeatBoard:
    """The supervisor's side: one slot (turn, until) per child, read on the heartbeat tick."""

    def __init__(self, slots: int = BOARD_SLOTS, fd: int | None = None) -> None:
        """A new board, or (`fd`) the one another process made and passed on: a zygote that
        replaces a dead one is a new program, not a fork, and maps the same memory."""
        self.slots = slots
        if fd is None:
            fd = os.memfd_create("moorage-beats", os.MFD_CLOEXEC)
            os.ftruncate(fd, slots * 16)
        self.fd = fd
        self._map = mmap.mmap(fd, slots * 16)  # MAP_SHARED: kept across fork
        self._cells = (ctypes.c_uint64 * (slots * 2)).from_buffer(self._map)

    def read(self, slot: int) -> tuple[int, int]:
        """(turn, until) of `slot`, both in monotonic ns; (0, 0) when cleared and not begun."""
        cells = self._cells
        return cells[2 * slot], cells[2 * slot + 1]

    def clear(self, slot: int) -> None:
        self._cells[2 * slot] = 0
        self._cells[2 * slot + 1] = 0

    def beater(self, slot: int) -> Beater:
        """The child's side of `slot` (made in the forked child)."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"beat slot {slot} outside the board's {self.slots}")
        return Beater(self._cells, slot)


class Beater:
    """A child's slot, kept by its loop: `waiting` before each wait, `woke` after it."""

    __slots__ = ("_cells", "_turn", "_until", "pid")

    def __init__(self, cells: ctypes.Array, slot: int) -> None:
        self._cells = cells
        self._turn = 2 * slot
        self._until = 2 * slot + 1
        self.pid = os.getpid()

    def waiting(self, timeout_ms: int | None) -> None:
        """About to block for at most `timeout_ms` (None: until something arrives)."""
        self._cells[self._until] = WAIT_FOREVER if timeout_ms is None else \
            time.monotonic_ns() + timeout_ms * 1_000_000

    def woke(self) -> None:
        """The wait returned: the loop is turning, and busy until its next wait."""
        self._cells[self._until] = 0
        self._cells[self._turn] = time.monotonic_ns()


def progress() -> None:
    """Long work on the loop (a walk of a large tree, a big diff) says it is still moving.

    A loop turn that legitimately takes longer than the supervisor's interval x misses (the
    first walk of a 100,000-file repository) would otherwise look hung and be killed, and its
    successor would start the same walk. Only code that is making progress calls this; a
    handler stuck in a loop or a blocking call does not, and is still seen."""
    b = _installed
    if b is not None and b.pid == os.getpid():
        b.woke()


def stopped(pid: int) -> bool:
    """Is `pid` stopped (SIGSTOP, a tracer)? A gone process is not: its exit is on the way."""
    try:
        return stat_fields(pid)[STATE] in (b"T", b"t")
    except (OSError, ValueError, IndexError):
        return False


_installed: Beater | None = None


def install(beater: Beater | None) -> None:
    """Set this process's beater (the zygote does, in a child it has just forked)."""
    global _installed
    _installed = beater


def installed() -> Beater | None:
    """This process's beater, or None: not supervised, or a process forked by the supervised
    one (its loop must not beat for the process its supervisor watches)."""
    b = _installed
    if b is None or b.pid != os.getpid():
        return None
    return b
