"""Where an instance lives: its runtime dir (sockets, lock, connection file) and its state dir
(logs, the SLO record), one of each per instance name.

Socket paths never change across restarts, so a ZeroMQ peer reconnects to a restarted actor by
itself and what it sent meanwhile waits in its queue. The runtime dir is on tmpfs
(`$XDG_RUNTIME_DIR`) and goes with a reboot; the state dir outlives it.
"""

from __future__ import annotations

import os
import stat
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
    name = check_instance(instance if instance is not None else DEFAULT_INSTANCE)
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


def private_dirs(path: Path) -> list[Path]:
    """The directories whose owner decides who reaches an instance in `path`: `path`, and its
    parent when that is moorage's own (named `moorage...`: `$XDG_RUNTIME_DIR/moorage`,
    `/tmp/moorage-<uid>`), whose owner could rename `path` away and put another there."""
    parent = path.parent
    return [path, parent] if parent != path and parent.name.startswith("moorage") else [path]


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and a private parent) with mode 0700; refuse one owned by someone else."""
    make_private_dirs(path)
    for p in private_dirs(path):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):  # (a client would refuse it: check_private_dir)
            raise PermissionError(f"{p} is a symbolic link: give the directory it names")
        if st.st_uid != os.getuid():
            raise PermissionError(f"{p} is owned by uid {st.st_uid}, not {os.getuid()}")
        if st.st_mode & 0o077:
            os.chmod(p, 0o700)
    return path


class NotPrivate(PermissionError):
    """A runtime dir a client must not trust: its lock, connection file and sockets may be
    another user's (PROTOCOL.md section 2)."""


FILE_TYPES = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO",
              stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory",
              stat.S_IFREG: "a regular file"}


def file_type(mode: int) -> str:
    return FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")


def check_private_dir(path: Path) -> None:
    """Read-only, for a client about to trust what `path` holds: each of `private_dirs(path)`
    must be a directory (not a symbolic link, which is not followed) owned by this user that
    no group or other can write, else NotPrivate naming it, its owner and its mode. (Another
    local user who made `/tmp/moorage-<uid>/NAME` first would otherwise be sent every call.)
    FileNotFoundError or NotADirectoryError when there is no such directory. `moorage up`
    makes them so (`ensure_private_dir`)."""
    uid = os.getuid()
    for p in private_dirs(path):
        st = os.lstat(p)
        mode, owner = stat.S_IMODE(st.st_mode), st.st_uid
        if not stat.S_ISDIR(st.st_mode):
            raise NotPrivate(f"{p} is {file_type(st.st_mode)} (owner uid {owner}, mode "
                             f"{mode:04o}), not a directory: a client does not follow one to "
                             "find an instance")
        if owner != uid:
            raise NotPrivate(f"{p} (mode {mode:04o}) is owned by uid {owner}, not by this "
                             f"user (uid {uid}): another user may have made it to be sent "
                             "this user's calls; remove it, or use another instance")
        if mode & 0o022:
            raise NotPrivate(f"{p} (owner uid {owner}, mode {mode:04o}) can be written by "
                             "group or others, who could put a lock and sockets of theirs "
                             f"there; chmod 700 {p}")


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
