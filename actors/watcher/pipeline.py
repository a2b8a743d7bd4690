"""From raw observer events to published, journaled `fs.event` messages.

  feed   raw events in arrival order: cookies are answered (after everything before them has
         been published), the cache forgets what changed, a move becomes deleted(src) +
         created(dest), and the rest goes into the coalescer
  flush  `settle_s` after the first event of a window (a fixed window, so a steady writer
         cannot postpone publication; 0: at once): each
         coalesced path is matched against the watches (dropped when nobody watches it),
         lstat'ed (not on a slow file system, `slow_check`: a stat there may never return,
         so its events carry no size or mtime and the index holds UNKNOWN for them, which
         a resync's diff reports again), tagged `origin: self` when it is the actor's own
         write, stamped with the
         next clock in the journal, applied to the told-state index, and published; a path
         whose events cancelled out (created + deleted) but that the index holds (a resync
         walk reported it before its own `created` event came through) is published deleted
  telling  a directory gone while the index holds paths below it that no event of their own
         tells gone (moved out of every watch: a delete-to-trash, or into an excluded
         directory) has each of them published deleted before the flush, deepest first,
         TELL_SLICE a loop turn (`_Telling`); the flush, what comes meanwhile and the cookies
         wait behind it
  resync replaces the index with a fresh walk and publishes resync_begin, the diff (events
         marked synthetic) and resync_end, all journaled like live events

One message on `fs.event` per flush: {"events": [event, ...]} (at most `chunk` events each; a
big resync is several messages), packed here once: the journal keeps those bytes and the
stream sends and retains the same object (`publish` is given an envelope.Packed). An
event is
  {clock: [instance, epoch, seq], kind: created|modified|deleted, path, type: file|dir|...,
   origin: self|external, watches: [watch id...], size?, mtime_ns?, moved_from?, moved_to?,
   synthetic?}
or a marker {clock, kind: resync_begin|resync_end|warning, reason, ...}. A str field that is
not valid UTF-8 (a file name's stray bytes: snapshot.py) goes out readable, with its exact
bytes beside it (`path_bytes`, `moved_from_bytes`...: snapshot.wire_fields); only a message
that holds one is packed so, the others as they are.

A batch is journaled, then published, message by message; the journal's seq moves past a
message once it is out. A publish that fails (SendFailed) leaves the journal at the last
message that went out (no seq used up, no batch kept that nobody saw), and a flush's paths
it did not tell hold UNKNOWN in the index, with a resync asked for (`on_lost`), whose diff
tells them; a resync's walk is the index only once its diff is out.

Nothing here touches sockets or the observer: `publish`, `before_publish` (the actor's
write-ahead log, given the paths of each batch), `call_later`, `now` and `lstat` are
injected, so the P10 benchmark and the unit tests drive it in memory.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Container, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

import msgpack
from loguru import logger

from moorage.actors.runtime.beat import progress
from moorage.actors.watcher.cache import FileCache, StatKey
from moorage.actors.watcher.coalesce import CREATED, DELETED, MODIFIED, Coalescer
from moorage.actors.watcher.cookies import COOKIE
from moorage.actors.watcher.journal import Journal
from moorage.actors.watcher.observer import Raw
from moorage.actors.watcher.snapshot import (
    UNKNOWN,
    Index,
    Stat,
    StatFields,
    diff,
    file_format,
    is_dir,
    lstat_fields,
    stat_fields,
    wire_fields,
)
from moorage.actors.watcher.statahead import StatAhead
from moorage.actors.watcher.watches import Watches
from moorage.protocol.envelope import Packed

# The collector's thresholds in the watcher's process (`tune_gc`, applied by the actor at
# start and by the P10 benchmark). Every event is a tracked dict while it is built and
# published, and a full collection walks the whole heap (the index's sets, whatever else
# the process holds): with the default third threshold (10) one ran every few thousand
# events and took about half of the pipeline's time. Raised, a full collection runs after a
# thousand second-generation ones; the pipeline makes no reference cycles for it to find.
GC_THRESHOLDS = (700, 10, 1000)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# A flush's event, as `pack_events` packs it without a dict: (kind, path, type, origin,
# watches, size, mtime_ns, seq, extra_key, extra_value); size None: no size and mtime_ns,
# extra_key None: no moved_from / moved_to.
Row = tuple[str, str, str, str, tuple[str, ...], int | None, int | None, int, str | None,
            str | None]


def _as_dict(row: Row | dict[str, Any], instance: str, epoch: int) -> dict[str, Any]:
    if type(row) is not tuple or len(row) != 10:
        return row  # type: ignore[return-value]  # (a dict, or a value packed as it is)
    kind, path, typ, origin, watches, size, mtime_ns, seq, key, value = row
    ev: dict[str, Any] = {"kind": kind, "path": path, "type": typ, "origin": origin,
                          "watches": watches}
    if size is not None:
        ev["size"] = size
        ev["mtime_ns"] = mtime_ns
    ev["clock"] = (instance, epoch, seq)
    if key is not None:
        ev[key] = value
    return ev


def pack_events_python(rows: list[Any], start: int, stop: int, instance: str, epoch: int,
                       packb: Callable[[Any], bytes]) -> bytes:
    """msgpack of {"events": rows[start:stop]}, each row a dict or a `Row` (the map it
    stands for, clock [instance, epoch, seq]): the reference of _cevents.c's pack_events."""
    return packb({"events": [_as_dict(r, instance, epoch) for r in rows[start:stop]]})


class SendFailed(Exception):
    """A publish failed: the first `sent` events went out, the rest did not, and the
    journal's seq is that of the last one out (the cause is chained)."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"publishing failed after {sent} events")
        self.sent = sent


def _seq_of(ev: Row | dict[str, Any]) -> int:
    return ev[7] if type(ev) is tuple else ev["clock"][2]  # type: ignore[index,return-value]


pack_events = pack_events_python
if os.environ.get("MOORAGE_WATCHER_CORE") != "python":
    try:  # a flush's events packed without a dict each (actors/watcher/_cevents.c)
        from moorage.actors.watcher._cevents import pack_events
    except ImportError:
        pass
EVENTS_CORE: str = "python" if pack_events is pack_events_python else "compiled"
"""How this process packs a flush's events (the watcher's sys.info says it, `events_core`)."""

_KIND = {"created": CREATED, "deleted": DELETED, "modified": MODIFIED, "attrib": MODIFIED}
_TYPES = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}
SELF_WRITE_TTL = 10.0
# The loop's timers have a resolution of 1 ms and fire at the next whole millisecond: the
# settle window asks for one less, so it closes `settle_s` after its first event at the
# latest, instead of up to a millisecond after.
TIMER_SLACK_S = 0.001
_NONE: dict = {}  # (no stat-ahead: nothing is ready)
# Deletions a telling publishes per loop turn (`_Telling`): about what a turn drains of the
# observer (driving.DRAIN_CHUNK), a few ms.
TELL_SLICE = 5000
# Directories told gone with their contents kept in mind (the newest): a deletion that comes
# later for a path below one, which the index no longer holds, was told with it.
TOLD_KEEP = 1024


def _under(path: str, dirs: Container[str]) -> bool:
    """Whether a directory above `path` is in `dirs`."""
    while True:
        path = path.rpartition("/")[0]
        if not path:
            return False
        if path in dirs:
            return True


class _Telling:
    """A flush held back while the paths the index holds below directories gone unseen
    (`Pipeline._gone_unseen`) are told deleted, TELL_SLICE a loop turn: a node_modules moved
    to the trash is 50,000 of them. The flush goes out after them (its own deletion of
    those directories last), then what came meanwhile, then the cookies that waited."""

    __slots__ = ("batch", "pos", "untold")

    def __init__(self, batch: tuple[Any, ...], untold: list[str]) -> None:
        self.batch = batch  # what `Pipeline._publish` takes
        self.untold = untold  # each path after everything below it
        self.pos = 0  # the next to tell


class Pipeline:
    def __init__(
        self,
        journal: Journal,
        watches: Watches,
        index: Index,
        publish: Callable[[Packed], Any],
        call_later: Callable[[float, Callable[[], None]], Any],
        *,
        settle_s: float = 0.02,
        cache: FileCache | None = None,
        on_cookie: Callable[[str, str], None] | None = None,
        before_publish: Callable[[list[str]], None] | None = None,
        chunk: int = 1000,
        ignore: tuple[str, ...] = (),
        now: Callable[[], float] = time.monotonic,
        lstat: Callable[[str], StatFields | None] = lstat_fields,
        slow_check: Callable[[], Callable[[str], bool] | None] = lambda: None,
        ahead: StatAhead | None = None,
    ) -> None:
        self.journal = journal
        self.watches = watches
        self.index = index
        self.publish = publish
        self.call_later = call_later
        self.settle_s = settle_s
        self.cache = cache
        self.on_cookie = on_cookie or (lambda _path, _kind: None)
        self.before_publish = before_publish
        # Given the bodies of the batches the journal let go (the stream's retention lets
        # them go too: journal.py).
        self.retired: Callable[[list[bytes]], None] | None = None
        self.chunk = chunk
        # Directories whose changes are the actor's own bookkeeping (its state directory):
        # reporting them would make every flush write the log that causes the next flush.
        self.ignore = tuple(p.rstrip("/") + "/" for p in ignore)
        self.now = now
        self.lstat = lstat
        # What is on a slow file system (mounts.MountTable.slow_check): None, the usual
        # answer, while nothing slow is mounted.
        self.slow_check = slow_check
        # The window's lstats made on a thread while it is open (statahead.py); None: each
        # is made by the flush.
        self.ahead = ahead
        self.statted_ahead = 0  # events whose stat came from `ahead`
        self.unstatted = 0  # events published without a stat: their path was on a slow fs
        self.orphans_dropped = 0  # created and gone with their directory before the flush
        self.parents_filled = 0  # directories reported before their own event (_arrived_parents)
        self.coalescer = Coalescer()
        # Set by the actor: `pull` takes what the observer holds into the window as it
        # closes, `after_flush` sees to what is left once a flush closed it, `on_lost`
        # asks for a resync (a flush's events that could not be published: `_untold`).
        self.pull: Callable[[], None] | None = None
        self.after_flush: Callable[[], None] | None = None
        self.on_lost: Callable[[str], Any] | None = None
        self.undecodable = 0  # events sent with a name's bytes beside it (wire_fields)
        self.send_failures = 0  # flushes or markers whose publishing failed (SendFailed)
        self.self_writes: dict[str, tuple[StatKey | None, float]] = {}
        self._timer: Any = None
        self.last_flush = -1e9
        self.published = 0
        self.batches = 0
        self.fed = 0
        self.told_deletes = 0  # cancelled-out paths published deleted: the index held them
        self.told_below = 0  # deleted with a directory gone unseen (`_Telling`)
        self.told_with_dir = 0  # deletions not published again: told with their directory
        self._dirs_gone = False  # the window has a directory deleted or moved away
        self._telling: _Telling | None = None
        self._told_dirs: dict[str, None] = {}  # the newest TOLD_KEEP tops of tellings
        self._cookies: list[tuple[str, str]] = []  # waiting for the telling (`_resume`)

    # --- own writes -------------------------------------------------------------------

    def note_self_write(self, path: str, key: StatKey | None) -> None:
        """The actor wrote `path` (key None: a temporary file, any event on it is ours)."""
        self.self_writes[path] = (key, self.now() + SELF_WRITE_TTL)

    def expire_self_writes(self) -> None:
        now = self.now()
        for p in [p for p, (_, t) in self.self_writes.items() if t < now]:
            del self.self_writes[p]

    # --- live events ------------------------------------------------------------------

    def feed(self, raws: list[Raw], arrived: float | None = None) -> None:
        """`raws` in arrival order; `arrived` is when the first of them reached the observer
        (the settle window opens then; None: now)."""
        # The hot path of P10: the coalescer's first event for a path (the common case) is
        # inlined; its rules (Coalescer.add) run only when a path changes again.
        add = self.coalescer.add
        pending = self.coalescer.pending
        kinds = _KIND
        cache = self.cache if self.cache is not None and self.cache.entries else None
        ignore = self.ignore
        # (at settle 0 the flush follows at once: nothing to stat ahead of it)
        want: list[str] | None = [] if self.ahead is not None and self.settle_s > 0 else None
        gone_dirs: list[str] = []  # (their cached files dropped once, after the batch)
        dir_gone = False  # a directory deleted or moved away: the flush looks below it
        self.fed += len(raws)
        for etype, src, dest, d in raws:
            if ignore and (src.startswith(ignore) or (dest and dest.startswith(ignore))):
                continue
            if COOKIE in src or (dest and COOKIE in dest):
                if want:
                    # Handed over before the flush takes the window: a path changed again
                    # in this batch (a directory made, then another renamed over it) may
                    # hold a stat taken ahead for its earlier change, which only a later
                    # want marks as no longer current. The flush stats these itself.
                    self._want(want)
                    want = []
                if dir_gone:  # (the window the flush takes holds it)
                    self._dirs_gone = True
                    dir_gone = False
                self.flush()
                pending = self.coalescer.pending  # the flush took the old window
                if self._telling is None:
                    self.on_cookie(dest or src, etype)
                else:  # answered once what the telling holds back is out (`_resume`)
                    self._cookies.append((dest or src, etype))
                continue
            kind = kinds.get(etype)
            if kind is not None:
                if src in pending:
                    add(src, kind, d)
                else:
                    pending[src] = [kind, d, None]
                if want is not None and kind != DELETED:
                    want.append(src)
                if d and kind == DELETED:
                    dir_gone = True
                if cache is not None:
                    if d and kind == DELETED:
                        gone_dirs.append(src)
                    else:
                        cache.changed(src)
            elif etype == "moved":
                add(src, DELETED, d, dest)
                add(dest, CREATED, d, src)
                if want is not None:
                    want.append(dest)
                if d:
                    dir_gone = True  # (its path made again in this window: `replaced`)
                if cache is not None:
                    if d:
                        gone_dirs.append(src)
                    cache.changed(src)
                    cache.changed(dest)
        if gone_dirs and cache is not None:
            cache.invalidate_trees(gone_dirs)
        if dir_gone:
            self._dirs_gone = True
        if want:
            self._want(want)
        if not self.coalescer.pending and not self.coalescer.cancelled:
            return
        if self.settle_s <= 0:
            self.flush()
        elif self._timer is None:  # the window opens with its first event, never slides
            waited = 0.0 if arrived is None else max(0.0, self.now() - arrived)
            self._timer = self.call_later(max(0.0, self.settle_s - waited - TIMER_SLACK_S),
                                          self._on_timer)

    def _want(self, paths: list[str]) -> None:
        assert self.ahead is not None
        slow = self.slow_check()
        if slow is not None:
            paths = [p for p in paths if not slow(p)]
        self.ahead.want(paths)

    def hold(self) -> None:
        """Drop what is pending without publishing it (a resync's walk starts: it covers
        all of it), and close the window. A telling under way goes too: what it has not
        told is still in the index, so the resync's diff tells its deletion; the cookies
        that waited behind it belong to syncs the resync answers (cookies.py)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.coalescer.clear()
        self._telling = None
        self._cookies = []
        self._dirs_gone = False
        if self.ahead is not None:
            self.ahead.take_window()  # (dropped with the window)

    @property
    def window_open(self) -> bool:
        return self._timer is not None

    def _on_timer(self) -> None:
        self._timer = None
        if self.pull is not None:
            self.pull()
        self.flush()

    def flush(self) -> int:
        """Publish everything pending now; returns how many events went out. While a
        telling goes on (`_Telling`), nothing: it publishes what is pending once done."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.last_flush = self.now()
        if self.after_flush is not None:
            self.after_flush()  # (it only schedules: nothing runs inside this flush)
        if self._telling is not None:
            return 0
        cancelled = self.coalescer.take_cancelled()
        renamed = self.coalescer.take_renamed_away()
        replaced = self.coalescer.take_replaced()
        items = self.coalescer.take()
        done, wanted = self.ahead.take_window() if self.ahead is not None else (_NONE, _NONE)
        if not items and not cancelled:
            return 0
        if self._dirs_gone:
            self._dirs_gone = False
            tops = self._gone_unseen(items, cancelled, replaced)
            if tops:
                told = self._told_dirs
                told.update(dict.fromkeys(tops))
                while len(told) > TOLD_KEEP:
                    del told[next(iter(told))]
                return self._tell_on(_Telling(
                    (cancelled, replaced, items, done, wanted, renamed), self._below(tops)))
        return self._publish(cancelled, replaced, items, done, wanted, renamed)

    # --- what a directory held when it went away unseen ------------------------------------

    def _gone_unseen(self, items: dict[str, list], cancelled: dict[str, bool],
                     replaced: set[str]) -> set[str]:
        """The directories this window took away while the index still holds paths below
        them that no event of their own tells gone: one moved out of every watch (the
        kernel reports the directory alone; watchdog adds each subdirectory, never a file),
        made again in the window (`replaced`) or cancelled out (`_told_gone`). After an
        `rm -rf` nothing is left below (each path had its event), and a directory moved
        within the watches has a deletion with `moved_to` for each path below (watchdog's):
        neither is one. Outermost only: one inside another is told with it."""
        children = self.index.children

        def unseen(p: str) -> bool:
            kids = children.get(p)
            return bool(kids) and not any(
                (ev := items.get(k)) is not None and ev[0] == DELETED and ev[2] is not None
                for k in kids)

        gone = [p for p, (kind, _d, hint) in items.items()
                if kind == DELETED and hint is None and unseen(p)]
        gone += [p for p in replaced if unseen(p)]
        gone += [p for p in cancelled if p not in items and unseen(p)]
        tops = set(gone)
        return {p for p in tops if not _under(p, tops)}

    def _below(self, tops: set[str]) -> list[str]:
        """What the index holds below `tops`, each path after everything below it (the
        order `rm -rf` deletes in: a consumer never hears of a directory's deletion while
        it still believes something is in it). A pass over the directories at C speed: a
        set's copy for each and an intersection with the index's directories."""
        children = self.index.children
        dirs = children.keys()
        order: list[str] = []  # each path after its directory
        for top in tops:
            stack = [top]
            while stack:
                kids = children.get(stack.pop())
                if kids:
                    order += kids
                    stack += kids & dirs
        order.reverse()
        return order

    def _tell_on(self, t: _Telling) -> int:
        """Tell the next TELL_SLICE deletions of `t`; once the last is told, publish the
        flush it holds back. Returns how many events went out."""
        n = self._tell(t)
        if t.pos < len(t.untold):
            self._telling = t
            self.call_later(0, lambda: self._resume(t))
            return n
        self._telling = None
        return n + self._publish(*t.batch)

    def _resume(self, t: _Telling) -> None:
        """The next turn of a telling; at its end, what came meanwhile, then the cookies
        that waited for it."""
        if self._telling is not t:
            return  # (dropped by `hold`: the resync tells the rest)
        self._tell_on(t)
        if self._telling is None:
            self.flush()
        if self._telling is None and self._cookies:
            cookies, self._cookies = self._cookies, []
            for path, etype in cookies:
                self.on_cookie(path, etype)

    def _tell(self, t: _Telling) -> int:
        """One slice of `t`: a deletion for each path the index still holds (an unwatch
        forgets paths meanwhile), which it then forgets."""
        entries = self.index.entries
        discard = self.index.discard
        matching = self.watches.matching
        journal = self.journal
        inst, epoch, seq = journal.instance, journal.epoch, journal.seq
        out: list[Any] = []
        paths: list[str] = []
        stop = min(len(t.untold), t.pos + TELL_SLICE)
        for path in t.untold[t.pos:stop]:
            s = entries.get(path)
            if s is None:
                continue
            ids = matching(path)
            if ids:
                seq += 1
                typ = "unknown" if s == UNKNOWN else _TYPES.get(file_format(s), "other")
                out.append((DELETED, path, typ, "external", ids, None, None, seq, None, None))
                paths.append(path)
            discard(path)
        t.pos = stop
        self.told_below += len(out)
        if not out:
            return 0
        try:
            self._send(out, paths, (inst, epoch))
        except SendFailed as exc:
            self._untold(paths[exc.sent:], exc)
            return exc.sent
        return len(out)

    def _publish(self, cancelled: dict[str, bool], replaced: set[str],
                 items: dict[str, list], done: Mapping[str, tuple[int, StatFields | None]],
                 wanted: Mapping[str, int], renamed: AbstractSet[str] = frozenset()) -> int:
        """A window's events: stat'ed, stamped, applied to the index and published
        (`renamed`: the cancelled paths whose deletion was a rename away)."""
        # The hot path of P10: `Watches.matching`'s per-directory memo, `Index.set` and the
        # journal's stamping are inlined here, sharing one split of the path and one pass.
        watches = self.watches
        matching = watches.matching
        by_dir = None if watches.has_excludes else watches.by_dir
        entries = self.index.entries
        children = self.index.children
        remove = self.index.remove
        lstat = self.lstat
        slow = self.slow_check()
        mine = self.self_writes
        told = self._told_dirs
        types = _TYPES
        journal = self.journal
        inst, epoch, seq = journal.instance, journal.epoch, journal.seq
        out: list[dict[str, Any]] = []
        paths: list[str] = []
        statted_ahead = 0
        roots = {w.path for w in watches}
        held: str | None = None  # the last path found to be a directory the index holds
        if cancelled or replaced:
            self._told_gone(cancelled, items, out, replaced, renamed, slow)
            for ev in out:
                seq += 1
                ev["clock"] = (inst, epoch, seq)
                paths.append(ev["path"])
        for path, (kind, d, hint) in items.items():
            parent = path.rpartition("/")[0]
            ids = by_dir.get(parent) if by_dir is not None else None
            if ids is None:
                ids = matching(path)
            if not ids:
                continue
            if kind == DELETED:
                if told and path not in entries and _under(path, told):
                    # Told gone already, with a directory above it, by a telling (watchdog's
                    # own event for each subdirectory of a directory moved out comes after
                    # it, in this window or a later one).
                    self.told_with_dir += 1
                    continue
                seq += 1
                out.append((kind, path, "dir" if d else "file",
                            "self" if mine and path in mine and mine[path][0] is None
                            else "external", ids, None, None, seq,
                            "moved_to" if hint else None, hint))
                paths.append(path)
                remove(path)
                held = None  # (it may have been that directory)
                continue
            st = None
            if slow is None or not slow(path):
                ready = done.get(path)
                if ready is not None and wanted.get(path) == ready[0]:
                    st = ready[1]
                    statted_ahead += 1
                else:
                    ready = None
                    st = lstat(path)  # (None: gone again already, its deletion follows)
                if parent != held:
                    if parent in entries or (parent or "/") in roots:
                        held = parent
                    else:
                        # Its directory is not in the index: gone before this (earlier in this
                        # flush, or before) with what the index held under it, or arrived by an
                        # event still on its way (a move's, which takes the lane). A stat taken
                        # ahead may be older than that: it is taken again.
                        if st is not None and ready is not None:
                            st = lstat(path)
                        if st is None:
                            # Gone with its directory: no deletion of this path follows (the
                            # kernel reported its directory's), so neither the event nor the
                            # index keeps it.
                            self.orphans_dropped += 1
                            continue
                        if path not in entries:
                            for ev in self._arrived_parents(parent, roots, items, slow):
                                seq += 1
                                ev["clock"] = (inst, epoch, seq)
                                out.append(ev)
                                paths.append(ev["path"])
            else:
                self.unstatted += 1
            seq += 1
            if st is None:
                out.append((kind, path, "dir" if d else "file", "external", ids, None, None,
                            seq, "moved_from" if hint else None, hint))
                s: Stat = UNKNOWN
            else:
                s, mode, size, mtime_ns = st
                origin = "external"
                if mine and path in mine:
                    key = mine[path][0]
                    if key is None or key == stat_fields(s)[1:]:
                        origin = "self"
                out.append((kind, path, types.get(mode & 0o170000, "other"), origin, ids, size,
                            mtime_ns, seq, "moved_from" if hint else None, hint))
            paths.append(path)
            if path not in entries:
                kids = children.get(parent)
                if kids is None:
                    children[parent] = {path}
                else:
                    kids.add(path)
            entries[path] = s
        self.statted_ahead += statted_ahead
        if not out:
            return 0
        try:  # (stamped up to `seq`: the journal is there once they are out)
            self._send(out, paths, (inst, epoch))
        except SendFailed as exc:
            self._untold(paths[exc.sent:], exc)
            return exc.sent
        return len(out)

    def _untold(self, paths: list[str], exc: SendFailed) -> None:
        """The index took these paths' changes, but their events were not published: each
        holds UNKNOWN now, which matches nothing on disk, and the resync asked for reports
        its state as it then is (its deletion included). Without `on_lost` (the pipeline
        in memory: tests, the benchmark) the failure is raised."""
        set_ = self.index.set
        for p in paths:
            set_(p, UNKNOWN)
        self.send_failures += 1
        if self.on_lost is None:
            raise exc
        logger.opt(exception=exc).error("watcher: {} events not published; a resync tells "
                                        "them", len(paths))
        self.on_lost("publish_failed")

    def _arrived_parents(self, parent: str, roots: set[str], items: dict[str, list],
                         slow: Callable[[str], bool] | None) -> list[dict[str, Any]]:
        """Created events for the directories between a path that exists and what the index
        holds or this flush brings, which it does not: a directory's own arrival (a move,
        whose events take the lane and watchdog's grouper) can come after events inside it
        read later. They exist (the path in them does), so they are reported now, and the
        index stays one tree: a path whose directory it never held would outlive that
        directory's removal, which forgets what hangs below it. The late event then
        repeats a created one."""
        entries = self.index.entries
        chain: list[str] = []
        while parent and parent not in entries and parent not in roots:
            pending = items.get(parent)
            if pending is not None and pending[0] != DELETED:
                break  # (its own event is in this flush, after this one)
            chain.append(parent)
            parent = parent.rpartition("/")[0]
        out: list[dict[str, Any]] = []
        for d in reversed(chain):
            ids = self.watches.matching(d)
            st = None if not ids or (slow is not None and slow(d)) else self.lstat(d)
            if st is None:
                break
            s, mode, size, mtime_ns = st
            out.append({"kind": CREATED, "path": d, "type": _TYPES.get(mode & 0o170000, "other"),
                        "origin": "external", "watches": ids, "size": size,
                        "mtime_ns": mtime_ns})
            self.index.set(d, s)
        self.parents_filled += len(out)
        return out

    def _told_gone(self, cancelled: dict[str, bool], items: dict[str, list],
                   out: list[dict[str, Any]], replaced: set[str], renamed: AbstractSet[str],
                   slow: Callable[[str], bool] | None) -> None:
        """Deletions for paths whose created + deleted cancelled out in this window although
        the subscribers had been told they exist (the index holds them): a resync walk saw
        the file, then its own `created` event, queued behind the walk, met its deletion.
        A cancel-out whose deletion was a rename away (`renamed`) does not say the path is
        gone, though: two files exchanged (`mv --exchange a b`, renameat2's
        RENAME_EXCHANGE) are two renames, a -> b and b -> a, which leave b created then
        renamed away, and b is there. Such a path is looked at first (an lstat; not on a
        slow file system, where it is told gone as before, and a resync's diff corrects
        it): one there is `modified`, with its stat, and stays in the index (`deleted`,
        then `created`, where a directory stands where a file was told, or the other way
        round). And for directories replaced in it (`mv build away && mkdir build`): the
        old one and what was under it are gone, told before the new one's creation."""
        entries = self.index.entries
        gone = [(p, d) for p, d in cancelled.items() if p not in items]  # (not changed since)
        looked = len(gone) if renamed else 0
        gone += [(p, True) for p in replaced if p in items]
        for n, (path, d) in enumerate(gone):
            told = entries.get(path)
            if told is None:  # never told
                continue
            ids = self.watches.matching(path)
            if not ids:
                continue
            kind = ("dir" if is_dir(told) else "file") if told != UNKNOWN else (
                "dir" if d else "file")
            st = self.lstat(path) if n < looked and path in renamed and (
                slow is None or not slow(path)) else None
            if st is not None:
                s, mode, size, mtime_ns = st
                typ = _TYPES.get(mode & 0o170000, "other")
                there = {"path": path, "type": typ, "origin": "external", "watches": ids,
                         "size": size, "mtime_ns": mtime_ns}
                if (typ == "dir") == (kind == "dir"):
                    out.append({"kind": MODIFIED, **there})
                    self.index.set(path, s)
                    continue
                out.append({"kind": DELETED, "path": path, "type": kind,
                            "origin": "external", "watches": ids})
                self.index.remove(path)
                out.append({"kind": CREATED, **there})
                self.index.set(path, s)
                continue
            out.append({"kind": DELETED, "path": path, "type": kind, "origin": "external",
                        "watches": ids})
            self.index.remove(path)
            self.told_deletes += 1

    def _send(self, events: list[Any], paths: list[str] | None = None,
              clock: tuple[str, int] | None = None) -> None:
        """Journal, then publish, `events` (stamped, consecutive from the journal's seq + 1),
        `chunk` to a message; the journal's seq is each message's last once it is out.
        `paths`: theirs, one per event, when every event names one (a flush's). `clock`
        (instance, epoch): given for a flush's, whose events are `Row`s (or dicts) packed by
        `pack_events`; without it they are dicts. SendFailed when one could not be
        published (module doc)."""
        if not events:
            return
        if paths is None:
            paths = [e["path"] for e in events if "path" in e]
        journal = self.journal
        n = self.chunk
        whole = len(paths) == len(events)
        out = 0  # events published
        try:
            if self.before_publish is not None:  # the write-ahead log: before anyone sees them
                self.before_publish(paths)
            for i in range(0, len(events), n):
                j = min(i + n, len(events))
                first, last = _seq_of(events[i]), _seq_of(events[j - 1])
                packed = self._pack(events, i, j, clock)
                gone = journal.keep(first, last, packed, tuple(paths[i:j]) if whole else
                                    tuple(e["path"] for e in events[i:j] if "path" in e))
                if gone and self.retired is not None:  # (first: a publish that raises would
                    self.retired(gone)  # leave them at the stream's head, where the next are not)
                try:
                    self.publish(Packed(packed))
                except Exception:
                    journal.retract(first)
                    raise
                journal.commit(last)
                out = j
                self.batches += 1
        except Exception as exc:
            journal.commit(_seq_of(events[out - 1]) if out else _seq_of(events[0]) - 1)
            self.published += out
            raise SendFailed(out) from exc
        self.published += len(events)

    def _pack(self, events: list[Any], i: int, j: int, clock: tuple[str, int] | None
              ) -> bytes:
        """One message: {"events": events[i:j]}. A str msgpack refuses (not UTF-8: a file
        name's stray bytes) makes it packed again with each event in the wire's form
        (snapshot.wire_fields), copied: the journal keeps the paths as they are."""
        try:
            if clock is not None:
                return pack_events(events, i, j, clock[0], clock[1], _packb)
            return _packb({"events": events[i:j]})
        except UnicodeEncodeError:
            wire = []
            for ev in events[i:j]:
                d = dict(_as_dict(ev, *clock) if clock is not None else ev)
                if wire_fields(d):
                    self.undecodable += 1
                wire.append(d)
            return _packb({"events": wire})

    def marker(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Journal and publish a marker event (a warning, for instance) at once."""
        self.flush()
        ev = self.journal.append({"kind": kind, **fields})
        try:
            self._send([ev])
        except SendFailed as exc:
            self._untold([], exc)
        return ev

    # --- resync -------------------------------------------------------------------------

    def resync(self, reason: str, new: dict[str, Stat], base: Mapping[str, Stat] | None,
               *, changes: list[tuple[str, str, bool]] | None = None,
               index: Index | None = None, **detail: Any) -> dict[str, Any]:
        """Publish the difference between `base` (what subscribers were told; None: nothing
        comparable, a fresh start) and `new` (the walk), framed by resync markers; the index
        becomes `new` once they are out (SendFailed: it stays what it was). What was
        pending in the coalescer is covered by the walk. `changes` (the diff) and `index`
        (built from `new`) may come made already, off the loop."""
        t0 = time.perf_counter()
        self.coalescer.clear()
        epoch = self.journal.new_epoch()
        append = self.journal.append
        matching = self.watches.matching
        mine = self.self_writes
        events = [append({"kind": "resync_begin", "reason": reason, "epoch": epoch,
                          "fresh": base is None, **detail})]
        if changes is None:
            changes = diff(base, new) if base is not None else []
        cache = self.cache
        for n, (kind, path, d) in enumerate(changes):
            if not n & 1023:
                progress()  # a diff of 100,000 paths is longer than one loop turn may be
            ids = matching(path)
            if not ids:
                continue
            ev: dict[str, Any] = {"kind": kind, "path": path, "type": "dir" if d else "file",
                                  "origin": "external", "watches": ids, "synthetic": True}
            if kind == DELETED and base.get(path) == UNKNOWN:  # type: ignore[union-attr]
                ev["type"] = "unknown"
            s = new.get(path)
            if s is not None and not is_dir(s):
                fields = stat_fields(s)
                ev["size"] = fields[3]
                ev["mtime_ns"] = fields[4]
                if mine and path in mine and mine[path][0] == fields[1:]:
                    ev["origin"] = "self"
            events.append(append(ev))
            if cache is not None and cache.entries:
                cache.changed(path)
        n = len(events) - 1
        events.append(append({"kind": "resync_end", "reason": reason, "epoch": epoch,
                              "changes": n, "fresh": base is None, "entries": len(new)}))
        try:
            self._send(events)
        except SendFailed as exc:
            # The index stays what was told before (a part of the diff that went out is
            # told again by the resync that follows: the caller asks for it).
            if not exc.sent:
                self.journal.epoch = epoch - 1
            raise
        if index is not None:  # (told now: the walk is the index)
            self.index.take(index)
        else:
            self.index.replace(new)
        took = round((time.perf_counter() - t0) * 1000, 3)
        self.last_flush = self.now()
        return {"reason": reason, "epoch": epoch, "changes": n, "entries": len(new),
                "fresh": base is None, "diff_ms": took}

    def stats(self) -> dict[str, Any]:
        return {"fed": self.fed, "published": self.published, "messages": self.batches,
                "coalesced_away": self.coalescer.absorbed, "pending": len(self.coalescer),
                "told_deletes": self.told_deletes, "unstatted": self.unstatted,
                "told_below": self.told_below, "told_with_dir": self.told_with_dir,
                "telling": (len(self._telling.untold) - self._telling.pos
                            if self._telling is not None else 0),
                "orphans_dropped": self.orphans_dropped,
                "parents_filled": self.parents_filled,
                "statted_ahead": self.statted_ahead,
                "undecodable": self.undecodable, "send_failures": self.send_failures,
                "stat_ahead": self.ahead.info() if self.ahead is not None else None,
                "settle_ms": self.settle_s * 1000, "self_writes": len(self.self_writes)}
