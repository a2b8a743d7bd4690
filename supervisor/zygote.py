"""The zygote: a small, thread-free process that forks a supervisor's children.

Forking the supervisor itself is unsafe once it has a ZeroMQ context (its I/O threads do not
survive a fork), and starting a fresh interpreter costs ~100 ms of imports. So each
supervisor forks a zygote before it creates any thread; the zygote imports the children's
modules once and forks a child per request in about a millisecond.

Lifetimes, so that no orphan survives and no child dies with its zygote:
  - the zygote dies with its supervisor (PR_SET_PDEATHSIG: SIGKILL);
  - a supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER): when its zygote dies, the
    zygote's children become the supervisor's own. A child's parent-death signal is
    REPARENT_SIG, not a kill: on it the child looks at its new parent, and if that is its
    supervisor it asks for SIGKILL on the supervisor's death from then on (so it still dies
    with the tree; REPARENT_SIG again if it has orphan hooks to run first, as the pty keeper
    has); anything else means the supervisor is gone, and it exits;
  - a dead zygote is replaced by its spare: a copy the zygote forked of itself when asked
    (`fork_spare`, over a socket the supervisor made and passed with the request), serving
    within a millisecond with everything imported. Its parent is the zygote, and then (a
    subreaper) the supervisor, which it follows as the children do. The first death, and a
    spare lost with its zygote, are replaced by a new program (`main` here, in a new
    interpreter: the supervisor has threads by then and must not fork), handed the beat
    board's memfd and the tree's key (actors.runtime.trust) over its socket. It serves
    within tens of ms, before it imports ZeroMQ, the logging library or the launchers: those
    and the children's modules come between requests (a child forked before then imports
    what it needs itself; a spare forked before then does the rest once it serves). The
    children that outlived the old zygote keep running, their supervisor now their parent
    and reaper.
The zygote also exits when its command socket reaches EOF (the supervisor is gone), and
leaves its children to follow the supervisor as above.

Messages (msgpack maps on a SOCK_SEQPACKET socketpair, one map per datagram):
  supervisor -> zygote  {cmd: "key", key} (first, to a replacement zygote only)
                        | {cmd: "spawn", child, kind, payload, beat?: slot}
                        | {cmd: "fork_spare"} (with the spare's socket, SCM_RIGHTS)
                        | {cmd: "exit"}
  zygote -> supervisor  {ev: "spawned", child, pid} | {ev: "spawn_failed", child, error}
                        {ev: "exited", pid, code, signal}
                        {ev: "hello", pid} (a forked spare, first, on its own socket)
  child -> supervisor   {ev: "ready", pid}  (the child inherits the zygote's end, and closes
                        it once it has said so)

The supervisor's beat board (actors.runtime.beat) is created before the first fork, so the
zygote and every child share it; a child spawned with `beat` has its loop stamp that slot.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import select
import selectors
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Iterable

import msgpack

from moorage.actors.runtime import trust
from moorage.actors.runtime.beat import BeatBoard, install
from moorage.actors.runtime.heap import release_free_heap
from moorage.actors.runtime.orphans import has_orphan_hooks, orphaned

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
REPARENT_SIG = signal.SIGRTMIN + 2  # a child's parent (its zygote) died: see follow_supervisor
_libc = ctypes.CDLL(None, use_errno=True)
INSTANCE_ENV = "MOORAGE_INSTANCE"  # set by the root for every process of its tree
TOLD = b"\x01"  # the zygote to a child it forked: the supervisor knows your pid
UNTOLD_EXIT = 75  # a forked child whose zygote died before it told the supervisor
CLOSE_GRACE_S = 1.0  # from "exit" to SIGKILL (it may be in the middle of an import)


def wait_told(fd: int) -> bool:
    """Block until the zygote says the supervisor knows this child (True), or died before it
    could (False: the pipe's end closed without a byte). Closes `fd`."""
    try:
        return os.read(fd, 1) == TOLD
    finally:
        os.close(fd)


def set_title(role: str) -> None:
    """`moorage[<instance>]: <role>` in ps and top, so the tree's processes tell apart (they
    are all the same interpreter running the same script otherwise)."""
    import setproctitle  # (it loads the logging package: ~25 ms a replacement zygote defers)

    setproctitle.setproctitle(f"moorage[{os.environ.get(INSTANCE_ENV, '?')}]: {role}")


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to kill us when our parent dies; exit now if it already has."""
    _prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != expected_parent:  # it died before the prctl took effect
        os._exit(70)


def become_subreaper() -> None:
    """Orphaned descendants (a dead zygote's children) become this process's children."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def follow_supervisor(zygote: int, supervisor: int) -> None:
    """A child's tie to its supervisor, through the zygote that forked it while that lives
    and directly once it is gone (see the module docstring)."""

    def parent_gone(*_: object) -> None:
        if os.getppid() == supervisor:
            # A process with something to clean up first (a keeper's shells) keeps a signal
            # it can catch: SIGKILL at the supervisor's death would take it before its hooks.
            _prctl(PR_SET_PDEATHSIG, REPARENT_SIG if has_orphan_hooks() else signal.SIGKILL)
            if os.getppid() == supervisor:  # still: the supervisor had not died meanwhile
                return
        orphaned()  # what must not outlive the tree goes first (a keeper's shells)
        os._exit(70)

    signal.signal(REPARENT_SIG, parent_gone)
    _prctl(PR_SET_PDEATHSIG, REPARENT_SIG)
    if os.getppid() != zygote:  # it died before the prctl took effect
        parent_gone()


def _decode(data: bytes) -> dict:
    return msgpack.unpackb(data)


# what only the zygote itself says (a child says `ready`, of itself)
MAX_WHY = 500  # characters of a start failure's reason a child reports


class LaunchFailed(Exception):
    """A launcher's child ends with `code`, for the reason its message gives (already
    logged): told to the supervisor when it had not said it was ready."""

    def __init__(self, why: str, code: int = 1) -> None:
        super().__init__(why)
        self.code = code

ZYGOTE_EVENTS = frozenset({"hello", "spawned", "spawn_failed", "exited", "stopped",
                           "continued"})
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_CREDS_SPACE = socket.CMSG_SPACE(_CREDS.size)


def _pair() -> tuple[socket.socket, socket.socket]:
    """A supervisor's end and a zygote's: on ours, the kernel says who sent each datagram
    (SO_PASSCRED), set before the other end can send anything."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return ours, theirs


def _sender(anc: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and \
                len(data) >= _CREDS.size:
            return _CREDS.unpack_from(data)[0]
    return None


def _encode(msg: dict) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


# What a child runs, by kind: set by the supervisor package at import time, so the zygote
# (a fork of the supervisor) has it without importing anything by name.
Launcher = Callable[[dict, Callable[[], None]], None]
LAUNCHERS: dict[str, Launcher] = {}
KINDS = ("actor", "supervisor")  # what supervisor.launch puts in LAUNCHERS
# What a zygote started as a new program imports once it serves, a step at a time between
# requests (the longest step is the longest a request waits): the launchers' module and
# what it loads, then the children's modules.
LAUNCH_STEPS = ("loguru", "zmq", "moorage.actors.runtime.actor", "moorage.supervisor.launch")


Step = str | Callable[[], None]  # a module to import, or a call


def _install_logging() -> None:
    from moorage.actors.runtime.logs import install_handlers

    install_handlers()  # once here, not in every child (see moorage.actors.runtime.logs)


def launcher_for(kind: str) -> Launcher:
    """The launcher of `kind`, in a child forked before its zygote imported them."""
    if kind not in LAUNCHERS:
        importlib.import_module("moorage.supervisor.launch")
    return LAUNCHERS[kind]


class ZygoteHandle:
    """The supervisor's side: send spawn requests, read events from `sock`."""

    def __init__(self, pid: int, sock: socket.socket, beats: BeatBoard,
                 preload: list[str], owner: str = "") -> None:
        self.pid = pid
        self.sock = sock
        # Every event says who sent it, as the kernel saw it (`from`): the zygote's end is
        # also every starting child's until its `ready`, and none may speak for another.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.beats = beats
        self.preload = preload  # for a replacement, should this one die
        self.owner = owner
        self.lost = False  # its loss handled while the tree stops (no successor then)
        # Opened while it surely lives (our own child not yet reaped, or a spare whose end
        # was still open after): `kill` then reaches it and nothing else, whoever reaps it.
        self.pidfd: int | None = self._open_pidfd() if pid > 0 else None

    def _open_pidfd(self) -> int | None:
        try:
            return os.pidfd_open(self.pid)
        except OSError:
            return None

    def fileno(self) -> int:
        return self.sock.fileno()

    def spawn(self, child: str, kind: str, payload: dict,
              beat: int | None = None) -> OSError | None:
        """Ask for `child` to be forked; with `beat` (a slot of `beats`) its loop beats
        there. Never blocks: None when asked, else why not (a BlockingIOError or a
        ConnectionError: it cannot be asked at all; any other: this request cannot be sent)."""
        msg = {"cmd": "spawn", "child": child, "kind": kind, "payload": payload}
        if beat is not None:
            msg["beat"] = beat
        try:
            self.sock.send(_encode(msg), socket.MSG_DONTWAIT)
        except OSError as exc:
            return exc
        return None

    def kill(self) -> None:
        """SIGKILL it (stuck: it no longer answers); its death then comes as any other."""
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def signal(self, sig: int) -> None:
        """Send it `sig` (by its pidfd, else its pid; one gone already is not an error)."""
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif self.pid > 0:
                os.kill(self.pid, sig)

    def reap(self) -> int | None:
        """Its exit code (negative: the signal) if it has ended and is our child, reaped
        now; None if it lives, or is not ours to reap."""
        if self.pidfd is None:
            return None
        try:
            r = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return None
        if r is None:
            return None
        return r.si_status if r.si_code == os.CLD_EXITED else -r.si_status

    def is_ours(self) -> bool:
        """Is it our child (to be reaped by us, its death a SIGCHLD of ours)?"""
        if self.pidfd is None:
            return False
        try:
            os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def release(self) -> None:
        """Close its pidfd (it is dead, or no longer ours to kill)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def read_events(self) -> list[dict]:
        """What was sent to us, each event with `from`, its sender's pid as the kernel saw
        it (whatever the event says); a datagram that is not an event comes as
        {ev: "garbled", from}."""
        out = []
        reset = False
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, _CREDS_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except ConnectionError as exc:
                # Its last holder closed it with our datagrams unread (a request the dead
                # zygote never took, then a child's copy closed after its `ready`): the
                # kernel says so once, and before what is still queued for us, that `ready`
                # among it. Read on: the queued datagrams come, then the end. Taken for the
                # end, the child's start was lost, timed out after start_timeout_ms, and held
                # every start queued behind it as long.
                if reset:
                    raise EOFError("zygote gone") from exc
                reset = True
                continue
            sender = _sender(anc)
            if not data and sender is None:  # (an empty datagram comes with its sender)
                if out:
                    return out
                raise EOFError("zygote gone")
            try:
                ev = _decode(data)
            except Exception:
                ev = None
            if not isinstance(ev, dict):
                ev = {"ev": "garbled", "size": len(data)}
            ev["from"] = sender
            out.append(ev)

    def close(self) -> None:
        """Tell it to exit, and reap it if it is ours: killed if it has not gone within
        CLOSE_GRACE_S (a stopped one would hold our own exit)."""
        with contextlib.suppress(OSError):
            self.sock.send(_encode({"cmd": "exit"}), socket.MSG_DONTWAIT)
        self.sock.close()
        # (a spare forked by a zygote is that zygote's child, not ours)
        if self.pidfd is not None and self.is_ours():
            if not readable(self.pidfd, CLOSE_GRACE_S):
                self.kill()
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        self.release()

    def replacement(self) -> ZygoteHandle:
        """A new zygote for this one, which died: a new program (this process has threads
        now), sharing the beat board and the tree's key. Its old socket stays this handle's:
        children still starting say `ready` there."""
        return spawn_zygote(self.preload, self.beats, self.owner)

    def fork_spare(self) -> ZygoteHandle:
        """A spare for this zygote, which lives: forked by it, so it serves within a
        millisecond with every module it has imported (a new program takes hundreds of ms,
        and a zygote killed faster than that would leave no child able to start). Its pid
        comes in its first message (`learn_pid`); a new program when this one cannot be
        asked."""
        ours, theirs = _pair()  # (OSError out of descriptors: the caller tries later)
        try:
            socket.send_fds(self.sock, [_encode({"cmd": "fork_spare"})], [theirs.fileno()],
                            socket.MSG_DONTWAIT)
        except OSError:
            ours.close()
            return self.replacement()
        finally:
            theirs.close()
        return ZygoteHandle(0, ours, self.beats, self.preload, self.owner)

    def learn_pid(self) -> bool:
        """A forked spare about to take over: its pid, from its `hello` if it has come
        (never waiting: the supervisor's loop calls this). False if it has not said it (its
        zygote died before forking it, or as it did) or is gone: its end, which only it
        holds until it forks, has closed (a spare that died while its zygote lived was
        reaped by that zygote, and its pid may be another process's by now)."""
        if self.pid <= 0 and readable(self.sock.fileno()):
            try:
                events = self.read_events()
            except EOFError:
                return False
            for ev in events:
                if ev.get("ev") == "hello" and ev["from"] == ev.get("pid"):
                    self.pid = ev["from"]
        if self.pid <= 0:
            return False
        if self.pidfd is None:
            self.pidfd = self._open_pidfd()
        # Its end still open after the pidfd was taken: the pidfd is the spare's (a datagram
        # it sent last, its hello, would hide an EOF behind it: read until there is none).
        while readable(self.sock.fileno()):
            try:
                self.read_events()
            except EOFError:
                self.release()
                return False
        return self.pidfd is not None


def readable(fd: int, timeout_s: float = 0.0) -> bool:
    """Is `fd` readable within `timeout_s` (a pidfd: has its process ended)? poll, not
    select: a supervisor holding many descriptors has them past select's 1024."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(int(timeout_s * 1000)))


def start_zygote(preload: Iterable[str] = (), close_fds: Iterable[int] = (),
                 owner: str = "") -> ZygoteHandle:
    """Fork the zygote of supervisor `owner`. Must be called before this process starts any
    thread. `close_fds` are the supervisor's own (its instance lock, the ready line's pipe)
    that children must not hold."""
    become_subreaper()
    parent_end, zygote_end = _pair()
    beats = BeatBoard()
    gc.freeze()  # shared with the zygote and its children from here: see _Zygote.__init__
    release_free_heap()  # a free page left resident: inherited by every child, read by none
    parent = os.getpid()
    preload = list(preload)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            parent_end.close()
            for fd in close_fds:
                os.close(fd)
            die_with_parent(parent)
            set_title(f"zygote {owner}".rstrip())
            _Zygote(zygote_end, [_install_logging, *preload], beats, parent).run()
        except BaseException:
            traceback.print_exc()
            code = 71
        finally:
            os._exit(code)
    zygote_end.close()
    parent_end.set_inheritable(False)
    return ZygoteHandle(pid, parent_end, beats, preload, owner)


def new_interpreter(code: str) -> tuple[list[str], dict[str, str]]:
    """The command line (arguments follow it) and environment of a new Python program of the
    tree that runs `code`: a replacement zygote, or the detached root (supervisor/cli/up.py).

    It imports what this process can: this process's sys.path, exactly, set before anything
    is imported. PYTHONPATH is kept out of its interpreter's start, where an empty or relative
    element (`:/x`, the usual `export PYTHONPATH=$PYTHONPATH:/x` with none set before) would
    put its working directory, an editor's workspace, ahead of the standard library; and it
    is put back in os.environ, as it was, before `code` runs: the environment is the
    children's, and the shells' after them, which keep the user's PYTHONPATH."""
    env = dict(os.environ)
    given = env.pop("PYTHONPATH", None)
    restore = "" if given is None else f"os.environ['PYTHONPATH'] = {given!r}; "
    boot = f"import os, sys; sys.path[:] = {sys.path!r}; {restore}{code}"
    return [sys.executable, "-P", "-c", boot], env


def spawn_zygote(preload: list[str], beats: BeatBoard, owner: str = "") -> ZygoteHandle:
    """Start a zygote as a new program (posix_spawn: no Python runs in a child of this
    threaded process), handing it the board's fd and, first on its socket, the tree's key."""
    parent_end, zygote_end = _pair()
    zygote_end.set_inheritable(True)
    os.set_inheritable(beats.fd, True)
    try:
        # It imports what its predecessor could (new_interpreter).
        argv, env = new_interpreter("from moorage.supervisor import zygote; "
                                    "zygote.main(sys.argv[1:])")
        argv += [str(os.getpid()), str(zygote_end.fileno()), str(beats.fd), str(beats.slots),
                 owner, *preload]
        pid = os.posix_spawn(sys.executable, argv, env)
    except BaseException:
        parent_end.close()
        raise
    finally:
        zygote_end.close()
        os.set_inheritable(beats.fd, False)
    parent_end.send(_encode({"cmd": "key", "key": trust.key()}))
    return ZygoteHandle(pid, parent_end, beats, preload, owner)


def main(argv: list[str]) -> None:
    """A replacement zygote (spawn_zygote): take the key, then serve as the first one did,
    importing the launchers (supervisor.launch fills LAUNCHERS) once it serves."""
    supervisor, sock_fd, beat_fd, slots, owner, *preload = argv
    die_with_parent(int(supervisor))
    sock = socket.socket(fileno=int(sock_fd))
    sock.set_inheritable(False)
    first = _decode(sock.recv(1 << 16))
    if first.get("cmd") != "key":
        raise SystemExit("zygote: expected the tree's key first")
    trust.adopt(first["key"])
    # Inherited through the exec that started us; from here on, as in the first zygote,
    # closed at exec: a program a child runs (a shell the keeper starts) gets no handle on
    # the tree's liveness board.
    os.set_inheritable(int(beat_fd), False)
    beats = BeatBoard(int(slots), fd=int(beat_fd))
    # A replacement serves first and does the rest between requests (its title, the
    # launchers, the logging set-up, the preload): a child it forks before then imports
    # what it needs itself. It serves within tens of ms of its start instead of hundreds: a
    # supervisor whose zygote is killed faster than a replacement can start would start
    # no child at all.
    _Zygote(sock, [lambda: set_title(f"zygote {owner}".rstrip()), *LAUNCH_STEPS,
                   _install_logging, *preload], beats, int(supervisor), lazy=True).run()


class _Zygote:
    def __init__(self, sock: socket.socket, steps: Iterable[Step], beats: BeatBoard,
                 supervisor: int, lazy: bool = False) -> None:
        self.sock = sock
        self.beats = beats
        self.supervisor = supervisor
        self.children: set[int] = set()
        self.steps = list(steps)
        # A spare forked before the steps were done does the rest once it serves: while it
        # stands by, it would only take the CPU from its zygote and the children starting.
        self.standby = False
        while self.steps and not lazy:
            self._step_one()
        if not self.steps:
            gc.freeze()  # (again, if the last preload did: harmless)
            release_free_heap()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # only the supervisor's EOF ends us

    def _step_one(self) -> None:
        step = self.steps.pop(0)
        try:
            if callable(step):
                step()
            else:
                importlib.import_module(step)
        except Exception as exc:  # the child will fail at start and be reported then
            print(f"zygote: preload step {step}: {exc}", file=sys.stderr)
        if not self.steps:
            # What the children inherit is never garbage: out of the collector's reach, a
            # child's collections do not write to (and so copy) every shared page that holds
            # an object.
            gc.freeze()
            release_free_heap()

    def send(self, msg: dict) -> bool:
        try:
            self.sock.send(_encode(msg))
        except OSError:
            return False  # supervisor gone; EOF on the next read ends us
        return True

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(self.wake_r, selectors.EVENT_READ)
        reset = False
        while True:
            events = sel.select(0 if self.steps and not self.standby else None)
            if not events and self.steps and not self.standby:
                self._step_one()  # nothing asked of us meanwhile
                continue
            for key, _ in events:
                if key.fileobj is self.sock:
                    try:
                        data, fds, _, _ = socket.recv_fds(self.sock, 1 << 20, 1)
                    except InterruptedError:
                        continue
                    except ConnectionError:
                        # The supervisor closed its end with our events unread: the kernel
                        # says so once, before what is still queued for us. Read on: its
                        # clean stop's "exit" may be there (we end as it says, our children
                        # with us), else the EOF comes. Taken for the end, the children of
                        # a supervisor that lives on would be left running, its own.
                        if reset:
                            return
                        reset = True
                        continue
                    if not data:
                        return  # the supervisor is gone: see _end
                    self.standby = False
                    msg = _decode(data)
                    if msg.get("cmd") == "exit":
                        self._end()
                        return
                    if msg.get("cmd") == "spawn":
                        self._spawn(msg)
                    elif msg.get("cmd") == "fork_spare" and fds:
                        self._fork_spare(fds.pop(), sel)
                    for fd in fds:
                        os.close(fd)
                else:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self._reap()

    def _fork_spare(self, fd: int, sel: selectors.BaseSelector) -> None:
        """Fork a copy of this zygote serving on `fd` (ZygoteHandle.fork_spare). Our child
        while we live, the supervisor's once we die (a subreaper): it follows the supervisor
        as the children do, and exits on its socket's EOF as we do."""
        me = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            os.close(fd)  # the supervisor sees its end close: no spare
            print(f"zygote: cannot fork a spare: {exc}", file=sys.stderr)
            return
        if pid != 0:
            os.close(fd)
            return
        code = 0
        try:
            sel.close()
            self.sock.close()
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            follow_supervisor(me, self.supervisor)
            self.sock = socket.socket(fileno=fd)
            self.sock.set_inheritable(False)
            self.children = set()
            self.standby = True
            self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self.wake_w)
            self.send({"ev": "hello", "pid": os.getpid()})
            self.run()
        except BaseException:
            traceback.print_exc()
            code = 71
        finally:
            os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            # A stop (SIGSTOP, SIGTSTP...) and a continue are told too: the supervisor's
            # heartbeat then knows a stopped child at once, without reading /proc.
            if os.WIFSTOPPED(status):
                self.send({"ev": "stopped", "pid": pid})
                continue
            if os.WIFCONTINUED(status):
                self.send({"ev": "continued", "pid": pid})
                continue
            self.children.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            self.send({"ev": "exited", "pid": pid,
                       "code": code if code >= 0 else None,
                       "signal": -code if code < 0 else None})

    def _spawn(self, msg: dict) -> None:
        kind = msg["kind"]
        if kind not in KINDS:
            self.send({"ev": "spawn_failed", "child": msg["child"],
                       "error": f"unknown kind {msg['kind']!r}"})
            return
        me = os.getpid()
        # The child starts only once the supervisor was told its pid: it waits for this
        # pipe's byte, sent after "spawned". Without it (we died between the fork and the
        # telling) the child is one the supervisor never heard of and starts again from our
        # successor: it exits at once, before it binds its endpoint over its twin's. And its
        # "ready" cannot overtake our "spawned" on the shared socket.
        told_r, told_w = os.pipe2(os.O_CLOEXEC)
        # The supervisor may stop the child as soon as it has its pid, before the child has
        # left our SIG_IGN: blocked, a SIGTERM waits for the child's own disposition instead
        # of being discarded (the child then served on, and its stop waited out the grace).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(told_r)
            os.close(told_w)
            self.send({"ev": "spawn_failed", "child": msg["child"], "error": str(exc)})
            return
        if pid == 0:
            os.close(told_w)
            self._become_child(me, kind, msg["payload"], msg.get("beat"), told_r, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(told_r)
        self.children.add(pid)
        if self.send({"ev": "spawned", "child": msg["child"], "pid": pid}):
            with contextlib.suppress(OSError):  # (the child is gone already: its exit tells)
                os.write(told_w, TOLD)
        os.close(told_w)

    def _become_child(self, zygote: int, kind: str, payload: dict,
                      beat: int | None, told: int, mask: set[signal.Signals]) -> None:
        code = 0
        sock: socket.socket | None = None
        said_ready = False
        try:
            if not wait_told(told):
                code = UNTOLD_EXIT
                return
            if beat is not None:
                install(self.beats.beater(beat))
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a SIGTERM held: we end here
            follow_supervisor(zygote, self.supervisor)
            sock = self.sock
            sock.set_inheritable(False)

            def ready() -> None:
                nonlocal said_ready
                said_ready = True
                try:
                    sock.send(_encode({"ev": "ready", "pid": os.getpid()}))
                finally:
                    sock.close()

            launcher_for(kind)(payload, ready)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            code = exc.code if isinstance(exc, LaunchFailed) else 1
            if not isinstance(exc, LaunchFailed):  # (a launcher logged its own)
                traceback.print_exc()
            try:
                why = str(exc) if isinstance(exc, LaunchFailed) else \
                    f"{type(exc).__name__}: {exc}"
            except Exception:  # (an exception whose str() raises)
                why = type(exc).__name__
            if sock is not None and not said_ready:
                # Why it could not start (a port taken, a bad config value), for the
                # supervisor's exit event and a failed start's line: the exit code alone
                # says nothing.
                with contextlib.suppress(OSError):
                    sock.send(_encode({"ev": "start_failed", "pid": os.getpid(),
                                       "error": why[:MAX_WHY]}))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _end(self) -> None:
        """The supervisor's clean stop ("exit"): whatever child is left goes with us. At EOF
        (the supervisor died) we kill none: each child follows the supervisor by itself
        (follow_supervisor), after its orphan hooks. The kernel closes a dying process's files
        before it signals its children, so a kill from here would often come first and take
        a pty keeper before it could kill its sessions' jobs."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

