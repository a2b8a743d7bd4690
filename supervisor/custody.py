"""A supervisor's custody of its children's descriptors (the protocol and the reason for it
are in actors.runtime.custody): the third holder of every PTY master, beside the keeper and
the terminal actor, so that a session outlives a death of both of them at once.

What is held is closed only when its owner drops it or the supervisor stops; a child that dies
leaves it here for its successor. A connection is a candidate until its `hello` (the tree's
token, from our uid, within HELLO_WAIT_S); strangers are closed and counted.

For tests only, $MOORAGE_TEST_CUSTODY_TAKE_DELAY_MS answers each `take` that many
milliseconds late, as a supervisor too busy to answer at once would: with what was held when
the take arrived (copies of its descriptors, made then), not with what the keeps and drops
sent after it made of that; a busy supervisor answers its messages in order. The keeper's
wait for its custody, and what follows, made deterministic.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime import trust
from moorage.actors.runtime.acceptor import Acceptor
from moorage.actors.runtime.custody import (
    MAX_FDS,
    MAX_KEYS,
    TOKEN_NAME,
    Datagrams,
    close_all,
    custody_path,
    dup_all,
    receive,
)
from moorage.actors.runtime.loop import Loop, Timer

HELLO_WAIT_S = 2.0
TAKE_DELAY_ENV = "MOORAGE_TEST_CUSTODY_TAKE_DELAY_MS"


def _take_delay() -> float:
    """Seconds each `take` is answered late (tests only: TAKE_DELAY_ENV); 0 unless set."""
    try:
        return max(0, int(os.environ.get(TAKE_DELAY_ENV) or 0)) / 1000
    except ValueError:
        logger.warning("custody: {} is not a number of milliseconds; ignored", TAKE_DELAY_ENV)
        return 0.0


@dataclass
class _Conn:
    sock: socket.socket
    out: Datagrams
    timer: Timer | None
    child: str | None = None


@dataclass
class _Held:
    info: dict[str, Any]
    fds: list[int] = field(default_factory=list)


class Custodian:
    """The supervisor's end: held descriptors by child and key, and the connections."""

    def __init__(self, loop: Loop, runtime_dir: Path, supervisor: str) -> None:
        self.loop = loop
        self.path = custody_path(runtime_dir, supervisor)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.listener = socket.socket(socket.AF_UNIX,
                                      socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.held: dict[str, dict[str, _Held]] = {}
        self.conns: dict[int, _Conn] = {}
        self.strangers = 0
        self.refused_keeps = 0  # over MAX_KEYS or MAX_FDS
        self.handed = 0  # entries handed to a successor (`take`)
        self.take_delay = _take_delay()
        self.acceptor = Acceptor(loop, self.listener, self._accept, "custody")
        self.acceptor.start()

    def describe(self) -> dict[str, Any]:
        return {"held": {child: len(keys) for child, keys in self.held.items()},
                "handed": self.handed, "strangers_refused": self.strangers,
                "refused_keeps": self.refused_keeps, "connections_shed": self.acceptor.shed}

    def close(self) -> None:
        """The supervisor stops (its children have): let everything go."""
        self.acceptor.close()
        self.listener.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        for fd in list(self.conns):
            self._close(fd)
        for keys in self.held.values():
            for h in keys.values():
                close_all(h.fds)
        self.held.clear()

    # --- connections ----------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            self._stranger(sock, f"pid {pid}, uid {uid}")
            return
        sock.setblocking(False)
        fd = sock.fileno()
        conn = _Conn(sock, Datagrams(self.loop, sock, lambda why: self._close(fd)), None)
        conn.timer = self.loop.call_later(HELLO_WAIT_S, lambda: (
            self._stranger_fd(fd, f"pid {pid}: no hello in {HELLO_WAIT_S} s")))
        self.conns[fd] = conn
        self.loop.add_reader(fd, lambda: self._readable(fd))

    def _stranger(self, sock: socket.socket, why: str) -> None:
        self.strangers += 1
        logger.warning("custody: refused a connection ({})", why)
        sock.close()

    def _stranger_fd(self, fd: int, why: str) -> None:
        conn = self.conns.get(fd)
        if conn is not None and conn.child is None:
            self.strangers += 1
            logger.warning("custody: refused a connection ({})", why)
            self._close(fd)

    def _close(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is None:
            return
        if conn.timer is not None:
            conn.timer.cancel()
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        conn.sock.close()

    def _hand_over(self, conn: _Conn, held: dict[str, _Held]) -> None:
        """Answer a `take`: `held` (what the connection's child had here), then `done`."""
        if self.conns.get(conn.sock.fileno()) is not conn:
            return  # (closed meanwhile: its successor asks again)
        for key, h in held.items():
            conn.out.send({"t": "held", "k": key, "info": h.info}, h.fds)
        self.handed += len(held)
        conn.out.send({"t": "done", "n": len(held)})

    def _hand_over_late(self, conn: _Conn, snapshot: dict[str, _Held]) -> None:
        """A delayed `take` answered with `snapshot`, what was held when it arrived; its
        copies of the descriptors closed after (the sends queue copies of their own)."""
        try:
            self._hand_over(conn, snapshot)
        finally:
            for h in snapshot.values():
                close_all(h.fds)

    def _readable(self, fd: int) -> None:
        for _ in range(64):  # bounded: a busy child cannot hold our loop
            conn = self.conns.get(fd)
            if conn is None:
                return
            try:
                got = receive(conn.sock)
            except (ConnectionError, OSError):
                self._close(fd)
                return
            if got is None:
                return
            msg, fds = got
            if msg is None:
                close_all(fds)
                logger.warning("custody: an undecodable or cut-off datagram from {}",
                               conn.child or "a candidate")
                continue
            if conn.child is None:
                close_all(fds)
                if msg["t"] != "hello" or not trust.verify(TOKEN_NAME, msg.get("tok")) \
                        or not isinstance(msg.get("child"), str):
                    self._stranger_fd(fd, "no valid hello")
                    return
                conn.child = msg["child"]
                if conn.timer is not None:
                    conn.timer.cancel()
                continue
            self._message(conn, msg, fds)

    def _message(self, conn: _Conn, msg: dict[str, Any], fds: list[int]) -> None:
        assert conn.child is not None
        keys = self.held.setdefault(conn.child, {})
        t, k = msg["t"], msg.get("k")
        if t == "take":
            close_all(fds)
            if self.take_delay:
                # (copies: a drop meanwhile closes what is held, not what is to be answered)
                snapshot = {key: _Held(dict(h.info), dup_all(h.fds)) for key, h in keys.items()}
                self.loop.call_later(self.take_delay,
                                     lambda: self._hand_over_late(conn, snapshot))
            else:
                self._hand_over(conn, keys)
            return
        if not isinstance(k, str):
            close_all(fds)
            logger.warning("custody: {} from {} without a key", t, conn.child)
            return
        if t == "keep":
            if len(fds) > MAX_FDS or (k not in keys and len(keys) >= MAX_KEYS):
                close_all(fds)
                self.refused_keeps += 1
                logger.warning("custody: refused to keep {} of {} ({} keys held)", k,
                               conn.child, len(keys))
                return
            old = keys.get(k)
            keys[k] = _Held(msg.get("info") or {}, fds)
            if old is not None:
                close_all(old.fds)
            return
        close_all(fds)
        if t == "info":
            h = keys.get(k)
            if h is not None:
                h.info = msg.get("info") or {}
        elif t == "drop":
            h = keys.pop(k, None)
            if h is not None:
                close_all(h.fds)
        else:
            logger.warning("custody: unknown message {!r} from {}", t, conn.child)
