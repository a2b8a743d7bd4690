"""The SLO record on disk: the SLO windows and the recovery incidents, saved together.

Saved together because the incidents and the supervisor-event cursor must agree: after a
SIGKILL of the metrics actor, the events taken since the last save are taken again from the
supervisor's retention, and nothing is counted twice or missed. A file that cannot be read is
logged and set aside (`<name>.corrupt-<time>`), and the record starts afresh: losing the
history must not stop the metrics.

A save packs on the actor's loop (only the buckets written since the last save are packed
again; the rest are kept packed) and writes on a thread of its own: the write and its fsyncs
(a few KB for a quiet editor session, about 10 MB for 50 ops busy every hour for 30 days) must
not stall the loop, whose reply times are the recovery figures. One write at a time; a save
asked while one is in flight waits for the next tick. Saves are spaced at least
SAVE_COST_FACTOR times the last one's cost apart.

Each incident closed as it happens gets its INFO line. Those a start of the metrics actor
closes from before it served (replayed from the supervisor's retention, or loaded with their
probe on the way) are history: they go to the debug level, and one INFO line per replay says
how many there were and when their exits happened. A kill loop replays all that is retained
since the last save (up to 10,000 events) at every start, and a line each would push
everything else out of the rotated log.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.metrics.recovery import Incident, RecoveryTracker
from moorage.actors.metrics.settings import Settings
from moorage.actors.metrics.slo import STATE_VERSION, SloStore, load_state, set_aside, write_state
from moorage.protocol.envelope import packb

SAVE_COST_FACTOR = 20


@dataclass(slots=True)
class ReplayTally:
    """The replayed incidents closed since the last summary line (the module docstring)."""

    count: int = 0
    first_exit: float = float("inf")  # wall time
    last_exit: float = float("-inf")
    over_rto: int = 0

    def add(self, inc: Incident, rto_s: float) -> None:
        self.count += 1
        self.first_exit = min(self.first_exit, inc.exited_at)
        self.last_exit = max(self.last_exit, inc.exited_at)
        self.over_rto += inc.recovery_ms > rto_s * 1000


def _wall(t: float) -> str:
    """A wall time as the log file's lines show theirs (local time, to the millisecond)."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))}.{int(t * 1000) % 1000:03d}"


class SloRecord:
    def __init__(self, path: Path, settings: Settings) -> None:
        self.path = path
        self.settings = settings
        self.store = SloStore(settings.max_keys)
        self.tracker = self._new_tracker()
        self.dirty = False
        self.saves = 0
        self.loaded = False
        self.save_cost_s = 0.0  # what the last save took
        self._last_save = float("-inf")  # monotonic
        self._writer: threading.Thread | None = None
        self.replayed = ReplayTally()  # closed from history, not yet summed up

    def _new_tracker(self) -> RecoveryTracker:
        return RecoveryTracker(self.settings.rto_s, self.settings.rto_default_s)

    def load(self, now: float) -> None:
        """Take the saved record, if there is a readable one."""
        try:
            state = load_state(self.path)
            if state is None:
                return
            store = SloStore.from_state(state.get("slo"), self.settings.max_keys)
            tracker = self._new_tracker()
            tracker.load(state.get("recovery"))
        except (ValueError, OSError) as exc:
            logger.error("SLO record {} unreadable ({}); starting afresh", self.path, exc)
            try:
                logger.error("the unreadable record is kept as {}", set_aside(self.path, now))
            except OSError as err:
                logger.error("could not set it aside: {}", err)
            return
        self.store, self.tracker, self.loaded = store, tracker, True
        logger.info("SLO record loaded from {} (since {})", self.path, store.first)
        if store.unloaded_keys:
            # Clients' keys (kept by older versions) or more than max_keys: left out, and the
            # record saved without them, so that no later start reads them again.
            logger.warning("SLO record {}: {} (actor, op) keys left out (clients' or past "
                           "max_keys {})", self.path, store.unloaded_keys, store.max_keys)
            self.dirty = True
        for inc in list(tracker.open.values()):
            if inc.ready_at is not None:  # its probe was on the way when we stopped
                self.close_replayed(inc)

    def save(self, now: float, force: bool = False) -> None:
        """Write the record if it changed (and, unless `force`, the last save's cost allows
        and no write is in flight); `force` (at stop) writes on this thread and waits. A
        failure is logged and retried at the next save."""
        started = time.monotonic()
        if force:
            self.flush()
        elif (self._writer is not None and self._writer.is_alive()) or \
                started - self._last_save < SAVE_COST_FACTOR * self.save_cost_s:
            return
        if not self.dirty:
            return
        state: dict[str, Any] = {"v": STATE_VERSION, "saved_at": now,
                                 "slo": self.store.to_state(),
                                 "recovery": self.tracker.to_state()}
        data = packb(state)
        self.dirty = False  # what changes from here on goes in the next save
        if force:
            self._write(data, started)
            return
        writer = threading.Thread(target=self._write, args=(data, started),
                                  name="slo-writer", daemon=True)
        try:
            writer.start()
        except RuntimeError as exc:  # the process's or the user's thread limit: next time
            self.dirty = True
            self._last_save = started  # (tried again after a save's usual spacing)
            logger.warning("SLO record not saved to {}: no thread for the write ({}); "
                           "tried again at the next save", self.path, exc)
            return
        self._writer = writer

    def flush(self) -> None:
        """Wait for the write in flight, if any."""
        if self._writer is not None:
            self._writer.join()

    def _write(self, data: bytes, started: float) -> None:
        try:
            write_state(self.path, data)
        except OSError as exc:
            logger.error("SLO record not saved to {}: {}", self.path, exc)
            self.dirty = True  # (a bool store: safe from this thread)
            return
        self.saves += 1
        self._last_save = time.monotonic()
        self.save_cost_s = self._last_save - started

    def close(self, inc: Incident, answered_at: float, how: str) -> None:
        """`inc`'s successor first answered at `answered_at`, seen as it happened: the outage
        goes on record, with its INFO line."""
        if self._close(inc, answered_at, how):
            logger.info("{} recovered from {} in {:.1f} ms ({}; RTO {:.0f} ms)", inc.child,
                        inc.kind, inc.recovery_ms, how, self.tracker.rto(inc.child) * 1000)

    def close_replayed(self, inc: Incident) -> None:
        """`inc`, an outage from before this process served, closes at its successor's ready
        time (recovery.py, `ready`): on record, but counted for `report_replayed`'s summary
        rather than logged at INFO one by one."""
        assert inc.ready_at is not None
        if not self._close(inc, inc.ready_at, "ready"):
            return
        rto_s = self.tracker.rto(inc.child)
        self.replayed.add(inc, rto_s)
        logger.debug("{} recovered from {} in {:.1f} ms (ready, replayed; RTO {:.0f} ms)",
                     inc.child, inc.kind, inc.recovery_ms, rto_s * 1000)

    def report_replayed(self) -> None:
        """One INFO line for the replayed incidents closed since the last one, if any."""
        done, self.replayed = self.replayed, ReplayTally()
        if done.count:
            logger.info("replayed {} incidents from before this start, closed at their "
                        "successors' ready times (exits {} to {}; {} over their RTO)",
                        done.count, _wall(done.first_exit), _wall(done.last_exit),
                        done.over_rto)

    def _close(self, inc: Incident, answered_at: float, how: str) -> bool:
        if not self.tracker.close(inc, answered_at, how):
            return False
        self.store.add_down(inc.child, inc.exited_at, answered_at)
        self.dirty = True
        return True
