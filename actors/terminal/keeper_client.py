"""The terminal actor's side of the pty keeper link (link.py has the messages): a component the
actor owns, `KeeperClient`.

The keeper holds the shells and their unacknowledged output. This side connects (and
reconnects) to it, sends it requests and input, takes its output into the sessions, and
acknowledges a chunk once it is published, and not while the publisher has a backlog (a slow
subscriber, XPUB_NODROP) or the session's parser hop lags too far behind: the keeper's
window fills, it stops reading, the shell blocks. After a restart, a session whose output had
a subscriber holds its acks until a subscriber is back (at most `resume_wait_ms`), so what is
published meanwhile is bounded by the keeper's window, not by the shell's speed.

Command lines of a session parsed in this process are written to the PTY here, through the
master the keeper passes along (`hello {fds: true}`), which spares each command a turn of the
keeper (`keeper_write` says why not with the parser actor); typed input
(`term.write`, with its queue limit) and whatever cannot be written at once go through the
keeper, and while the keeper holds any of a session's input (`keeper_writes` unanswered, or
its last answer's `pending`), the session's command lines go there too, behind it. The
masters are closed when the session closes or the keeper link ends, so the PTYs still hang up
with the keeper.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from moorage.actors.runtime import trust
from moorage.actors.runtime.signals import parse_signal
from moorage.actors.terminal.link import LINK_TOKEN_NAME, Link
from moorage.protocol.errors import KINDS, WireError

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Loop, Timer
    from moorage.actors.terminal.session import Session

KeeperCallback = Callable[[dict[str, Any] | None, WireError | None], None]
RECONNECT_S = 0.1
ACK_DELAY_S = 0.05
CATCH_UP_MAX_S = 2.0  # a restored session whose resent output never completes is served anyway


class KeeperClient:
    """The link to the keeper, its messages, and the acks, for the sessions the actor holds.

    What the actor decides stays with it, through the callbacks: `on_welcome(entries)` (the
    keeper's session list: restore or recreate), `on_ready()` (the sessions are known),
    `on_exit(session, info)` (a shell ended); `backlog()` says whether the publisher holds
    messages back (no acks then) and `stopping()` whether to stop reconnecting."""

    def __init__(self, loop: Loop, path: Path, sessions: dict[str, Session], *,
                 ack_bytes: int, resume_wait_s: float, backlog: Callable[[], bool],
                 stopping: Callable[[], bool],
                 on_welcome: Callable[[list[dict[str, Any]]], None],
                 on_ready: Callable[[], None],
                 on_exit: Callable[[Session, dict[str, Any]], None]) -> None:
        self.loop = loop
        self.path = path
        self.sessions = sessions
        self.ack_bytes = ack_bytes
        self.resume_wait_s = resume_wait_s
        self.backlog = backlog
        self.stopping = stopping
        self.on_welcome = on_welcome
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.link: Link | None = None
        self.welcomed = False
        self.pid: int | None = None
        self._waiting: dict[int, KeeperCallback] = {}
        self._next_r = 1
        self._ack_due: set[Session] = set()
        self._ack_timer: Timer | None = None
        self.subscribed: set[str] = set()  # topic prefixes subscribers asked for, ever
        self._until_ready: list[Callable[[bool], None]] = []
        # restored sessions -> the offset the keeper had read: ops wait until their output
        # is back and parsed, so a list or an exec never sees a half-restored session
        self._catching_up: dict[str, int] = {}
        self._keeper = {"welcome": self._k_welcome, "out": self._k_out, "exit": self._k_exit,
                        "ok": self._k_reply, "err": self._k_reply, "fd": self._k_fd}

    # --- the connection ------------------------------------------------------------------------

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))  # a Unix connect: at once or refused
        except OSError as exc:
            sock.close()
            logger.debug("keeper not reachable at {}: {}", self.path, exc)
            self.loop.call_later(RECONNECT_S, self.connect)
            return
        self.link = Link(self.loop, sock, self._on_keeper, self._on_link_closed,
                         on_batch_end=self.flush_acks, accept_fds=True)
        self.link.send({"t": "hello", "fds": True, "tok": trust.token(LINK_TOKEN_NAME)})

    def _on_link_closed(self, reason: str) -> None:
        logger.warning("keeper link closed: {}", reason)
        self.link = None
        self.welcomed = False
        self._catching_up.clear()
        waiting, self._waiting = self._waiting, {}
        for cb in waiting.values():
            cb(None, WireError.of("outcome_unknown", f"pty keeper connection lost ({reason})"))
        for s in self.sessions.values():
            s.abort(WireError.of("outcome_unknown", f"pty keeper connection lost ({reason})"))
        self._ack_due.clear()
        for s in self.sessions.values():
            s.acked = 0  # the next welcome says what the keeper has
            s.drop_input_fd()  # with the keeper gone, the PTYs must hang up
        if not self.stopping():
            self.loop.call_later(RECONNECT_S, self.connect)

    def _on_keeper(self, msg: dict[str, Any]) -> None:
        handler = self._keeper.get(msg["t"])
        if handler is None:
            logger.warning("keeper sent an unknown message {!r}", msg["t"])
            return
        handler(msg)

    # --- requests --------------------------------------------------------------------------------

    def request(self, msg: dict[str, Any], cb: KeeperCallback) -> None:
        if self.link is None or not self.welcomed:
            cb(None, WireError.of("unavailable", "the pty keeper is not connected"))
            return
        r = self._next_r
        self._next_r += 1
        msg["r"] = r
        self._waiting[r] = cb
        self.link.send(msg)

    def write(self, s: Session, data: bytes) -> bool:
        """Input for a command, written to the PTY here when the keeper passed its master,
        holds none of the session's input (else it would overtake that) and the session
        parses in this process (see below), the rest through the keeper; a refusal comes to
        the session's `write_failed`. False: no keeper, nothing was sent.

        Why not with the parser actor: a keeper that is not busy with the write reads the
        shell's echo as it comes, in three or four small chunks instead of one or two, and
        each chunk is a round trip to the parser actor, which costs more than the keeper's
        turn saved (measured: p50 about a tenth slower). In-process, a chunk costs little
        and the turn saved is a tenth to a fifth of the command's time."""
        if self.link is None or not self.welcomed:
            return False
        if s.input_fd is not None and not s.keeper_writes and not s.keeper_backlog and \
                s.hop.via != "actor":
            try:
                n = os.write(s.input_fd, data)
            except OSError:  # full (EAGAIN), or the shell side is gone: the keeper says which
                n = 0
            if n == len(data):
                return True
            data = data[n:]
        self.input(s, data, None)
        return True

    def input(self, s: Session, data: bytes, cb: KeeperCallback | None) -> None:
        """Input through the keeper, counted, so that no input written here directly can
        overtake it: its reply says what still waits there (`pending`)."""
        s.keeper_writes += 1

        def done(r: dict[str, Any] | None, err: WireError | None) -> None:
            s.keeper_writes -= 1
            if r is not None:
                s.keeper_backlog = bool(r.get("pending"))
            if cb is not None:
                cb(r, err)
            elif err is not None:
                s.write_failed(err)

        self.request({"t": "write", "s": s.id, "data": data}, done)

    def signal(self, s: Session, sig: str, to: str) -> None:
        self.request({"t": "signal", "s": s.id, "sig": parse_signal(sig), "to": to},
                            lambda _r, err: err is None or logger.info(
                                "session {}: signal not sent: {}", s.id, err.message))

    def meta(self, s: Session) -> None:
        if self.link is not None:
            self.link.send({"t": "meta", "s": s.id, "meta": s.meta})

    # --- what the keeper sends ----------------------------------------------------------------

    def _k_reply(self, msg: dict[str, Any]) -> None:
        cb = self._waiting.pop(msg.get("r"), None)  # type: ignore[arg-type]
        err = None
        if msg["t"] == "err":
            name = msg.get("name") if msg.get("name") in KINDS else "internal"
            err = WireError.of(name, str(msg.get("message", "")),
                               detail={"errno": msg["errno"]} if "errno" in msg else None)
        if cb is not None:
            cb(None, err) if err is not None else cb(msg, None)
        elif err is not None:
            s = self.sessions.get(msg.get("s"))  # type: ignore[arg-type]
            if msg.get("what") == "write" and s is not None:
                s.write_failed(err)
            else:
                logger.warning("keeper: {}", err.message)

    def _k_welcome(self, msg: dict[str, Any]) -> None:
        self.pid = msg.get("pid")
        self.welcomed = True
        entries = msg.get("sessions", [])
        self.on_welcome(entries)
        for e in entries:
            s = self.sessions.get(e["s"])
            target = int(e.get("read", e["acked"]))
            if s is not None and s.offset < target:
                self._catching_up[s.id] = target
        self.on_ready()
        if self._catching_up:
            self.loop.call_later(CATCH_UP_MAX_S, self._caught_up_anyway)
        else:
            self._release_waiting()

    @property
    def ready(self) -> bool:
        """Connected, and every restored session caught up with what the keeper had read."""
        return self.welcomed and not self._catching_up

    def when_ready(self, fn: Callable[[bool], None], wait_s: float) -> None:
        """`fn(True)` once ready, or `fn(False)` after `wait_s` without it."""
        self._until_ready.append(fn)

        def give_up() -> None:
            if fn in self._until_ready:
                self._until_ready.remove(fn)
                fn(False)

        self.loop.call_later(wait_s, give_up)

    def forget(self, s: Session) -> None:
        """`s` is closed: nothing of it is acknowledged any more."""
        self._ack_due.discard(s)

    def close(self, reason: str) -> None:
        if self.link is not None:
            self.link.close(reason)

    def _release_waiting(self) -> None:
        waiting, self._until_ready = self._until_ready, []
        for fn in waiting:
            fn(True)

    def _caught_up(self, sid: str) -> None:
        if self._catching_up.pop(sid, None) is not None and not self._catching_up:
            self._release_waiting()

    def _caught_up_anyway(self) -> None:
        if self._catching_up:
            logger.warning("keeper resent less than it had read for {}; serving anyway",
                           sorted(self._catching_up))
            self._catching_up.clear()
            self._release_waiting()

    def _k_out(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is not None:
            s.on_output(int(msg["off"]), msg["data"])
            self._ack_due.add(s)
            target = self._catching_up.get(s.id)
            if target is not None and s.offset >= target:
                self._caught_up(s.id)

    def _k_fd(self, msg: dict[str, Any]) -> None:
        fd = self.link.take_fd() if self.link is not None else None
        if fd is None:
            return
        s = self.sessions.get(msg["s"])
        if s is None:
            os.close(fd)
            return
        s.set_input_fd(fd)

    def _k_exit(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is None or s.exited is not None:
            return
        info = {"code": msg.get("code"), "signal": msg.get("signal")}
        self._caught_up(s.id)  # nothing more will come
        self.on_exit(s, info)

    # --- acks ---------------------------------------------------------------------------------

    def flush_acks(self, now: bool = False) -> None:
        """Acknowledge what is published; nothing while the publisher has a backlog, and
        nothing for a session whose parser hop lags too far behind.

        An ack is not on any command's path, and each one wakes the keeper (a process switch
        and a turn of its loop, a measurable share of a command's cost when they come every
        few commands): small amounts are acked together `ACK_DELAY_S` later, a quarter
        window's worth at once. What waits for an ack is at most resent to a successor, which
        drops it by offset."""
        if not self._ack_due or self.link is None or self.backlog():
            return
        if not now and all(s.offset - s.acked < self.ack_bytes for s in self._ack_due):
            if self._ack_timer is None:
                self._ack_timer = self.loop.call_later(ACK_DELAY_S, self._ack_later)
            return
        for s in [s for s in self._ack_due if not s.hold_acks and not s.parse_lags()]:
            self.link.send({"t": "ack", "s": s.id, "off": s.offset})
            s.acked = s.offset
            self._ack_due.discard(s)

    def _ack_later(self) -> None:
        self._ack_timer = None
        self.flush_acks(now=True)

    def acks_ready(self) -> None:
        """Something that held acks back is over (a parser hop caught up)."""
        self.flush_acks(now=True)

    def on_subscribed(self, topic: str) -> None:
        """A subscription to `topic` (a prefix): the sessions whose output it covers are
        watched, and those waiting for their subscribers after a restart may go on."""
        self.subscribed.add(topic)
        for s in self.sessions.values():
            if f"term.out.{s.id}".startswith(topic):
                self.watched(s)

    def watched(self, s: Session) -> None:
        if not s.meta.get("watched"):
            s.meta["watched"] = True
            self.meta(s)
        if s.hold_acks:
            s.hold_acks = False
            self.flush_acks(now=True)

    def hold_until_watched(self, s: Session) -> None:
        """After a restart: no acks for `s` until its output has a subscriber again."""
        if any(f"term.out.{s.id}".startswith(t) for t in self.subscribed):
            return
        s.hold_acks = True

        def give_up() -> None:
            if s.hold_acks:
                logger.warning("session {}: no subscriber back in {} s; output goes on",
                               s.id, self.resume_wait_s)
                s.hold_acks = False
                self.flush_acks(now=True)

        self.loop.call_later(self.resume_wait_s, give_up)
