"""Room for a session's descriptors under the open-file limit, with a reserve kept free.

Sessions are the only thing that fills the keeper's and the terminal actor's descriptor
tables for good (a session costs the keeper its master, its ring and its shell's pidfd, the
terminal actor a master and a ring, the terminals supervisor two). The rest of what those
processes open comes and goes: a connection accepted by libzmq (which aborts the process when
it gets none: `Too many open files (src/ipc_listener.cpp)`), a new terminal's link, copies of
descriptors queued for sending, custody. So a session is refused (`resource_exhausted`)
unless its descriptors would stay below `soft limit - reserve`: the top `reserve` numbers of
the table are never taken by a session, and what comes and goes always finds them.

The check opens what a session would (`n` descriptors: the kernel hands out the lowest free
numbers, as it will to the session) and looks at the highest number it got: a few
microseconds, where counting /proc/self/fd costs some 0.5 µs a descriptor (5 ms at 10,000).
Every number below the highest one got is taken (the kernel took the lowest free ones), and
sessions only ever take numbers below `soft - reserve`, so at least `reserve` numbers stay
free for everything else however sessions come and go.
"""

from __future__ import annotations

import errno
import os
import resource
from dataclasses import dataclass

MIN_RESERVE = 64  # descriptors kept free at the least ...
RESERVE_SHARE = 8  # ... or this share of the soft limit (1/8), whichever is more
KEEPER_SESSION_FDS = 4  # master, ring, pidfd, and the PTY's slave while the shell is spawned
TERMINAL_SESSION_FDS = 2  # the terminal actor's copies: master and ring
EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)


def exhausted(exc: BaseException) -> bool:
    """Whether an error is a limit of the process or the machine (descriptors, memory), not
    a fault of what was asked: it is answered `resource_exhausted`, never `bad_args`."""
    return isinstance(exc, OSError) and exc.errno in EXHAUSTED


def error_name(exc: BaseException, otherwise: str) -> str:
    """The error an OSError is answered with: `resource_exhausted` at a limit, else
    `otherwise`."""
    return "resource_exhausted" if exhausted(exc) else otherwise


def reserve_for(soft: int) -> int:
    """The descriptors kept free under a soft limit of `soft`: 64, or 1/8 of it when that is
    more (a limit of 256, the review's, leaves 192 to sessions; 1,048,576 leaves 917,504)."""
    return max(MIN_RESERVE, soft // RESERVE_SHARE)


@dataclass
class Room:
    ok: bool
    limit: int  # the soft RLIMIT_NOFILE now (-1: none)
    reserve: int
    highest: int  # the highest number the probe got (-1: it got none)

    def message(self, who: str) -> str:
        if self.highest < 0:
            return f"{who}: no descriptor left (limit {self.limit})"
        return (f"{who}: a session's descriptors would reach number {self.highest} of a limit "
                f"of {self.limit}, of which the top {self.reserve} are kept free")

    def detail(self) -> dict[str, int]:
        return {"limit": self.limit, "reserve": self.reserve, "highest": self.highest}


def room_for(n: int) -> Room:
    """Whether `n` more descriptors stay below the soft limit less its reserve
    (reserve_for), as the kernel would number them now. The limit is read at each call: the
    tree raises it at start, and `prlimit --pid` may change it at any time."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return Room(True, -1, 0, -1)
    keep = reserve_for(soft)
    got: list[int] = []
    try:
        got.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        while len(got) < n:
            got.append(os.dup(got[0]))
    except OSError as exc:
        if not exhausted(exc):
            raise
        return Room(False, soft, keep, max(got, default=-1))
    finally:
        for fd in got:
            os.close(fd)
    top = max(got)
    return Room(top < soft - keep, soft, keep, top)
