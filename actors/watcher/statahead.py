"""The lstats of a settle window's changed paths, made on a thread while the window is open.

A flush lstats each changed path it publishes (the event's type, size and mtime). In a burst
those stats were a third of the watcher loop's time, and all of them fell inside the flush,
after the window closed: the flush of a 20 ms window of a fast writer's creates took 8-15
ms, and the next window opened only after it. Here the loop hands each window's paths over
as it reads them (`want`), a thread lstats them in batches with the GIL let go
(`snapshot.lstat_many`), and the flush takes what is ready (`take_window`): a path whose
stat came back is not stat'ed again, any other is, on the loop, as before.

A stat is used only when it was made after the last event the loop read for its path: each
`want` records the number of the batch the path goes into, and a result counts only when it
comes from that batch (a path wanted again since went into a later batch, not yet stat'ed).
A batch still being stat'ed when the flush takes the window is dropped when it lands; its
paths are stat'ed by the flush. Paths on a slow file system are never handed over (a stat
there may not return: the pipeline does not stat them at all).

A small batch gathers for GATHER_S before it is stat'ed, and only an idle thread is woken:
a burst of directories made comes to the loop one at a time (each is watched and read as it
comes), and handing each path over as it came woke the thread for each one (5,000-9,000
batches for 10,000 directories): a futex wake and a hand-over of the GIL per path, with the
loop preempted inside the wake while it held the GIL (a third of its time in
Condition.notify). A window is open for settle_ms (20 by default), so a batch 2 ms later is
still stat'ed before the flush needs it; one that is not is stat'ed by the flush, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from loguru import logger

from moorage.actors.watcher.snapshot import StatFields, lstat_many

GATHER_S = 0.002  # a batch smaller than GATHER_MIN waits this long for more paths
GATHER_MIN = 256


class StatAhead:
    def __init__(self, lstat: Callable[[list[str]], list[StatFields | None]] = lstat_many,
                 name: str = "mw-statahead") -> None:
        self._lstat = lstat
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[str] = []
        # path -> the number of the batch its last `want` put it in
        self._wanted: dict[str, int] = {}
        # path -> (the number of the batch that stat'ed it, the stat)
        self._done: dict[str, tuple[int, StatFields | None]] = {}
        self._batch = 0  # the number of the batch being gathered
        self._window = 0  # windows taken so far: a batch of an older one is dropped
        self._closed = False
        self._idle = False  # the thread waits for paths: the next `want` wakes it
        self._in_flight = 0  # paths being stat'ed now
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.stats = 0
        self.dropped = 0  # stats that landed after their window was taken

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()

    def want(self, paths: list[str]) -> None:
        """The loop read an event for each of `paths` (in the window now open)."""
        with self._lock:
            n = self._batch
            wanted = self._wanted
            pending = self._pending
            for p in paths:
                if wanted.get(p) != n:
                    wanted[p] = n
                    pending.append(p)
            if self._idle and pending:  # (a gathering or busy thread takes them itself)
                self._idle = False
                self._wake.notify()

    def take_window(self) -> tuple[dict[str, tuple[int, StatFields | None]], dict[str, int]]:
        """The flush takes the window: what came back (`done`) and the batch each path's
        last want went into (`wanted`); a stat is current when done[p][0] == wanted[p]."""
        with self._lock:
            done, wanted = self._done, self._wanted
            self._done, self._wanted, self._pending = {}, {}, []
            self._window += 1
        return done, wanted

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._idle = True
                    self._wake.wait()
                self._idle = False
                if len(self._pending) < GATHER_MIN and not self._closed:
                    self._wake.wait(GATHER_S)  # (only a close wakes it sooner)
                if self._closed:
                    return
                if not self._pending:  # (the flush took the window meanwhile)
                    continue
                batch, self._pending = self._pending, []
                self._in_flight = len(batch)
                n = self._batch
                self._batch += 1
                window = self._window
            try:
                results = self._lstat(batch)
            except Exception:  # the flush's own lstat answers for these paths
                logger.exception("watcher: stats ahead of a flush failed")
                with self._lock:
                    self._in_flight = 0
                continue
            with self._lock:
                self._in_flight = 0
                self.batches += 1
                self.stats += len(batch)
                if window != self._window:
                    self.dropped += len(batch)
                    continue
                done = self._done
                for p, r in zip(batch, results, strict=True):
                    done[p] = (n, r)

    def info(self) -> dict[str, int]:
        """Counters, and `queued`: paths wanted and not yet stat'ed (waiting or in flight)."""
        with self._lock:
            return {"batches": self.batches, "stats": self.stats, "dropped": self.dropped,
                    "queued": len(self._pending) + self._in_flight}
