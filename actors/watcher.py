"""The watcher actor: a cached, confined file service, and watches that never lose an event
in silence.

  op          args                             reply                          errors
  fs.read     {path, offset?=0, length?}       {stat, stale, size, offset,    not_found forbidden
                                                length} + the contents as     is_directory bad_args
                                                one raw attachment            file_too_large
                                                                              io_error
  fs.write    {path, data? (else attachment    {path, stat, bytes, atomic}    conflict no_space
               0), atomic?=true, if_match?                                    forbidden not_found
               (etag; "" = must not exist)}                                   is_directory io_error
  fs.stat     {path}                           {path, type, size, mtime_ns,   not_found forbidden
                                                ctime_ns, ino, dev, mode,
                                                etag}
  fs.list     {path, recursive?=false, glob?}  {path, entries: [{name, type,  not_a_directory
                                                size, mtime_ns}], truncated}  not_found forbidden
  fs.watch    {path, recursive?=true,          {watch, path, recursive,       not_a_directory busy
               exclude?}                        exclude, via, clock}          resource_exhausted
  fs.unwatch  {watch}                          {removed}                      watch_not_found
  fs.since    {clock, max?=10000}              {fresh_instance, clock,        bad_args busy
                                                events, more, reason?}        resource_exhausted
  fs.sync     {timeout_ms?=10000}              {clock, roots, waited_ms,      timeout busy
                                                unsynced}                     resource_exhausted
  fs.stats    {}                               {mode, cache, observer,
                                                watches, journal, pipeline,
                                                resyncs, checkpoints, health}

Events: topic `fs.event`, one message per flush, {"events": [...]}; each event carries its
clock [instance, epoch, seq] and is journaled before it is published (see
actors.watching.pipeline for the event shape). `fs.sync` writes a cookie file into every
observed root and answers once each cookie has come back through the pipeline, after every
event before it was published (a polling root: once its deletion has come back too).

Resyncs (resync_begin, synthetic diff events, resync_end) happen at every start, on a kernel
or hand-off queue overflow, on ENOSPC (that root then moves to polling, with a `warning`
event), when an observer thread is found dead (checked every `liveness_s`), on a handler
error, when a health cookie does not come back within `health_timeout_s`, and when watching
resumes after quality 0. Repeated resyncs back off (doubling up to `resync_backoff_max_s`).

Restart without loss (R3; actors.watching.state): the watches, a write-ahead log of the paths
of published events and a lagging checkpoint of the told state survive in `state_dir`. The
restart resync's diff covers what was in flight when the process died, what it published
after its checkpoint and what changed while it was down (at least once: a path reported
`modified` that a consumer never heard of exists). It is relative to what was published at
least one `checkpoint_s` before the death: a consumer that lagged further behind, or saw a
Loss, lists again (as after fresh_instance).

Fallbacks (`config["fallback"]`, set by the supervisor): "polling" observes every root with
watchdog's PollingObserver; "cache_only" does not watch at all: reads, writes, stat and list
work (the cache revalidates by stat), watch ops answer resource_exhausted with the fallback.
Quality 0 (sys.pressure) pauses watching (watch ops answer busy) and resyncs when it returns;
pressure "moderate" halves the cache, "high"/"critical" clears it.

Config: roots [], watch [] (static watches: path or {path, recursive, exclude}), settle_ms 20,
buffer_max 65536, journal_max 50000, chunk 1000, cache_max_bytes 64 MiB, cache_max_file_bytes
4 MiB, max_read_bytes 16 MiB, list_max 50000, retry {retries 3, initial_ms 10, factor 2,
max_ms 500}, liveness_s 1, health_interval_s 30, health_timeout_s 10, poll_interval_s 1,
checkpoint_s 1, resync_backoff_max_s 10, state_dir "<runtime_dir>/<name>.state".
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from actors.runtime import DEFERRED, Actor, Call, op
from actors.watching import cookies as cookie_files
from actors.watching import snapshot
from actors.watching.cache import FileCache
from actors.watching.confine import Roots
from actors.watching.cookies import COOKIE, Cookies, Sync
from actors.watching.files import FileService
from actors.watching.journal import Clock, Journal
from actors.watching.observer import ObserverManager
from actors.watching.pipeline import Pipeline
from actors.watching.resync import ResyncScheduler
from actors.watching.retry import Pending, RetryPolicy, os_error
from actors.watching.snapshot import Index, Stat
from actors.watching.state import State, tree_identity
from actors.watching.watches import Watches
from protocol.errors import Category, WireError, fail

_INDEX: Any = object()  # resync base: the told-state index


class WatcherActor(Actor):
    name = "watcher"
    category = Category.FILESYSTEM

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        c = self.config
        self.fallback = c.get("fallback")
        self.roots = Roots(c.get("roots", []))
        self.fcache = FileCache(int(c.get("cache_max_bytes", 64 << 20)),
                                int(c.get("cache_max_file_bytes", 4 << 20)))
        self.files = FileService(
            self.roots, self.fcache, RetryPolicy.from_config(c.get("retry", {})),
            self.loop.call_later, max_read=int(c.get("max_read_bytes", 16 << 20)),
            max_list=int(c.get("list_max", 50_000)), on_self_write=self._note_self_write)
        self.watches = Watches()
        self.index = Index()
        self.journal = Journal(self.epoch, int(c.get("journal_max", 50_000)))
        state_dir = c.get("state_dir") or str(self.runtime_dir / f"{self.name}.state")
        self.state = State(Path(os.path.realpath(state_dir)), tree_identity(self.runtime_dir))
        self.pipeline = Pipeline(
            self.journal, self.watches, self.index, self._publish, self.loop.call_later,
            settle_s=float(c.get("settle_ms", 20)) / 1000, cache=self.fcache,
            on_cookie=self._on_cookie, chunk=int(c.get("chunk", 1000)),
            ignore=(str(self.state.dir),))
        self.obs: ObserverManager | None = None
        self.paused = False
        self.cookies = Cookies()
        self._after_resync: list[Callable[[], None]] = []
        self.resyncs = ResyncScheduler(
            self.loop.call_later, lambda reason, recreate: self.resync(reason, recreate=recreate),
            float(c.get("resync_backoff_max_s", 10.0)))
        self.resync_counts: Counter[str] = Counter()
        self.resync_total = 0
        self.last_resync: dict[str, Any] | None = None
        self.health = {"ok": 0, "failed": 0}
        self._health_wait: Sync | None = None
        self.syncs_answered = 0

    # --- start and stop -------------------------------------------------------------------

    def on_start(self) -> None:
        saved_watches, saved = self.state.load()
        if saved_watches is not None:
            self.watches.load(saved_watches)
        for spec in self.config.get("watch", []):
            spec = {"path": spec} if isinstance(spec, str) else dict(spec)
            real = self.roots.resolve(spec["path"])
            exclude = tuple(spec.get("exclude", ()))
            recursive = bool(spec.get("recursive", True))
            if self.watches.find(real, recursive, exclude) is None:
                self.watches.add(real, recursive, exclude)
        self.state.save_watches(self.watches.to_wire())
        if self.fallback == "cache_only":
            logger.warning("watcher: cache_only fallback: not watching")
            return
        self.state.open_wal()
        self.pipeline.before_publish = self.state.log
        self.obs = ObserverManager(
            self.loop.call_soon_threadsafe, self._drain,
            mode="polling" if self.fallback == "polling" else "inotify",
            buffer_max=int(self.config.get("buffer_max", 65536)),
            poll_interval=float(self.config.get("poll_interval_s", 1.0)))
        warnings = self.obs.set_roots(self.watches.observed_roots())  # watches first
        cookie_files.remove_stale(list(self.obs.roots))
        if saved_watches is None:  # the first life in this tree: nothing to diff against
            self.resync("start", base=None)
        else:
            self.resync("restart", base=self.state.restart_base(saved, self.watches.in_scope))
        for w in warnings:
            self.pipeline.marker("warning", reason="inotify_unavailable", message=w,
                                 mode="polling")
        self.loop.call_every(float(self.config.get("liveness_s", 1.0)), self._liveness)
        self.loop.call_every(float(self.config.get("health_interval_s", 30.0)), self._health)
        self.loop.call_later(float(self.config.get("checkpoint_s", 1.0)), self._checkpoint)

    def on_stop(self) -> None:
        if self.obs is not None:
            self.obs.stop()
        self.state.close()

    def _checkpoint(self) -> None:
        cost = 0.0
        try:
            cost = self.state.checkpoint(self.journal.seq, lambda: {
                "instance": self.journal.instance, "watch_ids": [w.id for w in self.watches],
                "entries": dict(self.index.entries)})
        finally:
            interval = float(self.config.get("checkpoint_s", 1.0))
            self.loop.call_later(max(interval, 10 * cost), self._checkpoint)

    # --- events ---------------------------------------------------------------------------

    def _publish(self, body: dict[str, Any]) -> None:
        self.publisher.publish("fs.event", body)

    def _note_self_write(self, path: str, key: Any) -> None:
        self.pipeline.note_self_write(path, key)

    def _drain(self) -> None:
        """Runs on the loop when the observer handed something over."""
        if self.obs is None:
            return
        raws, overflowed, problems = self.obs.take()
        if overflowed:
            self.request_resync("overflow")  # first, so syncs in `raws` wait for it
        if raws:
            try:
                self.pipeline.feed(raws)
            except Exception:
                logger.exception("watcher: event handling failed")
                self.request_resync("handler_error")
        for kind, detail in problems:
            self._on_problem(kind, detail)

    def _on_problem(self, kind: str, detail: str) -> None:
        if kind == "enospc" and self.obs is not None:
            root = self.obs.root_of(detail)
            if root is not None and self.obs.to_polling(root):
                self.pipeline.marker(
                    "warning", reason="enospc", path=detail, root=root, mode="polling",
                    message=f"inotify watch limit reached under {root}: polling it instead")
        self.request_resync(kind)

    def request_resync(self, reason: str, recreate: bool = False) -> None:
        self.resyncs.request(reason, recreate)

    def _ours(self, path: str) -> bool:
        """The actor's own files: cookies and its state directory."""
        return COOKIE in path or path.startswith(str(self.state.dir))

    def _walk(self) -> dict[str, Stat]:
        out: dict[str, Stat] = {}
        keep = self.watches.in_scope if any(w.exclude for w in self.watches) else None
        for path, recursive in self.watches.observed_roots().items():
            snapshot.walk(path, keep, recursive, into=out)
        for p in [p for p in out if self._ours(p)]:
            del out[p]
        return out

    def resync(self, reason: str, *, recreate: bool = False,
               base: Mapping[str, Stat] | None = _INDEX) -> dict[str, Any] | None:
        """Watches first (already in place, or recreated), then walk, diff against `base`
        (default: the told state), publish the markers and the diff."""
        if self.obs is None or self.paused:
            return None
        t0 = time.perf_counter()
        if recreate:
            self.obs.recreate()
        raws, _, problems = self.obs.take()  # all before the walk: the walk covers them
        t1 = time.perf_counter()
        walk_started = time.monotonic()
        new = self._walk()
        walk_ms = round((time.perf_counter() - t1) * 1000, 3)
        summary = self.pipeline.resync(reason, new, self.index.entries if base is _INDEX
                                       else base, walk_ms=walk_ms)
        summary["walk_ms"] = walk_ms
        summary["total_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        self.last_resync = summary
        self.resync_total += 1
        for r in reason.split("+"):
            self.resync_counts[r] += 1
        self.resyncs.done()
        logger.info("watcher: resync {}", summary)
        for s in self.cookies.covered(walk_started):
            s.done(s)
        after, self._after_resync = self._after_resync, []
        for fn in after:
            fn()
        cookies = [r for r in raws if COOKIE in r[1] or (r[2] and COOKIE in r[2])]
        if cookies:
            self.pipeline.feed(cookies)
        for kind, detail in problems:
            if kind == "enospc":
                self._on_problem(kind, detail)
        return summary

    # --- cookies: fs.sync and the health check --------------------------------------------

    def _start_sync(self, done: Callable[[Sync], None]) -> tuple[Sync | None, list[str]]:
        assert self.obs is not None
        return self.cookies.start({p: r.via for p, r in self.obs.roots.items()}, done)

    def _on_cookie(self, path: str, etype: str) -> None:
        s = self.cookies.seen(path, etype)
        if s is None:
            return
        if self.resyncs.pending:
            self._after_resync.append(lambda: s.done(s))  # the diff must go out first
        else:
            s.done(s)

    def _health(self) -> None:
        """The seed's 3.2 health check: a cookie that does not come back means the observer
        is not delivering; recreate it and resync."""
        if self.obs is None or self.paused or self._health_wait is not None:
            return

        def ok(_s: Sync) -> None:
            self.health["ok"] += 1
            self._health_wait = None

        s, _ = self._start_sync(ok)
        if s is None:
            return
        self._health_wait = s

        def check() -> None:
            if not s.finished:
                self.cookies.drop(s)
                self._health_wait = None
                self.health["failed"] += 1
                self.request_resync("health_cookie", recreate=True)

        self.loop.call_later(float(self.config.get("health_timeout_s", 10.0)), check)

    def _liveness(self) -> None:
        self.pipeline.expire_self_writes()
        if self.obs is None or self.paused:
            return
        found = self.obs.check()
        for path in found["missing"]:
            self.pipeline.marker("warning", reason="root_missing", path=path,
                                 message=f"{path} is gone; watching resumes when it is back")
        if found["dead"]:
            logger.error("watcher: observer threads dead: {}", found["dead"])
            self.request_resync("observer_dead", recreate=True)
        elif found["back"]:
            self.request_resync("root_back")

    # --- op helpers ---------------------------------------------------------------------------

    @staticmethod
    def _settle(call: Call, p: Pending) -> Any:
        if p.done:
            return p.unwrap()
        p.then(lambda p: call.fail(p.error) if p.error is not None else call.reply(p.value))
        return DEFERRED

    def _need_watching(self) -> ObserverManager:
        if self.obs is None:
            raise fail("resource_exhausted", "watching is off: the watcher runs in its "
                       "cache_only fallback", detail={"fallback": "cache_only"})
        if self.paused:
            raise fail("busy", "watching is paused at quality level 0",
                       detail={"quality": self.quality}, retry_after_ms=5000)
        return self.obs

    # --- file ops ---------------------------------------------------------------------------

    @op("fs.read", args={"path": str, "offset": (int, 0), "length": (int, None)},
        idempotent=True)
    def _op_read(self, call: Call, path: str, offset: int, length: int | None) -> Any:
        """Contents (one raw attachment) and stat; `stale` when served from the cache."""
        if offset >= 0 and (length is None or length >= 0) and path:
            ans = self.files.read_cached(path, offset, length)
            if ans is not None:
                return ans
        return self._settle(call, self.files.read(path, offset, length))

    @op("fs.write", args={"path": str, "data": (bytes, None), "atomic": (bool, True),
                          "if_match": (str, None)})
    def _op_write(self, call: Call, path: str, data: bytes | None, atomic: bool,
                  if_match: str | None) -> Any:
        """Write a whole file (atomic: temp + fsync + rename); if_match guards conflicts."""
        if data is None:
            if not call.attachments:
                raise fail("bad_args", "fs.write: give `data` or one attachment")
            data = bytes(call.attachments[0])
        return self._settle(call, self.files.write(path, data, atomic, if_match))

    @op("fs.stat", args={"path": str}, idempotent=True)
    def _op_stat(self, call: Call, path: str) -> Any:
        """Type, size, times, ids and etag of a path (symlinks followed, confined)."""
        return self._settle(call, self.files.stat_path(path))

    @op("fs.list", args={"path": str, "recursive": (bool, False), "glob": (str, None)},
        idempotent=True, timeout_ms=30_000)
    def _op_list(self, call: Call, path: str, recursive: bool, glob: str | None) -> Any:
        """Entries of a directory, optionally recursive and filtered by a glob."""
        return self.files.list_dir(path, recursive, glob)

    # --- watch ops ---------------------------------------------------------------------------

    @op("fs.watch", args={"path": str, "recursive": (bool, True), "exclude": (list, None)},
        idempotent=True, timeout_ms=30_000)
    def _op_watch(self, call: Call, path: str, recursive: bool,
                  exclude: list | None) -> dict[str, Any]:
        """Watch a directory; events for it are published on fs.event."""
        obs = self._need_watching()
        real = self.roots.resolve_fast(path)
        try:
            if not os.path.isdir(real):
                os.stat(real)
                raise NotADirectoryError(20, "Not a directory", real)
        except OSError as exc:
            raise os_error(exc, path) from exc
        excl = tuple(exclude or ())
        w = self.watches.find(real, recursive, excl)
        if w is None:
            before = list(self.watches)
            w = self.watches.add(real, recursive, excl)
            try:
                warnings = obs.set_roots(self.watches.observed_roots())
            except OSError as exc:
                self.watches.remove(w.id)
                obs.set_roots(self.watches.observed_roots())
                raise os_error(exc, path) from exc
            # The new scope's base is the tree as it is now, after the watch is in place.
            fresh = snapshot.walk(real, w.covers if w.exclude else None, recursive)
            for p in [p for p in fresh if self._ours(p)]:
                del fresh[p]
            if not before and not self.index.entries:
                self.index.replace(fresh)
            else:
                for p, s in fresh.items():
                    if not any(o.covers(p) for o in before):
                        self.index.set(p, s)
            self.state.save_watches(self.watches.to_wire())
            for msg in warnings:
                self.pipeline.marker("warning", reason="inotify_unavailable", message=msg,
                                     path=real, mode="polling")
        root = obs.roots.get(obs.root_of(real) or "")
        spec = w.spec()
        return {"watch": spec.pop("id"), **spec, "via": root.via if root else "missing",
                "clock": self.journal.clock().to_wire()}

    @op("fs.unwatch", args={"watch": str})
    def _op_unwatch(self, call: Call, watch: str) -> dict[str, Any]:
        """Stop a watch (the directories no other watch needs are no longer observed)."""
        obs = self._need_watching()
        self.watches.remove(watch)
        obs.set_roots(self.watches.observed_roots())
        self.index.prune(self.watches.in_scope)
        self.state.save_watches(self.watches.to_wire())
        return {"removed": watch}

    @op("fs.since", args={"clock": list, "max": (int, 10_000)}, idempotent=True)
    def _op_since(self, call: Call, clock: list, max: int) -> dict[str, Any]:
        """Journaled events after `clock`, or fresh_instance when it cannot tell."""
        self._need_watching()
        if max < 1:
            raise fail("bad_args", "max must be >= 1")
        return self.journal.since(Clock.from_wire(clock), min(max, 10_000))

    @op("fs.sync", args={"timeout_ms": (int, 10_000)}, idempotent=True, timeout_ms=120_000)
    def _op_sync(self, call: Call, timeout_ms: int) -> Any:
        """Answer once every change made before this call has been published."""
        self._need_watching()
        if not 0 < timeout_ms <= 110_000:
            raise fail("bad_args", "timeout_ms must be in (0, 110000]")

        def done(s: Sync) -> None:
            self.syncs_answered += 1
            call.reply({"clock": self.journal.clock().to_wire(), "roots": len(s.cookies),
                        "unsynced": unsynced,
                        "waited_ms": round((time.monotonic() - s.started) * 1000, 3)})

        s, unsynced = self._start_sync(done)
        if s is None:
            self.pipeline.flush()
            return {"clock": self.journal.clock().to_wire(), "roots": 0,
                    "unsynced": unsynced, "waited_ms": 0.0}

        def expire() -> None:
            if not s.finished:
                self.cookies.drop(s)
                call.fail(WireError.of("timeout", f"fs.sync: cookies not back in {timeout_ms}"
                                       " ms", detail={"roots": list(s.cookies.values())}))

        self.loop.call_later(timeout_ms / 1000, expire)
        return DEFERRED

    @op("fs.stats", idempotent=True)
    def _op_stats(self, call: Call) -> dict[str, Any]:
        """Cache, observer, journal, pipeline, resync and checkpoint counters."""
        return self._stats()

    def _mode(self) -> str:
        if self.obs is None:
            return "cache_only"
        if self.paused:
            return "paused"
        vias = {r.via for r in self.obs.roots.values()} - {"missing"}
        return vias.pop() if len(vias) == 1 else ("mixed" if vias else self.obs.mode)

    def _stats(self) -> dict[str, Any]:
        return {
            "mode": self._mode(),
            "fallback": self.fallback,
            "roots": list(self.roots.roots),
            "cache": self.fcache.stats(),
            "observer": self.obs.stats() if self.obs is not None else None,
            "max_user_watches": _read_int("/proc/sys/fs/inotify/max_user_watches"),
            "watches": [w.spec() for w in self.watches],
            "index_entries": len(self.index),
            "journal": self.journal.stats(),
            "pipeline": self.pipeline.stats(),
            "resyncs": {"count": self.resync_total, "by_reason": dict(self.resync_counts),
                        "last": self.last_resync,
                        "pending": sorted(self.resyncs.reasons)},
            "checkpoints": self.state.stats(),
            "health": self.health,
            "syncs_answered": self.syncs_answered,
        }

    def info(self) -> dict[str, Any]:
        return {"mode": self._mode(), "watches": len(self.watches),
                "clock": self.journal.clock().to_wire()}

    # --- pressure -------------------------------------------------------------------------

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        done: dict[str, Any] = {}
        if level == "moderate":
            done["cache"] = self.fcache.trim(0.5)
        elif level in ("high", "critical"):
            done["cache"] = self.fcache.trim(1.0)
        if self.obs is not None:
            if quality == 0 and not self.paused:
                self.pipeline.flush()
                self.obs.stop()
                self.paused = True
                done["watching"] = "paused"
            elif quality > 0 and self.paused:
                self.paused = False
                self.obs.recreate()
                done["watching"] = "resumed"
                done["resync"] = self.resync("resumed")
        return done


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
