"""The terminal actor's side of the pty keeper link (link.py has the messages): a component the
actor owns, `KeeperClient`.

The keeper starts the shells and reads their output into each session's ring (ring.py); this
side holds a copy of every session's PTY master and ring too, so a session outlives whichever
of the two processes dies:
- a new terminal actor (ours died) gets every session the keeper holds, fds included, and
  `on_restore` makes a session of each from its ring (caught up on a slice a loop turn:
  `catch_up`); fds that do not come are asked for again (`pass`); a session the keeper
  still holds whose fds do not come even then (out of descriptors, on either side) is
  `unavailable` here: never closed, asked for again with back-off until its fds come and it
  is restored, ops on it answered `unavailable` meanwhile; one the keeper no longer holds
  (`pass` answered session_not_found), or whose ring cannot be used, is taken for lost
  (closed in the keeper, reported and started anew: restore.reconcile); a keeper
  still waiting for what its supervisor keeps (custody, keeper/actor.py) says so in its
  welcome, and sends the sessions that come with the answer later (`custody`): until then no
  other session is taken for lost;
- a new keeper (its predecessor died) gets from us, with `adopt`, every session we hold that it
  does not: master, ring, the shell's pid, the actor's state;
- a session closed here stays closed: a `close` sent to a keeper that dies (or hangs, and is
  killed) before it answers is lost with it, while the supervisor's custody still holds the
  PTY and hands it to the next keeper, which names it in its welcome. So each close leaves a
  tombstone (`Tombstones`, on disk beside the session records: a successor of ours needs it
  too) until a keeper answers it; a tombstoned session a keeper names is closed again, never
  restored, and the tombstone goes once a keeper confirms the close, names another shell
  under that id, or holds no such session (its custody answer in).
While no keeper is connected the sessions stay as they are (the shells block once the PTY's
buffer is full: nothing is read, nothing is lost), execs in flight go on waiting, and ops that
need the keeper wait for it (`when_ready`).

A keeper's death is a pause for the requests it had too (`SessionOps`): input, resizes and
signals are kept, in order, until a keeper answers them (input until it is written: what a
keeper queued dies with it), and what the dead one had not done is sent again to the next,
once welcomed. The keeper writes down in the session's ring how far it has written the input
and which signal it sent last (keeper/ledger.py), so nothing is done twice; the one thing no
record tells (a keeper killed between its write(2) or kill(2) and writing that down) is
answered `outcome_unknown`. A request whose caller cannot wait for the next keeper (no keeper
within keeper_wait_ms, or its deadline first) is answered by the record too, and one the dead
keeper had not done is dropped (`unavailable`). A `create` waits for the next keeper's word
(restore.Creation): the session it made, or nothing, and the create sent again.

Output: the keeper says how far the ring has been written (`out {end}`); the actor reads the
new bytes from the ring and, once they are handled (published, parsed, and taken by the
consumers that acknowledge, see actor.py), moves the ring's `ack_off` (shared memory: no
message), which makes room in the keeper's window. Only when the keeper said it stopped for a
full window does an `ack` message wake it. After a restart, a session whose output had a
subscriber moves nothing until a subscriber is back (at most `resume_wait_ms`), so what is
published meanwhile is bounded by the window, not by the shell's speed.

Command lines are written to the PTY here, through our copy of the master, while the keeper
holds none of the session's input (else they would overtake it): then no keeper's death can
lose them. Typed input (`term.write`, with its queue limit) and whatever cannot be written at
once go through the keeper.
"""

from __future__ import annotations

import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from moorage.actors.runtime import trust
from moorage.actors.runtime.custody import close_all
from moorage.actors.runtime.signals import parse_signal
from moorage.actors.terminal.keeper.ledger import Ledger, LedgerState
from moorage.actors.terminal.keeper.ptys import drop_unread_input
from moorage.actors.terminal.keeper.spawn import get_winsize
from moorage.actors.terminal.link import LINK_TOKEN_NAME, Link
from moorage.actors.terminal.ring import RingError, SessionRing
from moorage.actors.terminal.specs import SpecStore
from moorage.protocol.errors import KINDS, WireError

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Loop, Timer
    from moorage.actors.terminal.session import Session

KeeperCallback = Callable[[dict[str, Any] | None, WireError | None], None]
RECONNECT_S = 0.02
# A welcome's (or a `custody`'s) sessions' fds: waited for this long after the last of them
# came or was caught up on (restoring them is our own time, not the keeper's); then those
# missing are asked for once more (`pass`), and after as long again taken for lost.
FDS_WAIT_S = 2.0
FDS_UNREAD_WAITS = 3  # waits added, at most, while the link holds what we have not read yet
CATCH_UP_TURN_S = 0.02  # catching restored sessions up takes at most about this much a turn
COPIES_TRIES = 6  # a session's copies asked for again (ask_copies) this often, further apart
COPIES_RETRY_S = 0.25  # ... the first time this long after the keeper could not send them,
# then every COPIES_RETRY_S x 2^(COPIES_TRIES - 1) (8 s) for as long as they do not come
UNAVAILABLE_RETRY_MAX_S = 5.0  # an unavailable session's fds: asked for at most this far apart


def _nothing() -> None:
    pass


def _process_gone(pid: int | None) -> bool:
    """Whether the process `pid` has exited (a zombie too); False when that cannot be told."""
    if pid is None:
        return False
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:  # (poll, not select: a terminal of many sessions holds descriptors past 1024)
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(0))
    finally:
        os.close(fd)


class KeeperOp:
    """A request of one session's that a keeper's death must not lose: a `write` (its bytes
    kept until the keeper's ledger says they are written, answered or not), a `resize` or a
    `signal` (until answered). `r`: its number on the live link, None while it waits to be
    sent again; `cb`: None once answered; `deadline`: when its caller stops waiting
    (monotonic), None for the actor's own; `n`: its place among the session's requests (the
    order they are sent again in); `kept`: an answered write in SessionOps.kept."""

    __slots__ = ("cb", "deadline", "end", "kept", "kind", "msg", "n", "r", "timer")

    def __init__(self, kind: str, msg: dict[str, Any], cb: KeeperCallback | None,
                 deadline: float | None, end: int = 0) -> None:
        self.kind = kind
        self.msg = msg
        self.cb = cb
        self.deadline = deadline
        self.end = end  # a write: the end of its bytes in the session's input numbering
        self.r: int | None = None
        self.timer: Timer | None = None
        self.n = 0
        self.kept = False

    @property
    def at(self) -> int:
        return int(self.msg.get("at", 0))


class SessionOps:
    """A session's requests to the keeper that a keeper's death must not lose (KeeperOp),
    and where its numbering of input bytes and signals goes on (keeper/ledger.py: from 0 for
    a session made here, from the keeper's word for one restored).

    `ops`: those not answered yet, in the order they were made (the keeper answers in that
    order: the one answered is at the front); `kept`: writes answered `queued` whose bytes
    the keeper has not written yet, in the order of their ends, let go of from the front as
    the keeper's `done` passes them. A shell that reads nothing for a while has thousands of
    these: no reply walks them all."""

    __slots__ = ("kept", "made", "next_at", "next_sig", "ops", "session")

    def __init__(self, session: Session, next_at: int = 0, signals: int = 0) -> None:
        self.session = session
        self.next_at = next_at
        self.next_sig = signals + 1
        self.made = 0  # requests made, numbering them (KeeperOp.n)
        self.ops: deque[KeeperOp] = deque()
        self.kept: deque[KeeperOp] = deque()

    def unlist(self, op: KeeperOp) -> None:
        """`op` is no longer waiting for an answer (or for the keeper to write it)."""
        if op.kept:
            if self.kept and self.kept[0] is op:
                self.kept.popleft()
            elif op in self.kept:
                self.kept.remove(op)
        elif self.ops and self.ops[0] is op:
            self.ops.popleft()
        elif op in self.ops:
            self.ops.remove(op)

    def keep(self, op: KeeperOp) -> None:
        """`op`, a write answered `queued` (out of `ops`), kept until the keeper has
        written it: in the order of the ends (answers come in order, so almost always at
        the back)."""
        op.kept = True
        if not self.kept or self.kept[-1].end <= op.end:
            self.kept.append(op)
            return
        i = len(self.kept)
        while i > 0 and self.kept[i - 1].end > op.end:
            i -= 1
        self.kept.insert(i, op)

    def written(self, done: int) -> None:
        """The keeper's word that the input before `done` is written (or dropped)."""
        while self.kept and self.kept[0].end <= done:
            self.kept.popleft()

    def unanswered(self) -> list[KeeperOp]:
        """Every request not on the link (waiting for the next keeper), kept writes too, in
        the order they were made."""
        return sorted([op for op in self.ops if op.r is None]
                      + [op for op in self.kept if op.r is None], key=lambda op: op.n)


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


class Tombstones(SpecStore):
    """The sessions closed here whose close no keeper has confirmed yet: by id, the shell
    that was closed (pid, start time), so that a session made again under the same id is
    never taken for it. On disk as the session records are (SpecStore: msgpack, 0600, one
    file replaced whole, a failed write tried again every RETRY_S), written before the close
    is sent: a successor of this actor, which may get the shell back from the keeper's
    custody, must know it was closed. Those a keeper confirms go in one write a loop turn
    (`drop_soon`, through `defer`); until a write lands, what is in memory serves. No file
    while there are none. A tombstone always names its shell's pid: one that named none
    would match whatever shell is made again under the id, and close it.

    `call_later`, for the retries, is the keeper client's loop's when not given (the actor
    makes its tombstones before its KeeperClient)."""

    NOUN = "closed-session records"
    UNSAVED = "a successor of this actor may restore a session closed here"
    UNRECORDED = ("closed, and not recorded so (the runtime directory takes no write): a "
                  "successor of this actor may restore it")

    def __init__(self, path: Path, defer: Callable[[Callable[[], None]], Any],
                 call_later: Callable[[float, Callable[[], None]], Timer] | None = None
                 ) -> None:
        super().__init__(path, call_later, defer=defer)

    @staticmethod
    def _valid(loaded: dict[Any, Any]) -> dict[str, dict[str, Any]]:
        """Those that name their shell's pid (see the class docstring)."""
        return {sid: {"pid": _int_or_none(v.get("pid")),
                      "started": _int_or_none(v.get("started"))}
                for sid, v in loaded.items()
                if isinstance(sid, str) and isinstance(v, dict) and _int_or_none(v.get("pid"))}

    def _write(self) -> None:
        if self.specs:
            super()._write()
        else:
            self.path.unlink(missing_ok=True)

    @property
    def closed(self) -> dict[str, dict[str, Any]]:
        """sid -> {"pid", "started"} of the shell closed."""
        return self.specs

    def __contains__(self, sid: str) -> bool:
        return sid in self.specs

    def add(self, sid: str, pid: int | None, started: int | None) -> bool:
        """A tombstone for the shell `pid` of `sid`; none (False) when its pid is unknown."""
        return sid in self.add_many({sid: (pid, started)})

    def add_many(self, shells: dict[str, tuple[int | None, int | None]]) -> set[str]:
        """A tombstone for each session's shell (pid, start time), in one write; returns
        the sessions that have one (not those whose pid is unknown)."""
        stones = {sid: {"pid": pid, "started": started}
                  for sid, (pid, started) in shells.items() if pid}
        self.put_many(stones)
        return set(stones)

    def names(self, sid: str, pid: Any, started: Any) -> bool:
        """Whether the session `sid` with this shell (pid, start time: either unknown to
        the caller matches) is the one closed here. A tombstone that names no pid matches
        no shell."""
        t = self.specs.get(sid)
        if t is None or t["pid"] is None:
            return False
        return (pid is None or t["pid"] == pid) and (
            t["started"] is None or started is None or t["started"] == started)


class KeeperClient:
    """The link to the keeper, its messages, and the acks, for the sessions the actor holds.

    What the actor decides stays with it, through the callbacks: `on_restore(entry, master,
    ring)` makes a session of one the keeper holds and we do not (and hands the catch-up on
    its ring to `catch_up`: the welcome is complete once that is over), `on_welcome(entries,
    settled)` (the keeper's whole list, once every session is restored: which of ours are
    lost, when `settled`; while the keeper's custody answer is still to come, not `settled`:
    none is lost yet, the missing ones may still come), `on_ready()` (the sessions the
    keeper holds are known), `on_exit(session, info)` (a shell ended); `stopping()` says
    whether to stop reconnecting."""

    def __init__(self, loop: Loop, path: Path, sessions: dict[str, Session], *,
                 tombstones: Tombstones, resume_wait_s: float, stopping: Callable[[], bool],
                 lost_wait_s: float = 3.0,
                 on_restore: Callable[[dict[str, Any], int, SessionRing], None],
                 on_welcome: Callable[[list[dict[str, Any]], bool], None],
                 on_ready: Callable[[], None],
                 on_exit: Callable[[Session, dict[str, Any]], None],
                 on_absent: Callable[[], None] = lambda: None,
                 on_available: Callable[[str], None] = lambda sid: None,
                 subscribed_to: Callable[[str], bool] = lambda topic: False) -> None:
        self.loop = loop
        self.path = path
        self.sessions = sessions
        self.resume_wait_s = resume_wait_s
        self.stopping = stopping
        self.on_restore = on_restore
        self.on_welcome = on_welcome
        self.on_ready = on_ready
        self.on_exit = on_exit
        self.on_absent = on_absent
        self.on_available = on_available  # an unavailable session, restored at last
        self.link: Link | None = None
        self.welcomed = False
        self.pid: int | None = None
        self.connections = 0  # links made: more than one means a keeper (or we) restarted
        self.adopted = 0  # sessions handed to a keeper that had lost them (its predecessor's)
        self.tombstones = tombstones  # sessions closed here, their close not confirmed yet
        if tombstones.call_later is None:  # (their failed writes tried again on our loop)
            tombstones.call_later = loop.call_later
        self._closing: dict[str, Link] = {}  # session -> the link its `close` is waiting on
        self.closed_again = 0  # closed sessions a keeper named again, and closed again
        self._waiting: dict[int, KeeperCallback] = {}
        # what a request does when the link goes before its answer, if not fail
        # `outcome_unknown` (a create, input, a resize, a signal: they wait for the next keeper)
        self._on_lost: dict[int, Callable[[], None]] = {}
        # Each session's requests that a keeper's death must not lose (SessionOps); the pid
        # of the keeper they went to, when its link was lost; how long one whose caller waits
        # waits for the next keeper; and how many were sent again, and how many answered
        # outcome_unknown (killed between doing it and writing that down), over our life.
        self._ops: dict[str, SessionOps] = {}
        self._lost_pid: int | None = None
        self.lost_wait_s = lost_wait_s
        self.ops_resent = 0
        self.ops_in_doubt = 0
        self._asking: dict[str, int] = {}  # session -> `pass` asked so far (ask_copies)
        self._next_r = 1
        # Whether a subscriber connected now covers a topic (the actor's own record of its
        # connections' subscriptions: no set here that would keep every topic ever asked)
        self.subscribed_to = subscribed_to
        self._until_ready: list[Callable[[bool], None]] = []
        self._until_settled: list[Callable[[bool], None]] = []
        # The keeper's custody answer is still to come (its welcome said so): a session
        # missing from the welcome may come with its `custody` message.
        self.custody_pending = False
        self._told: list[dict[str, Any]] = []  # every session the keeper told of on this link
        # a `custody` that came while the welcome was being completed: handled after it
        self._late: dict[str, Any] | None = None
        # The entries being completed (a welcome's or a `custody`'s), the sessions among them
        # whose fds have not come yet, what follows once they have, and which round this is
        # (a timer of an earlier one finds another number).
        self._entries: list[dict[str, Any]] = []
        self._awaiting_fds: set[str] = set()
        self._then: Callable[[], None] = _nothing
        self._round = 0
        self._overdue: Timer | None = None
        self._unread_waits = 0
        self._passed_again: set[str] = set()  # (this round's, asked for with `pass`)
        # the keeper's answer to the last `pass` of a session this round asked for again
        # ("ok" or the error's name): session_not_found, and only that, says it is lost
        self._pass_answers: dict[str, str] = {}
        self._broken: set[str] = set()  # (this round's: copies came, their ring unusable)
        # Sessions the keeper holds whose fds did not come, even asked for again (out of
        # descriptors, theirs or ours): their entries, asked for again with back-off (never
        # closed: their shells are alive), restored when they come; ops on them answer
        # `unavailable` meanwhile. A new link's welcome names them again.
        self.unavailable: dict[str, dict[str, Any]] = {}
        # Restored sessions whose rings are still being caught up on, one at a time, a slice
        # a turn (their next slice: restore.py), and the exits the keeper told of meanwhile.
        self._catching_up: dict[str, tuple[Session, Callable[[float], bool]]] = {}
        self._late_restored: set[str] = set()  # (unavailable ones: on_available once done)
        self._catch_up_armed = False
        self._exits: dict[str, dict[str, Any]] = {}
        self._keeper = {"welcome": self._k_welcome, "out": self._k_out, "exit": self._k_exit,
                        "ok": self._k_reply, "err": self._k_reply, "fds": self._k_fds,
                        "custody": self._k_custody, "written": self._k_written}

    # --- the connection ------------------------------------------------------------------------

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            # A Unix connect completes at once, or fails: refused, or EAGAIN while the
            # keeper's backlog is full (a keeper that is stopped or slow to accept; a
            # blocking connect would wait for it, and this loop with it).
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            logger.debug("keeper not reachable at {}: {}", self.path, exc)
            self.loop.call_later(RECONNECT_S, self.connect)
            self.on_absent()
            return
        self.connections += 1
        self.link = Link(self.loop, sock, self._on_keeper, self._on_link_closed,
                         accept_fds=True)
        self.link.send({"t": "hello", "tok": trust.token(LINK_TOKEN_NAME),
                        # (those we lack copies of are passed again with the welcome)
                        "held": [sid for sid, s in self.sessions.items()
                                 if s.ring is not None]})

    def _on_link_closed(self, reason: str) -> None:
        logger.warning("keeper link closed: {}", reason)
        self.link = None
        self.welcomed = False
        # (sessions not settled stay so: the next keeper's welcome settles them)
        self.custody_pending = False
        self._late = None
        self._round += 1
        self._awaiting_fds.clear()
        self._passed_again.clear()
        self._pass_answers.clear()
        self._broken.clear()
        self.unavailable.clear()  # (named again by the next welcome, fds with it)
        self._asking.clear()  # (the next link's welcome passes every session we lack)
        self._lost_pid = self.pid  # (the keeper our requests went to: its welcome's pid)
        waiting, self._waiting = self._waiting, {}
        on_lost, self._on_lost = self._on_lost, {}
        for r, cb in waiting.items():
            lost = on_lost.get(r)
            if lost is not None:
                lost()
            else:
                cb(None, WireError.of("outcome_unknown",
                                      f"pty keeper connection lost ({reason})"))
        for s in self.sessions.values():
            # The sessions stay: we hold their masters and rings, and the requests the keeper
            # had not done (SessionOps), for the next one; meanwhile input goes after them.
            ops = self._ops.get(s.id)
            s.keeper_writes = 0
            s.keeper_backlog = ops is not None and ops.session is s and (
                bool(ops.kept) or any(op.kind == "write" for op in ops.ops))
            s.keeper_paused = False
        if not self.stopping():
            self.loop.call_later(RECONNECT_S, self.connect)

    def _on_keeper(self, msg: dict[str, Any]) -> None:
        handler = self._keeper.get(msg["t"])
        if handler is None:
            logger.warning("keeper sent an unknown message {!r}", msg["t"])
            return
        handler(msg)

    def close(self, reason: str) -> None:
        if self.link is not None:
            self.link.close(reason)

    # --- requests --------------------------------------------------------------------------------

    def request(self, msg: dict[str, Any], cb: KeeperCallback,
                lost: Callable[[], None] | None = None) -> None:
        """Send `msg`, `cb` to have the keeper's answer; `lost`: called instead, should the
        link go before it (else `cb` gets `outcome_unknown`)."""
        if self.link is None or not self.welcomed:
            cb(None, WireError.of("unavailable", "the pty keeper is not connected"))
            return
        self._send(msg, cb, lost)

    def close_session(self, sid: str, pid: int | None, started: int | None) -> None:
        """End a session in the keeper for good: its tombstone first (on disk), then
        `close`; should the keeper not answer it (it dies, or hangs and is killed, with the
        close unread), the next welcome that names the session has it closed again. What
        was still to be sent again for it goes (its callers told the session is closed).
        A shell not known here (`pid` None) is looked for in what the keeper told of the
        session; if not found, the close goes without a tombstone: one naming no shell
        would close whatever is made again under the id."""
        self.close_sessions({sid: (pid, started)})

    def close_sessions(self, shells: dict[str, tuple[int | None, int | None]]) -> None:
        """`close_session` for each session's shell (pid, start time): every tombstone in
        one write, before any of the closes."""
        known: dict[str, tuple[int | None, int | None]] = {}
        told: dict[Any, dict[str, Any]] | None = None
        for sid, (pid, started) in shells.items():
            if pid is None:
                if told is None:  # (one index of what the keeper told, for all of them)
                    told = {e.get("s"): e for e in reversed((*self._entries, *self._told))}
                    told.update(self.unavailable)  # (the first of each wins, these first)
                entry = told.get(sid, {})
                pid, started = _int_or_none(entry.get("pid")), _int_or_none(entry.get("started"))
            known[sid] = (pid, started)
        stoned = self.tombstones.add_many(known)
        for sid in known:
            if sid not in stoned:
                logger.warning("session {}: closed with its shell unknown here; no tombstone, "
                               "so a close lost with the keeper is not sent again", sid)
            self._forget_ops(sid)
            self._send_close(sid)

    def _send_close(self, sid: str) -> None:
        """`close` a tombstoned session, unless one is on its way on this link already
        (welcomed or not yet: the keeper answers a hello first, then this)."""
        link = self.link
        if link is None or self._closing.get(sid) is link:
            return
        self._closing[sid] = link
        self._send({"t": "close", "s": sid}, lambda _r, err: self._close_answered(sid, link, err))

    def _close_answered(self, sid: str, link: Link, err: WireError | None) -> None:
        """A keeper's answer to a tombstoned session's `close`: `ok` confirms it (the
        keeper kills what is left at the grace's end, or its successor does); so does
        `session_not_found` from a keeper that has its custody's answer (it holds no such
        session, and none will come to it). Anything else (the link lost), and a keeper
        still waiting for its custody, leave the tombstone for the next welcome, or for
        that answer."""
        if self._closing.get(sid) is link:
            del self._closing[sid]
        if err is None or (err.name == "session_not_found" and link is self.link
                           and not self.custody_pending):
            self.tombstones.drop_soon(sid)

    def _less_closed(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A welcome's (or `custody`'s) entries less the sessions closed here: each that
        is the very shell a tombstone names is closed again, not restored; a tombstone
        whose id the keeper holds with another shell (made again under it) goes."""
        if not self.tombstones.closed:
            return entries
        kept = []
        for e in entries:
            sid = e["s"]
            if sid in self.tombstones and sid not in self.sessions:
                if self.tombstones.names(sid, e.get("pid"), e.get("started")):
                    logger.warning("session {}: closed here, but the keeper holds it still "
                                   "(its close was lost with a keeper): closed again", sid)
                    self.closed_again += 1
                    self._send_close(sid)
                    continue
                self.tombstones.drop_soon(sid)
            kept.append(e)
        return kept

    def _unheld_closed(self) -> None:
        """The keeper's whole list is in (its custody answered): a tombstone whose session
        it did not name, whose close is not on its way, is of a session no keeper holds."""
        for sid in [sid for sid in self.tombstones.closed
                    if self.link is None or self._closing.get(sid) is not self.link]:
            logger.info("session {}: closed here, and held by no keeper", sid)
            self.tombstones.drop_soon(sid)

    def _send(self, msg: dict[str, Any], cb: KeeperCallback,
              lost: Callable[[], None] | None = None) -> int:
        """A request on the link, welcomed or not yet (the welcome's own business); its
        number."""
        assert self.link is not None
        r = self._next_r
        self._next_r += 1
        msg["r"] = r
        self._waiting[r] = cb
        if lost is not None:
            self._on_lost[r] = lost
        self.link.send(msg)
        return r

    def write(self, s: Session, data: bytes, refused: Callable[[WireError], None]) -> bool:
        """Input for a command, written to the PTY here, through our copy of the master, when
        the keeper holds none of the session's input (else it would overtake that); the rest
        through the keeper, a refusal (it never reached the shell) going to `refused`, the
        command's own: by then the session may be running another. False: no keeper,
        nothing was sent.

        Written here because then no keeper's death can lose it (input queued in a keeper
        that dies is gone, and a command that never reached its shell would be waited for in
        vain), and a turn of the keeper is saved."""
        if self.link is None or not self.welcomed:
            return False
        if s.master is not None and not s.keeper_writes and not s.keeper_backlog:
            try:
                n = os.write(s.master, data)
            except OSError:  # full (EAGAIN), or the shell side is gone: the keeper says which
                n = 0
            if n == len(data):
                return True
            data = data[n:]

        def done(_r: dict[str, Any] | None, err: WireError | None) -> None:
            # (outcome_unknown: the keeper died holding it; it may have reached the shell,
            # so the command goes on waiting for its markers)
            if err is not None and err.name != "outcome_unknown":
                refused(err)

        self.input(s, data, done)
        return True

    def interrupt(self, s: Session) -> None:
        """^C typed, to cancel a command not started: the terminal drops what the shell had
        not read of its input, and the keeper what it still holds of it (it would be
        written after the ^C, and read as a command of its own)."""
        if s.master is not None and not s.keeper_writes and not s.keeper_backlog:
            drop_unread_input(s.master)
            self.write(s, b"\x03", lambda _err: None)
            return
        self.input(s, b"\x03", lambda _r, _err: None, drop=True)

    def input(self, s: Session, data: bytes, cb: KeeperCallback, *, drop: bool = False,
              deadline: float | None = None) -> None:
        """Input through the keeper, counted, so that no input written here directly can
        overtake it: its reply says what still waits there (`pending`). Numbered in the
        session's input (keeper/ledger.py) and kept until the keeper has written it: a
        keeper's death does not lose it (SessionOps). `deadline` (monotonic): when the
        caller stops waiting for a keeper that died to be replaced."""
        ops = self.session_ops(s)
        msg: dict[str, Any] = {"t": "write", "s": s.id, "data": data, "at": ops.next_at}
        if drop:
            msg["drop"] = True
        ops.next_at += len(data)
        self._issue(s, KeeperOp("write", msg, cb, deadline, ops.next_at))

    def resize(self, s: Session, cols: int, rows: int, cb: KeeperCallback,
               deadline: float | None = None) -> None:
        """Set the session's window size through the keeper (which keeps it for its
        successor); a keeper's death does not lose it (SessionOps)."""
        self._issue(s, KeeperOp("resize", {"t": "resize", "s": s.id, "cols": cols,
                                           "rows": rows}, cb, deadline))

    def signal(self, s: Session, sig: str | int, to: str, cb: KeeperCallback | None = None,
               deadline: float | None = None) -> None:
        """Have the keeper signal the session's foreground process group (`to` "fg") or its
        shell; numbered (keeper/ledger.py), so that a keeper's death neither loses it nor
        has it sent twice (SessionOps). Without `cb` (the actor's own), a refusal is
        logged."""
        if cb is None:
            def cb(_r: dict[str, Any] | None, err: WireError | None) -> None:
                if err is not None:
                    logger.info("session {}: signal not sent: {}", s.id, err.message)

        ops = self.session_ops(s)
        seq = ops.next_sig
        ops.next_sig += 1
        self._issue(s, KeeperOp("signal", {"t": "signal", "s": s.id, "sig": parse_signal(sig),
                                           "to": to, "seq": seq}, cb, deadline))

    # --- requests that outlive a keeper ------------------------------------------------------

    def session_ops(self, s: Session, input_end: int = 0, signals: int = 0) -> SessionOps:
        """`s`'s SessionOps, made (numbered from `input_end` and `signals`) if it has none:
        a session made or restored here, not one of the same id before it."""
        ops = self._ops.get(s.id)
        if ops is None or ops.session is not s:
            ops = self._ops[s.id] = SessionOps(s, input_end, signals)
        return ops

    @property
    def input_kept(self) -> int:
        """Writes answered `queued` whose copies are kept here until the keeper has written
        them (SessionOps.kept)."""
        return sum(len(ops.kept) for ops in self._ops.values())

    @property
    def ops_waiting(self) -> int:
        """Requests of the sessions' (SessionOps) not answered yet: sent to the keeper, or
        waiting for the next one."""
        return sum(op.cb is not None for ops in self._ops.values() for op in ops.ops)

    def _forget_ops(self, sid: str) -> None:
        """A session closed here: what waits to be sent again for it never will be."""
        ops = self._ops.pop(sid, None)
        if ops is None:
            return
        for op in ops.ops:
            if op.r is None:
                self._answer(op, None, WireError.of(
                    "shell_exited", f"session {sid} was closed before the pty keeper that "
                    "died with this request was replaced; it was not done"))

    def _issue(self, s: Session, op: KeeperOp) -> None:
        if self.link is None or not self.welcomed:
            self._answer(op, None, WireError.of("unavailable", "the pty keeper is not connected"))
            return
        ops = self.session_ops(s)
        ops.made += 1
        op.n = ops.made
        ops.ops.append(op)
        self._send_op(s, op)

    def _send_op(self, s: Session, op: KeeperOp) -> None:
        if op.kind == "write":
            s.keeper_writes += 1
        if op.timer is not None:
            op.timer.cancel()
            op.timer = None
        op.r = self._send(dict(op.msg), lambda rep, err: self._op_answered(s, op, rep, err),
                          lambda: self._op_lost(s, op))

    def _op_answered(self, s: Session, op: KeeperOp, rep: dict[str, Any] | None,
                     err: WireError | None) -> None:
        op.r = None
        ops = self._ops.get(s.id)
        if op.kind == "write":
            s.keeper_writes = max(0, s.keeper_writes - 1)
            if rep is not None:
                s.keeper_backlog = bool(rep.get("pending"))
        keep = op.kind == "write" and err is None  # (until the keeper has written it)
        self._answer(op, rep, err)
        if ops is None or ops.session is not s:
            return
        if not op.kept:
            ops.unlist(op)
            if keep:
                ops.keep(op)
        elif not keep:  # (a kept write sent again to a new keeper, and refused there)
            ops.unlist(op)
        if rep is None:
            return
        done = rep.get("done")
        if type(done) is int:
            ops.written(done)
        if keep and rep.get("pending") == 0:  # (the keeper holds none of it, nor before it)
            ops.written(op.end)

    def _k_written(self, msg: dict[str, Any]) -> None:
        """The keeper has written (or dropped) all the input it held for a session: the
        copies kept of it go, not at the session's next write."""
        s = self.sessions.get(msg["s"])
        ops = self._ops.get(msg["s"])
        done = msg.get("done")
        if s is not None and ops is not None and ops.session is s and type(done) is int:
            ops.written(done)

    def _op_lost(self, s: Session, op: KeeperOp) -> None:
        """The link went with `op` unanswered: it waits for the next keeper's welcome
        (`_resend_ops`), or, if its caller cannot wait that long, is answered by the dead
        keeper's ledger (`_op_overdue`)."""
        op.r = None
        if self._ops.get(s.id) is None or self.sessions.get(s.id) is not s:
            self._answer(op, None, WireError.of("shell_exited", f"session {s.id} was closed"))
            return
        if op.cb is None:
            return  # (an answered write, kept until written: it has no caller waiting)
        wait = self.lost_wait_s
        if op.deadline is not None:
            wait = min(wait, op.deadline - time.monotonic())
        op.timer = self.loop.call_later(max(0.0, wait), lambda: self._op_overdue(s, op))

    def _answer(self, op: KeeperOp, rep: dict[str, Any] | None,
                err: WireError | None) -> None:
        cb, op.cb = op.cb, None
        if op.timer is not None:
            op.timer.cancel()
            op.timer = None
        if cb is not None:
            cb(rep, err)

    def _ledger(self, s: Session) -> LedgerState | None:
        """What the keeper that held `s` last wrote down in its ring (None: no ring here)."""
        if s.ring is None:
            return None
        try:
            return Ledger(s.ring).state()  # (the ring's own mapping: none made)
        except (OSError, ValueError) as exc:
            logger.error("session {}: its ring's ledger cannot be read: {}", s.id, exc)
            return None

    def _settle_op(self, s: Session, op: KeeperOp, state: LedgerState | None) -> bool:
        """`op`, lost with a keeper that is dead, as its ledger tells: done (answered as
        done), in doubt (answered `outcome_unknown`) or not done (False: to be sent again,
        from where the ledger says it was not written, for input written in part)."""
        if op.kind == "resize":
            return False  # (setting a size again sets nothing new: no SIGWINCH either)
        if state is None:  # (no ring here to read it from: nothing can be told)
            self._in_doubt(s, op, "its session's ring is not held here to tell")
            return True
        if op.kind == "signal":
            sent = state.signal_sent(int(op.msg["seq"]))
            if sent:
                self._answer(op, {"pgid": state.pgid, "sig": op.msg["sig"]}, None)
            elif sent is None:
                self._in_doubt(s, op, "it was being sent when the keeper was killed")
            return sent is not False
        if op.end <= state.done:
            self._answer(op, {"queued": len(op.msg["data"]), "pending": 0}, None)
            return True
        doubt = state.doubt
        if doubt is not None and op.at < doubt[0] + doubt[1] and doubt[0] < op.end:
            self._in_doubt(s, op, "the keeper was killed while it wrote it to the PTY, "
                           "before it could write down how much it wrote")
            return True
        if op.at < state.done:  # (written in part: the rest comes again)
            data = op.msg["data"]
            op.msg = {**op.msg, "at": state.done, "data": data[state.done - op.at:]}
        return False

    def _in_doubt(self, s: Session, op: KeeperOp, why: str) -> None:
        self.ops_in_doubt += 1
        what = "input" if op.kind == "write" else op.kind
        if op.cb is None:
            logger.error("session {}: {} queued by a pty keeper that died may or may not have "
                         "reached the shell ({})", s.id, what, why)
        self._answer(op, None, WireError.of(
            "outcome_unknown", f"session {s.id}: the pty keeper died with this {what}, which "
            f"may or may not have reached the shell: {why}; it is not sent again",
            detail={"session": s.id}))

    def _op_overdue(self, s: Session, op: KeeperOp) -> None:
        """No keeper welcomed in time for `op`'s caller: answered by what the dead keeper
        wrote down. Not done: dropped, never sent again (`unavailable`); input written in
        part: its rest stays for the next keeper, and it is answered as queued."""
        op.timer = None
        if op.cb is None or op.r is not None:
            return
        ops = self._ops.get(s.id)
        if ops is None or ops.session is not s or self.sessions.get(s.id) is not s:
            self._answer(op, None, WireError.of(
                "shell_exited", f"session {s.id} was closed, or lost, before the pty keeper "
                "that died with this request was replaced; it was not done"))
            return
        if op.kept or op not in ops.ops:
            return
        if not _process_gone(self._lost_pid) and op.kind != "resize":
            # (our link went, not the keeper: it may still take what it had been sent; a
            # size set or not is told below, and is no harm set again)
            ops.unlist(op)
            self._in_doubt(s, op, "no pty keeper could be reached since its link was lost")
            return
        if op.kind == "resize":
            if self._winsize(s) == (op.msg["cols"], op.msg["rows"]):
                ops.unlist(op)
                self._answer(op, {}, None)
                return
        else:
            at = op.at
            if self._settle_op(s, op, self._ledger(s)):
                ops.unlist(op)
                return
            if op.kind == "write" and op.at > at:  # (written in part: the rest is queued)
                ops.unlist(op)
                ops.keep(op)  # (its rest, for the next keeper)
                self._answer(op, {"queued": op.end - at, "pending": op.end - op.at}, None)
                return
        ops.unlist(op)
        self._answer(op, None, WireError.of(
            "unavailable", f"the pty keeper died before it did this {op.kind}, and no keeper "
            "came back in time; it was not done, and is not sent again"))

    @staticmethod
    def _winsize(s: Session) -> tuple[int, int] | None:
        if s.master is None:
            return None
        try:
            return get_winsize(s.master)
        except OSError:
            return None

    def _resend_ops(self, held: dict[str, dict[str, Any]], previous: int | None) -> None:
        """A keeper's welcome: what the keeper before it had not done goes to it, in order.
        The same keeper (its link went, not it) still has the input it took (its welcome's
        `input_end`: queued or written); a new one has none of it, and its predecessor's
        ledger says what that one did."""
        same = previous is not None and previous == self.pid
        for sid, ops in list(self._ops.items()):
            s = ops.session
            if self.sessions.get(sid) is not s:
                self._forget_ops(sid)
                continue
            lost = ops.unanswered()
            if not lost:
                continue
            e = held.get(sid)
            taken = int(e.get("input_end") or 0) if same and e is not None else None
            # (the same keeper holding none of its input: all it took is written, or dropped)
            written = taken is not None and e is not None and not e.get("pending")
            state = self._ledger(s)
            again: list[KeeperOp] = []
            for op in lost:
                if taken is not None and op.kind == "write":
                    if op.end > taken:
                        again.append(op)
                        continue
                    # (it has it: kept here until written, as any answered input)
                    self._answer(op, {"queued": len(op.msg["data"]), "pending": 0}, None)
                    if written:
                        ops.unlist(op)
                    elif not op.kept:
                        ops.unlist(op)
                        ops.keep(op)
                elif self._settle_op(s, op, state):
                    ops.unlist(op)
                else:
                    again.append(op)
            for op in again:
                self.ops_resent += 1
                self._send_op(s, op)
            if again:
                logger.warning("session {}: {} request(s) the last pty keeper had not done "
                               "sent to the new one", sid, len(again))

    def meta(self, s: Session) -> None:
        """The session's state where a successor finds it: in its ring (ring.py: no message,
        and it reaches every holder, the keeper's custody included, even while no keeper
        is up); over the link to the keeper while we have no ring yet, or when it is too big
        for the ring's slot (which then says so)."""
        if s.ring is not None and s.ring.write_meta(s.meta_packer.pack(s.meta)):
            return
        if s.ring is not None:
            s.ring.write_meta(b"")  # the link has the state from now on
        if self.link is not None:
            self.link.send({"t": "meta", "s": s.id, "meta": s.meta})

    # --- what the keeper sends ----------------------------------------------------------------

    def _k_reply(self, msg: dict[str, Any]) -> None:
        cb = self._waiting.pop(msg.get("r"), None)  # type: ignore[arg-type]
        self._on_lost.pop(msg.get("r"), None)  # type: ignore[arg-type]
        err = None
        if msg["t"] == "err":
            name = msg.get("name") if msg.get("name") in KINDS else "internal"
            detail = msg.get("detail") if isinstance(msg.get("detail"), dict) else None
            if "errno" in msg:
                detail = {**(detail or {}), "errno": msg["errno"]}
            err = WireError.of(name, str(msg.get("message", "")), detail=detail)
        if cb is not None:
            cb(None, err) if err is not None else cb(msg, None)
        elif err is not None:  # (its request's callback was answered when the link went)
            logger.warning("keeper: {}", err.message)

    def _k_welcome(self, msg: dict[str, Any]) -> None:
        previous, self.pid = self.pid, msg.get("pid")
        self.custody_pending = bool(msg.get("custody"))
        entries = self._less_closed(msg.get("sessions", []))
        if not self.custody_pending:
            self._unheld_closed()
        self._told = list(entries)
        held = {e["s"]: e for e in entries}
        for s in self.sessions.values():
            if s.id in held:
                self._held_by_both(s, held[s.id])
                continue
            s.keeper_backlog = False
            if s.exited is None and s.ring is not None:
                self._adopt(s)  # the keeper restarted: it gets our copy of the session
        # (after the adoptions: the keeper holds the sessions by the time it reads these)
        self._resend_ops(held, previous)
        self._complete(entries, self._welcome_done)

    def _k_custody(self, msg: dict[str, Any]) -> None:
        """What the keeper's supervisor held, which came after its welcome: restored as the
        welcome's sessions are; then which of ours are lost is settled."""
        if not self.custody_pending:
            logger.warning("keeper sent `custody` unasked for; ignored")
            return
        if not self.welcomed:  # (the welcome's fds are still awaited: it comes after them)
            self._late = msg
            return
        entries = self._less_closed(msg.get("sessions", []))
        self._told.extend(entries)
        for e in entries:
            s = self.sessions.get(e["s"])
            if s is not None:  # (ours, handed to the keeper while custody gave it too)
                self._held_by_both(s, e)
        self._complete(entries, self._settle)

    def _held_by_both(self, s: Session, e: dict[str, Any]) -> None:
        """A session of ours that the keeper holds too, as its entry `e` says."""
        if e.get("meta") != s.meta:
            # a new keeper that took the session from custody, or one that was stopped
            # while we changed it, has an older state: ours is the one a successor needs
            self.meta(s)
        s.keeper_backlog = bool(e.get("pending"))
        if s.ring is not None:
            # What the keeper read while no terminal was connected (a new keeper takes
            # the session from custody and reads at once): its word of it went nowhere,
            # and once its window was full it stopped reading, waiting for an ack.
            s.keeper_paused = bool(e.get("paused"))
            if s.id not in self._catching_up:  # (else its catch-up takes it, in slices)
                s.on_ring(s.ring.write_off)
            self.flush_acks(s)

    def _complete(self, entries: list[dict[str, Any]], then: Callable[[], None]) -> None:
        """Wait for the fds of the sessions in `entries` we do not hold (each is restored as
        they come, and caught up on), FDS_WAIT_S without any (_fds_overdue); then
        `then()`."""
        self._round += 1
        self._entries = entries
        self._then = then
        self._awaiting_fds = {e["s"] for e in entries if e["s"] not in self.sessions}
        for sid in self._awaiting_fds:  # (this round's entry is the one to restore from)
            self.unavailable.pop(sid, None)
        self._passed_again.clear()
        self._pass_answers.clear()
        self._broken.clear()
        if self._awaiting_fds:
            self._progress()
        else:
            self._completed()

    def _progress(self) -> None:
        """The wait for the fds still missing starts again: some came, were caught up on, or
        were asked for again."""
        self._unread_waits = 0
        if self._overdue is not None:
            self._overdue.cancel()
        this = self._round
        self._overdue = self.loop.call_later(FDS_WAIT_S, lambda: self._fds_overdue(this))

    def _completed(self) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        then, self._then = self._then, _nothing
        self._entries = []
        then()

    def _adopt(self, s: Session) -> None:
        assert self.link is not None
        r = self._next_r
        self._next_r += 1

        def done(_r: dict[str, Any] | None, err: WireError | None) -> None:
            if err is not None:
                logger.error("session {}: the keeper could not take it: {}", s.id, err)

        master, ring = s.master, s.ring
        if not self.link.send_fds({"t": "adopt", "r": r, "s": s.id, "pid": s.pid,
                                   "started": s.started, "tty": s.tty,
                                   "cols": s.cols, "rows": s.rows, "meta": s.meta},
                                  [master, ring.fd],  # type: ignore[list-item, union-attr]
                                  still=lambda: self.sessions.get(s.id) is s and
                                  s.master == master and s.ring is ring):
            # (no descriptor to send it with: the session stays ours alone, and is offered
            # again at the next keeper link's welcome)
            logger.error("session {}: not handed to the new keeper", s.id)
            return
        self._waiting[r] = done
        self.adopted += 1
        logger.info("session {}: handed to the new keeper", s.id)

    def _k_fds(self, msg: dict[str, Any]) -> None:
        fds = self.link.take_fds(2) if self.link is not None else None
        sid = msg["s"]
        s = self.sessions.get(sid)
        if fds is None:
            logger.error("session {}: its master and ring did not come", sid)
            if s is not None and s.ring is None:
                self.ask_copies(s)
            elif s is None and sid in self._awaiting_fds and sid not in self._passed_again:
                self._pass_again(sid)  # (once a round: asked again at once, each answer
                # cut off again would be a loop; the round's timer decides after that)
            return  # (an unavailable one is asked for again on its own timer)
        master, ring_fd = fds
        if s is not None and sid in self._catching_up:
            close_all(fds)  # (asked for again, while the first copies are in use)
            return
        if s is not None:  # a session we created: its copies
            late = s.ring is None
            try:
                s.take_custody(master, ring_fd)
            except (RingError, OSError) as exc:
                logger.error("session {}: its copies cannot be used: {}", sid, exc)
                close_all(fds)
                self.ask_copies(s)
                return
            if late:  # what the keeper read meanwhile (its word of it found no ring here),
                # perhaps a whole window, after which it waits for our ack to read on
                s.keeper_paused = s.ring.room() <= 0
                s.on_ring(s.ring.write_off)
                self.flush_acks(s)
            return
        late = sid not in self._awaiting_fds
        entry = self.unavailable.get(sid) if late else next(
            (e for e in self._entries if e["s"] == sid), None)
        if entry is None:
            for fd in fds:
                os.close(fd)
            return
        try:
            ring = SessionRing.open(ring_fd)
        except (RingError, OSError) as exc:
            logger.error("session {}: unreadable ring: {}", sid, exc)
            close_all(fds)
            if late:
                if isinstance(exc, RingError):  # (never usable: not a limit that passes)
                    self._lose_unavailable(sid, close=True)
                return  # (else asked for again on its timer)
            if isinstance(exc, RingError):
                self._broken.add(sid)
            if sid not in self._passed_again:  # (once a round, as above)
                self._pass_again(sid)
            return
        os.set_blocking(master, False)
        if late:
            # What the keeper read since its entry was made went unheard here (its `out`
            # found no session), and it may have stopped at a full window: taken as
            # stopped, so that an ack wakes it once the catch-up has handled the ring.
            del self.unavailable[sid]
            entry = {**entry, "paused": True}
            logger.info("session {}: its master and ring came at last; restored", sid)
        else:
            self._progress()
        try:
            # (registered at once; caught up on later, through catch_up, which says when)
            self.on_restore(entry, master, ring)
            restored = self.sessions.get(sid)
            if restored is not None:  # (its input and signals numbered on from the keeper's)
                self.session_ops(restored, int(entry.get("input_end") or 0),
                                 int(entry.get("signals") or 0))
        except Exception:
            logger.exception("session {}: not restored", sid)
            if sid not in self.sessions:  # (asked for again, then taken for lost)
                ring.close()
                os.close(master)
                return
        if late and sid in self.sessions and sid not in self._catching_up:
            self.on_available(sid)
        elif late and sid in self._catching_up:
            self._late_restored.add(sid)
        if sid not in self._catching_up:
            self._restored(sid)

    def _restored(self, sid: str) -> None:
        if sid in self._awaiting_fds:
            self._awaiting_fds.discard(sid)
            if self._awaiting_fds:
                self._progress()
            else:
                self._completed()

    def _pass_again(self, sid: str) -> None:
        """Ask the keeper once more for an awaited session's fds (they did not come, or could
        not be used)."""
        if self.link is None:
            return
        self._passed_again.add(sid)
        self._progress()
        this = self._round

        def done(_r: dict[str, Any] | None, err: WireError | None) -> None:
            if this == self._round:
                self._pass_answers[sid] = "ok" if err is None else err.name
            if err is not None:
                logger.warning("session {}: asked for again: {}", sid, err.message)

        self._send({"t": "pass", "s": sid}, done)

    def _unread(self) -> bool:
        """Whether the link has bytes we have not read yet (a loop busy with our own work
        may not have looked)."""
        assert self.link is not None
        p = select.poll()
        p.register(self.link.fd, select.POLLIN)
        return bool(p.poll(0))

    def _fds_overdue(self, this: int) -> None:
        if not self._awaiting_fds or self.link is None or this != self._round:
            return
        self._overdue = None
        if self._catching_up:  # our own work: not the keeper's delay
            self._progress()
            return
        if self._unread_waits < FDS_UNREAD_WAITS and self._unread():
            waits = self._unread_waits + 1  # (what came meanwhile may be them)
            self._progress()
            self._unread_waits = waits
            return
        missing = sorted(self._awaiting_fds)
        asked = [sid for sid in missing if sid in self._passed_again]
        # Lost: the keeper does not hold it (any more), or its ring cannot be used. A
        # session it holds whose fds did not come (out of descriptors, on either side)
        # is not: its shell is alive, and it is asked for again later.
        lost = [sid for sid in asked if sid in self._broken
                or self._pass_answers.get(sid) == "session_not_found"]
        if lost:
            self._give_up(lost)
        held = [sid for sid in asked if sid not in lost]
        if held:
            self._make_unavailable(held)
        again = [sid for sid in missing if sid not in self._passed_again]
        if again:
            logger.warning("keeper sent no fds for {} in {} s; asked for again", again,
                           FDS_WAIT_S)
            for sid in again:
                self._pass_again(sid)
        elif not self._awaiting_fds:
            self._completed()

    def _give_up(self, sids: list[str]) -> None:
        """Sessions the keeper no longer holds, or whose rings cannot be used: whatever is
        left of each is ended (`close`), and they are told of as given up, so that
        restore.reconcile reports them lost and starts them anew, as it does sessions no
        one holds."""
        logger.error("sessions {}: not held by the keeper, or their rings unusable; taken "
                     "for lost", sids)
        entries = {e["s"]: e for e in reversed(self._entries)}  # (the first of each wins)
        self._awaiting_fds.difference_update(sids)
        # (a close lost with this keeper must not have the next one hand that shell back:
        # its tombstone names it, not the one started anew under its id; all in one write)
        self.close_sessions({sid: (entries.get(sid, {}).get("pid"),
                                   entries.get(sid, {}).get("started")) for sid in sids})
        gone = set(sids)
        self._told = [{**e, "given_up": True} if e["s"] in gone else e for e in self._told]

    def _make_unavailable(self, sids: list[str]) -> None:
        """Sessions the keeper holds whose fds did not come, even asked for again: the
        round goes on without them; each is asked for again with back-off, and restored
        when its fds come (_k_fds)."""
        logger.warning("keeper holds {} but their fds did not come, even asked for again "
                       "(out of descriptors?): unavailable, asked for again later", sids)
        for sid in sids:
            self._awaiting_fds.discard(sid)
            entry = next((e for e in self._entries if e["s"] == sid), None)
            if entry is None:
                continue
            self.unavailable[sid] = entry
            link = self.link
            self.loop.call_later(COPIES_RETRY_S, lambda sid=sid, link=link:
                                 self._ask_unavailable(sid, 0, link))

    def _ask_unavailable(self, sid: str, tries: int, link: Link | None) -> None:
        """Ask for an unavailable session's fds again (on the link it became so on), and
        again after its answer, further apart each time: until they come, or the keeper
        says it does not hold it."""
        if sid not in self.unavailable or link is None or self.link is not link:
            return

        def answered(_r: dict[str, Any] | None, err: WireError | None) -> None:
            if sid not in self.unavailable or self.link is not link:
                return  # (came, and restored; or the link went: its welcome names it)
            if err is not None and err.name == "session_not_found":
                self._lose_unavailable(sid, close=False)
                return
            wait = min(UNAVAILABLE_RETRY_MAX_S, COPIES_RETRY_S * 2 ** (tries + 1))
            self.loop.call_later(wait, lambda: self._ask_unavailable(sid, tries + 1, link))

        self._send({"t": "pass", "s": sid}, answered)

    def _lose_unavailable(self, sid: str, close: bool) -> None:
        """An unavailable session the keeper says it no longer holds (or whose ring cannot
        be used: `close`, whatever is left of it is ended): lost, as restore.reconcile
        settles those given up."""
        entry = self.unavailable.pop(sid, None)
        if entry is None:
            return
        logger.error("session {}: unavailable, and {}; taken for lost", sid,
                     "its ring cannot be used" if close else "the keeper no longer holds it")
        if close:  # (with its tombstone, as _give_up's)
            self.close_session(sid, entry.get("pid"), entry.get("started"))
        self._told = [{**e, "given_up": True} if e["s"] == sid else e for e in self._told]
        self._tell_welcome(self.settled)

    # --- restored sessions' catch-up ------------------------------------------------------------

    def catch_up(self, s: Session, step: Callable[[float], bool]) -> None:
        """`s` is restored, its ring not yet taken (restore.py): `step(until)` takes some of
        it, stopping once the clock (time.monotonic) passes `until`, and says True once it
        is all taken. Sessions are caught up on one after the other, CATCH_UP_TURN_S a loop
        turn, so that the loop goes on turning (heartbeats, pings, the keeper's messages);
        until its catch-up is over the keeper's word of its output and exit waits."""
        self._catching_up[s.id] = (s, step)
        if not self._catch_up_armed:
            self._catch_up_armed = True
            self.loop.defer(self._catch_up_turn)

    def _catch_up_turn(self) -> None:
        self._catch_up_armed = False
        until = time.monotonic() + CATCH_UP_TURN_S
        try:
            while self._catching_up:
                sid, (s, step) = next(iter(self._catching_up.items()))
                try:
                    done = step(until)
                except Exception:  # (it serves with what it took: better than never)
                    logger.exception("session {}: catching up failed", sid)
                    done = True
                if done:
                    del self._catching_up[sid]
                    self._caught_up(s)
                if time.monotonic() >= until:
                    break
        finally:  # (whatever a caught-up session's follow-up raised, the others go on)
            if self._catching_up and not self._catch_up_armed:
                self._catch_up_armed = True
                self.loop.defer(self._catch_up_turn)

    def _caught_up(self, s: Session) -> None:
        info = self._exits.pop(s.id, None)
        if info is not None and self.sessions.get(s.id) is s:
            self._k_exit({"s": s.id, **info})
        if s.id in self._late_restored:
            self._late_restored.discard(s.id)
            self.on_available(s.id)
        self._restored(s.id)

    def _welcome_done(self) -> None:
        self.welcomed = True
        self._tell_welcome(not self.custody_pending)
        self.on_ready()
        self._release(self._until_ready)
        if not self.custody_pending:
            self._release(self._until_settled)
        elif self._late is not None:
            late, self._late = self._late, None
            self._k_custody(late)

    def _settle(self) -> None:
        self.custody_pending = False
        self._unheld_closed()
        self._tell_welcome(True)
        self._release(self._until_settled)

    def _tell_welcome(self, settled: bool) -> None:
        self.on_welcome(self._told, settled)
        # (those given up are lost and started anew now: once)
        self._told = [e for e in self._told if not e.get("given_up")]

    @staticmethod
    def _release(waiting: list[Callable[[bool], None]]) -> None:
        ready = list(waiting)
        waiting.clear()
        for fn in ready:
            fn(True)

    @property
    def ready(self) -> bool:
        """Connected, and every session the keeper holds restored here."""
        return self.welcomed

    @property
    def settled(self) -> bool:
        """Ready, and nothing more to come from the keeper's custody: every session we
        recorded is here, or lost."""
        return self.welcomed and not self.custody_pending

    def when_ready(self, fn: Callable[[bool], None], wait_s: float,
                   settled: bool = False) -> None:
        """`fn(True)` once ready (`settled`: once settled), or `fn(False)` after `wait_s`
        without it."""
        waiting = self._until_settled if settled else self._until_ready
        waiting.append(fn)

        def give_up() -> None:
            if fn in waiting:
                waiting.remove(fn)
                fn(False)

        self.loop.call_later(wait_s, give_up)

    def expect_copies(self, s: Session) -> None:
        """A session the keeper made for us: its copies follow its `ok` at once, unless the
        keeper could not send them; then they are asked for."""
        self.loop.call_later(FDS_WAIT_S, lambda: self.ask_copies(s))

    def ask_copies(self, s: Session) -> None:
        """Ask the keeper again for `s`'s master and ring, which we lack (they could not be
        sent or used: out of descriptors, on either side): without the ring no output of
        the session is read here. One round of asking a session at a time: asked again,
        further apart (up to 8 s), for as long as they have not come and been used: a
        session that stopped asking would answer every exec without its output."""
        if s.id not in self._asking:
            self._asking[s.id] = 0
            self._ask_copies(s)

    def _ask_copies(self, s: Session) -> None:
        tries = self._asking.get(s.id, 0)
        if self.link is None or not self.welcomed or self.sessions.get(s.id) is not s or \
                s.ring is not None:
            self._asking.pop(s.id, None)  # (a new link's welcome passes every one we lack)
            return
        if tries == COPIES_TRIES:
            logger.error("session {}: no copies of its master and ring after {} tries; its "
                         "output is not read until they come (asked for every {} s)", s.id,
                         tries, COPIES_RETRY_S * 2 ** (COPIES_TRIES - 1))
        self._asking[s.id] = tries + 1

        def again(_r: dict[str, Any] | None, _err: WireError | None) -> None:
            # (whatever the answer: copies that came are in use by then, and the next round
            # finds the ring; copies that did not come, or could not be used, are asked for
            # again, never at once)
            wait = COPIES_RETRY_S * 2 ** min(tries, COPIES_TRIES - 1)
            self.loop.call_later(wait, lambda: self._ask_copies(s))

        self.request({"t": "pass", "s": s.id}, again)

    def _k_out(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is not None and s.ring is not None:
            s.keeper_paused = bool(msg.get("paused"))
            if s.id not in self._catching_up:  # (else its catch-up takes it, in slices)
                s.on_ring(int(msg["end"]))
            self.flush_acks(s)

    def _k_exit(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is None and msg["s"] in self.unavailable:  # (told once it is restored)
            self._exits[msg["s"]] = {k: v for k, v in msg.items() if k != "s"}
            return
        if s is None or s.exited is not None:
            return
        if s.id in self._catching_up:  # (after the output it is catching up on)
            self._exits[s.id] = {k: v for k, v in msg.items() if k != "s"}
            return
        if s.ring is not None:
            s.on_ring(s.ring.write_off)  # whatever the shell wrote last
        self.on_exit(s, {"code": msg.get("code"), "signal": msg.get("signal")})

    # --- acks: moving the ring's ack_off -------------------------------------------------------

    def flush_acks(self, s: Session) -> None:
        """Move `s`'s ring ack to what it has handled (Session.handled); wake the keeper if it
        had stopped reading for a full window and there is room in it now. (Whether the ack
        moved in this call does not say: the output may have been taken and acknowledged
        from the ring before the keeper's word that it stopped came.)"""
        if s.hold_acks or s.ring is None:
            return
        # Never past what this process has read from the ring: a restored session being
        # caught up on (a slice a turn) has published further than it has read again, and
        # an ack there let the keeper write over what the catch-up had yet to read.
        handled = min(s.handled(), s.offset)
        if handled > s.ring.ack_off:
            s.ring.ack_off = handled
        if s.keeper_paused and self.link is not None and s.ring.room() > 0:
            s.keeper_paused = False
            self.link.send({"t": "ack", "s": s.id})

    def acks_ready(self) -> None:
        """Something that held acks back is over (a parser hop caught up, a consumer
        acknowledged or was dropped)."""
        for s in self.sessions.values():
            self.flush_acks(s)

    def on_subscribed(self, topic: str) -> None:
        """A subscription to `topic` (a prefix): the sessions whose output it covers are
        watched, and those waiting for their subscribers after a restart may go on."""
        for s in self.sessions.values():
            if f"term.out.{s.id}".startswith(topic):
                self.watched(s)

    def watched(self, s: Session) -> None:
        if not s.meta.get("watched"):
            s.meta["watched"] = True
            self.meta(s)
        if s.hold_acks:
            s.hold_acks = False
            self.flush_acks(s)

    def hold_until_watched(self, s: Session) -> None:
        """After a restart: no acks for `s` until its output has a subscriber again."""
        if self.subscribed_to(f"term.out.{s.id}"):
            return
        s.hold_acks = True

        def give_up() -> None:
            if s.hold_acks and self.sessions.get(s.id) is s:  # (not closed meanwhile)
                logger.warning("session {}: no subscriber back in {} s; output goes on",
                               s.id, self.resume_wait_s)
                s.hold_acks = False
                self.flush_acks(s)

        self.loop.call_later(self.resume_wait_s, give_up)

