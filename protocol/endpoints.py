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
    base = xdg_dir(env, "XDG_STATE_HOME") or str(
        home(env, "MOORAGE_STATE_DIR or XDG_STATE_HOME") / ".local" / "state")
    return Path(base) / "moorage" / name


def home(env: Mapping[str, str], instead: str) -> Path:
    """$HOME, else the user database's; ValueError, naming `instead` (what makes a home
    unneeded), when neither says: a container started with `--user N` and no HOME."""
    if env.get("HOME"):
        return Path(env["HOME"])
    try:
        return Path.home()
    except RuntimeError:  # (pathlib's word for "no HOME, and no passwd entry")
        raise ValueError(f"no home directory: HOME is not set and uid {os.getuid()} has no "
                         f"entry in the user database; set HOME, or {instead}") from None


def make_private_dirs(path: Path) -> Path:
    """Create `path` and every missing directory above it, one level at a time, each 0700
    whatever the umask (`mkdir(parents=True)` gives those above the umask's mode: 0777 under
    umask 000). Directories that exist are left as they are."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile (another `up`): whoever made it chose
            continue
        os.chmod(d, 0o700)  # (a umask may take the owner's bits too)
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and a private parent) with mode 0700; refuse one owned by someone else."""
    make_private_dirs(path)
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


def ipc_path(endpoint: str) -> str:
    """The socket file of an `ipc://` endpoint."""
    return endpoint.removeprefix("ipc://")


def socket_paths(rdir: Path | str, names: Iterable[str],
                 also: Iterable[Path | str] = ()) -> list[str]:
    """Every socket file an instance with these members may bind in `rdir`: each one's rpc and
    pub, the metrics actor's metrics.in, the pty keeper's `<name>.sock` (any worker may be
    one: its class decides, which the root does not import), and `also`, the sockets named
    elsewhere (each supervisor's custody socket, actors/runtime/custody.py)."""
    names = list(names)
    out = [ipc_path(f(rdir, n)) for n in names for f in (rpc, pub)]
    out += [f"{rdir}/{n}.sock" for n in names]
    if "metrics" in names:
        out.append(ipc_path(metrics_in(rdir)))
    return [*out, *(str(p) for p in also)]


def check_socket_paths(rdir: Path | str, names: Iterable[str],
                       also: Iterable[Path | str] = ()) -> None:
    """PathTooLong naming the longest path and the limit, if any socket would not fit."""
    paths = socket_paths(rdir, list(names), also)
    longest = max(paths, key=lambda p: len(os.fsencode(p)), default="")
    size = len(os.fsencode(longest))
    if size > SUN_PATH_MAX:
        raise PathTooLong(
            f"socket path {longest} is {size} bytes, over the {SUN_PATH_MAX}-byte limit of a "
            f"Unix socket path (sun_path); use a shorter instance name, or set "
            f"MOORAGE_RUNTIME_DIR (or XDG_RUNTIME_DIR) to a shorter directory")
