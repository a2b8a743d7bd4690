"""The supervisor process: starts its children in order, watches them, restarts them.

Ops (on `<id>.rpc`; the root's id is `supervisor`):

  op            args                 reply                                   errors
  sup.status    {}                   {id, strategy, pid, shedding, children:  -
                                     [{id, state, pid, restarts, essential,
                                     sheds, ...}]}; nested supervisors include
                                     their tree
  sup.restart   {child}              {restarted: child}                      unknown_actor,
                                     (on its primary: a fallback is left)    busy (shed)
  sup.kill      {child, signal?}     {signalled: child, pid, signal}         unknown_actor,
                                                                             bad_args
  sup.stop      {}                   {stopping: true}  (then the tree stops) -
  sup.endpoints {}                   {actor: {rpc, pub}} for the whole tree   -
  sup.config.set {key: "timeout.<op>", {key, value, told: [actor], applied:    bad_args
                 value: ms}           [actor], failed: {actor: error}}
                                     kept until the tree stops (overrides.py)
  sup.config.get {}                  {defaults: {key: ms}, overrides: {key: ms}} -
  sup.shed      {on: bool,           {shedding, shed: [child], resumed:       -
                 reason?: str}        [child], held: [child], failed:
                                     {supervisor: error}}
                                     stop (on) or start again (off) the tree's
                                     non-essential children (shedding.py)

A supervisor also keeps what its children leave in its custody (custody.py: the pty keeper's
PTY masters and output rings, so that a session outlives its keeper and terminal actor dying
together), and reaps what is orphaned below it (a dead keeper's shells; `sup.orphan_exit`).
`sys.info` has `custody` (held per child, handed over, strangers refused).

The ops are in control.py and shedding.py, the events and their relaying in relay.py
(components it owns, through host.py's interface); this module is the life cycle: the job
queue, spawns, deaths and restarts, heartbeats.

Events on `<id>.pub`, topic `sup.event`, body {event, supervisor, child, pid, ...}:
started, exited (code or signal, reason), restarted, hung, escalated, fallback, alert,
shed, unshed, stopping, and the root's orphaned, adopted, orphan_timeout (lifecycle.py). A
supervisor republishes its nested supervisors' events, so the root's
`supervisor.pub` carries the whole tree's; it also republishes the metrics, resource and
terminal alerts. A child state `shed` is held stopped by `sup.shed` (not a failure).

Deaths are seen at once: the zygote reaps on SIGCHLD and writes the exit status to the
supervisor's socketpair, which the loop polls. Hangs are seen by beats (actors.runtime.beat):
the child's own loop keeps its slot on a board shared through the zygote (it turned; it is
blocked in its wait until a given time). Read every `heartbeat.interval_ms` while any child
works (every `idle_interval_ms` while all are idle), a child that neither turned nor waits
idle (not stopped, its wait not overdue) for `heartbeat.misses` ticks in a row is SIGKILLed
and restarted; first, unless it is stopped, it is asked for its last words (SIGUSR2, up to
200 ms: actors.runtime.last_words), the request its loop is stuck in, which the `hung`
event names and its successor refuses to run again. A stop is reported by the zygote, the
stopped child's parent, as it happens. No message is sent and no idle child is woken for it
(`sys.heartbeat` stays an op, for clients that probe an actor themselves).

A pause of the whole tree (Ctrl-Z on `moorage up`, `kill -STOP -PGID`, a cgroup freezer) is
not a failure of its children: the timers that kill or give up on a child (its start timeout,
a spawn or an exit its zygote leaves untold, a stop's shutdown_ms) count only the time this
loop was awake (Loop.call_later_awake: a stall of it pushes them out), a supervisor continued
continues its children and zygote, and every SIGTERM it sends is followed by a SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime import Actor, last_words
from moorage.actors.runtime.beat import stopped
from moorage.actors.runtime.logs import CONSOLE
from moorage.actors.runtime.outbound import Outbound
from moorage.protocol.errors import WireError
from moorage.supervisor import runtime_files, sdnotify
from moorage.supervisor.children import Child, ChildState, new_child
from moorage.supervisor.control import ControlOps
from moorage.supervisor.custody import Custodian
from moorage.supervisor.lifecycle import Lifecycle, LifecycleOptions
from moorage.supervisor.overrides import Overrides
from moorage.supervisor.policy import (
    LAST_RESORT,
    STARVED_TICKS_MAX,
    ExitKind,
    ExitReason,
    PastIntensity,
    RestartType,
    affected,
    classify_exit,
    counts_against_intensity,
    past_intensity,
    sched_sample,
    should_restart,
    start_cut_by_zygote,
    starved,
)
from moorage.supervisor.relay import ALERT_TOPICS, EVENT_TOPIC, EventRelay
from moorage.supervisor.shedding import SheddingOps
from moorage.supervisor.spec import SupervisorSpec
from moorage.supervisor.strays import end_strays
from moorage.supervisor.zygote import MAX_WHY, ZYGOTE_EVENTS, ZygoteHandle, readable

ESCALATED_EXIT_CODE = 3
ORPHAN_EXITS_KEPT = 1024  # the last reaped orphans' statuses, for sup.orphan_exit
# A child's death (its pidfd) that its zygote has not told of by then: the zygote is stuck
# (stopped, or wedged), and is replaced. It reaps on SIGCHLD between imports, one module at a
# time, so a sound one tells within the longest import.
EXIT_TELL_S = 5.0
ZYGOTE_RETRY_S = 1.0  # a zygote (or its spare) that could not be made, tried again after


class Supervisor(Actor):
    op_providers = (ControlOps, SheddingOps)

    def __init__(
        self,
        spec: SupervisorSpec,
        runtime_dir: Path | str,
        zygote: ZygoteHandle,
        doc: dict[str, Any],
        *,
        root: bool = False,
        lifecycle: LifecycleOptions | None = None,
    ) -> None:
        super().__init__(spec.id, runtime_dir, {})
        self.spec = spec
        self.doc = doc
        self.zygote = zygote
        self.root = root
        if len(spec.children) > zygote.beats.slots:
            raise ValueError(f"{spec.id}: more than {zygote.beats.slots} children")
        self.children: dict[str, Child] = {
            c.id: new_child(c, spec, slot) for slot, c in enumerate(spec.children)}
        self.order = [c.id for c in spec.children]
        self.by_pid: dict[int, Child] = {}
        self.old_zygotes: list[ZygoteHandle] = []  # dead: read until their last ready
        self.dying_zygotes: set[int] = set()  # killed when they stopped answering, unreaped
        self.zygote_restarts = 0
        # From the zygote's first death on, a spare stands by, forked by the zygote (so
        # ready in a millisecond, its modules imported): the next death costs no start of a
        # new interpreter (~0.2-1 s), during which no child could start, and a zygote killed
        # again and again is replaced each time.
        self.spare: ZygoteHandle | None = None
        self.replacing = False  # the lost zygote's successor could not be made yet
        self.zygote_halted_ticks = 0  # ticks a zygote asked for a fork has been stopped
        self.orphans_reaped = 0  # descendants orphaned to us (a subreaper) and reaped
        self.orphan_exits: dict[int, tuple[int | None, int | None]] = {}  # pid -> status
        self.jobs: deque[tuple[str, Child]] = deque()
        self.current_job: tuple[str, Child] | None = None
        self.outbound = Outbound(self)
        self.shutting_down = False
        self.exit_code = 0
        self.escalation = ""  # why it gave up (ESCALATED_EXIT_CODE), for a failed start's line
        self.failed_start = ""  # why it could not say ready (lifecycle.ready), for that line
        self.initial_start_done = False
        self._ready_callback: Callable[[], None] | None = None
        self.relay = EventRelay(self)
        self.notify = sdnotify.Notifier.from_env() if root else None
        self.overrides = Overrides()
        self.shedding = False  # sup.shed {on: true} holds the non-essential children stopped
        self.metrics_http: Any = None  # prom.MetricsHttp of --metrics-http, root only
        self.shed_ops = SheddingOps(self)
        self.add_ops(ControlOps(self))
        self.add_ops(self.shed_ops)
        self.lifecycle = Lifecycle(self, lifecycle) if lifecycle is not None else None
        self.custody: Custodian | None = None  # what our children leave in our keeping

    def event(self, name: str, child: Child | None = None, **fields: Any) -> None:
        """An event on `sup.event` (supervisor.relay)."""
        self.relay.event(name, child, **fields)

    def info(self) -> dict[str, Any]:
        return {"custody": self.custody.describe() if self.custody is not None else None,
                "orphans_reaped": self.orphans_reaped,
                # sd_notify messages systemd's socket had no room for (None: not asked)
                "notify_dropped": self.notify.dropped if self.notify is not None else None,
                # console lines stderr's reader had no room for (the log file has them)
                "console_dropped": CONSOLE.dropped}

    # --- life ---------------------------------------------------------------------------------

    def on_start(self) -> None:
        self._ready_callback, self.ready_hook = self.ready_hook, None
        self.loop.add_reader(self.zygote.fileno(), lambda: self._on_zygote(self.zygote))
        self.custody = Custodian(self.loop, self.runtime_dir, self.name)
        # Our own children: the zygote (a new program after the first), and the children of
        # a dead zygote (we are a subreaper); anything else orphaned below us is reaped too.
        signal.signal(signal.SIGCHLD,
                      lambda *_: self.loop.call_soon_from_signal(self._reap_children))
        # Continued, we continue what is ours: a tree stopped whole and continued through
        # its root alone (or a nested supervisor, continued by its parent as its stop
        # begins) would otherwise find its children stopped, and kill them for hung.
        signal.signal(signal.SIGCONT,
                      lambda *_: self.loop.call_soon_from_signal(self._continue_all))
        self._beat_timer = self.loop.call_later(self.spec.heartbeat.interval_ms / 1000,
                                                self._heartbeat)
        if self.notify is not None:
            self.notify.start_watchdog(self.loop)
        if self.lifecycle is not None:
            self.lifecycle.start()
        if self.root and self.doc.get("metrics_http"):
            from moorage.supervisor.prom import MetricsHttp  # threads: only after the zygote's fork

            self.metrics_http = MetricsHttp(self.runtime_dir, self.doc["metrics_http"])
        for cid in self.order:
            child = self.children[cid]
            if child.spec.type == "supervisor":
                self.relay.follow(cid, EVENT_TOPIC)
            if cid in ALERT_TOPICS:
                self.relay.follow(cid, ALERT_TOPICS[cid])
            self.jobs.append(("start", child))
        self.next_job()

    def _initial_start_finished(self) -> None:
        self.initial_start_done = True
        logger.info("{}: all children started", self.name)
        if self.lifecycle is not None and not self.lifecycle.ready():
            return  # (stopping: its failed line says why)
        if self._ready_callback is not None:
            cb, self._ready_callback = self._ready_callback, None
            cb()
        if self.notify is not None:
            self.notify.send("READY=1", f"STATUS=moorage tree up ({len(self.children)} children)")
        if self.root:
            self._keep_files()

    def _keep_files(self) -> None:
        """The instance's files kept from tmp cleaners (runtime_files), now and every
        KEEP_EVERY_S."""
        runtime_files.keep(self.runtime_dir)
        self.loop.call_later(runtime_files.KEEP_EVERY_S, self._keep_files)

    def stop(self) -> None:
        """Stop every child in reverse start order (asks, waits, kills), then ourselves."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.refuse_requests()
        self.event("stopping")
        if self.lifecycle is not None:
            self.lifecycle.stopping()
        if self.notify is not None:
            self.notify.send("STOPPING=1")
        self._continue_all()
        self.jobs.clear()
        for cid in reversed(self.order):
            child = self.children[cid]
            child.cancel_plan()
            if child.state is ChildState.BACKOFF:
                child.state = ChildState.STOPPED
            self.jobs.append(("stop", child))
        if self.current_job is None or self.current_job[0] == "start":
            self.current_job = None
            self.next_job()

    def _continue_all(self) -> None:
        """SIGCONT to every child, the zygote and its spare: as the stop begins, and when we
        are continued ourselves. A tree stopped whole (Ctrl-Z on `moorage up`, `kill -STOP
        -PGID`) and then told to stop through its root alone (`systemctl stop`, `moorage
        down` of a root that does not answer: SIGTERM and SIGCONT to it) otherwise stops
        children that cannot act on it: the ones waiting for their turn are beat-checked and
        killed for hung, each asked one waits out its shutdown_ms, and a stopped zygote
        leaves their exits untold. (A child stopped while we run is a hang, killed within
        `misses` ticks: continuing it costs nothing that would have been kept.)"""
        for child in self.children.values():
            if child.pid is not None:
                child.signal(signal.SIGCONT)
        for z in (self.zygote, self.spare):
            if z is not None:
                z.signal(signal.SIGCONT)

    def on_adopt(self, parent: int | None) -> dict[str, Any]:
        if self.lifecycle is None:
            return super().on_adopt(parent)
        return self.lifecycle.adopt(parent)

    def _all_stopped(self) -> None:
        self.loop.stop()

    def on_stop(self) -> None:
        # Every child has stopped by now (the job queue ran dry): the zygote may go too.
        if self.metrics_http is not None:
            self.metrics_http.close()
        if self.lifecycle is not None:
            self.lifecycle.close()
        self.outbound.close()
        self.relay.close()
        if self.custody is not None:
            self.custody.close()
        if self.spare is not None:
            self.loop.remove_reader(self.spare.fileno())
            self.spare.close()
        self.zygote.close()
        end_strays(self.name)  # (what left its session below us: `setsid -f` from a shell)

    # --- the job queue: starts and stops that must happen one after another -------------

    def next_job(self) -> None:
        held: list[tuple[str, Child]] = []  # starts, while there is no zygote to ask
        while self.current_job is None and self.jobs:
            kind, child = self.jobs.popleft()
            if kind == "start" and self.replacing:
                held.append((kind, child))  # (a stop needs no zygote: it goes on)
                continue
            if kind == "start":
                if self.shutting_down or child.shed or child.state in (ChildState.RUNNING,
                                                                       ChildState.STARTING):
                    continue
                if self.shed_ops.hold(child):
                    continue  # non-essential, and the tree is shedding: held until it ends
                self.current_job = (kind, child)
                self._spawn(child)
            else:
                if child.state not in (ChildState.RUNNING, ChildState.STARTING,
                                       ChildState.STOPPING):
                    continue
                self.current_job = (kind, child)
                self._request_stop(child)
        self.jobs.extendleft(reversed(held))
        if self.current_job is None and not self.jobs and self.shutting_down:
            self._all_stopped()
        self._check_initial_start()

    def _check_initial_start(self) -> None:
        # Ready (for the parent, and systemd) once every child has come up: a child that
        # fails at start delays it; one that keeps failing escalates instead.
        if self.initial_start_done or self.shutting_down:
            return
        if all(c.state in (ChildState.RUNNING, ChildState.SHED) or (
               c.state is not ChildState.BACKOFF
               and c.spec.restart.value != "permanent" and c.last_exit is not None)
               for c in self.children.values()):
            self._initial_start_finished()

    def _job_done(self, child: Child) -> None:
        if self.current_job is not None and self.current_job[1] is child:
            self.current_job = None
            self.next_job()

    # --- starting -------------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        child.generation += 1
        child.state = ChildState.STARTING
        child.past_intensity = False
        child.stop_requested = False
        child.stop_stage = ""
        child.heartbeat.reset()
        self.zygote.beats.clear(child.slot)
        child.started_at = time.monotonic()
        config = self.overrides.spawn_config(child.id, dict(child.spec.config))
        config["supervised_by"] = self.name  # whom to ask about what we reap for it
        if child.fallback is not None:
            config["fallback"] = child.fallback
        beat = child.slot
        gen = child.generation
        timeout = self.spec.start_timeout_ms / 1000
        child.timers.append(self.loop.call_later_awake(
            timeout, lambda: self._start_timeout(child, gen), lambda: self._cpu_waits(child, gen)))
        zygote = child.asked_of = self.zygote
        if child.spec.type == "supervisor":
            err = zygote.spawn(child.id, "supervisor", {
                "id": child.id, "runtime_dir": str(self.runtime_dir), "doc": self.doc}, beat)
        else:
            err = zygote.spawn(child.id, "actor", {
                "entry": child.spec.start, "name": child.id,
                "runtime_dir": str(self.runtime_dir), "config": config}, beat)
        if err is not None:  # (not from here: this runs inside the job queue's walk)
            self.loop.call_later(0, lambda: self._spawn_unsent(child, gen, zygote, err))

    def _spawn_unsent(self, child: Child, gen: int, zygote: ZygoteHandle,
                      err: OSError) -> None:
        if isinstance(err, (BlockingIOError, ConnectionError)):
            # gone, or so stuck that its socket is full
            self._zygote_lost(zygote, f"it could not be asked ({err})")
        elif child.generation == gen and child.state is ChildState.STARTING \
                and child.pid is None:
            # the request itself (too large for a datagram, say): a failed start
            logger.error("{}: spawn request not sent: {}", child.id, err)
            self._on_exit(child, ExitReason(ExitKind.ABNORMAL,
                                            detail=f"spawn request not sent: {err}"))

    def _cpu_waits(self, child: Child, gen: int) -> float:
        """Seconds the process of `child`'s start `gen` has waited for a CPU since its fork
        (its run delay, which schedstat counts from there), up to the start timeout: time
        its start timeout does not count, as the heartbeat does not count a tick its loop
        spent waiting (starved). A start on a machine saturated by the user's builds is
        slow, not hung; one that sleeps still times out, and one that spins gets its share
        of the CPU too, so at most twice its time however busy the machine is."""
        if child.generation != gen or child.pid is None:
            return 0.0
        sample = sched_sample(child.pid)
        waited = sample[1] / 1e9 if sample is not None else 0.0
        return min(waited, self.spec.start_timeout_ms / 1000)

    def _start_timeout(self, child: Child, gen: int) -> None:
        if child.generation != gen or child.state is not ChildState.STARTING:
            return
        if child.pid is None:
            # Never forked: the zygote did not answer the spawn. It is replaced, and the
            # start asked again of its successor.
            self._spawn_unanswered(child)
            return
        logger.warning("{}: not ready after {} ms; killing", child.id,
                       self.spec.start_timeout_ms)
        child.kill_reason = "start timeout"
        child.kill_sent = True
        child.signal(signal.SIGKILL)

    def _on_zygote(self, zygote: ZygoteHandle) -> None:
        try:
            events = zygote.read_events()
        except EOFError:
            # The zygote and every child still starting from it are gone (a live zygote's
            # end only closes with it). Its death comes as SIGCHLD too, unless it was a
            # spare that its own zygote reaped: then this is all we learn.
            self.loop.remove_reader(zygote.fileno())
            if zygote in self.old_zygotes:
                self.old_zygotes.remove(zygote)
                zygote.sock.close()
            else:
                self._zygote_lost(zygote, "its end closed")
            return
        self._zygote_events(zygote, events)

    def _zygote_events(self, zygote: ZygoteHandle, events: list[dict]) -> None:
        for ev in events:
            kind = ev.get("ev")
            # Only the zygote speaks of forks and deaths, and a child only of itself (the
            # kernel says who sent each: `from`); anything else is refused and logged.
            if kind in ("ready", "start_failed"):
                trusted = ev["from"] is not None and ev["from"] == ev.get("pid")
            else:
                trusted = ev["from"] == zygote.pid and kind in ZYGOTE_EVENTS
            if not trusted:
                logger.warning("{}: refused an event on the zygote's socket from pid {}: {}",
                               self.name, ev["from"], {k: ev[k] for k in list(ev)[:4]})
                continue
            if kind == "spawned":
                child = self.children[ev["child"]]
                if child.asked_of is zygote and child.pid is None:
                    self._on_spawned(child, ev["pid"])
                else:
                    # A fork of an attempt given up on (its zygote died and the child was
                    # asked of another): two of one child would share its endpoint and beat.
                    self._kill_stray(ev["pid"], f"a second {child.id} forked by zygote "
                                     f"{zygote.pid}")
            elif kind == "spawn_failed":
                child = self.children[ev["child"]]
                logger.error("{}: fork failed: {}", child.id, ev.get("error"))
                if child.asked_of is zygote and child.pid is None and child.state in (
                        ChildState.STARTING, ChildState.STOPPING):
                    self._on_exit(child, ExitReason(ExitKind.ABNORMAL,
                                                    detail=f"fork: {ev['error']}"))
                # (else a late word of an attempt given up on: the child's own is under way)
            elif kind == "ready":
                child = self.by_pid.get(ev["pid"])
                if child is not None:
                    self._on_ready(child)
                elif zygote is not self.zygote:
                    # A dead zygote's fork we never took as a child's (its "spawned" came
                    # for a start given up on): said ready before it was killed for that.
                    self._kill_stray(ev["pid"], "a stray child of a dead zygote")
            elif kind == "start_failed":
                child = self.by_pid.get(ev["pid"])
                if child is not None and child.state is ChildState.STARTING:
                    child.start_error = str(ev.get("error"))[:MAX_WHY]
            elif kind in ("stopped", "continued"):
                child = self.by_pid.get(ev["pid"])
                if child is not None:
                    child.stopped = kind == "stopped"
                    if child.stopped:
                        self._beat_soon()
            elif kind == "exited":
                child = self.by_pid.pop(ev["pid"], None)
                if child is not None:
                    reason = classify_exit(ev.get("code"), ev.get("signal"),
                                           child.stop_requested)
                    self._on_exit(child, reason)

    def _kill_stray(self, pid: int, what: str) -> None:
        logger.warning("{}: killing {}, {}", self.name, pid, what)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # --- our own children: the zygote, and what it left us --------------------------------

    def _reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            child = self.by_pid.get(pid)
            if pid == self.zygote.pid:
                self._zygote_died(code)
            elif pid in self.dying_zygotes:
                self.dying_zygotes.discard(pid)  # replaced when it stopped answering
            elif self.spare is not None and pid == self.spare.pid:
                self._spare_died(self.spare, code)
            elif child is not None and child.adopted:
                del self.by_pid[pid]
                self._on_exit(child, classify_exit(code if code >= 0 else None,
                                                   -code if code < 0 else None,
                                                   child.stop_requested))
            else:
                # A descendant orphaned to us: a dead keeper's shell among them, whose exit
                # its successor asks for (sup.orphan_exit).
                self.orphans_reaped += 1
                self.orphan_exits[pid] = (code if code >= 0 else None,
                                          -code if code < 0 else None)
                while len(self.orphan_exits) > ORPHAN_EXITS_KEPT:
                    self.orphan_exits.pop(next(iter(self.orphan_exits)))
                logger.debug("{}: reaped orphan {} ({})", self.name, pid, code)

    def _spawn_unanswered(self, child: Child) -> None:
        self._zygote_lost(child.asked_of, f"{child.id}'s spawn went unanswered for "
                          f"{self.spec.start_timeout_ms} ms")

    def _zygote_lost(self, zygote: ZygoteHandle | None, why: str) -> None:
        """The zygote no longer serves though no death of it was reaped: its end closed, a
        request could not be sent, or it left a spawn or a child's death untold (stopped,
        or stuck). It is killed (a no-op if it is dead) and replaced at once."""
        if zygote is not self.zygote:
            return  # replaced already
        code = zygote.reap()
        if code is not None:  # dead already, and ours: its status is known
            self._zygote_died(code)
            return
        zygote.kill()
        if zygote.is_ours():
            self.dying_zygotes.add(zygote.pid)  # its reaping to come is not an orphan's
        self._zygote_died(None, why)

    def _zygote_died(self, code: int | None, why: str = "") -> None:
        """Its children outlive it (they are ours now, see supervisor.zygote); the spare takes
        its place (a new program when there is none yet), and another spare is started. A
        spawn it had not answered is asked of the new one. While the tree stops, the
        children still stopping are only adopted: their deaths are ours to reap."""
        old = self.zygote
        if old.lost or self.replacing:
            return  # (told again by its SIGCHLD, its end, a timer; or being replaced)
        why = why or f"exited ({code})"
        # What it said before it died is taken first: a child it forked and told us of is
        # ours (adopted below), not one to start again beside the one that runs.
        with contextlib.suppress(EOFError):
            self._zygote_events(old, old.read_events())
        for child in self.children.values():
            if child.pid is not None:
                child.adopted = True
        self._after_death_of(old)
        if self.shutting_down:
            old.lost = True
            logger.warning("{}: zygote {} lost while stopping: {}", self.name, old.pid, why)
            self._reap_children()
            return
        self.zygote_restarts += 1
        logger.error("{}: zygote {} lost: {}; starting another", self.name, old.pid, why)
        self.old_zygotes.append(old)
        old.release()
        self.loop.remove_reader(old.fileno())
        self.loop.add_reader(old.fileno(), lambda: self._on_zygote(old))
        self._succeed(old, why)

    def _succeed(self, old: ZygoteHandle, why: str) -> None:
        """The spare, or else a new program, takes the lost zygote's place. One that cannot
        be made (no descriptor or process left) is tried again ZYGOTE_RETRY_S later; no
        child can start meanwhile, and none is asked to (`replacing`)."""
        self.replacing = False
        if self.shutting_down or self.zygote is not old:
            self.next_job()
            return
        new, self.spare = self.spare, None
        if new is not None:
            self.loop.remove_reader(new.fileno())
            if not new.learn_pid():  # being forked as the zygote died, or died with it:
                new.sock.close()  # (a spare that lives exits at this EOF)
                new = None
            elif stopped(new.pid):  # (it would answer no fork either)
                logger.warning("{}: spare zygote {} is stopped; a new one instead", self.name,
                               new.pid)
                new.kill()
                new.release()
                new.sock.close()
                new = None
        if new is None:
            try:
                new = old.replacement()
            except OSError as exc:
                logger.error("{}: no zygote could replace {}: {}; trying again in {} s",
                             self.name, old.pid, exc, ZYGOTE_RETRY_S)
                self.replacing = True
                self.loop.call_later(ZYGOTE_RETRY_S, lambda: self._succeed(old, why))
                return
        self.zygote = new
        self._stand_by()
        self.loop.add_reader(new.fileno(), lambda: self._on_zygote(new))
        self.event("zygote_restarted", None, zygote_pid=new.pid, old_pid=old.pid,
                   restarts=self.zygote_restarts, reason=why)
        self._reap_children()  # an adopted child that died with it is a zombie of ours now
        for child in self.children.values():
            if child.state is ChildState.STARTING and child.pid is None:
                # asked of the dead zygote, never confirmed: start it again
                child.state = ChildState.STOPPED
                child.cancel_timers()
                self.jobs.appendleft(("start", child))
                if self.current_job is not None and self.current_job[1] is child:
                    self.current_job = None
        self.next_job()

    def _stand_by(self, forked: bool = True) -> None:
        """Start the spare zygote: forked by the zygote (ZygoteHandle.fork_spare), or a new
        program (this process has threads) after a forked one died before it said hello
        (its zygote could not fork it). Out of descriptors or processes, it is tried again
        ZYGOTE_RETRY_S later (the zygote serves meanwhile, without a spare)."""
        zygote = self.zygote
        try:
            spare = zygote.fork_spare() if forked else zygote.replacement()
        except OSError as exc:
            logger.error("{}: no spare zygote: {}; trying again in {} s", self.name, exc,
                         ZYGOTE_RETRY_S)

            def again() -> None:
                if self.zygote is zygote and self.spare is None and not self.shutting_down:
                    self._stand_by(forked)

            self.loop.call_later(ZYGOTE_RETRY_S, again)
            return
        self.spare = spare
        # Its end closes when it dies (a forked spare is its zygote's child, whose death
        # we may not reap ourselves); its first message is its pid.
        self.loop.add_reader(spare.fileno(), lambda: self._on_spare(spare))

    def _on_spare(self, spare: ZygoteHandle) -> None:
        try:
            events = spare.read_events()
        except EOFError:
            self._spare_died(spare, None)
            return
        for ev in events:
            if ev.get("ev") == "hello" and ev["from"] == ev.get("pid"):
                spare.pid = ev["from"]

    def _spare_died(self, spare: ZygoteHandle, code: int | None) -> None:
        """`code` when we reaped it ourselves; None when its end closed."""
        if self.spare is not spare:
            return  # (told both ways: reaped, and its end closed)
        logger.warning("{}: spare zygote {} died ({})", self.name, spare.pid,
                       "its end closed" if code is None else code)
        self.loop.remove_reader(spare.fileno())
        spare.sock.close()
        spare.release()
        self.spare = None
        if not self.shutting_down:
            self._stand_by(forked=spare.pid > 0)

    def _after_death_of(self, old: ZygoteHandle) -> None:
        """Look for the deaths `old` took untold once it is dead: killed a moment ago (it had
        stopped answering), it may still hold its children's zombies, which pass to us as it
        dies and are reaped with their true status."""
        alive = old.pidfd is not None and not readable(old.pidfd)
        if not alive:
            self._untold_deaths(old)
            return
        try:
            fd = os.dup(old.pidfd)  # (its handle's own is released before it is dead)
        except OSError:  # (no descriptor: judged now; a zombie yet to pass to us may be
            self._untold_deaths(old)  # taken for untold, its status unknown)
            return

        def dead() -> None:
            self.loop.remove_reader(fd)
            os.close(fd)
            # (what it said last, first; its end closed already: nothing more to read)
            with contextlib.suppress(EOFError, OSError):
                self._zygote_events(old, old.read_events())
            self._reap_children()
            self._untold_deaths(old)

        self.loop.add_reader(fd, dead)

    def _untold_deaths(self, old: ZygoteHandle) -> None:
        """Children of the zygote `old`, dead now, that are gone, and that no one will tell
        us of: it reaped them and died before it said so (killed between its wait and its
        send, or its send refused). Adopted, they would wait for a SIGCHLD of ours that
        never comes: running for ever in our books, and a stop of one the end of the job
        queue. A process that ended and is no zombie of ours (ECHILD) is such a one."""
        for child in list(self.children.values()):
            fd, pid = child.pidfd, child.pid
            if fd is None or pid is None or self.by_pid.get(pid) is not child \
                    or not child.adopted or child.asked_of is not old:
                continue  # (another zygote's: its own word of it may still come)
            if not readable(fd):
                continue  # alive
            try:
                os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                del self.by_pid[pid]
                logger.warning("{}: {} (pid {}) ended and its zygote died before telling how",
                               self.name, child.id, pid)
                kind = ExitKind.SHUTDOWN if child.stop_requested else ExitKind.ABNORMAL
                self._on_exit(child, ExitReason(kind, detail="its exit went untold: its "
                                                "zygote died"))

    def _on_spawned(self, child: Child, pid: int) -> None:
        child.pid = pid
        self.by_pid[pid] = child
        try:
            child.pidfd = fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            child.pidfd = None  # already gone; its "exited" event is on the way
        else:
            self.loop.add_reader(fd, lambda: self._on_pidfd(child, fd))
        if child.state is ChildState.STOPPING:
            self._signal_stop(child)  # asked to stop while it was being forked

    def _on_pidfd(self, child: Child, fd: int) -> None:
        """The child's process ended. How is told by its parent: the zygote, which reaps it,
        or, adopted, ourselves. A zygote that leaves it untold for EXIT_TELL_S (stopped,
        stuck) is replaced: the child, a zombie then, is reparented to us and reaped here,
        with its true status."""
        if child.pidfd != fd:
            return  # (its process forgotten since; a stale readiness the loop drops)
        self.loop.remove_reader(fd)
        if child.adopted:
            return  # (our SIGCHLD tells)
        pid, gen, zygote = child.pid, child.generation, child.asked_of

        def untold() -> None:
            if child.pid == pid and child.generation == gen and not child.adopted:
                self._zygote_lost(zygote, f"{child.id}'s exit went untold for {EXIT_TELL_S} s")

        self.loop.call_later_awake(EXIT_TELL_S, untold)

    def _forget_process(self, child: Child) -> None:
        if child.pidfd is not None:
            self.loop.remove_reader(child.pidfd)
        child.forget_process()

    def _on_ready(self, child: Child) -> None:
        if child.state is not ChildState.STARTING:
            return
        child.state = ChildState.RUNNING
        child.ready_at = time.monotonic()
        # its `ready` is a sign of life: one stopped before its first heartbeat read (or
        # before its loop's first turn) has its outage timed from here, not unknown
        child.alive_at = max(child.alive_at, time.monotonic_ns())
        was_restart = child.restarts > 0 and not child.resuming
        extra = {"resumed": True} if child.resuming else {}
        child.resuming = False
        self.event("restarted" if was_restart else "started", child,
                   fallback=child.fallback, start_ms=round(
                       (child.ready_at - child.started_at) * 1000, 2), **extra)
        self._job_done(child)
        self._check_initial_start()
        self._retell(child)

    def _retell(self, child: Child) -> None:
        """A child that came up without the current overrides (or, a nested supervisor,
        without the tree's shedding) is told them now."""
        calls = self.overrides.on_ready(child.id, child.spec.type == "supervisor")
        calls += self.shed_ops.shed_calls_on_ready(child)
        for op_name, args in calls:
            def done(reply: Any, err: WireError | None, op_name: str = op_name) -> None:
                if err is not None:
                    logger.warning("{}: {} not applied: {}", child.id, op_name, err)
            self.outbound.call(child.id, op_name, args, timeout=2.0, on_done=done)

    # --- stopping -------------------------------------------------------------------------------

    def _request_stop(self, child: Child) -> None:
        child.cancel_timers()
        child.stop_requested = True
        child.state = ChildState.STOPPING
        if child.pid is None:
            # Asked of the zygote, not forked as far as we know: signalled when its
            # `spawned` comes (_on_spawned). A zygote that never answers is replaced, and
            # then there is nothing to stop.
            gen = child.generation

            def unanswered() -> None:
                if child.generation != gen or child.state is not ChildState.STOPPING \
                        or child.pid is not None:
                    return
                self._spawn_unanswered(child)
                if child.state is ChildState.STOPPING and child.pid is None:
                    self._on_exit(child, ExitReason(ExitKind.SHUTDOWN,
                                                    detail="stopped before it was forked"))

            child.timers.append(self.loop.call_later_awake(
                self.spec.start_timeout_ms / 1000, unanswered))
            return
        self._signal_stop(child)

    def _signal_stop(self, child: Child) -> None:
        if child.spec.brutal:
            child.stop_stage = "kill"
            child.signal(signal.SIGKILL)
            return
        child.stop_stage = "term"
        if not child.signal(signal.SIGTERM):
            return
        # (as systemd does: a stopped process acts on SIGTERM once it is continued)
        child.signal(signal.SIGCONT)
        gen = child.generation

        def escalate_to_kill() -> None:
            if child.generation == gen and child.state is ChildState.STOPPING:
                logger.warning("{}: still alive {} ms after SIGTERM; SIGKILL", child.id,
                               child.spec.shutdown_ms)
                child.stop_stage = "kill"
                child.signal(signal.SIGKILL)

        child.timers.append(self.loop.call_later_awake(child.spec.shutdown_ms / 1000,
                                                       escalate_to_kill))

    # --- deaths ---------------------------------------------------------------------------------

    def _on_exit(self, child: Child, reason: ExitReason) -> None:
        now = time.monotonic()
        # (adopted: the zygote that forked it died while this process lived)
        zygote_cut = reason.kind is ExitKind.ABNORMAL and start_cut_by_zygote(
            child.state is ChildState.STARTING, child.adopted, child.kill_reason)
        detail = child.kill_reason or reason.detail
        if not detail and reason.kind is ExitKind.ABNORMAL and child.state is ChildState.STARTING:
            detail = "died during start" + (f": {child.start_error}" if child.start_error
                                            else "")
            if zygote_cut:
                detail += "; its zygote had died"
        if detail != reason.detail:
            reason = ExitReason(reason.kind, reason.code, reason.signal, detail)
        child.kill_reason = child.start_error = ""
        uptime = child.uptime(now)
        serving = child.serving_for(now)
        self._leave_stable_fallback(child, serving)
        # (one that never came up is young whatever stable_after_s says, 0 included)
        young = child.ready_at is None or serving < self.spec.stable_after_s
        escalated = child.spec.type == "supervisor" and reason.code == ESCALATED_EXIT_CODE
        if not young and (not escalated or serving >= self.spec.period_s):
            # It had been serving: whatever the root tried worked. A supervisor that gave up
            # had served too, but maybe only until its children failed again: that is a new
            # episode only after a whole intensity period of service (it exits no other way).
            child.last_resort = 0
        was = child.state
        pid = child.pid
        child.cancel_timers()
        self._forget_process(child)
        child.last_exit = reason
        down_since, child.down_since = child.down_since, None
        self.event("exited", child, pid=pid, reason=reason.kind.value, code=reason.code,
                   signal=reason.signal, detail=reason.detail, stage=child.stop_stage or None,
                   uptime_s=round(uptime, 3), **({"down_since": down_since}
                                                 if down_since is not None else {}))
        # What we asked of it will not be answered: its callers hear so now, not at their
        # timeouts (sup.status waited 2 s on a nested supervisor killed as it was asked).
        self.outbound.peer_gone(child.id, f"ended ({reason.describe()})")
        if was is ChildState.STOPPING or self.shutting_down:
            child.state = ChildState.SHED if child.shed else ChildState.STOPPED
            self._job_done(child)
            return
        if self.current_job is not None and self.current_job[1] is child:
            self.current_job = None  # a start that failed; the restart logic below takes over
        if child.shed:  # died while being shed: it stays down, and it is not a failure
            child.state = ChildState.SHED
            self.next_job()
            return
        if not should_restart(child.spec.restart, reason):
            child.state = ChildState.FAILED if reason.kind is ExitKind.ABNORMAL \
                else ChildState.STOPPED
            self.next_job()
            return
        if zygote_cut:
            # Not its failure: started again at once, from the zygote that serves now, its
            # back-off where it was (a crash loop cut by a zygote's death goes on slowing).
            self._restart_group(child, 0.0)
            self.next_job()
            return
        if counts_against_intensity(young, escalated) and not child.intensity.add(now):
            decision = past_intensity(
                child.fallback_index + 1 < len(child.spec.fallbacks),
                self.root or self.spec.retry_forever, self.initial_start_done)
            if decision is PastIntensity.FALLBACK:
                child.fallback_index += 1
                child.intensity.clear()
                child.backoff.consecutive = 0
                self.event("fallback", child, fallback=child.fallback,
                           reason=f"more than {self.spec.intensity} restarts in "
                           f"{self.spec.period_s}s")
            elif decision is PastIntensity.RETRY:
                # A tree that came up never gives up, nor does a supervisor whose children
                # hold the user's state; one that cannot come up says so (its editor is
                # waiting for the ready line, or a failure; its parent for its ready).
                self._last_resort(child)
                return
            else:
                self._escalate(child)
                return
        self._schedule_restart(child, stable=not young)
        self.next_job()

    def _leave_stable_fallback(self, child: Child, serving: float) -> None:
        """A child whose fallback served for the whole intensity period before this process
        ended is started on its primary again, at the start that follows anyway.

        A fallback is a degraded mode, engaged because the primary died young more than
        `intensity` times within `period_s`; what made it die is often passing (a resource
        missing for a while, a limit reached), and a fallback kept for good leaves the
        child degraded until the tree restarts. A fallback that serves is never stopped to
        try: the primary is tried again only when the process ends for another reason,
        once it has outlived the window that condemned the primary. A primary that still
        fails costs `intensity` + 1 young deaths before the fallbacks are engaged again, as
        rarely as the stable child dies. (`sup.restart` goes back to the primary at once.)"""
        if child.fallback_index >= 0 and serving >= self.spec.period_s:
            logger.info("{}: its fallback {} served {:.1f} s; its primary next", child.id,
                        child.fallback, serving)
            child.primary_again()

    def _schedule_restart(self, child: Child, stable: bool) -> None:
        delay = child.backoff.next_delay(stable)
        if delay > 0:
            logger.info("{}: restarting in {:.0f} ms", child.id, delay * 1000)
        self._restart_group(child, delay)

    def _restart_group(self, child: Child, delay: float) -> None:
        """Restart `child` and its group (strategy.affected) `delay` seconds from now, in
        start order; the others are stopped now, in reverse order.

        The group's start jobs still queued (a group restart under way, whose `child` failed
        to start; the first start of the tree) are dropped: a dependant started while
        `child` waits out its back-off would run without what it depends on, and stay
        unrestarted once `child` is up (it would be running then). The plan starts them
        after `child` instead, the job queue holding each start until the one before it is
        ready, as OTP does (rest_for_one: those after it; one_for_all: all). A start that
        was dropped is not counted again, and a temporary child whose start was dropped
        had never run this time: it is started, not left out as a restarted one would be."""
        group = [self.children[c] for c in affected(self.spec.strategy, self.order, child.id)]
        dropped = self._drop_starts({c.id for c in group})
        for other in reversed(group):
            if other is not child:
                other.cancel_plan()
                if other.state in (ChildState.RUNNING, ChildState.STARTING):
                    self.jobs.append(("stop", other))
        child.state = ChildState.BACKOFF
        restart_group = [c for c in group if c is child or c.id in dropped
                         or c.spec.restart is not RestartType.TEMPORARY]

        def restart() -> None:
            if self.shutting_down:
                return
            for c in restart_group:
                if c.shed:
                    continue  # held down on purpose: not restarted, not counted
                if c is child or c.id not in dropped:
                    c.restarts += 1
                self.jobs.append(("start", c))
            self.next_job()

        self._plan(child, delay, restart)

    def _drop_starts(self, ids: set[str]) -> set[str]:
        """Take the queued start jobs of these children off the queue; whose they were."""
        dropped = {c.id for kind, c in self.jobs if kind == "start" and c.id in ids}
        if dropped:
            kept = [job for job in self.jobs if job[0] != "start" or job[1].id not in ids]
            self.jobs.clear()
            self.jobs.extend(kept)
        return dropped

    def _last_resort(self, child: Child) -> None:
        """The root has no parent to escalate to, and the tree is what an editor relies on;
        a supervisor that retries forever (spec) must not stop its other children, which hold
        the user's state: the child is retried, further and further apart, and the rest of
        the tree keeps serving. Its group (rest_for_one, one_for_all) is restarted with it,
        after it: its dependants stay stopped meanwhile, as through any of its restarts."""
        delay = LAST_RESORT.delay(child.last_resort)
        child.last_resort += 1
        child.intensity.clear()
        child.backoff.consecutive = 0
        msg = (f"{child.id}: more than {self.spec.intensity} restarts in {self.spec.period_s}s"
               f" and no fallback left; retrying in {delay:.0f}s")
        logger.error("{}: {}", self.name, msg)
        self.event("escalated", child, reason=msg, action="retry", retry_in_s=delay)
        self._restart_group(child, delay)
        child.past_intensity = True  # (until its retry starts: sup.status says so)
        self.next_job()

    def _plan(self, child: Child, delay: float, work: Callable[[], None]) -> None:
        def due() -> None:
            child.plan = None
            work()

        child.cancel_plan()
        child.plan = (self.loop.call_later(delay, due), work)

    def _escalate(self, child: Child) -> None:
        last = child.last_exit.describe() if child.last_exit is not None else ""
        msg = (f"{child.id}: more than {self.spec.intensity} restarts in {self.spec.period_s}s"
               " and no fallback left" + (f"; the last: {last}" if last else ""))
        self.escalation = msg
        logger.error("{}: escalating: {}", self.name, msg)
        self.event("escalated", child, reason=msg)
        self.exit_code = ESCALATED_EXIT_CODE
        child.state = ChildState.FAILED
        self.stop()

    # --- heartbeats -------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """Read every running child's beat; tick again after `interval_ms` while any child
        works (or is stopped, or missed a beat), after `idle_interval_ms` while all are idle:
        a child that wakes and then hangs is seen at most one idle interval later."""
        beats = self.zygote.beats
        now = time.monotonic_ns()
        watch = False
        for child in self.children.values():
            if child.kill_sent:
                # SIGKILLed: dead, or about to be; not watched again before its exit is
                # reported (a stuck zygote may take EXIT_TELL_S to be found out), or every
                # tick until then would be another hang and another kill.
                watch = True
                continue
            if child.state is ChildState.STARTING and child.pid is not None:
                # Stopped before it was ready, it would hold the job queue (its siblings'
                # restarts wait behind its start) until start_timeout_ms: a stop lasting as
                # many ticks as a running child's missed beats is a hang here too.
                child.halted_ticks = child.halted_ticks + 1 if child.stopped else 0
                if child.halted_ticks > self.spec.heartbeat.misses:
                    child.halted_ticks = 0
                    self._hung(child)
            if child.state is not ChildState.RUNNING:
                watch = watch or child.state is ChildState.STARTING
                continue
            turn, until = beats.read(child.slot)
            # a stop is reported by the zygote; a child it no longer parents (it died and we
            # adopted the child) is looked at in /proc
            halted = child.stopped or (child.adopted and child.pid is not None and
                                       stopped(child.pid))
            waiting = until >= now and not halted  # blocked in its loop's wait, in time
            idle = waiting and turn == child.heartbeat.last_turn
            # its last sign of life: its loop's last turn (a monotonic stamp), or now if idle
            child.alive_at = max(child.alive_at, now if idle else turn)
            stale = turn == child.heartbeat.last_turn and not idle and not halted
            if stale and self._starved(child, now):
                pass  # a tick its loop spent waiting for a CPU: neither a beat nor a miss
            elif child.heartbeat.observe(turn, idle):
                self._hung(child)
            if not stale:
                child.sched, child.starved_ticks = None, 0
            watch = watch or not waiting or child.adopted
        self._watch_zygote()
        hb = self.spec.heartbeat
        self._beat_timer = self.loop.call_later(
            (hb.interval_ms if watch else hb.idle_interval_ms) / 1000, self._heartbeat)

    def _watch_zygote(self) -> None:
        """A zygote stopped (SIGSTOP, a debugger) while a fork waits for it: lost as a
        child's hang is, after as many ticks as a running child's missed beats, instead of
        at start_timeout_ms (10 s of a restart's outage, 20 with its spare stopped too)."""
        z = self.zygote
        waiting = z.pid > 0 and any(
            c.state is ChildState.STARTING and c.pid is None and c.asked_of is z
            for c in self.children.values())
        if not waiting or not stopped(z.pid):
            self.zygote_halted_ticks = 0
            return
        self.zygote_halted_ticks += 1
        if self.zygote_halted_ticks > self.spec.heartbeat.misses:
            self.zygote_halted_ticks = 0
            self._zygote_lost(z, f"stopped for {self.spec.heartbeat.misses} ticks while a "
                              "fork waited for it")

    def _starved(self, child: Child, now: int) -> bool:
        """The child did not turn since the last tick because its loop waited for a CPU
        (policy.starved), and not for longer than STARVED_TICKS_MAX ticks in a row."""
        assert child.pid is not None
        sample = sched_sample(child.pid)
        was, child.sched = child.sched, (now, sample) if sample is not None else None
        if not starved(was, now, sample) or child.starved_ticks >= STARVED_TICKS_MAX:
            return False
        if not child.starved_ticks:
            logger.info("{}: its loop waits for a CPU (the machine is busy): not taken for "
                        "hung while it does", child.id)
        child.starved_ticks += 1
        return True

    def _beat_soon(self) -> None:
        """A child stopped: read the board at the working pace from now on."""
        self._beat_timer.cancel()
        self._beat_timer = self.loop.call_later(self.spec.heartbeat.interval_ms / 1000,
                                                self._heartbeat)

    def _hung(self, child: Child) -> None:
        """Kill a hung child, having first asked it for its last words (last_words.py): the
        request its loop is stuck in, which its successor then refuses rather than run
        again when the client resends it. Asked unless it is stopped (it could not answer)
        or does not catch the signal; answered within ASK_S, or killed without them (its
        loop stuck in a C call that holds the GIL). Not watched meanwhile (`kill_sent`):
        one hang is one `hung` event and one kill."""
        misses = child.heartbeat.misses
        # The outage began at the last sign of life, not now: what a client saw.
        since = time.time() - max(0, time.monotonic_ns() - child.alive_at) / 1e9 \
            if child.alive_at else None
        child.down_since = since
        child.kill_reason = "missed heartbeats"
        child.kill_sent = True
        pid, gen = child.pid, child.generation
        if pid is None or child.stopped or stopped(pid) or not last_words.catches(pid) \
                or not child.signal(last_words.LAST_WORDS_SIGNAL):
            self._kill_hung(child, pid, misses, since, None)
            return
        asked = time.monotonic()

        def look() -> None:
            words = last_words.read(self.runtime_dir, child.id, pid)
            if child.generation != gen or child.pid != pid:
                # its exit was reported first: the event still tells of the hang
                self._kill_hung(child, pid, misses, since, words, kill=False)
            elif words is None and time.monotonic() - asked < last_words.ASK_S \
                    and not child.stopped:
                self.loop.call_later(last_words.POLL_S, look)
            else:
                self._kill_hung(child, pid, misses, since, words)

        self.loop.call_later(last_words.POLL_S, look)

    def _kill_hung(self, child: Child, pid: int | None, misses: int, since: float | None,
                   words: dict[str, Any] | None, kill: bool = True) -> None:
        """The `hung` event (naming the request its last words name) and the SIGKILL."""
        said: dict[str, Any] = {}
        request = words.get("request") if words is not None else None
        if isinstance(request, dict):
            said = {"op": request.get("op"), "client": request.get("sid"),
                    "request_id": request.get("id"), "ran_ms": request.get("ran_ms")}
        if words is not None:
            said["stack"] = words.get("stack")
        if "op" in said:
            doing = (f" running {said['op']} for {said['ran_ms']} ms (client "
                     f"{said['client']}, id {said['request_id']})")
        else:
            doing = " (no request on its loop)" if words is not None else " (no last words)"
        logger.warning("{}: {} heartbeats unanswered{}; {}", child.id, misses, doing,
                       "SIGKILL" if kill else "it died meanwhile")
        self.event("hung", child, pid=pid, misses=misses, down_since=since, **said)
        if kill:
            child.signal(signal.SIGKILL)
