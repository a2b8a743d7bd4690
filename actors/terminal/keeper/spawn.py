"""Start a program on a new PTY without fork(): glibc's posix_spawn, through ctypes.

Why not `pty.fork()` / `os.forkpty()` / ptyprocess: the keeper is an actor, so it has a ZeroMQ
context whose I/O threads may hold locks (malloc's among them) at the moment of a fork; the
child of a fork in a threaded process may only call async-signal-safe functions before exec,
and Python code after fork is not that (ptyprocess#43, cpython#135427). `subprocess` is safe
(its child is C code) but cannot give the child a controlling terminal: that takes a
TIOCSCTTY or an open() in the child, and `preexec_fn` is exactly the unsafe kind of code.

posix_spawn does what is needed, safely, in one call. glibc (2.24+) runs the child on
clone(CLONE_VM|CLONE_VFORK) with only raw system calls before execve, and applies, in this
order: the signal mask and default dispositions, `setsid()` (POSIX_SPAWN_SETSID), then the file
actions. So the child is a session leader without a controlling terminal when the first file
action opens the PTY's slave by path without O_NOCTTY, and Linux makes that PTY its
controlling terminal (job control and ^C work as in any terminal). The next actions dup it to
stdout/stderr, chdir to the cwd (`addchdir_np`, glibc 2.29) and close every fd from 3 up
(`addclosefrom_np`, glibc 2.34, where present; every fd Python or libzmq opens is O_CLOEXEC
anyway). Every failure (no such shell, bad cwd, exec refused) comes back as posix_spawn's
return value, before this function returns: no error pipe, no half-started child.

The spawned process is a child of the caller, so the caller reaps it (a pidfd per child).
Linux and glibc only, like the rest of the tree (inotify, pidfd, prctl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import struct
import termios
from dataclasses import dataclass
from typing import Any

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

# <spawn.h> flags (glibc's values)
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSID = 0x80
# Opaque glibc structures; these sizes are generous upper bounds of theirs (80 and 336 bytes
# on x86_64), the init functions fill them.
_FILE_ACTIONS_SIZE = 512
_ATTR_SIZE = 1024
_SIGSET_SIZE = 128

_HAS_CLOSEFROM = hasattr(_libc, "posix_spawn_file_actions_addclosefrom_np")
_HAS_CHDIR = hasattr(_libc, "posix_spawn_file_actions_addchdir_np")


class SpawnError(OSError):
    """posix_spawn refused: `errno` says why (ENOENT: no such program, EACCES, ENOTDIR...)."""


@dataclass(frozen=True, slots=True)
class Spawned:
    pid: int
    master: int  # the PTY's master fd, non-blocking, close-on-exec; the caller owns it
    tty: str  # the slave's path


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise SpawnError(rc, f"{what}: {os.strerror(rc)}")


def winsize(cols: Any, rows: Any) -> tuple[int, int]:
    """A window's size as the kernel holds it (two unsigned shorts), checked before anything
    is made for it; ValueError (or TypeError) when it is not one."""
    cols, rows = int(cols), int(rows)
    if not (0 < cols <= 0xFFFF and 0 < rows <= 0xFFFF):
        raise ValueError(f"a window of {cols}x{rows}: each side is 1 to 65535")
    return cols, rows


def set_winsize(fd: int, cols: int, rows: int) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return cols, rows


def _cstrings(items: list[bytes]) -> ctypes.Array:
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def spawn_on_pty(
    path: str, argv: list[str], env: dict[str, str], cwd: str | None, cols: int, rows: int
) -> Spawned:
    """Run `path` with `argv` and exactly `env` on a new PTY of `cols` x `rows`, in its own
    session with the PTY as controlling terminal, in `cwd`. Raises SpawnError (an OSError
    with the errno) when the program cannot be started; nothing is left behind then."""
    if cwd is not None and not _HAS_CHDIR:
        raise SpawnError(errno.ENOSYS, "this libc cannot set a spawned child's cwd")
    master, slave = os.openpty()  # both O_CLOEXEC (PEP 446)
    try:
        set_winsize(master, cols, rows)
        tty = os.ttyname(slave)
        pid = _spawn(path, argv, env, cwd, tty)
    except BaseException:
        os.close(master)
        raise
    finally:
        # Ours must go, or the master never sees EOF when the shell's side closes.
        os.close(slave)
    os.set_blocking(master, False)
    return Spawned(pid, master, tty)


def _spawn(path: str, argv: list[str], env: dict[str, str], cwd: str | None, tty: str) -> int:
    actions = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _check(_libc.posix_spawn_file_actions_init(actions), "file_actions_init")
    try:
        _check(_libc.posix_spawnattr_init(attr), "spawnattr_init")
        try:
            _file_actions(actions, tty, cwd)
            _attributes(attr)
            pid = ctypes.c_int(0)
            c_argv = _cstrings([os.fsencode(a) for a in argv])
            c_env = _cstrings([os.fsencode(f"{k}={v}") for k, v in env.items()])
            rc = _libc.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr,
                                   c_argv, c_env)
            if rc != 0:
                raise SpawnError(rc, f"{path}: {os.strerror(rc)}")
            return pid.value
        finally:
            _libc.posix_spawnattr_destroy(attr)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)


def _file_actions(actions: ctypes.Array, tty: str, cwd: str | None) -> None:
    # Opened without O_NOCTTY by a session leader: it becomes the controlling terminal.
    _check(_libc.posix_spawn_file_actions_addopen(
        actions, 0, os.fsencode(tty), os.O_RDWR, 0), "addopen")
    _check(_libc.posix_spawn_file_actions_adddup2(actions, 0, 1), "adddup2")
    _check(_libc.posix_spawn_file_actions_adddup2(actions, 0, 2), "adddup2")
    if cwd is not None:
        _check(_libc.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd)),
               "addchdir")
    if _HAS_CLOSEFROM:
        _check(_libc.posix_spawn_file_actions_addclosefrom_np(actions, 3), "addclosefrom")


def _attributes(attr: ctypes.Array) -> None:
    # Python ignores SIGPIPE (and the supervisor's children may ignore more): a shell must
    # start with every signal at its default and none blocked, as subprocess's
    # restore_signals does.
    every = ctypes.create_string_buffer(_SIGSET_SIZE)
    _libc.sigemptyset(every)
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            _libc.sigaddset(every, int(sig))
    none = ctypes.create_string_buffer(_SIGSET_SIZE)
    _libc.sigemptyset(none)
    _check(_libc.posix_spawnattr_setsigdefault(attr, every), "setsigdefault")
    _check(_libc.posix_spawnattr_setsigmask(attr, none), "setsigmask")
    _check(_libc.posix_spawnattr_setflags(attr, ctypes.c_short(_SETSID | _SETSIGDEF |
                                                               _SETSIGMASK)), "setflags")
