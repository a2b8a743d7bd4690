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
the journal (while retained). The journal keeps each published batch as it went out: its
msgpack bytes (the very object the stream's retention keeps for replays), its first and
last seq, and its paths. An event kept as a dict cost some 420 bytes and a tracked object
for the collector; packed it is about 150 bytes, shared, and `fs.since`, which is rare,
unpacks what it answers. `fs.query` with a clock reads only the paths. The journal is
bounded by count, in whole batches; a clock older than what it retains also gets
`fresh_instance` (Watchman's rule after a GC prune). A batch it lets go leaves the
stream's retention of `fs.event` too (`Topic.forget_oldest`): a subscriber catches up from
the same window by `replay` or by `fs.since`, and the process holds one window, not two (the
stream's 16 MiB held some 80,000 events where the journal holds 50,000: 4.5 MiB more).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from msgpack import unpackb

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


class Batch(NamedTuple):
    """One published batch as the journal keeps it."""

    first: int  # seq of its first event
    last: int  # ... and of its last
    packed: bytes  # {"events": [...]}, as published
    paths: tuple[str, ...]  # the paths its events name (markers name none)


class Journal:
    def __init__(self, instance: str, max_events: int = 50_000) -> None:
        self.instance = instance
        self.max_events = max_events
        self.epoch = 0
        self.seq = 0
        self.batches: deque[Batch] = deque()
        self.retained = 0  # events in `batches`

    def clock(self) -> Clock:
        return Clock(self.instance, self.epoch, self.seq)

    def new_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def append(self, ev: dict[str, Any]) -> dict[str, Any]:
        """Stamp `ev` with the next clock (it is kept once published: `keep`)."""
        self.seq += 1
        ev["clock"] = (self.instance, self.epoch, self.seq)
        return ev

    def commit(self, seq: int) -> None:
        """The caller stamped the clocks after `self.seq` up to `seq` itself (the pipeline
        stamps while it builds its events: one pass instead of two); or, after a publish
        that failed, the seq of the last event that went out: the next one is stamped
        `seq + 1`, so no seq is used up by events nobody was told."""
        self.seq = seq

    def retract(self, first: int) -> None:
        """Forget the newest batch, kept for events from `first` on that could not be
        published after all (`fs.since` must not answer them)."""
        if self.batches and self.batches[-1].first == first:
            b = self.batches.pop()
            self.retained -= b.last - b.first + 1

    def keep(self, first: int, last: int, packed: bytes, paths: tuple[str, ...]
             ) -> list[bytes]:
        """Retain a batch about to be published (events `first`..`last`); the oldest batches
        go once more than `max_events` events are kept. Returns their bodies, oldest first
        (the stream's retention lets them go too)."""
        self.batches.append(Batch(first, last, packed, paths))
        self.retained += last - first + 1
        gone: list[bytes] = []
        while self.retained > self.max_events and len(self.batches) > 1:
            old = self.batches.popleft()
            self.retained -= old.last - old.first + 1
            gone.append(old.packed)
        return gone

    @property
    def first_seq(self) -> int:
        return self.batches[0].first if self.batches else self.seq + 1

    def _after(self, seq: int) -> Iterator[Batch]:
        """The batches with events after `seq`, oldest first."""
        for b in self.batches:
            if b.last > seq:
                yield b

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
        out: list[dict[str, Any]] = []
        for b in self._after(clock.seq):
            evs = unpackb(b.packed)["events"]
            skip = max(0, clock.seq + 1 - b.first)
            out += evs[skip:skip + max_events - len(out)]
            if len(out) >= max_events:
                break
        more = bool(out) and out[-1]["clock"][2] < self.seq
        last = list(out[-1]["clock"]) if out else now
        return {"fresh_instance": False, "clock": last if more else now, "events": out,
                "more": more}

    def paths_since(self, seq: int) -> list[str]:
        """The paths of the events after `seq`, once each, in the order they first came."""
        got: dict[str, None] = {}
        for b in self._after(seq):
            paths = b.paths
            if b.first <= seq and len(paths) == b.last - b.first + 1:
                paths = paths[seq + 1 - b.first:]  # (all events of it name a path)
            elif b.first <= seq:
                paths = tuple(e["path"] for e in unpackb(b.packed)["events"][seq + 1 - b.first:]
                              if "path" in e)
            got.update(dict.fromkeys(paths))
        return list(got)

    def stats(self) -> dict[str, Any]:
        return {"instance": self.instance, "epoch": self.epoch, "seq": self.seq,
                "retained": self.retained, "first_seq": self.first_seq,
                "max_events": self.max_events, "batches": len(self.batches)}
