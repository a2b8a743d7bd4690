"""The C heap's free pages handed back to the kernel once a burst of big work is over.

glibc's malloc keeps what a process frees for its next allocations, resident: after a big
reply (a page of a 100,000-file `fs.query` is 2 MB packed, its names 6 MB of strings), a big
request body, a walk or a checkpoint, those pages stay counted in the process's memory
though nothing reads them until the next such burst. Measured on a watcher holding a
100,000-file watch, after three full queries: 3.3 MB of its 20 MB heap was free, and one
`malloc_trim(0)` gave it back in 0.2-0.3 ms. (pymalloc hands its empty arenas back itself:
this is the C heap's share.)

`HeapTrim.note(nbytes)` is told of big transient work as it happens (the runtime notes every
reply and request of at least NOTE_MIN bytes; an actor notes its own, as the watcher does
after a walk). Once at least THRESHOLD bytes are noted and none for QUIET_S, one trim runs
on the loop: a busy actor is not trimmed in the middle of a burst (its next big reply would
only take the pages back), and a quiet one pays 0.3 ms once, not on every reply.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from typing import Any

NOTE_MIN = 64 * 1024  # a reply or request smaller than this is not big work
THRESHOLD = 1024 * 1024  # noted bytes that make a trim worth its 0.3 ms
QUIET_S = 1.0  # no big work for this long: the burst is over

_libc = ctypes.CDLL(None, use_errno=True)
_trim: Callable[[int], int] | None = getattr(_libc, "malloc_trim", None)  # glibc only
CAN_TRIM = _trim is not None
_PAGE = os.sysconf("SC_PAGE_SIZE")


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the kernel now (glibc malloc_trim); False where
    the C library has no such call."""
    if _trim is None:
        return False
    _trim(0)
    return True


def resident_bytes() -> int:
    """This process's resident memory (/proc/self/statm: one read, no walk of its maps)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


class HeapTrim:
    """Trims the C heap once big work has been quiet for `quiet_s` (module docstring).
    `later(delay, fn)` is the loop's timer; `clock` its monotonic time."""

    def __init__(self, later: Callable[[float, Callable[[], Any]], Any],
                 clock: Callable[[], float] = time.monotonic, *,
                 threshold: int = THRESHOLD, quiet_s: float = QUIET_S) -> None:
        self._later = later
        self._clock = clock
        self.threshold = threshold
        self.quiet_s = quiet_s
        self.noted = 0  # bytes of big work since the last trim
        self._last = 0.0  # when the latest was noted
        self._armed = False
        self.trims = 0
        self.released = 0  # resident bytes the trims gave back, summed
        self.last_ms = 0.0  # what the latest trim took

    @property
    def armed(self) -> bool:
        """A trim is due once the big work is quiet."""
        return self._armed

    def note(self, nbytes: int) -> None:
        self.noted += nbytes
        self._last = self._clock()
        if not self._armed and self.noted >= self.threshold:
            self._armed = True
            self._later(self.quiet_s, self._check)

    def _check(self) -> None:
        wait = self._last + self.quiet_s - self._clock()
        if wait > 0:  # big work since the timer was set: the burst goes on
            self._later(wait, self._check)
            return
        self._armed = False
        self.trim()

    def trim(self) -> int:
        """Trim now; returns the resident bytes it gave back."""
        self.noted = 0
        before = resident_bytes()
        t0 = time.perf_counter()
        if not release_free_heap():
            return 0
        self.last_ms = (time.perf_counter() - t0) * 1000
        freed = 0
        with contextlib.suppress(OSError):
            freed = max(0, before - resident_bytes())
        self.trims += 1
        self.released += freed
        return freed

    def info(self) -> dict[str, Any]:
        return {"trims": self.trims, "released_bytes": self.released,
                "last_trim_ms": round(self.last_ms, 3), "noted_bytes": self.noted}
