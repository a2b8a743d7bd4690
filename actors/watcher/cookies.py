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

A root on a slow file system (NFS, SMB, FUSE: mounts.MountTable) may not answer at all: its
cookie is written, and removed, on the `remote` workers, never on the loop. The sync waits
for it as for any other; one that cannot be written there (or finds the workers all taken)
leaves its root unsynced, which the sync reports (`Sync.unsynced`) as it does a root that is
missing. A stalled mount then costs a sync its timeout (the health check its recreate), not
the loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from loguru import logger

from moorage.actors.watcher.workers import Job, Offload
from moorage.protocol.errors import MoorageError

COOKIE = ".moorage-cookie-"


class Sync:
    """One fs.sync (or health check) waiting for its cookies."""

    def __init__(self, cookies: dict[str, str], done: Callable[[Sync], None],
                 unsynced: list[str]) -> None:
        self.cookies = cookies  # cookie path -> "inotify" | "polling"
        self.left = set(cookies)
        self.done = done
        self.finished = False
        self.started = time.monotonic()
        self.unsynced = unsynced  # roots it cannot wait for (missing, no cookie there)


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("watcher: cookie {} not removed: {}", path, exc)


def _create(cookie: str) -> None:
    os.close(os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


class Cookies:
    def __init__(self, slow: Callable[[str], bool] = lambda _path: False,
                 remote: Offload | None = None,
                 complete: Callable[[Sync], None] = lambda s: s.done(s)) -> None:
        self.waiting: dict[str, Sync] = {}
        self.n = 0
        self.slow = slow  # is this root on a slow file system? (its cookies go to `remote`)
        self.remote = remote
        # Ends a sync whose last cookie failed on the workers after the others came back
        # (Driving.complete_sync, which lets a resync's diff go out first).
        self.complete = complete
        # cookies written on the workers (or being), each with the job that writes it
        self.remote_cookies: dict[str, Job] = {}

    def __len__(self) -> int:
        return len(self.waiting)

    def start(self, roots: Mapping[str, str], done: Callable[[Sync], None]
              ) -> tuple[Sync | None, list[str]]:
        """Write a cookie into each root (path -> "inotify" | "polling" | "missing");
        returns the waiting Sync (None when no cookie could be written) and the roots
        that cannot be synced (missing, or not writable)."""
        cookies: dict[str, str] = {}
        unsynced: list[str] = []
        remote: list[tuple[str, str]] = []
        for path, via in roots.items():
            if via == "missing":
                unsynced.append(path)
                continue
            self.n += 1
            cookie = os.path.join(path, f"{COOKIE}{os.getpid()}-{self.n}")
            if self.remote is not None and self.slow(path):
                remote.append((cookie, path))
                cookies[cookie] = via
                continue
            try:
                _create(cookie)
            except OSError as exc:
                logger.warning("watcher: no cookie in {}: {}", path, exc)
                unsynced.append(path)
                continue
            cookies[cookie] = via
        if not cookies:
            return None, unsynced
        s = Sync(cookies, done, unsynced)
        for cookie in cookies:
            self.waiting[cookie] = s
        for cookie, path in remote:
            self._create_remote(s, cookie, path)
        if not s.left:  # every cookie was on a slow root whose workers are all taken
            return None, unsynced
        return s, unsynced

    def _create_remote(self, s: Sync, cookie: str, root: str) -> None:
        """Write `cookie` on the remote workers; one that cannot be written leaves `root`
        unsynced, and the sync ends when it was the last one it waited for."""
        def failed(exc: BaseException, later: bool) -> None:
            logger.warning("watcher: no cookie in {}: {}", root, exc)
            self.remote_cookies.pop(cookie, None)
            if self.waiting.pop(cookie, None) is None:
                return  # the sync ended meanwhile (its timeout, a resync)
            s.unsynced.append(root)
            s.left.discard(cookie)
            if later and not s.left and not s.finished:  # the others came back already
                s.finished = True
                self.complete(s)

        assert self.remote is not None
        try:
            job = self.remote(lambda: _create(cookie), lambda v: v)
        except MoorageError as exc:  # busy: every remote worker is taken (a stalled mount)
            failed(exc, later=False)
            return
        self.remote_cookies[cookie] = job
        job.then(lambda j: failed(j.error, later=True) if j.error is not None else None)

    def _unlink(self, cookie: str) -> None:
        """Remove a cookie: on the remote workers when it was written there, once its write
        is over (a sync that timed out while the write waited on a stalled mount would
        otherwise leave the file behind in the user's tree, written after its removal)."""
        created = self.remote_cookies.pop(cookie, None)
        if created is None:
            unlink(cookie)
            return
        assert self.remote is not None
        remote = self.remote

        def remove(_job: Job) -> None:
            try:
                remote(lambda: unlink(cookie), lambda v: v)
            except MoorageError as exc:  # busy: left for remove_stale at the next start
                logger.warning("watcher: cookie {} not removed: {}", cookie, exc)

        created.then(remove)

    def remove_stale(self, roots: list[str]) -> None:
        """`remove_stale`, on the remote workers for the roots on a slow file system."""
        remote = self.remote
        slow = [r for r in roots if remote is not None and self.slow(r)]
        remove_stale([r for r in roots if r not in slow])
        if remote is not None and slow:
            try:
                remote(lambda: remove_stale(slow), lambda v: v)
            except MoorageError as exc:  # busy: left for the next start
                logger.warning("watcher: stale cookies in {} not removed: {}", slow, exc)

    def seen(self, path: str, etype: str) -> Sync | None:
        """A cookie event came through the pipeline; returns the Sync it completed, if any."""
        s = self.waiting.get(path)
        if s is None:
            return None  # our own removal coming back, or a dead predecessor's cookie
        polling = s.cookies[path] == "polling"
        if etype == "deleted":
            return self._back(s, path) if polling else None
        self._unlink(path)
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
                self._unlink(cookie)
                finished = self._back(s, cookie)
                if finished is not None:
                    done.append(finished)
        return done

    def drop(self, s: Sync) -> None:
        """Give up on `s` (timed out): forget and remove its cookies."""
        s.finished = True
        for cookie in s.cookies:
            if self.waiting.pop(cookie, None) is not None:
                self._unlink(cookie)


def remove_stale(roots: list[str]) -> None:
    """Cookies a killed predecessor left behind in the roots (not this process's own)."""
    mine = f"{COOKIE}{os.getpid()}-"
    for root in roots:
        try:
            with os.scandir(root) as it:
                for e in it:
                    if e.name.startswith(COOKIE) and not e.name.startswith(mine):
                        unlink(e.path)
        except OSError:
            continue
