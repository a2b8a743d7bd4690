"""What the resource actor does itself while the level is critical, carrying out the
decisions of escalation.py: alerts, killing a runaway process, shedding the non-essential
actors and bringing them back. A component of ResourceActor (actor.py documents the alerts and
the config keys).
"""

from __future__ import annotations

import signal
import time
from collections import Counter, deque
from typing import Any, Protocol

from loguru import logger

from moorage.actors.resource.escalation import Choice, Decision, Escalation, Shedder
from moorage.actors.resource.levels import LEVELS, Pressure
from moorage.actors.resource.sampler import ProcRow, Sample, TreeSampler
from moorage.actors.resource.settings import Settings
from moorage.actors.runtime.outbound import Outbound
from moorage.actors.runtime.streams import Publisher
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import WireError

SHED_TIMEOUT_S = 5.0


class ResourceHost(Protocol):
    """What the critical actions need of the resource actor."""

    settings: Settings
    sampler: TreeSampler
    escalation: Escalation
    shedder: Shedder
    outbound: Outbound
    publisher: Publisher
    pressure: Pressure
    level: int
    counters: Counter[str]
    recent_alerts: deque[dict[str, Any]]


class CriticalActions:
    """Alerts, runaway kills and shedding for the resource actor (`ResourceHost`); it keeps
    the state of the shedding calls it makes (`shed_pending`, `shed_replies`, `shed_actors`)."""

    def __init__(self, r: ResourceHost) -> None:
        self.r = r
        self.shed_pending = False
        self.shed_replies = 0  # sup.shed answers so far: a sup.status asked before is stale
        self._shed_failing = 0  # failed sup.shed calls in a row
        self.shed_actors: list[str] = []

    # --- critical: runaway processes ------------------------------------------------------------

    def alert(self, body: dict[str, Any]) -> None:
        body = {**body, "level": LEVELS[self.r.level], "pressure": self.r.pressure.value,
                "time": time.time()}
        self.r.counters["alerts"] += 1
        self.r.recent_alerts.append(body)
        logger.warning("resource alert {}", body)
        self.r.publisher.publish("resource.alert", body)

    def carry_out(self, d: Decision, sample: Sample, choice: Choice | None = None) -> None:
        """`choice`: this sample's `choose_runaway`, for what a "no_runaway" alert says of
        the largest non-actor process it spared (and of the pressure without it)."""
        row = next((r for r in sample.rows if r.pid == d.pid), None)
        if d.kind == "no_runaway":
            top = sorted(sample.rows, key=lambda r: r.memory, reverse=True)[:3]
            body: dict[str, Any] = {"kind": "critical", "action": "no_runaway",
                                    "top": [r.describe() for r in top]}
            if choice is not None:
                body["descendants_share"] = round(choice.descendants_share, 3)
                if isinstance(choice.spared, ProcRow):
                    body["spared"] = {**_who(choice.spared),
                                      "pressure_without": choice.pressure_without}
            self.alert(body)
        elif d.kind == "persisting":
            self.alert({"kind": "critical", "action": "persisting", "samples": d.streak,
                         "next": "shed" if self.r.shedder.enabled else None})
        elif row is not None and d.kind == "warn":
            self.alert({"kind": "runaway", "action": "warn", **_who(row),
                         "kill_after_samples": self.r.settings.kill_after_samples})
        elif row is not None and d.kind == "kill":
            self._kill(row)

    def _kill(self, row: ProcRow) -> None:
        proc = self.r.sampler.process(row.pid)
        action = "killed"
        try:
            if proc is None:
                raise ProcessLookupError(row.pid)
            proc.send_signal(signal.SIGKILL)  # psutil refuses if the pid was reused
        except Exception as exc:  # NoSuchProcess, AccessDenied, ProcessLookupError
            action = "gone"
            logger.info("runaway {} not killed: {}", row.pid, exc)
        else:
            self.r.counters["kills"] += 1
        self.alert({"kind": "runaway", "action": action, **_who(row)})

    # --- critical persisting: non-essential actors --------------------------------------------

    def shed(self, on: bool) -> None:
        """Ask the root supervisor to stop (or start again) the tree's non-essential actors;
        what was done is alerted and counted. A failed call is asked again next sample."""
        self.shed_pending = True
        self.r.counters["shed_calls" if on else "restore_calls"] += 1
        reason = (f"critical for {self.r.escalation.episode} samples" if on else
                  f"{LEVELS[self.r.level]} for {self.r.shedder.calm} samples")

        def done(reply: Reply | None, err: WireError | None) -> None:
            self.shed_pending = False
            self.shed_replies += 1  # a sup.status asked before this is stale about shedding
            body = reply.body if reply is not None else None
            if err is not None or not isinstance(body, dict):
                # Asked again next sample; alerted once per run of failures, counted each time.
                self.r.counters["shed_failures"] += 1
                self._shed_failing += 1
                if self._shed_failing == 1:
                    self.alert({"kind": "shed", "action": "failed", "on": on,
                                 "reason": reason,
                                 "error": err.name if err is not None else "bad_reply"})
                return
            self._shed_failing = 0
            self.r.shedder.shed = on
            self.r.shedder.calm = 0
            if on:
                self.shed_actors = sorted(set(self.shed_actors) | set(body["shed"])
                                          | set(body["held"]))
                self.r.counters["actors_shed"] += len(body["shed"])
            else:
                self.shed_actors = []
                self.r.counters["actors_restored"] += len(body["resumed"])
            self.alert({"kind": "shed", "action": "stopped" if on else "restored",
                         "actors": body["shed"] if on else body["resumed"],
                         "failed": body.get("failed", {}), "reason": reason})

        self.r.outbound.call(self.r.settings.supervisor, "sup.shed", {"on": on, "reason": reason},
                           timeout=SHED_TIMEOUT_S, on_done=done)


def _who(row: ProcRow) -> dict[str, Any]:
    return {"pid": row.pid, "name": row.name, "id": row.owner, "memory": row.memory,
            "rss": row.rss}
