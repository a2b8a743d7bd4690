"""When to resync: at once after a quiet spell, backing off while the reasons keep coming.

Every loss (an overflow, ENOSPC, a dead thread, a lost health cookie...) asks for a resync.
Requests that arrive while one is already scheduled join it (their reasons are merged, and a
request to recreate the observer sticks). A resync soon after the last one waits: 50 ms, then
doubling up to `backoff_max` (Watchman's recrawl back-off), so a tree that overflows the
queue again and again is re-read at a bounded rate instead of in a loop. After a quiet spell
(5 s, or twice the current back-off) the next one runs at once again.

The clock and the timer are injected (`now`, `call_later`), so this is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class ResyncScheduler:
    def __init__(
        self,
        call_later: Callable[[float, Callable[[], None]], Any],
        run: Callable[[str, bool], Any],
        backoff_max: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_later = call_later
        self.run = run
        self.backoff_max = backoff_max
        self.now = now
        self.reasons: set[str] = set()
        self.recreate = False
        self.timer: Any = None
        self.backoff = 0.0
        self.last = -1e9

    @property
    def pending(self) -> bool:
        return self.timer is not None

    def request(self, reason: str, recreate: bool = False) -> float | None:
        """Ask for a resync; returns its delay, or None when it joined a scheduled one."""
        self.reasons.add(reason)
        self.recreate = self.recreate or recreate
        if self.timer is not None:
            return None
        if self.now() - self.last > max(5.0, 2 * self.backoff):
            self.backoff = 0.0
        else:
            self.backoff = min(self.backoff_max, max(0.05, self.backoff * 2))
        self.timer = self.call_later(self.backoff, self._fire)
        return self.backoff

    def _fire(self) -> None:
        self.timer = None
        reason = "+".join(sorted(self.reasons))
        recreate = self.recreate
        self.reasons, self.recreate = set(), False
        self.run(reason, recreate)

    def done(self) -> None:
        """A resync (scheduled or not) has just finished."""
        self.last = self.now()
