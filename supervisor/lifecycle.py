"""The root's life beside an editor: the ready line, the connection file, following the editors
that hold the tree, the orphaned grace period and adoption.

A component of the root Supervisor (supervisor.py), reached through host.py's interface:

  ready      once every child has come up: `tree.json` in the runtime dir (0600, replaced
             atomically; what the ready line says plus the root's epoch), then the ready line
             on the channel `moorage up` gave (stdout or --ready-fd), which is closed after it
  holders    the processes the tree lives for: `--parent PID`, and each pid that adopted it
             since (several editor windows on one instance). Each is followed through its
             own pidfd, polled by the loop, so its death is seen at once, whatever kills it;
             the tree is orphaned only when the last one is gone, so that closing one window
             never stops the tree under another. `--exit-on-stdin-eof`: end of file on stdin
             means the editor that ran `up` is gone (its --parent let go whether or not that
             pid lives on; with no other holder the tree is orphaned with no parent). At most
             MAX_HOLDERS at once: each costs a descriptor of the root's.
  orphaned   the last holder gone: event `orphaned`, `lifecycle.state` "orphaned" in
             sup.status, and a timer of `[lifecycle] grace_s` (default 60 s). Sessions keep
             running meanwhile. When it fires: event `orphan_timeout`, and the tree stops
             cleanly (ask, wait, kill); the root then removes sockets, connection file and lock.
  adopted    `sys.hello {adopt: true, parent?: pid}` (or `moorage adopt`) cancels the timer
             and adds `parent` to the holders (a pid that holds it already stays one holder:
             a resent hello counts once); none given: the tree lets every holder go, follows
             no one and runs until `moorage down`. Event `adopted`. A holder lets go by
             exiting.

States (`lifecycle.state`): attached (held by one process or more), standalone (following no
one), orphaned (stopping when the grace period is over unless adopted). `parent` is the holder
that took the tree last (what an adopter is told it now follows); `holders`, when more than
one process holds it, every one of them in that order.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime.logs import STATE_ENV
from moorage.actors.runtime.loop import Timer
from moorage.actors.runtime.statefile import write_atomic
from moorage.protocol import endpoints
from moorage.protocol.client.connection import read_connection_file
from moorage.protocol.errors import fail
from moorage.supervisor.host import SupervisorHost

DEFAULT_GRACE_S = 60.0
# The most processes that may hold the tree at once (one pidfd each): editor windows on one
# instance number a few, and a client adopting in a loop with new pids must not take every
# descriptor of the root's.
MAX_HOLDERS = 64
HOLDERS_FULL_RETRY_MS = 1000  # `busy` past MAX_HOLDERS: a slot frees when a holder exits
START_FAILED_EXIT_CODE = 1  # (the CLI's EXIT_ERROR: the tree could not finish its start)


@dataclass
class LifecycleOptions:
    """What `moorage up` asked for (supervisor/launch.py fills it from the command line)."""

    instance: str
    ready_fd: int | None = None  # where the ready line goes; closed after it
    parent: int | None = None  # the editor's pid, followed through a pidfd
    stdin_eof: bool = False  # end of file on stdin counts as the editor's death
    grace_s: float = DEFAULT_GRACE_S
    version: str = ""


def write_line(fd: int, obj: dict[str, Any]) -> None:
    """One JSON line on `fd`, then close it: a reader sees the line and end of file. A reader
    that went away (EPIPE) loses nothing it wanted."""
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        logger.warning("ready line not delivered: {}", exc)
    finally:
        os.close(fd)


def same_user(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


class Lifecycle:
    def __init__(self, sup: SupervisorHost, opts: LifecycleOptions) -> None:
        self.sup = sup
        self.opts = opts
        self.connection_file = sup.runtime_dir / endpoints.CONNECTION_FILE
        self.state = "standalone"
        # pid -> its pidfd, in the order each took the tree (the last is `parent`)
        self.holders: dict[int, int] = {}
        self._first: int | None = None  # `up --parent`, while it holds the tree
        self._gone: int | None = None  # orphaned: the holder whose death left none (None: EOF)
        self._grace: Timer | None = None
        self._orphaned_at: float | None = None
        self.ready_at: float | None = None
        self._stdin_blocking = True

    # --- start and ready ---------------------------------------------------------------------

    @property
    def parent(self) -> int | None:
        """The holder that took the tree last; orphaned, the one whose death left none."""
        if self.holders:
            return next(reversed(self.holders))
        return self._gone if self.state == "orphaned" else None

    def start(self) -> None:
        """On the root's first loop turn: follow the editor from now on."""
        if self.opts.parent is not None:
            self._follow(self.opts.parent)
            if self.opts.parent in self.holders:
                self._first = self.opts.parent
        if self.opts.stdin_eof:
            # Non-blocking, since a wake-up another reader of the same file took first must
            # not hold the loop; the flag is the open file's, shared with whoever gave it us
            # (a terminal's shell), so it is put back when we stop watching.
            self._stdin_blocking = os.get_blocking(0)
            os.set_blocking(0, False)
            self.sup.loop.add_reader(0, self._on_stdin)

    def ready_info(self) -> dict[str, Any]:
        """The ready line (and, with the epoch, the connection file)."""
        from moorage.protocol.envelope import PROTO_VERSION

        rd = self.sup.runtime_dir
        names = [self.sup.name] + [c.id for _, c in self.sup.spec.walk()]
        tcp = getattr(self.sup, "tcp", None)  # remote mode: where and how over tcp
        remote = {"remote": tcp.connection_table()} if tcp is not None else {}
        return {"moorage": "ready", "version": self.opts.version, "protocol": PROTO_VERSION,
                "pid": os.getpid(), "instance": self.opts.instance, "runtime_dir": str(rd),
                "connection_file": str(self.connection_file),
                "endpoints": {n: {"rpc": endpoints.rpc(rd, n), "pub": endpoints.pub(rd, n)}
                              for n in names}, **remote}

    def ready(self) -> bool:
        """Every child is up: write the connection file, then say so on the ready channel.
        False when the file cannot be written (out of descriptors or space): a tree no client
        can find is no tree, and an editor waiting for the line is told why instead (the
        tree stops: `failed_start`)."""
        info = self.ready_info()
        state = os.environ.get(STATE_ENV, "")
        try:
            write_atomic(self.connection_file, json.dumps(
                {**info, "epoch": self.sup.epoch, "state_dir": state}, indent=1).encode()
                + b"\n")
        except OSError as exc:
            logger.error("the connection file {}: {}; stopping", self.connection_file, exc)
            self.sup.failed_start = f"could not write {self.connection_file}: {exc}"
            self.sup.exit_code = START_FAILED_EXIT_CODE
            self.sup.stop()
            return False
        self.ready_at = self.sup.loop.clock()
        fd, self.opts.ready_fd = self.opts.ready_fd, None
        if fd is not None:
            write_line(fd, info)
        return True

    # --- following the editor ----------------------------------------------------------------

    def _follow(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            self._gone = pid
            why = "was gone" if isinstance(exc, ProcessLookupError) else \
                f"could not be followed ({exc.strerror or exc})"
            self._orphan(f"parent {pid} {why} when the tree started following it")
            return
        self._hold(pid, pidfd)

    def _hold(self, pid: int, pidfd: int) -> None:
        """`pid` holds the tree from now on (the newest holder: `parent`)."""
        self.holders[pid] = pidfd
        self.state = "attached"
        self._gone = None
        self.sup.loop.add_reader(pidfd, lambda: self._holder_gone(pid))

    def _let_go(self, pid: int) -> None:
        pidfd = self.holders.pop(pid, None)
        if pidfd is not None:
            self.sup.loop.remove_reader(pidfd)
            os.close(pidfd)
        if pid == self._first:
            self._first = None

    def _let_all_go(self) -> None:
        for pid in list(self.holders):
            self._let_go(pid)

    def _holder_gone(self, pid: int) -> None:
        self._let_go(pid)
        if self.holders:
            logger.info("holder {} exited; {} still hold the tree (parent now {})", pid,
                        len(self.holders), self.parent)
            return
        self._gone = pid
        self._orphan(f"parent {pid} exited")

    def _on_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            data = b""
            logger.warning("stdin unreadable ({}): taken as end of file", exc)
        if data:
            return  # what the editor writes there means nothing to us
        self._unwatch_stdin()
        if self.state == "orphaned":
            return
        # The editor that ran `up` is gone whatever its pid does now: its hold ends. With
        # nobody else holding the tree, it is orphaned with no parent, so that nobody reads
        # "parent P is gone" of a P still alive.
        if self._first is not None:
            self._let_go(self._first)
        if self.holders:
            logger.info("end of file on stdin: the first editor let go; {} still hold the "
                        "tree (parent {})", len(self.holders), self.parent)
            return
        self._gone = None
        self._orphan("end of file on stdin")

    def _unwatch_stdin(self) -> None:
        if self.opts.stdin_eof:
            self.sup.loop.remove_reader(0)
            self.opts.stdin_eof = False
            with contextlib.suppress(OSError):  # (closed, or gone with its writer)
                os.set_blocking(0, self._stdin_blocking)

    def _orphan(self, why: str) -> None:
        if self.sup.shutting_down or self.state == "orphaned":
            return
        self.state = "orphaned"
        self._orphaned_at = self.sup.loop.clock()
        grace = self.opts.grace_s
        logger.warning("orphaned: {}; stopping in {:g} s unless adopted", why, grace)
        self.sup.event("orphaned", parent=self.parent, reason=why, grace_s=grace)
        if self.sup.notify is not None:
            self.sup.notify.send(f"STATUS=orphaned ({why}); stopping in {grace:g} s "
                                 "unless adopted")
        self._grace = self.sup.loop.call_later(grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        logger.warning("nobody adopted the tree in {:g} s: stopping", self.opts.grace_s)
        self.sup.event("orphan_timeout", parent=self.parent, grace_s=self.opts.grace_s)
        self.sup.stop()

    # --- adoption ----------------------------------------------------------------------------

    def adopt(self, parent: int | None) -> dict[str, Any]:
        """`sys.hello {adopt: true}`: cancel an orphaned tree's shutdown; `parent` holds the
        tree from now on, beside whoever held it (None: nobody does; it runs until stopped).
        Idempotent, as hello is: a pid that holds the tree already stays one holder."""
        if self.sup.shutting_down:
            raise fail("stopping", "the tree is already stopping; start a new one")
        if parent is not None and (parent <= 0 or not same_user(parent)):
            raise fail("bad_args", f"adopt: parent {parent} is not a live process of this "
                       "user")
        pidfd = None
        if parent is not None and parent not in self.holders:
            if len(self.holders) >= MAX_HOLDERS:
                raise fail("busy", f"adopt: {MAX_HOLDERS} processes hold the tree already "
                           "(the most it follows); retry when one has exited",
                           retry_after_ms=HOLDERS_FULL_RETRY_MS)
            # First, before anything changes: a parent that cannot be followed (gone since,
            # a thread's id, no descriptor left) leaves the tree as it was, its grace
            # running if it is orphaned, and the caller told why.
            try:
                pidfd = os.pidfd_open(parent)
            except OSError as exc:
                kind = "resource_exhausted" if exc.errno in (errno.EMFILE, errno.ENFILE,
                                                             errno.ENOMEM) else "bad_args"
                raise fail(kind, f"adopt: parent {parent} cannot be followed: "
                           f"{exc.strerror or exc}") from exc
        was = self.state
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self._orphaned_at = None
        if parent is None:
            # Nobody is followed from now on: neither the holders' deaths nor the first
            # editor's stdin closing say anything of the tree any more.
            self._unwatch_stdin()
            self._let_all_go()
            self._gone, self.state = None, "standalone"
        elif pidfd is None:
            # (a holder already: it took the tree last now, and keeps its one pidfd)
            self.holders[parent] = self.holders.pop(parent)
        else:
            self._hold(parent, pidfd)
        logger.info("adopted (was {}); parent now {}; {} hold the tree", was, self.parent,
                    len(self.holders))
        self.sup.event("adopted", parent=self.parent, was=was, holders=len(self.holders))
        if self.sup.notify is not None:
            self.sup.notify.send(f"STATUS=moorage tree up, adopted by {self.parent}"
                                 + (f" ({len(self.holders)} hold it)"
                                    if len(self.holders) > 1 else ""))
        return self.describe()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "parent": self.parent,
                               "grace_s": self.opts.grace_s}
        if len(self.holders) > 1:  # (one: it is `parent`)
            out["holders"] = list(self.holders)
        if self._orphaned_at is not None:
            left = self.opts.grace_s - (self.sup.loop.clock() - self._orphaned_at)
            out["stops_in_s"] = round(max(0.0, left), 3)
        return out

    # --- stopping ----------------------------------------------------------------------------

    def stopping(self) -> None:
        """The tree stops: nobody may find it from now on."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        remove_connection_file(self.sup.runtime_dir, os.getpid())

    def close(self) -> None:
        # A ready channel still open (stopped before it was ready) is launch.py's: it says
        # why on it.
        self._let_all_go()
        self._unwatch_stdin()


def remove_connection_file(runtime_dir: Path, pid: int | None = None) -> None:
    """The instance's connection file removed; given `pid`, only if it names that root (a
    tree stopping whose instance another tree took meanwhile, its lock removed by a
    cleaner: supervisor.runtime_files, leaves the other's file alone)."""
    path = runtime_dir / endpoints.CONNECTION_FILE
    if pid is not None:
        try:
            if read_connection_file(path).get("pid") != pid:
                return
        except (OSError, ValueError):
            return
    path.unlink(missing_ok=True)
