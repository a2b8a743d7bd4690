"""The pty keeper: owns every shell, so the shells outlive the terminal actor.

  op         args   reply                                                    errors
  pty.list   {}     {connected, sessions: [{s, pid, tty, cols, rows,         -
                     read, acked, base, buffered, paused, pending,
                     exited}]}

Everything else goes over `<runtime_dir>/<name>.sock` (actors/ptylink.py has the messages),
from the one terminal actor connected at a time; the PTY side is ptys.py.
The keeper
- starts each shell on a new PTY with posix_spawn (actors/ptyspawn.py says why not fork: this
  process has ZeroMQ threads, to answer the supervisor's `sys.ping`), is the shells' parent,
  holds the master fds, and reaps the shells through a pidfd each (no SIGCHLD handler);
- reads the output itself, because bytes read by an actor that dies before publishing them are
  gone: each session keeps its output from the last offset the actor acknowledged (`acked`)
  to what has been read (`read`), at most `window_bytes` of it. A full window stops reading
  that PTY, so the shell blocks in write() instead of losing output; an ack moves the window
  on. This is the flow control for slow subscribers too, since the actor acks only what it
  has published;
- keeps `keep_bytes` more before `acked` (the tail), so that a restarted actor gets back its
  scrollback and republishes what its predecessor may have had queued but never sent;
- on a (new) connection, after `hello`: the session list, then every session's tail and
  unacknowledged output again, with absolute offsets, so the actor continues each stream
  without a lost or doubled byte (a repeated byte is recognisable by its offset);
- writes input without blocking, from a bounded queue per session (a 1 MB paste waits for
  the shell to read it; the loop never stalls). A terminal actor that asks gets each PTY
  master passed too, and writes a command line there itself while nothing of the session's
  waits here (the `pending` of a write's reply and of the welcome tells it); it closes its
  copies when the link ends, so the PTYs still hang up with the keeper;
- on stop (SIGTERM), hangs every session up, waits `stop_grace_ms` for the shells, then
  SIGKILLs whatever is left in their sessions and reaps. If the keeper is killed, its master
  fds close and the kernel hangs the PTYs up (SIGHUP): the sessions end with it.

Config: window_bytes (1 MiB), keep_bytes (2 MiB), input_limit_bytes (16 MiB), read_batch_bytes
(128 KiB: the largest `out` chunk), stop_grace_ms (1000), close_grace_ms (2000). What a killed
terminal actor can lose in flight is at most its publisher's high-water mark (pub_hwm, 8) of
chunks, 1 MiB by default: keep_bytes must stay above it for the republished tail to cover it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime import Actor, Call, op, trust
from moorage.actors.terminal.keeper.ptys import Ptys, PtySession, foreground_group, session_members
from moorage.actors.terminal.keeper.spawn import SpawnError, set_winsize, spawn_on_pty
from moorage.actors.terminal.link import LINK_TOKEN_NAME, Link
from moorage.protocol.errors import Category

HELLO_WAIT_S = 2.0  # a new connection's first message, the hello, within this


class PtyKeeper(Actor):
    name = "ptykeeper"
    category = Category.TERMINAL

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        cfg = self.config
        self.window = max(4096, int(cfg.get("window_bytes", 1 << 20)))
        self.keep = max(0, int(cfg.get("keep_bytes", 2 << 20)))
        self.input_limit = int(cfg.get("input_limit_bytes", 16 << 20))
        self.read_batch = max(4096, int(cfg.get("read_batch_bytes", 128 << 10)))
        self.stop_grace = int(cfg.get("stop_grace_ms", 1000)) / 1000
        self.close_grace = int(cfg.get("close_grace_ms", 2000)) / 1000
        self.sessions: dict[str, PtySession] = {}
        self.link: Link | None = None
        self.peer_pid: int | None = None  # the terminal actor on the link (SO_PEERCRED)
        self.strangers = 0  # connections refused: not a process of this tree
        self.pass_fds = False  # the connected peer takes the PTY masters (its hello said so)
        self.sock_path = self.runtime_dir / f"{self.name}.sock"
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()  # a killed predecessor's; we are its replacement
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        self.listener.listen(4)
        self.listener.setblocking(False)
        self.ptys = Ptys(self.loop, self.sessions, window=self.window,
                         read_batch=self.read_batch, tell=self._tell)
        self._handlers = {
            "hello": self._m_hello, "create": self._m_create, "write": self._m_write,
            "resize": self._m_resize, "signal": self._m_signal, "close": self._m_close,
            "ack": self._m_ack, "meta": self._m_meta,
        }

    # --- life -------------------------------------------------------------------------------

    def on_start(self) -> None:
        self.loop.add_reader(self.listener.fileno(), self._accept)
        self.loop.add_reader(self.ptys.fileno(), self.ptys.events)

    def info(self) -> dict[str, Any]:
        return {"sessions": len(self.sessions), "connected": self.link is not None,
                "peer_pid": self.peer_pid, "strangers_refused": self.strangers,
                "buffered": sum(len(s.buf) for s in self.sessions.values())}

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        if level not in ("high", "critical"):
            return {}
        freed = 0
        for s in self.sessions.values():
            cut = s.acked - s.base
            if cut > 0:
                del s.buf[:cut]
                s.base = s.acked
                freed += cut
        return {"tail_bytes_dropped": freed}

    def on_stop(self) -> None:
        """Hang every session up, give the shells `stop_grace_ms`, then kill what is left."""
        if self.link is not None:
            self.link.close("keeper stopping")
        self.listener.close()
        with contextlib.suppress(OSError):
            self.sock_path.unlink()
        victims = list(self.sessions.values()) + list(self.ptys.closing.values())
        for s in self.sessions.values():
            self.ptys.hangup(s)
        deadline = time.monotonic() + self.stop_grace
        for s in victims:
            if s.status is None:
                self._wait_pidfd(s, deadline)
        for s in victims:
            for pid in session_members(s.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if s.status is None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(s.pid, 0)
            with contextlib.suppress(OSError):
                os.close(s.pidfd)

    def _wait_pidfd(self, s: PtySession, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left > 0:
            select.select([s.pidfd], [], [], left)

    # --- the connection -----------------------------------------------------------------------

    def _accept(self) -> None:
        """A connection is a candidate until its first message, a `hello` with the tree's
        link token (only a process of this tree can make it: actors.runtime.trust) from a
        process of our uid (SO_PEERCRED); then it replaces the link in place. A stranger
        is closed and counted, and never disturbs a live link."""
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
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
            self._adopt(candidate, pid)
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

    def _adopt(self, link: Link, pid: int) -> None:
        if self.link is not None:
            # the old peer's last acks and meta first: they may still be unread
            self.link.drain()
            if self.link is not None:
                self.link.close("replaced by a new connection")
        link.on_message = self._on_message
        link.on_close = self._on_link_closed
        self.link = link
        self.peer_pid = pid
        self.pass_fds = False
        logger.info("terminal actor connected (pid {})", pid)

    def _on_link_closed(self, reason: str) -> None:
        logger.info("terminal actor link closed: {}", reason)
        self.link = None
        # Nothing is sent until the next hello; what was sent and not acked is resent then.

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

    def _reply_err(self, msg: dict[str, Any], name: str, message: str, **extra: Any) -> None:
        self._tell({"t": "err", "r": msg.get("r"), "s": msg.get("s"), "name": name,
                    "message": message, **extra})

    def _session(self, msg: dict[str, Any]) -> PtySession | None:
        s = self.sessions.get(msg["s"])
        if s is None:
            self._reply_err(msg, "session_not_found", f"no session {msg['s']!r}")
        return s

    # --- messages -------------------------------------------------------------------------------

    def _m_hello(self, msg: dict[str, Any]) -> None:
        self.pass_fds = bool(msg.get("fds"))
        self._tell({"t": "welcome", "pid": os.getpid(), "sessions": [
            s.describe() | {"meta": s.meta, "base": max(s.base, s.acked - self.keep)}
            for s in self.sessions.values()]})
        for s in self.sessions.values():
            self._pass_fd(s)
        for s in self.sessions.values():
            # the tail (at most keep_bytes of it) and the unacknowledged output, again
            step = self.read_batch
            first = max(0, s.acked - self.keep - s.base)
            for i in range(first, len(s.buf), step):
                self._tell({"t": "out", "s": s.id, "off": s.base + i,
                            "data": bytes(s.buf[i : i + step])})
            if s.exit_sent:
                self._tell({"t": "exit", "s": s.id, **(s.exit_info() or {})})

    def _m_create(self, msg: dict[str, Any]) -> None:
        sid = msg["s"]
        if not isinstance(sid, str) or sid in self.sessions:
            self._reply_err(msg, "bad_args", f"session id {sid!r} is taken or not a string")
            return
        env = msg["env"]
        argv = [str(a) for a in msg["argv"]]
        try:
            sp = spawn_on_pty(str(msg["path"]), argv, {str(k): str(v) for k, v in env.items()},
                              msg.get("cwd"), int(msg["cols"]), int(msg["rows"]))
        except (SpawnError, OSError) as exc:
            self._reply_err(msg, "pty_failed", f"{msg['path']}: {exc.strerror or exc}",
                            errno=exc.errno)
            return
        pidfd = os.pidfd_open(sp.pid)
        s = PtySession(sid, sp.pid, sp.master, sp.tty, pidfd, int(msg["cols"]),
                       int(msg["rows"]), msg.get("meta"))
        self.sessions[sid] = s
        self.ptys.add(s)
        logger.info("session {}: {} pid {} on {}", sid, argv[0], sp.pid, sp.tty)
        self._tell({"t": "ok", "r": msg.get("r"), "s": sid, "pid": sp.pid, "tty": sp.tty})
        self._pass_fd(s)

    def _pass_fd(self, s: PtySession) -> None:
        """The PTY master to a peer that asked for it (`hello {fds: true}`), so that it can
        write a command line itself: one process switch and one turn of this loop fewer per
        command. Input it cannot write at once still comes here, behind what waits."""
        if self.link is not None and self.pass_fds and not (s.closing or s.eof):
            self.link.send_fd({"t": "fd", "s": s.id}, s.master)

    def _m_write(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        data = msg["data"]
        if isinstance(data, str):
            data = data.encode()
        if s.eof or s.closing:
            self._reply_err(msg, "shell_exited", f"session {s.id} has ended", what="write")
            return
        if s.inq_bytes + len(data) > self.input_limit:
            self._reply_err(msg, "busy", f"session {s.id}: input queue over "
                            f"{self.input_limit} bytes", what="write")
            return
        if data:
            was_empty = not s.inq
            s.inq.append(bytes(data))
            s.inq_bytes += len(data)
            if was_empty:
                self.ptys.writable(s)
        if msg.get("r") is not None:
            self._tell({"t": "ok", "r": msg["r"], "s": s.id, "queued": len(data),
                        "pending": s.inq_bytes})

    def _m_resize(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        cols, rows = int(msg["cols"]), int(msg["rows"])
        try:
            set_winsize(s.master, cols, rows)
        except OSError as exc:
            self._reply_err(msg, "shell_exited", f"resize: {exc}")
            return
        s.cols, s.rows = cols, rows
        if msg.get("r") is not None:
            self._tell({"t": "ok", "r": msg["r"], "s": s.id, "cols": cols, "rows": rows})

    def _m_signal(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        sig = int(msg["sig"])
        try:
            if msg.get("to", "fg") == "fg":
                pgid = foreground_group(s)
            elif s.status is None:
                pgid = s.pid
            else:
                raise ProcessLookupError(f"session {s.id}'s shell has exited")
            os.killpg(pgid, sig)
        except OSError as exc:
            self._reply_err(msg, "shell_exited", f"signal: {exc.strerror or exc}")
            return
        self._tell({"t": "ok", "r": msg.get("r"), "s": s.id, "pgid": pgid, "sig": sig})

    def _m_close(self, msg: dict[str, Any]) -> None:
        s = self._session(msg)
        if s is None:
            return
        del self.sessions[s.id]
        self.ptys.hangup(s)
        if s.status is None:
            self.ptys.closing[s.pidfd] = s
            self.loop.call_later(self.close_grace, lambda: self.ptys.kill_closed(s))
        else:
            with contextlib.suppress(OSError):
                os.close(s.pidfd)
        self._tell({"t": "ok", "r": msg.get("r"), "s": s.id})

    def _m_ack(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is None:
            return  # closed meanwhile: nothing to move on
        off = min(int(msg["off"]), s.read_off)
        if off <= s.acked:
            return
        s.acked = off
        # Trim the tail in steps, not on every ack: deleting the front of a bytearray moves
        # what follows, so doing it once per `keep` bytes keeps the cost per byte constant.
        if s.acked - s.base > self.keep + max(self.keep, 1 << 16):
            cut = s.acked - self.keep - s.base
            del s.buf[:cut]
            s.base += cut
        if s.paused and s.read_off - s.acked < self.window:
            s.paused = False
            self.ptys.watch(s)

    def _m_meta(self, msg: dict[str, Any]) -> None:
        s = self.sessions.get(msg["s"])
        if s is not None:
            s.meta = msg.get("meta")

    # --- ops ------------------------------------------------------------------------------------

    @op("pty.list", idempotent=True)
    def _op_list(self, call: Call) -> dict[str, Any]:
        """The sessions held, with their offsets (diagnostics; the terminal actor owns them)."""
        return {"connected": self.link is not None,
                "sessions": [s.describe() for s in self.sessions.values()]}
