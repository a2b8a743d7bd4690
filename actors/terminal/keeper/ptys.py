"""The pty keeper's PTYs: the per-session record, and reading, writing, reaping and hanging
up (`Ptys`, a component of the keeper actor, actor.py, which has the connection and the
messages).

Each master fd is watched by the keeper's own epoll (itself watched by the loop) for what the
session wants now: output while its window has room and it has not ended, writability while
input waits. What is read goes into the session's ring (ring.py, shared with the terminal
actor), at most `read_batch` bytes a turn and never past the window: a full window stops
reading (the shell blocks in write()), and the terminal moving the ring's `ack_off` (and
saying so) starts it again. A shell is watched through a pidfd: reaped here when it is our
child, or, when it was adopted from a keeper that died (the terminals supervisor reaps it
then, a subreaper), its status is asked of that supervisor. Its exit is reported after its
last output (EOF on the master), or `EXIT_WITHOUT_EOF_S` after it when something it started
still holds the PTY.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
from loguru import logger

from moorage.actors.runtime.procstat import SESSION, START, stat_fields
from moorage.actors.terminal.keeper.ledger import Ledger
from moorage.actors.terminal.ring import SessionRing

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Loop

EXIT_WITHOUT_EOF_S = 1.0  # a reaped shell whose PTY another process still holds
# ... while what it read last may not be all the PTY had: the rest of its flip buffers
# moves on when a kernel worker runs, which a loaded machine can hold back for a while.
EXIT_LOOK_AGAIN_S = 0.1
# What a PTY holds of its slave's output at most: the line discipline's 4 KiB and the 8 KiB
# its flip buffers are limited to (pty_common_install), and one buffer past it. Read past
# where it was when the shell was reaped, all the shell wrote is read: what comes after is
# another process's.
PTY_HOLDS = 16 * 1024
# The most one write(2) to a master is given: about what a PTY takes at once (its line
# discipline's buffer is 4 KiB), and so all that a keeper killed between that write(2) and
# its note of it leaves in doubt (ledger.py), not the rest of a paste queued behind it.
PTY_WRITE_MAX = 4096
TIOCGPTPEER = getattr(termios, "TIOCGPTPEER", 0x5441)  # Linux 4.13: the master opens its slave


def drop_unread_input(master: int) -> None:
    """Drop the input the shell side has not read: the line discipline's and what the
    kernel still holds for it (a ^C written after a long input is only taken, and flushes
    only what is queued before it, once the reader has made room for what comes first)."""
    try:
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        termios.tcflush(slave, termios.TCIFLUSH)
    except (OSError, termios.error):
        pass
    finally:
        os.close(slave)


class PtySession:
    """One shell on its PTY: the master fd, the output ring, the input waiting to be written,
    and the shell's process (`pid`, also its session id: every job it starts is in it)."""

    __slots__ = ("adopted", "closing", "cols", "eof", "exit_look", "exit_sent", "id",
                 "in_end", "inq", "inq_bytes", "ledger", "mask", "master", "meta", "paused",
                 "pid", "pidfd", "reaped_at", "ring", "rows", "started", "status", "tty",
                 "unfolded")

    def __init__(self, sid: str, pid: int, master: int, tty: str, pidfd: int | None,
                 ring: SessionRing, cols: int, rows: int, meta: Any, *,
                 adopted: bool = False, started: int | None = None) -> None:
        self.id = sid
        self.pid = pid
        self.started = started  # the shell's start time (process_start), when known
        self.master = master
        self.tty = tty
        self.pidfd = pidfd
        self.ring = ring
        self.cols = cols
        self.rows = rows
        self.meta = meta
        self.adopted = adopted  # not our child: a predecessor's, now its supervisor's
        self.paused = False
        self.eof = False
        self.status: tuple[int | None, int | None] | None = None  # (code, signal) once reaped
        self.exit_sent = False
        # Where the ring's output ended when the shell was reaped, and at the last look for
        # its exit without an EOF (PtySet._exit_anyway).
        self.reaped_at = 0
        self.exit_look = 0
        self.closing = False
        # Each chunk with the offset of its first byte in the terminal's numbering of the
        # session's input (ledger.py). (The rest of a chunk a write took part of is a view: a
        # paste of megabytes that the PTY takes 4 KiB at a time is not copied again.)
        self.inq: deque[tuple[int, bytes | memoryview]] = deque()
        self.inq_bytes = 0
        # what this keeper did with the input and signals, where a successor reads it: in
        # the ring's header, through the ring's own mapping
        self.ledger = Ledger(ring)
        # the end of the input taken (queued, written or dropped): what the terminal sends
        # from (its welcome says so); a predecessor's, for an adopted session
        state = self.ledger.state()
        self.in_end = state.input_end
        # A predecessor's doubt still in the ledger: the terminal reads it when we welcome
        # it (to answer the input in doubt `outcome_unknown`), so it is folded into the
        # ledger only with the first input after that (`fold_doubt`), not at adoption.
        self.unfolded = state.doubt is not None
        self.mask = 0  # what the keeper's epoll watches on `master` (0: not registered)

    def fold_doubt(self) -> None:
        """Input comes from a terminal that has read the ledger since we welcomed it: a
        predecessor's doubt goes into IN_DONE (it is never written again), its length is
        cleared, and `done` in our replies is where the input goes on."""
        if self.unfolded:
            self.unfolded = False
            self.ledger.fold(self.in_end)

    def describe(self) -> dict[str, Any]:
        r = self.ring
        return {"s": self.id, "pid": self.pid, "started": self.started, "tty": self.tty,
                "cols": self.cols, "rows": self.rows, "read": r.write_off, "acked": r.ack_off,
                "base": r.base,
                "paused": self.paused, "pending": self.inq_bytes, "adopted": self.adopted,
                "exited": self.exit_info()}

    def current_meta(self) -> Any:
        """The terminal actor's latest state for the session: in the ring, unless it was
        never written there or went over the link (too big for the ring's slot)."""
        data = self.ring.read_meta()
        if data:
            try:
                return msgpack.unpackb(data, raw=False)
            except Exception as exc:  # (written by a process of the tree: should not be)
                logger.warning("session {}: unreadable state in the ring: {}", self.id, exc)
        return self.meta

    def custody_info(self) -> dict[str, Any]:
        """What a keeper that takes the session over from custody needs besides its fds
        (the state that went over the link; the ring has its own)."""
        return {"pid": self.pid, "started": self.started, "tty": self.tty, "cols": self.cols,
                "rows": self.rows, "meta": self.meta}

    def exit_info(self) -> dict[str, Any] | None:
        if self.status is None:
            return None
        return {"code": self.status[0], "signal": self.status[1]}

    def kill_left(self) -> int:
        """SIGKILL what is left in the shell's session (kill_session), knowing whether the
        shell itself was reaped (its pid may be another's then)."""
        return kill_session(self.pid, leader_reaped=self.status is not None,
                            started=self.started)


def unread(master: int) -> int:
    """Bytes of output the PTY's line discipline holds for us (FIONREAD; 0 when it cannot be
    told). What its flip buffers hold behind them is not counted."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(master, termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


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
            if int(stat_fields(entry.name)[SESSION]) == sid:
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def process_start(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (proc(5)'s field 22), or None when no
    such process runs: the same pid with another start time is another process."""
    try:
        return int(stat_fields(pid)[START])
    except (OSError, ValueError, IndexError):
        return None


def kill_session(sid: int, leader_reaped: bool = False, started: int | None = None) -> int:
    """SIGKILL every process left in the terminal session `sid` (a shell's pid), as
    systemd's KillMode does with a unit's cgroup: a job that ignores SIGHUP and SIGTERM goes
    too. Returns how many. Never session 0 or 1 (the kernel's, init's: a record without its
    shell's pid must not turn into them) nor our own. `leader_reaped`: the shell was reaped,
    so a process that has its pid now is another's, and its session too, perhaps: nothing is
    killed then (while any member of our session lives, the kernel gives its id to no new
    process, so a free pid says the members found are ours). `started`: the shell's start
    time (process_start); a process with its pid that started at another time is another's,
    as above (a record on disk outlives the pids it names: after a tree that died unclean,
    its shells' pids may be anyone's sessions)."""
    if sid <= 1 or sid == os.getsid(0):
        return 0
    if os.path.exists(f"/proc/{sid}") and (leader_reaped or (
            started is not None and process_start(sid) not in (started, None))):
        return 0
    killed = 0
    for pid in session_members(sid):
        with contextlib.suppress(OSError):  # (gone, or not ours to signal)
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


class Ptys:
    """The PTY side of every session the keeper holds: one epoll over the masters (itself
    watched by the loop: a master whose shell side is closed reports POLLHUP without POLLIN,
    which zmq_poll would pass on as an error it does not dispatch), the reads into each
    session's ring, the queued input, and the shells' ends. `tell` sends a message to the
    terminal actor (dropped while none is connected); `exit_status(pid, done)` finds the
    status of an adopted shell (not our child) and calls `done((code, signal) | None)`."""

    def __init__(self, loop: Loop, sessions: dict[str, PtySession], *, window: int,
                 read_batch: int, tell: Callable[[dict[str, Any]], None],
                 exit_status: Callable[[int, Callable[[tuple[int | None, int | None] | None],
                                                    None]], None]) -> None:
        self.loop = loop
        self.sessions = sessions
        self.window = window
        self.read_batch = read_batch
        self._tell = tell
        self._exit_status = exit_status
        self.epoll = select.epoll()
        self.by_fd: dict[int, PtySession] = {}
        self.closing: dict[int, PtySession] = {}  # pid -> a closed session not yet ended
        # While the terminal is not reading (the link's queue is not empty), a session's
        # word of new output waits here and goes once, with the end then, when the link has
        # drained: a shell writing a byte at a time to a stopped terminal fills its window
        # with one queued message, not a million (`backlogged`: the actor's link says so).
        self.backlogged: Callable[[], bool] = lambda: False
        self.deferred: dict[str, PtySession] = {}

    def fileno(self) -> int:
        return self.epoll.fileno()

    def add(self, s: PtySession) -> None:
        """A session from now on: watch its master, and its pidfd for the shell's end (no
        pidfd: the shell had ended before we could open one)."""
        self.by_fd[s.master] = s
        self.watch(s)
        if s.pidfd is not None:
            self.loop.add_reader(s.pidfd, lambda: self._ended(s))
        else:
            self.loop.call_later(0, lambda: self._ended(s))

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
            if ev & (select.EPOLLHUP | select.EPOLLERR) and s.inq:
                # Every slave fd is closed: no one will read that input. (Not dropped, the
                # hang-up, reported whatever the mask, would wake this loop at every turn.)
                self.drop_input(s, "the terminal has hung up")
            elif ev & select.EPOLLOUT and s.inq:
                self.writable(s)
                if not s.inq:
                    # (the terminal keeps a copy of input we queued until it is written: it
                    # may let go of them now, rather than at the session's next write)
                    self._tell({"t": "written", "s": s.id, "done": s.ledger.done})

    def resume(self, s: PtySession) -> None:
        """The terminal moved the ring's `ack_off`: read again if the window has room."""
        if s.paused and s.ring.room() > 0:
            s.paused = False
            self.watch(s)

    def _readable(self, s: PtySession) -> None:
        ring = s.ring
        room = ring.room()
        got, end = ring.fill(s.master, room, self.read_batch) if room > 0 else (0, -1)
        room -= got
        eof = end >= 0
        if end > 0 and end != errno.EIO:  # (EIO: every slave fd is closed, the PTY's EOF)
            logger.warning("session {}: read: {}", s.id, os.strerror(end))
        if got or room <= 0:
            s.paused = room <= 0 and not eof
            if self.backlogged():
                self.deferred[s.id] = s
            else:
                self._tell_out(s)
        if eof:
            s.eof = True
            if s.inq:
                self.drop_input(s, "the terminal has hung up")
            self.watch(s)
            self._maybe_finished(s)
        elif s.paused:
            self.watch(s)

    def _tell_out(self, s: PtySession) -> None:
        self.deferred.pop(s.id, None)
        self._tell({"t": "out", "s": s.id, "end": s.ring.write_off, "paused": s.paused})

    def tell_deferred(self) -> None:
        """The link has drained: the word of the output that came meanwhile."""
        deferred, self.deferred = self.deferred, {}
        for sid, s in deferred.items():
            if self.sessions.get(sid) is s:
                self._tell_out(s)

    def _tell_exit(self, s: PtySession) -> None:
        s.exit_sent = True
        if s.id in self.deferred:
            self._tell_out(s)  # (the exit comes after the session's last output)
        self._tell({"t": "exit", "s": s.id, **(s.exit_info() or {})})

    def drop_input(self, s: PtySession, why: str) -> None:
        logger.warning("session {}: {} bytes of input dropped: {}", s.id, s.inq_bytes, why)
        if s.inq:
            at, last = s.inq[-1]
            s.ledger.dropped(at + len(last))
        s.inq.clear()
        s.inq_bytes = 0
        self.watch(s)

    def writable(self, s: PtySession) -> None:
        """Write what waits, as far as the PTY takes it; each write(2) recorded in the
        ledger before and after (a successor of ours must know whether it happened), and
        at most PTY_WRITE_MAX bytes: all that a kill between the two can leave in doubt."""
        while s.inq:
            at, head = s.inq[0]
            size = min(len(head), PTY_WRITE_MAX)
            s.ledger.writing(at, size)
            try:
                n = os.write(s.master, head[:size])
            except BlockingIOError:
                s.ledger.wrote(at)
                break
            except OSError as exc:
                s.ledger.wrote(at)
                self.drop_input(s, f"write: {exc}")
                break
            s.ledger.wrote(at + n)
            s.inq_bytes -= n
            if n == len(head):
                s.inq.popleft()
            else:
                s.inq[0] = (at + n, memoryview(head)[n:])
        self.watch(s)

    # --- the shell's end ------------------------------------------------------------------

    def _ended(self, s: PtySession) -> None:
        """The pidfd says the shell has exited (or we never had one)."""
        if s.pidfd is not None:
            self.loop.remove_reader(s.pidfd)
        if s.adopted:
            self._exit_status(s.pid, lambda status: self._reaped(s, status))
            return
        try:
            pid, status = os.waitpid(s.pid, os.WNOHANG)
        except ChildProcessError:
            self._reaped(s, None)
            return
        if pid == 0:  # not yet (a spurious wake-up)
            if s.pidfd is not None:
                self.loop.add_reader(s.pidfd, lambda: self._ended(s))
            return
        code = os.waitstatus_to_exitcode(status)
        self._reaped(s, (code, None) if code >= 0 else (None, -code))

    def _reaped(self, s: PtySession, status: tuple[int | None, int | None] | None) -> None:
        s.status = status or (None, None)
        logger.info("session {}: shell {} exited {}", s.id, s.pid, s.exit_info())
        if s.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(s.pidfd)
            s.pidfd = None
        if self.closing.pop(s.pid, None) is not None:
            return
        if not s.eof:
            s.reaped_at = s.exit_look = s.ring.write_off
            self.loop.call_later(EXIT_WITHOUT_EOF_S, lambda: self._exit_anyway(s))
        self._maybe_finished(s)

    def _exit_anyway(self, s: PtySession) -> None:
        # The shell is gone but something it started still holds the PTY: report the exit;
        # output keeps flowing until that process lets go. Not while the shell's last words
        # may still be in the PTY: behind a full window, waiting to be read, or on their
        # way (a read that drained the line discipline is followed by what the kernel's
        # flip buffers held: the window opening a moment before this look read only part of
        # it); the EOF that follows them says so then. Once the reads have gone as far past
        # the reaping as a PTY holds, what comes is another process's.
        if s.exit_sent or self.sessions.get(s.id) is not s or s.eof:
            return
        end = s.ring.write_off
        moved, s.exit_look = end != s.exit_look, end
        if end - s.reaped_at < PTY_HOLDS and (s.paused or moved or unread(s.master)):
            wait = EXIT_WITHOUT_EOF_S if s.paused else EXIT_LOOK_AGAIN_S
            self.loop.call_later(wait, lambda: self._exit_anyway(s))
            return
        self._tell_exit(s)

    def _maybe_finished(self, s: PtySession) -> None:
        if s.eof and s.status is not None and not s.exit_sent:
            self._tell_exit(s)

    # --- closing ----------------------------------------------------------------------------

    def hangup(self, s: PtySession) -> None:
        """Close our master (when the terminal's copy goes too, the kernel hangs the PTY up:
        SIGHUP to the session) and tell the shell's and the foreground job's process groups
        so too, in case they ignore it."""
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

    def release(self, s: PtySession) -> None:
        """Forget a closed session's ring (our mapping; the terminal's copy is its own)."""
        s.ring.close()

    def finish_closed(self, s: PtySession) -> None:
        """`close_grace` after a hang-up: whatever is left of the session is killed (the
        shell's jobs may ignore SIGHUP and SIGTERM), and a shell not yet reaped is watched
        until it is."""
        s.kill_left()
        if s.status is None and s.pid not in self.closing:
            self.closing[s.pid] = s
