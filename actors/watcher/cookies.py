"""Cookies: how `fs.sync` and the health check know everything before them has gone out.

Watchman's method: write a uniquely named file into every observed root and wait until its
creation comes back through the observer and the pipeline. inotify delivers one instance's
events in order and the pipeline publishes everything it holds before it reports a cookie,
so when the last cookie is back, every change made before the sync began has been published.

A polling root reports the changes of one poll in no particular order, so there the cookie is
removed when its creation is seen, and the sync waits for the removal too: that is seen one
poll later, after everything of the cookie's own poll.

A resync answers every sync that began before its walk: the diff covers what those syncs wait
for, and their cookies may have been lost with whatever caused the resync.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from loguru import logger

COOKIE = ".moorage-cookie-"


class Sync:
    """One fs.sync (or health check) waiting for its cookies."""

    def __init__(self, cookies: dict[str, str], done: Callable[[Sync], None]) -> None:
        self.cookies = cookies  # cookie path -> "inotify" | "polling"
        self.left = set(cookies)
        self.done = done
        self.finished = False
        self.started = time.monotonic()


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("watcher: cookie {} not removed: {}", path, exc)


class Cookies:
    def __init__(self) -> None:
        self.waiting: dict[str, Sync] = {}
        self.n = 0

    def __len__(self) -> int:
        return len(self.waiting)

    def start(self, roots: Mapping[str, str], done: Callable[[Sync], None]
              ) -> tuple[Sync | None, list[str]]:
        """Write a cookie into each root (path -> "inotify" | "polling" | "missing");
        returns the waiting Sync (None when no cookie could be written) and the roots
        that cannot be synced (missing, or not writable)."""
        cookies: dict[str, str] = {}
        unsynced = []
        for path, via in roots.items():
            if via == "missing":
                unsynced.append(path)
                continue
            self.n += 1
            cookie = os.path.join(path, f"{COOKIE}{os.getpid()}-{self.n}")
            try:
                os.close(os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600))
            except OSError as exc:
                logger.warning("watcher: no cookie in {}: {}", path, exc)
                unsynced.append(path)
                continue
            cookies[cookie] = via
        if not cookies:
            return None, unsynced
        s = Sync(cookies, done)
        for cookie in cookies:
            self.waiting[cookie] = s
        return s, unsynced

    def seen(self, path: str, etype: str) -> Sync | None:
        """A cookie event came through the pipeline; returns the Sync it completed, if any."""
        s = self.waiting.get(path)
        if s is None:
            return None  # our own removal coming back, or a dead predecessor's cookie
        polling = s.cookies[path] == "polling"
        if etype == "deleted":
            return self._back(s, path) if polling else None
        unlink(path)
        return None if polling else self._back(s, path)

    def _back(self, s: Sync, path: str) -> Sync | None:
        self.waiting.pop(path, None)
        s.left.discard(path)
        if s.left or s.finished:
            return None
        s.finished = True
        return s

    def covered(self, walk_started: float) -> list[Sync]:
        """Syncs that began before a resync's walk: complete them (see the module doc)."""
        done = []
        for s in {s for s in self.waiting.values() if s.started < walk_started}:
            for cookie in list(s.left):
                unlink(cookie)
                finished = self._back(s, cookie)
                if finished is not None:
                    done.append(finished)
        return done

    def drop(self, s: Sync) -> None:
        """Give up on `s` (timed out): forget and remove its cookies."""
        s.finished = True
        for cookie in s.cookies:
            if self.waiting.pop(cookie, None) is not None:
                unlink(cookie)


def remove_stale(roots: list[str]) -> None:
    """Cookies a killed predecessor left behind in the roots."""
    for root in roots:
        try:
            with os.scandir(root) as it:
                for e in it:
                    if e.name.startswith(COOKIE):
                        unlink(e.path)
        except OSError:
            continue
