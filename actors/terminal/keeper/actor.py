"""The pty keeper: starts the shells and reads their output, so that no byte is lost when the
terminal actor dies; and shares every session with the terminal actor, so that a shell also
outlives the keeper.

  op         args   reply                                                    errors
  pty.list   {}     {connected, sessions: [{s, pid, started, tty, cols, rows, -
                     read, acked, base, paused, pending, adopted, exited}]}

Everything else goes over `<runtime_dir>/<name>.sock` (link.py has the messages), from the one
terminal actor connected at a time; the PTY side is ptys.py. The keeper
- starts each shell on a new PTY with posix_spawn (spawn.py says why not fork: this process
  has ZeroMQ threads, to answer `sys.ping`), at most `create_per_turn` a loop turn, and is the
  shell's parent;
- reads the output into the session's ring (ring.py: a memfd both processes map), at most
  `window_bytes` past what the terminal has handled (the ring's `ack_off`): a full window stops
  reading that PTY, so the shell blocks in write() instead of losing output;
- shares custody of each session with the terminal actor and with its supervisor: the PTY
  master and the ring's fd ride over the link (SCM_RIGHTS) to whichever of the two actors is
  new, and are left with the supervisor (actors.runtime.custody) as they are made. A PTY
  hangs up only when every master is closed, so a session lives as long as any of the three
  does. When the keeper dies, its shells go to the terminals supervisor (a subreaper); its
  successor takes the sessions back from that supervisor (and from the terminal actor,
  `adopt`, should the supervisor lack one), watches the shells through pidfds and asks that
  supervisor for their exit status (`sup.orphan_exit`). It waits `custody_wait_ms` for the
  supervisor's answer before it lets a terminal in; a terminal let in before it (a loaded
  machine, a busy supervisor) is told so in the welcome (`custody: true`), and the sessions
  that come with the answer in a `custody` message once it is there: only then may the
  terminal decide that a session it recorded is lost (a shell taken for lost while the
  supervisor still holds it would be killed and started anew, and the old one kept here for
  no one). An answer not there `custody_give_up_ms` after start is given up: the terminal is
  told (`custody` with what came), and what the supervisor hands over after that is let go
  (dropped from its custody: the terminal has settled those sessions as lost);
- writes input without blocking, from a bounded queue per session (a 1 MB paste waits for
  the shell to read it; the loop never stalls);
- on stop (SIGTERM), hangs every session up, waits `stop_grace_ms` for the shells, then
  SIGKILLs whatever is left in their sessions and reaps; a session closed by the terminal
  (`close`) gets `close_grace_ms`; if its supervisor is gone (the tree died under it), it kills
  every session outright before it follows (no job that ignores SIGHUP survives the tree).
  A closed session's entry in custody becomes a `closing` record until its grace is over
  (CLOSING_KEY: the shell's pid and start time, and when the grace ends; no descriptor, so
  the PTY hangs up): a keeper that dies within the grace leaves the kill to its successor,
  which takes the record with the sessions, kills what is left of that session (if the pid
  is still that process, by its start time) when the grace ends, and drops the record.

Config: window_bytes (1 MiB), scrollback_bytes (2 MiB: the ring holds this much before the
window, unless the terminal's `create` asks for another size), input_limit_bytes (16 MiB),
read_batch_bytes (128 KiB a turn per session), create_per_turn (4), stop_grace_ms (1000),
close_grace_ms (2000), custody_wait_ms (2000: CUSTODY_WAIT_S; longer keeps a terminal out
longer on a busy machine, shorter lets it in sooner, told to wait for the answer),
custody_give_up_ms (30000, which is also the most: a terminal waits no longer than
link.CUSTODY_GIVE_UP_S for its sessions to settle), supervised_by (set by the tree: who reaps
the shells of a dead keeper).

Descriptors: a `create` is refused (`resource_exhausted`, nothing spawned) unless the
session's descriptors stay below the soft RLIMIT_NOFILE less a reserve of 64 or 1/8 of the
limit, whichever is more (fdroom.py: the reserve is for what comes and goes, libzmq's
connections above all, which abort the process when they find no descriptor, and a new
terminal's link). A session's descriptors go to a new terminal without copies when they can
be sent at once (link.send_fds), so a hand-over at the limit of sessions needs none. A limit
hit anyway (out of descriptors or memory: EMFILE, ENFILE, ENOMEM) is answered
`resource_exhausted` with the errno, never `bad_args`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime import Actor, Call, op, trust
from moorage.actors.runtime.acceptor import Acceptor
from moorage.actors.runtime.custody import CustodyClient, close_all, custody_path
from moorage.actors.runtime.loop import Timer
from moorage.actors.runtime.orphans import on_orphaned
from moorage.actors.runtime.outbound import Outbound
from moorage.actors.runtime.shapes import Named, OneOf
from moorage.actors.terminal.keeper import fdroom
from moorage.actors.terminal.keeper.ptys import (
    Ptys,
    PtySession,
    drop_unread_input,
    foreground_group,
    kill_session,
    process_start,
)
from moorage.actors.terminal.keeper.spawn import SpawnError, set_winsize, spawn_on_pty, winsize
from moorage.actors.terminal.link import CUSTODY_GIVE_UP_S, LINK_TOKEN_NAME, Link
from moorage.actors.terminal.ring import RING_CORE, RingError, SessionRing
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import Category, WireError

HELLO_WAIT_S = 2.0  # a new connection's first message, the hello, within this
CUSTODY_WAIT_S = 2.0  # what the supervisor holds, before the terminal is let in (default)
CLOSING_KEY = "closing:"  # + the shell's pid: a closed session's record in custody (`closing`)
# (and CUSTODY_GIVE_UP_S, link.py, the default and the most of custody_give_up_ms: after it,
# the terminal settles its sessions without what did not come; a supervisor that never
# answers must not leave them unsettled for ever)
EXIT_STATUS_TRIES = 10  # an adopted shell's status, asked of the supervisor this often ...
EXIT_STATUS_RETRY_S = 0.05  # ... this far apart (it reaps on SIGCHLD, a moment later)

Status = tuple[int | None, int | None]


# pty.list's entry for one session (ptys.PtySession.describe): the shell's start time (clock
# ticks since boot: with the pid, which process it is), offsets of its ring, the bytes of input
# waiting, whether this keeper adopted it from a predecessor, its exit status.
HELD = Named("held", {
    "s": str, "pid": int, "started": int | None, "tty": str, "cols": int, "rows": int,
    "read": int, "acked": int, "base": int, "paused": bool, "pending": int, "adopted": bool,
    "exited": OneOf({"code": int | None, "signal": int | None}, None)})


def closing_key(pid: int) -> str:
    """The custody key of a closed session's `closing` record: by its shell's pid (no two
    live sessions have one, and a session id may be used again within the grace)."""
    return f"{CLOSING_KEY}{pid}"


def kill_closed(record: dict[str, Any]) -> int:
    """SIGKILL what is left of a closed session a `closing` record names: only while its pid
    is still that shell (its start time), or is no process at all and its jobs are left (no
    new process gets a pid that is a live session's id); a record without the start time
    kills only such jobs."""
    started = record.get("started")
    return kill_session(record["pid"], leader_reaped=started is None, started=started)


class PtyKeeper(Actor):
    name = "ptykeeper"
    category = Category.TERMINAL

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        cfg = self.config
        self.window = max(4096, int(cfg.get("window_bytes", 1 << 20)))
        self.scrollback = max(0, int(cfg.get("scrollback_bytes", 2 << 20)))
        self.input_limit = int(cfg.get("input_limit_bytes", 16 << 20))
        self.read_batch = max(4096, int(cfg.get("read_batch_bytes", 128 << 10)))
        self.create_per_turn = max(1, int(cfg.get("create_per_turn", 4)))
        self.stop_grace = int(cfg.get("stop_grace_ms", 1000)) / 1000
        self.close_grace = int(cfg.get("close_grace_ms", 2000)) / 1000
        self.custody_wait = int(cfg.get("custody_wait_ms", round(CUSTODY_WAIT_S * 1000))) / 1000
        self.custody_give_up = int(cfg.get("custody_give_up_ms",
                                           round(CUSTODY_GIVE_UP_S * 1000))) / 1000
        if self.custody_wait < 0 or not 0 <= self.custody_give_up <= CUSTODY_GIVE_UP_S:
            # (a terminal gives up waiting for its sessions to settle at CUSTODY_GIVE_UP_S: a
            # keeper giving up later would hand it sessions it has already settled as lost)
            raise ValueError(f"custody_wait_ms >= 0 and 0 <= custody_give_up_ms <= "
                             f"{round(CUSTODY_GIVE_UP_S * 1000)}")
        self.supervisor = cfg.get("supervised_by")
        self.sessions: dict[str, PtySession] = {}
        self.link: Link | None = None
        self.peer_pid: int | None = None  # the terminal actor on the link (SO_PEERCRED)
        self.strangers = 0  # connections refused: not a process of this tree
        self.adopted = 0  # sessions handed over by the terminal from a keeper that died
        # creates waiting for their turn, each with the link it came on
        self._creates: deque[tuple[Link | None, dict[str, Any]]] = deque()
        self._creating = False
        self.outbound = Outbound(self)
        self.sock_path = self.runtime_dir / f"{self.name}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()  # a killed predecessor's; we are its replacement
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.acceptor = Acceptor(self.loop, self.listener, self._accept, "keeper link")
        self.custody: CustodyClient | None = None  # the third holder: the supervisor
        self.from_custody = 0  # sessions taken back from it at start
        # its answer to our `take` is still to come (while it is, a welcome says so)
        self.custody_pending = False
        self._custody_timer: Timer | None = None
        # taken from custody after the connected terminal's welcome: its `custody` message
        self._late: list[str] = []
        self.custody_late = 0  # sessions a terminal got that way, over the keeper's life
        self._peer_held: set[str] = set()  # what the connected terminal holds (its hello)
        # closed while the custody answer is pending: a busy supervisor answers with what it
        # held when our take came, before the drops we sent after it, so such a session may
        # still come with the answer; adopted again, it would be a shell no one owns
        self._gone_pending: set[str] = set()
        self.ptys = Ptys(self.loop, self.sessions, window=self.window,
                         read_batch=self.read_batch, tell=self._tell,
                         exit_status=self._exit_status)
        self.ptys.backlogged = lambda: self.link is not None and bool(self.link.out)
        self.in_grace: set[PtySession] = set()  # closed, `close_grace` not over yet
        # closed by a predecessor that died within their grace (their `closing` records in
        # custody, by key): what is left of each is killed here when the grace ends
        self.closes_inherited: dict[str, dict[str, Any]] = {}
        self.closes_finished = 0  # such closes this keeper finished, over its life
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "hello": self._m_hello, "create": self._m_create, "write": self._m_write,
            "resize": self._m_resize, "signal": self._m_signal, "close": self._m_close,
            "ack": self._m_ack, "meta": self._m_meta, "adopt": self._m_adopt,
            "pass": self._m_pass,
        }

    # --- life -------------------------------------------------------------------------------

    def on_start(self) -> None:
        self.loop.add_reader(self.ptys.fileno(), self.ptys.events)
        on_orphaned(self._kill_everything)
        if self.supervisor:
            try:
                self.custody = CustodyClient(self.loop, custody_path(self.runtime_dir,
                                                                     self.supervisor), self.name)
            except OSError as exc:
                logger.warning("no custody at supervisor {}: {}", self.supervisor, exc)
        if self.custody is None:
            self._listen()
            return
        # What a predecessor left with the supervisor comes first: a terminal let in before
        # is welcomed without sessions that are alive, so it is told to wait for them.
        self.custody_pending = True
        self.custody.take(self._from_custody, lambda n: self._custody_over(f"{n} held"))
        self.loop.call_later(self.custody_wait, self._listen)
        self._custody_timer = self.loop.call_later(self.custody_give_up, self._custody_given_up)

    def _listen(self) -> None:
        self.acceptor.start()

    def _custody_given_up(self) -> None:
        logger.warning("custody: no answer from supervisor {} in {} s; the terminal settles "
                       "its sessions without it", self.supervisor, self.custody_give_up)
        self._custody_over("given up")

    def _custody_over(self, why: str) -> None:
        """The supervisor answered (or failed, or was given up on): nothing more comes from
        custody. A terminal welcomed meanwhile gets the sessions that came after its
        welcome, and may settle which of its sessions are lost."""
        if not self.custody_pending:
            return
        self.custody_pending = False
        self._gone_pending.clear()
        if self._custody_timer is not None:
            self._custody_timer.cancel()
        self._listen()
        late = [self.sessions[sid] for sid in self._late if sid in self.sessions]
        self._late = []
        if self.link is None:
            return
        logger.info("custody over ({}): {} session(s) for the connected terminal", why,
                    len(late))
        self.custody_late += len(late)
        self._tell({"t": "custody", "sessions": [self._entry(s) for s in late]})
        self._offer(late, self._peer_held)

    def info(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "connected": self.link is not None,
                "peer_pid": self.peer_pid, "strangers_refused": self.strangers,
                "connections_shed": self.acceptor.shed,
                "adopted": self.adopted, "from_custody": self.from_custody,
                "custody": self.custody is not None and not self.custody.out.broken,
                "custody_pending": self.custody_pending, "custody_late": self.custody_late,
                "creates_queued": len(self._creates),
                # closed sessions whose grace is not over: ours, and a predecessor's
                "closes_pending": len(self.in_grace) + len(self.closes_inherited),
                "closes_finished": self.closes_finished,
                # what waits for the terminal to read: bytes, and sessions whose word of new
                # output waits for those to go (Ptys.deferred)
                "link_queued_bytes": self.link.out_bytes if self.link is not None else 0,
                "outs_deferred": len(self.ptys.deferred),
                # how it reads output into the rings (ring.RING_CORE): _cring.c or Python
                "ring_core": RING_CORE,
                "unhandled": sum(s.ring.write_off - s.ring.ack_off
                                 for s in self.sessions.values())}

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        # The scrollback in the rings is the terminal actor's to trim (it trims when told).
        return {}

    def on_stop(self) -> None:
        """Hang every session up, give the shells `stop_grace_ms`, then kill what is left."""
        if self.link is not None:
            self.link.close("keeper stopping")
        self.acceptor.close()
        self.listener.close()
        with contextlib.suppress(OSError):
            self.sock_path.unlink()
        self.outbound.close()
        # (a closed session whose shell was reaped within its grace has left `closing`, and
        # a job that outlived the shell's SIGHUP, one the shell was just starting, say, is
        # killed at the grace's end: a stop before it comes takes the job now)
        victims = self._every_session()
        for s in self.sessions.values():
            self.ptys.hangup(s)
        if self.custody is not None:
            # a stop hangs the sessions up: the supervisor's copies must not hold them open
            for sid in self.sessions:
                self.custody.drop(sid)
            self.custody.close()
        deadline = time.monotonic() + self.stop_grace
        for s in victims:
            if s.status is None and s.pidfd is not None:
                left = deadline - time.monotonic()
                if left > 0:
                    select.select([s.pidfd], [], [], left)
        for s in victims:
            s.kill_left()
            if s.status is None and not s.adopted:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(s.pid, 0)
            if s.pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(s.pidfd)
        # (the `closing` records stay in custody: a successor finds nothing left of them, and
        # one whose kill this stop did not get to is finished by it)
        for record in self.closes_inherited.values():
            kill_closed(record)

    def _kill_everything(self) -> None:
        """The tree is gone from under us (our supervisor died): no session may outlive it."""
        for s in self._every_session():
            s.kill_left()
        for record in self.closes_inherited.values():
            kill_closed(record)

    def _every_session(self) -> list[PtySession]:
        """Held, closing, or closed within its grace: whatever may still have processes."""
        return [*self.sessions.values(), *({*self.ptys.closing.values()} | self.in_grace)]

    # --- the connection -----------------------------------------------------------------------

    def _accept(self, conn: socket.socket) -> None:
        """A connection is a candidate until its first message, a `hello` with the tree's
        link token (only a process of this tree can make it: actors.runtime.trust) from a
        process of our uid (SO_PEERCRED); then it replaces the link in place. A stranger
        is closed and counted, and never disturbs a live link. A candidate's descriptors
        are not taken (the kernel closes what it passes): none is needed before the
        welcome, and a stranger must not fill our table with them while we wait."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            self._refuse_stranger(conn, f"uid {uid}")
            return
        candidate: Link | None = None

        def first_message(msg: dict[str, Any]) -> None:
            assert candidate is not None
            timer.cancel()
            if msg.get("t") != "hello" or not trust.verify(LINK_TOKEN_NAME, msg.get("tok")):
                self._refuse_stranger(candidate, f"pid {pid}: no valid hello")
                return
            self._take_link(candidate, pid)
            self._on_message(msg)

        candidate = Link(self.loop, conn, first_message, lambda reason: timer.cancel())
        timer = self.loop.call_later(HELLO_WAIT_S, lambda: self._refuse_stranger(
            candidate, f"pid {pid}: no hello in {HELLO_WAIT_S} s"))

    def _refuse_stranger(self, conn: Link | socket.socket, why: str) -> None:
        self.strangers += 1
        logger.warning("refused a connection to the keeper link ({})", why)
        if isinstance(conn, Link):
            conn.close("refused")
        else:
            conn.close()

    def _take_link(self, link: Link, pid: int) -> None:
        if self.link is not None:
            # the old peer's last acks and meta first: they may still be unread
            self.link.drain()
            if self.link is not None:
                self.link.close("replaced by a new connection")
        link.on_message = self._on_message
        link.on_close = self._on_link_closed
        link.on_drained = self.ptys.tell_deferred
        link.take_passed_fds()  # (`adopt` carries a session's: none comes before the welcome)
        self.ptys.deferred.clear()  # (a new terminal's welcome says where each session is)
        self.link = link
        self.peer_pid = pid
        logger.info("terminal actor connected (pid {})", pid)

    def _on_link_closed(self, reason: str) -> None:
        logger.info("terminal actor link closed: {}", reason)
        self.link = None
        self.peer_pid = None

    def _tell(self, msg: dict[str, Any]) -> None:
        if self.link is not None:
            self.link.send(msg)

    def _on_message(self, msg: dict[str, Any]) -> None:
        handler = self._handlers.get(msg["t"])
        if handler is None:
            self._reply_err(msg, "bad_args", f"unknown message type {msg['t']!r}")
            return
        try:
            handler(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self._reply_err(msg, "bad_args", f"{msg['t']}: {type(exc).__name__}: {exc}")
        except OSError as exc:  # (out of descriptors or memory: a limit, not a fault of ours)
            if not fdroom.exhausted(exc):
                logger.exception("keeper: {} failed", msg["t"])
            self._reply_err(msg, fdroom.error_name(exc, "internal"),
                            f"{msg['t']}: {exc.strerror or exc}", errno=exc.errno)
        except Exception as exc:  # (answered, and the frames after it in the read still run)
            logger.exception("keeper: {} failed", msg["t"])
            self._reply_err(msg, "internal", f"{msg['t']}: {type(exc).__name__}: {exc}")

    def _reply_err(self, msg: dict[str, Any], name: str, message: str, **extra: Any) -> None:
        self._tell({"t": "err", "r": msg.get("r"), "s": msg.get("s"), "name": name,
                    "message": message, **extra})

    def _session(self, msg: dict[str, Any]) -> PtySession | None:
        s = self.sessions.get(msg["s"])
        if s is None:
            self._reply_err(msg, "session_not_found", f"no session {msg['s']!r}")
        return s

    def _pass(self, s: PtySession) -> bool:
        """The session's master and ring to the terminal actor, which keeps copies: either of
        the two then keeps the session alive. Ours go as they are when they can be sent at
        once; what waits to be sent is checked to be the session's still when its turn
        comes (no copies needed: at the limit of sessions a hand-over still goes)."""
        if self.link is None:
            return False
        return self.link.send_fds({"t": "fds", "s": s.id}, [s.master, s.ring.fd],
                                  still=lambda: self.sessions.get(s.id) is s and not s.closing)

    # --- messages -------------------------------------------------------------------------------

    def _m_hello(self, msg: dict[str, Any]) -> None:
        """A terminal actor (a new one, or one that outlived our predecessor): every session
        we hold, with its fds, except those it says it holds already; it hands us those it
        holds that we do not (`adopt`). While our custody answer is still to come, the
        welcome says so: what comes with it follows in `custody` (_custody_over)."""
        held = set(msg.get("held") or ())
        self._peer_held = held
        self._late = []  # (the welcome has every session taken so far)
        sessions = list(self.sessions.values())
        self._tell({"t": "welcome", "pid": os.getpid(), "custody": self.custody_pending,
                    "sessions": [self._entry(s) for s in sessions]})
        self._offer(sessions, held)

    @staticmethod
    def _entry(s: PtySession) -> dict[str, Any]:
        """A session as a welcome (or `custody`) tells it: with where the terminal's
        numbering of its input and signals goes on (ledger.py; a new terminal's starts
        there)."""
        return s.describe() | {"meta": s.current_meta(), "input_end": s.in_end,
                               "signals": s.ledger.state().sig_done}

    def _offer(self, sessions: list[PtySession], held: set[str]) -> None:
        """What follows the sessions' entries: the fds of each the terminal does not hold
        (`held`), the exit of each that ended, and reading again what it handled."""
        for s in sessions:
            if s.id not in held and not s.closing:
                self._pass(s)
            if s.exit_sent:
                self._tell({"t": "exit", "s": s.id, **(s.exit_info() or {})})
            self.ptys.resume(s)  # what the last terminal handled before it went

    def _m_pass(self, msg: dict[str, Any]) -> None:
        """The terminal lacks a session's copies (they could not be sent, or not used)."""
        s = self._session(msg)
        if s is None:
            return
        if self.link is not None and not self._pass(s):
            self._reply_err(msg, "resource_exhausted", f"pass {s.id}: no descriptor left",
                            errno=errno.EMFILE)
            return
        self._tell({"t": "ok", "r": msg.get("r"), "s": s.id})

    def _m_adopt(self, msg: dict[str, Any]) -> None:
        """A session the terminal actor held while no keeper did (ours died): its master and
        ring come with this message."""
        fds = self.link.take_fds(2) if self.link is not None else None
        sid = msg.get("s")
        if fds is None and self.link is not None and self.link.cut_short:
            # (the kernel had no descriptor here for them: the terminal keeps the session)
            self._reply_err(msg, "resource_exhausted", f"adopt {sid!r}: its master and ring "
                            "were cut off: no descriptor left", errno=errno.EMFILE)
            return
        if fds is None or not isinstance(sid, str):
            close_all(fds or [])  # (a bad message's descriptors are not kept: nor leaked)
            self._reply_err(msg, "bad_args", f"adopt {sid!r}: a session id, with its master "
                                             "and ring, is needed")
            return
        held = self.sessions.get(sid)
        error = self._adopt(sid, fds, msg)
        if error is not None:
            kind, why, code = error
            extra = {} if code is None else {"errno": code}
            self._reply_err(msg, kind, f"adopt {sid}: {why}", **extra)
            return
        if held is None:  # (one taken from the supervisor is held there already)
            self._keep(self.sessions[sid])
        self._tell({"t": "ok", "r": msg.get("r"), "s": sid})

    def _from_custody(self, sid: str, info: dict[str, Any], fds: list[int]) -> None:
        """A session our predecessor left with the supervisor (both it and the terminal
        actor may have died since), or a session it closed whose grace may not be over."""
        if "closing" in info:
            # (taken in whenever it comes, after a custody given up too: a close is never
            # undone, and what is left of the session dies at the grace's end)
            close_all(fds)
            self._inherit_close(sid, info["closing"])
            return
        if len(fds) != 2:
            close_all(fds)
            logger.warning("session {}: custody gave {} descriptors, not 2", sid, len(fds))
            return
        if not self.custody_pending:
            self._let_go(sid, fds)
            return
        if sid in self._gone_pending and sid not in self.sessions:
            # closed since our take: the answer predates the drop
            logger.info("session {}: handed over by custody after it was closed; let go", sid)
            close_all(fds)
            if self.custody is not None:
                self.custody.drop(sid)  # (its copies too, should the drop not have been applied)
            return
        held = sid in self.sessions
        error = self._adopt(sid, fds, info)
        if error is not None:
            logger.warning("session {}: not taken from custody: {} ({})", sid, error[1],
                           error[0])
        elif not held:
            self.from_custody += 1
            if self.link is not None:  # a terminal welcomed without it: told with `custody`
                self._late.append(sid)

    def _let_go(self, sid: str, fds: list[int]) -> None:
        """A session custody handed over after we gave up on it: the terminal has settled it
        as lost (and started it anew, or will), so no one would own its shell. The
        supervisor's copies go too (unless the key is a session of ours by now: its
        successor under the same id, whose copies it holds)."""
        close_all(fds)
        if sid not in self.sessions and self.custody is not None:
            logger.warning("session {}: handed over by custody after it was given up; let go",
                           sid)
            self.custody.drop(sid)

    def _adopt(self, sid: str, fds: list[int], info: dict[str, Any]
               ) -> tuple[str, str, int | None] | None:
        """Hold a session that is not ours yet: its master and ring fd, and `info` (pid,
        tty, cols, rows, meta). One already held keeps what it has; returns an error (its
        kind, message and errno)."""
        master, ring_fd = fds
        if sid in self.sessions:
            close_all(fds)
            return None
        ring: SessionRing | None = None
        try:
            # every field first: nothing is mapped or opened for a message that is refused
            pid = int(info["pid"])
            started = info.get("started")
            started = None if started is None else int(started)
            cols, rows = winsize(info.get("cols", 80), info.get("rows", 24))
            ring = SessionRing.open(ring_fd)
        except (RingError, OSError, KeyError, TypeError, ValueError) as exc:
            # (mapping the ring takes memory and may take a descriptor: at a limit the
            # session is no worse than it was, and is asked for again, never refused for good)
            if ring is not None:
                ring.close()  # (and its descriptor)
                os.close(master)
            else:
                close_all(fds)
            return (fdroom.error_name(exc, "bad_args"), str(exc),
                    exc.errno if fdroom.exhausted(exc) else None)
        os.set_blocking(master, False)
        try:
            pidfd: int | None = os.pidfd_open(pid)
            if started is not None and process_start(pid) not in (started, None):
                # (the shell ended and its pid is another process's now: not watched)
                os.close(pidfd)
                pidfd = None
        except ProcessLookupError:
            pidfd = None  # already gone: its status is asked for at once
        except OSError as exc:
            # (out of descriptors: a live shell must not be taken for one that has ended;
            # the sender keeps its copy, and the supervisor its own)
            ring.close()
            os.close(master)
            return (fdroom.error_name(exc, "bad_args"),
                    f"pidfd_open({pid}): {exc.strerror or exc}", exc.errno)
        recovered = ring.recover()  # a read our predecessor made and did not commit
        if recovered:
            logger.info("session {}: took in {} bytes read before the last keeper died", sid,
                        recovered)
        s = PtySession(sid, pid, master, str(info.get("tty", "")), pidfd, ring, cols, rows,
                       info.get("meta"), adopted=True, started=started)
        self.sessions[sid] = s
        self.adopted += 1
        self.ptys.add(s)
        logger.info("session {}: adopted (shell pid {}, output from {}, input from {})", sid,
                    pid, ring.write_off, s.in_end)
        return None

    def _keep(self, s: PtySession) -> None:
        """The session's master and ring to the supervisor too (custody): a third holder."""
        if self.custody is not None:
            self.custody.keep(s.id, s.custody_info(), [s.master, s.ring.fd])

    def _m_create(self, msg: dict[str, Any]) -> None:
        # Spawning costs milliseconds: a hundred at once must not hold the loop (it would be
        # taken for a hang), so at most `create_per_turn` a turn.
        self._creates.append((self.link, msg))
        if not self._creating:
            self._creating = True
            self.loop.defer(self._run_creates)

    def _run_creates(self) -> None:
        try:
            for _ in range(min(self.create_per_turn, len(self._creates))):
                link, msg = self._creates.popleft()
                if link is not self.link:
                    # Its terminal actor is gone (or replaced): no one waits for the reply,
                    # and a shell started now would be a session no terminal asked for. Its
                    # successor makes the sessions it knows of again itself.
                    logger.info("create of session {!r} dropped: the terminal actor that "
                                "asked for it is gone", msg.get("s"))
                    continue
                try:
                    self._create(msg)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    self._reply_err(msg, "bad_args", f"create: {type(exc).__name__}: {exc}")
                except OSError as exc:  # (the ring or the pidfd: _create undid the spawn)
                    self._reply_err(msg, fdroom.error_name(exc, "pty_failed"),
                                    f"create: {exc.strerror or exc}", errno=exc.errno)
        finally:  # (whatever else escapes, the creates queued behind still get their turn)
            if self._creates:
                self.loop.defer(self._run_creates)
            else:
                self._creating = False

    def _create(self, msg: dict[str, Any]) -> None:
        sid = msg["s"]
        if not isinstance(sid, str) or sid in self.sessions:
            self._reply_err(msg, "bad_args", f"session id {sid!r} is taken or not a string")
            return
        argv = [str(a) for a in msg["argv"]]
        cols, rows = winsize(msg["cols"], msg["rows"])
        room = fdroom.room_for(fdroom.KEEPER_SESSION_FDS)
        if not room.ok:
            # (before the spawn: nothing is made, no shell is left to kill)
            logger.warning("session {}: {}", sid, room.message("create refused"))
            self._reply_err(msg, "resource_exhausted", room.message(self.name),
                            detail=room.detail())
            return
        try:
            sp = spawn_on_pty(str(msg["path"]), argv,
                              {str(k): str(v) for k, v in msg["env"].items()},
                              msg.get("cwd"), cols, rows)
        except (SpawnError, OSError) as exc:
            self._reply_err(msg, fdroom.error_name(exc, "pty_failed"),
                            f"{msg['path']}: {exc.strerror or exc}", errno=exc.errno)
            return
        ring: SessionRing | None = None
        try:
            # the window, and the scrollback the terminal asked for before it
            scrollback = min(int(msg.get("scrollback", self.scrollback)), 256 << 20)
            ring = SessionRing.create(self.window + max(0, scrollback), self.window,
                                      f"moorage-{sid}")
            base = int(msg.get("base") or 0)
            if base:  # a session recreated after a loss: its stream goes on past the old one's
                ring.start_at(base)
            pidfd = os.pidfd_open(sp.pid)
        except BaseException:
            # no session for it (out of fds or memory, a bad field): the shell goes
            if ring is not None:
                ring.close()
            self._discard_spawned(sp.pid, sp.master)
            raise
        # (our child, not reaped yet: its pid is its own while this is read)
        s = PtySession(sid, sp.pid, sp.master, sp.tty, pidfd, ring, cols, rows,
                       msg.get("meta"), started=process_start(sp.pid))
        self.sessions[sid] = s
        self.ptys.add(s)
        logger.info("session {}: {} pid {} on {}", sid, argv[0], sp.pid, sp.tty)
        self._tell({"t": "ok", "r": msg.get("r"), "s": sid, "pid": sp.pid,
                    "started": s.started, "tty": sp.tty})
        # (no descriptor left to duplicate: each is logged and not sent, the session ours and
        # answered; a holder that lacks its copies works without: the terminal writes
        # through us)
        self._pass(s)
        self._keep(s)

    def _discard_spawned(self, pid: int, master: int, tries: int = 100) -> None:
        """A shell spawned for a session that could not be made: killed, its master closed,
        and reaped once it is gone (looked for on a timer: no wait on the loop)."""
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.close(master)

        def reap(left: int) -> None:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if not done and left > 1:
                self.loop.call_later(0.01, lambda: reap(left - 1))

        reap(tries)

    def _m_write(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        data = msg["data"]
        if isinstance(data, str):
            data = data.encode()
        if s.eof or s.closing:
            self._reply_err(msg, "shell_exited", f"session {s.id} has ended")
            return
        # `at`: where the terminal numbers it in the session's input (ledger.py); what lies
        # before our `in_end` was taken already (a resend after a keeper's death: only what
        # its ledger says was not written comes again, and a write in doubt never does)
        at = msg.get("at")
        at = s.in_end if at is None else int(at)
        s.fold_doubt()  # (the terminal, welcomed, has read a predecessor's doubt by now)
        taken = max(0, min(len(data), s.in_end - at))
        if msg.get("drop") is True and (taken < len(data) or not data):
            # (^C typed to cancel a command not started: what waits here of its input goes
            # too, and what the shell had not read)
            if s.inq:
                self.ptys.drop_input(s, "dropped by an interrupt")
            drop_unread_input(s.master)
        data = data[taken:]
        if s.inq_bytes + len(data) > self.input_limit:
            self._reply_err(msg, "busy", f"session {s.id}: input queue over "
                            f"{self.input_limit} bytes")
            return
        if data:
            was_empty = not s.inq
            s.inq.append((at + taken, bytes(data)))
            s.inq_bytes += len(data)
            s.in_end = at + taken + len(data)
            if was_empty:
                self.ptys.writable(s)
        if msg.get("r") is not None:
            self._tell({"t": "ok", "r": msg["r"], "s": s.id, "queued": len(data),
                        "pending": s.inq_bytes, "done": s.ledger.done})

    def _m_resize(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        cols, rows = winsize(msg["cols"], msg["rows"])
        try:
            set_winsize(s.master, cols, rows)
        except OSError as exc:
            self._reply_err(msg, "shell_exited", f"resize: {exc}")
            return
        s.cols, s.rows = cols, rows
        if self.custody is not None:
            self.custody.info(s.id, s.custody_info())
        if msg.get("r") is not None:
            self._tell({"t": "ok", "r": msg["r"], "s": s.id, "cols": cols, "rows": rows})

    def _m_signal(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        sig = int(msg["sig"])
        # `seq`: the terminal's number of the signal, recorded around the kill (ledger.py);
        # one the ledger says was sent (a resend after a keeper's death) is not sent again,
        # nor is one it says may have been (a keeper killed between its kill(2) and its note)
        seq = msg.get("seq")
        seq = None if seq is None else int(seq)
        if seq is not None:
            done = s.ledger.state()
            sent = done.signal_sent(seq)
            if sent is None:
                self._reply_err(msg, "outcome_unknown", f"session {s.id}: signal {seq} may "
                                "or may not have been sent by a keeper killed while it sent "
                                "it; not sent again")
                return
            if sent:
                self._tell({"t": "ok", "r": msg.get("r"), "s": s.id, "pgid": done.pgid,
                            "sig": sig})
                return
        try:
            if msg.get("to", "fg") == "fg":
                pgid = foreground_group(s)
            elif s.status is None:
                pgid = s.pid
            else:
                raise ProcessLookupError(f"session {s.id}'s shell has exited")
            if seq is not None:
                s.ledger.signalling(seq)
            os.killpg(pgid, sig)
        except OSError as exc:
            if seq is not None:
                s.ledger.not_signalled()
            self._reply_err(msg, "shell_exited", f"signal: {exc.strerror or exc}")
            return
        if seq is not None:
            s.ledger.signalled(seq, pgid)
        self._tell({"t": "ok", "r": msg.get("r"), "s": s.id, "pgid": pgid, "sig": sig})

    def _m_close(self, msg: dict[str, Any]) -> None:
        """Hang the session up; `close_grace` later, kill what is left of it. Its entry in
        custody becomes a `closing` record meanwhile (first: the supervisor holds one or
        the other at every moment), without the master (the PTY must hang up): should we
        die within the grace, our successor does the kill."""
        s = self._session(msg)
        if s is None:
            return
        del self.sessions[s.id]
        self.ptys.hangup(s)
        if self.custody is not None:
            until = time.monotonic() + self.close_grace  # (CLOCK_MONOTONIC: the machine's)
            self.custody.keep(closing_key(s.pid), {"closing": {
                "s": s.id, "pid": s.pid, "started": s.started, "until": until}}, [])
            self.custody.drop(s.id)
            if self.custody_pending:
                self._gone_pending.add(s.id)
        self.ptys.release(s)
        self.ptys.closing[s.pid] = s
        self.in_grace.add(s)
        self.loop.call_later(self.close_grace, lambda: self._closed(s))
        self._tell({"t": "ok", "r": msg.get("r"), "s": s.id})

    def _closed(self, s: PtySession) -> None:
        self.in_grace.discard(s)
        self.ptys.finish_closed(s)
        if s.status is not None:
            self.ptys.closing.pop(s.pid, None)
        if self.custody is not None:
            self.custody.drop(closing_key(s.pid))

    def _inherit_close(self, key: str, record: Any) -> None:
        """A `closing` record a predecessor left in custody: what is left of that session is
        killed when its grace ends (at once if it is over), then the record dropped."""
        try:
            pid, until = int(record["pid"]), float(record["until"])
            started = record.get("started")
            started = None if started is None else int(started)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            logger.warning("custody: closing record {} unreadable ({}); dropped", key, exc)
            if self.custody is not None:
                self.custody.drop(key)
            return
        if key in self.closes_inherited:
            return
        self.closes_inherited[key] = {"s": record.get("s"), "pid": pid, "started": started}
        # (at most our own grace: a record that says later is not to keep a shell for ever)
        left = min(max(0.0, until - time.monotonic()), self.close_grace)
        logger.info("session {}: closed by the last keeper, its grace over in {:.1f} s; what "
                    "is left of it is killed then", record.get("s"), left)
        self.loop.call_later(left, lambda: self._finish_inherited(key))

    def _finish_inherited(self, key: str) -> None:
        record = self.closes_inherited.pop(key, None)
        if record is None:
            return
        killed = kill_closed(record)
        self.closes_finished += 1
        logger.info("session {}: its close finished ({} process(es) left of it killed)",
                    record["s"], killed)
        if self.custody is not None:
            self.custody.drop(key)

    def _m_ack(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is not None:  # (closed meanwhile: nothing to move on)
            self.ptys.resume(s)

    def _m_meta(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is not None:
            s.meta = msg.get("meta")
            if self.custody is not None:
                self.custody.info(s.id, s.custody_info())

    # --- adopted shells' ends -------------------------------------------------------------

    def _exit_status(self, pid: int, done: Callable[[Status | None], None],
                     tries: int = EXIT_STATUS_TRIES) -> None:
        """An adopted shell's status, from the supervisor that reaped it (a subreaper)."""
        if not self.supervisor:
            done(None)
            return

        def got(reply: Reply | None, err: WireError | None) -> None:
            body = reply.body if reply is not None else None
            if err is None and isinstance(body, dict):
                done((body.get("code"), body.get("signal")))
            elif tries > 1 and (err is None or err.name in ("not_found", "timeout",
                                                            "unavailable")):
                self.loop.call_later(EXIT_STATUS_RETRY_S,
                                     lambda: self._exit_status(pid, done, tries - 1))
            else:
                done(None)

        self.outbound.call(self.supervisor, "sup.orphan_exit", {"pid": pid}, timeout=1.0,
                           on_done=got)

    # --- ops ------------------------------------------------------------------------------------

    @op("pty.list", idempotent=True, result={"connected": bool, "sessions": list[HELD]})
    def _op_list(self, call: Call) -> dict[str, Any]:
        """The sessions held, with their offsets (diagnostics; the terminal actor owns them)."""
        return {"connected": self.link is not None,
                "sessions": [s.describe() for s in self.sessions.values()]}
