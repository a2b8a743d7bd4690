"""The queue in which watchdog's inotify group pairs a move's two halves, with an index.

watchdog (7.x) holds every event of a group in a delayed queue until its emitter thread
takes it, an IN_MOVED_FROM for half a second so that its IN_MOVED_TO can find it; each
IN_MOVED_TO looks for its IN_MOVED_FROM twice (its source path, then the pair) by a walk of
the whole queue. While the emitter keeps up the queue is short; in a burst it is not: 10,000
files renamed into a watched directory put 10,000 events in it, each walking all those
before it (50 million tests): 5-8 s of the watcher's CPU, and that long before the last
event went out, against 10-25 ms for 10,000 files created.

`MoveQueue` is the same queue (the same methods, order and delays) with each queued
IN_MOVED_FROM kept by its cookie as well: pairing a move takes one lookup. An element taken
out of the middle is marked, and skipped when it reaches the front. The other lookups
watchdog makes (a directory's pending move or creation, the events of removed watches) are
rare, and still walk the queue.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

_GONE = object()  # an entry taken out of the middle of the queue


class MoveQueue:
    """watchdog's DelayedQueue, with the unpaired IN_MOVED_FROM elements indexed by cookie.
    `cookie_of(element)` is the cookie of an unpaired IN_MOVED_FROM, None for the rest."""

    def __init__(self, delay: float, cookie_of: Callable[[Any], int | None]) -> None:
        self.delay = delay
        self._cookie_of = cookie_of
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        # entries [element, insert time, delayed]; element _GONE once taken out of the middle
        self._queue: deque[list[Any]] = deque()
        self._from: dict[int, list[Any]] = {}  # cookie -> the entry of its IN_MOVED_FROM
        self._closed = False

    def put(self, element: Any, *, delay: bool = False) -> None:
        entry = [element, time.monotonic() if delay else 0.0, delay]
        with self._lock:
            self._queue.append(entry)
            cookie = self._cookie_of(element)
            if cookie is not None:
                self._from.setdefault(cookie, entry)  # (the first, as a walk would find)
            self._not_empty.notify()

    def close(self) -> None:
        with self._not_empty:
            self._closed = True
            self._not_empty.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._from.clear()

    def get(self) -> Any:
        """The front element once its delay is over, or None once closed (blocks). A held
        IN_MOVED_FROM paired meanwhile wakes the wait (watchdog's sleeps its whole delay
        out, holding everything behind it: a burst of 10,000 moves within a watch was
        published half a second late)."""
        with self._not_empty:
            while True:
                while self._queue and self._queue[0][0] is _GONE:
                    self._queue.popleft()
                if self._closed:
                    return None
                if not self._queue:
                    self._not_empty.wait()
                    continue
                entry = self._queue[0]
                left = entry[1] + self.delay - time.monotonic() if entry[2] else 0.0
                if left <= 0:
                    return self._pop_front(entry)
                self._not_empty.wait(left)

    def _pop_front(self, entry: list[Any]) -> Any:
        self._queue.popleft()
        self._unindex(entry)
        return entry[0]

    def _unindex(self, entry: list[Any]) -> None:
        cookie = self._cookie_of(entry[0])
        if cookie is not None and self._from.get(cookie) is entry:
            del self._from[cookie]

    def take_moved_from(self, cookie: int) -> Any:
        """Remove and return the queued IN_MOVED_FROM of `cookie`, or None."""
        with self._lock:
            entry = self._from.pop(cookie, None)
            if entry is None:
                return None
            element, entry[0] = entry[0], _GONE
            self._not_empty.notify()  # (it may be what a get waits on)
            return element

    def moved_from(self, cookie: int) -> Any:
        """The queued IN_MOVED_FROM of `cookie`, left in the queue, or None."""
        with self._lock:
            entry = self._from.get(cookie)
            return None if entry is None else entry[0]

    def find(self, predicate: Callable[[Any], bool]) -> Any:
        """The first element `predicate` is true for, delays aside (a walk)."""
        with self._lock:
            entry = self._first(predicate)
            return None if entry is None else entry[0]

    def remove(self, predicate: Callable[[Any], bool]) -> Any:
        """Take out and return the first element `predicate` is true for (a walk)."""
        with self._lock:
            entry = self._first(predicate)
            if entry is None:
                return None
            self._unindex(entry)
            element, entry[0] = entry[0], _GONE
            self._not_empty.notify()
            return element

    def _first(self, predicate: Callable[[Any], bool]) -> list[Any] | None:
        for entry in self._queue:
            if entry[0] is not _GONE and predicate(entry[0]):
                return entry
        return None

    def __len__(self) -> int:
        """Elements still queued (a walk: for tests and stats)."""
        with self._lock:
            return sum(1 for e in self._queue if e[0] is not _GONE)
