"""The pty keeper's PTYs: the per-session record, and reading, writing, reaping and hanging
up (`Ptys`, a component of the keeper actor, actor.py, which has the connection and the
messages).

Each master fd is watched by the keeper's own epoll (itself watched by the loop) for what the
session wants now: output while its window has room and it has not ended, writability while
input waits. A read takes at most `read_batch` bytes and never more than the window's room; a
full window stops reading (the shell blocks in write()). A shell is reaped through its pidfd;
its exit is reported after its last output (EOF on the master), or `EXIT_WITHOUT_EOF_S` after
the reaping when something it started still holds the PTY.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Loop

EXIT_WITHOUT_EOF_S = 1.0  # a reaped shell whose PTY another process still holds


class PtySession:
    """One shell on its PTY: the master fd, the output from `base` to `read_off` (what the
    actor has not acknowledged, and the tail before it), and the input waiting to be written."""

    __slots__ = ("acked", "base", "buf", "closing", "cols", "eof", "exit_sent", "id", "inq",
                 "inq_bytes", "mask", "master", "meta", "paused", "pid", "pidfd", "read_off",
                 "rows", "status", "tty")

    def __init__(self, sid: str, pid: int, master: int, tty: str, pidfd: int, cols: int,
                 rows: int, meta: Any) -> None:
        self.id = sid
        self.pid = pid
        self.master = master
        self.tty = tty
        self.pidfd = pidfd
        self.cols = cols
        self.rows = rows
        self.meta = meta
        self.buf = bytearray()  # output from `base` to `read_off`
        self.base = 0
        self.acked = 0
        self.read_off = 0
        self.paused = False
        self.eof = False
        self.status: tuple[int | None, int | None] | None = None  # (code, signal) once reaped
        self.exit_sent = False
        self.closing = False
        self.inq: deque[bytes] = deque()
        self.inq_bytes = 0
        self.mask = 0  # what the keeper's epoll watches on `master` (0: not registered)

    def describe(self) -> dict[str, Any]:
        return {"s": self.id, "pid": self.pid, "tty": self.tty, "cols": self.cols,
                "rows": self.rows, "read": self.read_off, "acked": self.acked,
                "base": self.base, "buffered": len(self.buf), "paused": self.paused,
                "pending": self.inq_bytes, "exited": self.exit_info()}

    def exit_info(self) -> dict[str, Any] | None:
        if self.status is None:
            return None
        return {"code": self.status[0], "signal": self.status[1]}


def foreground_group(s: PtySession) -> int:
    """The PTY's foreground process group. Raises ProcessLookupError when there is none: a
    PTY whose session has ended answers 0, and killpg(0) would signal our own group."""
    pgid = os.tcgetpgrp(s.master)
    if pgid <= 1 or pgid == os.getpgrp():
        raise ProcessLookupError(f"session {s.id} has no foreground process group")
    return pgid


def session_members(sid: int) -> list[int]:
    """Every process whose session id is `sid` (the shell and all its jobs), from /proc."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            out.append(int(entry.name))
    return out


class Ptys:
    """The PTY side of every session the keeper holds: one epoll over the masters (itself
    watched by the loop: a master whose shell side is closed reports POLLHUP without POLLIN,
    which zmq_poll would pass on as an error it does not dispatch), the reads into each
    session's window, the queued input, and the reaping. `tell` sends a message to the
    terminal actor (dropped while none is connected)."""

    def __init__(self, loop: Loop, sessions: dict[str, PtySession], *, window: int,
                 read_batch: int, tell: Callable[[dict[str, Any]], None]) -> None:
        self.loop = loop
        self.sessions = sessions
        self.window = window
        self.read_batch = read_batch
        self._tell = tell
        self.epoll = select.epoll()
        self.by_fd: dict[int, PtySession] = {}
        self.closing: dict[int, PtySession] = {}  # pidfd -> a closed session not yet reaped

    def fileno(self) -> int:
        return self.epoll.fileno()

    def add(self, s: PtySession) -> None:
        """A new session: watch its master, and its pidfd for the shell's end."""
        self.by_fd[s.master] = s
        self.watch(s)
        self.loop.add_reader(s.pidfd, lambda: self._reap(s))

    def watch(self, s: PtySession) -> None:
        """Watch `s.master` for what the session wants now: output while it has room and has
        not ended, writability while input waits."""
        want = 0
        if not s.closing:
            if not s.paused and not s.eof:
                want |= select.EPOLLIN
            if s.inq:
                want |= select.EPOLLOUT
        if want == s.mask:
            return
        if s.mask == 0:
            self.epoll.register(s.master, want)
        elif want == 0:
            self.epoll.unregister(s.master)
        else:
            self.epoll.modify(s.master, want)
        s.mask = want

    def events(self) -> None:
        for fd, ev in self.epoll.poll(0, 256):
            s = self.by_fd.get(fd)
            if s is None:
                continue
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and s.mask & \
                    select.EPOLLIN:
                self._readable(s)
            if ev & select.EPOLLOUT and s.inq:
                self.writable(s)

    def _readable(self, s: PtySession) -> None:
        room = self.window - (s.read_off - s.acked)
        parts = []
        got = 0
        eof = False
        while room > 0 and got < self.read_batch:
            try:
                data = os.read(s.master, min(65536, room))
            except BlockingIOError:
                break
            except OSError as exc:
                # EIO: every slave fd is closed (Linux's EOF on a PTY master)
                if exc.errno != errno.EIO:
                    logger.warning("session {}: read: {}", s.id, exc)
                eof = True
                break
            if not data:
                eof = True
                break
            parts.append(data)
            got += len(data)
            room -= len(data)
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            off = s.read_off
            s.buf += data
            s.read_off += len(data)
            self._tell({"t": "out", "s": s.id, "off": off, "data": data})
        if eof:
            s.eof = True
            self.watch(s)
            self._maybe_finished(s)
        elif room <= 0:
            s.paused = True
            self.watch(s)

    def writable(self, s: PtySession) -> None:
        while s.inq:
            head = s.inq[0]
            try:
                n = os.write(s.master, head)
            except BlockingIOError:
                break
            except OSError as exc:
                logger.warning("session {}: write: {}", s.id, exc)
                s.inq.clear()
                s.inq_bytes = 0
                break
            s.inq_bytes -= n
            if n == len(head):
                s.inq.popleft()
            else:
                s.inq[0] = head[n:]
        self.watch(s)

    def _reap(self, s: PtySession) -> None:
        self.loop.remove_reader(s.pidfd)
        try:
            pid, status = os.waitpid(s.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = s.pid, 0
        if pid == 0:
            self.loop.add_reader(s.pidfd, lambda: self._reap(s))  # not yet (spurious wake)
            return
        code = os.waitstatus_to_exitcode(status)
        s.status = (code, None) if code >= 0 else (None, -code)
        logger.info("session {}: shell {} exited {}", s.id, s.pid, s.exit_info())
        if self.closing.pop(s.pidfd, None) is not None:
            os.close(s.pidfd)
            return
        if not s.eof:
            self.loop.call_later(EXIT_WITHOUT_EOF_S, lambda: self._exit_anyway(s))
        self._maybe_finished(s)

    def _exit_anyway(self, s: PtySession) -> None:
        # The shell is gone but something it started still holds the PTY: report the exit;
        # output keeps flowing until that process lets go.
        if not s.exit_sent and s.id in self.sessions:
            s.exit_sent = True
            self._tell({"t": "exit", "s": s.id, **(s.exit_info() or {})})

    def _maybe_finished(self, s: PtySession) -> None:
        if s.eof and s.status is not None and not s.exit_sent:
            s.exit_sent = True
            self._tell({"t": "exit", "s": s.id, **(s.exit_info() or {})})

    def hangup(self, s: PtySession) -> None:
        """Close the master (the kernel hangs the PTY up: SIGHUP to the session) and tell the
        shell's and the foreground job's process groups so too, in case they ignore it."""
        s.closing = True
        # a reaped shell's pid may already belong to someone else: only while it is ours
        groups = {s.pid} if s.status is None else set()
        with contextlib.suppress(OSError):
            groups.add(foreground_group(s))
        for pgid in groups:
            for sig in (signal.SIGHUP, signal.SIGCONT):
                with contextlib.suppress(OSError):
                    os.killpg(pgid, sig)
        self.watch(s)  # closing: unregisters
        self.by_fd.pop(s.master, None)
        with contextlib.suppress(OSError):
            os.close(s.master)
        s.buf = bytearray()

    def kill_closed(self, s: PtySession) -> None:
        if s.status is not None:
            return
        for pid in session_members(s.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
