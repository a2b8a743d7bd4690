"""The watcher actor: a cached, confined file service, and watches that never lose an event
in silence.

  op          args                             reply                          errors
  fs.read     {path, offset?=0, length?}       {stat, stale, size, offset,    not_found forbidden
                                                length} + the contents as     is_directory bad_args
                                                one raw attachment            (FIFO, device,
                                                                              socket: detail.type)
                                                                              file_too_large
                                                                              io_error
  fs.write    {path, data? (else attachment    {path, stat, bytes, atomic}    conflict no_space
               0), atomic?=true, if_match?                                    forbidden not_found
               (etag; "" = must not exist)}                                   is_directory io_error
                                                                              bad_args (special
                                                                              file) busy (io
                                                                              workers full)
  fs.stat     {path}                           {path, type, size, mtime_ns,   not_found forbidden
                                                ctime_ns, ino, dev, mode,
                                                etag}
  fs.list     {path, recursive?=false, glob?}  {path, entries: [{name, type,  not_a_directory
                                                size, mtime_ns}], truncated,  not_found forbidden
                                                unreadable?,
                                                unreadable_more?}
  fs.watch    {path, recursive?=true,          {watch, path, recursive,       not_a_directory busy
               exclude?}                        exclude, holders, via,        resource_exhausted
                                                clock}                        bad_args (pseudo
                                                                              file system)
  fs.unwatch  {watch}                          {removed, holders, held,       watch_not_found
                                                dropped}
  fs.since    {clock, max?=10000}              {fresh_instance, clock,        bad_args busy
                                                events, more, reason?}        resource_exhausted
  fs.query    {path, glob?, suffix?, type?,    {files, clock,                 watch_not_found
               since? (clock), fields?,         fresh_instance, cursor,       bad_args
               max?=10000} or {cursor, max?}    more, scanned}                resource_exhausted
                                                                              forbidden busy
                                                                              not_found
                                                                              not_a_directory
  fs.sync     {timeout_ms?=10000}              {clock, roots, waited_ms,      timeout busy
                                                unsynced}                     resource_exhausted
  fs.stats    {}                               {mode, cache, observer,
                                                watches, journal, pipeline,
                                                resyncs, checkpoints, health,
                                                workers, query}

A path or name that is not valid UTF-8 in a reply or an event is readable in its field and
exact in the field beside it (`path_bytes`, `name_bytes`...: snapshot.wire_fields).

Watches are shared and held (watches.py, watch_ops.py): fs.watch of a directory already
watched the same way answers that watch and takes the caller's hold on it (by session id);
fs.unwatch lets go of the caller's hold, and the watch stops with its last one (`holders` in
both answers: how many hold it now). One from a session that holds none stops it for all
(`held: false`, `dropped`: the holds taken away). The config's `watch` entries are held by
"config", taken again at each start. A watch keeps at most 64 holds (MAX_HOLDERS: past it the
oldest client's goes; a client that died never lets go), saved with the watches. A watcher
holds at most 1,024 watches (MAX_WATCHES): one more fs.watch answers resource_exhausted until
one is removed. Watches survive a restart of the watcher (not a new tree), so those of
clients gone without fs.unwatch count until an fs.unwatch removes them (fs.stats lists each
watch with its holders' count).

Nothing blocks the loop: fs.write's syscalls (fsync, rename), the walk of an fs.list past
its first `list_loop_entries` and an fs.read whose file is not all in the page cache run on
the `io` workers, every file op on a slow file system (NFS, SMB, FUSE...) on the `remote`
workers (fs.watch's checks of a path there, fs.sync's cookies and the liveness check's looks
too; an event's path there is not stat'ed: pipeline.py), fs.watch's placement, its base
walk and a root that came back on the `walker` thread
(moorage.actors.watcher.workers), their replies deferred; a full queue answers busy with
retry_after_ms. fs.query answers from the in-memory index in slices
(moorage.actors.watcher.query).

Events: topic `fs.event`, one message per flush, {"events": [...]}; each event carries its
clock [instance, epoch, seq] and is journaled before it is published (see
moorage.actors.watcher.pipeline for the event shape). `fs.sync` writes a cookie file into every
observed root and answers once each cookie has come back through the pipeline, after every
event before it was published (a polling root: once its deletion has come back too).

Resyncs (resync_begin, synthetic diff events, resync_end) happen at every start, on a kernel
or hand-off queue overflow, on ENOSPC (the subtree whose inotify watch could not be placed is
then polled, with a `warning` event; past `max_polled_subtrees` in one root, the whole root),
when an observer thread is found dead (checked every `liveness_s`), on a handler error, when
a health cookie does not come back within `health_timeout_s`, and when watching resumes after
quality 0. Repeated resyncs back off (doubling up to `resync_backoff_max_s`). The loop side
of all this is moorage.actors.watcher.driving; the watch ops are moorage.actors.watcher.watch_ops.

Restart without loss (R3; moorage.actors.watcher.state): the watches, a write-ahead log of the paths
of published events and a lagging checkpoint of the told state survive in `state_dir`. The
restart resync's diff covers what was in flight when the process died, what it published
after its checkpoint and what changed while it was down (at least once: a path reported
`modified` that a consumer never heard of exists). It is relative to what was published at
least one `checkpoint_s` before the death, and to the entries of every watch whose fs.watch
was answered before it, however soon before: fs.watch answers once the new watch's entries
(its crawl, which no event tells) are in the index and the told state with them is on disk
(a checkpoint written at once, which keeps the last interval's events unknown). A restart
that finds no state it can take for whole resyncs fresh (`fresh: true`: a consumer lists
again), never a diff against less than was told: after a death within the write of a first
start's walk (its fresh resync, written so right after it is published: milliseconds), and
after one while the state was given up (a state directory that refused a write, a full
runtime disk: the watches, the log or a checkpoint; fs.stats `checkpoints.lost`) and not
yet rebuilt (the first checkpoint the directory takes writes at again captures it, written
an interval later: `checkpoints.rebuilt`). Ops and the start go on whether the state is
saved or not. A consumer that lagged further behind, or saw a Loss, lists again (as after
fresh_instance).

Fallbacks (`config["fallback"]`, set by the supervisor): "polling" observes every root with
watchdog's PollingObserver; "cache_only" does not watch at all: reads, writes, stat and list
work (the cache revalidates by stat), watch ops answer resource_exhausted with the fallback.
Quality 0 (sys.pressure) pauses watching (watch ops answer busy) and resyncs when it returns;
pressure "moderate" halves the cache, "high"/"critical" clears it.

Config: roots [], watch [] (static watches: path or {path, recursive, exclude}; one that
cannot be placed as the actor starts, a path its symbolic links lead out of the roots, is
logged and listed in sys.info's `unplaced`, and the rest served), settle_ms 20,
buffer_max 65536, journal_max 50000, chunk 1000, cache_max_bytes 64 MiB, cache_max_file_bytes
4 MiB, max_read_bytes 16 MiB, list_max 50000 (entries returned), list_max_scanned 1000000
(entries looked at), list_loop_entries 2000 (looked at on the loop; the rest of a walk runs
on a worker), slow_fs_types (file systems whose ops all run on the `remote` workers: NFS,
SMB, 9p, Ceph, FUSE but for local kinds like fuse-overlayfs... mounts.SLOW_TYPES; "fuse.*"
names a family), remote_threads 2,
remote_queue 32, retry {retries 3, initial_ms 10, factor 2,
max_ms 500}, liveness_s 1, health_interval_s 30, health_timeout_s 10, poll_interval_s 1,
max_polled_subtrees 16, checkpoint_s 1, resync_backoff_max_s 10, io_threads 2, io_queue 128,
write_bytes_in_flight 256 MiB,
walk_queue 8, switch_interval_s 0.001, stat_ahead true (a window's lstats made on a thread
while it is open: statahead.py), state_dir "<runtime_dir>/<name>.state".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from moorage.actors.runtime import DEFERRED, Actor, Call, op
from moorage.actors.runtime.shapes import Named
from moorage.actors.watcher import pipeline, snapshot
from moorage.actors.watcher.cache import FileCache
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.cookies import Cookies
from moorage.actors.watcher.driving import Driving
from moorage.actors.watcher.files import FILE_CORE, FileService
from moorage.actors.watcher.journal import Journal
from moorage.actors.watcher.mounts import SLOW_TYPES, MountTable
from moorage.actors.watcher.observer import ObserverManager
from moorage.actors.watcher.pipeline import Pipeline, tune_gc
from moorage.actors.watcher.query import QueryOps
from moorage.actors.watcher.retry import FS_ERRORS, Pending, RetryPolicy
from moorage.actors.watcher.snapshot import Index, wire_fields
from moorage.actors.watcher.statahead import StatAhead
from moorage.actors.watcher.state import State, tree_identity
from moorage.actors.watcher.watch_ops import PATH_ITEM, WatchOps
from moorage.actors.watcher.watches import CONFIG_HOLDER, Watches, wire_paths
from moorage.actors.watcher.workers import Job, Workers
from moorage.protocol.envelope import Packed
from moorage.protocol.errors import Category, MoorageError, fail
from moorage.protocol.limits import MAX_ID

# --- the shapes of the answers ----------------------------------------------------------------
CLOCK = tuple[str, int, int]  # [instance, epoch, seq] of the journal (journal.Clock)
_STAT = {"type": Literal["file", "dir", "symlink", "other"], "size": int, "mtime_ns": int,
         "ctime_ns": int, "ino": int, "dev": int, "mode": int, "etag": str}  # cache.stat_info
STAT = Named("stat", _STAT)
ENTRY = {"name": str, "type": Literal["file", "dir", "symlink", "other"], "size": int,
         "mtime_ns": int, "name_bytes?": bytes}  # fs.list: a name relative to `path`, its lstat
UNREADABLE = {"name": str, "error": str, "name_bytes?": bytes}  # fs.list: left out, errno
# (`path_bytes`, `name_bytes`: the exact bytes of a path or name that is not valid UTF-8,
# whose str field is then only readable: snapshot.wire_fields)
WATCH = Named("watch", {"id": str, "path": str, "path_bytes?": bytes, "recursive": bool,
                        "exclude": list[str], "holders": int})  # Watch.wire_spec


class WatcherActor(Actor):
    name = "watcher"
    category = Category.FILESYSTEM
    op_providers = (WatchOps, QueryOps)
    # What `fallbacks =` of its child spec may name (checked with the config, before start).
    fallbacks = ("polling", "cache_only")

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        c = self.config
        tune_gc()
        # The watcher's threads (inotify lane, emitters, workers) hand each event to the
        # loop: a thread woken while another holds the GIL waits up to this long for it
        # (Python's default, 5 ms, is most of an unsettled event's p99 under load).
        sys.setswitchinterval(float(c.get("switch_interval_s", 0.001)))
        self.fallback = c.get("fallback")
        self.roots = Roots(c.get("roots", []))
        self.unplaced: list[dict[str, str]] = []  # configured watches this start could not place
        self.fcache = FileCache(int(c.get("cache_max_bytes", 64 << 20)),
                                int(c.get("cache_max_file_bytes", 4 << 20)))
        # Syscalls that may block go to worker threads (moorage.actors.watcher.workers):
        # `io` for fs.write (fsync waits for the disk) and big listings, `walker` for watch
        # placement and walks.
        wake = self.loop.call_soon_threadsafe
        self.io = Workers("io", wake, threads=int(c.get("io_threads", 2)),
                          queue=int(c.get("io_queue", 128)))
        self.walker = Workers("walker", wake, threads=1, queue=int(c.get("walk_queue", 8)),
                              retry_after_ms=1000)
        # Every op on a slow file system (NFS, SMB, FUSE...), whose calls may never return:
        # a pool of its own, so a stalled mount holds only its own calls.
        self.remote = Workers("remote", wake, threads=int(c.get("remote_threads", 2)),
                              queue=int(c.get("remote_queue", 32)))
        self.mounts = MountTable(c.get("slow_fs_types", SLOW_TYPES))
        self.roots.slow_check = self.mounts.slow_check
        self.files = FileService(
            self.roots, self.fcache, RetryPolicy.from_config(c.get("retry", {})),
            self.loop.call_later, max_read=int(c.get("max_read_bytes", 16 << 20)),
            max_list=int(c.get("list_max", 50_000)),
            max_list_scanned=int(c.get("list_max_scanned", 1_000_000)),
            list_loop_entries=int(c.get("list_loop_entries", 2_000)),
            on_self_write=self._note_self_write,
            offload=self.io.submit, remote=self.remote.submit, slow=self.roots.on_slow,
            max_write_bytes=int(c.get("write_bytes_in_flight", 256 << 20)))
        self.watches = Watches()
        self.index = Index()
        self.journal = Journal(self.epoch, int(c.get("journal_max", 50_000)))
        state_dir = c.get("state_dir") or str(self.runtime_dir / f"{self.name}.state")
        self.state = State(Path(os.path.realpath(state_dir)), tree_identity(self.runtime_dir))
        self.driving = Driving(self)
        self.pipeline = Pipeline(
            self.journal, self.watches, self.index, self._publish, self.loop.call_later,
            settle_s=float(c.get("settle_ms", 20)) / 1000, cache=self.fcache,
            on_cookie=self.driving.on_cookie, chunk=int(c.get("chunk", 1000)),
            ignore=(str(self.state.dir),), slow_check=self.mounts.slow_check,
            ahead=StatAhead() if c.get("stat_ahead", True) else None)
        self.pipeline.retired = self._retire
        self.obs: ObserverManager | None = None
        self.paused = False
        # (a root on a slow file system has its cookies written on the remote workers)
        self.cookies = Cookies(self.mounts.slow, self.remote.submit, self.driving.complete_sync)
        self.watch_ops = WatchOps(self)
        self.add_ops(self.watch_ops)
        self.query_ops = QueryOps(self)
        self.add_ops(self.query_ops)

    # --- start and stop -------------------------------------------------------------------

    def on_start(self) -> None:
        if self.pipeline.ahead is not None:
            self.pipeline.ahead.start()
        saved_watches, saved = self.state.load()
        if saved_watches is not None:
            self.watches.load(saved_watches)
        for spec in self.config.get("watch", []):
            spec = {"path": spec} if isinstance(spec, str) else dict(spec)
            exclude = tuple(spec.get("exclude", ()))
            recursive = bool(spec.get("recursive", True))
            try:
                absolute = self.roots.absolute(spec.get("path"))  # type: ignore[arg-type]
                if self.roots.on_slow(absolute):  # resolved where a stalled mount may wait
                    self._watch_once_resolved(absolute, recursive, exclude)
                    continue
                real = self.roots.resolve(absolute)
            except MoorageError as exc:
                # (`moorage up` refuses such a path; a symbolic link on the way may lead out
                # of the roots since: the rest is served, and sys.info says what was not)
                self._not_placed(spec.get("path"), exc)
                continue
            w = self.watches.find(real, recursive, exclude)
            if w is None:
                try:  # (1,024 watches saved by clients: the configured one is not placed)
                    w = self.watches.add(real, recursive, exclude)
                except MoorageError as exc:
                    self._not_placed(spec.get("path"), exc)
                    continue
            w.hold(CONFIG_HOLDER)  # (no client's fs.unwatch ends it: watches.py)
        # (a state directory that refuses the save, a full runtime disk, does not stop the
        # start: the state is given up, and each checkpoint tries to rebuild it: state.py)
        self.state.save_watches(self.watches.to_wire())
        d = self.driving
        self.loop.call_later(float(self.config.get("checkpoint_s", 1.0)), d.checkpoint)
        if self.fallback == "cache_only":
            logger.warning("watcher: cache_only fallback: not watching")
            return
        self.state.open_wal()
        self.pipeline.before_publish = self.state.log
        self.pipeline.pull = self.driving.pull
        self.pipeline.after_flush = self.driving.after_flush
        self.pipeline.on_lost = self.driving.request_resync
        self.obs = ObserverManager(
            self.loop.call_soon_threadsafe, self.driving.drain,
            mode="polling" if self.fallback == "polling" else "inotify",
            buffer_max=int(self.config.get("buffer_max", 65536)),
            poll_interval=float(self.config.get("poll_interval_s", 1.0)),
            max_polled=int(self.config.get("max_polled_subtrees", 16)),
            wanted=self.watches.needs, loop=self.loop)
        # Placed with the first walk, on the walker (watches first, then the walk), not
        # here: a root on a stalled mount would hold the start, and every restart after it.
        self.obs.adopt_roots(self.watches.observed_roots())
        self.cookies.remove_stale(list(self.obs.roots))
        if saved_watches is None:  # the first life in this tree: nothing to diff against
            self.driving.resync("start", base=None, place=True)
        else:  # (no snapshot, or one not whole: no base either, and a fresh resync)
            base = self.state.restart_base(saved, self.watches.in_scope)
            self.driving.resync("restart", base=base, place=True)
        self.loop.call_every(float(self.config.get("liveness_s", 1.0)), d.liveness)
        self.loop.call_every(float(self.config.get("health_interval_s", 30.0)), d.health_check)

    def _watch_once_resolved(self, absolute: str, recursive: bool,
                             exclude: tuple[str, ...]) -> None:
        """A configured watch on a slow file system: resolved on the remote workers (the
        start does not wait for a stalled mount), then observed like a saved one."""
        def resolved(job: Job) -> None:
            if job.error is not None:
                self._not_placed(absolute, job.error)
                return
            real = job.value
            w = self.watches.find(real, recursive, exclude)
            if w is not None:
                if w.hold(CONFIG_HOLDER):
                    self.state.save_watches(self.watches.to_wire(), holds=True)
                return
            try:
                self.watches.add(real, recursive, exclude).hold(CONFIG_HOLDER)
            except MoorageError as exc:
                self._not_placed(absolute, exc)
                return
            self.state.save_watches(self.watches.to_wire())
            if self.obs is not None and not self.paused:
                self.driving.reobserve("config_watch")

        try:
            job = self.remote.submit(lambda: self.roots.resolve(absolute), lambda real: real)
        except MoorageError as exc:  # busy: every remote worker waits on a stalled mount
            self._not_placed(absolute, exc)
            return
        job.then(resolved)

    def _not_placed(self, path: Any, error: BaseException) -> None:
        """A configured watch this start could not place, said once in the log and kept for
        sys.info (`unplaced`) until the next start."""
        logger.error("watcher: configured watch {!r:.200} not placed: {}", path, error)
        self.unplaced.append({"path": str(path)[:4096], "error": str(error)[:4096]})

    def on_stop(self) -> None:
        if self.pipeline.ahead is not None:
            self.pipeline.ahead.close()
        self.io.shutdown()
        self.walker.shutdown()
        self.remote.shutdown()
        if self.obs is not None:
            self.obs.stop()
        self.state.close()

    def _publish(self, body: Packed) -> None:
        self.publisher.publish("fs.event", body)

    def _retire(self, bodies: list[bytes]) -> None:
        self.publisher.topic("fs.event").forget_oldest(bodies)

    def _note_self_write(self, path: str, key: Any) -> None:
        self.pipeline.note_self_write(path, key)

    @staticmethod
    def _settle(call: Call, p: Pending, path: bool = False) -> Any:
        """`p`'s answer, now or deferred; `path`: its `path` in the wire's form (a real
        path that is not valid UTF-8, a symlink's target's, must not fail the answer:
        snapshot.wire_fields)."""
        def answer(value: Any) -> Any:
            if path:
                wire_fields(value, ("path",))
            return value

        if p.done:
            return answer(p.unwrap())
        p.then(lambda p: call.fail(p.error) if p.error is not None
               else call.reply(answer(p.value)))
        return DEFERRED

    # --- file ops ---------------------------------------------------------------------------

    # fs.read, fs.stat and fs.list answer dicts FileService builds of str, int and bool (and
    # stat_info's dict, a list of them for fs.list): checked=False, no shape to walk, as
    # fs.write's. A path or name that is not valid UTF-8 goes as snapshot.wire_fields says.
    @op("fs.read", args={"path": str, "offset": (int, 0), "length": (int, None)},
        idempotent=True, reply_attachments=1, errors=FS_ERRORS, checked=False,
        result={"stat": STAT, "stale": bool, "stale_reason?": str, "size": int, "offset": int,
                "length": int})
    def _op_read(self, call: Call, path: str, offset: int, length: int | None) -> Any:
        """Contents (one raw attachment) and stat; `stale` when served from the cache."""
        # (an offset or length out of range is refused by FileService.read, as bad_args)
        if 0 <= offset <= MAX_ID and (length is None or 0 <= length <= MAX_ID) and path:
            ans = self.files.read_cached(path, offset, length)
            if ans is not None:
                return ans
        return self._settle(call, self.files.read(path, offset, length))

    @op("fs.write", args={"path": str, "data": (bytes, None), "atomic": (bool, True),
                          "if_match": (str, None)}, checked=False, request_attachments=(0, 1),
        result={"path": str, "path_bytes?": bytes, "stat": STAT, "bytes": int,
                "atomic": bool}, errors=FS_ERRORS)
    def _op_write(self, call: Call, path: str, data: bytes | None, atomic: bool,
                  if_match: str | None) -> Any:
        """Write a whole file (atomic: temp + fsync + rename); if_match guards conflicts."""
        # (checked=False: the answer is the path, ints, bools and stat_info's dict of
        # strings and ints, made by FileService: no shape to walk)
        if (data is None) == (not call.attachments):
            raise fail("bad_args", "fs.write: give the contents as `data` or as one "
                       "attachment, not both")
        if data is None:
            data = bytes(call.attachments[0])
        return self._settle(call, self.files.write(path, data, atomic, if_match), path=True)

    @op("fs.stat", args={"path": str}, idempotent=True,
        result={"path": str, "path_bytes?": bytes, **_STAT}, errors=FS_ERRORS, checked=False)
    def _op_stat(self, call: Call, path: str) -> Any:
        """Type, size, times, ids and etag of a path (symlinks followed, confined)."""
        return self._settle(call, self.files.stat_path(path), path=True)

    @op("fs.list", args={"path": str, "recursive": (bool, False), "glob": (str, None)},
        idempotent=True, timeout_ms=30_000, errors=FS_ERRORS, checked=False,
        result={"path": str, "path_bytes?": bytes, "entries": list[ENTRY],
                "truncated": bool,
                "unreadable?": list[UNREADABLE],
                "unreadable_more?": int})
    def _op_list(self, call: Call, path: str, recursive: bool, glob: str | None) -> Any:
        """Entries of a directory, optionally recursive and filtered by a glob. A directory
        below it that cannot be read (gone, forbidden, EINVAL in /proc), or an entry whose
        lstat fails, is left out and named in `unreadable` with its errno (at most 1,000,
        the rest counted in `unreadable_more`): the walk goes on past it, and only the
        directory asked for failing fails the call."""
        return self._settle(call, self.files.list_dir(path, recursive, glob))

    # --- stats -----------------------------------------------------------------------------

    @op("fs.stats", idempotent=True, result={
        "mode": str, "fallback": str | None, "roots": list[PATH_ITEM],
        "max_user_watches": int | None,
        "watches": list[WATCH], "index_entries": int, "syncs_answered": int,
        "watches_placing": int, "watch_joins": int, "health": {"ok": int, "failed": int},
        "resyncs": {"count": int, "by_reason": dict[str, int], "last": dict[str, Any] | None,
                    "pending": list[str], "walking": bool},
        # diagnostic counters of the parts (cache.py, observer.py, journal.py, pipeline.py,
        # state.py, workers.py, query.py): named by their modules, not a contract
        "cache": dict[str, Any], "observer": dict[str, Any] | None, "journal": dict[str, Any],
        "pipeline": dict[str, Any], "checkpoints": dict[str, Any],
        "workers": {"io": dict[str, Any], "walker": dict[str, Any], "remote": dict[str, Any]},
        "files": {"reads_offloaded": int, "remote_ops": int, "temps_removed": int},
        "query": dict[str, int]})
    def _op_stats(self, call: Call) -> dict[str, Any]:
        """Cache, observer, journal, pipeline, resync and checkpoint counters."""
        return self._stats()

    def _mode(self) -> str:
        if self.obs is None:
            return "cache_only"
        if self.paused:
            return "paused"
        vias = {r.via for r in self.obs.roots.values()} - {"missing", "placing"}
        if self.obs.polled:  # inotify roots with subtrees polled after ENOSPC
            vias.add("polling")
        return vias.pop() if len(vias) == 1 else ("mixed" if vias else self.obs.mode)

    def _stats(self) -> dict[str, Any]:
        return {
            "mode": self._mode(),
            "fallback": self.fallback,
            "roots": wire_paths(self.roots.roots),
            "cache": self.fcache.stats(),
            "observer": self.obs.stats() if self.obs is not None else None,
            "max_user_watches": _read_int("/proc/sys/fs/inotify/max_user_watches"),
            "watches": [w.wire_spec() for w in self.watches],
            "index_entries": len(self.index),
            "journal": self.journal.stats(),
            "pipeline": self.pipeline.stats(),
            "resyncs": {"count": self.driving.resync_total,
                        "by_reason": dict(self.driving.resync_counts),
                        "last": self.driving.last_resync,
                        "pending": sorted(self.driving.resyncs.reasons),
                        "walking": self.driving.walking},
            "checkpoints": self.state.stats(),
            "health": self.driving.health,
            "syncs_answered": self.watch_ops.syncs_answered,
            "workers": {"io": self.io.stats(), "walker": self.walker.stats(),
                        "remote": self.remote.stats()},
            "files": self.files.stats(),
            "watches_placing": len(self.watch_ops.placing),
            "watch_joins": self.watch_ops.joined,
            "query": self.query_ops.stats(),
        }

    def info(self) -> dict[str, Any]:
        return {"mode": self._mode(), "watches": len(self.watches), "unplaced": self.unplaced,
                "clock": self.journal.clock().to_wire(),
                "walk_core": snapshot.WALK_CORE,  # the tree walk: compiled or Python
                "file_core": FILE_CORE,  # the file service's read and write: the same
                "events_core": pipeline.EVENTS_CORE,  # a flush's packing: the same
                # the resolutions remembered (confine.Roots: bounded in entries and bytes)
                "resolve_memo": self.roots.memo_stats()}

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
                self.driving.halt(self.obs.detach())
                self.paused = True
                done["watching"] = "paused"
            elif quality > 0 and self.paused:
                self.paused = False
                done["watching"] = "resumed"
                # observers made anew and placed on the walker, then the walk
                done["resync"] = self.driving.resync("resumed", recreate=True)
        return done


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
