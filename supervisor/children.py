"""A supervisor's view of one child: its spec, its current process, and its history."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from moorage.actors.runtime.loop import Timer
from moorage.supervisor.policy import ExitReason, Heartbeat, Intensity, RestartBackoff
from moorage.supervisor.spec import ChildSpec, SupervisorSpec

if TYPE_CHECKING:
    from moorage.supervisor.zygote import ZygoteHandle


class ChildState(StrEnum):
    STARTING = "starting"  # forked, not ready yet
    RUNNING = "running"
    STOPPING = "stopping"  # asked to stop; waiting for its exit
    BACKOFF = "backoff"  # dead, waiting out its restart delay
    STOPPED = "stopped"  # not running and not to be restarted (for now)
    FAILED = "failed"  # gave up: temporary/transient death, or fallbacks exhausted
    SHED = "shed"  # stopped by `sup.shed` under critical pressure; back when it passes


@dataclass
class Child:
    spec: ChildSpec
    backoff: RestartBackoff
    heartbeat: Heartbeat
    intensity: Intensity
    slot: int = 0  # its slot on the supervisor's beat board (moorage.actors.runtime.beat)
    state: ChildState = ChildState.STOPPED
    pid: int | None = None
    pidfd: int | None = None
    generation: int = 0  # bumped per start, so late events of an old process are ignored
    started_at: float = 0.0
    ready_at: float | None = None
    restarts: int = 0
    last_exit: ExitReason | None = None
    stop_requested: bool = False
    stop_stage: str = ""  # term | kill: how far a requested stop had to go
    kill_reason: str = ""  # why the supervisor killed it (start timeout, missed heartbeats)
    start_error: str = ""  # what it said failed before it died starting (zygote MAX_WHY)
    # The supervisor sent its process SIGKILL: it is dead or about to be, and no longer
    # watched (its beat is not read) until its exit is reported, which a stuck zygote may
    # leave untold for a while; one hang is one `hung` event and one kill.
    kill_sent: bool = False
    fallback_index: int = -1  # -1: normal mode
    shed: bool = False  # held stopped by `sup.shed`: no start, no restart, until resumed
    resuming: bool = False  # the start under way brings it back from being shed
    sheds: int = 0  # how often it was shed (a shed is neither a failure nor a restart)
    adopted: bool = False  # its zygote died: this supervisor is its parent and reaper now
    asked_of: ZygoteHandle | None = None  # the zygote its last start was asked of
    stopped: bool = False  # SIGSTOPped, as its zygote (its parent) saw
    halted_ticks: int = 0  # heartbeat ticks it has spent stopped while starting
    alive_at: int = 0  # monotonic ns of its last sign of life (its beat)
    # Since its last turn: (monotonic ns, its main thread's policy.sched_sample) at the last
    # tick that looked, and the ticks its loop spent waiting for a CPU (policy.starved)
    sched: tuple[int, tuple[int, int, bool]] | None = None
    starved_ticks: int = 0
    down_since: float | None = None  # wall time its outage began (a hang: its last life)
    last_resort: int = 0  # last-resort retries (the root, retry_forever) since it last served
    # Its supervisor gave up restarting it at once (past its intensity, no fallback left):
    # its last-resort retry is planned; until that start, sup.status says so.
    past_intensity: bool = False
    # bound to its current process (its start's timeout, a stop's SIGKILL): they end with it
    timers: list[Timer] = field(default_factory=list)
    # what is planned for it while it is down (a restart of its group, the root's retry), and
    # the plan's work, to be done at once instead when asked (`sup.restart`)
    plan: tuple[Timer, Callable[[], None]] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def fallback(self) -> str | None:
        if self.fallback_index < 0:
            return None
        return self.spec.fallbacks[self.fallback_index]

    def primary_again(self) -> None:
        """Leave its fallback: its next start runs its primary, with a fresh intensity
        window and back-off (a new attempt, not the tail of the storm that condemned it)."""
        self.fallback_index = -1
        self.intensity.clear()
        self.backoff.consecutive = 0

    def uptime(self, now: float | None = None) -> float:
        if self.pid is None:
            return 0.0
        return (now or time.monotonic()) - self.started_at

    def serving_for(self, now: float) -> float:
        """Seconds since it was ready (0: it never was, this life)."""
        return 0.0 if self.ready_at is None else now - self.ready_at

    def cancel_timers(self) -> None:
        """Its process ended, or a new step for it arms its own: every timer goes."""
        for t in self.timers:
            t.cancel()
        self.timers.clear()
        self.cancel_plan()

    def cancel_plan(self) -> None:
        """The plan for it changed. Its process's timers stay: a stop under way still ends
        in SIGKILL, and a start that hangs still times out."""
        if self.plan is not None:
            self.plan[0].cancel()
            self.plan = None

    def run_plan(self) -> bool:
        """Do now what was planned for it (False: nothing was)."""
        if self.plan is None:
            return False
        timer, work = self.plan
        timer.cancel()
        self.plan = None
        work()
        return True

    def signal(self, sig: int) -> bool:
        """Signal the current process through its pidfd (immune to pid reuse)."""
        if self.pidfd is None:
            if self.pid is None:
                return False
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                return False
            return True
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def forget_process(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.pid = None
        self.pidfd = None
        self.ready_at = None
        self.adopted = False
        self.stopped = False
        self.halted_ticks = 0
        self.alive_at = 0
        self.sched = None
        self.starved_ticks = 0
        self.kill_sent = False

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.spec.type,
            "restart": str(self.spec.restart),
            "state": str(self.state),
            "pid": self.pid,
            "uptime_s": round(self.uptime(now), 3) if self.ready_at else 0.0,
            "restarts": self.restarts,
            "last_exit": self.last_exit.describe() if self.last_exit else None,
            "fallback": self.fallback,
            "essential": self.spec.essential,
            "sheds": self.sheds,
            **self._planned_restart(now),
        }

    def _planned_restart(self, now: float) -> dict[str, Any]:
        """While it waits out a restart delay: when that ends, and whether it is a
        last-resort retry (up to LAST_RESORT's 60 s away) rather than a back-off's step: a
        client that polls status tells "restarting now" from "down for the next minute"."""
        if self.state is not ChildState.BACKOFF or self.plan is None:
            return {}
        out: dict[str, Any] = {"retry_in_s": round(max(0.0, self.plan[0].when - now), 3)}
        if self.past_intensity:
            out["past_intensity"] = True
        return out


def new_child(spec: ChildSpec, owner: SupervisorSpec, slot: int = 0) -> Child:
    return Child(
        spec=spec,
        backoff=RestartBackoff(owner.backoff),
        heartbeat=Heartbeat(owner.heartbeat.misses),
        intensity=Intensity(owner.intensity, owner.period_s),
        slot=slot,
    )
