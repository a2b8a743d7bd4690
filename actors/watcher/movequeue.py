"""The queue in which watchdog's inotify group pairs a move's two halves, with an index.

watchdog (7.x) holds every event of a group in a delayed queue until its emitter thread
takes it, an IN_MOVED_FROM for half a second so that its IN_MOVED_TO can find it; each
IN_MOVED_TO looks for its IN_MOVED_FROM twice (its source path, then the pair), and each
directory moved out looks for a pending move in or creation at its path, each by a walk of
the whole queue. While the emitter keeps up the queue is short; in a burst it is not:
10,000 files renamed into a watched directory put 10,000 events in it, each walking all
those before it (50 million tests): 5-8 s of the watcher's CPU, and that long before the
last event went out, against 10-25 ms for 10,000 files created.

`MoveQueue` is the same queue (the same methods, order and delays) with its elements also
kept by the keys `keys_of(element)` gives them (a move out's cookie, a directory's path):
each of those lookups is one dict access. An element taken out of the middle is marked, and
skipped when it reaches the front. What watchdog still finds by a walk (the events of
removed watches) is rare.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

_GONE = object()  # an entry taken out of the middle of the queue


class MoveQueue:
    """watchdog's DelayedQueue, its elements indexed by `keys_of(element)`: a tuple of keys
    (none for most) by which `first` and `take` find the earliest element still queued."""

    def __init__(self, delay: float, keys_of: Callable[[Any], tuple[Hashable, ...]]) -> None:
        self.delay = delay
        self._keys_of = keys_of
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        # entries [element, insert time, delayed, keys]; element _GONE once taken out of
        # the middle
        self._queue: deque[list[Any]] = deque()
        self._by_key: dict[Hashable, deque[list[Any]]] = {}  # key -> its entries, in order
        self._closed = False

    def put(self, element: Any, *, delay: bool = False) -> None:
        keys = self._keys_of(element)
        entry = [element, time.monotonic() if delay else 0.0, delay, keys]
        with self._lock:
            self._queue.append(entry)
            for key in keys:
                same = self._by_key.get(key)
                if same is None:
                    self._by_key[key] = deque((entry,))
                else:
                    same.append(entry)
            self._not_empty.notify()

    def close(self) -> None:
        with self._not_empty:
            self._closed = True
            self._not_empty.notify_all()

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._by_key.clear()

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
                    self._queue.popleft()
                    return self._unindex(entry)
                self._not_empty.wait(left)

    def first(self, key: Hashable) -> Any:
        """The earliest element still queued with `key`, left in the queue, or None."""
        with self._lock:
            same = self._by_key.get(key)
            return None if same is None else same[0][0]

    def take(self, key: Hashable) -> Any:
        """Remove and return the earliest element still queued with `key`, or None."""
        with self._lock:
            same = self._by_key.get(key)
            return None if same is None else self._take_out(same[0])

    def find(self, predicate: Callable[[Any], bool]) -> Any:
        """The first element `predicate` is true for, delays aside (a walk)."""
        with self._lock:
            entry = self._first(predicate)
            return None if entry is None else entry[0]

    def remove(self, predicate: Callable[[Any], bool]) -> Any:
        """Take out and return the first element `predicate` is true for (a walk)."""
        with self._lock:
            entry = self._first(predicate)
            return None if entry is None else self._take_out(entry)

    def _first(self, predicate: Callable[[Any], bool]) -> list[Any] | None:
        for entry in self._queue:
            if entry[0] is not _GONE and predicate(entry[0]):
                return entry
        return None

    def _take_out(self, entry: list[Any]) -> Any:
        element = self._unindex(entry)
        entry[0] = _GONE
        self._not_empty.notify()  # (it may be the front a get waits on)
        return element

    def _unindex(self, entry: list[Any]) -> Any:
        for key in entry[3]:
            same = self._by_key[key]
            if same[0] is entry:
                same.popleft()
            else:
                same.remove(entry)
            if not same:
                del self._by_key[key]
        return entry[0]

    def __len__(self) -> int:
        """Elements still queued (a walk: for tests and stats)."""
        with self._lock:
            return sum(1 for e in self._queue if e[0] is not _GONE)
