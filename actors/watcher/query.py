"""fs.query: the files of a watched tree, from the watcher's memory, not from the disk.

The told-state index (snapshot.Index) already holds every watched path with its stat, so a
query is a filter over it: no walk, no syscall. Watchman's `query` answers the same way.

  scope     `path`, a directory some watch covers; names in the answer are relative to it
  glob      one pattern or a list (any may match) over the relative name: `*` and `?` stay
            within one path component, `**` spans any number of them (`**/*.py`, `src/**`)
  suffix    one or a list of file name extensions, without the dot, case-insensitive
  type      one or a list of file | dir | symlink | other | unknown
  since     a clock from an earlier answer or event: only the paths changed after it,
            deleted ones included (`exists: false`). A clock of another life of the watcher,
            or older than the journal retains, gives `fresh_instance: true` and every file,
            as Watchman does; no `since` is a fresh-instance query too.
  fields    of each file: name, exists, type, size, mtime_ns, ino (default: all but ino);
            ["name"] alone answers plain names

The answer is built here from strings, ints, bools, bytes and None only, two levels deep, so
the runtime's walk of a result's shape (50,000 values) is skipped (`checked=False`). A name
that is not valid UTF-8 (a file's stray bytes: snapshot.py) is answered readable in `name`
and exactly in `name_bytes` (snapshot.wire_fields); with `fields: ["name"]` such a file is
the map {name, name_bytes} among the plain names. One pass over a page's names tells whether
it has one: a page without pays nothing more.

Bounded in time and size: the candidates (the index's paths under the scope, gathered from
its per-directory sets at C speed, or the paths the journal names after `since`) are taken
at once, then filtered and described a slice at a time: at most SCAN_SLICE candidates
(SCAN_SLICE_BARE when nothing but the name is asked of them) and SLICE_S of the loop, one
slice of one query per loop turn, the queries under way taking turns; at most MAX_RUNNING
are under way, each holding its page, and MAX_WAITING more wait in line for a place (holding
nothing); past them a query is answered `busy` with `retry_after_ms`.
The globs of a query are at most MAX_GLOB_CHARS together (they are compiled on the loop).
An answer carries at most `max` files (default 10,000, at most MAX_PAGE); when there are
more it gives a `cursor`, and `fs.query {cursor}` continues where it stopped. A query asked
while the watcher (re)starts its watches waits for that walk: the index is not whole before.
Every page carries the clock the query started at: changes made while a client pages
through arrive as events after it, or through `fs.since` from it. At most
MAX_CURSORS_PER_CLIENT cursors of one client (its session id) are open at a time, and
MAX_CURSORS in all (past either, the oldest of them goes), each for CURSOR_TTL_S after its
last page.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import itemgetter
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

from moorage.actors.runtime import DEFERRED, Call, op
from moorage.actors.runtime.shapes import OneOf
from moorage.actors.watcher.files import climb_checked
from moorage.actors.watcher.journal import Clock
from moorage.actors.watcher.snapshot import (
    UNKNOWN,
    Stat,
    file_format,
    stat_fields,
    wire_items,
)
from moorage.protocol.errors import MoorageError, fail

if TYPE_CHECKING:
    from moorage.actors.watcher.driving import WatcherHost

SCAN_SLICE = 20_000  # candidates looked at per loop turn (filters: about 1 us each)
SCAN_SLICE_BARE = 100_000  # the same with nothing but the name asked (about 0.1 us each)
SLICE_S = 0.01  # and no longer than this on the loop (looked at between chunks)
CHUNK = 1024  # candidates between two looks at the clock (described: ~3 us each)
CHUNK_BARE = 16_384  # the same for names only
CHUNK_FILTERED = 16  # ... and through filters (64 globs over a deep path: ~300 us a name)
MAX_PAGE = 100_000  # names of a 100,000-file tree in one answer: about 2 MB
MAX_RUNNING = 4  # queries under way at once (a described page of 100,000 files: ~30 MB)
MAX_WAITING = 64  # queries in line for a place (holding nothing yet); past them: busy
BUSY_RETRY_MS = 100
MAX_GLOB_CHARS = 1024  # a query's globs together: compiled on the loop in ~10 ms at most
MAX_CURSORS = 64
MAX_CURSORS_PER_CLIENT = 16
CURSOR_TTL_S = 60.0
FIELDS = ("name", "exists", "type", "size", "mtime_ns", "ino")
DEFAULT_FIELDS = ("name", "exists", "type", "size", "mtime_ns")
TYPES = ("file", "dir", "symlink", "other", "unknown")
_FMT = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}


def glob_regex(pattern: str) -> str:
    """A glob as a regular expression over a relative path: `*` and `?` within one
    component, `**` as a whole component any number of them (elsewhere `**` is `*`, as in
    git's and Watchman's globs), `[...]` a character class.

    Made so that no name costs more than about its length times the pattern's to match:
    a plain translation backtracks through every way to split a name among its stars
    (`*a*a*a*a*a*a*b` over forty `a`s takes seconds, on the loop). As in fnmatch, a star
    followed by a fixed run and then another star of its kind takes the first place the run
    fits, atomically: within a component, an earlier place leaves the next star more of the
    same component; across components, the next `**` absorbs whatever comes between. Only
    the last `**` and the last star of each component backtrack, each over one dimension."""
    parts = pattern.split("/")
    units = [u for i, u in enumerate(parts) if not (u == "**" and i and parts[i - 1] == "**")]
    out = []
    k, n = 0, len(units)
    while k < n:
        unit = units[k]
        if unit != "**":
            out.append(_component_regex(unit) + ("/" if k < n - 1 else ""))
            k += 1
        elif k == n - 1:
            out.append(".*")  # (a trailing **: anything below)
            k += 1
        else:
            nxt = next((j for j in range(k + 1, n) if units[j] == "**"), None)
            if nxt is None:  # the last **: it backtracks, over the components
                out.append("(?:[^/]*/)*")
                k += 1
            else:  # the components up to the next **: at the first place they fit
                fixed = "".join(_component_regex(u) + "/" for u in units[k + 1 : nxt])
                out.append(f"(?>(?:[^/]*/)*?{fixed})")
                k = nxt
    return "".join(out) + r"\Z"


def _component_regex(glob: str) -> str:
    """One component's glob (no `/` in it): fixed runs, and stars between them."""
    runs: list[str] = [""]  # fixed runs; a star stands between each two
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            while i < n and glob[i] == "*":  # (`**` within a component is a `*`)
                i += 1
            runs.append("")
            continue
        if c == "?":
            runs[-1] += "[^/]"
            i += 1
        elif c == "\\" and i + 1 < n:  # the next character as itself (`\*`, `\[`)
            runs[-1] += re.escape(glob[i + 1])
            i += 2
        elif c == "[":
            j = i + 1 + (glob[i + 1:i + 2] in ("!", "^"))
            j = glob.find("]", j + (glob[j:j + 1] == "]"))  # (a `]` first is in the class)
            if j < 0:
                runs[-1] += re.escape(c)
                i += 1
                continue
            body = glob[i + 1:j].replace("\\", "\\\\")
            # (never the separator: negated, or a range across it, as `[.-0]`)
            runs[-1] += f"[^{body[1:]}/]" if body[0] in "!^" else f"(?!/)[{body}]"
            i = j + 1
        else:
            runs[-1] += re.escape(c)
            i += 1
    out = runs[0]
    for k, run in enumerate(runs[1:], 1):
        if k < len(runs) - 1 and run:
            out += f"(?>[^/]*?{run})"  # another star follows: the first place it fits
        else:
            out += "[^/]*" + run
    return out


def _names(v: str | list | None, what: str) -> tuple[str, ...]:
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not items or len(items) > 64 or not all(isinstance(x, str) and x for x in items):
        raise fail("bad_args", f"fs.query: {what} must be a non-empty string or a list of "
                   "at most 64 of them")
    if sum(map(len, items)) > MAX_GLOB_CHARS:
        raise fail("bad_args", f"fs.query: {what}: at most {MAX_GLOB_CHARS} characters in "
                   "all", detail={"max": MAX_GLOB_CHARS})
    return tuple(items)


@dataclass
class Filter:
    """What a file must be to be in the answer (compiled once per query)."""

    match: Callable[[str], Any] | None = None  # over the relative name
    suffixes: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def build(cls, glob: str | list | None, suffix: str | list | None,
              types: str | list | None) -> Filter:
        globs = _names(glob, "glob")
        try:
            match = re.compile("|".join(f"(?:{glob_regex(g)})" for g in globs)).match \
                if globs else None
        except re.error as exc:
            raise fail("bad_args", f"fs.query: glob: {exc}") from exc
        kinds = frozenset(_names(types, "type"))
        if kinds - set(TYPES):
            raise fail("bad_args", f"fs.query: type must be among {TYPES}")
        return cls(match, frozenset(s.lower().lstrip(".") for s in _names(suffix, "suffix")),
                   kinds)


@dataclass
class Query:
    """One query's state between its pages."""

    root: str  # the scope's real path
    filter: Filter
    fields: tuple[str, ...]
    clock: list
    fresh: bool
    candidates: list[str]
    max: int
    inside: bool = False  # every candidate is under `root` (taken from the index's subtree)
    sid: str = ""  # the client's, whose cursors it counts among
    pos: int = 0
    scanned: int = 0
    touched: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return self.pos >= len(self.candidates)


def page(q: Query, entries: dict, budget: int, want: int,
         until: float = float("inf")) -> tuple[list[Any], bool]:
    """Up to `want` more files, looking at no more than `budget` candidates and past `until`
    (perf_counter) at no more than a chunk; returns them and whether the page is complete
    (full, or no candidates left)."""
    prefix = q.root.rstrip("/") + "/"
    cut = len(prefix)
    f = q.filter
    match, suffixes, types = f.match, f.suffixes, f.types
    fields = q.fields
    names_only = fields == ("name",)
    cands = q.candidates
    out: list[Any] = []
    i = q.pos
    stop = min(len(cands), i + budget)
    if match is None and not suffixes and not types:
        # Nothing to filter but the scope (a full query): whole chunks at C speed, each no
        # longer than what the page still wants, so it never overfills. A fresh query's
        # candidates are all in the scope already; a `since` query's are tested here. The
        # test and the cut are C calls over the chunk, not a bytecode loop (a 100,000-file
        # page is most of a full query's time).
        rel = itemgetter(slice(cut, None))
        step = CHUNK_BARE if names_only else CHUNK
        while i < stop and len(out) < want:
            if i > q.pos and perf_counter() > until:
                break
            end = min(stop, i + want - len(out), i + step)
            chunk = cands[i:end]
            i = end
            inside = chunk if q.inside else compress(
                chunk, map(str.startswith, chunk, repeat(prefix)))
            if names_only:
                out += map(rel, inside)
            else:
                out += [_describe(p[cut:], entries.get(p), fields) for p in inside]
    else:
        look = i + CHUNK_FILTERED
        while i < stop:
            if i >= look:
                if perf_counter() > until:
                    break
                look = i + CHUNK_FILTERED
            path = cands[i]
            i += 1
            if not path.startswith(prefix):
                continue
            rel = path[cut:]
            if match is not None and match(rel) is None:
                continue
            if suffixes:
                dot = rel.rfind(".")
                if dot < 0 or rel.rfind("/") > dot or rel[dot + 1:].lower() not in suffixes:
                    continue
            s = entries.get(path)
            if types:
                kind = "unknown" if s is None or s == UNKNOWN else _FMT.get(
                    file_format(s), "other")
                if s is None or kind not in types:
                    continue
            out.append(rel if names_only else _describe(rel, s, fields))
            if len(out) >= want:
                break
    q.scanned += i - q.pos
    q.pos = i
    return out, len(out) >= want or q.done


def _describe(rel: str, s: Stat | None, fields: tuple[str, ...]) -> dict[str, Any]:
    if s is None:  # deleted since the clock (a `since` query)
        d: dict[str, Any] = {"name": rel, "exists": False}
        return {k: d.get(k) for k in fields if k in d}
    if s == UNKNOWN:
        kind, size, mtime, ino = "unknown", None, None, None
    else:
        mode, _, ino, size, mtime, _ = stat_fields(s)
        kind = _FMT.get(mode & 0o170000, "other")
        if kind == "dir":
            size = mtime = None
    full = {"name": rel, "exists": True, "type": kind, "size": size, "mtime_ns": mtime,
            "ino": ino}
    return {k: full[k] for k in fields}


# fs.query's file: the `fields` asked for (a deleted one: only name and exists), or with
# `fields: ["name"]` the plain name.
FILE = {"name?": str, "exists?": bool, "type?": Literal[TYPES], "size?": int | None,  # type: ignore[valid-type]
        "mtime_ns?": int | None, "ino?": int | None, "name_bytes?": bytes}


class QueryOps:
    """fs.query over the watcher's index (`WatcherHost`), with its open cursors."""

    def __init__(self, w: WatcherHost) -> None:
        self.w = w
        self.cursors: dict[str, Query] = {}
        # queries under way past their first slice, taking turns a slice a loop turn
        self.running: deque[tuple[Call, Query, list[Any]]] = deque()
        self.waiting: deque[tuple[Call, Callable[[], Query]]] = deque()  # for a place
        self._turn_due = False
        self.queries = 0
        self.pages = 0
        self.expired = 0
        self.busy = 0  # queries refused, MAX_RUNNING under way and MAX_WAITING in line
        self.awaiting_walk = 0  # queries asked while the watches are placed anew and walked
        self.undecodable = 0  # names answered with their bytes beside them (wire_items)

    @op("fs.query", args={"path": (str, None), "glob": ((str, list), None),
                          "suffix": ((str, list), None), "type": ((str, list), None),
                          "since": (list, None), "fields": (list, None),
                          "max": (int, 10_000), "cursor": (str, None)},
        idempotent=True, timeout_ms=30_000, checked=False,
        result={"files": list[OneOf(str, FILE)], "clock": tuple[str, int, int],
                "fresh_instance": bool, "cursor": str | None, "more": bool, "scanned": int},
        errors=("watch_not_found", "resource_exhausted", "forbidden", "busy", "not_found",
                "not_a_directory"))
    def _op_query(self, call: Call, path: str | None, glob: str | list | None,
                  suffix: str | list | None, type: str | list | None, since: list | None,
                  fields: list | None, max: int, cursor: str | None) -> Any:
        """Files of a watched tree from memory: glob, suffix, type, since a clock; paged."""
        self._expire()
        if not 1 <= max <= MAX_PAGE:
            raise fail("bad_args", f"fs.query: max must be in [1, {MAX_PAGE}]")
        if cursor is not None:
            if any(v is not None for v in (path, glob, suffix, type, since, fields)):
                raise fail("bad_args", "fs.query: a cursor continues a query; give it alone "
                           "(and max)")
            q = self.cursors.pop(cursor, None)
            if q is None:
                raise fail("bad_args", "fs.query: unknown or expired cursor; query again",
                           detail={"cursor": cursor})
            q.max = max
            return self._admit(call, lambda: q)
        if path is None:
            raise fail("bad_args", "fs.query: give `path` (a watched directory) or a "
                       "`cursor`")
        filt = Filter.build(glob, suffix, type)
        chosen = tuple(fields) if fields else DEFAULT_FIELDS
        if not all(isinstance(f, str) and f in FIELDS for f in chosen):
            raise fail("bad_args", f"fs.query: fields must be among {FIELDS}")
        clock = Clock.from_wire(since) if since is not None else None
        w = self.w
        if w.obs is None:
            raise fail("resource_exhausted", "watching is off: the watcher runs in its "
                       "cache_only fallback", detail={"fallback": "cache_only"})
        absolute = w.roots.absolute(path)

        def begin(real: str) -> Any:
            def make() -> Query:
                q = self._start(path, real, filt, chosen, clock, max)
                q.sid = call.sid
                return q

            return self._admit(call, make)

        def resolve() -> Any:  # (`f.txt/..` names no directory: climb_checked)
            if w.roots.on_slow(absolute):  # resolved where a stalled mount may wait
                def resolved() -> str:
                    climb_checked(absolute, path)
                    return w.roots.resolve(absolute)

                w.remote.submit(resolved, lambda real: real).then(
                    lambda job: settle(lambda: begin(job.result())))
                return DEFERRED
            climb_checked(absolute, path)
            return begin(w.roots.resolve_fast(path))

        def settle(step: Callable[[], Any]) -> None:
            if call.answered:  # (its deadline passed meanwhile: the runtime answered it)
                return
            try:
                got = step()
            except MoorageError as exc:
                call.fail(exc)
                return
            if got is not DEFERRED:
                call.reply(got)

        if w.driving.recreating or w.driving.polling_placements:
            # the watches are being placed anew and walked: the index is whole after that
            # (as many wait for it as may wait in line after it)
            if self.awaiting_walk >= MAX_WAITING:
                self.busy += 1
                raise fail("busy", f"fs.query: {MAX_WAITING} queries wait for the walk of "
                           "the watches placed anew; retry", retry_after_ms=BUSY_RETRY_MS,
                           detail={"awaiting_walk": self.awaiting_walk})
            self.awaiting_walk += 1

            def walked() -> None:
                self.awaiting_walk -= 1
                settle(resolve)

            w.driving.after_resync(walked)
            return DEFERRED
        return resolve()

    def _start(self, path: str, real: str, filt: Filter, chosen: tuple[str, ...],
               since: Clock | None, max: int) -> Query:
        w = self.w
        below = real.rstrip("/") + "/"
        if not any(x.path == real or x.covers(real) or x.path.startswith(below)
                   for x in w.watches):
            raise fail("watch_not_found", f"fs.query: no watch covers {path}; fs.watch it "
                       "first", detail={"path": path})
        if not any(x.path == real for x in w.watches) and \
                any(x.covers(real) for x in w.watches):
            # inside a watch: the index says what it is (told, as the events are)
            s = w.index.entries.get(real)
            if s is None:
                raise fail("not_found", f"fs.query: {path} is not in the watched tree",
                           detail={"path": path})
            if s != UNKNOWN and _FMT.get(file_format(s)) != "dir":
                raise fail("not_a_directory", f"fs.query: {path} is not a directory",
                           detail={"path": path})
        journal = w.journal
        now = journal.clock().to_wire()
        fresh = since is None or since.instance != journal.instance or \
            since.seq > journal.seq or since.seq < journal.first_seq - 1
        self.queries += 1
        if fresh:
            return Query(real, filt, chosen, now, True, w.index.below(real), max, inside=True)
        assert since is not None
        return Query(real, filt, chosen, now, False, journal.paths_since(since.seq), max)

    def _slice(self, q: Query, got: list[Any]) -> bool:
        """One slice of `q`'s page into `got`; whether the page is complete."""
        f = q.filter
        names_only = q.fields == ("name",)
        budget = SCAN_SLICE if (f.match or f.suffixes or f.types or not names_only) \
            else SCAN_SLICE_BARE
        more, full = page(q, self.w.index.entries, budget, q.max - len(got),
                          perf_counter() + SLICE_S)
        got.extend(more)
        return full

    def _admit(self, call: Call, make: Callable[[], Query]) -> Any:
        """A query under way now if fewer than MAX_RUNNING are (its first slice at once when
        it is the only one), else in line for a place (at most MAX_WAITING: `busy` past
        them). `make` takes its candidates when it starts: the index as it is then."""
        if len(self.running) < MAX_RUNNING:
            q, got = make(), []
            if not self.running and self._slice(q, got):
                return self._answer(q, got)
            self.running.append((call, q, got))
            self._turn_later()
            return DEFERRED
        if len(self.waiting) >= MAX_WAITING:
            self.busy += 1
            raise fail("busy", f"fs.query: {MAX_RUNNING} queries are under way and "
                       f"{MAX_WAITING} wait; retry", retry_after_ms=BUSY_RETRY_MS,
                       detail={"running": len(self.running), "waiting": len(self.waiting)})
        self.waiting.append((call, make))
        return DEFERRED

    def _turn_later(self) -> None:
        if not self._turn_due:
            self._turn_due = True
            self.w.loop.call_later(0, self._turn)

    def _turn(self) -> None:
        """One slice of the query whose turn it is; then a query in line takes a place that
        came free."""
        self._turn_due = False
        if self.running:
            call, q, got = self.running.popleft()
            if call.answered:  # (its deadline passed: the runtime answered it)
                pass
            elif self._slice(q, got):
                call.reply(self._answer(q, got))
            else:
                self.running.append((call, q, got))
        while self.waiting and len(self.running) < MAX_RUNNING:
            call, make = self.waiting.popleft()
            if call.answered:
                continue
            try:
                self.running.append((call, make(), []))
            except MoorageError as exc:  # (its scope gone meanwhile, say)
                call.fail(exc)
        if self.running:
            self._turn_later()

    def _answer(self, q: Query, files: list[Any]) -> dict[str, Any]:
        self.pages += 1
        self.undecodable += wire_items(files, "name")
        cursor = None
        if not q.done:
            mine = [c for c, o in self.cursors.items() if o.sid == q.sid]
            for c in mine[:max(0, len(mine) - MAX_CURSORS_PER_CLIENT + 1)]:
                del self.cursors[c]  # (the client's oldest: another's are not its to end)
                self.expired += 1
            while len(self.cursors) >= MAX_CURSORS:
                self.cursors.pop(next(iter(self.cursors)))
                self.expired += 1
            cursor = secrets.token_hex(8)
            q.touched = time.monotonic()
            self.cursors[cursor] = q
        return {"files": files, "clock": q.clock, "fresh_instance": q.fresh,
                "cursor": cursor, "more": cursor is not None, "scanned": q.scanned}

    def _expire(self) -> None:
        now = time.monotonic()
        for c in [c for c, q in self.cursors.items() if now - q.touched > CURSOR_TTL_S]:
            del self.cursors[c]
            self.expired += 1

    def stats(self) -> dict[str, Any]:
        return {"queries": self.queries, "pages": self.pages, "open_cursors": len(self.cursors),
                "expired_cursors": self.expired, "undecodable_names": self.undecodable,
                "running": len(self.running), "waiting": len(self.waiting), "busy": self.busy,
                "awaiting_walk": self.awaiting_walk}

