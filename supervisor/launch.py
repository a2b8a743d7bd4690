"""Bringing a tree up: the root's start-up sequence, and what a forked child runs.

Order matters in the root: check that every socket path fits, take the instance lock, fork
the zygote (before any thread exists), then create the ZeroMQ context by building the
Supervisor actor. On the way out, whatever the way, the root removes what it left in the
runtime dir: sockets, the connection file, the records its actors kept for their successors,
the lock. Those records are removed on the way in as well, and by `down`'s clean-up: a tree
whose root was killed left them, and they name its sessions, which died with it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import shutil
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime.custody import custody_path
from moorage.actors.runtime.logs import STATE_ENV, setup_logging
from moorage.actors.runtime.process import resolve
from moorage.actors.runtime.statefile import SUCCESSION
from moorage.actors.terminal.specs import is_exec_record, remove_exec_records
from moorage.protocol import endpoints
from moorage.protocol.client.connection import read_connection_file
from moorage.protocol.remote import LISTEN_FILE, remove_plan, unbindable, write_plan
from moorage.supervisor.lifecycle import LifecycleOptions, remove_connection_file
from moorage.supervisor.remote import listen_plan
from moorage.supervisor.runtime_files import still_ours
from moorage.supervisor.spec import SupervisorSpec, parse_tree
from moorage.supervisor.zygote import (
    INSTANCE_ENV,
    LAUNCHERS,
    LaunchFailed,
    set_title,
    start_zygote,
)


class AlreadyRunning(RuntimeError):
    """Another live tree holds this instance's lock."""


class Unbindable(RuntimeError):
    """Endpoints of the listen plan that cannot be bound (remote.unbindable's words)."""

    def __init__(self, endpoints: list[str]) -> None:
        more = f"; and {len(endpoints) - 3} more" if len(endpoints) > 3 else ""
        super().__init__("cannot bind " + "; ".join(endpoints[:3]) + more)


def lock_instance(runtime_dir: Path) -> int | str:
    """The instance's lock file, open and flocked (its pid cleared), or who holds it (what
    the file says: its pid, or "?"). The lock file is removed by whoever held it last (a
    root's clean-up, `down`'s): a lock taken on a file just removed is no lock (the next
    taker makes a new file), so it is taken again on the file the path names now."""
    path = runtime_dir / endpoints.LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                return holder
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)  # (no pid while it is held without one: not a dead root's)
            # sticky: left alone by tmp cleaners (runtime_files); marked now, never after
            with contextlib.suppress(OSError):  # (a file system that refuses it: unmarked)
                os.fchmod(fd, 0o600 | stat.S_ISVTX)
            return fd
        os.close(fd)


def acquire_instance_lock(runtime_dir: Path) -> int:
    """flock the instance: released by the kernel when the root dies, however it dies."""
    fd = lock_instance(runtime_dir)
    if isinstance(fd, str):
        # (held while it starts and while it stops too: a start right after a `down` may
        # find one that has not ended yet)
        stopping = not (runtime_dir / endpoints.CONNECTION_FILE).exists()
        # (an editor that lost a race to start it wants it: `adopt`, which waits for one
        # starting, not a wait for its end)
        raise AlreadyRunning(
            f"a moorage tree is already running in {runtime_dir} (pid {fd}"
            f"{', starting or stopping' if stopping else ''}); use it with `moorage adopt "
            "--parent PID` (an editor), "
            + ("or try again once it has ended, or stop it with `moorage down`"
               if stopping else "or stop it with `moorage down`")
            + ", or pick another --instance")
    try:
        os.write(fd, str(os.getpid()).encode())
    except OSError as exc:
        # (a full runtime dir: the file was made, its pid could not be written) Removed
        # while still held, so no start that came meanwhile holds it: nothing is left.
        with contextlib.suppress(OSError):
            (runtime_dir / endpoints.LOCK_FILE).unlink()
        os.close(fd)
        raise OSError(exc.errno, f"cannot write the instance lock: {exc.strerror}",
                      str(runtime_dir / endpoints.LOCK_FILE)) from exc
    return fd


def remove_stale_sockets(runtime_dir: Path, names: list[str]) -> list[str]:
    """Socket files of a dead tree, or of our own stopped one (we hold the lock, so nothing
    live owns them): `<name>.rpc`, `.pub`, `.in`, `.sock` of the tree's actors and each
    supervisor's `<name>.custody.sock`, nothing else (another program's socket in the same
    directory is not ours to remove)."""
    ours = {f"{n}{suffix}" for n in names for suffix in endpoints.SOCKET_SUFFIXES}
    ours.update(custody_path(runtime_dir, n).name for n in names)
    gone = []
    for p in runtime_dir.iterdir():
        if p.name in ours and p.is_socket():
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def successor_records_left(runtime_dir: Path) -> bool:
    """Are any of the records a tree's actors keep for their successors in `runtime_dir`?"""
    try:
        return (runtime_dir / SUCCESSION).is_dir() or any(
            is_exec_record(name) for name in os.listdir(runtime_dir))
    except OSError:
        return False


def remove_successor_records(runtime_dir: Path) -> list[str]:
    """Remove what a tree's actors keep in `runtime_dir` for a successor within the tree's
    life, and only a live tree may use; returns what went. With the instance lock held: no
    process of a tree is left to read them, and what they name died with the tree that
    wrote them. `succession/` (the terminal's session records: a new tree that read them
    would start the dead tree's sessions again, their args run a second time; PROTOCOL: the
    next tree starts none of them) and every actor's exec records (specs.ExecRecords)."""
    gone = []
    succession = runtime_dir / SUCCESSION
    if succession.is_symlink():  # (not ours: rmtree refuses one; the link alone goes)
        with contextlib.suppress(OSError):
            succession.unlink()
            gone.append(SUCCESSION)
    elif succession.is_dir():
        shutil.rmtree(succession, ignore_errors=True)
        if not succession.exists():
            gone.append(SUCCESSION)
    return gone + remove_exec_records(runtime_dir)


def remove_dead_tree(runtime_dir: Path) -> list[str]:
    """What a tree whose root died without its clean-up (SIGKILL) left in `runtime_dir`, as
    the next `up` would remove it: the sockets of the actors its connection file names, that
    file, the listen plan, the records its actors kept for their successors, the lock. The
    lock is held meanwhile, so a live tree's files, or a starting one's, are never touched
    (and after a clean stop, with none of them left, it is not taken: an `up` meanwhile
    finds it free)."""
    lock = runtime_dir / endpoints.LOCK_FILE
    had_lock = lock.exists()
    if not had_lock and not (runtime_dir / endpoints.CONNECTION_FILE).exists() \
            and not (runtime_dir / LISTEN_FILE).exists() \
            and not successor_records_left(runtime_dir):
        return []
    try:
        fd = lock_instance(runtime_dir)
    except OSError:
        return []
    if isinstance(fd, str):
        return []  # a tree holds it
    try:
        try:
            info = read_connection_file(runtime_dir / endpoints.CONNECTION_FILE)
            names = [n for n in info["endpoints"] if isinstance(n, str)]
        except (OSError, ValueError):
            names = []
        gone = remove_stale_sockets(runtime_dir, names)
        for name in (endpoints.CONNECTION_FILE, LISTEN_FILE):
            with contextlib.suppress(FileNotFoundError):
                (runtime_dir / name).unlink()
                gone.append(name)
        gone += remove_successor_records(runtime_dir)
        lock.unlink(missing_ok=True)
        if had_lock:
            gone.append(endpoints.LOCK_FILE)
        return gone
    finally:
        os.close(fd)


def tree_names(spec: SupervisorSpec) -> list[str]:
    return [spec.id] + [c.id for _, c in spec.walk()]


def raise_descriptor_limit() -> None:
    """Take the hard limit of open descriptors as the soft one, before the zygote's fork (so
    every process of the tree has it). An editor starts us with its own soft limit (often
    1024), and libzmq aborts the process (an assertion in its ipc listener) when an accept
    finds none left: a client leaking a thousand connections would end the root, and with it
    the tree and every shell. Node raises its own the same way, so VS Code's shells already
    run with the hard limit: ours inherit it too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)  # (Linux refuses more than fs.nr_open, 2^20 by default)
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
    except (ValueError, OSError) as exc:
        logger.warning("could not raise the open-file limit from {} to {}: {}", soft, hard, exc)
        return
    logger.info("open-file limit raised from {} to {}", soft, hard)


def custody_sockets(runtime_dir: Path, spec: SupervisorSpec) -> list[Path]:
    """Each supervisor's custody socket, named by the function the supervisor binds it by."""
    from moorage.actors.runtime.custody import custody_path

    supervisors = [spec.id, *(c.id for _, c in spec.walk() if c.supervisor is not None)]
    return [custody_path(runtime_dir, s) for s in supervisors]


def run_root(doc: dict[str, Any], spec: SupervisorSpec, runtime_dir: Path,
             log_level: str = "INFO", lifecycle: LifecycleOptions | None = None,
             state: Path | None = None) -> tuple[int, str]:
    """Run the tree in this process until it stops; returns the exit code and why it ended:
    when it gave up, the child and its last exit; when it could not say ready, why; when
    asked to stop, by what (a signal's name, or sys.stop); else "". Raises PathTooLong,
    AlreadyRunning or Unbindable before anything starts. It starts from none of the records
    a tree's actors keep for their successors (a killed tree's: its sessions died with it).
    However it ends (a clean stop, an escalation, an exception), it leaves no socket file,
    connection file, such record or lock behind; the kernel's PR_SET_PDEATHSIG takes every
    process it started with it."""
    from moorage.supervisor.supervisor import Supervisor

    endpoints.check_socket_paths(runtime_dir, tree_names(spec),
                                 also=custody_sockets(runtime_dir, spec))
    endpoints.ensure_private_dir(runtime_dir)
    lock_fd = acquire_instance_lock(runtime_dir)
    try:
        remove_stale_sockets(runtime_dir, tree_names(spec))
        remove_connection_file(runtime_dir)
        remove_plan(runtime_dir)
        remove_successor_records(runtime_dir)
        planned = listen_plan(doc, tree_names(spec))
        if planned is not None:  # every actor binds its tcp endpoints by this (remote.py)
            taken = unbindable(planned[0])
            if taken:
                raise Unbindable(taken)
            write_plan(runtime_dir, planned[0])
        instance = lifecycle.instance if lifecycle is not None else runtime_dir.name
        # Every process of the tree inherits these: where its logs go, and its title's name.
        state = state or endpoints.state_dir(runtime_dir)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ[STATE_ENV] = str(state)
        os.environ[INSTANCE_ENV] = instance
        set_title("supervisor")
        setup_logging(runtime_dir, "supervisor", log_level, console_level="INFO")
        raise_descriptor_limit()
        keep_out = [lock_fd]
        if lifecycle is not None and lifecycle.ready_fd is not None:
            keep_out.append(lifecycle.ready_fd)  # so only we hold the reader's end open
        zygote = start_zygote(spec.modules(), close_fds=keep_out, owner=spec.id)
        sup = Supervisor(spec, runtime_dir, zygote, doc, root=True, lifecycle=lifecycle)
        sup.serve()
        return sup.exit_code, sup.escalation or sup.failed_start or sup.stop_cause
    finally:
        # (only while they are this tree's: a lock of another inode there is another tree's,
        # started once ours was removed, and so are the files beside it: runtime_files)
        if still_ours(runtime_dir, lock_fd):
            remove_connection_file(runtime_dir)
            remove_plan(runtime_dir)
            remove_stale_sockets(runtime_dir, tree_names(spec))
            # the tree ended: what its actors kept for successors names nothing now (exec
            # records too: an actor drops only those it wrote itself, not a killed
            # predecessor's)
            remove_successor_records(runtime_dir)
            with contextlib.suppress(OSError):
                (runtime_dir / endpoints.LOCK_FILE).unlink()
        else:
            logger.warning("{}: another tree's lock stands there now; its files are left to it",
                           runtime_dir)
        os.close(lock_fd)


# --- what a forked child runs, by kind ------------------------------------------------------


def _launch_actor(payload: dict, ready: Callable[[], None]) -> None:
    set_title(payload["name"])
    runtime_dir = Path(payload["runtime_dir"])
    config = payload["config"]
    setup_logging(runtime_dir, payload["name"], config.get("log_level", "INFO"))
    try:
        cls = resolve(payload["entry"])
        actor = cls(payload["name"], runtime_dir, config)
    except Exception as exc:
        logger.exception("{} failed to start", payload["name"])
        try:
            why = f"{type(exc).__name__}: {exc}"
        except Exception:  # (an exception whose str() raises)
            why = type(exc).__name__
        raise LaunchFailed(why) from None
    actor.ready_hook = ready
    actor.serve()


def _launch_supervisor(payload: dict, ready: Callable[[], None]) -> None:
    from moorage.supervisor.supervisor import Supervisor

    runtime_dir = Path(payload["runtime_dir"])
    doc = payload["doc"]
    found = parse_tree(doc).find(payload["id"])
    assert found is not None and found[1].supervisor is not None
    spec = found[1].supervisor
    set_title(f"supervisor {spec.id}")
    setup_logging(runtime_dir, spec.id)
    zygote = start_zygote(spec.modules(), owner=spec.id)
    sup = Supervisor(spec, runtime_dir, zygote, doc)
    sup.ready_hook = ready
    sup.serve()
    if sup.escalation:  # (the one below it that kept dying, and how it died)
        raise LaunchFailed(sup.escalation, sup.exit_code)
    sys.exit(sup.exit_code)


LAUNCHERS["actor"] = _launch_actor
LAUNCHERS["supervisor"] = _launch_supervisor
