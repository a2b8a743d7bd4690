"""Processes a supervisor never started but must not leave behind.

A supervisor is a subreaper (zygote.become_subreaper): whatever is orphaned below it becomes
its child. Most of that is reaped as it dies (a dead keeper's shells). What still lives when
the supervisor has stopped every child of its own is a stray: a job that left its terminal
session (`setsid -f`, a daemonising dev server), out of reach of the keeper, which ends a
session by its session id. Left alone it would outlive the tree, reparented to init. So the
stop ends them as systemd's KillMode does a unit's leftovers: SIGTERM, a grace, SIGKILL.

Killing by pid is safe here: a child's pid is not reused until its parent reaps it, and its
parent is this process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path

from loguru import logger

STRAY_GRACE_S = 1.0  # from SIGTERM to SIGKILL
ROUNDS = 3  # a stray's own children are orphaned to us as it dies: looked for again


def children() -> list[int]:
    """This process's living and unreaped children, from every thread's list (a child
    belongs to the thread that forked it)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    return sorted(pids)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _gone(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _wait_gone(pidfds: dict[int, int], until: float) -> None:
    """Until every pidfd is readable (its process exited) or `until` (monotonic). (poll,
    not select: a supervisor holding custody of many sessions has descriptors past 1024.)"""
    p = select.poll()
    waiting = set(pidfds.values())
    for fd in waiting:
        p.register(fd, select.POLLIN)
    while waiting:
        left = until - time.monotonic()
        if left <= 0:
            return
        for fd, _ in p.poll(int(left * 1000) + 1):
            p.unregister(fd)
            waiting.discard(fd)


def end_strays(owner: str, grace_s: float = STRAY_GRACE_S) -> int:
    """SIGTERM each child still here, SIGKILL what is left after `grace_s`, reap them all;
    how many were found. Bounded: ROUNDS rounds of at most twice `grace_s` each."""
    found = 0
    for _ in range(ROUNDS):
        _reap_all()
        pids = children()
        if not pids:
            break
        found += len(pids)
        pidfds: dict[int, int] = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                pidfds[pid] = os.pidfd_open(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        logger.warning("{}: ending {} process(es) left below it: {}", owner, len(pids), pids)
        try:
            _wait_gone(pidfds, time.monotonic() + grace_s)
            for fd in pidfds.values():
                if not _gone(fd):
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            _wait_gone(pidfds, time.monotonic() + grace_s)
        finally:
            for fd in pidfds.values():
                os.close(fd)
    _reap_all()
    return found
