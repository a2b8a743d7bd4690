"""The clock every event carries, and the bounded journal `fs.since` answers from.

A clock is (instance, epoch, seq), Watchman's idea with an explicit epoch:
  instance  one life of the watcher (its process epoch): a clock from another life cannot be
            compared with ours, so `since` answers `fresh_instance` instead of guessing
  epoch     how many resyncs this life has done; a resync is a place where the journal says
            "here I re-read the tree" (resync_begin .. resync_end), so a consumer that sees the
            epoch move knows the events in between are a diff, not live observations
  seq       strictly increasing within the instance, over every event including the markers
Ticks count events, not time, so `since` has no race with the clock of the machine.

Events are journaled before they are published: anything a subscriber can have seen is in
the journal (while retained). In memory a clock is a tuple (it packs as the same array): a
tuple of scalars leaves the garbage collector's tracking at its first pass, and the event
holding it at the next full one, so retained events stop costing the collector anything.
The journal is bounded by count; a clock older than what it retains also gets
`fresh_instance` (Watchman's rule after a GC prune).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice
from typing import Any

from moorage.protocol.errors import fail


@dataclass(frozen=True, slots=True)
class Clock:
    instance: str
    epoch: int
    seq: int

    def to_wire(self) -> list[Any]:
        return [self.instance, self.epoch, self.seq]

    @classmethod
    def from_wire(cls, v: Any) -> Clock:
        if (isinstance(v, (list, tuple)) and len(v) == 3 and isinstance(v[0], str)
                and type(v[1]) is int and type(v[2]) is int and v[1] >= 0 and v[2] >= 0):
            return cls(v[0], v[1], v[2])
        raise fail("bad_args", f"a clock is [instance, epoch, seq], not {v!r:.120}")


class Journal:
    def __init__(self, instance: str, max_events: int = 50_000) -> None:
        self.instance = instance
        self.max_events = max_events
        self.epoch = 0
        self.seq = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)

    def clock(self) -> Clock:
        return Clock(self.instance, self.epoch, self.seq)

    def new_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def append(self, ev: dict[str, Any]) -> dict[str, Any]:
        """Stamp `ev` with the next clock and keep it (the same dict is then published)."""
        self.seq += 1
        ev["clock"] = (self.instance, self.epoch, self.seq)
        self.events.append(ev)
        return ev

    def extend(self, evs: list[dict[str, Any]]) -> None:
        """`append` for a batch (the pipeline's hot path: one call per flush)."""
        inst, epoch, seq = self.instance, self.epoch, self.seq
        for ev in evs:
            seq += 1
            ev["clock"] = (inst, epoch, seq)
        self.seq = seq
        self.events.extend(evs)  # a bounded deque: the oldest fall out

    def commit(self, evs: list[dict[str, Any]], seq: int) -> None:
        """Keep `evs`, already stamped by the caller with the clocks after `self.seq` up to
        `seq` (the pipeline stamps while it builds them: one pass instead of two)."""
        self.seq = seq
        self.events.extend(evs)

    @property
    def first_seq(self) -> int:
        return self.events[0]["clock"][2] if self.events else self.seq + 1

    def since(self, clock: Clock, max_events: int = 10_000) -> dict[str, Any]:
        """Events after `clock`, oldest first, at most `max_events` (then `more`, and the
        returned clock is where to continue)."""
        now = self.clock().to_wire()
        if clock.instance != self.instance or clock.seq > self.seq:
            return {"fresh_instance": True, "reason": "another instance", "clock": now,
                    "events": [], "more": False}
        if clock.seq < self.first_seq - 1:
            return {"fresh_instance": True, "reason": "older than the journal retains",
                    "clock": now, "events": [], "more": False}
        start = clock.seq + 1 - self.first_seq  # index in the deque
        out = list(islice(self.events, start, start + max_events))
        more = bool(out) and out[-1]["clock"][2] < self.seq
        last = list(out[-1]["clock"]) if out else now
        return {"fresh_instance": False, "clock": last if more else now, "events": out,
                "more": more}

    def stats(self) -> dict[str, Any]:
        return {"instance": self.instance, "epoch": self.epoch, "seq": self.seq,
                "retained": len(self.events), "first_seq": self.first_seq,
                "max_events": self.max_events}
