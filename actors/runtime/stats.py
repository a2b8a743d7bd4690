"""Service time and outcome per op, counted on the hot path, drained once a push interval.

The drain is what the metrics actor receives: per op, the ok and error counts and an encoded
HDR histogram of service time (protocol.histogram's shape, so all of them merge).
"""

from __future__ import annotations

from protocol.histogram import Recorder, decode


class OpCounts:
    __slots__ = ("error", "ok", "times")

    def __init__(self) -> None:
        self.ok = 0
        self.error = 0
        self.times = Recorder()


class OpStats:
    """Per-op counts since the last drain; `drain` hands them over and starts afresh."""

    def __init__(self) -> None:
        self._ops: dict[str, OpCounts] = {}
        self.total_ok = 0
        self.total_error = 0

    def record(self, op: str, micros: int, ok: bool) -> None:
        c = self._ops.get(op)
        if c is None:
            c = self._ops[op] = OpCounts()
        if ok:
            c.ok += 1
            self.total_ok += 1
        else:
            c.error += 1
            self.total_error += 1
        c.times.record(micros)

    def pending(self) -> bool:
        return bool(self._ops)

    def drain(self) -> dict[str, dict]:
        """{op: {ok, error, hist: encoded HDR}} for everything recorded since the last drain."""
        out = {
            name: {"ok": c.ok, "error": c.error, "hist": c.times.histogram().encode()}
            for name, c in self._ops.items()
        }
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
            c.times.add_histogram(decode(d["hist"]))
