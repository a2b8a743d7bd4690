"""Bringing sessions into being and back: the creation chain (seed 2.2) and what the terminal
actor does with the keeper's sessions when it (re)connects.

Creation tries, in order: the shell asked for (with its args), the configured shells, the
system default, then a minimal PTY (/bin/sh, a bare environment, no integration). A shell
counts as started at its first trusted prompt marker (integrated), or once its start-up output
went quiet (not integrated). One that cannot be spawned, or exits before that, is recorded in
`attempts` and the next is tried. An integrated shell without a prompt marker within
`integration_detect_ms` is kept, in no_integration mode (seed 2.1).

On the keeper's welcome: each session it holds that this actor does not (this actor is new)
is restored from its metadata (nonce, mode, shell, the spec it was created from) and its ring
(`restore`): its output is taken again from a little before what the predecessor handled, so
the session's state is rebuilt and what the predecessor may have had in flight is published
again (marked `replay`), a slice a loop turn (keeper_client.catch_up). Sessions this actor
had recorded that the keeper does not hold (it takes back what the terminals supervisor keeps
for it when both of us died: actors.runtime.custody) died with the terminals supervisor
(`reconcile`), once the keeper has had that supervisor's answer (a keeper that lets us in
before it says so, and sends what came with it later: keeper_client.py; meanwhile ops on such
a session wait): each gets a `lost` event, together one `term.alert`, and each is started
again under the same id (`recreated`, its output from offset recreated x 2^40 on, past
anything the lost shell wrote), or reported `gone` if that fails; whatever is left of its old
session (a job that ignored SIGHUP) is killed first. A session the keeper named but whose PTY
never came here, even asked for again, is lost so too, at once (keeper_client.py has the
keeper close it first).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from moorage.actors.runtime import Call
from moorage.actors.terminal.keeper import fdroom
from moorage.actors.terminal.keeper.ptys import kill_session
from moorage.actors.terminal.keeper_client import FDS_WAIT_S
from moorage.actors.terminal.link import CUSTODY_GIVE_UP_S
from moorage.actors.terminal.session import Session, SessionHost
from moorage.actors.terminal.shell import Launch, prepare
from moorage.protocol.errors import WireError, fail

if TYPE_CHECKING:
    from collections import Counter

    from moorage.actors.runtime.loop import Loop, Timer
    from moorage.actors.runtime.streams import Publisher
    from moorage.actors.terminal.keeper_client import KeeperClient
    from moorage.actors.terminal.ring import SessionRing
    from moorage.actors.terminal.specs import ExecRecords, SpecStore

MINIMAL_SHELL = "/bin/sh"
RECREATED_SHIFT = 40
# what waits for a keeper on a call's behalf (a create whose keeper died with it, an op
# waiting for the custody answer) gives up this long before the call's caller would: its
# own answer reaches the caller, not the runtime's `timeout`
ANSWER_MARGIN_S = 0.1
# what a restored session's catch-up takes between two looks at the clock (ESC-heavy output
# parses at about 1.5 MB/s in-process: some 10 ms)
CATCH_UP_PIECE = 16 << 10
LOST_REASON = "every holder of the session's PTY died (the terminals supervisor with it)"
GIVEN_UP_REASON = ("the pty keeper held the session but its PTY never came here, even asked "
                   "for again: its shell was ended")


class RestoreHost(SessionHost, Protocol):
    """What creating and restoring sessions needs of the actor."""

    term: str
    scrollback_bytes: int
    keeper_wait_s: float
    shells: list[str]
    default_shell: str
    loop: Loop
    sessions: dict[str, Session]
    specs: SpecStore
    publisher: Publisher
    keeper: KeeperClient
    republish_bytes: int
    counters: Counter[str]
    resumed: set[tuple[str, int]]
    ran_before: set[tuple[str, int]]
    lost_running: dict[tuple[str, int], str]
    execs: ExecRecords
    recreating: dict[str, list[Callable[[], None]]]
    unsettled: dict[str, list[Callable[[], None]]]

    def recreated(self, sid: str) -> None: ...

    def resume_call(self, sid: str, rid: int, op: str, deadline_ms: int | None,
                    args: Any = None) -> Call: ...

    def session_exited(self, s: Session, info: dict[str, Any]) -> None: ...


def answer_by(call: Call) -> float:
    """When `call` is to be answered by (monotonic): ANSWER_MARGIN_S before its caller's
    deadline, or without one, before its op's timeout from its start. What waits on its
    behalf (for a keeper that died with it to be replaced, for the custody answer) waits no
    longer."""
    left_ms = call.remaining_ms()
    if left_ms is None:
        timeout_ms = call.spec.timeout_ms if call.spec is not None else 5000
        left_ms = timeout_ms - (time.perf_counter() - call.started) * 1000
    return time.monotonic() + left_ms / 1000 - ANSWER_MARGIN_S


def base_env(term: str, env: dict[str, Any] | None) -> dict[str, str]:
    """This process's environment (without our nonces) with TERM and the caller's changes
    (a None value unsets); bad_args for a name or value a process could not take."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_NONCE")}
    out["TERM"] = term
    for k, v in (env or {}).items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise fail("bad_args", f"env: bad variable name {k!r}")
        if v is None:
            out.pop(k, None)
        elif isinstance(v, str) and "\0" not in v:
            out[k] = v
        else:
            raise fail("bad_args", f"env: {k} must be a string without NUL, or nil")
    return out


def candidates(asked: str | None, shells: list[str],
               default_shell: str) -> list[tuple[str, str | None]]:
    """(name asked for, resolved path or None) in the order of seed 2.2, each path once."""
    names = ([asked] if asked else []) + shells + [default_shell]
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for name in names:
        path = shutil.which(name)
        key = path or name
        if key not in seen:
            seen.add(key)
            out.append((name, path))
    return out


class Creation:
    def __init__(self, actor: RestoreHost, sid: str, spec: dict[str, Any],
                 call: Call | None) -> None:
        self.a = actor
        self.sid = sid
        self.spec = spec
        self.call = call
        self.queue = candidates(spec.get("shell"), actor.shells, actor.default_shell)
        self.asked = spec.get("shell")
        # A session recreated after a loss goes on past every offset its lost shell could
        # have reached (2^40 bytes a life), so no byte of the new one is taken for an old one.
        self.base = int(spec.get("recreated", 0)) << RECREATED_SHIFT
        self.attempts: list[dict[str, Any]] = []
        self.minimal_tried = False
        self.session: Session | None = None
        self.launch: Launch | None = None
        self.timer: Timer | None = None
        self.done = False
        # the shell being tried (path, args, env, minimal): tried again should the keeper
        # die with its create unanswered, and its successor not hold it
        self._attempt: tuple[str, list[str], dict[str, str], bool] | None = None

    def next(self) -> None:
        while self.queue:
            name, path = self.queue.pop(0)
            if path is None:
                self.attempts.append({"shell": name, "error": "not found"})
                continue
            args = self.spec["args"] if self.asked and name == self.asked else []
            self._try(path, args, base_env(self.a.term, self.spec.get("env")), minimal=False)
            return
        if not self.minimal_tried:
            self.minimal_tried = True
            env = {"PATH": os.defpath, "TERM": self.a.term,
                   "HOME": os.environ.get("HOME", "/")}
            self._try(MINIMAL_SHELL, [], env, minimal=True)
            return
        self._fail(WireError.of("pty_failed", "no shell could be started",
                                detail={"attempts": self.attempts}))

    def _try(self, path: str, args: list[str], env: dict[str, str], minimal: bool) -> None:
        # This process holds copies of each session's master and ring too: no session is
        # asked for that would take them into the descriptors kept free (keeper/fdroom.py)
        room = fdroom.room_for(fdroom.TERMINAL_SESSION_FDS)
        if not room.ok:
            logger.warning("session {}: {}", self.sid, room.message("create refused"))
            self._fail(WireError.of("resource_exhausted", room.message("terminal"),
                                    detail=room.detail()))
            return
        nonce = secrets.token_hex(16)
        integrate = self.spec.get("integration", True) and not minimal
        launch = prepare(path, args, env, nonce if integrate else None)
        cwd = self.spec.get("cwd") or env.get("HOME") or "/"
        if not os.path.isdir(cwd):
            cwd = "/"
        meta = {"nonce": nonce, "mode": "integration" if launch.integration else
                "no_integration", "kind": launch.kind, "shell": path, "cwd": cwd,
                "minimal": minimal, "spec": self.spec,
                "req": [self.call.sid, self.call.id] if self.call is not None else None}
        if launch.integration:
            meta["unprompted"] = True  # (until its first trusted prompt: Session.unprompted)
        self.launch = launch
        self._attempt = (path, args, env, minimal)
        self.a.keeper.request(
            {"t": "create", "s": self.sid, "path": launch.path, "argv": launch.argv,
             "env": launch.env, "cwd": cwd, "cols": self.spec["cols"],
             "rows": self.spec["rows"], "meta": meta, "scrollback": self.a.scrollback_bytes,
             "base": self.base},
            lambda r, err: self._created(r, err, launch, meta),
            lambda: self._lost(launch, meta))

    def _created(self, r: dict[str, Any] | None, err: WireError | None, launch: Launch,
                 meta: dict[str, Any]) -> None:
        if err is not None:
            # (a limit of the keeper's is no fault of this shell: the next would meet it too)
            if err.name in ("unavailable", "outcome_unknown", "resource_exhausted"):
                self._fail(err)
                return
            self.attempts.append({"shell": launch.path, "error": err.message})
            self.next()
            return
        assert r is not None
        s = Session(self.a, self.sid, meta, base=self.base)
        s.pid, s.tty, s.started = r["pid"], r["tty"], r.get("started")
        s.cols, s.rows = self.spec["cols"], self.spec["rows"]
        self.a.sessions[self.sid] = s
        self.a.keeper.expect_copies(s)
        self._watch(s, launch)

    def _watch(self, s: Session, launch: Launch) -> None:
        """The session made: it counts as started at its first prompt (or quiet)."""
        self.session = s
        if self.a.subscribed_to(f"term.out.{s.id}"):
            self.a.keeper.watched(s)
        loop = self.a.loop
        if launch.integration:
            if s.state == "prompt":  # (one taken from a keeper's successor: its output,
                self._prompted()  # caught up on, may have had the prompt already)
                return
            s.on_prompt.append(self._prompted)
            self.timer = loop.call_later(self.a.detect_s, self._no_prompt)
        else:
            s.wait_quiet(self._quiet)
            self.timer = loop.call_later(self.a.detect_s, self._quiet)

    def _lost(self, launch: Launch, meta: dict[str, Any]) -> None:
        """The keeper died (or hung, and was killed) with the create unanswered: it may
        have made the shell or not. Its successor's word settles it, once its custody has
        answered (a shell made is in the supervisor's custody from its start): the session
        it names is taken (the one this create made: its nonce), or, named by none, the
        create goes again; never a second shell. Waited for as the caller's time allows,
        the keeper for at most keeper_wait_ms; not told in time, the answer is
        `outcome_unknown` (a resend of the very request finds the session, if it was made)."""
        keeper = self.a.keeper
        logger.warning("session {}: the pty keeper died with its create unanswered; waiting "
                       "for the next keeper's word of it", self.sid)
        deadline = self._deadline()

        def left(bound: float) -> float:
            return bound if deadline is None else max(0.0, min(bound,
                                                               deadline - time.monotonic()))

        def unknown(what: str) -> None:
            self._fail(WireError.of(
                "outcome_unknown", f"session {self.sid}: the pty keeper died with the create "
                f"unanswered, and {what} in time to tell whether it made the shell; a resend "
                "of this request gets the session if it was made", detail={
                    "session": self.sid}))

        def settled(ok: bool) -> None:
            if self.done:
                return
            if not ok:
                unknown("the new keeper's custody did not answer")
                return
            s = self.a.sessions.get(self.sid)
            if s is not None and s.meta.get("nonce") == meta.get("nonce"):
                logger.info("session {}: made by the keeper that died; taken from the next",
                            self.sid)
                self.a.counters["creates_taken_from_next_keeper"] += 1
                self._watch(s, launch)
            elif s is not None:
                self._fail(WireError.of("conflict", f"session {self.sid} exists already"))
            elif self.sid in keeper.unavailable:  # (made, its PTY not here yet: restored
                # once it comes, out of descriptors as we are)
                unknown("the session the keeper holds under its id has not come here")
            else:
                logger.info("session {}: not made by the keeper that died; created again",
                            self.sid)
                self.a.counters["creates_sent_again"] += 1
                assert self._attempt is not None
                self._try(*self._attempt)

        def ready(ok: bool) -> None:
            if self.done:
                return
            if not ok:
                unknown("no pty keeper came back")
            elif keeper.settled:
                settled(True)
            else:
                keeper.when_ready(settled, left(CUSTODY_GIVE_UP_S + FDS_WAIT_S),
                                  settled=True)

        keeper.when_ready(ready, left(self.a.keeper_wait_s))

    def _deadline(self) -> float | None:
        """When the call must be answered by (monotonic), if there is a call."""
        return None if self.call is None else answer_by(self.call)

    def _starting(self) -> Session | None:
        """The session still being started; None when it is settled, or when its shell died
        meanwhile (the next candidate is then tried)."""
        s = self.session
        if self.done or s is None:
            return None
        if self.a.sessions.get(self.sid) is not s:  # closed (term.close) before it was ready
            if self.timer is not None:
                self.timer.cancel()
            self._fail(WireError.of("shell_exited",
                                    f"session {self.sid} was closed before its shell was ready"))
            return None
        if s.exited is not None:
            self._died(s)
            return None
        return s

    def _prompted(self) -> None:
        s = self._starting()
        if s is None:
            return
        s.state = "prompt"
        self._succeed(s)

    def _no_prompt(self) -> None:
        s = self._starting()
        if s is None:
            return
        logger.warning("session {}: no prompt marker in {} s; no integration", s.id,
                       self.a.detect_s)
        s.set_mode("no_integration")
        self._quiet()

    def _quiet(self) -> None:
        s = self._starting()
        if s is None:
            return
        s.note_prompt()
        try:
            self._succeed(s)
        finally:
            s.settle()  # (after: our own wait for its prompt then finds it done)

    def _died(self, s: Session) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.attempts.append({"shell": s.shell, "error": f"exited at start: {s.exited}"})
        self.a.sessions.pop(self.sid, None)
        self.session = None  # (first: the close lets its waiters go, ours among them)
        s.close(WireError.of("shell_exited", f"session {self.sid}'s shell exited at start"))
        # (with its tombstone: a close lost with the keeper must not have the next one
        # hand this shell back, under the id the next candidate takes)
        self.a.keeper.close_session(self.sid, s.pid, s.started)
        self.next()

    def _succeed(self, s: Session) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.a.specs.put(self.sid, {**self.spec, "pid": s.pid, "started": s.started})
        result = {**s.created(), "attempts": self.attempts}
        if self.call is not None:
            self.call.reply(result)
        else:
            self.a.publisher.publish("term.session", {"event": "recreated", **result})
            self.a.recreated(self.sid)

    def _fail(self, err: WireError) -> None:
        self.done = True
        if self.call is not None:
            self.call.fail(err)
        elif err.name in ("unavailable", "outcome_unknown"):
            # The keeper went away under the recreation: nothing was tried, and the record
            # stays; the next keeper's welcome finds the session lost again and recreates it.
            logger.warning("session {}: recreation interrupted ({}); again with the next "
                           "keeper", self.sid, err.message)
            self.a.recreated(self.sid)
        else:
            self.a.specs.drop(self.sid)
            self.a.publisher.publish("term.session", {
                "session": self.sid, "event": "gone", "reason": err.message})
            self.a.recreated(self.sid)


def restore(a: RestoreHost, e: dict[str, Any], master: int, ring: SessionRing) -> None:
    """A session the keeper holds and this actor does not: made from its entry and ring."""
    sid = e["s"]
    meta = e.get("meta") or {}
    if not meta.get("nonce"):
        meta = {**meta, "nonce": secrets.token_hex(16), "mode": "no_integration"}
    # From where our predecessor had handled the output, less what it may have had in flight
    # to its subscribers (republished, marked replay), and enough to rebuild the state.
    start = max(ring.base, ring.ack_off - a.republish_bytes)
    rec = meta.get("exec")
    if isinstance(rec, dict) and isinstance(rec.get("sent_off"), int):
        # ... and from a command in flight's start: its record may be older than the output
        # (its end was handled by a predecessor that died before it wrote the record's
        # removal, or one whose state went over the link to a keeper that died with it), and
        # its end marker must be seen again to answer it, not waited for until its deadline
        start = max(ring.base, min(start, rec["sent_off"]))
    target = ring.write_off
    s = Session(a, sid, meta, ring=ring, master=master, base=start,
                replay_until=ring.ack_off, catch_up=target)
    s.pid, s.tty, s.cols, s.rows = e["pid"], e["tty"], e["cols"], e["rows"]
    s.started = e.get("started")
    s.keeper_backlog = bool(e.get("pending"))  # a predecessor's input still waits there
    s.keeper_paused = bool(e.get("paused"))  # it waits for our ack to read on
    if s.mode != "integration":
        s.state = "prompt"
    a.sessions[sid] = s
    if meta.get("watched"):
        a.keeper.hold_until_watched(s)
    _record(a, e, meta)
    ran = meta.get("exec_ran")
    if isinstance(ran, dict) and isinstance(ran.get("sid"), str) and isinstance(ran.get("id"), int):
        # The last command our predecessor answered: a resend of it is not run again.
        a.ran_before.add((ran["sid"], ran["id"]))
    if isinstance(rec, dict) and isinstance(rec.get("sid"), str) and isinstance(rec.get("id"), int):
        # A command our predecessor was running: it completes here, for a resend of it.
        call = a.resume_call(rec["sid"], rec["id"], "term.exec", rec.get("deadline_ms"),
                             {"session": sid, "command": rec.get("command", "")})
        a.resumed.add((rec["sid"], rec["id"]))
        s.resume_exec(call, rec)
    # Its ring is taken a slice at a time (up to ~3 MiB parsed in-process: seconds for
    # escape-heavy output), the loop turning in between; ops wait until all are done (the
    # keeper's welcome, or in a `custody` round, the round's settling).
    if a.keeper.welcomed:
        a.unsettled.setdefault(sid, [])
    began = time.monotonic()
    a.keeper.catch_up(s, lambda until: _catch_up(a, e, s, (start, target), until, began))


def _record(a: RestoreHost, e: dict[str, Any], meta: dict[str, Any]) -> None:
    """The session's spec, if it has none: created, but its creator died before recording
    it, or a restart by hand cleared the records; the shell's pid with it (a lost session's
    left jobs are killed by it: reconcile)."""
    sid = e["s"]
    if sid in a.specs.specs:
        return
    spec = meta.get("spec")
    a.specs.put(sid, {**(spec or {"shell": meta.get("shell"), "args": [],
                                  "cwd": meta.get("cwd"), "env": {}, "cols": e["cols"],
                                  "rows": e["rows"], "integration": meta.get("mode") ==
                                  "integration", "recreated": 0}), "pid": e["pid"],
                            "started": e.get("started")})


def _catch_up(a: RestoreHost, e: dict[str, Any], s: Session, span: tuple[int, int],
              until: float, began: float) -> bool:
    """A restored session's ring up to `target` (its end at the restore), until the clock
    passes `until`; then (True) what came since, and its exit if the keeper's entry told
    of one. As Session.on_ring takes it, in smaller pieces."""
    start, target = span
    ring = s.ring
    if ring is None or a.sessions.get(s.id) is not s:
        return True
    while s.offset < target:
        off = max(s.offset, ring.base)
        data = ring.read(off, min(target, off + CATCH_UP_PIECE))
        if not data:
            break
        s.on_output(off, data)
        if time.monotonic() >= until and s.offset < target:
            return False
    s.on_ring(ring.write_off)
    if e.get("exited") and s.exited is None:
        a.session_exited(s, e["exited"])
    logger.info("session {} restored: pid {}, output from {} to {}, caught up on in {:.2f} s",
                s.id, s.pid, start, ring.write_off, time.monotonic() - began)
    return True


def reconcile(a: RestoreHost, entries: list[dict[str, Any]], settled: bool = True) -> None:
    """After a welcome (`entries`: every session the keeper told of): sessions recorded that
    neither the keeper nor this actor holds died with every holder (the terminals supervisor,
    which holds a copy of each besides the two of us): report, clean up and recreate them.
    Not `settled` (the keeper's custody answer is still to come), they may yet come with it:
    none is lost, and ops on them wait. Entries `given_up` (keeper_client: the keeper held
    them, but their PTYs never came here) are lost now, settled or not."""
    # (one being recreated is not lost again: a later round still names the one given up)
    ours = set(a.sessions) | set(a.recreating)
    given_up = [e for e in entries if e.get("given_up") and e["s"] not in ours]
    for e in given_up:
        _record(a, e, e.get("meta") or {})  # (recreated from its spec, as any lost one)
    gone = {e["s"] for e in given_up}
    held = {e["s"] for e in entries if not e.get("given_up")} | ours
    missing = [sid for sid in a.specs.specs if sid not in held and sid not in gone]
    if not settled:
        for sid in missing:
            a.unsettled.setdefault(sid, [])
        if missing:
            logger.info("session(s) {} not held by the keeper yet: waiting for its custody "
                        "answer", missing)
        if gone:
            _settle(a, sorted(gone), GIVEN_UP_REASON)
        return
    try:
        _settle(a, missing)
        if gone:
            _settle(a, sorted(gone), GIVEN_UP_REASON)
    finally:
        # (the lost ones wait for their recreation now; the others are here, or gone)
        waiting, a.unsettled = a.unsettled, {}
        for fns in waiting.values():
            for fn in fns:
                fn()


def _settle(a: RestoreHost, lost: list[str], reason: str = LOST_REASON) -> None:
    """The sessions recorded that no one holds (or that never came here) are lost: report,
    clean up, recreate."""
    a.execs.prune(set(a.specs.specs))
    for sid in lost:
        # The calls the lost session's records name: a resend of the one that was running
        # (it may have run) or of the one answered last must not run in the new shell.
        running, ran = a.execs.take(sid)
        if running is not None:
            a.lost_running[running] = sid
        if ran is not None:
            a.ran_before.add(ran)
    if not lost:
        return
    for sid in lost:
        pid = a.specs.specs[sid].get("pid")
        started = a.specs.specs[sid].get("started")
        # A record without the shell's start time (written before it was kept) kills only
        # what is left of a session whose shell is gone: its pid may be anyone's by now.
        killed = kill_session(pid, leader_reaped=not isinstance(started, int),
                              started=started if isinstance(started, int) else None) \
            if isinstance(pid, int) else 0
        a.publisher.publish("term.session", {"session": sid, "event": "lost",
                                             "reason": reason, "killed_left": killed})
    a.publisher.publish("term.alert", {"kind": "sessions_lost", "severity": "critical",
                                       "sessions": lost, "message": reason})
    a.counters["sessions_lost"] += len(lost)
    logger.error("{} session(s) lost with the pty keeper: {}", len(lost), lost)
    for sid in lost:
        # Each loss is recreated once (seed 1.2, Terminal Critical: recreate, alert, 1 retry);
        # a recreation that fails is `gone`. Ops on the session wait for it meanwhile.
        spec = dict(a.specs.specs[sid])
        spec["recreated"] = spec.get("recreated", 0) + 1
        a.specs.put(sid, spec)
        a.recreating.setdefault(sid, [])
        Creation(a, sid, spec, None).next()
