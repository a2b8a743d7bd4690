"""The resource actor: measures the tree's pressure, sets its level and quality, sheds load.

  op                     args                           reply                     errors
  resource.status        {fresh: bool = false}          {pressure, level,         timeout
                                                         quality, derived_quality,
                                                         override_left_s, budget,
                                                         components, totals,
                                                         system, processes: [{pid,
                                                         ppid, name, role, id, rss,
                                                         memory, cpu}], counters,
                                                         sampler, shed,
                                                         recent_alerts}
                         fresh: answer after the next sample whose `sup.status` was asked
                         after this request (waits up to one interval)
  resource.level         {}                             {level, pressure, quality} -
  resource.quality.set   {quality: int 0..3,            {quality, derived_quality, bad_args
                          duration_s: number = 60;       level, override_left_s}
                          0 removes the override}
                         kept in <runtime_dir>/<name>.quality, so a restarted resource actor
                         holds it for what is left of its duration (pressure.override_file)

Streams:
  resource.level  on every change of (level, quality), once every worker has answered the
                  `sys.pressure` it was told (or failed to): {level, pressure, quality,
                  previous, previous_quality, derived_quality, override, components,
                  features_off, sample, time, actions: {actor: what it did | {error}}}.
                  The first sample always publishes (previous None): a restarted resource
                  actor tells the tree where it stands.
  resource.alert  {kind: "runaway", action: "warn" | "killed" | "gone", pid, name, id,
                  memory, rss, ...}, {kind: "critical", action: "no_runaway", top,
                  descendants_share, spared?: {pid, name, id, memory, rss,
                  pressure_without}}, {kind: "critical", action: "persisting", ...} and
                  {kind: "shed", action: "stopped" | "restored" | "failed", actors, failed,
                  reason}. The supervisors republish them on `supervisor.pub` as `alert`
                  events.

Every `interval_s` (`calm_interval_s` once the tree is calm: `_interval`) the actor samples
the tree with psutil (moorage.actors.resource.sampler; it asks the root supervisor for
`sup.status`, who is who, only after its `sup.event` stream says the tree changed, or a
sample found a process the status did not account for, or a nested supervisor whose tree
did not answer: the sampler's doc), computes the pressure, level and quality
(moorage.actors.resource.levels) and acts (moorage.actors.resource.escalation):
  - a change of level or quality is told to every running worker as `sys.pressure {level,
    quality, tok}` (`tok`: the tree's token, without which a worker refuses it; the runtime
    trims its reply cache and calls the actor's `on_pressure`). Each worker's answer says
    what it holds now; at each sample a worker that does not hold the tree's state is told
    again: one restarted since (a new process starts at normal/3), one whose tell failed
    (timed out in a busy queue, refused), one found holding something else. That last is
    checked by asking `sys.info` of one worker every VERIFY_EVERY (5) samples, each in turn
    (its `pressure`). Only a process of the tree can tell a worker anything, so that is
    rare, and a sys.info is costly: 0.2-0.3 ms of a warm worker's CPU and as much here to
    decode its op table, more in an idle tree's cold processes. Asked at every sample, it
    took the idle default tree from about 0.13% to 0.18-0.22% of a core (P14, whose limit is
    0.3%); every 5 samples it is within that measurement's noise;
  - at critical, the largest process of the tree that is not an actor, supervisor or zygote
    is alerted, then killed with SIGKILL if the pressure stays critical (81 or more in each
    sample, whatever hysteresis holds the level at) for `kill_after_samples` samples, but only
    if killing it ends the critical level: the pressure without its memory is under 81, or
    the tree's non-actor processes hold most of its memory (escalation.choose_runaway).
    Otherwise the memory is the actors' own: it is alerted as `no_runaway` at once, naming
    the process spared, and the actors' own shedding does the work;
  - critical for `persist_after_samples` samples in a row: the supervisors stop the
    non-essential actors (`sup.shed {on: true}`, children with `essential = false`); they
    are started again (`sup.shed {on: false}`) once the held level has stayed at or below
    `restore_level` for `restore_after_samples` samples. Whether the tree is shed is the
    root's `shedding` in `sup.status`: a restarted resource actor adopts it (and so does one
    whose tree was shed by hand), and brings the actors back the same way.

Config (all optional; a config that cannot work fails the start):
  interval_s 1.0, calm_interval_s 5.0 (0: never calm), calm_after_samples 5,
  memory_budget_mb 1024, memory_metric "pss_tracked" | "pss" | "rss" (the sampler's doc),
  pss_every 30 (samples), cpu_budget_cores (the machine's CPU count), cpu_weight 0.8,
  cpu_samples 5, system_reserve 0.10, margin 5, up_samples 1, down_samples 3,
  quality_up_samples 3, kill_runaways true, kill_after_samples 2, runaway_min_share 0.10
  (of the budget), persist_after_samples 10, shed_nonessential true, restore_level
  "moderate", restore_after_samples 10, quality_file true, tell_timeout_s 1.0,
  status_timeout_s 1.0, rescan_every 30, supervisor "supervisor".
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from moorage.actors.resource.critical import CriticalActions
from moorage.actors.resource.escalation import Escalation, Shedder, choose_runaway
from moorage.actors.resource.levels import (
    ENTER,
    FEATURES_OFF,
    LEVELS,
    MAX_QUALITY,
    MODERATE,
    NORMAL,
    LevelTracker,
    Pressure,
    PressureModel,
    QualityTracker,
    raw_level,
)
from moorage.actors.resource.override_file import OverrideFile
from moorage.actors.resource.sampler import Roles, Sample, TreeSampler, roles_from_status
from moorage.actors.resource.settings import MB, Settings
from moorage.actors.runtime import DEFERRED, Actor, Call, op, trust
from moorage.actors.runtime.actor import PRESSURE_TOKEN_NAME
from moorage.actors.runtime.follow import Follow
from moorage.actors.runtime.loop import Timer
from moorage.actors.runtime.outbound import Outbound
from moorage.actors.runtime.shapes import Named, OneOf
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import Category, WireError, fail

MAX_OVERRIDE_S = 86_400.0
VERIFY_EVERY = 5  # samples between two sys.info checks of a worker's state (one each, in turn)
RECENT_ALERTS = 20


@dataclass(slots=True)
class Broadcast:
    """One level/quality change being told to the workers; published once all answered."""

    body: dict[str, Any]
    waiting: set[str]
    actions: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Worker:
    """One worker process as the telling knows it: what (level, quality) it holds."""

    pid: int
    holds: tuple[int, int] | None  # as its last answer said; None: unknown (a tell failed)
    out: int = 0  # sys.pressure calls to it under way
    tells: int = 0  # sent to it so far: a sys.info asked before the last one is stale


def _held(body: object) -> tuple[int, int] | None:
    """(level, quality) from a `{level, quality}` answer (sys.pressure's, sys.info's
    `pressure`); None if it is not one."""
    if not isinstance(body, dict):
        return None
    level, quality = body.get("level"), body.get("quality")
    if level not in LEVELS or type(quality) is not int:
        return None
    return LEVELS.index(level), quality


# --- the shapes of the answers ----------------------------------------------------------------
LEVEL = Literal[LEVELS]  # type: ignore[valid-type]
LEVEL_BODY = {"level": LEVEL, "pressure": float, "quality": int}
PROCESS = Named("process", {  # sampler.ProcRow.describe
    "pid": int, "ppid": int, "name": str,
    "role": Literal["supervisor", "zygote", "actor", "descendant"], "id": str,
    "rss": int, "memory": int, "cpu": float})
# as published on resource.alert (the module's doc): runaway, critical and shed alerts
RESOURCE_ALERT = Named("resource_alert", {"kind": str, "action": str, "time": float, ...: Any})


class ResourceActor(Actor):
    name = "resource"
    category = Category.RESOURCE
    fallbacks: tuple[str, ...] = ()  # none: `fallbacks =` of its child spec must be empty

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        s = self.settings = Settings.from_config(config or {})
        # Everything that can refuse the config is built before the sockets are bound.
        self.sampler = TreeSampler(s.memory_metric, s.rescan_every, s.pss_every)
        self.model = PressureModel(int(s.memory_budget_mb * MB), s.cpu_budget_cores,
                                   cpu_weight=s.cpu_weight, cpu_samples=s.cpu_samples,
                                   system_reserve=s.system_reserve)
        self.levels = LevelTracker(margin=s.margin, up_samples=s.up_samples,
                                   down_samples=s.down_samples)
        self.qualities = QualityTracker(up_samples=s.quality_up_samples)
        self.escalation = Escalation(kill_after=s.kill_after_samples,
                                     persist_after=s.persist_after_samples,
                                     kill=s.kill_runaways)
        self.shedder = Shedder(persist_after=s.persist_after_samples,
                               restore_after=s.restore_after_samples,
                               restore_level=s.restore_level, enabled=s.shed_nonessential)
        super().__init__(name, runtime_dir, config)
        self.override_file = OverrideFile(self.runtime_dir / f"{self.name}.quality") \
            if s.quality_file else None
        self._status_asked_at = 0  # critical.shed_replies when the pending sup.status was sent
        self.outbound = Outbound(self)
        self.roles = Roles()
        self.sample: Sample | None = None
        self.pressure = Pressure(0, 0.0, 0.0, 0.0)
        self.level = NORMAL
        self.effective_quality = 3
        self._told: tuple[int, int] | None = None  # the (level, quality) last broadcast
        self._workers: dict[str, Worker] = {}  # the running workers, as told
        self._verified = ""  # the worker whose sys.info was asked last (they take turns)
        self._token = trust.token(PRESSURE_TOKEN_NAME)  # without it sys.pressure is refused
        self._broadcasts: deque[Broadcast] = deque()
        self._status_pending = False
        self._fresh_next: list[Call] = []  # resource.status {fresh}: waiting for a tick
        self._fresh_now: list[Call] = []  # ... whose sample is being taken
        self.recent_alerts: deque[dict[str, Any]] = deque(maxlen=RECENT_ALERTS)
        self.counters: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()  # summed over every worker's `done`
        self.critical = CriticalActions(self)
        self._cost_total_us = 0
        self._calm = 0  # samples in a row with nothing to watch closely (see _interval)
        self._calm_memory = 0.0  # the memory term of the sample before (a rise is not calm)
        self._next_tick: Timer | None = None

    # --- life ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        # Who is who changes only when the supervisor says so: `sup.status` is asked again
        # after one of its events, not every interval (an idle tree stays idle).
        self._roles_stale = True
        self._restore_override()
        self._follow = Follow(self, self.outbound, self.settings.supervisor, "sup.event",
                              self._on_tree_event)
        self._tick_in(0)

    def _on_tree_event(self, event: object) -> None:
        # A process came or went (a restart, a shed, a new shell's actor).
        self._roles_stale = True
        self._look_closely()

    def _look_closely(self) -> None:
        """Something changed that the samples must follow: not calm any more, and the next
        sample within `interval_s`."""
        self._calm = 0
        self._tick_in(self.settings.interval_s)

    def on_stop(self) -> None:
        self._follow.close()
        self.outbound.close()

    def info(self) -> dict[str, Any]:
        # `tree`: the tree's level as measured here (resource.level); the runtime's own
        # `pressure` is what this actor was told, like any other.
        return {"tree": self._level_body(), "samples": self.sampler.samples}

    # --- the sampling cycle -----------------------------------------------------------------

    def _tick_in(self, delay: float) -> None:
        """The next sample in `delay` seconds, unless one is due sooner already."""
        t = self._next_tick
        when = self.loop.clock() + delay
        if t is not None and not t.cancelled and t.when <= when:
            return
        if t is not None:
            t.cancel()
        self._next_tick = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._next_tick = None
        try:
            self._tick()
        finally:  # (a sample that raised must not end the sampling)
            self._tick_in(self._interval())

    def _fresh_tick(self) -> None:
        """The next sample for the `fresh` requests waiting: now, or once `interval_s` has
        passed since the last one. Every count of samples (kill_after_samples, down_samples
        and the rest) and the CPU figure assume samples at least that far apart: a client
        asking again and again must not speed the tree's decisions up."""
        last = self.sample
        gap = 0.0 if last is None else last.taken_at + self.settings.interval_s \
            - time.monotonic()
        self._tick_in(max(0.0, gap))

    def _interval(self) -> float:
        """`calm_interval_s` once `calm_after_samples` samples in a row found the tree at
        normal with room (the pressure under moderate's boundary minus the margin, the
        memory term not rising) and nothing under way (no override, no shed, quality all
        back), else `interval_s`. An idle tree is then looked at as often as the seed's
        monitor does (every 5 s): what a sample costs is most of an idle tree's CPU (P14).
        A tree event, a quality override or a `fresh` status request brings the next sample
        forward."""
        s = self.settings
        if s.calm_interval_s > s.interval_s and self._calm >= s.calm_after_samples:
            return s.calm_interval_s
        return s.interval_s

    def _tick(self) -> None:
        if self._status_pending:
            self.counters["ticks_skipped"] += 1  # the previous status is still on its way
            return
        if not self._roles_stale and not self._fresh_next:
            self._sample_and_react()  # the same processes as last time: no need to ask
            return
        self._roles_stale = False
        self._status_pending = True
        self._fresh_now, self._fresh_next = self._fresh_next, []
        self._status_asked_at = self.critical.shed_replies
        timeout = min(self.settings.status_timeout_s, max(0.05, self.settings.interval_s))
        self.outbound.call(self.settings.supervisor, "sup.status", timeout=timeout,
                           on_done=self._on_status)

    def _on_status(self, reply: Reply | None, err: WireError | None) -> None:
        self._status_pending = False
        if reply is not None and isinstance(reply.body, dict):
            self.roles = roles_from_status(reply.body)
            # A restart of ours, or a shed by hand: adopt it; but not from a status asked
            # before our own last sup.shed was answered (it would undo what that did).
            c = self.critical
            if not c.shed_pending and self._status_asked_at == c.shed_replies:
                self.shedder.shed = bool(reply.body.get("shedding"))
                # (a child still stopping is not `shed` in the status yet: keep what we knew)
                c.shed_actors = sorted(self.roles.shed | set(c.shed_actors)) \
                    if self.shedder.shed else []
        else:
            # Sample with what we last knew: the processes have not moved because the
            # supervisor is slow to answer.
            self.counters["status_failures"] += 1
            logger.debug("sup.status failed: {}", err)
        self._sample_and_react()
        waiting, self._fresh_now = self._fresh_now, []
        for call in waiting:
            call.reply(self._status_body())
        if self._fresh_next:
            self._fresh_tick()  # asked for while this status was on its way

    def _sample_and_react(self) -> None:
        sample = self.sample = self.sampler.sample(self.roles)
        self._cost_total_us += sample.cost_us
        if sample.doubts:
            # A process the status did not account for (orphaned to a supervisor, or its
            # new zygote), or a nested supervisor that did not answer: none of them is taken
            # for a runaway until a newer status says who is who; it is asked next tick.
            self._roles_stale = True
            self.counters["samples_in_doubt"] += 1
        reading = sample.reading()
        self.pressure = self.model.feed(reading)
        self.level = self.levels.feed(self.pressure.value)
        self.qualities.feed(self.level)
        budget = int(self.settings.memory_budget_mb * MB)
        choice = choose_runaway(sample.rows, int(budget * self.settings.runaway_min_share),
                                lambda freed: self.model.without(reading, freed))
        # The kill decision follows the pressure itself, not the level hysteresis holds.
        for decision in self.escalation.feed(raw_level(self.pressure.value), choice.candidate):
            self.critical.carry_out(decision, sample, choice)
        shed = self.shedder.feed(self.escalation.episode, self.level)
        if shed is not None and not self.critical.shed_pending:
            self.critical.shed(shed == "shed")
        self._publish_if_changed()
        self._reconcile()
        self._verify()
        p = self.pressure
        calm = (self.level == NORMAL and p.value < ENTER[MODERATE] - self.settings.margin
                and p.memory < self._calm_memory + 1.0
                and self.qualities.derived == MAX_QUALITY and not self.shedder.shed
                and self.qualities.override_left() is None and not self._broadcasts
                and not self.critical.shed_pending)
        self._calm = self._calm + 1 if calm else 0
        self._calm_memory = p.memory

    # --- telling the workers --------------------------------------------------------------

    def _publish_if_changed(self) -> None:
        quality = self.qualities.effective()
        state = (self.level, quality)
        if state == self._told:
            return
        previous = self._told
        self._told = state
        self.effective_quality = quality
        self.counters["broadcasts"] += 1
        if previous is not None and previous[0] != self.level:
            self.counters["level_changes"] += 1
        if previous is not None and previous[1] != quality:
            self.counters["quality_changes"] += 1
        left = self.qualities.override_left()
        body = {
            "level": LEVELS[self.level], "pressure": self.pressure.value, "quality": quality,
            "previous": LEVELS[previous[0]] if previous else None,
            "previous_quality": previous[1] if previous else None,
            "derived_quality": self.qualities.derived,
            "override": left is not None,
            "components": self.pressure.components(),
            "features_off": list(FEATURES_OFF[quality]),
            "sample": self.sampler.samples, "time": time.time(),
        }
        logger.info("pressure {} -> level {} quality {}", self.pressure.value,
                    body["level"], quality)
        workers = dict(self.roles.workers)
        b = Broadcast(body, set(workers))
        self._broadcasts.append(b)
        for w, pid in workers.items():
            self._worker(w, pid)
            self._tell(w, b)
        self._flush()

    def _worker(self, name: str, pid: int) -> tuple[Worker, bool]:
        """The record of the worker `name` running as `pid`, and whether it is new (a
        process not seen before starts at normal/3, as the runtime does)."""
        w = self._workers.get(name)
        if w is not None and w.pid == pid:
            return w, False
        w = self._workers[name] = Worker(pid, (NORMAL, MAX_QUALITY))
        return w, True

    def _tell(self, worker: str, b: Broadcast | None) -> None:
        level, quality = self._told or (NORMAL, MAX_QUALITY)
        w = self._workers[worker]
        w.out += 1
        w.tells += 1

        def done(reply: Reply | None, err: WireError | None) -> None:
            w.out -= 1
            if err is None and reply is not None and isinstance(reply.body, dict):
                did = reply.body.get("done", {})
                holds = _held(reply.body)
                self.counters["told_ok"] += 1
                self._count_actions(did)
            else:
                did = {"error": err.name if err else "bad_reply"}
                holds = None  # (told again at the next sample: `_reconcile`)
                self.counters["told_failed"] += 1
            if self._workers.get(worker) is w:
                w.holds = holds
            if b is not None:
                b.actions[worker] = did
                b.waiting.discard(worker)
                self._flush()

        self.outbound.call(worker, "sys.pressure",
                           {"level": LEVELS[level], "quality": quality, "tok": self._token},
                           timeout=self.settings.tell_timeout_s, on_done=done)

    def _count_actions(self, did: Any) -> None:
        if not isinstance(did, dict):
            return
        for k, v in did.items():
            if isinstance(v, bool):
                self.actions[k] += int(v)
            elif isinstance(v, (int, float)):
                self.actions[k] += v
            elif v:
                self.actions[k] += 1

    def _flush(self) -> None:
        """Publish finished broadcasts in the order the changes happened."""
        while self._broadcasts and not self._broadcasts[0].waiting:
            b = self._broadcasts.popleft()
            self.publisher.publish("resource.level", {**b.body, "actions": b.actions})

    def _reconcile(self) -> None:
        """Tell the tree's state again to each running worker that does not hold it, as far
        as its last answer says: one restarted since (it starts at normal/3: `retold`), one
        whose tell failed or that was found holding something else (`tells_retried`). Not
        while a tell to it is under way: its answer says. Costs nothing when all agree."""
        told = self._told
        if told is None:
            return  # (the first sample tells every worker)
        workers = self.roles.workers
        for name in [n for n in self._workers if n not in workers]:
            del self._workers[name]  # stopped: a process that comes back is a new one
        for name, pid in workers.items():
            w, new = self._worker(name, pid)
            if w.out or w.holds == told:
                continue
            self.counters["retold" if new else "tells_retried"] += 1
            self._tell(name, None)

    def _verify(self) -> None:
        """Every VERIFY_EVERY samples, ask one worker (each in turn) for its `sys.info`: one
        found holding another state than the tree's is told again at once (`drifts`)."""
        if self._told is None or self.sampler.samples % VERIFY_EVERY:
            return
        idle = sorted(n for n, w in self._workers.items() if not w.out)
        if not idle:
            return
        name = next((n for n in idle if n > self._verified), idle[0])
        self._verified = name
        w = self._workers[name]
        tells = w.tells
        self.counters["verified"] += 1

        def done(reply: Reply | None, err: WireError | None) -> None:
            body = reply.body if reply is not None else None
            if err is not None or not isinstance(body, dict) or body.get("pid") != w.pid:
                return  # (unanswered, or another process now: its turn comes again)
            if self._workers.get(name) is not w or w.tells != tells or w.out:
                return  # told since it answered: that tell's answer says
            w.holds = _held(body.get("pressure"))
            if w.holds != self._told:
                self.counters["drifts"] += 1
                logger.warning("{} holds {} while the tree is at {}: told again", name,
                               body.get("pressure"), self._told)
                self._tell(name, None)

        self.outbound.call(name, "sys.info", timeout=self.settings.tell_timeout_s,
                           on_done=done)

    # --- the quality override ---------------------------------------------------------------

    def _restore_override(self) -> None:
        """Hold an override a predecessor was given, for what is left of it."""
        saved = self.override_file.load() if self.override_file is not None else None
        if saved is not None:
            self.qualities.set_override(*saved)
            self.counters["override_restored"] += 1
            logger.info("quality override {} restored, {:.1f} s left", *saved)

    # --- ops ------------------------------------------------------------------------------------

    @op("resource.status", args={"fresh": (bool, False)}, idempotent=True, timeout_ms=10_000,
        result={
            **LEVEL_BODY, "derived_quality": int, "override_left_s": float | None,
            "features_off": list[str],
            "components": dict[str, float],  # pressure per source (levels.Pressure)
            "budget": {"memory_bytes": int, "memory_metric": str, "cpu_cores": float},
            "totals": OneOf({"processes": int, "rss": int, "memory": int,
                             "cpu_percent": float, "memory_by_role": dict[str, int]}, None),
            "system": OneOf({"total": int, "available": int}, None),
            "processes": list[PROCESS],
            "sampler": {"samples": int, "interval_s": float, "calm": bool,
                        "last_cost_us": int | None, "mean_cost_us": float,
                        "age_s": float | None, "pss_reads": int},
            "counters": dict[str, int], "actions": dict[str, int],
            "shed": {"shedding": bool, "actors": list[str], "calm_samples": int,
                     "pending": bool},
            "recent_alerts": list[RESOURCE_ALERT]})
    def _op_status(self, call: Call, fresh: bool) -> object:
        """The tree's processes with their memory and CPU, totals, pressure, level, quality."""
        if fresh:
            self._fresh_next.append(call)
            self._fresh_tick()
            return DEFERRED
        return self._status_body()

    def _status_body(self) -> dict[str, Any]:
        s = self.sample
        n = max(1, self.sampler.samples)
        return {
            **self._level_body(),
            "derived_quality": self.qualities.derived,
            "override_left_s": _round(self.qualities.override_left()),
            "features_off": list(FEATURES_OFF[self.effective_quality]),
            "components": self.pressure.components(),
            "budget": {"memory_bytes": int(self.settings.memory_budget_mb * MB),
                       "memory_metric": self.settings.memory_metric,
                       "cpu_cores": self.settings.cpu_budget_cores},
            "totals": s.totals() if s else None,
            "system": {"total": s.system_total, "available": s.system_available} if s
            else None,
            "processes": [r.describe() for r in s.rows] if s else [],
            "sampler": {"samples": self.sampler.samples, "interval_s": self.settings.interval_s,
                        "calm": self._interval() != self.settings.interval_s,
                        "last_cost_us": s.cost_us if s else None,
                        "mean_cost_us": round(self._cost_total_us / n, 1),
                        "age_s": _round(time.monotonic() - s.taken_at) if s else None,
                        "pss_reads": self.sampler.pss_reads},
            "counters": dict(self.counters),
            "actions": dict(self.actions),
            "shed": {"shedding": self.shedder.shed, "actors": self.critical.shed_actors,
                     "calm_samples": self.shedder.calm, "pending": self.critical.shed_pending},
            "recent_alerts": list(self.recent_alerts),
        }

    @op("resource.level", idempotent=True, timeout_ms=1000, result=LEVEL_BODY)
    def _op_level(self, call: Call) -> dict[str, Any]:
        """The current level, pressure and quality."""
        return self._level_body()

    @op("resource.quality.set", args={"quality": int, "duration_s": ((int, float), 60.0)},
        timeout_ms=2000, result={**LEVEL_BODY, "derived_quality": int,
                                 "override_left_s": float | None})
    def _op_quality_set(self, call: Call, quality: int, duration_s: float) -> dict[str, Any]:
        """Hold the quality at `quality` for `duration_s` seconds (0 removes the override)."""
        if not 0 <= quality <= 3:
            raise fail("bad_args", f"resource.quality.set: quality must be 0..3, not {quality}")
        if not 0 <= duration_s <= MAX_OVERRIDE_S:
            raise fail("bad_args", f"resource.quality.set: duration_s must be in "
                                   f"[0, {MAX_OVERRIDE_S:.0f}], not {duration_s}")
        if self.override_file is not None:
            try:
                self.override_file.save(quality, float(duration_s))
            except OSError as exc:  # (it holds here all the same; a successor starts without)
                logger.warning("resource: the quality override is not saved: {}", exc)
        self.qualities.set_override(quality, float(duration_s))
        self.counters["overrides"] += 1
        self._look_closely()  # (its end is seen at a sample: within interval_s of it)
        self._publish_if_changed()
        return {**self._level_body(), "derived_quality": self.qualities.derived,
                "override_left_s": _round(self.qualities.override_left())}

    def _level_body(self) -> dict[str, Any]:
        return {"level": LEVELS[self.level], "pressure": self.pressure.value,
                "quality": self.effective_quality}


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
