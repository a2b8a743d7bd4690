"""Finding a running tree: its instance lock and its connection file, `tree.json`.

A tree holds an exclusive flock on `<runtime_dir>/lock` for as long as its root lives (the
kernel drops it however the root dies), and once every child answers it writes
`<runtime_dir>/tree.json` (mode 0600, replaced atomically, removed on a clean stop): what its
ready line said, plus the root's epoch. A client given an instance name reads both; with no
tree running (the lock free) it raises `not_running` at once instead of waiting for a reply
that cannot come. A tree still starting (lock held, no file yet) is connected to at its runtime
dir: ZeroMQ queues the requests until the sockets are bound.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.protocol import endpoints
from moorage.protocol.errors import MoorageError, WireError

MAX_CONNECTION_FILE = 1 << 20  # a tree of a few hundred actors is a few tens of KiB


def not_running(message: str) -> MoorageError:
    return MoorageError(WireError.of("not_running", message))


def tree_pid(runtime_dir: Path) -> int | None:
    """The root's pid if a live tree holds the instance lock (-1 if it has not written its
    pid yet), else None."""
    try:
        fd = os.open(runtime_dir / endpoints.LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
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
    an orphaned tree cancels its shutdown, and from now on follows `parent` (default: this
    process) as it followed the editor that started it. Returns the hello's reply, whose
    `lifecycle` says the state the tree is now in."""
    return client.call("supervisor", "sys.hello", {
        "client": f"adopt {os.getpid()}", "adopt": True,
        "parent": os.getpid() if parent is None else parent})

