"""The zygote: a small, thread-free process that forks a supervisor's children.

Forking the supervisor itself is unsafe once it has a ZeroMQ context (its I/O threads do not
survive a fork), and starting a fresh interpreter costs ~100 ms of imports. So each
supervisor forks a zygote before it creates any thread; the zygote imports the children's
modules once and forks a child per request in about a millisecond.

Lifetimes, so that no orphan survives (parent death is a SIGKILL via PR_SET_PDEATHSIG):
  supervisor --(pdeathsig)--> zygote --(pdeathsig)--> every child
and the zygote also exits when its command socket reaches EOF (the supervisor is gone).

Messages (msgpack maps on a SOCK_SEQPACKET socketpair, one map per datagram):
  supervisor -> zygote  {cmd: "spawn", child, kind, payload, beat?: slot}
                        | {cmd: "exit"}
  zygote -> supervisor  {ev: "spawned", child, pid} | {ev: "spawn_failed", child, error}
                        {ev: "exited", pid, code, signal}
  child -> supervisor   {ev: "ready", pid}  (the child inherits the zygote's end)

The supervisor's beat board (moorage.actors.runtime.beat) is created here, before the fork, so the
zygote and every child share it; a child spawned with `beat` has its loop stamp that slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterable

import msgpack
import setproctitle

from moorage.actors.runtime.beat import BeatBoard, install

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
INSTANCE_ENV = "MOORAGE_INSTANCE"  # set by the root for every process of its tree


def set_title(role: str) -> None:
    """`moorage[<instance>]: <role>` in ps and top, so the tree's processes tell apart (they
    are all the same interpreter running the same script otherwise)."""
    setproctitle.setproctitle(f"moorage[{os.environ.get(INSTANCE_ENV, '?')}]: {role}")


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to kill us when our parent dies; exit now if it already has."""
    if _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != expected_parent:  # it died before the prctl took effect
        os._exit(70)


def _decode(data: bytes) -> dict:
    return msgpack.unpackb(data)


def _encode(msg: dict) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


# What a child runs, by kind: set by the supervisor package at import time, so the zygote
# (a fork of the supervisor) has it without importing anything by name.
Launcher = Callable[[dict, Callable[[], None]], None]
LAUNCHERS: dict[str, Launcher] = {}


class ZygoteHandle:
    """The supervisor's side: send spawn requests, read events from `sock`."""

    def __init__(self, pid: int, sock: socket.socket, beats: BeatBoard) -> None:
        self.pid = pid
        self.sock = sock
        self.beats = beats

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, child: str, kind: str, payload: dict, beat: int | None = None) -> None:
        """Fork `child`; with `beat` (a slot of `beats`) its loop beats there."""
        msg = {"cmd": "spawn", "child": child, "kind": kind, "payload": payload}
        if beat is not None:
            msg["beat"] = beat
        self.sock.send(_encode(msg))

    def read_events(self) -> list[dict]:
        out = []
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            if not data:
                raise EOFError("zygote gone")
            out.append(_decode(data))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(_encode({"cmd": "exit"}))
        self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def start_zygote(preload: Iterable[str] = (), close_fds: Iterable[int] = (),
                 owner: str = "") -> ZygoteHandle:
    """Fork the zygote of supervisor `owner`. Must be called before this process starts any
    thread. `close_fds` are the supervisor's own (its instance lock, the ready line's pipe)
    that children must not hold."""
    parent_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    beats = BeatBoard()
    gc.freeze()  # shared with the zygote and its children from here: see _Zygote.__init__
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent_end.close()
            for fd in close_fds:
                os.close(fd)
            die_with_parent(parent)
            set_title(f"zygote {owner}".rstrip())
            _Zygote(zygote_end, list(preload), beats).run()
        except BaseException:
            traceback.print_exc()
            code = 71
        finally:
            os._exit(code)
    zygote_end.close()
    parent_end.set_inheritable(False)
    return ZygoteHandle(pid, parent_end, beats)


class _Zygote:
    def __init__(self, sock: socket.socket, preload: list[str], beats: BeatBoard) -> None:
        self.sock = sock
        self.beats = beats
        self.children: set[int] = set()
        from moorage.actors.runtime.logs import install_handlers

        install_handlers()  # once here, not in every child (see moorage.actors.runtime.logs)
        for module in preload:
            try:
                importlib.import_module(module)
            except Exception as exc:  # the child will fail at start and be reported then
                print(f"zygote: preload {module}: {exc}", file=sys.stderr)
        # What the children inherit is never garbage: out of the collector's reach, a child's
        # collections do not write to (and so copy) every shared page that holds an object.
        gc.freeze()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only the supervisor's EOF ends us
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def send(self, msg: dict) -> None:
        try:
            self.sock.send(_encode(msg))
        except OSError:
            pass  # supervisor gone; EOF on the next read ends us

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self.wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is self.sock:
                    try:
                        data = self.sock.recv(1 << 20)
                    except InterruptedError:
                        continue
                    if not data:
                        self._end()
                        return
                    msg = _decode(data)
                    if msg.get("cmd") == "exit":
                        self._end()
                        return
                    if msg.get("cmd") == "spawn":
                        self._spawn(msg)
                else:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            self.send({"ev": "exited", "pid": pid,
                       "code": code if code >= 0 else None,
                       "signal": -code if code < 0 else None})

    def _spawn(self, msg: dict) -> None:
        launcher = LAUNCHERS.get(msg["kind"])
        if launcher is None:
            self.send({"ev": "spawn_failed", "child": msg["child"],
                       "error": f"unknown kind {msg['kind']!r}"})
            return
        me = os.getpid()
        # The child's "ready" must not overtake our "spawned" on the shared socket (the
        # supervisor knows the pid only from "spawned"): it waits for this pipe's EOF first.
        told_r, told_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(told_r)
            os.close(told_w)
            self.send({"ev": "spawn_failed", "child": msg["child"], "error": str(exc)})
            return
        if pid == 0:
            os.close(told_w)
            self._become_child(me, launcher, msg["payload"], msg.get("beat"), told_r)
        os.close(told_r)
        self.children.add(pid)
        self.send({"ev": "spawned", "child": msg["child"], "pid": pid})
        os.close(told_w)

    def _become_child(self, zygote: int, launcher: Launcher, payload: dict,
                      beat: int | None, told: int) -> None:
        code = 0
        try:
            if beat is not None:
                install(self.beats.beater(beat))
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(s, signal.SIG_DFL)
            die_with_parent(zygote)
            sock = self.sock
            sock.set_inheritable(False)

            def ready() -> None:
                try:
                    os.read(told, 1)  # EOF once the zygote has sent "spawned"
                    os.close(told)
                    sock.send(_encode({"ev": "ready", "pid": os.getpid()}))
                finally:
                    sock.close()

            launcher(payload, ready)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _end(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
