"""The watcher's loop side: draining the observer, the losses it reports, the resyncs that
repair them, and the cookies, health and liveness checks that find losses nobody reported.

`Driving`, a component of WatcherActor (actor.py), which owns the parts named below and
reaches them through `WatcherHost`; everything here runs on the actor's loop.

  drain         the observer handed something over: unless a settle window is open (its
                close pulls what came meanwhile), an overflow asks for a resync first (so
                cookies in the same batch wait for its diff), events go to the pipeline, a
                handler error and the observer's problems ask for a resync
  _on_problem   ENOSPC below a root polls that subtree (or, past `max_polled_subtrees`, the
                whole root) with a `warning` event; a root's own directory moved away or
                deleted marks it missing at once (`root_missing` warning); every problem
                but a root deleted (whose deletions were reported) asks for a resync
  resync        watches first (in place, or recreated), then the walk (on the walker
                thread: the loop serves meanwhile, and what the observer hands over waits),
                the diff against the told state, the markers; it answers the syncs that
                began before its walk
  health_check  the seed's 3.2 check: a cookie that does not come back recreates the
                observer and resyncs; and the back-up for directories not watched for
                their permissions (`unreadable`): each tried again, on the walker
  unreadable    a directory no watch may be placed on (EACCES, EPERM) is warned of (with
                the warnings of each walk that meets it, or at once when met later), and
                is in fs.sync's `unsynced` until it is watched (watch_ops.py)
  liveness      dead observer threads (recreate + resync), roots gone (a root is the
                directory placed, by device and inode) and back
  checkpoint    the lagging checkpoint of the told state (state.py), and `persist`, the
                same written at once when no event told what the told state gained
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from moorage.actors.watcher import snapshot
from moorage.actors.watcher.cookies import COOKIE, Cookies, Sync
from moorage.actors.watcher.mounts import DirProbe
from moorage.actors.watcher.observer import (
    GONE,
    ROOT_GONE,
    BaseWalk,
    ObserverManager,
    Placement,
    Root,
    dir_identity,
)
from moorage.actors.watcher.resync import ResyncScheduler
from moorage.actors.watcher.snapshot import Index, Stat
from moorage.actors.watcher.workers import Job
from moorage.protocol.errors import MoorageError

if TYPE_CHECKING:
    from moorage.actors.runtime.heap import HeapTrim
    from moorage.actors.runtime.loop import Loop
    from moorage.actors.watcher.confine import Roots
    from moorage.actors.watcher.journal import Journal
    from moorage.actors.watcher.mounts import MountTable
    from moorage.actors.watcher.pipeline import Pipeline
    from moorage.actors.watcher.state import State
    from moorage.actors.watcher.watches import Watches
    from moorage.actors.watcher.workers import Workers

INDEX: Any = object()  # resync base: the told-state index
# Raw events handled in one loop turn: a burst is drained over several turns, so the loop
# keeps turning (its supervisor's hang detection watches the turns) and requests interleave.
DRAIN_CHUNK = 5000
PLACE_AGAIN_S = 1.0  # a subtree to poll that the walker had no room for is tried again


class WatcherHost(Protocol):
    """What the watcher's components need of the actor that owns them."""

    config: dict[str, Any]
    loop: Loop
    quality: int
    obs: ObserverManager | None
    paused: bool
    roots: Roots
    pipeline: Pipeline
    journal: Journal
    watches: Watches
    index: Index
    state: State
    cookies: Cookies
    driving: Driving
    walker: Workers
    io: Workers
    remote: Workers
    mounts: MountTable
    heap: HeapTrim


class Driving:
    """The loop side of the watcher (`WatcherHost`): what the observer hands over, resyncs,
    cookies, health and liveness, and the counters of each."""

    def __init__(self, w: WatcherHost) -> None:
        self.w = w
        self.resyncs = ResyncScheduler(
            w.loop.call_later, lambda reason, recreate: self.resync(reason, recreate=recreate),
            float(w.config.get("resync_backoff_max_s", 10.0)))
        self.resync_counts: Counter[str] = Counter()
        self.resync_total = 0
        self.last_resync: dict[str, Any] | None = None
        self.health = {"ok": 0, "failed": 0}
        self._health_wait: Sync | None = None
        self._after_resync: list[Callable[[], None]] = []
        self.walking = False  # a resync's walk is under way on the walker thread
        self.recreating = False  # ... and before it, the observers are being made anew
        # Resyncs asked for meanwhile: their reasons (each once, however often asked), and
        # whether one asked to recreate the observers.
        self._again: set[str] = set()
        self._again_recreate = False
        # Placements whose end runs `_after_placements` (each one hooked once).
        self._awaited: set[Job] = set()
        # Placements for polling under way: what they place has no observer to see an
        # fs.sync's cookie yet, so a sync waits for the resync that follows them.
        self.polling_placements = 0
        # the liveness check's look at each root: a path on a slow file system looked at on
        # the remote workers, not on the loop
        self.probe = DirProbe(w.mounts.slow, w.remote.submit, dir_identity)

    def _capture(self) -> dict[str, Any]:
        # (the Index, not its dict: a crawl or a resync puts a new dict in it, and the
        # capture's write packs the one it then holds: snapshot.stream)
        return {"instance": self.w.journal.instance, "watch_ids": [w.id for w in self.w.watches],
                "entries": self.w.index}

    def _offloads(self) -> dict[str, Any]:
        return {"write": self.w.io.submit, "later": lambda fn: self.w.loop.call_later(0, fn),
                "wake": self.w.loop.call_soon_threadsafe}

    def persist(self, done: Callable[[], None]) -> None:
        """The told state on disk now, then `done()` (State.now): a new watch's crawl, a
        fresh resync's walk, which no event told and so no wal generation holds."""
        self.w.state.now(self.w.journal.seq, self._capture, done, **self._offloads())

    def checkpoint(self) -> None:
        cost = 0.0
        try:
            cost = self.w.state.checkpoint(self.w.journal.seq, self._capture,
                                           **self._offloads())
        finally:
            # A big tree's checkpoint (100,000 files: 30-45 ms of packing and writing) is
            # spaced so that it takes at most 2% of the time: a checkpoint older than
            # checkpoint_s only makes a restart report more paths again (state.py).
            interval = float(self.w.config.get("checkpoint_s", 1.0))
            self.w.loop.call_later(max(interval, 50 * cost), self.checkpoint)

    # --- what the observer hands over -----------------------------------------------------

    def drain(self) -> None:
        """Runs on the loop when the observer handed something over. While a settle window
        is open, what a thread hands over waits in the observer's buffer (its wake-up stays
        pending, so no thread wakes the loop for it again) and the window's close takes it:
        one wake-up a window instead of one per event. What the loop read itself is taken at
        once (there is no wake-up to save): the window's close then has only the flush left
        to do, and the stats of its paths were made meanwhile (statahead.py)."""
        obs = self.w.obs
        if obs is None or self.walking:
            return
        if self.w.pipeline.window_open and not obs.woke_here:
            return
        self.pull()

    def pull(self) -> None:
        """Take what the observer handed over (at most DRAIN_CHUNK events: the rest on the
        next turn) into the pipeline; also run by the pipeline as a window closes."""
        obs = self.w.obs
        if obs is None or self.walking:  # a resync's walk is under way: after it
            return
        raws, overflowed, problems = obs.take(DRAIN_CHUNK)
        if obs.backlog:
            self.w.loop.call_later(0, self.drain)
        if overflowed:
            self.request_resync("overflow")  # first, so syncs in `raws` wait for it
        if any(kind == "unreadable" for kind, _ in problems):
            # (first too: a sync whose cookie is in `raws` comes after their warnings)
            self._on_problem("unreadable", "")
            problems = [(k, d) for k, d in problems if k != "unreadable"]
        if raws:
            try:
                self.w.pipeline.feed(raws, obs.taken_first_at)
            except Exception:
                logger.exception("watcher: event handling failed")
                self.request_resync("handler_error")
        for kind, detail in problems:
            self._on_problem(kind, detail)

    def after_flush(self) -> None:
        """A flush closed the window: what waited for it in the observer's buffer (its
        wake-up already spent) is taken on the next turn."""
        obs = self.w.obs
        if obs is not None and obs.waiting:
            self.w.loop.call_later(0, self.drain)

    def _on_problem(self, kind: str, detail: str) -> None:
        if kind == "unreadable":
            # (a walk under way, a resync's or a new watch's, warns with its own warnings)
            if not (self.walking or self.w.watch_ops.placing):
                self.warn_unreadable()
            return
        if kind in ROOT_GONE:
            self._root_gone(kind, detail)
            return
        if kind == "enospc" and self.w.obs is not None:
            got = self.w.obs.poll_subtree(detail)
            if got is not None:
                root, scope, placing = got
                polled = detail if scope == "subtree" else root
                self.w.cookies.remove_stale([polled])
                self.w.pipeline.marker(
                    "warning", reason="enospc", path=detail, root=root, mode="polling",
                    scope=scope, polled=polled,
                    message=f"inotify watch limit reached at {detail}: polling {polled}")
                # (off the loop: a polling observer's first snapshot walks the whole tree)
                self.place([placing], "enospc", via="polling")
        # (directories the observer lost track of are watched again by observers made anew)
        self.request_resync(kind, recreate=kind == "unplaced")

    def _root_gone(self, kind: str, path: str) -> None:
        """A root's emitter stopped as its directory left: the root is missing now, not at
        the next liveness check. A root moved away took its tree along unreported: the
        resync tells it gone (a root with no directory at its path is not walked); a root
        deleted had its deletions reported before its own."""
        obs = self.w.obs
        if obs is not None and obs.lose_root(path, stopped=True):
            self.warn_missing(path)
        if kind == "root_moved":
            self.request_resync(kind)

    def warn_unreadable(self, walked: list[str] | None = None,
                        walks: snapshot.RootWalks | None = None) -> None:
        """Publish the `unreadable` warnings of directories no watch may be placed on for
        their permissions: those not warned of yet, or, after a walk (`walks`, of the roots
        `walked`), its own warnings with every such directory below those roots."""
        obs = self.w.obs
        denied = obs.take_unwarned(walked) if obs is not None else []
        if walks is not None:
            fields = walks.warnings(denied)
        else:
            fields = snapshot.RootWalks.bounded(snapshot.denied_warnings(denied))
        for f in fields:
            self.w.pipeline.marker("warning", **f)

    def warn_missing(self, path: str) -> None:
        self.w.pipeline.marker("warning", reason="root_missing", path=path,
                               message=f"{path} is gone; watching resumes when it is back")

    def request_resync(self, reason: str, recreate: bool = False) -> None:
        self.resyncs.request(reason, recreate)

    # --- resync ---------------------------------------------------------------------------

    def ours(self, path: str) -> bool:
        """The actor's own files: cookies and its state directory."""
        return COOKIE in path or path.startswith(str(self.w.state.dir))

    def resync(self, reason: str, *, recreate: bool = False, place: bool = False,
               base: Mapping[str, Stat] | None = INDEX) -> dict[str, Any] | None:
        """Watches first (already in place, recreated, or with `place` the roots adopted at
        the start placed for the first time), then walk, diff against `base` (default: the
        told state), publish the markers and the diff.

        The walk runs on the walker thread (a big tree takes seconds); meanwhile what the
        observer hands over waits in its buffer (the walk covers it, or it comes after),
        and the loop serves requests. Returns what was started ({reason, walking: true}),
        or None when not watching; the summary is `last_resync` once it is done. A resync
        asked for during one runs after it."""
        if self.w.obs is None or self.w.paused:
            return None
        placing = self.w.watch_ops.placing
        if self.walking or placing:
            self._again.update(reason.split("+"))
            self._again_recreate = self._again_recreate or recreate
            if not self.walking:
                # A new watch's base is in the index once its placement ends: the told state
                # taken now would lack it, and the diff would report its whole tree as
                # created. After the placements, then.
                for job in [j for j in placing.values() if j not in self._awaited]:
                    self._awaited.add(job)
                    job.then(self._placement_ended)
            return None
        t0 = time.perf_counter()
        # recreated: the old observers detached now, stopped and placed anew on the walker
        recreation = (self.w.obs.begin_placing() if place else
                      self.w.obs.begin_recreate() if recreate else None)
        self.recreating = recreation is not None
        raws, _, problems = self.w.obs.take()  # all before the walk: the walk covers them
        self.w.pipeline.hold()  # and what the pipeline held: the walk covers it too
        self.walking = True
        walk_started = time.monotonic()
        roots = self.w.watches.observed_roots()
        keep = self.w.watches.in_scope if any(w.exclude for w in self.w.watches) else None
        ours = self.ours
        # The told state as it is now (a copy: the walker diffs against it while the loop
        # goes on; nothing is published meanwhile, so it is what subscribers were told).
        told = dict(self.w.index.entries) if base is INDEX else base

        walks = snapshot.RootWalks(keep)  # (its warnings are read in `finish`, on the loop)

        def blocking() -> tuple[dict[str, Stat], float, list, Index, float]:
            t1 = time.perf_counter()

            def base_for(path: str, recursive: bool) -> BaseWalk | None:
                # (a polled subtree is not a root: its placement walks nothing of ours)
                return walks.base(path, recursive) if roots.get(path) == recursive else None

            if recreation is not None:
                # watches first, then the walk: one walk of each root placed anew does both
                recreation.run(base_for)
            # A root with no directory at its path holds nothing: what the told state has
            # under it is reported deleted. (A symlink there is not walked through: the
            # directory it names is not the root's, and no watch would see it.)
            out = walks.rest({p: r for p, r in roots.items() if dir_identity(p) != GONE})
            for p in [p for p in out if ours(p)]:
                del out[p]
            t2 = time.perf_counter()
            changes = snapshot.diff(told, out) if told is not None else []
            index = Index(out)
            return out, (t2 - t1) * 1000, changes, index, (time.perf_counter() - t2) * 1000

        def finish(got: tuple[dict[str, Stat], float, list, Index, float]) -> dict[str, Any]:
            # (the diff and the new index were made on the walker: here only publishing)
            new, walk_ms, changes, index, diff_ms = got
            if recreation is not None:
                for w in recreation.record():
                    self.w.pipeline.marker("warning", reason="inotify_unavailable", message=w,
                                           mode="polling")
                for path in recreation.missing:
                    self.warn_missing(path)
            summary = self.w.pipeline.resync(reason, new, told, changes=changes,
                                             index=index, walk_ms=round(walk_ms, 3))
            # what the walk could not read or no watch follows
            self.warn_unreadable(list(roots), walks)
            if told is None and new:
                # a fresh resync (the first start): the told state is the walk, which no
                # event told (no wal generation has it): on disk at once, not a capture and
                # an interval or two later
                self.persist(lambda: None)
            summary["publish_ms"] = summary["diff_ms"]  # the pipeline's part: publishing
            summary["diff_ms"] = round(diff_ms, 3)
            summary["walk_ms"] = round(walk_ms, 3)
            summary["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.last_resync = summary
            self.resync_total += 1
            for r in reason.split("+"):
                self.resync_counts[r] += 1
            logger.info("watcher: resync {}", summary)
            # the told state's copy, the diff and the walk's tables (about 100 bytes an
            # entry) are free now: the heap gives their pages back once the watcher is quiet
            self.w.heap.note(100 * (len(new) + (len(told) if told is not None else 0)))
            self._walk_done()
            for s in self.w.cookies.covered(walk_started):
                s.done(s)
            after, self._after_resync = self._after_resync, []
            for fn in after:
                fn()
            cookies = [r for r in raws if COOKIE in r[1] or (r[2] and COOKIE in r[2])]
            if cookies:
                self.w.pipeline.feed(cookies)
            for kind, detail in problems:
                # (an overflow is covered by the walk; directories left unwatched and roots
                # whose emitter stopped are not, unless this resync placed them all anew)
                if kind == "enospc" or (kind in ("unplaced", *ROOT_GONE) and recreation is None):
                    self._on_problem(kind, detail)
            return summary

        def failed(job: Job) -> None:
            if job.error is not None:
                logger.opt(exception=job.error).error("watcher: resync walk failed")
                self._walk_done()
                for kind, detail in problems:  # (taken for this walk: reported again)
                    self._on_problem(kind, detail)
                self.request_resync(reason, recreation is not None)  # (placed, not recorded)

        try:
            job = self.w.walker.submit(blocking, finish)
        except MoorageError:  # the walker's queue is full: try again after a back-off
            if recreation is not None:
                self.halt(recreation.old)
            self._walk_done()
            for kind, detail in problems:  # (taken for this walk: reported again)
                self._on_problem(kind, detail)
            self.request_resync(reason, recreate)
            return None
        job.then(failed)
        return {"reason": reason, "walking": True}

    def halt(self, observers: list[Any]) -> None:
        """Stop detached observers on the walker (a big inotify instance takes long to
        close, and watchdog joins each emitter without a timeout: a polling one in the
        middle of a big tree's snapshot, or on a stalled mount, for as long as that takes);
        on a thread of their own when the walker's queue is full, never on the loop."""
        try:
            self.w.walker.submit(lambda: ObserverManager.halt(observers), lambda _: None)
        except MoorageError:
            threading.Thread(target=ObserverManager.halt, args=(observers,),
                             name="mw-halt", daemon=True).start()

    def after_resync(self, fn: Callable[[], None]) -> None:
        """Run `fn` once the resync under way has published its diff."""
        self._after_resync.append(fn)

    def _placement_ended(self, job: Job) -> None:
        self._awaited.discard(job)
        self._after_placements()

    def _after_placements(self) -> None:
        if self.w.watch_ops.placing or self.walking:
            return  # (another placement still runs: its end comes here too)
        self._request_again()

    def _walk_done(self) -> None:
        self.walking = self.recreating = False
        self.resyncs.done()
        self.w.loop.call_later(0, self.drain)  # what waited for the walk
        self._request_again()

    def _request_again(self) -> None:
        """The resyncs asked for during a walk or a placement, asked for now: one resync
        (ResyncScheduler joins them), each reason once."""
        reasons, recreate = sorted(self._again), self._again_recreate
        self._again, self._again_recreate = set(), False
        for reason in reasons:
            self.request_resync(reason, recreate)

    # --- cookies: fs.sync and the health check --------------------------------------------

    def start_sync(self, done: Callable[[Sync], None], slow_too: bool = True
                   ) -> tuple[Sync | None, list[str]]:
        assert self.w.obs is not None
        points = self.w.obs.sync_points()
        if not slow_too:
            points = {p: via for p, via in points.items() if not self.w.mounts.slow(p)}
        return self.w.cookies.start(points, done)

    def on_cookie(self, path: str, etype: str) -> None:
        s = self.w.cookies.seen(path, etype)
        if s is not None:
            self.complete_sync(s)

    def complete_sync(self, s: Sync) -> None:
        if self.resyncs.pending or self.walking or self._again \
                or self.polling_placements:
            self._after_resync.append(lambda: s.done(s))  # the diff must go out first
        else:
            s.done(s)

    def health_check(self) -> None:
        """The seed's 3.2 health check: a cookie that does not come back means the observer
        is not delivering; recreate it and resync."""
        if self.w.obs is None or self.w.paused:
            return
        if self.w.obs.unreadable and not self.recreating:
            self._retry_unreadable()
        if self._health_wait is not None:
            return

        def ok(_s: Sync) -> None:
            self.health["ok"] += 1
            self._health_wait = None

        # Not in the roots on a slow file system: a cookie there that does not come back says
        # the mount is stalled, not that the observer is dead, and the recreate it would
        # ask for would hold every root's walk behind that mount.
        s, _ = self.start_sync(ok, slow_too=False)
        if s is None:
            return
        self._health_wait = s

        def check() -> None:
            if not s.finished:
                self.w.cookies.drop(s)
                self._health_wait = None
                self.health["failed"] += 1
                self.request_resync("health_cookie", recreate=True)

        self.w.loop.call_later(float(self.w.config.get("health_timeout_s", 10.0)), check)

    def _retry_unreadable(self) -> None:
        """The back-up for a directory not watched for its permissions whose IN_ATTRIB
        (the chmod that lets it be read) was not seen: each group tries them again, on the
        walker (a directory's watches and its read may take long); what is below one
        watched now is reported created, as on its IN_ATTRIB (guarded.py)."""
        obs = self.w.obs
        assert obs is not None
        try:
            self.w.walker.submit(obs.retry_unreadable, lambda _n: None)
        except MoorageError:  # the walker's queue is full: at the next check
            pass

    def liveness(self) -> None:
        self.w.pipeline.expire_self_writes()
        if self.w.obs is None or self.w.paused:
            return
        found = self.w.obs.check(self.probe.look)
        for path in found["missing"]:
            self.warn_missing(path)
        if found["moved"]:  # (their trees left unreported: the walk tells them gone)
            self.request_resync("root_moved")
        if found["dead"] and not (self.recreating or self._again_recreate):
            # (threads of observers being made anew are the old ones', stopped: a resume
            # after quality 0, a recreate waiting for a walk; their recreation replaces them)
            logger.error("watcher: observer threads dead: {}", found["dead"])
            self.request_resync("observer_dead", recreate=True)  # (places `back` too)
        elif found["back"]:
            self.place(found["back"], "root_back")

    def reobserve(self, reason: str) -> None:
        """Observe what the watches need now: the roots none needs any more are dropped at
        once, and the new ones (a watch removed that covered them) placed off the loop."""
        obs = self.w.obs
        assert obs is not None
        new = obs.adopt_roots(self.w.watches.observed_roots())
        if new:
            self.place(new, reason)

    def place(self, roots: list[Root], reason: str, via: str | None = None) -> None:
        """Observe `roots` (marked placing: roots, or subtrees to poll) off the loop with
        `via` (default: the observer's mode; watchdog walks a recursive root to place its
        inotify watches, a polling observer to take its first snapshot), then resync: the
        walk covers what changed while they were not observed and while they were placed.
        Roots not placed (the walker's queue full, or the placement failed) are missing,
        and the liveness check places them once it finds them there; a subtree is tried
        again a second later."""
        obs = self.w.obs
        assert obs is not None
        generation, mode = obs.generation, via or obs.mode

        def blocking() -> list[Placement]:
            out = []
            for r in roots:
                try:
                    out.append(obs.place(r.path, r.recursive, r.target or mode, generation))
                except OSError as exc:
                    logger.warning("watcher: {} cannot be watched: {}", r.path, exc)
                    out.append(Placement("missing", None, None))
            return out

        def finish(placements: list[Placement]) -> None:
            for r, got in zip(roots, placements, strict=True):
                warning = obs.placed(r, got, generation)
                if warning:
                    logger.warning("watcher: {}", warning)
                if got.gone and r.via == "missing" and obs.roots.get(r.path) is r:
                    self.warn_missing(r.path)
            self.request_resync(reason)

        def unplaced() -> None:  # looked for again at the next check
            for r in roots:
                if r.via != "placing":
                    continue
                if obs.polled.get(r.path) is r:
                    self.w.loop.call_later(PLACE_AGAIN_S, lambda r=r: again(r))
                else:
                    r.via = "missing"

        def again(sub: Root) -> None:
            if self.w.obs is obs and obs.polled.get(sub.path) is sub and sub.via == "placing":
                self.place([sub], reason, via)

        try:
            job = self.w.walker.submit(blocking, finish)
        except MoorageError:  # the walker's queue is full
            unplaced()
            return
        job.then(lambda j: unplaced() if j.error is not None else None)
        if mode == "polling":
            self.polling_placements += 1

            def settled(j: Job) -> None:
                self.polling_placements -= 1
                if j.error is not None:
                    self.request_resync(reason)  # (the syncs that waited for it go after)

            job.then(settled)
