"""Service time and outcome per op, counted on the hot path, drained once a push interval.

The drain is what the metrics actor receives: per op, the ok and error counts (and of the
errors, how many were the caller's: protocol.errors.Fault) and an encoded HDR histogram of
service time (moorage.protocol.histogram's shape, so all of them merge).
"""

from __future__ import annotations

from collections.abc import Callable

from moorage.protocol.histogram import Recorder, decode


class OpCounts:
    __slots__ = ("caller", "error", "ok", "times")

    def __init__(self) -> None:
        self.ok = 0
        self.error = 0
        self.caller = 0  # of `error`, those that were the caller's fault
        self.times = Recorder()


class OpStats:
    """Per-op counts since the last drain; `drain` hands them over and starts afresh."""

    def __init__(self) -> None:
        self._ops: dict[str, OpCounts] = {}
        self.total_ok = 0
        self.total_error = 0
        # called by the first record after a drain: the owner arms its push then, so an
        # idle process has no timer for it (and is not woken)
        self.wake: Callable[[], None] | None = None

    def record(self, op: str, micros: int, ok: bool, caller: bool = False) -> None:
        """One request of `op`; `caller`: it failed with an error that is the caller's."""
        c = self._ops.get(op)
        if c is None:
            if not self._ops and self.wake is not None:
                self.wake()
            c = self._ops[op] = OpCounts()
        if ok:
            c.ok += 1
            self.total_ok += 1
        else:
            c.error += 1
            self.total_error += 1
            if caller:
                c.caller += 1
        c.times.record(micros)

    def pending(self) -> bool:
        return bool(self._ops)

    def drain(self) -> dict[str, dict]:
        """{op: {ok, error, caller?, hist: encoded HDR}} for everything recorded since the last
        drain (`caller` only when some errors were the caller's)."""
        return {name: d for name, d, _ in self.drain_entries()}

    def drain_entries(self) -> list[tuple[str, dict, int]]:
        """drain's entries as (op, entry, non-zero counts of its histogram), what
        histogram.push_bodies cuts into pushes the metrics actor takes."""
        out = []
        for name, c in self._ops.items():
            d = {"ok": c.ok, "error": c.error, "hist": c.times.encode()}
            if c.caller:
                d["caller"] = c.caller
            out.append((name, d, len(c.times.counts)))
        self._ops = {}
        return out

    def restore(self, drained: dict[str, dict]) -> None:
        """Put back a drain that could not be delivered, so nothing is lost in silence."""
        for name, d in drained.items():
            c = self._ops.get(name)
            if c is None:
                c = self._ops[name] = OpCounts()
            c.ok += d["ok"]
            c.error += d["error"]
            c.caller += d.get("caller", 0)
            c.times.add_histogram(decode(d["hist"]))


# What the tree can see of its own data loss, counted where it happens and pushed with the op
# figures (the push header's `loss`), so the metrics actor's SLO report can say "zero" or not.
LOSS_COUNTERS = {
    "stream_lost": "stream messages a follower inside the tree could not get back (the "
                   "publisher was gone or had restarted)",
    "replay_beyond_retention": "messages a subscriber that had seen part of a stream asked "
                               "`replay` for after retention had dropped them",
    "replies_undelivered": "replies an actor could not send to a caller still connected "
                           "(its queue was full)",
    "calls_unanswered": "calls between actors that got no reply in time where the caller "
                        "gave data up for it (Outbound.call(loses_data=True))",
}


class LossCounters:
    """Counts since the last drain, by name (one of LOSS_COUNTERS); drained like OpStats."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self.wake: Callable[[], None] | None = None  # as OpStats.wake

    def add(self, name: str, n: int = 1) -> None:
        if n > 0:
            if not self._counts and self.wake is not None:
                self.wake()
            self._counts[name] = self._counts.get(name, 0) + n

    def pending(self) -> bool:
        return bool(self._counts)

    def drain(self) -> dict[str, int]:
        out, self._counts = self._counts, {}
        return out

    def restore(self, drained: dict[str, int]) -> None:
        for name, n in drained.items():
            self.add(name, n)
