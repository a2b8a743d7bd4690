"""What clients asked to watch, and the smallest set of directories that must be observed.

A watch is a directory, recursive or not, with exclude patterns. An event is published when
at least one watch covers its path, and names those watches. Patterns are globs (fnmatch, `*`
also crosses `/`): one without a `/` matches any path component below the watch (so
`node_modules` or `*.log` exclude at any depth), one with a `/` matches the path relative to
the watch or one of its ancestors (`.git/objects` excludes that directory and everything in
it). A watch has at most MAX_PATTERNS of them, each of at most MAX_PATTERN_CHARS characters
and MAX_EXCLUDE_CHARS in all: they are compiled on the loop, where fnmatch takes seconds for
a pattern of a few thousand `[` (fs.list's glob and fs.query's globs are bounded alike).
Overlapping watches are observed once: a recursive watch makes every watch below it free. A
directory that no watch needs (`needs`: inside a subtree every watch over it excludes) gets
no inotify watch at all.

A watch is shared: an fs.watch of a directory already watched (the same path, recursive and
exclude) answers the same watch. So that one client's fs.unwatch does not end another's, each
watch keeps its holders, by session id (a call's `sid`; CONFIG_HOLDER for the config file's
`watch` entries), and goes only when the last one lets go. A client that dies never lets go:
past MAX_HOLDERS the oldest hold is dropped, so the holders of a watch many short-lived
clients asked for stay few. A watch no one holds (one in a watches file saved without
holders) goes at any fs.unwatch.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from moorage.actors.watcher.snapshot import wire_fields, wire_items
from moorage.protocol.errors import MoorageError, fail

MAX_PATTERNS = 64
MAX_PATTERN_CHARS = 256  # one exclude pattern (as fs.list's glob: listing.MAX_GLOB_CHARS)
# a watch's patterns together: 64 patterns of 64 characters (an editor's list); at most 16
# of the slowest 256-character ones to compile, ~30 ms of the loop
MAX_EXCLUDE_CHARS = 4096
# Watches a watcher holds at most: each event with excludes is matched against every one,
# and each watch added or removed recomputes what to observe. One more is refused
# (resource_exhausted) until one is removed; the watches are saved, so a restart keeps them.
MAX_WATCHES = 1024
# Holds a watch keeps at most (each a session id, saved with the watches): past it the
# oldest client's hold goes, never the config's.
MAX_HOLDERS = 64
# The holder of the watches the config file names (`watch`): taken at each start.
CONFIG_HOLDER = "config"


def _compile(patterns: tuple[str, ...]) -> tuple[re.Pattern | None, re.Pattern | None]:
    names = [fnmatch.translate(p) for p in patterns if "/" not in p]
    paths = [fnmatch.translate(p.strip("/")) for p in patterns if "/" in p]
    return (re.compile("|".join(names)) if names else None,
            re.compile("|".join(paths)) if paths else None)


@dataclass(eq=False)
class Watch:
    id: str
    path: str  # real path of a directory
    recursive: bool = True
    exclude: tuple[str, ...] = ()
    # Session ids holding the watch, oldest first (a dict: ordered, one hold a session)
    holders: dict[str, None] = field(default_factory=dict)
    _names: re.Pattern | None = field(default=None, repr=False)
    _paths: re.Pattern | None = field(default=None, repr=False)
    _prefix: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self._names, self._paths = _compile(self.exclude)
        self._prefix = self.path.rstrip("/") + "/"

    def excluded(self, rel: str) -> bool:
        if self._names is not None:
            for part in rel.split("/"):
                if self._names.match(part):
                    return True
        if self._paths is not None:
            parts = rel.split("/")
            for i in range(1, len(parts) + 1):
                if self._paths.match("/".join(parts[:i])):
                    return True
        return False

    def overlaps(self, tree: str) -> bool:
        """Whether this watch may cover a path below directory `tree`: it holds `tree`, or
        lies inside it. One that does neither covers none of its paths, so a new or removed
        watch's tree is checked against the overlapping watches alone, not every watch."""
        inside = tree.rstrip("/") + "/"
        return inside.startswith(self._prefix) or self._prefix.startswith(inside)

    def covers(self, path: str) -> bool:
        if not path.startswith(self._prefix):
            return False
        rel = path[len(self._prefix):]
        if not self.recursive and "/" in rel:
            return False
        return not (self.exclude and self.excluded(rel))

    def hold(self, sid: str) -> bool:
        """`sid` holds the watch (again: its hold becomes the newest). Past MAX_HOLDERS the
        oldest client's hold is dropped: a client that died holds it no longer. True when
        the holds changed (they are saved then)."""
        if sid in self.holders:
            if next(reversed(self.holders)) == sid:
                return False
            del self.holders[sid]
        self.holders[sid] = None
        if len(self.holders) > MAX_HOLDERS:
            del self.holders[next(h for h in self.holders if h != CONFIG_HOLDER)]
        return True

    def release(self, sid: str) -> bool:
        """`sid` lets go of the watch: whether it held it."""
        if sid not in self.holders:
            return False
        del self.holders[sid]
        return True

    def spec(self) -> dict[str, Any]:
        """The watch as the state file keeps it (its path exactly: snapshot.PATHS), its
        holders with it, oldest first."""
        return {"id": self.id, "path": self.path, "recursive": self.recursive,
                "exclude": list(self.exclude), "holders": list(self.holders)}

    def wire_spec(self) -> dict[str, Any]:
        """The watch as an answer holds it: how many hold it, not who (a session id is the
        key of its replies in the reply cache); a path that is not valid UTF-8 readable,
        and exact in `path_bytes` (snapshot.wire_fields)."""
        spec = {"id": self.id, "path": self.path, "recursive": self.recursive,
                "exclude": list(self.exclude), "holders": len(self.holders)}
        wire_fields(spec, ("path",))
        return spec


def wire_paths(paths: Iterable[str]) -> list[str | dict[str, Any]]:
    """A list of paths (roots, polled subtrees, unsynced roots) as an answer holds it: each
    that is not valid UTF-8 is the map {path, path_bytes} among the plain paths, as
    fs.query's plain names hold such a name (snapshot.wire_items)."""
    out: list[Any] = list(paths)
    wire_items(out, "path")
    return out


class Watches:
    def __init__(self) -> None:
        self.by_id: dict[str, Watch] = {}
        self.next_id = 1
        self._list: tuple[Watch, ...] = ()
        # Without excludes, which watches cover a path depends on its directory only: the
        # answer is remembered per directory (one dict lookup per event on the hot path).
        self.by_dir: dict[str, tuple[str, ...]] = {}
        self.has_excludes = False

    def _changed(self) -> None:
        self._list = tuple(self.by_id.values())
        self.by_dir = {}
        self.has_excludes = any(w.exclude for w in self._list)

    def __len__(self) -> int:
        return len(self.by_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._list)

    def find(self, path: str, recursive: bool, exclude: tuple[str, ...]) -> Watch | None:
        for w in self._list:
            if w.path == path and w.recursive == recursive and w.exclude == exclude:
                return w
        return None

    def add(self, path: str, recursive: bool, exclude: list[str] | tuple[str, ...],
            wid: str | None = None) -> Watch:
        if wid is None:  # (a saved watch, `load`'s, was taken when it was made)
            check_exclude(exclude)
        if wid is None and len(self.by_id) >= MAX_WATCHES:
            raise fail("resource_exhausted", f"fs.watch: {MAX_WATCHES} watches are held "
                       "(the most); remove one first")
        try:
            w = Watch(wid or f"w{self.next_id}", path, recursive, tuple(exclude))
        except re.error as exc:
            raise fail("bad_args", f"exclude: {exc}") from exc
        if wid is None:
            self.next_id += 1
        self.by_id[w.id] = w
        self._changed()
        return w

    def remove(self, wid: str) -> Watch:
        w = self.by_id.pop(wid, None)
        if w is None:
            raise fail("watch_not_found", f"no watch {wid!r}")
        self._changed()
        return w

    def matching(self, path: str) -> tuple[str, ...]:
        """Ids of the watches that cover `path` (empty: nobody asked about it); shared
        between paths (a tuple: events hold it, and the garbage collector need not)."""
        if self.has_excludes:
            return tuple(w.id for w in self._list if w.covers(path))
        d = path.rpartition("/")[0]
        ids = self.by_dir.get(d)
        if ids is None:
            if len(self.by_dir) > 100_000:
                self.by_dir = {}
            ids = self.by_dir[d] = tuple(w.id for w in self._list if w.covers(path))
        return ids

    def needs(self, directory: str) -> bool:
        """Whether `directory` must be observed: it is a watch's directory or above one, or
        a recursive watch covers it. An excluded directory's whole subtree is excluded (a
        pattern that matches a path matches every path below it), so it needs nothing.
        Called from the observer's threads: it reads only the immutable watch tuple."""
        below = directory.rstrip("/") + "/"
        for w in self._list:
            if w.path == directory or w.path.startswith(below) or (
                    w.recursive and w.covers(directory)):
                return True
        return False

    def in_scope(self, path: str) -> bool:
        return any(w.covers(path) for w in self._list)

    def observed_roots(self) -> dict[str, bool]:
        """Directories to observe -> recursive, none inside a recursive other."""
        rec = {w.path for w in self._list if w.recursive}
        out = dict.fromkeys(sorted(p for p in rec if not under_any(p, rec)), True)
        for w in self._list:
            if not w.recursive and w.path not in rec and not under_any(w.path, rec):
                out[w.path] = False
        return out

    def to_wire(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "watches": [w.spec() for w in self._list]}

    def load(self, doc: dict[str, Any]) -> None:
        """The watches as `to_wire` saved them. One saved without holders (by a watcher
        that kept none) is held by no one: any fs.unwatch removes it, as it did then."""
        for spec in doc.get("watches", []):
            try:
                w = self.add(spec["path"], bool(spec["recursive"]), tuple(spec["exclude"]),
                             wid=str(spec["id"]))
            except (KeyError, TypeError, MoorageError) as exc:
                # (a saved watch we cannot read back is dropped, not fatal)
                logger.warning("watcher: saved watch {!r:.300} dropped: {}", spec, exc)
                continue
            holders = spec.get("holders", ())
            if isinstance(holders, (list, tuple)):
                for sid in [h for h in holders if isinstance(h, str)][-MAX_HOLDERS:]:
                    w.hold(sid)
        self.next_id = max(int(doc.get("next_id", 1)), self.next_id)


def check_exclude(exclude: list[str] | tuple[str, ...]) -> None:
    """`bad_args` unless `exclude` is at most MAX_PATTERNS non-empty strings, each of at
    most MAX_PATTERN_CHARS characters and MAX_EXCLUDE_CHARS in all: checked before any is
    compiled (module docstring)."""
    if len(exclude) > MAX_PATTERNS or not all(isinstance(p, str) and p for p in exclude):
        raise fail("bad_args", f"exclude: at most {MAX_PATTERNS} non-empty strings",
                   detail={"max": MAX_PATTERNS})
    longest = max(map(len, exclude), default=0)
    if longest > MAX_PATTERN_CHARS:
        raise fail("bad_args", f"exclude: a pattern of {longest} characters; at most "
                   f"{MAX_PATTERN_CHARS} each", detail={"max": MAX_PATTERN_CHARS})
    total = sum(map(len, exclude))
    if total > MAX_EXCLUDE_CHARS:
        raise fail("bad_args", f"exclude: {total} characters in all; at most "
                   f"{MAX_EXCLUDE_CHARS}", detail={"max": MAX_EXCLUDE_CHARS})


def under_any(path: str, dirs: AbstractSet[str]) -> bool:
    """Is `path` below one of `dirs` (absolute, no trailing slash; "/" the root)? Its
    ancestors looked up among them: a test per level of the path, not one per directory."""
    i = len(path)
    while (i := path.rfind("/", 0, i)) > 0:
        if path[:i] in dirs:
            return True
    return path != "/" and "/" in dirs
