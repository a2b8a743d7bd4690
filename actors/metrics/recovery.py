"""Recovery time per failure type (seed 11.2), from the root supervisor's events.

An incident opens when `supervisor.pub` says a child exited other than by a requested stop
(`exited` whose reason is not `shutdown`), at the event's `down_since` when it has one (a
hang: the child's last sign of life) and else at the exit, and closes at the first good reply
of a successor.
How that reply is timed (`how`):

  reply  the metrics actor asked the restarted child `sys.hello` on a fresh socket the moment
         it saw `restarted`; the answer's arrival closes the incident (an upper bound: the
         event's trip and the probe's round trip are included)
  self   the metrics actor's own restart: its first loop turn, when it could first answer
  ready  events older than this metrics process (replayed from the supervisor's retention
         after the metrics actor restarted) cannot be probed any more: they close at the
         supervisor's `restarted` time, when the successor was bound and about to serve

A successor that dies before it answers keeps the incident open (`deaths` counts them): the
outage lasts until something answers. Pure: events and times are passed in; the actor sends
the probes. The failure type is the exit reason: killed by SIGKILL, exit code 3, hung (missed
heartbeats), start timeout.
"""

from __future__ import annotations

import math
import signal
from collections import deque
from collections.abc import Mapping
from dataclasses import astuple, dataclass
from typing import Any

# Seed 11.2: a terminal crash recovers within 1 s; anything else within the 5 s of 11.1.
DEFAULT_RTO_S = {"terminal": 1.0, "ptykeeper": 1.0}
DEFAULT_RTO_ALL_S = 5.0
KEEP_INCIDENTS = 10_000


def failure_type(ev: Mapping[str, Any]) -> str | None:
    """The failure type of an `exited` event; None for a requested stop (not a failure)."""
    if ev.get("reason") == "shutdown":
        return None
    detail = ev.get("detail") or ""
    if detail == "missed heartbeats":
        return "hung (missed heartbeats)"
    if detail == "start timeout":
        return "start timeout"
    sig, code = ev.get("signal"), ev.get("code")
    if type(sig) is int:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    if type(code) is int:
        return f"exit code {code}"
    if isinstance(detail, str) and detail.startswith("fork"):
        return "could not start"
    return str(ev.get("reason") or "unknown")


@dataclass(slots=True)
class Incident:
    child: str
    kind: str
    exited_at: float  # wall time the supervisor saw the exit
    pid: int | None  # the process that died
    deaths: int = 1
    ready_at: float | None = None  # the latest successor reported ready
    new_pid: int | None = None
    answered_at: float | None = None
    how: str = ""  # reply | self | ready (see the module docstring)

    @property
    def recovery_ms(self) -> float:
        assert self.answered_at is not None
        return max(0.0, (self.answered_at - self.exited_at) * 1000)

    def describe(self, rto_s: float) -> dict[str, Any]:
        out: dict[str, Any] = {"child": self.child, "type": self.kind, "exited_at":
                               self.exited_at, "pid": self.pid, "deaths": self.deaths,
                               "new_pid": self.new_pid, "rto_ms": rto_s * 1000}
        if self.ready_at is not None:
            out["ready_ms"] = round((self.ready_at - self.exited_at) * 1000, 3)
        if self.answered_at is not None:
            out.update(recovery_ms=round(self.recovery_ms, 3), how=self.how)
        return out


def nearest_rank(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)] if s else 0.0


class RecoveryTracker:
    def __init__(self, rto_s: Mapping[str, float] | None = None,
                 default_rto_s: float = DEFAULT_RTO_ALL_S, keep: int = KEEP_INCIDENTS) -> None:
        self.rto_s = dict(DEFAULT_RTO_S if rto_s is None else rto_s)
        self.default_rto_s = default_rto_s
        self.open: dict[str, Incident] = {}
        self.closed: deque[Incident] = deque(maxlen=keep)
        self.cursor: tuple[str, int] | None = None  # (epoch, seq) of the last event taken
        self.children: set[str] = set()
        self.dropped = 0  # closed incidents pushed out of `closed` by its bound
        self.abandoned = 0  # open when the tree stopped: no successor ever came

    def rto(self, child: str) -> float:
        return self.rto_s.get(child, self.default_rto_s)

    def seen(self, epoch: str, seq: int) -> bool:
        """Taken already (before a restart of the metrics actor, whose state was saved)."""
        return self.cursor is not None and self.cursor[0] == epoch and seq <= self.cursor[1]

    def take(self, epoch: str, seq: int, ev: Mapping[str, Any]) -> Incident | None:
        """One `sup.event`; returns the incident whose successor just reported ready (to be
        probed, or closed by the caller)."""
        if self.cursor is not None and self.cursor[0] != epoch:
            self.abandoned += len(self.open)  # a new tree: the old one's outages ended with it
            self.open.clear()
        self.cursor = (epoch, seq)
        name, child, t = ev.get("event"), ev.get("child"), ev.get("time")
        if not isinstance(child, str) or not isinstance(t, (int, float)):
            return None
        pid = ev.get("pid") if type(ev.get("pid")) is int else None
        if name in ("started", "restarted"):
            self.children.add(child)
            inc = self.open.get(child)
            if inc is not None and inc.ready_at is None:
                inc.ready_at, inc.new_pid = float(t), pid
                return inc
            return None
        if name != "exited":
            return None
        self.children.add(child)
        kind = failure_type(ev)
        if kind is None:
            return None
        inc = self.open.get(child)
        if inc is not None:  # its successor died before answering: the outage goes on
            inc.deaths += 1
            inc.ready_at = inc.new_pid = None
            return None
        # A hang's outage began at the child's last sign of life, before the supervisor
        # gave up on it: that is when a client stopped getting answers.
        since = ev.get("down_since")
        start = float(since) if isinstance(since, (int, float)) and since <= t else float(t)
        self.open[child] = Incident(child, kind, start, pid)
        return None

    def close(self, inc: Incident, answered_at: float, how: str) -> bool:
        """The first good reply of `inc`'s successor came at `answered_at`; False when `inc`
        is no longer the child's open incident waiting for one."""
        if self.open.get(inc.child) is not inc or inc.ready_at is None:
            return False
        del self.open[inc.child]
        inc.answered_at, inc.how = answered_at, how
        if len(self.closed) == self.closed.maxlen:
            self.dropped += 1
        self.closed.append(inc)
        return True

    def summary(self, since: float) -> dict[str, Any]:
        """Closed incidents that began at or after `since`, by failure type."""
        incs = [i for i in self.closed if i.exited_at >= since]
        by_type: dict[str, list[Incident]] = {}
        for i in incs:
            by_type.setdefault(i.kind, []).append(i)

        def figures(group: list[Incident]) -> dict[str, Any]:
            ms = [i.recovery_ms for i in group]
            return {"count": len(group), "p50_ms": round(nearest_rank(ms, 50), 3),
                    "max_ms": round(max(ms, default=0.0), 3),
                    "over_rto": sum(i.recovery_ms > self.rto(i.child) * 1000 for i in group),
                    "children": sorted({i.child for i in group})}

        return {**figures(incs), "by_type": {k: figures(g) for k, g in sorted(by_type.items())}}

    # --- persistence ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"cursor": list(self.cursor) if self.cursor else None,
                "open": [list(astuple(i)) for i in self.open.values()],
                "closed": [list(astuple(i)) for i in self.closed],
                "children": sorted(self.children), "dropped": self.dropped,
                "abandoned": self.abandoned}

    def load(self, d: Any) -> None:
        """Take a saved state; ValueError (nothing taken) when it is not of our shape."""
        if not isinstance(d, dict):
            raise ValueError("recovery state must be a map")
        cursor = d.get("cursor")
        if cursor is not None and not (isinstance(cursor, list) and len(cursor) == 2
                                       and isinstance(cursor[0], str) and type(cursor[1]) is int):
            raise ValueError("cursor must be [epoch, seq]")
        opened = [_incident(r) for r in _list(d, "open")]
        closed = [_incident(r) for r in _list(d, "closed")]
        children = _list(d, "children")
        if not all(isinstance(c, str) for c in children):
            raise ValueError("children must be names")
        counts = [d.get("dropped", 0), d.get("abandoned", 0)]
        if not all(type(n) is int and n >= 0 for n in counts):
            raise ValueError("dropped and abandoned must be counts")
        self.cursor = (cursor[0], cursor[1]) if cursor else None
        self.open = {i.child: i for i in opened}
        self.closed.extend(i for i in closed if i.answered_at is not None)
        self.children = set(children)
        self.dropped, self.abandoned = counts


def _list(d: Mapping[str, Any], key: str) -> list[Any]:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise ValueError(f"{key} must be a list")
    return v


_FIELDS = (str, str, (int, float), (int, type(None)), int, (int, float, type(None)),
           (int, type(None)), (int, float, type(None)), str)


def _incident(row: Any) -> Incident:
    if not (isinstance(row, list) and len(row) == len(_FIELDS)
            and all(isinstance(v, t) for v, t in zip(row, _FIELDS, strict=True))):
        raise ValueError(f"not an incident: {row!r:.80}")
    return Incident(*row)
