"""Finding a running tree: its instance lock and its connection file, `tree.json`.

A tree holds an exclusive flock on `<runtime_dir>/lock` for as long as its root lives (the
kernel drops it however the root dies), and once every child answers it writes
`<runtime_dir>/tree.json` (mode 0600, replaced atomically, removed on a clean stop): what its
ready line said, plus the root's epoch. A client given an instance name reads both; with no
tree running (the lock free) it raises `not_running` at once instead of waiting for a reply
that cannot come. A tree still starting (lock held, no file yet) is connected to at its runtime
dir: ZeroMQ queues the requests until the sockets are bound.

Before it trusts any of it, a client checks the runtime dir (`check_runtime_dir`): another
local user who made it first (`/tmp/moorage-<uid>/NAME`, where there is no XDG_RUNTIME_DIR)
would serve a lock, a connection file and sockets of theirs and be sent every call. The lock is
opened without blocking or following a link, and must be a regular file of this user's: a FIFO
named `lock` would otherwise hang every command, `down` too. Refused: `forbidden`, at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.protocol import endpoints
from moorage.protocol.errors import MoorageError, WireError

MAX_CONNECTION_FILE = 1 << 20  # a tree of a few hundred actors is a few tens of KiB


def not_running(message: str) -> MoorageError:
    return MoorageError(WireError.of("not_running", message))


def forbidden(message: str) -> MoorageError:
    return MoorageError(WireError.of("forbidden", message))


def check_runtime_dir(runtime_dir: Path) -> bool:
    """Whether there is a runtime dir at `runtime_dir`; `forbidden` if there is one this user
    must not trust (endpoints.check_private_dir: another's, writable by others, a link)."""
    try:
        endpoints.check_private_dir(runtime_dir)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except endpoints.NotPrivate as exc:
        raise forbidden(f"refusing the runtime dir: {exc}") from None
    return True


def open_lock(path: Path) -> int | None:
    """The instance lock open for reading, None if there is none; `forbidden` if it is not a
    regular file of this user's. Never blocks: a FIFO opens at once, and is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # a symbolic link (ELOOP), a socket (ENXIO), ...
        try:
            what = endpoints.file_type(os.lstat(path).st_mode)
        except OSError:
            what = "unreadable"
        raise forbidden(f"refusing the instance lock {path}: it is {what} "
                        f"({exc.strerror}); a tree's lock is a regular file") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise forbidden(f"refusing the instance lock {path}: it is "
                        f"{endpoints.file_type(st.st_mode)} owned by uid {st.st_uid} (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}); a tree's lock is a regular file "
                        f"of this user's (uid {os.getuid()})")
    return fd


def tree_pid(runtime_dir: Path) -> int | None:
    """The root's pid if a live tree holds the instance lock (-1 if it has not written its
    pid yet), else None; `forbidden` for a runtime dir or a lock this user must not trust."""
    if not check_runtime_dir(runtime_dir):
        return None
    fd = open_lock(runtime_dir / endpoints.LOCK_FILE)
    if fd is None:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Connection:
    """Where a running tree listens. `info` is the connection file's content when there is
    one (None while the tree is still starting)."""

    runtime_dir: Path
    pid: int
    info: dict[str, Any] | None = field(default=None)

    @property
    def epoch(self) -> str | None:
        return None if self.info is None else self.info.get("epoch")


def read_connection_file(path: Path) -> dict[str, Any]:
    """The connection file's content; ValueError if it is not one."""
    with open(path, "rb") as f:
        data = f.read(MAX_CONNECTION_FILE + 1)
    if len(data) > MAX_CONNECTION_FILE:
        raise ValueError(f"{path}: larger than {MAX_CONNECTION_FILE} bytes")
    try:
        info = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("runtime_dir"), str) \
            or not isinstance(info.get("endpoints"), dict):
        raise ValueError(f"{path}: not a moorage connection file")
    return info


def from_file(path: str | Path) -> Connection:
    """The tree a connection file describes; `not_running` if the file is gone, stale (its
    tree's lock is free) or not a connection file."""
    path = Path(path)
    pid = tree_pid(path.parent)
    if pid is None:
        raise not_running(f"no moorage tree is running for {path} (its instance lock in "
                          f"{path.parent} is free)")
    try:
        info = read_connection_file(path)
    except FileNotFoundError:
        raise not_running(f"{path} does not exist: the tree in {path.parent} has not "
                          "written it yet, or it stopped") from None
    except (OSError, ValueError) as exc:
        raise not_running(f"cannot read the connection file: {exc}") from None
    return Connection(Path(info["runtime_dir"]), pid, info)


def locate(instance: str | None = None, env: dict[str, str] | None = None) -> Connection:
    """The running tree of an instance (None: `$MOORAGE_RUNTIME_DIR`, else the default
    instance), or `not_running` at once."""
    try:
        rdir = endpoints.runtime_dir(instance, env)
    except ValueError as exc:
        raise MoorageError(WireError.of("bad_args", str(exc))) from None
    pid = tree_pid(rdir)
    if pid is None:
        what = f"instance {instance!r}" if instance else f"{rdir}"
        raise not_running(f"no moorage tree is running for {what} (no live lock in {rdir}); "
                          "start one with `moorage up`")
    path = rdir / endpoints.CONNECTION_FILE
    try:
        info = read_connection_file(path)
    except FileNotFoundError:
        return Connection(rdir, pid)  # starting: the sockets are in the runtime dir
    except (OSError, ValueError) as exc:
        raise not_running(f"cannot read the connection file: {exc}") from None
    return Connection(Path(info["runtime_dir"]), pid, info)


def adopt(client: Any, parent: int | None = None) -> dict[str, Any]:
    """Say `sys.hello {adopt: true}` to the root supervisor through `client` (a `Client`):
    `parent` (default: this process) holds the tree from now on, beside whoever held it
    already, as the editor that started it does: the tree is orphaned only when the last of
    them has exited, and an orphaned tree cancels its shutdown. Saying it again adds no
    holder. Returns the hello's reply, whose `lifecycle` says the state the tree is now in
    (`holders`, when more than one process holds it)."""
    return client.call("supervisor", "sys.hello", {
        "client": f"adopt {os.getpid()}", "adopt": True,
        "parent": os.getpid() if parent is None else parent})

