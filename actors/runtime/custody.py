"""Descriptors an actor leaves in its supervisor's keeping, so that they outlive the actor.

A PTY hangs up when the last descriptor of its master closes. The pty keeper and the terminal
actor both hold every master, so a session outlives either of them; but a death of one while
the other is still being replaced (a chaos kill, a hung keeper killed while the terminal
restarts) would close the last copy. The supervisor is the third holder: it outlives its
children, and it is already where a dead keeper's shells go (it is their subreaper). What it
holds it never reads; it hands it to the next process that asks (`take`).

Messages: one msgpack map per datagram on a SOCK_SEQPACKET Unix socket at
`<runtime_dir>/<supervisor>.custody.sock` (0600; a process of the tree's uid that knows the
tree's key: actors.runtime.trust), descriptors riding along as SCM_RIGHTS:

  actor -> supervisor  hello {tok, child}          first; what follows is kept under `child`
                       keep  {k, info} + fds       hold duplicates of these under `k` (what
                                                   was held there is closed)
                       info  {k, info}             `k`'s info is now this
                       drop  {k}                   close what is held under `k`
                       take  {}                    -> held {k, info} + fds for every key, then
                                                      done {n}
  supervisor -> actor  held {k, info} + fds, done {n}

Bounded on both sides: a datagram is at most MAX_DATAGRAM bytes (a bigger info is kept without
its big values, and says so in the log), a keep at most MAX_FDS descriptors, a child at most
MAX_KEYS keys.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import os
import socket
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

from moorage.actors.runtime import trust
from moorage.actors.runtime.loop import Loop

TOKEN_NAME = "supervisor.custody"
MAX_DATAGRAM = 128 * 1024  # under the default socket buffer (about 208 KiB), which caps a datagram
MAX_FDS = 4
MAX_KEYS = 4096
BIG_VALUE = 4096  # an info over MAX_DATAGRAM is kept without its values bigger than this
FDS_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)

Held = Callable[[str, dict[str, Any], list[int]], None]


def custody_path(runtime_dir: Path | str, supervisor: str) -> Path:
    return Path(runtime_dir) / f"{supervisor}.custody.sock"


def pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]] | None:
    """One datagram and the descriptors that came with it; None when nothing waits; a
    message of None (with its descriptors, for the caller to close) when it is not a map
    with a string `t`. Raises ConnectionError at the peer's end."""
    try:
        data, anc, flags, _ = sock.recvmsg(MAX_DATAGRAM, FDS_SPACE, socket.MSG_CMSG_CLOEXEC)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        # The peer closed with datagrams of ours unread: the kernel says so once, and before
        # what the peer sent first, still queued (a last `keep`, and the master it carries).
        # Read on: they come, then the end.
        try:
            data, anc, flags, _ = sock.recvmsg(MAX_DATAGRAM, FDS_SPACE,
                                               socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return None
    fds = array.array("i")
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
    if not data:  # the end (SEQPACKET marks it MSG_EOR too; none of ours is empty)
        close_all(list(fds))
        raise ConnectionError("peer closed the connection")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        msg = None
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or not isinstance(msg, dict) \
            or not isinstance(msg.get("t"), str):
        return None, list(fds)
    return msg, list(fds)


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def dup_all(fds: Iterable[int]) -> list[int]:
    """Duplicates of `fds`, all or none: out of descriptors, those made are closed and the
    OSError raised."""
    out: list[int] = []
    try:
        for fd in fds:
            out.append(os.dup(fd))
    except OSError:
        close_all(out)
        raise
    return out


class Datagrams:
    """Sending on a non-blocking SEQPACKET socket from a loop: what the socket will not take
    now waits, in order, until it is writable. `info` messages are coalesced per key (only
    the last one matters, sent where the first one waits), so a stalled peer costs one entry
    per key, not one per change."""

    def __init__(self, loop: Loop, sock: socket.socket, on_error: Callable[[str], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.on_error = on_error
        # (datagram, fds, "", 0) in order; an info waits as (None, [], key, its number),
        # its latest datagram in `infos` under the same number (another: superseded)
        self.out: deque[tuple[bytes | None, list[int], str, int]] = deque()
        self.infos: dict[str, tuple[int, bytes]] = {}
        self._numbers = itertools.count()
        self.broken = False

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        if self.broken:
            return
        data = pack(msg)
        if len(data) > MAX_DATAGRAM - 1024 and isinstance(msg.get("info"), dict):
            info = msg["info"]
            small = {k: v for k, v in info.items() if len(pack(v)) <= BIG_VALUE}
            logger.warning("custody: {} of {} is {} bytes; kept without {}", msg["t"],
                           msg.get("k"), len(data), sorted(set(info) - set(small)))
            data = pack({**msg, "info": small})
        key = msg.get("k")
        if msg["t"] == "info" and isinstance(key, str):
            waiting = self.infos.get(key)
            if waiting is None:
                n = next(self._numbers)
                self.out.append((None, [], key, n))
            else:
                n = waiting[0]
            self.infos[key] = (n, data)
        else:
            # our own duplicates: the caller may close its descriptors (a session hung up)
            # before a datagram that waits for room is sent, and their numbers be reused
            try:
                dups = dup_all(fds or ())
            except OSError as exc:  # (no descriptor left: this one is not sent, said so)
                logger.warning("custody: {} of {} not sent: {}", msg["t"], key, exc)
                return
            if isinstance(key, str):
                self.infos.pop(key, None)  # a waiting info must not follow a keep or drop
            self.out.append((data, dups, "", 0))
        self._flush()

    def _head(self) -> tuple[bytes, list[int]] | None:
        """The datagram at the head of the queue (superseded infos dropped), or None."""
        while self.out:
            data, fds, key, n = self.out[0]
            if data is not None:
                return data, fds
            waiting = self.infos.get(key)
            if waiting is not None and waiting[0] == n:
                return waiting[1], []
            self.out.popleft()
        return None

    def _sent(self) -> None:
        data, fds, key, _ = self.out.popleft()
        close_all(fds)
        if data is None:
            del self.infos[key]

    def _flush(self) -> None:
        while (head := self._head()) is not None:
            data, fds = head
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            try:
                self.sock.sendmsg([data], anc)
            except BlockingIOError:
                self.loop.add_writer(self.sock.fileno(), self._flush)
                return
            except OSError as exc:
                self.broken = True
                self._discard()
                self.loop.remove_writer(self.sock.fileno())
                self.on_error(f"send: {exc}")
                return
            self._sent()
        self.loop.remove_writer(self.sock.fileno())

    def _discard(self) -> None:
        for _, fds, _, _ in self.out:
            close_all(fds)
        self.out.clear()
        self.infos.clear()

    def flush_blocking(self, timeout: float) -> None:
        """Send what waits, waiting at most `timeout` for room (a stopping process)."""
        if self.broken or not self.out:
            return
        self.sock.settimeout(timeout)
        try:
            while (head := self._head()) is not None:
                data, fds = head
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] \
                    if fds else []
                self.sock.sendmsg([data], anc)
                self._sent()
        except OSError as exc:
            logger.warning("custody: {} messages not sent: {}", len(self.out), exc)
        finally:
            self._discard()


class CustodyClient:
    """An actor's side: `keep`, `info` and `drop` as its state changes, and `take` once at
    start for what a predecessor left. Never blocks the loop; a supervisor that is gone (the
    actor will follow it) makes every call a no-op after one warning."""

    def __init__(self, loop: Loop, path: Path, child: str) -> None:
        self.loop = loop
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.connect(str(path))  # a listening Unix socket answers at once
        self.sock.setblocking(False)
        self.out = Datagrams(loop, self.sock, self._broken)
        self._on_held: Held | None = None
        self._on_done: Callable[[int], None] | None = None
        self.out.send({"t": "hello", "tok": trust.token(TOKEN_NAME), "child": child})
        loop.add_reader(self.sock.fileno(), self._readable)

    def take(self, on_held: Held, on_done: Callable[[int], None]) -> None:
        """Ask for everything held: `on_held(key, info, fds)` for each (the fds are ours),
        then `on_done(count)`; `on_done(0)` when the supervisor's socket fails first (on a
        later turn, should it have failed already: a caller waiting for the answer is
        never left waiting for one that cannot come)."""
        self._on_held, self._on_done = on_held, on_done
        self.out.send({"t": "take"})
        if self.out.broken:
            self.loop.defer(self._take_ended)

    def keep(self, key: str, info: dict[str, Any], fds: list[int]) -> None:
        self.out.send({"t": "keep", "k": key, "info": info}, fds)

    def info(self, key: str, info: dict[str, Any]) -> None:
        self.out.send({"t": "info", "k": key, "info": info})

    def drop(self, key: str) -> None:
        self.out.send({"t": "drop", "k": key})

    def close(self, timeout: float = 0.5) -> None:
        """Send what waits (a stopping actor's drops) and disconnect."""
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.out.flush_blocking(timeout)
        self.sock.close()

    def _broken(self, why: str) -> None:
        logger.warning("custody: the supervisor's socket failed ({}); nothing more is kept", why)
        self.loop.remove_reader(self.sock.fileno())
        self._take_ended()

    def _take_ended(self) -> None:
        """A `take` that will get no more: its `on_done(0)`, once."""
        done, self._on_done = self._on_done, None
        if done is not None:
            done(0)

    def _readable(self) -> None:
        for _ in range(64):  # bounded: a long take is read over several turns
            try:
                got = receive(self.sock)
            except (ConnectionError, OSError) as exc:
                self.out.broken = True
                self._broken(str(exc))
                return
            if got is None:
                return
            msg, fds = got
            if msg is not None and msg["t"] == "held" and self._on_held is not None:
                self._on_held(str(msg.get("k")), msg.get("info") or {}, fds)
                continue
            close_all(fds)
            if msg is not None and msg["t"] == "done" and self._on_done is not None:
                done, self._on_done = self._on_done, None
                done(int(msg.get("n") or 0))
