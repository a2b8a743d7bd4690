"""Bringing a tree up: the root's start-up sequence, and what a forked child runs.

Order matters in the root: take the instance lock, fork the zygote (before any thread
exists), then create the ZeroMQ context by building the Supervisor actor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime.logs import setup_logging
from moorage.actors.runtime.process import resolve
from moorage.protocol import endpoints
from moorage.supervisor.spec import SupervisorSpec, parse_tree
from moorage.supervisor.zygote import LAUNCHERS, start_zygote

SOCKET_SUFFIXES = (".rpc", ".pub", ".in")


class AlreadyRunning(RuntimeError):
    """Another live tree holds this instance's lock."""


def acquire_instance_lock(runtime_dir: Path) -> int:
    """flock the instance: released by the kernel when the root dies, however it dies."""
    fd = os.open(runtime_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise AlreadyRunning(
                f"a moorage tree is already running in {runtime_dir} (pid {holder}); "
                "stop it with `moorage down` or pick another --instance") from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def remove_stale_sockets(runtime_dir: Path) -> list[str]:
    """Socket files of a dead tree (we hold the lock, so nothing live owns them)."""
    gone = []
    for p in runtime_dir.iterdir():
        if p.suffix in SOCKET_SUFFIXES and p.is_socket():
            p.unlink()
            gone.append(p.name)
    return gone


def run_root(doc: dict[str, Any], spec: SupervisorSpec, runtime_dir: Path,
             log_level: str = "INFO") -> int:
    """Run the tree in this process until it stops; returns the exit code."""
    from moorage.supervisor.supervisor import Supervisor

    endpoints.ensure_private_dir(runtime_dir)
    lock_fd = acquire_instance_lock(runtime_dir)
    try:
        remove_stale_sockets(runtime_dir)
        setup_logging(runtime_dir, "supervisor", log_level, console_level="INFO")
        zygote = start_zygote(spec.modules(), close_fds=[lock_fd])
        sup = Supervisor(spec, runtime_dir, zygote, doc, root=True)
        sup.serve()
        return sup.exit_code
    finally:
        with contextlib.suppress(OSError):
            (runtime_dir / "lock").unlink()
        os.close(lock_fd)


# --- what a forked child runs, by kind ------------------------------------------------------


def _launch_actor(payload: dict, ready: Callable[[], None]) -> None:
    runtime_dir = Path(payload["runtime_dir"])
    config = payload["config"]
    setup_logging(runtime_dir, payload["name"], config.get("log_level", "INFO"))
    try:
        cls = resolve(payload["entry"])
        actor = cls(payload["name"], runtime_dir, config)
    except Exception:
        logger.exception("{} failed to start", payload["name"])
        raise SystemExit(1) from None
    actor.ready_hook = ready
    actor.serve()


def _launch_supervisor(payload: dict, ready: Callable[[], None]) -> None:
    from moorage.supervisor.supervisor import Supervisor

    runtime_dir = Path(payload["runtime_dir"])
    doc = payload["doc"]
    found = parse_tree(doc).find(payload["id"])
    assert found is not None and found[1].supervisor is not None
    spec = found[1].supervisor
    setup_logging(runtime_dir, spec.id)
    zygote = start_zygote(spec.modules())
    sup = Supervisor(spec, runtime_dir, zygote, doc)
    sup.ready_hook = ready
    sup.serve()
    sys.exit(sup.exit_code)


LAUNCHERS["actor"] = _launch_actor
LAUNCHERS["supervisor"] = _launch_supervisor
