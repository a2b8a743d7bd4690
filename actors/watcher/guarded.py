"""watchdog's inotify classes, subclassed to report what they would swallow.

watchdog 7.x logs an inotify queue overflow and nothing else, and swallows a failed watch on
a subdirectory (ENOSPC: the user's watch limit). The group here reports both (`report(kind,
path)`, kinds "overflow" and "enospc"); the observer manager (moorage.actors.watcher.observer) turns
them into resyncs and a polled subtree. A root's own directory moved away or deleted stops
its emitter, which reports it ("root_moved", "root_deleted"): the manager marks the root
missing at once. It also places no watch in, and does not even walk,
a directory `wanted` says no watch needs (inside an excluded subtree), and `add_missing`
watches the ones a new watch needs. A directory it may not read (EACCES, EPERM) gets no
watch and nothing below it is read: the group keeps it and reports it ("unreadable:EACCES",
path; "unreadable_cleared" once it keeps it no more), and watches it, what it holds reported
created, on the IN_ATTRIB of a chmod or chown, or when the manager asks again
(`retry_unreadable`). A new root's watches below it are placed by the walk
that reads its tree for the index (`base_walk`), after watchdog's schedule has returned. The
inotify instance is read by the actor's loop (`LoopInotifyFD`); its lane thread, which takes
what the loop must not, is kept reachable for the liveness check. Events go straight to the
observer manager (`push`), not through the observer's queue and dispatcher thread.

Seam: `add_watch_fault(path: bytes)`, when set, runs before each inotify watch is added and
may raise (tests set it in the test process before forking the actor, to inject ENOSPC).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat as stat_mod
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any, Protocol

from watchdog.events import FileSystemEvent
from watchdog.observers.api import BaseObserver

from moorage.actors.watcher.movequeue import MoveQueue

try:  # the guarded inotify classes depend on watchdog 7.x internals
    from watchdog.observers.inotify import InotifyEmitter, InotifyWatchGroup
    from watchdog.observers.inotify_c import InotifyConstants as _C
    from watchdog.observers.inotify_c import InotifyEvent, InotifyFD
    from watchdog.observers.inotify_move_event_grouper import (
        InotifyMoveEventGrouper,
        PathedInotifyEvent,
    )
    try:  # watchdog 7.1.1's node of a watched directory (NODE_TREE, below)
        from watchdog.observers.inotify import DirNode
    except ImportError:  # pragma: no cover - 7.1.0
        DirNode = None
    GUARDED = hasattr(InotifyWatchGroup, "_add_callback") and hasattr(
        InotifyWatchGroup, "on_queue_overflow") and hasattr(
        InotifyWatchGroup, "_resolve_path") and hasattr(InotifyFD, "_parse_event_buffer") \
        and hasattr(InotifyMoveEventGrouper, "_group_moved_to_event") and hasattr(
        InotifyMoveEventGrouper, "get_queued_moved_from_event")
    # How a group knows its watched directories: watchdog 7.1.1 keeps a tree of nodes
    # (`_insert_node`, `_find_node_by_path`), 7.1.0 two dicts. A watch descriptor must be
    # recorded the group's way, or its events name no path and are dropped.
    NODE_TREE = hasattr(InotifyWatchGroup, "_insert_node")
except ImportError:  # pragma: no cover - not Linux, or another watchdog layout
    GUARDED = NODE_TREE = False

WATCH_LIMIT_ERRNOS = (errno.ENOSPC, errno.ENOMEM, errno.EMFILE)
# A directory created in a recursive watch is taken on the loop when, once watched, it and
# the directories in it hold at most this many entries (Group.created_here); else the lane.
CREATED_SCAN_MAX = 256
# Directories a group could not watch because their path had gone (Group._unplaced) are
# kept up to this many; one more, and those under a directory removed since are dropped;
# if most are still kept then, all are dropped and the watcher resyncs anew.
UNPLACED_MAX = 4096
# Directories a group could not watch for their permissions (EACCES, EPERM: Group._unreadable),
# kept to be watched once they can be read, up to this many; one past it is reported all the
# same (listed unsynced, warned about) but not tried again until the observers are made anew.
UNREADABLE_MAX = 4096
DENIED_ERRNOS = (errno.EACCES, errno.EPERM)
# Where a directory moved or moved in stands once its group has tried to watch it
# (Group.place_here): watched; OUT, no watch will follow it there (no watch needs it, or it
# may not be read), so what it held left the watches; or LOST (gone again, the group
# stopped, no watch left), which the events that follow settle.
WATCHED, OUT, LOST = "watched", "out", "lost"
# Events waiting for the inotify lane at most (LoopInotifyFD): about 15 MB of them.
LANE_MAX = 65536


def _move_keys(element: object) -> tuple[tuple[str, object], ...]:
    """What watchdog's grouper looks for in its queue, as MoveQueue keys: an unpaired
    IN_MOVED_FROM by its cookie, a directory's by its path ("from"), a directory moved in or
    created by its path ("to"; a pair is a plain tuple of two PathedInotifyEvents)."""
    ev = getattr(element, "ev", None)
    if ev is None:
        to = element[1]  # type: ignore[index]
        return (("to", os.path.normpath(to.path)),) if to.ev.is_directory else ()
    if ev.is_moved_from:
        if ev.is_directory:
            return ("cookie", ev.cookie), ("from", os.path.normpath(element.path))  # type: ignore[attr-defined]
        return (("cookie", ev.cookie),)
    if ev.is_directory and (ev.is_moved_to or ev.is_create):
        return (("to", os.path.normpath(element.path)),)  # type: ignore[attr-defined]
    return ()


if GUARDED:
    _IN_ATTRIB, _IN_MODIFY, _IN_DELETE, _IN_CREATE, _IN_ISDIR = (
        int(_C.IN_ATTRIB), int(_C.IN_MODIFY), int(_C.IN_DELETE), int(_C.IN_CREATE),
        int(_C.IN_ISDIR))
    # Anything moved, and a watched directory itself deleted or moved: watchdog's path.
    _SLOW = int(_C.IN_MOVED_FROM | _C.IN_MOVED_TO | _C.IN_DELETE_SELF | _C.IN_MOVE_SELF)
    _FILE_MOVED_IN = int(_C.IN_MOVED_TO)
    _IN_IGNORED, _IN_DELETE_SELF = int(_C.IN_IGNORED), int(_C.IN_DELETE_SELF)
    _IN_MOVED_FROM = int(_C.IN_MOVED_FROM)
    _WATCH_GONE = _IN_IGNORED | _IN_DELETE_SELF
    # Asked for on a root's own watch alone (Group._place): a directory below the root moved
    # says so in its parent's IN_MOVED_FROM already, and its IN_MOVE_SELF would only send
    # each such move down watchdog's slower path.
    _IN_MOVE_SELF = int(_C.IN_MOVE_SELF)
    # The file system the root's directory is on unmounted (the root a mount point): its
    # tree left as a move's does, and one mounted there again may have the same device and
    # inode numbers (a tmpfs's), which the liveness check could not tell from the old.
    _IN_UNMOUNT = int(_C.IN_UNMOUNT)


def plain_kind(mask: int) -> str:
    """The event type of a plain inotify event (watchdog's order of precedence), or "" for
    one that takes watchdog's own path (a move, a watched directory gone, anything else).

    A file moved in is plain too ("created", as watchdog makes of an IN_MOVED_TO it cannot
    pair) where the caller knows nothing waits in its group's grouper: the IN_MOVED_FROM of
    a move within the group comes first and waits there half a second for its pair, so with
    none waiting this one has no pair. Files renamed in by the thousand then take the
    loop's path, not the lane's and the emitter's. A directory moved in still takes
    watchdog's (its watches are placed there)."""
    if mask & _SLOW:
        return "created" if mask & (_SLOW | _IN_ISDIR) == _FILE_MOVED_IN else ""
    if mask & _IN_ATTRIB:
        return "attrib"
    if mask & _IN_MODIFY:
        return "modified"
    if mask & _IN_DELETE:
        return "deleted"
    if mask & _IN_CREATE:
        return "created"
    return ""


def walked_dir(mask: int, kind: str, recursive: bool) -> bool:
    """A plain event that needs its group's care: a directory created in a recursive watch
    (its watch placed, what it holds reported) or a directory deleted (the group forgets
    it): Group.created_here and deleted_here on the loop, else watchdog's path."""
    return bool(mask & _IN_ISDIR) and (kind == "deleted" or (kind == "created" and recursive))


class _Grouped:
    """A watch group of `guarded_emitter`'s, whose plain events the loop may hand over."""


Report = Callable[[str, str], None]
Wanted = Callable[[str], bool]  # does this directory need an inotify watch?
Push = Callable[[tuple[str, str, str, bool]], None]
# InotifyFD.add_callback's signature: (path, mask, callback, callback id) -> watch descriptor
AddWatch = Callable[[bytes, int, object, object], int]

add_watch_fault: Callable[[bytes], None] | None = None

# A walk that reads a new root's tree and calls its `on_dir` for each directory before
# reading it (snapshot.walk); the root's group places its watches with it.
BaseWalk = Callable[[Callable[[str], bool]], None]
_placing = threading.local()  # .claim: the Claim of the root this thread is placing


class Claim:
    """A base walk offered to the group of the root being placed (`base_walk`), and the
    group that took it."""

    def __init__(self, root: bytes, walk: BaseWalk) -> None:
        self.root, self.walk = root, walk
        self.group: _Walker | None = None

    def run(self) -> bool:
        """The walk, by the group that took it, now that watchdog's locks are released;
        False when no group took it (not inotify, or not recursive: the caller walks)."""
        group, self.group = self.group, None
        return group is not None and group.walk_base(self.walk)


class _Walker(Protocol):  # a group that takes a Claim (Group, in guarded_emitter)
    def walk_base(self, walk: BaseWalk) -> bool: ...


@contextmanager
def base_walk(root: str, walk: BaseWalk | None) -> Iterator[Claim | None]:
    """While this thread places `root` (ObserverManager.place: watchdog creates the root's
    group on the thread that schedules it, holding the observer's lock and the group's),
    the group places only the root's own watch and takes `walk`; `Claim.run`, after the
    schedule, walks the tree once, each directory watched (under the group's lock, one at a
    time) before it is read: not a walk for the watches and a second one to read it, and
    no lock held for the length of the tree."""
    claim = Claim(os.fsencode(root), walk) if walk is not None else None
    _placing.claim = claim
    try:
        yield claim
    finally:
        _placing.claim = None


def _claim_base(path: bytes, group: _Walker) -> bool:
    claim = getattr(_placing, "claim", None)
    if claim is None or claim.root != path:
        return False
    _placing.claim = None  # once: a directory created later is watchdog's own walk
    claim.group = group
    return True


def guarded_emitter(report: Report, wanted: Wanted | None = None,
                    push: Push | None = None, kinds: tuple[type, ...] = ()) -> type:
    """An InotifyEmitter whose watch group reports what watchdog would swallow, and places
    no watch in (nor walks) a directory `wanted` says no watch needs.

    With `push`, the emitter hands each event of `kinds` to it as a raw tuple (event type,
    src, dest, is_dir) from its own thread instead of queueing an event object for the
    observer's dispatcher thread: one thread hop and one locked queue less per event (a
    10,000-file burst spent a sixth of its CPU there). A plain create, modify, attrib or
    delete goes out without even becoming an event object (and without the parent's
    "directory modified" that the watcher drops); moves, a root deleted and the rest take
    watchdog's own path.

    And while nothing of its group waits in watchdog's move grouper or in the emitter's
    hands (`_pending`, counted by the grouper and by the emitter), a plain event goes out
    straight from whoever read it (the loop, LoopInotifyFD), no thread hop at all: nothing
    older can be overtaken then. A directory created in a recursive watch takes watchdog's
    path (it places the new directory's watches and reports what it already holds)."""
    def hand_over(raw: tuple[str, str, str, bool]) -> None:
        try:
            push(raw)  # type: ignore[misc]
        except Exception as exc:  # never let it kill the emitter
            report("handler_error", f"{type(exc).__name__}: {exc}")

    def skip(path: bytes) -> bool:
        return wanted is not None and not wanted(os.fsdecode(path))

    class Grouper(InotifyMoveEventGrouper):  # type: ignore[misc,valid-type]
        """watchdog's grouper, counting what it holds for its group, in a queue that finds
        a move's IN_MOVED_FROM by its cookie and a directory's pending move or creation by
        its path (movequeue.py: watchdog's walks the queue for each)."""

        def __init__(self, group: Group) -> None:
            super().__init__()
            self._queue = MoveQueue(self.delay, _move_keys)
            self.group = group

        def put_event(self, event: object) -> None:
            with self.group._count_lock:
                self.group._pending += 1
            super().put_event(event)

        def _group_moved_to_event(self, to_event: object) -> object:
            from_event = self._queue.take(("cookie", to_event.ev.cookie))  # type: ignore[attr-defined]
            return to_event if from_event is None else (from_event, to_event)

        def purge_events_for_wds(self, wds: set[int]) -> None:
            """watchdog's (a removed subtree's events dropped), counting what it drops: a
            count left behind would send every later event of the group to the lane."""
            if not wds:
                return

            def matching(item: Any) -> bool:  # (watchdog's rule)
                if isinstance(item, PathedInotifyEvent):
                    return item.ev.wd in wds
                return item[1].ev.wd in wds  # a move pair: by its destination

            n = 0
            while (item := self._queue.remove(matching)) is not None:
                n += 1 if isinstance(item, PathedInotifyEvent) else 2
            if n:
                self.group.handled(n)

        def get_queued_moved_from_event(self, cookie: int) -> object:
            return self._queue.first(("cookie", cookie))

        def has_pending_moved_from(self, path: bytes) -> bool:
            return self._queue.first(("from", os.path.normpath(path))) is not None

        def has_pending_move_to_or_create(self, path: bytes) -> bool:
            return self._queue.first(("to", os.path.normpath(path))) is not None

    class Group(InotifyWatchGroup, _Grouped):  # type: ignore[misc,valid-type]
        def __post_init__(self) -> None:
            self._pending = 0  # events put into the grouper and not yet handed over
            self._count_lock = threading.Lock()
            # directories not watched: (id of its directory's node, name) -> that node
            self._unplaced: dict[tuple[int, bytes], DirNode] = {}
            # ... and those it may not read, keyed alike: -> (that node, the path reported);
            # their names by the id of their directory's node (an IN_ATTRIB looks up the
            # ones it may concern, `_unreadable_keys`, where a scan of them all would cost
            # each directory's event of an archive unpacked 4,096 looks); and how many of
            # them are reported at each path (one is cleared when none is left there)
            self._unreadable: dict[tuple[int, bytes], tuple[DirNode, str]] = {}
            self._unreadable_in: dict[int, set[bytes]] = {}
            self._unreadable_shown: dict[str, int] = {}
            if push is not None:
                self._move_event_grouper = Grouper(self)
            # The callbacks of each of its watches that it alone holds (LeanWatch): one map,
            # shared (its cycle back to the group goes with the group). Made before
            # watchdog's __post_init__, whose activation places the root's watches (the
            # whole tree when no walk of ours claims it): watchdog's callback id and
            # callback, which it sets there, are the group's id and the group.
            self.one_callback = {id(self): self}
            super().__post_init__()

        def handled(self, n: int) -> None:
            """The emitter handed over `n` events it took from the grouper (or the grouper
            dropped them). Below zero, the loop may have overtaken events still on their
            way: reported, so the watcher resyncs."""
            with self._count_lock:
                left = self._pending - n
                self._pending = max(0, left)
            if left < 0:
                report("handler_error", f"the move grouper's count fell below zero ({left})")

        def on_event(self, event: object) -> None:
            if self._unreadable and event.mask & _IN_ISDIR and \
                    self._unreadable_event(event):  # type: ignore[attr-defined]
                return
            if push is not None:
                mask = event.mask  # type: ignore[attr-defined]
                kind = plain_kind(mask)
                if kind and not walked_dir(mask, kind, self.is_recursive):
                    with self._lock:
                        if not self.is_active:
                            return
                        if self._pending == 0:  # (read without its lock: only the thread
                            # that dispatches raises it, and a stale non-zero just takes
                            # the slow path)
                            src = self._build_event_source_path(event)
                            if src is not None:
                                hand_over((kind, os.fsdecode(src), "", bool(mask & _IN_ISDIR)))
                            return
            if not self._moved_in_met(event):
                super().on_event(event)
            if self._unplaced and event.is_moved_to and event.is_directory:  # type: ignore[attr-defined]
                self._place_again(event)

        def _moved_in_met(self, event: Any) -> bool:
            """A directory moved in whose IN_MOVED_FROM is not (or no longer) in the group,
            met at its destination already (`_met_there`): queued as watchdog queues it,
            without its removal of that node. False: watchdog's path."""
            if not (NODE_TREE and self.is_recursive and event.is_moved_to
                    and event.is_directory):
                return False
            with self._lock:
                if not self.is_active or self._source_for_move(event.cookie) is not None:
                    return False
                dest = self._build_event_source_path(event)
                if dest is None or not self._met_there(dest):
                    return False
                self._move_event_grouper.put_event(PathedInotifyEvent(event, dest))
                return True

        def _met_there(self, path: bytes) -> bool:
            """The node at `path` is the directory there: a walk that read the disk ahead
            of the events met it there (_rehang), as the watch the directory at `path` has
            now says (one inotify_add_watch, which gives the inode's descriptor), or it has
            moved on again (its next move's events take the node along). watchdog took such
            a node for one a move displaced: it removed it and every watch below it,
            dropped the events queued for them (a move's pair among them, whose source then
            stayed in the index) and watched the tree anew."""
            node = self._find_node_by_path(path)
            if node is None or node is self._root or node.wd == -1:
                return False
            try:
                wd = self._inotify_fd.add_callback(path, self.event_mask, self._callback,
                                                   self._id)
            except OSError as exc:
                return exc.errno in (errno.ENOENT, errno.ENOTDIR)
            return bool(wd == node.wd)

        def _unplaced_at(self, path: bytes) -> None:
            """A directory whose watch could not be placed because its path had gone: it
            was removed, or moved, or a directory above it was, after the event that named
            it and before the event was taken (the group's tree of paths follows the
            kernel's events, which the lane may take a while after they were made). Its
            own removal or move comes as an event (a move's destination is watched and
            walked then); the move of a directory above it would bring nothing for it, so
            it is kept, by the node of its directory (which moves with the tree, where a
            path would not), for `_place_again`."""
            if not NODE_TREE:
                return
            norm = os.path.normpath(path)
            parent = self._find_node_by_path(os.path.dirname(norm))
            if parent is None:  # (its directory is not watched either: its walk covers it)
                return
            self._unplaced[(id(parent), os.path.basename(norm))] = parent
            if len(self._unplaced) <= UNPLACED_MAX:
                return
            # Those whose directory has left the tree since (removed: no move can bring
            # them back) go first; still mostly kept after that, they are all dropped and
            # reported (so that the pruning runs once per UNPLACED_MAX / 8 kept, at most).
            for key, node in list(self._unplaced.items()):
                if self._reconstruct_path_iterative(node) is None:  # (not in the tree)
                    del self._unplaced[key]
            if len(self._unplaced) > UNPLACED_MAX - UNPLACED_MAX // 8:
                self._unplaced.clear()
                report("unplaced", f"more than {UNPLACED_MAX} directories could not be "
                       "watched where they were named: watched anew")

        def _place_again(self, event: object) -> None:
            """A directory moved (the event is its IN_MOVED_TO, taken): what could not be
            watched below it is watched where it is now, with what is under it (a
            directory watched already, moved into it meanwhile, has its node moved there:
            _rehang). What it holds is reported by the move's own walk of its destination
            (the sub-moved events); where that path has gone again, its watch fails and is
            kept again, for the next move above it."""
            with self._lock:
                if not self.is_active:
                    return
                dest = self._build_event_source_path(event)
                moved = self._find_node_by_path(dest) if dest is not None else None
                if moved is None:
                    return
                for key, parent in list(self._unplaced.items()):
                    curr = parent
                    while curr is not None and curr is not moved:
                        curr = curr.parent
                    if curr is None:
                        continue
                    del self._unplaced[key]
                    here = self._reconstruct_path_iterative(parent)
                    if here is not None:
                        self._add_all_callbacks(os.path.join(here, key[1]))

        def _unreadable_at(self, path: bytes, err: int) -> None:
            """A directory whose watch its permissions refused (EACCES, EPERM): nothing
            below it is watched or read, and no event of its own would have it tried again.
            Kept by the node of its directory and its name (as `_unplaced`: its parent's
            IN_ATTRIB names it so), and reported once (the manager lists it unsynced and
            warns of it), for `_unreadable_event` and `retry_unreadable` to watch it."""
            if not NODE_TREE:
                return
            norm = os.path.normpath(path)
            parent = self._find_node_by_path(os.path.dirname(norm))
            if parent is None:  # (its directory is not watched either)
                return
            key = (id(parent), os.path.basename(norm))
            shown = os.fsdecode(norm)
            kept = self._unreadable.get(key)
            if kept is not None:
                if kept[1] == shown:
                    return
                # (a directory above it was renamed: its node, and so the key, went along,
                # and the walk of the move's destination met it here; the path reported
                # was the old one, which names nothing now)
                self._clear_unreadable(key)
            if len(self._unreadable) < UNREADABLE_MAX:
                self._unreadable[key] = (parent, shown)
                self._unreadable_in.setdefault(key[0], set()).add(key[1])
                self._unreadable_shown[shown] = self._unreadable_shown.get(shown, 0) + 1
            report(f"unreadable:{errno.errorcode.get(err, str(err))}", shown)

        def _clear_unreadable(self, key: tuple[int, bytes]) -> None:
            """`key` is kept no more (watched now, gone, or no watch needs it), if it was."""
            kept = self._unreadable.pop(key, None)
            if kept is None:
                return
            names = self._unreadable_in[key[0]]
            names.discard(key[1])
            if not names:
                del self._unreadable_in[key[0]]
            shown = kept[1]
            left = self._unreadable_shown.pop(shown) - 1
            if left:
                self._unreadable_shown[shown] = left
            else:
                report("unreadable_cleared", shown)

        def _placed_for(self, node: DirNode | None) -> None:
            """A watch stands for the directory of `node` now (placed, or there already, or
            moved there with its node): it is kept unreadable no more, if it was (a
            directory renamed over one it may not read: `mv new vol`), nor is its content
            told created again by `retry_unreadable`. The group's lock held."""
            if self._unreadable and node is not None and node.parent is not None:
                self._clear_unreadable((id(node.parent), node.name))

        def _remove_node_and_watches(self, node: DirNode, path: bytes) -> list[bytes]:
            """watchdog's (the node of a directory moved out of the watch, renamed to a name
            no watch needs, or replaced, taken out of the tree with those below it), and
            the directories kept unreadable in any of them kept no more: no path leads to
            them, nor will an event of this group."""
            if self._unreadable_in and node is not self._root:
                stack = [node]
                while stack:
                    curr = stack.pop()
                    for name in list(self._unreadable_in.get(id(curr), ())):
                        self._clear_unreadable((id(curr), name))
                    stack.extend(curr.children.values())
            return super()._remove_node_and_watches(node, path)

        def _unreadable_keys(self, wd: int, name: bytes) -> list[tuple[int, bytes]]:
            """The directories kept unreadable that a change of the attributes of `name` in
            the directory `wd` watches (of that directory itself: no name) may have made
            readable: the one it names, and those right inside it (their path goes
            through it). The group's lock held."""
            node = self._nodes_by_wd.get(wd)
            if node is None:
                return []
            kept = self._unreadable_in
            if not name:
                return [(id(node), n) for n in kept.get(id(node), ())]
            keys = [(id(node), name)] if name in kept.get(id(node), ()) else []
            inner = node.children.get(name)
            if inner is not None and id(inner) in kept:
                keys += [(id(inner), n) for n in kept[id(inner)]]
            return keys

        def _unreadable_event(self, event: Any) -> bool:
            """A directory event while directories are kept unreadable. An IN_ATTRIB that
            lets one be read (`_watch_unreadable`) is queued as watchdog queues a directory
            created, with what the directories now watched hold as created after it: True,
            taken. One deleted or moved away is kept no more (where it went, its watch is
            tried again). False: the event goes its usual way."""
            mask = event.mask
            with self._lock:
                if not self.is_active or not self._unreadable:
                    return False
                if mask & _IN_ATTRIB and not mask & _SLOW:
                    keys = self._unreadable_keys(event.wd, event.name)
                    src = self._build_event_source_path(event) if keys else None
                    if src is None:
                        return False
                    placed = [p for k in keys if k in self._unreadable
                              and (p := self._watch_unreadable(k)) is not None]
                    if not placed:
                        return False
                    self._move_event_grouper.put_event(PathedInotifyEvent(event, src))
                    self._simulate(placed)
                    return True
                if mask & (_IN_DELETE | _IN_MOVED_FROM) and event.name:
                    node = self._nodes_by_wd.get(event.wd)
                    key = (id(node), event.name)
                    if node is not None and key in self._unreadable:
                        self._clear_unreadable(key)
                return False

        def _watch_unreadable(self, key: tuple[int, bytes]) -> bytes | None:
            """Watch the directory kept unreadable as `key`, and what is below it: its path
            once watched (kept no more), or None (still unreadable, and kept; or gone,
            not a directory, or no watch needs it: kept no more). The group's lock held."""
            parent, _shown = self._unreadable[key]
            here = self._reconstruct_path_iterative(parent)
            path = os.path.join(here, key[1]) if here is not None else None
            try:
                is_dir = path is not None and stat_mod.S_ISDIR(os.lstat(path).st_mode)
            except OSError:
                is_dir = False
            if path is None or not is_dir or skip(path) or self._watched(path):
                self._clear_unreadable(key)  # (watched already: who placed it told what
                return None  # it holds)
            self._add_all_callbacks(path)  # (refused again: kept, not reported again)
            if not self._watched(path):
                return None
            self._clear_unreadable(key)  # (`_placed_for` did, unless its node was there)
            return path

        def _simulate(self, placed: list[bytes]) -> None:
            """What the directories `placed` (watched just now) hold, queued as watchdog
            queues a new directory's contents (created), behind what is queued already. The
            group's lock held."""
            put = self._move_event_grouper.put_event
            for path in placed:
                for sub in self._recursive_simulate(path):
                    sub_path = self._build_event_source_path(sub)
                    if sub_path is not None:
                        put(PathedInotifyEvent(sub, sub_path))

        def retry_unreadable(self) -> int:
            """Try again to watch every directory kept unreadable (the manager's back-up for
            an IN_ATTRIB not seen: a permission given back while its events were lost);
            what is below those watched now is reported created. Returns how many."""
            with self._lock:
                if not self.is_active or not self._unreadable:
                    return 0
                placed = [p for k in list(self._unreadable)
                          if k in self._unreadable and (p := self._watch_unreadable(k))]
                self._simulate(placed)
                return len(placed)

        def on_queue_overflow(self) -> None:
            report("overflow", os.fsdecode(self.path))
            with self._lock:  # (its watches are placed anew: those refused, reported again)
                self._clear_all_unreadable()
            super().on_queue_overflow()

        def deactivate(self) -> None:
            super().deactivate()
            with self._lock:  # (a root no longer observed: nothing of it is kept)
                self._clear_all_unreadable()

        def _clear_all_unreadable(self) -> None:
            """Nothing is kept unreadable any more: each path reported cleared once."""
            shown = list(self._unreadable_shown)
            self._unreadable.clear()
            self._unreadable_in.clear()
            self._unreadable_shown.clear()
            for path in shown:
                report("unreadable_cleared", path)

        def prefix_of(self, wd: int) -> str | None:
            """The path of the directory `wd` watches, and "/" (the group's lock held), or
            None when it is not the group's."""
            path = self._resolve_path(wd)
            if path is None:
                return None
            path = os.fsdecode(path)
            return path if path.endswith("/") else path + "/"

        def _add_all_callbacks(self, path: bytes) -> None:
            if path != self.path and skip(path):
                return
            self._add_callback(path)
            if self.is_recursive and os.path.isdir(path) and not (
                    path == self.path and not self.follow_symlink and _claim_base(path, self)):
                self._add_below(path, only_missing=False)

        def walk_base(self, walk: BaseWalk) -> bool:
            """The claimed walk (base_walk): below the root, every directory a watch needs is
            watched before the walk reads it."""
            walk(self._watch_below)
            return True

        def _watch_below(self, directory: str) -> bool:
            """The base walk's `on_dir`: watch a directory below the root (found by an lstat,
            so never a symlink), unless no watch needs it or the group has stopped."""
            if wanted is not None and not wanted(directory):
                return False
            with self._lock:
                if not self.is_active:
                    return False
                self._add_callback(os.fsencode(directory))
            return True

        def _add_below(self, path: bytes, only_missing: bool) -> int:
            added = 0
            for top, dirnames, _ in os.walk(path, followlinks=self.follow_symlink):
                keep = []
                for name in dirnames:
                    full = os.path.join(top, name)
                    if skip(full) or (not self.follow_symlink and os.path.islink(full)):
                        continue
                    keep.append(name)
                    if not only_missing or not self._watched(full):
                        self._add_callback(full)
                        added += 1
                dirnames[:] = keep  # an unwanted subtree is not even walked
            return added

        def add_missing(self) -> int:
            """Watch the directories `wanted` needs now that were skipped before."""
            with self._lock:
                if not self.is_active or not self.is_recursive:
                    return 0
                return self._add_below(self.path, only_missing=True)

        def _recursive_simulate(self, src_path: bytes) -> list:
            return [] if skip(src_path) else super()._recursive_simulate(src_path)

        def created_here(self, wd: int, name: bytes, path: str, add: AddWatch,
                         out: list[tuple[str, str, str, bool]]) -> bool:
            """A directory created in this recursive group, taken by the loop (which holds
            the inotify instance's lock, so `add` is its unlocked add, and this group's):
            what watchdog's path does (_add_all_callbacks, then _recursive_simulate). Its
            watch first, then a read of what it holds: what was made before the watch is
            in the read, what comes after it comes as its own event (made in between: both;
            the pipeline coalesces them); a directory in it is taken the same way (an
            archive unpacked, `mkdir -p`, faster than the loop reads). False, with nothing
            reported, when a watch is there already or the tree holds more than
            CREATED_SCAN_MAX entries: watchdog's path, on the lane, goes on from the watches
            placed here. 10,000 directories made at once cost 1 s of the watcher's CPU on
            the lane, the last one's event 0.5-0.8 s late. Each new node hangs from its
            parent's (for the first, the event's `wd`), found without a walk from the root,
            which watchdog's lookups and _insert_node take (six normpaths a directory: half
            the cost of taking it here)."""
            parent = self._nodes_by_wd.get(wd) if NODE_TREE and not self.follow_symlink \
                else None
            if parent is None:  # (7.1.0 keeps its watches in two dicts; symlinks followed
                return False  # are watched and walked through: watchdog's path)
            if wanted is not None and not wanted(path):  # no watch, nothing walked (as
                out.append(("created", path, "", True))  # _add_all_callbacks does)
                return True
            if name in parent.children:
                return False
            found: list[tuple[str, str, str, bool]] = []
            if not self._take_dir(parent, name, path, add, found, [CREATED_SCAN_MAX]):
                return False
            out.append(("created", path, "", True))
            out += found
            return True

        def _take_dir(self, parent: DirNode, name: bytes, path: str, add: AddWatch,
                      found: list[tuple[str, str, str, bool]], budget: list[int]) -> bool:
            """Watch the new directory `path` (`name` under `parent`'s node) and read it into
            `found`, as watchdog's _recursive_simulate reports it: each directory in it (a
            symlink to one too, not followed), then what is in those it watches, and each
            file; what is under a directory that got no watch (unwanted, or the watch
            failed) is left to the resync that failure asks for, as there. False: over the
            budget, or a node is there already: or the directory was watched already,
            moved here before this one had its watch (no IN_MOVED_TO then, the kernel's
            watch being the inode's). Its node then moves here with its subtree (_rehang)
            and watchdog's path reports what it holds: a second node here left the first at
            the old path, whose unpaired IN_MOVED_FROM later took the watches from here."""
            bpath = os.fsencode(path)
            new_wd = self._place(bpath, add)
            if new_wd is None:
                return True
            met = self._nodes_by_wd.get(new_wd)
            if met is not None:
                if met is not self._root and self._rehang(met, bpath):
                    self._placed_for(met)
                return False
            node = DirNode(name=name, wd=new_wd, parent=parent)
            parent.children[name] = node
            self._nodes_by_wd[new_wd] = node
            if self._unreadable:
                self._placed_for(node)
            try:
                with os.scandir(bpath) as it:
                    entries = list(islice(it, budget[0] + 1))
            except OSError:  # gone again, or unreadable: as os.walk, nothing under it
                return True
            if len(entries) > budget[0]:
                return False
            budget[0] -= len(entries)
            for entry in entries:
                child = f"{path}/{os.fsdecode(entry.name)}"
                if not entry.is_dir():
                    found.append(("created", child, "", False))
                    continue
                found.append(("created", child, "", True))
                if entry.is_symlink() or (wanted is not None and not wanted(child)):
                    continue
                if entry.name in node.children or not self._take_dir(
                        node, entry.name, child, add, found, budget):
                    return False
            return True

        def deleted_here(self, wd: int, name: bytes, path: str,
                         out: list[tuple[str, str, str, bool]]) -> bool:
            """A directory deleted, taken by the loop: what watchdog's path does (its node
            taken from its parent, so a directory made again at its path is watched anew;
            the node and its watch go with the watch's IN_IGNORED, `watch_gone`). The
            parent's node is the event's watch's, as in created_here: no walk from the
            root."""
            parent = self._nodes_by_wd.get(wd) if NODE_TREE else None
            if parent is None:
                return False
            parent.children.pop(name, None)
            if self._unreadable and (id(parent), name) in self._unreadable:
                self._clear_unreadable((id(parent), name))
            out.append(("deleted", path, "", True))
            return True

        def watch_gone(self, wd: int, mask: int, forget: Callable[[int], object]) -> bool:
            """IN_IGNORED or IN_DELETE_SELF of one of this group's watches, taken by the
            loop. IN_IGNORED (the kernel dropped the watch: its directory was deleted) is
            forgotten by the instance (`forget`: its unlocked _remove_watch; the loop holds
            its lock) and by this group, as InotifyFD.handle_event and on_watch_deleted do.
            IN_DELETE_SELF of a directory below the root says nothing the parent's
            IN_DELETE does not (watchdog's emitter drops it); the root's own is watchdog's
            path (the emitter stops). False: not one of these, watchdog's path."""
            if not NODE_TREE:
                return False
            if mask & _IN_IGNORED:
                forget(wd)
                self._remove_watch_internally(wd)
                return True
            node = self._nodes_by_wd.get(wd)
            return bool(mask & _IN_DELETE_SELF) and node is not None and node is not self._root

        def _place(self, path: bytes, add: AddWatch | None = None) -> int | None:
            """The inotify watch of `path` (through `add`, or the instance's locked add):
            its descriptor, or None when it could not be placed. The root's own watch also
            asks for IN_MOVE_SELF: the kernel's watch follows the directory, so a root moved
            away would go on reporting its tree's changes under the root's path
            (Emitter._left stops it)."""
            mask = self.event_mask | _IN_MOVE_SELF if path == self.path else self.event_mask
            try:
                if add_watch_fault is not None:
                    add_watch_fault(path)
                return (add or self._inotify_fd.add_callback)(path, mask, self._callback,
                                                              self._id)
            except OSError as exc:
                if path == self.path:
                    if exc.errno == errno.EACCES:
                        return -1  # (the root's node stands, unwatched: fs.sync cannot
                        # write its cookie there, so lists it unsynced; once it can, the
                        # health check's cookie that never comes back has it placed anew)
                    raise
                if exc.errno in WATCH_LIMIT_ERRNOS:
                    report("enospc", os.fsdecode(path))
                elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    self._unplaced_at(path)
                elif exc.errno in DENIED_ERRNOS:
                    self._unreadable_at(path, exc.errno)
                return None  # vanished or unreadable since listed: the walk and diff cover it

        def _add_callback(self, path: bytes) -> None:
            if NODE_TREE and self._watched(path):
                if self._unreadable:
                    self._placed_for(self._find_node_by_path(path))
                return  # (watchdog 7.1.1 places no second watch either)
            wd = self._place(path)
            if wd is None:
                return
            if NODE_TREE:
                old = self._nodes_by_wd.get(wd)
                if old is not None and old is not self._root and self._rehang(old, path):
                    self._placed_for(old)
                    return
                node = self._insert_node(path, wd)
                if node is None:  # not under the root (it says so)
                    self._inotify_fd.remove_callbacks([(wd, self._id)])
                else:
                    self._placed_for(node)
            else:
                self._active_callbacks_by_path[path] = wd
                self._active_callbacks_by_watch[wd] = path

        def _rehang(self, node: DirNode, path: bytes) -> bool:
            """A directory watched already, met at a new path: moved where watchdog's tree
            could not follow it (its destination's directory not known then). The kernel's
            watch is the inode's, so placing it again gives the same descriptor. Its node
            moves to the new path with what hangs below it, whose events then resolve there:
            a second node for it alone left its subdirectories' under the old path, whose
            removal later took the shared watch, and the events it brings, with it. False
            (a new node, watchdog's way) when the new path's directory has no node, or one
            at that name, or lies under the node itself."""
            norm = os.path.normpath(path)
            parent = self._find_node_by_path(os.path.dirname(norm))
            curr = parent
            while curr is not None:
                if curr is node:
                    return False
                curr = curr.parent
            name = os.path.basename(norm)
            if parent is None or name in parent.children:
                return False
            was = node.parent
            if was is not None and was.children.get(node.name) is node:
                del was.children[node.name]
            node.name, node.parent = name, parent
            parent.children[name] = node
            return True

        def _move_watches(self, move_src_path: bytes, move_dst_path: bytes) -> bool:
            """watchdog's (the nodes below the move's source moved to its destination),
            and True too where its source has no node because the directory's node is at
            the destination already (`_met_there`)."""
            if super()._move_watches(move_src_path, move_dst_path):
                return True
            return NODE_TREE and self._find_node_by_path(move_src_path) is None and \
                self._met_there(move_dst_path)

        def place_here(self, path: bytes) -> str:
            """Watch the directory at `path` before it is read (the emitter's walk of a
            directory moved): a directory watched already, met here, has its node moved
            here (_rehang). WATCHED; OUT when no watch will follow it here: no watch needs
            it (the watches its node brought along, moved here by watchdog, are dropped) or
            its permissions refuse one (kept: `_unreadable_at`); LOST when gone again, the
            group stopped or no watch was left."""
            if skip(path):
                self.remove_watched_directory(path)
                return OUT
            with self._lock:
                if not self.is_active:
                    return LOST
                self._add_callback(path)
                if self._watched(path):
                    return WATCHED
                norm = os.path.normpath(path)
                parent = self._find_node_by_path(os.path.dirname(norm))
                refused = parent is not None and \
                    (id(parent), os.path.basename(norm)) in self._unreadable
                return OUT if refused else LOST

        def _watched(self, path: bytes) -> bool:
            if NODE_TREE:
                node = self._find_node_by_path(path)
                return node is not None and node.wd != -1  # (-1: a directory on the way)
            return path in self._active_callbacks_by_path

    class Emitter(InotifyEmitter):  # type: ignore[misc,valid-type]
        if push is not None:
            def queue_event(self, event: FileSystemEvent) -> None:
                if isinstance(event, kinds):
                    hand_over((event.event_type, os.fsdecode(event.src_path),
                               os.fsdecode(event.dest_path), event.is_directory))

            def build_and_queue_event(self, event: object, *, full_events: bool = False
                                      ) -> None:
                mask = getattr(getattr(event, "ev", None), "mask", None)
                kind = plain_kind(mask) if mask is not None else ""
                try:
                    if kind:
                        hand_over((kind, os.fsdecode(event.path), "",  # type: ignore[attr-defined]
                                   bool(mask & _IN_ISDIR)))
                    elif not self._carried(event) and not self._left(event):
                        super().build_and_queue_event(event, full_events=full_events)
                        if self._is_root(event, _IN_DELETE_SELF):  # (watchdog stopped it)
                            report("root_deleted", self.watch.path)
                finally:
                    group = self._inotify
                    if group is not None:
                        # (one event, or a move's pair: PathedInotifyEvent is a tuple too)
                        group.handled(1 if isinstance(event, PathedInotifyEvent) else 2)

            def _is_root(self, event: Any, mask: int) -> bool:
                """`event` is one of the root's own watch with `mask` (not a pair)."""
                return isinstance(event, PathedInotifyEvent) and bool(event.ev.mask & mask) \
                    and os.fsdecode(event.path) == self.watch.path

            def _left(self, event: Any) -> bool:
                """The root's own directory moved away (IN_MOVE_SELF of its watch), or the
                file system it is on unmounted (IN_UNMOUNT, always reported): taken as
                watchdog takes the root deleted, the emitter stops (its watches go with its
                group) after what came before it, and what the tree does at its new path is
                never reported under the root's. Reported "root_moved": the manager marks
                the root missing at once, and resyncs (no event said its tree left)."""
                if not self._is_root(event, _IN_MOVE_SELF | _IN_UNMOUNT):
                    return False
                self.stop()
                report("root_moved", self.watch.path)
                return True

            def _carried(self, event: Any) -> bool:
                """A directory moved within the watch (a pair) or moved in (its
                IN_MOVED_TO alone): the directory, then what it holds (`_below`); False for
                anything else (watchdog's way)."""
                if not NODE_TREE or not self.watch.is_recursive:
                    return False
                group = self._inotify
                if isinstance(event, PathedInotifyEvent):
                    if not (event.ev.is_moved_to and event.ev.is_directory):
                        return False
                    src, dest = "", os.fsdecode(event.path)
                    hand_over(("created", dest, "", True))
                    where = group.place_here(event.path) if group is not None else WATCHED
                else:
                    was, now = event
                    if not was.ev.is_directory:
                        return False
                    src, dest = os.fsdecode(was.path), os.fsdecode(now.path)
                    where = group.place_here(now.path) if group is not None else WATCHED
                    self._moved(src, dest, where)
                if where == WATCHED:
                    self._below(src, dest)
                return True

            def _moved(self, src: str, dest: str, where: str) -> None:
                """A directory renamed from `src` to `dest`, where its group placed it
                (`Group.place_here`). Where no watch follows it (OUT: renamed to a name no
                watch needs, `mv dist.tmp build` with `build` excluded, or one it may not
                read) it left the watches as a directory moved out does: its deletion,
                without `moved_to`, has the pipeline tell gone what it held, which no event
                of theirs will; and its new path is created (told where a watch covers it).
                Else the move, whose own events (`_below`) tell what it holds."""
                if where == OUT:
                    hand_over(("deleted", src, "", True))
                    hand_over(("created", dest, "", True))
                else:
                    hand_over(("moved", src, dest, True))

            def _below(self, src: str, dest: str) -> None:
                """What a directory moved from `src` (or moved in: "") to `dest`, watched
                there, holds, as moved (or created) from where it was, read from the disk
                now: watchdog's sub-moved and sub-created events, except that each
                directory is watched before it is read (Group.place_here), as a new
                watch's walk does, and one no watch follows where it is now is told as moved
                out (`_moved`). The disk runs ahead of the events: a directory made there
                since had no watch yet (its own event not taken), and what it held went
                into the index with nothing to say it left again (a file moved out of it
                before its watch came stayed in the index)."""
                group = self._inotify
                stack = [dest]
                while stack:
                    top = stack.pop()
                    try:
                        with os.scandir(top) as it:
                            entries = list(it)
                    except OSError:  # gone again: the event that took it goes on from there
                        continue
                    for entry in entries:
                        path = f"{top}/{entry.name}"
                        is_dir = entry.is_dir(follow_symlinks=False)
                        where = WATCHED if group is None or not is_dir else \
                            group.place_here(os.fsencode(path))
                        if not src:
                            hand_over(("created", path, "", is_dir))
                        elif is_dir:
                            self._moved(src + path[len(dest):], path, where)
                        else:
                            hand_over(("moved", src + path[len(dest):], path, False))
                        if is_dir and group is not None and where == WATCHED:
                            stack.append(path)

        def on_thread_start(self) -> None:
            self._inotify = Group(
                self._inotify_fd, os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink)

    return Emitter


if GUARDED:
    from watchdog.observers.inotify_c import inotify_add_watch, inotify_rm_watch

    _IN_Q_OVERFLOW = int(_C.IN_Q_OVERFLOW)
    _NO_CALLBACKS: dict[object, Callable[..., None]] = {}  # (never written: copied on write)

    class LeanWatch:
        """watchdog's Watch in a third of its memory. An inotify watch per directory: a
        package install or an unpacked archive makes tens of thousands, and watchdog's
        cost about 410 bytes each, its dataclass, a dict of callbacks of its own (one
        group's callback nearly always), and the path it was made for, kept for its repr
        only (the bytes of it, made for the watch alone). Here: slots, and callbacks a
        map that LoopInotifyFD copies on write, so a watch of one group shares the group's
        (Group.one_callback; about 64 bytes a watch, 10 MiB less for X4's 31,000
        directories). (watchdog's `is_used` and `short_str` serve only the two methods
        LoopInotifyFD replaces.)"""

        __slots__ = ("callbacks", "mask", "wd")

        def __init__(self, wd: int, mask: int) -> None:
            self.wd = wd
            self.mask = mask
            self.callbacks: dict[object, Callable[..., None]] = _NO_CALLBACKS

    class LoopInotifyFD(InotifyFD):  # type: ignore[misc,valid-type]
        """watchdog's inotify instance, read by the actor's loop instead of a reader thread.

        watchdog reads the instance on a thread of its own and dispatches on another: a
        lone create woke two threads, then the loop, before its event went out (about 30%
        of a create's trip to a subscriber at the smallest settle). Here the loop waits on
        the descriptor with its request socket (`read_ready`, an eager reader) and hands the
        plain events (create, modify, attrib, delete) of a read over itself, in one go: the
        instance's lock and each group's taken once a read, and only ever tried. The lane,
        this object's thread, dispatches the rest as watchdog's own thread did: an event
        that takes watchdog's path (a move, a directory created in a recursive watch, whose
        walk places its watches, a watch gone, an overflow), one whose lock is held (a
        placement's walk), one a second watch shares, and, to keep the order, every event
        after it until the lane has caught up. A read takes at most `read_bytes`: the rest
        waits in the kernel for the loop's next turn."""

        def __init__(self, read_bytes: int = 16384) -> None:
            super().__init__()
            self._is_reading = False  # (close() then closes at once: no reader to wake)
            os.set_blocking(self._inotify_fd, False)
            self.read_bytes = read_bytes
            # Where the loop's events go (ObserverManager.push_many); none: dropped.
            self.deliver: Callable[[list[tuple[str, str, str, bool]]], None] | None = None
            self._lane: list[InotifyEvent] = []
            self._lane_cv = threading.Condition(threading.Lock())
            self._lane_busy = False  # events handed to the lane and not all dispatched yet
            self._lane_closed = False
            # The lane's backlog is bounded as the kernel's queue is: past LANE_MAX events,
            # what is read is dropped and the lane told of an overflow (once), whose resync
            # walks after the drops. The lane can be held long (a placement's walk holds its
            # group's lock) while a build writes; the kernel's own queue never filled then.
            self._lane_overflowed = False
            self.lane_dropped = 0
            self.on_loop = 0  # events dispatched by the loop
            self.on_lane = 0  # events the lane dispatched

        @property
        def fd(self) -> int:
            return self._inotify_fd  # type: ignore[no-any-return]

        def _add_callback(self, path: bytes, mask: int, callback: Callable[..., None],
                          id_: object) -> int:
            """watchdog's, without its warning when the group's callback is on the watch
            already: a directory moved within a watch keeps its inotify watch (the kernel's
            is the inode's), and watchdog, watching the tree it finds at the destination,
            meets it again. (Under `-W error` that warning killed the lane.) A watch's
            callbacks are copied on write (LeanWatch): a watch with its group's callback
            alone shares the group's one-entry map."""
            watch = self._get_or_create_watch(path, mask)
            callbacks = watch.callbacks
            if not callbacks:
                one = getattr(callback, "one_callback", None)  # (a Group's: shared)
                watch.callbacks = one if one is not None and one.get(id_) is callback \
                    else {id_: callback}
            elif callbacks.get(id_) is not callback:
                watch.callbacks = {**callbacks, id_: callback}
            return watch.wd  # type: ignore[no-any-return]

        def _get_or_create_watch(self, path: bytes, mask: int) -> LeanWatch:
            """watchdog's, with a LeanWatch for a new watch, and a watch its permissions
            refuse raised as such (EACCES: watchdog's passes it over, and records a watch
            of descriptor -1, which every directory so refused then shared)."""
            wd = inotify_add_watch(self._inotify_fd, path, mask)
            if wd == -1:
                if ctypes.get_errno() == errno.EACCES:
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
                InotifyFD._raise_error()
            watch = self._watch_for_wd.get(wd)
            if watch is None:
                watch = self._watch_for_wd[wd] = LeanWatch(wd, mask)
            return watch  # type: ignore[no-any-return]

        def _remove_callback(self, wd: int, id_: object) -> None:
            """watchdog's, on a copy of the watch's callbacks (they may be shared)."""
            watch = self._watch_for_wd.get(wd)
            if watch is None:
                return  # (watchdog logs it at debug level)
            if id_ in watch.callbacks:
                watch.callbacks = {k: v for k, v in watch.callbacks.items() if k != id_}
            if not watch.callbacks:
                self._remove_watch(wd)
                if inotify_rm_watch(self._inotify_fd, wd) == -1:
                    InotifyFD._raise_error(ignore_invalid_argument=True)

        @property
        def lane_busy(self) -> bool:
            """Events were handed to the lane and not all dispatched yet (the loop's own
            events wait behind them meanwhile)."""
            return self._lane_busy

        def read_ready(self) -> None:
            """On the loop, when the descriptor is readable."""
            try:
                buf = os.read(self._inotify_fd, self.read_bytes)
            except (BlockingIOError, InterruptedError):
                return
            events = [e for e in InotifyFD._parse_event_buffer(buf)
                      if e[0] != -1 or e[1] & _IN_Q_OVERFLOW]
            # (only this thread makes the lane busy: read false, it stays so meanwhile)
            done = 0 if self._lane_busy else self._dispatch_here(events)
            if done < len(events):
                rest = [InotifyEvent(*e) for e in events[done:]]
                with self._lane_cv:
                    if len(self._lane) < LANE_MAX:
                        self._lane += rest
                        self._lane_overflowed = False
                    else:
                        self.lane_dropped += len(rest)
                        if not self._lane_overflowed:
                            self._lane_overflowed = True
                            self._lane.append(InotifyEvent(-1, _IN_Q_OVERFLOW, 0, b""))
                    self._lane_busy = True
                    self._lane_cv.notify()

        def _dispatch_here(self, events: list[tuple[int, int, int, bytes]]) -> int:
            """Hand over the plain events at the head of `events`; returns how many."""
            if not self._lock.acquire(False):
                return 0
            watches = self._watch_for_wd
            held = None  # the group whose lock is held
            prefixes: dict[int, str | None] = {}  # wd -> its directory's path and "/"
            out: list[tuple[str, str, str, bool]] = []
            done = 0
            try:
                i, n = 0, len(events)
                while i < n:
                    wd, mask, cookie, name = events[i]
                    kind = plain_kind(mask)
                    step = 1
                    if not kind:
                        if cookie and i + 1 < n and mask & (_SLOW | _IN_ISDIR) == _IN_MOVED_FROM \
                                and events[i + 1][2] == cookie and \
                                events[i + 1][1] & (_SLOW | _IN_ISDIR) == _FILE_MOVED_IN:
                            kind, step = "moved", 2  # a file renamed, both halves read
                        elif not mask & _WATCH_GONE:
                            break  # (a move, an overflow: watchdog's path)
                    watch = watches.get(wd)
                    if watch is not None:
                        callbacks = watch.callbacks
                        if len(callbacks) != 1:
                            break
                        group = next(iter(callbacks.values()))
                        if group is not held:
                            if held is not None:
                                held._lock.release()
                                held = None
                            if not isinstance(group, _Grouped) or not group._lock.acquire(False):
                                break
                            held = group
                            if group.is_active and group._pending:
                                break  # (older events of the group wait in its grouper)
                        if kind == "moved":
                            if not self._moved_here(group, wd, name, events[i + 1], prefixes,
                                                    out):
                                break
                        elif not kind:  # one of its watches gone
                            if not group.is_active:
                                if mask & _IN_IGNORED:  # (the instance forgets it all the same)
                                    self._remove_watch(wd)
                            elif not group.watch_gone(wd, mask, self._remove_watch):
                                break
                        elif group.is_active:
                            if wd in prefixes:
                                prefix = prefixes[wd]
                            else:
                                prefix = prefixes[wd] = group.prefix_of(wd)
                            if mask & _IN_ISDIR and group._unreadable and kind == "attrib" \
                                    and group._unreadable_keys(wd, name):
                                break  # (a directory it could not read may be now: the lane)
                            if mask & _IN_ISDIR and walked_dir(mask, kind, group.is_recursive):
                                if prefix is None or not name:
                                    break
                                path = prefix + os.fsdecode(name)
                                try:
                                    taken = group.created_here(
                                        wd, name, path, self._add_callback, out) \
                                        if kind == "created" else group.deleted_here(
                                            wd, name, path, out)
                                except Exception:  # (a fault of ours: watchdog's path meets
                                    taken = False  # it again on the lane, whose death is seen)
                                if not taken:
                                    break
                            elif prefix is not None:
                                out.append((kind, prefix + os.fsdecode(name) if name
                                            else prefix[:-1] or "/", "", bool(mask & _IN_ISDIR)))
                    elif kind == "moved":
                        break  # (its source unwatched: watchdog's path sorts the pair out)
                    done += step  # (no watch, or its group stopped: dropped, as watchdog does)
                    i += step
            finally:
                if held is not None:
                    held._lock.release()
                self._lock.release()
            if out and self.deliver is not None:
                self.deliver(out)
            self.on_loop += done
            return done

        def _moved_here(self, group: object, wd: int, name: bytes,
                        to: tuple[int, int, int, bytes], prefixes: dict[int, str | None],
                        out: list[tuple[str, str, str, bool]]) -> bool:
            """A file renamed within `group` (its lock held), both halves in this read: the
            move watchdog's grouper would pair (its IN_MOVED_FROM held until the IN_MOVED_TO
            with its cookie comes, then the emitter's FileMovedEvent) reported at once. A
            file moved between two roots is two groups' (each reports its half): False,
            watchdog's path."""
            to_watch = self._watch_for_wd.get(to[0])
            if to_watch is None or len(to_watch.callbacks) != 1 or \
                    next(iter(to_watch.callbacks.values())) is not group:
                return False
            if not group.is_active:  # type: ignore[attr-defined]
                return True  # (dropped, as watchdog's stopped group does)
            for w in (wd, to[0]):
                if w not in prefixes:
                    prefixes[w] = group.prefix_of(w)  # type: ignore[attr-defined]
            src, dest = prefixes[wd], prefixes[to[0]]
            if src is None or dest is None or not name or not to[3]:
                return False
            out.append(("moved", src + os.fsdecode(name), dest + os.fsdecode(to[3]), False))
            return True

        def run(self) -> None:
            """The lane."""
            cv = self._lane_cv
            while True:
                with cv:
                    while not self._lane and not self._lane_closed:
                        cv.wait()
                    if self._lane_closed:
                        return
                    batch, self._lane = self._lane, []
                for event in batch:
                    self.handle_event(event)
                self.on_lane += len(batch)
                with cv:
                    if not self._lane:
                        self._lane_busy = False

        def on_thread_stop(self) -> None:
            self.close()
            with self._lane_cv:
                self._lane_closed = True
                self._lane_cv.notify()


class InotifyObserver(BaseObserver):
    """InotifyObserver with our emitter class and a loop-read instance (LoopInotifyFD),
    whose lane thread is ours to check."""

    def __init__(self, emitter_class: type, timeout: float) -> None:
        self.inotify_fd = LoopInotifyFD()
        try:
            self.inotify_fd.start()
        except BaseException:  # (no thread: the user's limit) its instance and pipe go too
            self.inotify_fd.close()
            raise
        super().__init__(emitter_class, timeout=timeout, inotify_fd=self.inotify_fd)

    def start(self) -> None:
        try:
            super().start()
        except BaseException:  # the instance's lane thread stops, and closes the instance
            self.inotify_fd.stop()
            self.inotify_fd.join(2.0)
            raise

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.inotify_fd.stop()
        self.inotify_fd.join(2.0)
