"""watchdog's observers, run so that every loss they suffer is seen.

watchdog 7.x alone loses events without telling anyone: an inotify queue overflow is only
logged, an ENOSPC while watching a subdirectory is swallowed, and an exception in a handler
kills the dispatch thread. So, here:
  - the inotify watch group is subclassed to report an overflow and a failed subdirectory
    watch (ENOSPC, ENOMEM, EMFILE) instead of swallowing them (`report`);
  - our handler only appends to a bounded buffer and wakes the actor's loop (one wake-up
    per batch, through `call_soon_threadsafe`); a full buffer drops the event but sets
    `overflowed`, which the actor turns into a resync, and a handler error is reported;
  - every observer thread (dispatcher, inotify reader, one emitter per root) can be listed
    for the liveness check, and `recreate` builds the observers afresh;
  - a root whose inotify watch cannot be placed (ENOSPC at the root, no inotify instance
    left) is observed by a PollingObserver instead, and so is one `to_polling` moves there.
Everything here runs on watchdog's threads except the methods the actor calls; shared state
is guarded by one lock.

Seam: `add_watch_fault(path: bytes)`, when set, runs before each inotify watch is added and
may raise (tests set it in the test process before forking the actor, to inject ENOSPC).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

try:  # the guarded inotify classes depend on watchdog 7.x internals
    from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyFD
    GUARDED = hasattr(InotifyWatchGroup, "_add_callback") and hasattr(
        InotifyWatchGroup, "on_queue_overflow")
except ImportError:  # pragma: no cover - not Linux, or another watchdog layout
    GUARDED = False

EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent,
    DirMovedEvent, FileModifiedEvent, FileAttribEvent]
WATCH_LIMIT_ERRNOS = (errno.ENOSPC, errno.ENOMEM, errno.EMFILE)

Raw = tuple[str, str, str, bool]  # (watchdog event type, src, dest, is_dir)
Report = Callable[[str, str], None]

add_watch_fault: Callable[[bytes], None] | None = None


def _guarded_emitter(report: Report) -> type:
    """An InotifyEmitter whose watch group reports what watchdog would swallow."""

    class Group(InotifyWatchGroup):  # type: ignore[misc,valid-type]
        def on_queue_overflow(self) -> None:
            report("overflow", os.fsdecode(self.path))
            super().on_queue_overflow()

        def _add_callback(self, path: bytes) -> None:
            try:
                if add_watch_fault is not None:
                    add_watch_fault(path)
                wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback,
                                                   self._id)
            except OSError as exc:
                if path == self.path:
                    raise
                if exc.errno in WATCH_LIMIT_ERRNOS:
                    report("enospc", os.fsdecode(path))
                return  # vanished or unreadable since listed: the walk and diff cover it
            self._active_callbacks_by_path[path] = wd
            self._active_callbacks_by_watch[wd] = path

    class Emitter(InotifyEmitter):  # type: ignore[misc,valid-type]
        def on_thread_start(self) -> None:
            self._inotify = Group(
                self._inotify_fd, os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink)

    return Emitter


class _InotifyObserver(BaseObserver):
    """InotifyObserver with our emitter class; the reader thread is ours to check."""

    def __init__(self, emitter_class: type, timeout: float) -> None:
        self.inotify_fd = InotifyFD()
        self.inotify_fd.start()
        super().__init__(emitter_class, timeout=timeout, inotify_fd=self.inotify_fd)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.inotify_fd.stop()
        self.inotify_fd.join(2.0)


class _Handler(FileSystemEventHandler):
    def __init__(self, manager: ObserverManager) -> None:
        self.manager = manager

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.manager.push((event.event_type, os.fsdecode(event.src_path),
                               os.fsdecode(event.dest_path), event.is_directory))
        except Exception as exc:  # never let it kill watchdog's dispatcher
            self.manager.report("handler_error", f"{type(exc).__name__}: {exc}")


@dataclass
class Root:
    path: str
    recursive: bool
    via: str  # "inotify" | "polling" | "missing"
    watch: ObservedWatch | None = None


class ObserverManager:
    def __init__(
        self,
        wake: Callable[[Callable[[], None]], None],
        on_ready: Callable[[], None],
        *,
        mode: str = "inotify",
        buffer_max: int = 65536,
        poll_interval: float = 1.0,
    ) -> None:
        self.wake = wake
        self.on_ready = on_ready
        self.mode = mode if GUARDED else "polling"
        self.buffer_max = buffer_max
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self.buffer: list[Raw] = []
        self.overflowed = False
        self.problems: list[tuple[str, str]] = []
        self._wake_pending = False
        self.handler = _Handler(self)
        self.inotify: _InotifyObserver | None = None
        self.polling: BaseObserver | None = None
        self.roots: dict[str, Root] = {}
        self.raw_events = 0
        self.dropped = 0
        self.peak = 0
        self.recreated = 0

    # --- watchdog's threads call these ------------------------------------------------

    def push(self, raw: Raw) -> None:
        with self._lock:
            self.raw_events += 1
            buf = self.buffer
            if len(buf) >= self.buffer_max:
                self.overflowed = True
                self.dropped += 1
            else:
                buf.append(raw)
                if len(buf) > self.peak:
                    self.peak = len(buf)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.wake(self.on_ready)

    def report(self, kind: str, detail: str) -> None:
        logger.warning("watcher: {} ({})", kind, detail)
        with self._lock:
            self.problems.append((kind, detail))
            if self._wake_pending:
                return
            self._wake_pending = True
        self.wake(self.on_ready)

    # --- the actor's loop calls the rest --------------------------------------------------

    def take(self) -> tuple[list[Raw], bool, list[tuple[str, str]]]:
        """Everything handed over since the last call: events, overflow flag, problems."""
        with self._lock:
            buf, self.buffer = self.buffer, []
            overflowed, self.overflowed = self.overflowed, False
            problems, self.problems = self.problems, []
            self._wake_pending = False
        return buf, overflowed, problems

    def _observer(self, via: str) -> BaseObserver:
        if via == "inotify":
            if self.inotify is None:
                self.inotify = _InotifyObserver(_guarded_emitter(self.report), 1.0)
                self.inotify.start()
            return self.inotify
        if self.polling is None:
            self.polling = PollingObserver(timeout=self.poll_interval)
            self.polling.start()
        return self.polling

    def _schedule(self, root: Root, via: str) -> str | None:
        """Observe `root` with `via`; returns a warning when it had to fall back."""
        warning = None
        if not os.path.isdir(root.path):
            root.via, root.watch = "missing", None
            return None
        if via == "inotify":
            try:
                root.watch = self._observer("inotify").schedule(
                    self.handler, root.path, recursive=root.recursive,
                    event_filter=EVENT_FILTER)
                root.via = "inotify"
                return None
            except OSError as exc:
                if exc.errno not in WATCH_LIMIT_ERRNOS:
                    raise
                warning = f"inotify unavailable for {root.path} ({os.strerror(exc.errno)})"
        root.watch = self._observer("polling").schedule(
            self.handler, root.path, recursive=root.recursive, event_filter=EVENT_FILTER)
        root.via = "polling"
        return warning

    def _unschedule(self, root: Root) -> None:
        obs = self.inotify if root.via == "inotify" else self.polling
        if obs is not None and root.watch is not None:
            try:
                obs.unschedule(root.watch)
            except KeyError:
                pass  # its emitter already stopped itself (the root was deleted)
        root.watch = None

    def set_roots(self, wanted: dict[str, bool]) -> list[str]:
        """Observe exactly `wanted` (path -> recursive); returns fallback warnings."""
        warnings = []
        for path in [p for p, r in self.roots.items() if wanted.get(p) != r.recursive]:
            self._unschedule(self.roots.pop(path))
        for path, recursive in wanted.items():
            if path not in self.roots:
                root = self.roots[path] = Root(path, recursive, "missing")
                w = self._schedule(root, self.mode)
                if w:
                    warnings.append(w)
        return warnings

    def to_polling(self, path: str) -> bool:
        root = self.roots.get(path)
        if root is None or root.via == "polling":
            return False
        self._unschedule(root)
        self._schedule(root, "polling")
        return True

    def root_of(self, path: str) -> str | None:
        best = None
        for p in self.roots:
            if (path == p or path.startswith(p.rstrip("/") + "/")) and (
                    best is None or len(p) > len(best)):
                best = p
        return best

    def check(self) -> dict[str, list[str]]:
        """The liveness check: threads that died while their root still exists (`dead`),
        roots that disappeared (`missing`: a deleted root stops its own emitter, which is
        not a failure) and missing roots that exist again and are observed anew (`back`)."""
        out: dict[str, list[str]] = {"dead": [], "missing": [], "back": []}
        for name, obs in (("inotify", self.inotify), ("polling", self.polling)):
            if obs is None:
                continue
            if not obs.is_alive():
                out["dead"].append(f"{name} dispatcher")
            if name == "inotify" and not obs.inotify_fd.is_alive():  # type: ignore[union-attr]
                out["dead"].append("inotify reader")
            for em in list(obs.emitters):
                if em.is_alive():
                    continue
                root = self.roots.get(em.watch.path)
                if os.path.isdir(em.watch.path) or root is None:
                    out["dead"].append(f"{name} emitter {em.watch.path}")
                else:
                    self._unschedule(root)
                    root.via = "missing"
                    out["missing"].append(root.path)
        for root in self.roots.values():
            if root.via == "missing" and root.path not in out["missing"] \
                    and os.path.isdir(root.path):
                self._schedule(root, self.mode)
                out["back"].append(root.path)
        return out

    def stop(self) -> None:
        for obs in (self.inotify, self.polling):
            if obs is None:
                continue
            try:
                obs.stop()
                obs.join(2.0)
            except Exception:
                logger.exception("watcher: stopping an observer failed")
        self.inotify = self.polling = None
        for root in self.roots.values():
            root.watch = None

    def recreate(self) -> None:
        """New observers for the same roots (polling roots stay on polling)."""
        self.recreated += 1
        vias = {p: r.via for p, r in self.roots.items()}
        self.stop()
        for path, root in self.roots.items():
            self._schedule(root, "polling" if vias[path] == "polling" else self.mode)

    def inotify_watches(self) -> int | None:
        """Watches this process holds (from /proc/self/fdinfo), to compare with the limit."""
        fd = getattr(getattr(self.inotify, "inotify_fd", None), "_inotify_fd", None)
        if fd is None:
            return None
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                return sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            return None

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "guarded": GUARDED,
            "roots": {p: {"recursive": r.recursive, "via": r.via} for p, r in self.roots.items()},
            "raw_events": self.raw_events, "buffer_max": self.buffer_max,
            "buffer_peak": self.peak, "dropped_to_resync": self.dropped,
            "recreated": self.recreated, "inotify_watches": self.inotify_watches(),
        }
