"""The watcher's watch ops: fs.watch, fs.unwatch, fs.since, fs.sync (see actor.py for the
table of arguments, replies and errors).

A component of WatcherActor (actor.py), next to driving.py: these ops change what is observed
and ask the driving side for cookies; they never touch the observer's threads directly.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from moorage.actors.runtime import DEFERRED, Call, op
from moorage.actors.watcher import snapshot
from moorage.actors.watcher.cookies import Sync
from moorage.actors.watcher.journal import Clock
from moorage.actors.watcher.observer import ObserverManager
from moorage.actors.watcher.retry import os_error
from moorage.protocol.errors import WireError, fail

if TYPE_CHECKING:
    from moorage.actors.watcher.driving import WatcherHost


class WatchOps:
    """fs.watch, fs.unwatch, fs.since and fs.sync, over the watcher's parts (`WatcherHost`)."""

    def __init__(self, w: WatcherHost) -> None:
        self.w = w
        self.syncs_answered = 0

    def _need_watching(self) -> ObserverManager:
        if self.w.obs is None:
            raise fail("resource_exhausted", "watching is off: the watcher runs in its "
                       "cache_only fallback", detail={"fallback": "cache_only"})
        if self.w.paused:
            raise fail("busy", "watching is paused at quality level 0",
                       detail={"quality": self.w.quality}, retry_after_ms=5000)
        return self.w.obs

    @op("fs.watch", args={"path": str, "recursive": (bool, True), "exclude": (list, None)},
        idempotent=True, timeout_ms=30_000)
    def _op_watch(self, call: Call, path: str, recursive: bool,
                  exclude: list | None) -> dict[str, Any]:
        """Watch a directory; events for it are published on fs.event."""
        obs = self._need_watching()
        real = self.w.roots.resolve_fast(path)
        try:
            if not os.path.isdir(real):
                os.stat(real)
                raise NotADirectoryError(20, "Not a directory", real)
        except OSError as exc:
            raise os_error(exc, path) from exc
        excl = tuple(exclude or ())
        w = self.w.watches.find(real, recursive, excl)
        if w is None:
            before = list(self.w.watches)
            w = self.w.watches.add(real, recursive, excl)
            try:
                warnings = obs.set_roots(self.w.watches.observed_roots())
                if any(o.exclude for o in before):  # they may have left out what w needs
                    obs.refresh()
            except OSError as exc:
                self.w.watches.remove(w.id)
                obs.set_roots(self.w.watches.observed_roots())
                raise os_error(exc, path) from exc
            # The new scope's base is the tree as it is now, after the watch is in place.
            fresh = snapshot.walk(real, w.covers if w.exclude else None, recursive)
            for p in [p for p in fresh if self.w.driving.ours(p)]:
                del fresh[p]
            if not before and not self.w.index.entries:
                self.w.index.replace(fresh)
            else:
                for p, s in fresh.items():
                    if not any(o.covers(p) for o in before):
                        self.w.index.set(p, s)
            self.w.state.save_watches(self.w.watches.to_wire())
            for msg in warnings:
                self.w.pipeline.marker("warning", reason="inotify_unavailable", message=msg,
                                     path=real, mode="polling")
        root = obs.roots.get(obs.root_of(real) or "")
        spec = w.spec()
        return {"watch": spec.pop("id"), **spec, "via": root.via if root else "missing",
                "clock": self.w.journal.clock().to_wire()}

    @op("fs.unwatch", args={"watch": str})
    def _op_unwatch(self, call: Call, watch: str) -> dict[str, Any]:
        """Stop a watch (the directories no other watch needs are no longer observed)."""
        obs = self._need_watching()
        self.w.watches.remove(watch)
        obs.set_roots(self.w.watches.observed_roots())
        self.w.index.prune(self.w.watches.in_scope)
        self.w.state.save_watches(self.w.watches.to_wire())
        return {"removed": watch}

    @op("fs.since", args={"clock": list, "max": (int, 10_000)}, idempotent=True)
    def _op_since(self, call: Call, clock: list, max: int) -> dict[str, Any]:
        """Journaled events after `clock`, or fresh_instance when it cannot tell."""
        self._need_watching()
        if max < 1:
            raise fail("bad_args", "max must be >= 1")
        return self.w.journal.since(Clock.from_wire(clock), min(max, 10_000))

    @op("fs.sync", args={"timeout_ms": (int, 10_000)}, idempotent=True, timeout_ms=120_000)
    def _op_sync(self, call: Call, timeout_ms: int) -> Any:
        """Answer once every change made before this call has been published."""
        self._need_watching()
        if not 0 < timeout_ms <= 110_000:
            raise fail("bad_args", "timeout_ms must be in (0, 110000]")

        def done(s: Sync) -> None:
            self.syncs_answered += 1
            call.reply({"clock": self.w.journal.clock().to_wire(), "roots": len(s.cookies),
                        "unsynced": unsynced,
                        "waited_ms": round((time.monotonic() - s.started) * 1000, 3)})

        s, unsynced = self.w.driving.start_sync(done)
        if s is None:
            self.w.pipeline.flush()
            return {"clock": self.w.journal.clock().to_wire(), "roots": 0,
                    "unsynced": unsynced, "waited_ms": 0.0}

        def expire() -> None:
            if not s.finished:
                self.w.cookies.drop(s)
                call.fail(WireError.of("timeout", f"fs.sync: cookies not back in {timeout_ms}"
                                       " ms", detail={"roots": list(s.cookies.values())}))

        self.w.loop.call_later(timeout_ms / 1000, expire)
        return DEFERRED
