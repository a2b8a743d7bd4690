"""Where an instance lives: its runtime dir (sockets, lock, connection file) and its state dir
(logs, the SLO record), one of each per instance name.

Socket paths never change across restarts, so a ZeroMQ peer reconnects to a restarted actor by
itself and what it sent meanwhile waits in its queue. The runtime dir is on tmpfs
(`$XDG_RUNTIME_DIR`) and goes with a reboot; the state dir outlives it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

DEFAULT_INSTANCE = "default"
CONNECTION_FILE = "tree.json"  # in the runtime dir, while a tree runs (PROTOCOL.md section 2)
LOCK_FILE = "lock"
# sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
SUN_PATH_MAX = 107
SOCKET_SUFFIXES = (".rpc", ".pub", ".in", ".sock")  # .sock: the pty keeper's


def check_instance(name: str) -> str:
    if "/" in name or name in ("", ".", "..") or "\0" in name:
        raise ValueError(f"bad instance name {name!r}")
    return name


def xdg_dir(env: Mapping[str, str], name: str) -> str | None:
    """$name when it is an absolute path: the XDG spec says a relative one is ignored (it
    would name a place in the working directory, an editor's workspace)."""
    value = env.get(name)
    return value if value and os.path.isabs(value) else None


def runtime_dir(instance: str | None = None, env: Mapping[str, str] | None = None) -> Path:
    """`--instance NAME`, else MOORAGE_RUNTIME_DIR (made absolute: the endpoints, the ready
    line and the connection file name it to processes in other directories), else
    $XDG_RUNTIME_DIR/moorage/NAME, else /tmp/moorage-<uid>/NAME."""
    env = os.environ if env is None else env
    if instance is None and env.get("MOORAGE_RUNTIME_DIR"):
        return Path(os.path.abspath(env["MOORAGE_RUNTIME_DIR"]))
    name = check_instance(instance or DEFAULT_INSTANCE)
    base = xdg_dir(env, "XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "moorage" / name
    return Path(f"/tmp/moorage-{os.getuid()}") / name


def state_dir(runtime: Path, instance: str | None = None,
              env: Mapping[str, str] | None = None) -> Path:
    """Where an instance's logs and SLO record go: MOORAGE_STATE_DIR, else
    $XDG_STATE_HOME/moorage/NAME, else ~/.local/state/moorage/NAME. NAME is the instance's
    name, or the runtime dir's own name when the tree was given a directory instead."""
    env = os.environ if env is None else env
    if env.get("MOORAGE_STATE_DIR"):
        return Path(os.path.abspath(env["MOORAGE_STATE_DIR"]))
    name = check_instance(instance or runtime.name or DEFAULT_INSTANCE)
    base = xdg_dir(env, "XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home())
                                                   / ".local" / "state")
    return Path(base) / "moorage" / name


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and a private parent) with mode 0700; refuse one owned by someone else."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for p in (path, path.parent):
        st = p.stat()
        if p == path or p.name.startswith("moorage"):
            if st.st_uid != os.getuid():
                raise PermissionError(f"{p} is owned by uid {st.st_uid}, not {os.getuid()}")
            if st.st_mode & 0o077:
                os.chmod(p, 0o700)
    return path


def rpc(rdir: Path | str, name: str) -> str:
    return f"ipc://{rdir}/{name}.rpc"


def pub(rdir: Path | str, name: str) -> str:
    return f"ipc://{rdir}/{name}.pub"


def metrics_in(rdir: Path | str) -> str:
    return f"ipc://{rdir}/metrics.in"


class PathTooLong(ValueError):
    """A socket path that a Unix socket cannot bind or connect to (sun_path is 107 bytes)."""


def socket_paths(rdir: Path | str, names: Iterable[str]) -> list[str]:
    """Every socket file an instance with these actors binds in `rdir`."""
    names = list(names)
    out = [f"{rdir}/{n}{suffix}" for n in names for suffix in (".rpc", ".pub")]
    return [*out, f"{rdir}/metrics.in"] if "metrics" in names else out


def check_socket_paths(rdir: Path | str, names: Iterable[str]) -> None:
    """PathTooLong naming the longest path and the limit, if any socket would not fit."""
    paths = socket_paths(rdir, list(names))
    longest = max(paths, key=lambda p: len(os.fsencode(p)), default="")
    size = len(os.fsencode(longest))
    if size > SUN_PATH_MAX:
        raise PathTooLong(
            f"socket path {longest} is {size} bytes, over the {SUN_PATH_MAX}-byte limit of a "
            f"Unix socket path (sun_path); use a shorter instance name, or set "
            f"MOORAGE_RUNTIME_DIR (or XDG_RUNTIME_DIR) to a shorter directory")
