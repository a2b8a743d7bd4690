"""The terminal actor: PTY sessions with shell integration; the shells live in the pty keeper.

  op               args                                 reply                      errors
  term.create      {shell?, args?, cwd?, env?, cols?,   {session, pid, tty, shell, bad_args,
                    rows?, integration?, session?}       kind, mode, attempts}      pty_failed,
                                                                                    busy,
                                                                                    conflict,
                                                                                    outcome_unknown+
  term.exec        {session, command, timeout_ms?}      {session, exit_code,       not_found*,
                                                         output, cwd, duration_ms,  session_busy,
                                                         mode, trusted, parser}     shell_exited,
                                                                                    timeout,
                                                                                    outcome_unknown
  term.write       {session, data: str|bin}             {queued}                   not_found*,
                                                                                    shell_exited,
                                                                                    busy,
                                                                                    outcome_unknown+
  term.resize      {session, cols, rows}                {cols, rows}               not_found*
  term.signal      {session, signal?: "SIGINT",         {pgid, signal}             not_found*,
                    target?: foreground|shell}                                      shell_exited,
                                                                                    bad_args,
                                                                                    outcome_unknown+
  term.close       {session}                            {closed}                   not_found*
  term.list        {}                                   {sessions, keeper}         -
                                                         (state unavailable: held
                                                         by the keeper, its PTY
                                                         not come here yet)
  term.ack         {session, offset}                    {session, acked, offset,   not_found*
                                                         consumers}
  term.scrollback  {session, from_offset?, max_bytes?}  {session, from, to,        not_found*
                                                         first, end, lost?} and
                                                         the bytes (attachment)
not_found* is session_not_found. Every op that needs the keeper waits for it (up to
`keeper_wait_ms`), then answers `unavailable`; ops on a session being recreated wait for it,
and so do ops on one the keeper's custody may still hand back (both died; restore.py).
A keeper that dies (or hangs, and is killed) with a create, write, resize or signal
unanswered is a pause for it: it waits for the next keeper, and is done there once
(keeper_client.SessionOps: the keeper writes down in the session's ring what it wrote and
signalled, keeper/ledger.py; a create is settled by the next keeper's custody, restore.py).
outcome_unknown+ is only for what no record can tell: a write or signal caught between the
dead keeper's syscall and its note of it, or a create whose next keeper (or its custody) did
not answer within keeper_wait_ms or the caller's time; a write or signal no keeper came back
for in time, and that the dead one had not done, is `unavailable` (never done later).
`mode` is the fallback step that served: integration, no_integration, raw_output (session.py);
`parser` which parser serves the session: actor (the parser actor; the terminal reads the chunk
that ends a command itself, at once, from the actor's last ground point: parsehop.py), local, or nil
(raw output); `attempts` lists the shells tried before the one that ran. `term.create` takes an
optional `session` id (one that exists already: `conflict`); it and `term.exec` are resumable: a
resend of the same request, to this actor or its successor, gets the session it made or the
command's result, never a second one. A command whose session was lost while it ran (every
holder of its PTY died, and the session was started anew) is not run again in the new shell:
its resend gets `outcome_unknown` (the records on disk that say so: specs.ExecRecords).

Streams: `term.out.<session>` body {offset, replay?} with the raw bytes as an attachment;
`term.cmd.<session>` {event: start|end, command, cwd, exit_code, offsets, times};
`term.session` {session, event: exited|lost|recreated|gone|closed|consumer_dropped|resized,
...};
`term.alert` {kind: "sessions_lost", sessions, ...} when the shells themselves were lost;
"sessions_unrecorded", then "sessions_recorded", while sessions' records miss the disk (specs.py).
Offsets continue across restarts of this actor and of the keeper; a recreated session's new
shell starts at the next multiple of 2^40 (nothing of the lost shell's output is mistaken for
it). Seqs do not continue: a seq numbers a message of one publisher's life (its epoch,
PROTOCOL.md section 12), so a subscriber sees a new epoch (the client's `Reset`), replays the
new epoch from seq 1, and loses no byte: the successor republishes the tail of each ring
(`republish_bytes`), marked `replay`, and a subscriber drops by offset what it already has.

Custody of the output (ring.py, keeper_client.py): the keeper (keeper/actor.py) reads each
PTY into the session's ring, shared memory that this process maps too; this actor moves the
ring's `ack_off` once a chunk is published, parsed, and taken by every consumer that
acknowledges (`term.ack`): the keeper never reads more than its window past it, so a shell
whose output is not handled blocks, and a byte read from a PTY is in the ring whichever of the
two processes dies. A consumer that stops acknowledging for `consumer_timeout_ms` is dropped
(`consumer_dropped`) and holds nobody back; a subscriber that does not acknowledge is not
waited for at all: it loses messages at its own queue's limit, a gap it repairs by replay.
Creation walks the shells (seed 2.2): the one asked for, the configured ones (`shells`,
default $SHELL), `default_shell` (/bin/sh), then a minimal PTY (/bin/sh, bare environment, no
integration). A shell that exits before its first prompt counts as failed. Sessions are
recorded in `<runtime_dir>/succession/<name>.sessions`, so that a successor can tell that the
keeper lost them (died, or was stopped with the actor: a restart by hand of their supervisor),
alert, and start each once more (seed 1.2: Terminal Critical, recreate, alert, 1 retry); the
root removes the records when the tree stops. A close is recorded there too
(`<name>.closed`) until a keeper confirms it: a close lost with a keeper that died or hung is
sent again, and the session is never restored, whoever dies (keeper_client.Tombstones).
Output is parsed by the parser actor (`parse.feed` with absolute offsets), or in this
process with the same library when that actor is down or its breaker is open, or not at all
(raw output) when that fails too: parsehop.py. Pressure (sys.pressure): high and
critical trim the scrollback and close idle sessions, critical refuses term.create (busy),
quality 1 and 0 turn shell integration off (see `on_pressure`).

Config: parse ("actor" | "local"), parser ("parser"), parse_timeout_ms (1000),
parse_feed_bytes (1 MiB), parse_lag_bytes (4 MiB), parse_retry_ms (1000) and
parse_retry_max_ms (10000: the breaker's cooldown, doubling), keeper ("ptykeeper"), shells,
default_shell, term, integration_detect_ms (5000), quiet_ms (300), output_coalesce_ms (5: the
window in which output that follows other output waits for the rest of its burst, outbuf.py;
0 sends each piece as it is read), exec_timeout_ms (60000),
scrollback_bytes (2 MiB), max_output_bytes (1 MiB), keeper_wait_ms (3000), idle_close_s
(600), closed_stream_keep_s (60: a closed session's streams kept for late readers, then
let go), resume_wait_ms (5000), republish_bytes (2 MiB), consumer_timeout_ms (5000),
pub_hwm (1000: ZeroMQ counts a subscriber's queue in messages, and one turn of a few busy
sessions publishes hundreds of small ones, which a queue of 128 dropped for a subscriber
reading as fast as it could; the price is a subscriber that stops reading, which holds up
to 1000 messages, 125 MiB at the largest, until it reads or goes),
retention_messages (2000) and retention_bytes (8 MiB) per topic, reply_cache_entries (1024).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from loguru import logger

from moorage.actors.runtime import DEFERRED, Actor, Attached, Call, op
from moorage.actors.runtime.loop import Timer
from moorage.actors.runtime.shapes import Named, OneOf
from moorage.actors.runtime.signals import parse_signal
from moorage.actors.runtime.statefile import succession_dir
from moorage.actors.terminal.keeper_client import FDS_WAIT_S, KeeperClient, Tombstones
from moorage.actors.terminal.link import CUSTODY_GIVE_UP_S
from moorage.actors.terminal.parsehop import ParserLink
from moorage.actors.terminal.restore import Creation, answer_by, base_env, reconcile, restore
from moorage.actors.terminal.session import MAX_CONSUMERS, Session, describe_unavailable
from moorage.actors.terminal.specs import ExecRecords, SpecStore, exec_call
from moorage.protocol.errors import Category, MoorageError, WireError, fail

SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
TICK_S = 0.02  # resolution of exec timeouts, integration detection and quiet detection
PRESSURE_RETRY_MS = 1000
MAX_EXEC_TIMEOUT_MS = 24 * 3600 * 1000  # as a deadline may be (runtime MAX_DEADLINE_AHEAD_MS)
# A create's args and env, in bytes: the kernel takes at most 128 KiB a string and about
# 2 MiB in all an exec; a session's spec is rewritten with every session's at each change.
MAX_SPAWN_BYTES = 256 << 10


# --- the shapes of the answers ----------------------------------------------------------------
ATTEMPT = {"shell": str, "error": str}
EXIT_STATUS = {"code": int | None, "signal": int | None}
# `mode`: the fallback step that serves the session's commands (session.py).
MODE = Named("exec_mode", Literal["integration", "no_integration", "raw_output"])
CREATED = Named("created", {
    "session": str, "pid": int, "tty": str, "shell": str, "kind": str, "mode": MODE,
    "attempts": list[ATTEMPT]})  # the shells tried before the one that runs, and why they failed
SESSION = Named("session", {
    "session": str, "pid": int, "tty": str, "shell": str, "kind": str, "mode": MODE,
    # `unavailable`: held by the keeper, its PTY not come here yet (describe_unavailable)
    "state": Literal["starting", "prompt", "running", "exited", "unavailable"],
    "cwd": str | None,
    "cols": int, "rows": int, "offset": int, "scrollback_from": int,
    "exited": OneOf(EXIT_STATUS, None), "busy": bool, "untrusted_markers": int,
    "parser": Literal["actor", "local"] | None, "parsed": int, "repeated_markers": int,
    "integration_back": int,  # times a trusted prompt undid a given-up integration
    "consumers": dict[str, int]})  # sid -> offset acknowledged (term.ack)
# The keeper's errors reach the caller as they are (keeper/actor.py).
KEEPER_ERRORS = ("session_not_found", "shell_exited", "unavailable")


def shell_has_children(pid: int) -> bool:
    """Whether the shell runs anything (a job in the background: a server, a watch): True
    when that cannot be read, so a session is not closed on a guess."""
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return bool(f.read().strip())
    except OSError:
        return True


class TerminalActor(Actor):
    name = "terminal"
    category = Category.TERMINAL
    # A slow subscriber loses messages at its own queue's limit (a gap it repairs by replay),
    # never the others': flow control is per session, by the consumers' acks (term.ack).
    nodrop = False
    fallbacks: tuple[str, ...] = ()  # none: its degraded modes are its own (session.py)

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        config = dict(config or {})
        # per topic, and there are two per session: output is bounded by bytes, records by
        # count (the runtime's 10,000 would hold 10,000 records of `echo test` per session)
        config.setdefault("retention_messages", 2000)
        config.setdefault("retention_bytes", 8 * 1024 * 1024)
        config.setdefault("pub_hwm", 1000)
        config.setdefault("reply_cache_entries", 1024)
        super().__init__(name, runtime_dir, config)
        cfg = self.config
        self.keeper_path = self.runtime_dir / f"{cfg.get('keeper', 'ptykeeper')}.sock"
        self.shells: list[str] = list(cfg.get("shells") or [os.environ.get("SHELL") or "bash"])
        self.default_shell = str(cfg.get("default_shell", "/bin/sh"))
        self.term = str(cfg.get("term", "xterm-256color"))
        self.detect_s = int(cfg.get("integration_detect_ms", 5000)) / 1000
        self.quiet_s = int(cfg.get("quiet_ms", 300)) / 1000
        self.output_window_s = max(0, int(cfg.get("output_coalesce_ms", 5))) / 1000
        self.exec_timeout_ms = int(cfg.get("exec_timeout_ms", 60_000))
        self.scrollback_bytes = int(cfg.get("scrollback_bytes", 2 << 20))
        self.max_output = int(cfg.get("max_output_bytes", 1 << 20))
        self.keeper_wait_s = int(cfg.get("keeper_wait_ms", 3000)) / 1000
        self.idle_close_s = float(cfg.get("idle_close_s", 600))
        # a closed session's streams are kept this long for late readers, then let go
        self.closed_keep_s = float(cfg.get("closed_stream_keep_s", 60))
        self.resume_wait_s = int(cfg.get("resume_wait_ms", 5000)) / 1000
        self.republish_bytes = int(cfg.get("republish_bytes", 2 << 20))
        self.consumer_timeout_s = int(cfg.get("consumer_timeout_ms", 5000)) / 1000
        self.counters: Counter[str] = Counter()
        self.resumed: set[tuple[str, int]] = set()  # (sid, id) of execs taken over on restore
        self.creating: dict[str, Creation] = {}  # session id -> its create, until over
        # (sid, id) of the last exec a predecessor answered, one per restored session
        self.ran_before: set[tuple[str, int]] = set()
        # (sid, id) -> session, of execs that were running in a session lost with every
        # holder of its PTY (restore.reconcile): whether they ran is unknown
        self.lost_running: dict[tuple[str, int], str] = {}
        self.recreating: dict[str, list[Callable[[], None]]] = {}  # sid -> ops waiting for it
        # sid -> ops waiting for it: recorded, not held by the keeper yet, which waits for its
        # custody answer (restore.reconcile); restored or lost once that came
        self.unsettled: dict[str, list[Callable[[], None]]] = {}
        self.parse_link = ParserLink(self, cfg)
        self.sessions: dict[str, Session] = {}
        self.specs = SpecStore(succession_dir(self.runtime_dir) / f"{self.name}.sessions",
                               self.loop.call_later,
                               lambda body: self.publisher.publish("term.alert", body))
        self.execs = ExecRecords(self.runtime_dir, self.name)
        # closed sessions whose close no keeper has confirmed yet (keeper_client.py)
        tombstones = Tombstones(succession_dir(self.runtime_dir) / f"{self.name}.closed",
                                self.loop.defer)
        for sid in list(self.specs.specs):
            spec = self.specs.specs[sid]
            if isinstance(spec, dict) and tombstones.names(sid, spec.get("pid"),
                                                           spec.get("started")):
                # (a predecessor died between the two writes of a close: the record of a
                # closed session, which no one is to restore or start again)
                self.specs.drop(sid)
        # What pressure made us drop, for sys.info (`shed`, the runtime's, counts requests).
        self.pressure_shed: Counter[str] = Counter()
        self._ticking: set[Session] = set()
        self._tick_timer: Timer | None = None
        self._ready_callback: Callable[[], None] | None = None
        self.keeper = KeeperClient(
            self.loop, self.keeper_path, self.sessions, tombstones=tombstones,
            resume_wait_s=self.resume_wait_s, lost_wait_s=self.keeper_wait_s,
            stopping=lambda: self.stopping,
            on_restore=lambda e, master, ring: restore(self, e, master, ring),
            on_welcome=lambda entries, settled: reconcile(self, entries, settled),
            on_ready=self._announce_ready, on_exit=self.session_exited,
            on_available=self._available, subscribed_to=self.subscribed_to,
            # No keeper to wait for (it died too, and its restart may be queued behind
            # ours at the supervisor): ready now; ops wait for the keeper as ever.
            on_absent=self._announce_ready)

    # --- life -------------------------------------------------------------------------------

    def on_start(self) -> None:
        # Ready (for the supervisor) once the keeper has told us its sessions, at once when
        # there is no keeper, or after keeper_wait_ms without its welcome (then ops wait or
        # answer `unavailable`).
        self._ready_callback, self.ready_hook = self.ready_hook, None
        self.loop.call_later(self.keeper_wait_s, self._announce_ready)
        self._consumer_timer: Timer | None = None  # armed while any session has consumers
        self._swept_at = 0.0  # (loop clock) the consumer sweep's last run, or its arming
        self.keeper.connect()

    def _announce_ready(self) -> None:
        if self._ready_callback is not None:
            cb, self._ready_callback = self._ready_callback, None
            cb()

    def on_stop(self) -> None:
        # Stopped on purpose: the keeper holds the sessions. The records stay for a successor
        # (succession_dir): restarted alone, it finds them held; restarted with the keeper
        # (`moorage restart terminals`), whose stop hangs them up, it reports them lost and
        # starts them again, as after a crash; the tree stopping, the root removes them.
        for s in self.sessions.values():
            s.out.flush()
            s.finish_cleaning()
            s.abort(WireError.of("outcome_unknown", f"{self.name} stopped while it ran"))
        self.execs.clear()
        self.keeper.close("terminal stopping")
        self.parse_link.close()

    def info(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "keeper_connected": self.keeper.welcomed,
                "keeper_pid": self.keeper.pid, "keeper_connections": self.keeper.connections,
                "sessions_adopted_by_keeper": self.keeper.adopted,
                # held by the keeper, their PTYs not come here yet (out of descriptors):
                # asked for again, ops on them answer `unavailable` meanwhile
                "sessions_unavailable": sorted(self.keeper.unavailable),
                # closed here, their close not confirmed by a keeper yet (keeper_client.py);
                # closed again when a keeper named them after the close was lost
                "closes_unconfirmed": sorted(self.keeper.tombstones.closed),
                "closed_again": self.keeper.closed_again,
                # input, resizes and signals not answered yet (sent to the keeper, or waiting
                # for the next); those a keeper died with (or hung, and was killed) before
                # doing them, sent to the next; and those whose fate no record told
                "keeper_ops_waiting": self.keeper.ops_waiting,
                "keeper_ops_resent": self.keeper.ops_resent,
                "keeper_ops_in_doubt": self.keeper.ops_in_doubt,
                # input answered `queued` whose copy is kept until the keeper has written it
                "keeper_input_kept": self.keeper.input_kept,
                "parse": self.parse_link.info(), "pressure_shed": dict(self.pressure_shed),
                "exec_records_failed": self.execs.failed,
                "session_records": self.specs.info(),
                "output": {k: sum(getattr(s.out, k) for s in self.sessions.values())
                           for k in ("pieces", "messages", "held_bytes")},
                "output_skipped": sum(s.output_skipped for s in self.sessions.values()),
                **self.counters}

    def on_subscribed(self, topic: str) -> None:
        self.keeper.on_subscribed(topic)

    def session_exited(self, s: Session, info: dict[str, Any]) -> None:
        s.on_exit(info)
        self.publisher.publish("term.session", {"session": s.id, "event": "exited", **info})

    def _watch_consumers(self) -> None:
        if self._consumer_timer is None:
            self._swept_at = self.loop.clock()
            self._consumer_timer = self.loop.call_later(
                min(1.0, self.consumer_timeout_s / 2), self._drop_silent_consumers)

    def _drop_silent_consumers(self) -> None:
        """Drop the consumers silent for consumer_timeout_s while behind; after a stall of
        this loop since the last sweep (the process stopped with its tree, or without a CPU:
        Loop.stalls), hear them all anew instead. No ack was heard meanwhile (those sent
        wait in the queue, and expire there): a pause longer than the timeout would drop
        every consumer at the resume, each one that acked all along included."""
        self._consumer_timer = None
        now = time.monotonic()
        stalled = self.loop.stalled_since(self._swept_at) > 0
        for s in self.sessions.values():
            gone = s.silent_consumers(now, self.consumer_timeout_s, stalled)
            if gone:
                self._consumers_dropped(s, gone, f"silent for {self.consumer_timeout_s} s")
        if any(s.consumers for s in self.sessions.values()):
            self._watch_consumers()

    def _consumers_dropped(self, s: Session, gone: list[str], why: str) -> None:
        """An event each (a client looks for its own sid), one log line for them all."""
        self.counters["consumers_dropped"] += len(gone)
        for consumer in gone:
            self.publisher.publish("term.session", {
                "session": s.id, "event": "consumer_dropped", "consumer": consumer,
                "offset": s.offset})
        logger.warning("session {}: {} dropped ({})", s.id,
                       f"consumer {gone[0]}" if len(gone) == 1 else
                       f"{len(gone)} consumers ({', '.join(gone[:3])}, ...)", why)
        self.keeper.flush_acks(s)

    # --- pressure (seed 6 and 9.2) -----------------------------------------------------------

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        """moderate: scrollback to half; high and critical: to an eighth; critical: sessions
        idle for `idle_close_s` are closed (each with a `closed` event on term.session) and
        term.create answers busy. Quality 1 and 0: no shell integration.

        Closing kills a shell, its cwd, environment and history: only memory brings the
        tree to critical (a build's CPU reaches high at most, resource/levels.py), and a
        session is idle only when nothing has used it, written to it or run in it."""
        done: dict[str, Any] = {}
        if level in ("moderate", "high", "critical"):
            keep = self.scrollback_bytes // (2 if level == "moderate" else 8)
            trimmed = sum(s.scroll.trim(keep) for s in self.sessions.values())
            self.pressure_shed["scrollback_bytes"] += trimmed
            done["scrollback_trimmed"] = trimmed
        if level == "critical":
            now = time.monotonic()
            idle = [s.id for s in self.sessions.values() if s.exec is None
                    and s.state != "running"
                    and now - max(s.last_use, s.last_output) >= self.idle_close_s
                    and not shell_has_children(s.pid)]
            for sid in idle:
                self._close_session(sid, "pressure")
            self.pressure_shed["idle_sessions_closed"] += len(idle)
            done["idle_sessions_closed"] = idle
        done["creating"] = level != "critical"
        done["integration"] = self.integration_allowed()
        return done

    def integration_allowed(self) -> bool:
        """Quality 1 and 0 turn shell integration off (seed 9.2)."""
        return self.quality > 1

    # --- used by sessions ----------------------------------------------------------------------

    def need_tick(self, s: Session) -> None:
        self._ticking.add(s)
        if self._tick_timer is None:
            self._tick_timer = self.loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self._tick_timer = None
        now = time.monotonic()
        for s in list(self._ticking):
            if not s.tick(now):
                self._ticking.discard(s)
        if self._ticking:
            self._tick_timer = self.loop.call_later(TICK_S, self._tick)

    def publish_output(self, s: Session, off: int, data: bytes, replay: bool) -> None:
        body: dict[str, Any] = {"offset": off}
        if replay:
            body["replay"] = True
        self.publisher.publish(f"term.out.{s.id}", body, [data])

    def publish_command(self, s: Session, body: dict[str, Any]) -> None:
        if self.quality >= 3:  # command records are the first feature to go (seed 9.2)
            self.publisher.publish(f"term.cmd.{s.id}", {"session": s.id, **body})

    def output_published(self, s: Session) -> None:
        if s.ring is not None:  # (custody dropped meanwhile: nothing to acknowledge)
            self.keeper.flush_acks(s)

    def keeper_write(self, s: Session, data: bytes,
                     refused: Callable[[WireError], None]) -> bool:
        return self.keeper.write(s, data, refused)

    def keeper_interrupt(self, s: Session) -> None:
        self.keeper.interrupt(s)

    def keeper_drop_input(self, s: Session) -> None:
        """Drop the input the keeper holds for `s` and what its shell side has not read,
        writing nothing (no ^C: no signal)."""
        self.keeper.input(s, b"", lambda _r, _err: None, drop=True)

    def keeper_signal(self, s: Session, sig: str, to: str) -> None:
        self.keeper.signal(s, sig, to)

    def keeper_meta(self, s: Session) -> None:
        # the calls in it on disk too, before the command they name goes to the shell
        self.execs.write(s.id, exec_call(s.meta.get("exec")), exec_call(s.meta.get("exec_ran")))
        self.keeper.meta(s)

    def when_keeper(self, fn: Callable[[bool], None]) -> None:
        self.keeper.when_ready(fn, self.keeper_wait_s)

    def acks_ready(self) -> None:
        self.keeper.acks_ready()

    # --- helpers for ops ---------------------------------------------------------------------

    def _when_ready(self, call: Call, fn: Callable[[], Any], session: str | None = None,
                    settled: Callable[[], bool] | None = None) -> Any:
        """Run `fn` now if the keeper is connected (and `session` is neither being recreated
        nor waiting for the keeper's custody answer; with `settled`, once that says so too),
        else when it is (or fail `unavailable`). The wait for the keeper is keeper_wait_s;
        the one for `settled` lasts as long as the keeper's custody answer may (the caller's
        deadline permitting): it is no sign of a keeper gone."""
        for waiting in (self.recreating, self.unsettled):
            if session is not None and session in waiting:
                waiting[session].append(lambda: self._answer(call, fn, session))
                return DEFERRED
        if session is not None and session in self.keeper.unavailable:
            raise fail("unavailable", f"session {session}: the pty keeper holds it, but its "
                       "PTY has not come here yet (out of descriptors); asked for again")
        ready = self.keeper.ready
        if ready and (settled is None or settled()):
            return fn()

        def later(ok: bool) -> None:
            if not ok and not call.answered:
                why = "is not connected" if not self.keeper.ready else \
                    "has not had its custody answer yet"
                call.fail(WireError.of("unavailable", f"the pty keeper {why}"))
            elif ok:
                # (the welcome may have started recreating this very session: look again)
                self._answer(call, fn, session, settled)

        if ready:
            self.keeper.when_ready(later, self._settle_wait_s(call), settled=True)
        else:
            self.keeper.when_ready(later, self.keeper_wait_s)
        return DEFERRED

    @staticmethod
    def _settle_wait_s(call: Call) -> float:
        """How long `call` may wait for the keeper's custody answer: until the keeper gives
        it up (and the sessions' fds that come with it), answering before the caller's
        deadline (or the op's own timeout) does."""
        return min(CUSTODY_GIVE_UP_S + FDS_WAIT_S, max(0.0, answer_by(call) - time.monotonic()))

    def known(self) -> bool:
        """Every session we recorded is here (or settled lost): the keeper's welcome is in,
        and either its custody answer is too, or no recorded session waits for it (a
        terminal that outlived the keeper holds all of them)."""
        return self.keeper.ready and (self.keeper.settled or not self.unsettled)

    def _answer(self, call: Call, fn: Callable[[], Any], session: str | None = None,
                settled: Callable[[], bool] | None = None) -> None:
        """Run an op's `fn` that had to wait, answering its call with what it returns."""
        if call.answered:
            return
        try:
            result = self._when_ready(call, fn, session, settled)
        except MoorageError as exc:
            call.fail(exc)
            return
        if result is not DEFERRED and not call.answered:
            call.reply(result)

    def _available(self, sid: str) -> None:
        """A session that was unavailable (keeper_client) is restored and caught up on: the
        ops that came meanwhile go on."""
        for fn in self.unsettled.pop(sid, []):
            fn()

    def recreated(self, sid: str) -> None:
        """A recreation is over (done or gone): the ops that waited for it go on."""
        for fn in self.recreating.pop(sid, []):
            fn()

    def session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise fail("session_not_found", f"no session {sid!r}")
        return s

    def _close_session(self, sid: str, reason: str = "term.close") -> None:
        s = self.sessions.pop(sid, None)
        if s is not None:  # (first: failing its exec writes the session's records again)
            s.close(WireError.of("shell_exited", f"session {sid} was closed ({reason})"))
        # Its tombstone before its record goes: a successor of ours that found neither would
        # restore the shell the keeper's custody still holds, should this close be lost.
        self.keeper.close_session(sid, s.pid if s is not None else None,
                                  s.started if s is not None else None)
        self.specs.drop(sid)
        self.execs.drop(sid)
        self.publisher.publish("term.session", {"session": sid, "event": "closed",
                                                "reason": reason})
        # Each topic's retention (up to retention_bytes) would stay for the actor's life:
        # a day of sessions opened and closed, gigabytes.
        self.loop.call_later(self.closed_keep_s, lambda: self._release_streams(sid))

    def _release_streams(self, sid: str) -> None:
        if sid not in self.sessions:  # (not opened again under its name meanwhile)
            self.publisher.release(f"term.out.{sid}")
            self.publisher.release(f"term.cmd.{sid}")

    # --- ops ----------------------------------------------------------------------------------

    @op("term.create", args={"shell": (str, None), "args": (list, None), "cwd": (str, None),
                             "env": (dict, None), "cols": (int, 80), "rows": (int, 24),
                             "integration": (bool, True), "session": (str, None)},
        timeout_ms=30_000, resumable=True, result=CREATED,
        errors=("pty_failed", "conflict", "unavailable", "shell_exited", "resource_exhausted",
                "outcome_unknown"))
    def _op_create(self, call: Call, shell: str | None, args: list | None, cwd: str | None,
                   env: dict | None, cols: int, rows: int, integration: bool,
                   session: str | None) -> Any:
        """Start a shell on a new PTY (walking the fallback shells); answers at its prompt.
        `session` names it (default: a fresh id); a resend of the same request (same sid and
        id) is answered with the session it created, even by a successor of this actor."""
        if session is not None and not SESSION_ID.fullmatch(session):
            raise fail("bad_args", "session must be 1-64 letters, digits, '.', '_' or '-'")
        if self.pressure_level == "critical":
            raise fail("busy", "no new sessions under critical memory pressure",
                       retry_after_ms=PRESSURE_RETRY_MS)
        if not (1 <= cols <= 10_000 and 1 <= rows <= 10_000):
            raise fail("bad_args", "cols and rows must be 1..10000")
        if args is not None and not all(isinstance(a, str) and "\0" not in a for a in args):
            raise fail("bad_args", "args must be strings without NUL")
        if cwd is not None and not os.path.isdir(cwd):
            raise fail("bad_args", f"cwd {cwd!r} is not a directory")
        # The spec is kept and written with every session's: a size a shell could take.
        size = sum(len(a) for a in args or ()) + sum(
            len(k) + len(v) + 2 for k, v in (env or {}).items() if isinstance(k, str)
            and isinstance(v, str))
        if size > MAX_SPAWN_BYTES:
            raise fail("bad_args", f"args and env take {size} bytes (at most "
                       f"{MAX_SPAWN_BYTES}: what a shell's exec can be given)")
        spec = {"shell": shell, "args": args or [], "cwd": cwd, "env": env or {},
                "cols": cols, "rows": rows, "integration": integration, "recreated": 0}
        base_env(self.term, env)  # validate now, not half way through the chain

        def start() -> Any:
            made = next((s for s in self.sessions.values()
                         if s.meta.get("req") == [call.sid, call.id]), None)
            if made is not None:  # this very request, resent: the session it made
                return made.created()
            sid = session or "t" + secrets.token_hex(6)
            making = self.creating.get(sid)
            if sid in self.sessions or sid in self.specs.specs or (
                    making is not None and not making.done):
                raise fail("conflict", f"session {sid!r} exists already")
            # (a create under way holds its id until it is over: made, or failed; its call
            # may have been answered by the runtime's guard meanwhile)
            self.creating = {k: c for k, c in self.creating.items() if not c.done}
            self.creating[sid] = creation = Creation(self, sid, spec, call)
            creation.next()
            return DEFERRED

        # A resend of a create whose first attempt's shell is still in the keeper's custody
        # (the keeper and we died while it started: not recorded here yet) finds it only
        # once that custody answered; before, it would start a second shell.
        return self._when_ready(call, start, settled=lambda: self.keeper.settled)

    # (checked=False: Session._complete builds the answer of strs, ints, floats, bools and
    # None; its output and cwd are decoded with replacement: nothing in it fails to encode)
    @op("term.exec", args={"session": str, "command": str, "timeout_ms": (int, None)},
        timeout_ms=24 * 3600 * 1000, resumable=True, checked=False,
        result={"session": str, "exit_code": int | None, "output": str, "truncated": bool,
                "cwd": str | None, "duration_ms": float, "mode": MODE, "trusted": bool,
                "parser": Literal["actor", "local"] | None},
        errors=(*KEEPER_ERRORS, "session_busy", "outcome_unknown"))
    def _op_exec(self, call: Call, session: str, command: str, timeout_ms: int | None) -> Any:
        """Run a command line in a session; answers when it finished (see the modes)."""
        if "\0" in command:
            raise fail("bad_args", "command contains NUL")
        limit = self.exec_timeout_ms if timeout_ms is None else timeout_ms
        if not 0 < limit <= MAX_EXEC_TIMEOUT_MS:
            raise fail("bad_args", f"timeout_ms must be 1..{MAX_EXEC_TIMEOUT_MS}")
        left = call.remaining_ms()
        if left is not None:
            limit = min(limit, left - 100)  # our timeout error, before the caller's deadline
            if limit <= 0:
                raise fail("deadline_expired", "no time left to run the command")
        # (the command's time counts from here: what it waits for before it goes out, a
        # starting shell's first prompt, is part of it)
        until = time.monotonic() + limit / 1000
        waiting: list[Timer] = []

        def start(s: Session) -> None:
            if self.sessions.get(session) is not s:
                raise fail("session_not_found", f"session {session} was closed")
            if s.exited is not None:
                raise fail("shell_exited", f"session {session}'s shell has exited")
            if s.state == "starting" and s.exec is None:
                # its first prompt (a new shell, or one restored in the middle of output) is
                # on its way: the command goes then, if that is within its time
                s.on_prompt.append(lambda: start_later(s))
                if not waiting:
                    waiting.append(self.loop.call_later(until - time.monotonic(),
                                                        lambda: not_ready(s)))
                return
            reason = s.busy_reason()
            if reason:
                raise fail("session_busy", f"session {session}: {reason}")
            for t in waiting:
                t.cancel()
            left_s = until - time.monotonic()
            if left_s <= 0:
                not_ready(s)
                return
            s.start_exec(call, command, left_s)

        def not_ready(s: Session) -> None:
            if not call.answered:
                call.fail(WireError.of(
                    "timeout", f"session {session}: the command could not be sent within its "
                    "timeout (the shell was not ready); it was not sent",
                    detail={"output": "", "mode": s.mode, "signalled": None}), cache=False)

        def start_later(s: Session) -> None:
            if call.answered:
                return
            try:
                start(s)
            except Exception as exc:  # (a timer's callback: nobody else would answer it)
                for t in waiting:
                    t.cancel()
                call.fail(exc if isinstance(exc, MoorageError) else WireError.of(
                    "internal", f"{type(exc).__name__}: {exc}"))

        def run() -> Any:
            if (call.sid, call.id) in self.resumed:
                return DEFERRED  # a resend of a command our predecessor ran: it answers it
            if (call.sid, call.id) in self.ran_before:
                # Our predecessor ran it and answered (its result, or its failure after the
                # command was sent); the answer was lost with it (a resend after the
                # connection dropped). Run again, it would run twice.
                raise fail("outcome_unknown", f"term.exec ran in session {session} in a "
                           f"predecessor of {self.name}, whose answer was lost with it; it is "
                           "not run again", detail={"session": session, "ran": True})
            if (call.sid, call.id) in self.lost_running:
                raise fail("outcome_unknown", f"term.exec was running in session {session} "
                           "when the session was lost with its shell (every holder of its PTY "
                           "died); it may or may not have run, and is not run again in the "
                           "session started anew", detail={"session": session, "lost": True})
            # The session's state is that of all its output so far: output still on its way
            # through the parser actor is waited for (it may start a command).
            s = self.session(session)
            s.hop.when_parsed(s.offset, lambda: start_later(s))
            return DEFERRED

        return self._when_ready(call, run, session)

    @op("term.write", args={"session": str, "data": (str, bytes)}, timeout_ms=10_000,
        result={"queued": int}, errors=(*KEEPER_ERRORS, "outcome_unknown"))
    def _op_write(self, call: Call, session: str, data: str | bytes) -> Any:
        """Type into a session (keystrokes, a paste); queued without blocking, and written
        once, should the pty keeper die before it is written."""
        raw = data.encode() if isinstance(data, str) else data

        def run() -> Any:
            s = self.session(session)
            s.last_use = time.monotonic()

            answered = s.note_typed(raw) if raw else None

            def done(_r: dict | None, err: WireError | None) -> None:
                if answered is not None:  # (outcome_unknown: it may have reached the shell)
                    answered(err is None or err.name == "outcome_unknown")
                call.fail(err) if err is not None else call.reply({"queued": len(raw)})

            self.keeper.input(s, raw, done, deadline=answer_by(call))
            return DEFERRED

        return self._when_ready(call, run, session)

    @op("term.resize", args={"session": str, "cols": int, "rows": int},
        result={"cols": int, "rows": int}, errors=KEEPER_ERRORS)
    def _op_resize(self, call: Call, session: str, cols: int, rows: int) -> Any:
        """Set the window size (the foreground job gets SIGWINCH)."""
        if not (1 <= cols <= 10_000 and 1 <= rows <= 10_000):
            raise fail("bad_args", "cols and rows must be 1..10000")

        def run() -> Any:
            s = self.session(session)

            def done(_r: dict | None, err: WireError | None) -> None:
                if err is not None:
                    call.fail(err)
                    return
                s.cols, s.rows = cols, rows
                call.reply({"cols": cols, "rows": rows})
                # (every window of the session draws it at this size from now on)
                self.publisher.publish("term.session", {"session": s.id, "event": "resized",
                                                        "cols": cols, "rows": rows})

            self.keeper.resize(s, cols, rows, done, deadline=answer_by(call))
            return DEFERRED

        return self._when_ready(call, run, session)

    @op("term.signal", args={"session": str, "signal": ((str, int), "SIGINT"),
                             "target": (str, "foreground")},
        result={"pgid": int, "signal": int}, errors=(*KEEPER_ERRORS, "outcome_unknown"))
    def _op_signal(self, call: Call, session: str, signal: str | int, target: str) -> Any:
        """Signal the session's foreground process group (or the shell's)."""
        if target not in ("foreground", "shell"):
            raise fail("bad_args", "target must be 'foreground' or 'shell'")
        sig = parse_signal(signal)

        def run() -> Any:
            s = self.session(session)

            def done(r: dict | None, err: WireError | None) -> None:
                if err is not None:
                    call.fail(err)
                else:
                    assert r is not None
                    call.reply({"pgid": r["pgid"], "signal": sig})

            self.keeper.signal(s, sig, "fg" if target == "foreground" else "shell", done,
                               deadline=answer_by(call))
            return DEFERRED

        return self._when_ready(call, run, session)

    @op("term.close", args={"session": str}, result={"closed": str},
        errors=("session_not_found", "unavailable"))
    def _op_close(self, call: Call, session: str) -> Any:
        """End a session: its shell and jobs are hung up."""
        def run() -> Any:
            self.session(session)
            self._close_session(session)
            return {"closed": session}

        return self._when_ready(call, run, session)

    @op("term.list", idempotent=True, errors=("unavailable",), result={
        "sessions": list[SESSION], "keeper": {"connected": bool, "pid": int | None}})
    def _op_list(self, call: Call) -> Any:
        """Every session with its state, mode, cwd and output offset; after a restart, once
        the keeper's sessions are restored, those of its custody too (before, the list
        would be wrong, not short). A session the keeper holds whose PTY has not come here
        (out of descriptors) is listed too, `unavailable`: left out, it would be unknown to
        a client that lists sessions, while ops on its id answer `unavailable`."""
        def answer() -> dict[str, Any]:
            listed = [s.describe() for s in self.sessions.values()]
            listed += [describe_unavailable(e) for sid, e in self.keeper.unavailable.items()
                       if sid not in self.sessions]
            return {"sessions": listed,
                    "keeper": {"connected": self.keeper.welcomed, "pid": self.keeper.pid}}

        return self._when_ready(call, answer, settled=self.known)

    @op("term.ack", args={"session": str, "offset": int}, idempotent=True, timeout_ms=2000,
        result={"session": str, "acked": int, "offset": int, "consumers": int},
        errors=("session_not_found", "unavailable"))
    def _op_ack(self, call: Call, session: str, offset: int) -> Any:
        """Say that this client has taken the session's output up to `offset`: from the
        first ack on, the session's shell is not let more than the keeper's window ahead of
        it (flow control per session), until it goes silent for `consumer_timeout_ms`."""
        if offset < 0:
            raise fail("bad_args", "offset must be >= 0")

        def run() -> Any:
            s = self.session(session)
            acked, pushed_out = s.consumer_ack(call.sid, offset, time.monotonic())
            if pushed_out is not None:
                self._consumers_dropped(s, [pushed_out], f"pushed out by a new one, past "
                                        f"{MAX_CONSUMERS} consumers")
            self._watch_consumers()
            self.keeper.flush_acks(s)
            return {"session": session, "acked": acked, "offset": s.out.published,
                    "consumers": len(s.consumers)}

        return self._when_ready(call, run, session)

    @op("term.scrollback", args={"session": str, "from_offset": (int, None),
                                 "max_bytes": (int, 1 << 20)}, idempotent=True,
        result={"session": str, "from": int, "to": int, "first": int, "end": int,
                "lost?": tuple[int, int]},
        reply_attachments=1, errors=("session_not_found", "unavailable"))
    def _op_scrollback(self, call: Call, session: str, from_offset: int | None,
                       max_bytes: int) -> Any:
        """Raw output from an absolute offset (default: the last `max_bytes`); after a
        restart, once the keeper's sessions are restored."""
        if max_bytes < 1 or (from_offset is not None and from_offset < 0):
            raise fail("bad_args", "max_bytes must be >= 1 and from_offset >= 0")
        return self._when_ready(
            call, lambda: self._scrollback(session, from_offset, max_bytes), session)

    def _scrollback(self, session: str, from_offset: int | None, max_bytes: int) -> Attached:
        s = self.session(session)
        sb = s.scroll
        start = max(sb.base, sb.end - max_bytes) if from_offset is None else from_offset
        first = max(start, sb.base)
        data = sb.get(first, min(sb.end, first + max_bytes))
        body: dict[str, Any] = {"session": session, "from": first, "to": first + len(data),
                                "first": sb.base, "end": sb.end}
        if start < sb.base:
            body["lost"] = [start, sb.base]
        return Attached(body, [data])
