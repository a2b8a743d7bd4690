"""The watcher's watch ops: fs.watch, fs.unwatch, fs.since, fs.sync (see actor.py for the
table of arguments, replies and errors).

A component of WatcherActor (actor.py), next to driving.py: these ops change what is observed
and ask the driving side for cookies; they never touch the observer's threads directly.

A new watch is placed off the loop (`_place`): watchdog adds its inotify watches by walking
the whole tree, and the walk that is the watch's base reads every entry, which for /usr
(150,000 entries) takes seconds. Both run on the walker thread while the loop serves
requests (sys.ping included) and events; the reply waits until both are done, and the same
fs.watch asked again meanwhile (a resend after a timeout, another client) waits for the same
placement. A path on a pseudo file system (procfs, sysfs...: no inotify events) is refused.
The reply also waits for the walk's entries to be in the index (merged a slice a turn) and
then on disk (`Driving.persist`): they are told state no event told, so no wal generation
has them, and a restart after the answer diffs against them (state.py). A state directory
that refuses the save (a full runtime disk) fails neither fs.watch nor fs.unwatch, whose
watches are in force: the state is given up until a checkpoint rebuilds it, and a restart
meanwhile resyncs fresh (State.save_watches).
A path on a slow file system (NFS, SMB, FUSE: mounts.MountTable) is resolved and checked on
the `remote` workers, whose calls may wait for a stalled server without holding the loop.

A watch is shared by whoever asked for it (watches.py): fs.watch takes the caller's hold, by
its session id, on the watch it answers (placed now, being placed, or placed already), and
fs.unwatch lets go of the caller's hold; the watch goes with its last hold. An fs.unwatch from
a session that holds nothing (a CLI call from another process than the one that watched, an
admin, a client back with a new session id) removes the watch for every holder, and its
answer says so (`held: false`, `dropped`: the holds it took away).
Both answers say how many hold the watch now (`holders`; 0: it is gone).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from moorage.actors.runtime import DEFERRED, Call, op
from moorage.actors.runtime.shapes import Named, OneOf
from moorage.actors.watcher import snapshot
from moorage.actors.watcher.cookies import Sync
from moorage.actors.watcher.files import refuse_climb_past_non_directory
from moorage.actors.watcher.journal import Clock
from moorage.actors.watcher.mounts import pseudo_refusal
from moorage.actors.watcher.observer import ObserverManager, Placement
from moorage.actors.watcher.retry import FS_ERRORS, os_error
from moorage.actors.watcher.snapshot import Index, Stat
from moorage.actors.watcher.watches import Watch, check_exclude, wire_paths
from moorage.actors.watcher.workers import Job
from moorage.protocol.errors import Category, MoorageError, WireError, fail

# Index entries merged (after a new watch's walk) or dropped (after fs.unwatch) per turn.
MERGE_SLICE = 20_000
NO_THREAD = "can't start new thread"  # CPython's RuntimeError when no thread can be made
PERSIST_WAIT_S = 2.0  # a new watch answered once saved, or after this, whichever first

if TYPE_CHECKING:
    from moorage.actors.watcher.driving import WatcherHost


CLOCK = tuple[str, int, int]  # [instance, epoch, seq] (journal.Clock)
# One journaled change or marker, as on `fs.event` (pipeline.py): what every event has; a
# change adds path, type, origin, watches and its stat, a marker (resync_begin, resync_end,
# warning...) its reason.
FS_EVENT = Named("fs_event", {"kind": str, "clock": CLOCK, ...: Any})
WATCH_ERRORS = ("resource_exhausted",)  # watching is off (the cache_only fallback)
# A path in a list of paths (fs.sync's unsynced roots, fs.stats' roots...): a str, or one
# that is not valid UTF-8 as {path: readable, path_bytes: exact} (watches.wire_paths).
PATH_ITEM = OneOf(str, {"path": str, "path_bytes": bytes})


class WatchOps:
    """fs.watch, fs.unwatch, fs.since and fs.sync, over the watcher's parts (`WatcherHost`)."""

    def __init__(self, w: WatcherHost) -> None:
        self.w = w
        self.syncs_answered = 0
        # Watches being placed, by (real path, recursive, exclude): the same fs.watch asked
        # again meanwhile (a client's resend) joins the placement instead of starting anew.
        self.placing: dict[tuple[str, bool, tuple[str, ...]], Job] = {}
        self.joined = 0

    def _need_watching(self) -> ObserverManager:
        if self.w.obs is None:
            raise fail("resource_exhausted", "watching is off: the watcher runs in its "
                       "cache_only fallback", detail={"fallback": "cache_only"})
        if self.w.paused:
            raise fail("busy", "watching is paused at quality level 0",
                       detail={"quality": self.w.quality}, retry_after_ms=5000)
        return self.w.obs

    @op("fs.watch", args={"path": str, "recursive": (bool, True), "exclude": (list, None)},
        idempotent=True, timeout_ms=120_000, errors=(*FS_ERRORS, *WATCH_ERRORS),
        result={"watch": str, "path": str, "path_bytes?": bytes, "recursive": bool,
                "exclude": list[str], "holders": int, "via": str, "clock": CLOCK})
    def _op_watch(self, call: Call, path: str, recursive: bool,
                  exclude: list | None) -> Any:
        """Watch a directory, or hold the watch of it already made; events for it are
        published on fs.event."""
        self._need_watching()
        excl = tuple(exclude or ())
        check_exclude(excl)  # (bounded before the path costs anything, or a pattern compiles)
        watched = frozenset(w.path for w in self.w.watches)  # (read on the loop only)
        if not self.w.roots.on_slow(self.w.roots.absolute(path)):
            return self._watch(call, path, self._checked(path, watched), recursive, excl)

        def checked(job: Job) -> None:
            if call.answered:
                return
            try:  # (_checked classifies its OSErrors: what comes here is a MoorageError)
                got = self._watch(call, path, job.result(), recursive, excl)
            except MoorageError as exc:
                call.fail(exc)
                return
            if got is not DEFERRED:
                call.reply(got)

        self.w.remote.submit(lambda: self._checked(path, watched), lambda real: real).then(
            checked)
        return DEFERRED

    def _checked(self, path: str, watched: frozenset[str]) -> str:
        """`path` resolved, and checked to be a directory on a file system inotify sees
        (`f.txt/..` is none: the resolution made it the directory holding `f.txt`), that
        this process may read: a watch of one it may not would say nothing while it may
        not (its inotify watch is refused, and what it holds cannot be listed), as fs.list says
        `forbidden` of it. (A directory below it that it may not read is kept and told
        when a chmod lets it: the watch of the rest stands; and a watch placed before its
        mode changed goes on hearing it, and may be held again: `watched`, the paths of
        the watches.)"""
        real = self.w.roots.resolve_fast(path)
        try:
            refuse_climb_past_non_directory(self.w.roots.absolute(path))
            if not os.path.isdir(real):
                os.stat(real)
                raise NotADirectoryError(20, "Not a directory", real)
            if real not in watched:
                os.close(os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as exc:
            raise os_error(exc, path) from exc
        refusal = pseudo_refusal(real, path)
        if refusal is not None:
            raise refusal
        return real

    def _watch(self, call: Call, path: str, real: str, recursive: bool,
               excl: tuple[str, ...]) -> Any:
        obs = self._need_watching()
        key = (real, recursive, excl)
        job = self.placing.get(key)
        if job is None:
            w = self.w.watches.find(real, recursive, excl)
            if w is not None:
                if w.hold(call.sid):
                    self._save_holds()
                return self._answer(obs, w)
            job = self._place(obs, path, real, recursive, excl, call.sid)
            self.placing[key] = job
            job.then(lambda _j: self.placing.pop(key, None))
        else:
            self.joined += 1  # the same watch asked again while it is placed: one placement
            # (among the watches since its placement began: held now, and saved by the
            # placement's own save, or by `_reply` when this came after that)
            w = self.w.watches.find(real, recursive, excl)
            if w is not None:
                w.hold(call.sid)
        job.then(lambda j: self._reply(call, j, path))
        return DEFERRED

    def _unsynced(self, roots: list[str]) -> list[Any]:
        """fs.sync's `unsynced`: the roots it could not wait for, then the directories no
        watch may be placed on for their permissions (nothing below one is seen), as they
        are once the sync is answered: one a chmod let be read before the call is watched
        by then (its IN_ATTRIB came before the cookie)."""
        obs = self.w.obs
        return wire_paths([*roots, *(obs.unreadable_paths() if obs is not None else ())])

    def _save_holds(self) -> None:
        """The watches saved for a change of their holders alone (State.save_watches)."""
        self.w.state.save_watches(self.w.watches.to_wire(), holds=True)

    def _answer(self, obs: ObserverManager, w: Watch) -> dict[str, Any]:
        root = obs.roots.get(obs.root_of(w.path) or "")
        spec = w.wire_spec()  # (a real path that is not valid UTF-8: snapshot.wire_fields)
        return {"watch": spec.pop("id"), **spec, "via": root.via if root else "missing",
                "clock": self.w.journal.clock().to_wire()}

    def _place(self, obs: ObserverManager, path: str, real: str, recursive: bool,
               excl: tuple[str, ...], sid: str) -> Job:
        """A new watch: its inotify watches, then the walk that is its base, both on the
        walker thread (a tree of 150,000 entries takes seconds); the loop turns meanwhile
        and takes the result in `finish`. Watches first, then the walk: a change made
        during the walk is in the walk, in an event, or both. When the watch's root is
        placed anew, one walk does both, watching each directory before it reads it.

        The job returned settles once the walk is in the index and the told state with it
        on disk (`Driving.persist`, after `finish` and the merge's last slice): a watch
        answered is one a restart diffs against exactly, however soon it dies. `sid`, who
        asked, holds it from now on."""
        before = list(self.w.watches)
        w = self.w.watches.add(real, recursive, excl)
        w.hold(sid)
        roots = obs.adopt_roots(self.w.watches.observed_roots())
        generation = obs.generation
        refresh = any(o.exclude for o in before)  # they may have left out what w needs
        ours = self.w.driving.ours
        first = not before and not self.w.index.entries

        keep = w.covers if w.exclude else None
        # The watch's own root, placed anew: the walk that places its inotify watches is
        # its base walk too (one walk of the tree, not two). Not when the others' watches
        # are refreshed: theirs go first, then the walk.
        one_walk = not refresh and [(r.path, r.recursive) for r in roots] == [(real, recursive)]

        walks = snapshot.RootWalks(keep)  # (its warnings are read in `finish`, on the loop)

        def blocking() -> tuple[list[Placement | OSError], dict[str, Stat] | Index]:
            placements: list[Placement | OSError] = []
            for r in roots:
                try:
                    placements.append(obs.place(r.path, r.recursive, obs.mode, generation,
                                                walks.base(real, recursive) if one_walk else None))
                except OSError as exc:
                    placements.append(exc)
            if refresh:
                obs.refresh()
            # (walked already, unless polled or its inotify watches had a walk of their own)
            fresh = walks.rest({real: recursive})
            for p in [p for p in fresh if ours(p)]:
                del fresh[p]
            if first:  # the whole index, built here
                return placements, Index(fresh)
            # only what no earlier watch already had in the index (of 200 disjoint
            # watches, the test of every new path against each took half of a watch's time)
            overlapping = [o for o in before if o.overlaps(real)]
            if overlapping:
                for p in [p for p in fresh if any(o.covers(p) for o in overlapping)]:
                    del fresh[p]
            return placements, fresh

        def finish(got: tuple[list[Placement | OSError], dict[str, Stat] | Index]
                   ) -> dict[str, Any]:
            placements, fresh = got
            warnings = []
            failed: OSError | None = None
            for r, p in zip(roots, placements, strict=True):
                if isinstance(p, OSError):
                    failed = failed or p
                    continue
                msg = obs.placed(r, p, generation)
                if msg:
                    warnings.append(msg)
            if failed is not None:
                raise os_error(failed, path) from failed
            merged: Job | None = None
            if isinstance(fresh, Index):
                self.w.index.take(fresh)
            else:
                merged = self._merge(fresh)
            self.w.state.save_watches(self.w.watches.to_wire())
            for msg in warnings:
                self.w.pipeline.marker("warning", reason="inotify_unavailable", message=msg,
                                       path=real, mode="polling")
            # what the walk could not read or no watch follows, and what was met meanwhile
            self.w.driving.warn_unreadable([real], walks)
            self.w.driving.warn_unreadable()
            answer = self._answer(obs, w)

            def persist(_merged: Job | None = None) -> None:  # (the walk all in the index)
                self.w.driving.persist(lambda: placed.settle(answer))
                # A state dir that stalls (a hung mount) does not hold the answer: after
                # PERSIST_WAIT_S the watch, placed and serving, is answered; its entries are
                # saved when the write gets through (a restart before that resyncs them as
                # it did before the save was waited for).
                self.w.loop.call_later(PERSIST_WAIT_S, lambda: placed.settle(answer))

            if merged is None:
                persist()
            else:
                merged.then(persist)
            return answer

        def undo(job: Job) -> None:
            if job.error is not None:
                placed.settle(error=job.error)
                if w.id in self.w.watches.by_id:
                    self.w.watches.remove(w.id)
                    self.w.driving.reobserve("watch_failed")

        placed = Job()  # settled once persisted, or with the walker job's error
        try:
            job = self.w.walker.submit(blocking, finish)
        except MoorageError:  # busy: the walker's queue is full
            self.w.watches.remove(w.id)
            self.w.driving.reobserve("watch_failed")
            raise
        job.then(undo)
        return placed

    def _merge(self, fresh: dict[str, Stat]) -> Job:
        """The new scope's base into the index, in slices: a big tree's hundred thousand
        entries would otherwise be one long loop turn. Settled after the last slice."""
        items = iter(fresh.items())
        index = self.w.index
        merged = Job()

        def slice_() -> None:
            for n, (p, s) in enumerate(items, 1):
                index.set(p, s)
                if n >= MERGE_SLICE:
                    self.w.loop.call_later(0, slice_)
                    return
            merged.settle()

        slice_()
        return merged

    def _reply(self, call: Call, job: Job, path: str) -> None:
        err = job.error
        if err is None:
            # (one answer for all who asked while it was placed: each is told the holders
            # as they are now; a hold taken after the placement's own save is saved here)
            answer = job.value
            w = self.w.watches.by_id.get(answer["watch"])
            if w is not None:
                answer = {**answer, "holders": len(w.holders)}
                self._save_holds()
            call.reply(answer)
        elif isinstance(err, MoorageError):
            call.fail(err)
        elif isinstance(err, OSError):
            call.fail(os_error(err, path))
        elif isinstance(err, RuntimeError) and str(err) == NO_THREAD:
            call.fail(WireError.of(
                "resource_exhausted", f"{path}: the watch needs a thread, and the process is "
                "at its thread limit (RLIMIT_NPROC, or the user's tasks); it was not placed",
                detail={"path": path, "limit": "threads"}))
        else:
            logger.opt(exception=err).error("watcher: placing a watch on {} failed", path)
            call.fail(WireError.of("internal", f"{type(err).__name__}: {err}",
                                   category=Category.FILESYSTEM))

    @op("fs.unwatch", args={"watch": str},
        result={"removed": str, "holders": int, "held": bool, "dropped": int},
        errors=("watch_not_found", *WATCH_ERRORS))
    def _op_unwatch(self, call: Call, watch: str) -> dict[str, Any]:
        """Let go of the caller's hold on a watch; the watch stops with its last hold (the
        directories no other watch needs are then no longer observed). From a session that
        holds none, the watch stops for every holder (`held: false`, `dropped`)."""
        self._need_watching()
        w = self.w.watches.by_id.get(watch)
        if w is None:
            raise fail("watch_not_found", f"no watch {watch!r}")
        held = w.release(call.sid)
        if held and w.holders:  # others hold it still: it stays
            self._save_holds()
            return {"removed": watch, "holders": len(w.holders), "held": True, "dropped": 0}
        dropped = 0 if held else len(w.holders)
        if dropped:
            logger.warning("watcher: fs.unwatch of {} ({}) from session {!r}, which held none"
                           " of it, removed it for its {} holder(s)", watch,
                           snapshot.readable(w.path), call.sid, dropped)
        w.holders.clear()
        gone = self.w.watches.remove(watch)
        self.w.driving.reobserve("unwatch")
        # (the index's paths under it by its per-directory sets, not a scan of every path)
        self._forget(self.w.index.below(gone.path), gone.path)
        self.w.state.save_watches(self.w.watches.to_wire())
        return {"removed": watch, "holders": 0, "held": held, "dropped": dropped}

    def _forget(self, paths: list[str], tree: str) -> None:
        """Drop from the index what no watch covers any more, in slices (a big tree's
        hundred thousand entries would otherwise be one long loop turn). `paths` are in
        `tree`: each slice tests them against the watches that overlap it (Watch.overlaps;
        one placed meanwhile included), not every watch."""
        items = iter(paths)
        index = self.w.index

        def slice_() -> None:
            others = [o for o in self.w.watches if o.overlaps(tree)]
            for n, p in enumerate(items, 1):
                if not any(o.covers(p) for o in others):
                    index.discard(p)  # alone: a path below may be another watch's
                if n >= MERGE_SLICE:
                    self.w.loop.call_later(0, slice_)
                    return

        slice_()

    @op("fs.since", args={"clock": list, "max": (int, 10_000)}, idempotent=True,
        result={"fresh_instance": bool, "reason?": str, "clock": CLOCK,
                "events": list[FS_EVENT], "more": bool}, errors=WATCH_ERRORS)
    def _op_since(self, call: Call, clock: list, max: int) -> dict[str, Any]:
        """Journaled events after `clock`, or fresh_instance when it cannot tell."""
        self._need_watching()
        if max < 1:
            raise fail("bad_args", "max must be >= 1")
        return self.w.journal.since(Clock.from_wire(clock), min(max, 10_000))

    @op("fs.sync", args={"timeout_ms": (int, 10_000)}, idempotent=True, timeout_ms=120_000,
        result={"clock": CLOCK, "roots": int, "unsynced": list[PATH_ITEM], "waited_ms": float},
        errors=WATCH_ERRORS)
    def _op_sync(self, call: Call, timeout_ms: int) -> Any:
        """Answer once every change made before this call has been published."""
        self._need_watching()
        if not 0 < timeout_ms <= 110_000:
            raise fail("bad_args", "timeout_ms must be in (0, 110000]")

        if self.w.driving.recreating or self.w.driving.polling_placements:
            # the roots (or a subtree to poll) are being observed anew: their cookies can
            # come back only after that, and the resync's diff goes out first
            def later() -> None:
                got = self._sync(call, timeout_ms)
                if got is not DEFERRED:
                    call.reply(got)

            self.w.driving.after_resync(later)
            return DEFERRED
        return self._sync(call, timeout_ms)

    def _sync(self, call: Call, timeout_ms: int) -> Any:
        def done(s: Sync) -> None:
            self.syncs_answered += 1
            call.reply({"clock": self.w.journal.clock().to_wire(), "roots": len(s.cookies),
                        "unsynced": self._unsynced(unsynced),
                        "waited_ms": round((time.monotonic() - s.started) * 1000, 3)})

        s, unsynced = self.w.driving.start_sync(done)
        if s is None:
            self.w.pipeline.flush()
            return {"clock": self.w.journal.clock().to_wire(), "roots": 0,
                    "unsynced": self._unsynced(unsynced), "waited_ms": 0.0}

        def expire() -> None:
            if not s.finished:
                self.w.cookies.drop(s)
                call.fail(WireError.of("timeout", f"fs.sync: cookies not back in {timeout_ms}"
                                       " ms", detail={"roots": list(s.cookies.values())}))

        self.w.loop.call_later(timeout_ms / 1000, expire)
        return DEFERRED
