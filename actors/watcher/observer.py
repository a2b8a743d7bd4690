"""watchdog's observers, run so that every loss they suffer is seen.

watchdog 7.x alone loses events without telling anyone: an inotify queue overflow is only
logged, an ENOSPC while watching a subdirectory is swallowed, and an exception in a handler
kills the dispatch thread. So, here:
  - the inotify watch group is subclassed (moorage.actors.watcher.guarded) to report an overflow
    and a failed subdirectory watch (ENOSPC, ENOMEM, EMFILE) instead of swallowing them;
  - our handler only appends to a bounded buffer and wakes the actor's loop (one wake-up
    per batch, through `call_soon_threadsafe`; none when the loop itself read the event:
    the inotify instance is read there, guarded.LoopInotifyFD); a full buffer drops the
    event but sets `overflowed`, which the actor turns into a resync, and a handler error
    is reported;
  - directories no watch needs (inside an excluded subtree, `wanted` false) get no inotify
    watch and are not walked for one; `refresh` adds the ones a new watch needs;
  - every observer thread (dispatcher, the inotify lane, one emitter per root) can be listed
    for the liveness check, and `recreate` builds the observers afresh;
  - a root whose inotify watch cannot be placed (ENOSPC at the root, no inotify instance
    left) is observed by a PollingObserver instead, and so is one `to_polling` moves there;
    a subdirectory whose watch cannot be placed (ENOSPC below the root) is polled by itself
    (`poll_subtree`) while inotify keeps the rest of its root, up to `max_polled` subtrees
    per root (each polling emitter is a thread): past that the whole root is polled;
  - a directory below a root that inotify may not watch for its permissions (EACCES,
    EPERM: nothing below it is watched or read) is kept by its group, which reports it:
    `unreadable` lists it (fs.sync's unsynced, a `warning` event) until the group watches it,
    at the IN_ATTRIB of a chmod or chown, or when `retry_unreadable` asks it again;
  - a root is the directory its path named when it was placed (its device and inode,
    `dir_identity`): one moved away, deleted or replaced (by another directory, or by a
    symlink, which is not followed: fs.watch resolved the root's path once, and a watch of
    the link names its target) is missing (`lose_root`), at once when its emitter reports
    it, else at the liveness check (`check`), and placed again once a directory is back.
Everything here runs on watchdog's threads (and, for plain inotify events, on the loop)
except the methods the actor calls; shared state is guarded by one lock. The inotify
subclasses are in moorage.actors.watcher.guarded.
"""

from __future__ import annotations

import os
import stat
import threading
import time
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

from moorage.actors.runtime.loop import Loop
from moorage.actors.watcher.guarded import (
    GUARDED,
    WATCH_LIMIT_ERRNOS,
    BaseWalk,
    InotifyObserver,
    Wanted,
    base_walk,
    guarded_emitter,
)
from moorage.actors.watcher.snapshot import path_bytes, sendable, wire_fields
from moorage.actors.watcher.watches import wire_paths

EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent, DirCreatedEvent, FileDeletedEvent, DirDeletedEvent, FileMovedEvent,
    DirMovedEvent, FileModifiedEvent, FileAttribEvent]
EVENT_KINDS = tuple(EVENT_FILTER)
_monotonic = time.monotonic
Raw = tuple[str, str, str, bool]  # (watchdog event type, src, dest, is_dir)
Ident = tuple[int, int]  # (st_dev, st_ino) of a root's directory
GONE: Ident = (-1, -1)  # no directory at the path: nothing, a file, a symlink
# What an emitter reports when its root's own directory left (guarded.py): "root_moved"
# (its tree left without an event for what it held) or "root_deleted" (after the
# deletions of what it held).
ROOT_GONE = ("root_moved", "root_deleted")


def dir_identity(path: str) -> Ident:
    """The directory at `path` itself, by an lstat (a symlink there is not followed: it is
    not the directory the root's path named), or GONE."""
    try:
        st = os.lstat(path)
    except OSError:
        return GONE
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else GONE


def _watchdog_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("watchdog")
    except PackageNotFoundError:
        return "(version unknown)"


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
    via: str  # "inotify" | "polling" | "missing" | "placing" (its watch is being placed)
    watch: ObservedWatch | None = None
    # how it is placed, whenever it is ("polling" once inotify had no room for it: a root
    # found missing and back must not go back to inotify, to hit the limit again)
    target: str | None = None
    ident: Ident | None = None  # the directory it was placed on (`dir_identity`)


def wire_roots(roots: dict[str, Root]) -> dict[str, dict[str, Any]]:
    """fs.stats' map of the roots, path -> {recursive, via}, as an answer holds it: a path
    that is not valid UTF-8 keys its entry readable, and the entry has the exact bytes
    (`path`, `path_bytes`: snapshot.wire_fields). Two roots whose readable forms are one
    (they differ only in such bytes, or one is a name with a real U+FFFD) keep both
    entries: the plain one keeps its key, the other is keyed by its bytes escaped (`\\xfe`)."""
    out: dict[str, dict[str, Any]] = {}
    odd: list[tuple[str, Root]] = []
    for p, r in roots.items():
        if sendable(p):
            out[p] = {"recursive": r.recursive, "via": r.via}
        else:
            odd.append((p, r))
    for p, r in odd:  # (after the plain ones: none of them loses its key)
        entry: dict[str, Any] = {"recursive": r.recursive, "via": r.via, "path": p}
        wire_fields(entry, ("path",))
        key = entry["path"]
        out[key if key not in out else path_bytes(p).decode("utf-8", "backslashreplace")] = entry
    return out


class _Stale(Exception):
    """A placement that began before the observers were stopped."""


@dataclass(frozen=True)
class Placement:
    """What `ObserverManager.place` did: the observer that took the root (or "missing"),
    its watch, a warning when inotify had no room, and the directory it found at the path
    (GONE: none, so "missing"; None: not looked at)."""

    via: str
    watch: ObservedWatch | None
    warning: str | None
    ident: Ident | None = None

    @property
    def gone(self) -> bool:
        """No directory was at the path (a symlink there included)."""
        return self.ident == GONE


class ObserverManager:
    def __init__(
        self,
        wake: Callable[[Callable[[], None]], None],
        on_ready: Callable[[], None],
        *,
        mode: str = "inotify",
        buffer_max: int = 65536,
        poll_interval: float = 1.0,
        max_polled: int = 16,
        wanted: Wanted | None = None,
        loop: Loop | None = None,
    ) -> None:
        self.wake = wake
        self.on_ready = on_ready
        # The loop that reads the inotify instance (None: nothing reads it; the parts tests
        # that only place watches), and its thread: a push made there needs no wake-up.
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.mode = mode if GUARDED else "polling"
        if mode != self.mode:
            # (pyproject asks for the watchdog whose inotify classes guarded.py drives; an
            # older or newer one installed by hand gets polling, which is correct but slow)
            logger.warning("watchdog {} lacks the inotify internals this watcher drives: "
                           "polling every {} s instead of inotify", _watchdog_version(),
                           poll_interval)
        self.buffer_max = buffer_max
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self.buffer: list[Raw] = []
        self.overflowed = False
        self.problems: list[tuple[str, str]] = []
        self._wake_pending = False
        # Whether the pending wake-up was asked for by the loop, which read the events
        # itself: taking them at once then costs no wake-up (Driving.drain).
        self.woke_here = False
        # When the oldest event in the buffer arrived, and (for the caller of `take`) in
        # what it took: the settle window counts from there, not from the loop's turn.
        self.first_at = 0.0
        self.taken_first_at = 0.0
        self._create_lock = threading.Lock()
        self.generation = 0  # counts stop(): a placement from an older one is stale
        self.handler = _Handler(self)
        self.inotify: InotifyObserver | None = None
        self.polling: BaseObserver | None = None
        self.roots: dict[str, Root] = {}
        # Subtrees of inotify roots that inotify could not watch (ENOSPC), polled instead.
        self.polled: dict[str, Root] = {}
        self.max_polled = max_polled
        self.wanted = wanted
        self.raw_events = 0
        self.dropped = 0
        self.peak = 0
        self.recreated = 0
        # Directories the groups may not watch for their permissions (guarded.py,
        # Group._unreadable): path -> its errno's name, as their reports say (`report`); and
        # those not yet warned of (`take_unwarned`). Made anew with the observers.
        self.unreadable: dict[str, str] = {}
        self._unwarned: dict[str, str] = {}

    # --- watchdog's threads call these ------------------------------------------------

    def push(self, raw: Raw) -> None:
        self.push_many((raw,))

    def push_many(self, raws: list[Raw] | tuple[Raw, ...]) -> None:
        """Hand events over (from watchdog's threads, or from the loop, which read them)."""
        with self._lock:
            self.raw_events += len(raws)
            buf = self.buffer
            room = self.buffer_max - len(buf)
            if room < len(raws):
                self.overflowed = True
                self.dropped += len(raws) - max(room, 0)
                raws = raws[:max(room, 0)]
            if raws:
                if not buf:
                    self.first_at = _monotonic()
                buf += raws
                if len(buf) > self.peak:
                    self.peak = len(buf)
            if self._wake_pending:
                return
            self._wake_pending = True
            loop = self.loop if threading.get_ident() == self._loop_thread else None
            self.woke_here = loop is not None
        if loop is not None:
            loop.call_soon(self.on_ready)  # (read by the loop itself: this turn)
        else:
            self.wake(self.on_ready)

    def report(self, kind: str, detail: str, generation: int | None = None) -> None:
        """A problem a group or emitter reports (`generation`: that of its observer). A
        directory it may not watch (`unreadable:ERRNO`) or keeps no more
        (`unreadable_cleared`) changes `unreadable`; one of an observer that was detached
        since is not its to change. The loop hears of a new one only (its warning)."""
        if kind.startswith("unreadable"):
            with self._lock:
                if generation is not None and generation != self.generation:
                    return
                if kind == "unreadable_cleared":
                    self.unreadable.pop(detail, None)
                    self._unwarned.pop(detail, None)
                    return
                if detail in self.unreadable:
                    return
                code = kind.partition(":")[2]
                self.unreadable[detail] = self._unwarned[detail] = code
            logger.warning("watcher: {} cannot be watched ({}): nothing below it is until it "
                           "can be read", detail, code)
            kind = "unreadable"
        else:
            logger.warning("watcher: {} ({})", kind, detail)
        with self._lock:
            self.problems.append((kind, detail))
            if self._wake_pending:
                return
            self._wake_pending = True
            self.woke_here = False
        self.wake(self.on_ready)

    # --- the actor's loop calls the rest --------------------------------------------------

    def take(self, limit: int | None = None) -> tuple[list[Raw], bool, list[tuple[str, str]]]:
        """What was handed over since the last call: events (the oldest `limit` of them),
        overflow flag, problems. Events left behind keep the wake-up pending: the caller
        takes them on its next turn (`backlog`), and no thread wakes it for them again."""
        with self._lock:
            self.taken_first_at = self.first_at
            if limit is None or len(self.buffer) <= limit:
                buf, self.buffer = self.buffer, []
            else:
                buf, self.buffer = self.buffer[:limit], self.buffer[limit:]
            overflowed, self.overflowed = self.overflowed, False
            problems, self.problems = self.problems, []
            self._wake_pending = bool(self.buffer)
        return buf, overflowed, problems

    @property
    def backlog(self) -> int:
        """Events handed over and not yet taken."""
        return len(self.buffer)

    @property
    def waiting(self) -> bool:
        """Something was handed over and not taken (events, an overflow, a problem)."""
        return bool(self.buffer or self.overflowed or self.problems)

    def _observer(self, via: str, generation: int | None = None) -> BaseObserver:
        """The observer for `via`, started on first use. A placement on a worker passes the
        generation it began in: once `stop` has run since, no observer is made for it."""
        with self._create_lock:
            if generation is not None and generation != self.generation:
                raise _Stale
            if via == "inotify":
                # (assigned once started: a start the thread limit refuses leaves nothing
                # half made, and the next placement tries again)
                if self.inotify is None:
                    made_in = self.generation

                    def report(kind: str, detail: str) -> None:
                        self.report(kind, detail, made_in)

                    observer = InotifyObserver(guarded_emitter(
                        report, self.wanted, self.push, EVENT_KINDS), 1.0)
                    observer.inotify_fd.deliver = self.push_many
                    observer.start()
                    self.inotify = observer
                    self._read_on_loop(observer)
                return self.inotify
            if self.polling is None:
                polling = PollingObserver(timeout=self.poll_interval)
                polling.start()
                self.polling = polling
            return self.polling

    def _read_on_loop(self, observer: InotifyObserver) -> None:
        """Have the loop read `observer`'s inotify instance, from its own thread (a placement
        on a worker makes the observer), unless the observer was detached meanwhile."""
        loop = self.loop
        if loop is None:
            return
        fd = observer.inotify_fd

        def register() -> None:
            if self.inotify is observer:
                loop.add_reader(fd.fd, fd.read_ready, eager=True)

        self.wake(register)

    def place(self, path: str, recursive: bool, via: str, generation: int | None = None,
              base: BaseWalk | None = None) -> Placement:
        """Observe `path` with `via` (falling back to polling when inotify has no room).
        This is the slow part: watchdog walks the whole tree to add its inotify watches.
        It touches only watchdog's observers (which lock for themselves), so it may run
        on a worker thread (passing the `generation` it began in); `placed` records the
        outcome on the loop. `base`, the walk that reads the tree for the index, is the
        walk that places the watches too when inotify takes a recursive root
        (guarded.base_walk); otherwise it is not run here. The directory's identity is
        taken first: one replaced while it is placed differs from it, and the liveness
        check places it again."""
        ident = dir_identity(path)
        if ident == GONE:
            return Placement("missing", None, None, GONE)
        warning = None
        try:
            if via == "inotify":
                try:
                    observer = self._observer("inotify", generation)
                    with base_walk(path, base) as claim:
                        watch = observer.schedule(self.handler, path, recursive=recursive,
                                                  event_filter=EVENT_FILTER)
                except OSError as exc:
                    if exc.errno not in WATCH_LIMIT_ERRNOS:
                        raise
                    warning = f"inotify unavailable for {path} ({os.strerror(exc.errno)})"
                else:
                    if claim is not None:
                        claim.run()
                    return Placement("inotify", watch, None, ident)
            watch = self._observer("polling", generation).schedule(
                self.handler, path, recursive=recursive, event_filter=EVENT_FILTER)
        except _Stale:  # stopped meanwhile (quality 0, a recreate): nothing placed
            return Placement("missing", None, None)
        return Placement("polling", watch, warning, ident)

    def placed(self, root: Root, got: Placement, generation: int) -> str | None:
        """Record a placement made off the loop; returns its warning. One that lost its
        point meanwhile (the root was dropped or moved to polling, the subtree polled no
        more, or the observers were stopped or rebuilt: `recreate` placed them again
        itself) is undone or ignored."""
        if generation != self.generation:
            return None
        if self.polled.get(root.path) is root:  # a polled subtree
            root.via, root.watch = "polling", got.watch
            if got.via == "missing":  # deleted meanwhile: nothing left to poll
                del self.polled[root.path]
            return None
        if self.roots.get(root.path) is not root or root.via != "placing":
            # dropped, or moved to polling whole meanwhile (ENOSPC in too many subtrees)
            self._unschedule(Root(root.path, root.recursive, got.via, got.watch))
            return None
        root.via, root.watch, root.ident = got.via, got.watch, got.ident
        if got.via != "inotify":  # subtrees polled during the placement: polled whole now
            self._drop_polled(root.path)
        return got.warning

    def _unschedule(self, root: Root) -> None:
        obs = self.inotify if root.via == "inotify" else self.polling
        if obs is not None and root.watch is not None:
            try:
                obs.unschedule(root.watch)
            except KeyError:
                pass  # its emitter already stopped itself (the root was deleted)
        root.watch = None

    def lose_root(self, path: str, stopped: bool = False) -> bool:
        """The root `path` is no longer the directory it was placed on (moved away, deleted,
        replaced): stop observing it and mark it missing; the liveness check places it
        again once a directory is at its path (`check`'s `back`). With `stopped`, only
        when its emitter has stopped (its own report: a stale one, from an emitter that a
        placement has replaced since, leaves the new one be). False when nothing changed
        (not observed now: missing already, or being placed)."""
        root = self.roots.get(path)
        if root is None or root.via not in ("inotify", "polling"):
            return False
        if stopped and not self._stopped(root):
            return False
        self._drop_polled(path)
        self._unschedule(root)
        root.via = "missing"
        return True

    def _stopped(self, root: Root) -> bool:
        obs = self.inotify if root.via == "inotify" else self.polling
        if obs is None:
            return False
        # (a watch is its path's: one placed anew has a new emitter, running, for it)
        return any(em.watch == root.watch and not em.should_keep_running()
                   for em in list(obs.emitters))

    def adopt_roots(self, wanted: dict[str, bool]) -> list[Root]:
        """Stop observing what `wanted` no longer has, and register its new roots as
        "placing" (not observed yet, not synced by cookies); returns them, for `place`
        (anywhere) and `placed` (on the loop)."""
        for path in [p for p, r in self.roots.items() if wanted.get(p) != r.recursive]:
            self._drop_polled(path)
            self._unschedule(self.roots.pop(path))
        new = []
        for path, recursive in wanted.items():
            if path not in self.roots:
                root = self.roots[path] = Root(path, recursive, "placing")
                new.append(root)
        return new

    def to_polling(self, path: str) -> Root | None:
        """inotify has no room for the root `path`: stop its inotify watches, and return a
        new Root for it, placing, to be placed with polling off the loop (`place`, then
        `placed`: a polling observer's first snapshot walks the whole tree); None when it
        is polled already. A placement of the old root still under way is undone when it
        ends (`placed`: the root is not the one it placed)."""
        old = self.roots.get(path)
        if old is None or old.via == "polling":
            return None
        self._drop_polled(path)
        self._unschedule(old)
        root = self.roots[path] = Root(path, old.recursive, "placing", target="polling")
        return root

    def poll_subtree(self, path: str) -> tuple[str, str, Root] | None:
        """inotify could not watch the directory `path` (ENOSPC): poll that subtree alone.
        Returns (its root, "subtree", the subtree's Root), or (its root, "root", the root's
        new Root) when the root already has `max_polled` polled subtrees and moves to
        polling as a whole; either is marked placing, for `place` off the loop and `placed`
        on it. None when there is nothing new to poll (already polled, or not below an
        inotify root)."""
        rp = self.root_of(path)
        root = self.roots.get(rp) if rp is not None else None
        # A root still being placed reports ENOSPC from inside its placement: inotify. One
        # moved to polling whole has nothing left to poll apart (its old placement's late
        # reports would poll subtrees under it, and move it to polling again and again).
        if rp is None or root is None or root.via not in ("inotify", "placing") \
                or root.target == "polling":
            return None
        if any(path == p or path.startswith(p + "/") for p in self.polled):
            return None
        mine = [p for p in self.polled if self.root_of(p) == rp]
        if path == rp or len(mine) >= self.max_polled:
            whole = self.to_polling(rp)
            return None if whole is None else (rp, "root", whole)
        for p in [p for p in mine if p.startswith(path + "/")]:
            self._unschedule(self.polled.pop(p))
        sub = self.polled[path] = Root(path, True, "placing")
        return rp, "subtree", sub

    def _drop_polled(self, root_path: str) -> None:
        """Stop polling the subtrees of `root_path` (it goes, or is polled whole)."""
        for p in [p for p in self.polled if self.root_of(p) == root_path]:
            self._unschedule(self.polled.pop(p))

    def sync_points(self) -> dict[str, str]:
        """Where fs.sync writes its cookies: every root and every polled subtree (path ->
        "inotify" | "polling" | "missing")."""
        out = {p: "missing" if r.via == "placing" else r.via for p, r in self.roots.items()}
        out.update((p, "missing" if r.via == "placing" else "polling")
                   for p, r in self.polled.items())
        return out

    def refresh(self) -> int:
        """After a watch was added: place the inotify watches it needs that the others'
        excludes had left out (`wanted` changed); returns how many were added."""
        return self._each_group("add_missing")

    def retry_unreadable(self) -> int:
        """Have each inotify group try again to watch the directories it may not read
        (the back-up for a chmod whose IN_ATTRIB was not seen): off the loop, as a
        directory's watches and its read may take long. Returns how many it watched."""
        return self._each_group("retry_unreadable")

    def _each_group(self, method: str) -> int:
        """The sum of what `method` of each guarded inotify group answers (0 without one)."""
        obs = self.inotify
        if obs is None or not GUARDED:
            return 0
        total = 0
        for em in list(obs.emitters):
            group = getattr(em, "_inotify", None)
            if group is not None and hasattr(group, method):
                total += getattr(group, method)()
        return total

    def unreadable_paths(self) -> list[str]:
        """The directories no watch is placed on for their permissions, sorted."""
        with self._lock:
            return sorted(self.unreadable)

    def take_unwarned(self, under: list[str] | None = None) -> list[tuple[str, str]]:
        """The unreadable directories (path, errno name) not warned of yet, or every one
        below `under` (a walk's roots: each walk says what it could not read), each marked
        warned."""
        with self._lock:
            if under is None:
                out = sorted(self._unwarned.items())
            else:
                tops = [p.rstrip("/") + "/" for p in under]
                out = sorted((p, c) for p, c in self.unreadable.items()
                             if any(p.startswith(t) for t in tops))
            for p, _code in out:
                self._unwarned.pop(p, None)
            return out

    def root_of(self, path: str) -> str | None:
        best = None
        for p in self.roots:
            if (path == p or path.startswith(p.rstrip("/") + "/")) and (
                    best is None or len(p) > len(best)):
                best = p
        return best

    def check(self, look: Callable[[str], Ident | None] = dir_identity
              ) -> dict[str, list[Any]]:
        """The liveness check: threads that died while their root is still the directory
        they watched (`dead`), roots that are not (`missing`: a root deleted or moved away
        stops its own emitter, which is not a failure; and `moved`, those of them whose
        emitter still ran, the tree having left unreported: a directory above the root
        renamed, say) and missing roots whose path holds a directory again (`back`: Root
        objects, marked placing, for the caller to `place` off the loop and record with
        `placed`). `look` (dir_identity) may answer None, "not known yet" (a path on a slow
        file system, whose probe runs on a worker): nothing is decided about that path this
        time."""
        out: dict[str, list[Any]] = {"dead": [], "missing": [], "moved": [], "back": []}
        for name, obs in (("inotify", self.inotify), ("polling", self.polling)):
            if obs is None:
                continue
            if not obs.is_alive():
                out["dead"].append(f"{name} dispatcher")
            if name == "inotify" and not obs.inotify_fd.is_alive():  # type: ignore[union-attr]
                out["dead"].append("inotify lane")
            for em in list(obs.emitters):
                if not em.is_alive():
                    self._check_stopped(name, em.watch.path, look, out)
        for root in list(self.roots.values()):
            if root.via in ("inotify", "polling") and root.ident is not None:
                there = look(root.path)
                if there is not None and there != root.ident and self.lose_root(root.path):
                    out["missing"].append(root.path)
                    out["moved"].append(root.path)
            elif root.via == "missing" and root.path not in out["missing"]:
                there = look(root.path)
                if there is not None and there != GONE:
                    root.via = "placing"
                    out["back"].append(root)
        return out

    def _check_stopped(self, name: str, path: str, look: Callable[[str], Ident | None],
                       out: dict[str, list[Any]]) -> None:
        """An emitter whose thread ended: its root gone or replaced (missing), a polled
        subtree gone (forgotten), else a thread that died (dead)."""
        there = look(path)
        if there is None:
            return
        sub = self.polled.get(path) if name == "polling" else None
        if sub is not None and there == GONE:
            # A polled subtree was deleted (its emitter stops itself); inotify on the root
            # reported that, and watches it anew if it comes back.
            self._unschedule(self.polled.pop(sub.path))
            return
        root = self.roots.get(path)
        if root is not None and there != root.ident and self.lose_root(path):
            out["missing"].append(path)
        else:
            out["dead"].append(f"{name} emitter {path}")

    def detach(self) -> list[Any]:
        """Take the observers out, at once and on the loop: a placement under way makes no
        new one after this (the generation moves on) and no root is observed any more.
        `halt` then stops their threads, anywhere: closing an inotify instance of 100,000
        watches and joining its threads takes longer than a loop turn may."""
        with self._create_lock:
            with self._lock:  # (the new observers' groups report theirs)
                self.generation += 1
                self.unreadable.clear()
                self._unwarned.clear()
            observers = [o for o in (self.inotify, self.polling) if o is not None]
            if self.inotify is not None and self.loop is not None:
                # (before `halt` closes it, anywhere: the loop must not poll a closed fd,
                # or a new one given its number)
                self.loop.remove_reader(self.inotify.inotify_fd.fd)
            self.inotify = self.polling = None
        for root in (*self.roots.values(), *self.polled.values()):
            root.watch = None
        return observers

    @staticmethod
    def halt(observers: list[Any]) -> None:
        for obs in observers:
            try:
                obs.stop()
                obs.join(2.0)
            except Exception:
                logger.exception("watcher: stopping an observer failed")

    def stop(self) -> None:
        self.halt(self.detach())

    def begin_recreate(self) -> Recreation:
        """New observers for the same roots (polling roots and polled subtrees stay on
        polling), in three parts like a placement: this one on the loop detaches the old
        observers and marks every root placing; `Recreation.run` halts the old ones and
        places anew off the loop (watchdog walks every tree again); `Recreation.record`
        takes the outcome on the loop."""
        self.recreated += 1
        return self.begin_placing()

    def begin_placing(self) -> Recreation:
        """`begin_recreate`, not counted: how the roots are first placed at the start, off
        the loop (a root on a stalled mount must not hold the start: the walker waits for
        it instead)."""
        vias = {p: r.via for p, r in self.roots.items()}
        old = self.detach()
        todo = []
        for path, root in self.roots.items():
            root.via = "placing"
            todo.append((root, root.target or (
                "polling" if vias[path] == "polling" else self.mode)))
        todo += [(sub, "polling") for sub in self.polled.values()]
        return Recreation(self, old, todo, self.generation)

    def inotify_watches(self) -> int | None:
        """Watches this process holds, to compare with the limit: the instance's own table
        of them (/proc/self/fdinfo lists each, a line of about 100 bytes: 10 MB to read and
        count on the loop for 100,000 directories)."""
        table = getattr(getattr(self.inotify, "inotify_fd", None), "_watch_for_wd", None)
        return None if table is None else len(table)

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "guarded": GUARDED,
            "roots": wire_roots(self.roots),
            "polled_subtrees": wire_paths(sorted(self.polled)),
            "polled_placing": wire_paths(sorted(p for p, r in self.polled.items()
                                                if r.via == "placing")),
            "raw_events": self.raw_events, "buffer_max": self.buffer_max,
            "buffer_peak": self.peak, "dropped_to_resync": self.dropped,
            "recreated": self.recreated, "inotify_watches": self.inotify_watches(),
            "unreadable": wire_paths(self.unreadable_paths()),
            **self._dispatched(),
        }

    def _dispatched(self) -> dict[str, int]:
        """Where inotify events were dispatched: on the loop, or on the lane thread."""
        fd = getattr(self.inotify, "inotify_fd", None)
        return {"inotify_on_loop": getattr(fd, "on_loop", 0),
                "inotify_on_lane": getattr(fd, "on_lane", 0),
                "inotify_lane_dropped": getattr(fd, "lane_dropped", 0)}


class Recreation:
    """A recreate under way (ObserverManager.begin_recreate)."""

    def __init__(self, obs: ObserverManager, old: list[Any], todo: list[tuple[Root, str]],
                 generation: int) -> None:
        self.obs, self.old, self.todo, self.generation = obs, old, todo, generation
        self.placements: list[Placement | OSError] = []
        self.missing: list[str] = []  # roots `record` found no directory at

    def run(self, base_for: Callable[[str, bool], BaseWalk | None] | None = None) -> None:
        """Off the loop: the old observers stopped, then every root and polled subtree
        placed anew; `base_for(path, recursive)` gives the walk that places a root's
        watches as it reads the tree (ObserverManager.place's `base`), or None."""
        self.obs.halt(self.old)
        for root, via in self.todo:
            base = base_for(root.path, root.recursive) if base_for is not None else None
            try:
                self.placements.append(self.obs.place(root.path, root.recursive, via,
                                                      self.generation, base))
            except OSError as exc:
                self.placements.append(exc)

    def record(self) -> list[str]:
        """On the loop: what `run` placed, unless the observers were rebuilt meanwhile;
        returns the warnings of roots that fell back to polling."""
        obs = self.obs
        warnings = []
        for (root, _), got in zip(self.todo, self.placements, strict=True):
            if isinstance(got, OSError):
                logger.error("watcher: observing {} again failed: {}", root.path, got)
                got = Placement("missing", None, None)
            warning = obs.placed(root, got, self.generation)
            if warning:
                warnings.append(warning)
            if got.gone and root.via == "missing" and obs.roots.get(root.path) is root:
                self.missing.append(root.path)
        return warnings
