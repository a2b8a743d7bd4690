"""Confinement to the configured roots (R11): every path an op touches must stay inside them.

A path is resolved with `realpath`, so `..` and symlinks are followed before the check: a
`..` or a symlink that leads outside is refused as `forbidden`, one that stays inside is fine.
`resolve_fast` remembers resolutions and trusts one only while the path still reaches the same
inode as the remembered real path.
Resolving and then opening is a race (a component swapped for a symlink in between). `open`
closes it in the kernel where it can: a real path has no symlink in it, so it is opened with
openat2's RESOLVE_NO_SYMLINKS (Linux 5.6+), and what opens is the file at that path, inside.
Where the call is missing or refused, or a symlink was swapped in meanwhile, whatever is
opened is checked again through `/proc/self/fd`, which names what the descriptor really is.
With no roots configured nothing is confined, but paths must be absolute.

A path whose resolution leads onto a slow file system (a symlink inside a root to an NFS or
sshfs mount) is for the `remote` workers, like a path on one (`on_slow`): the question is
answered by resolving it component by component and stopping before any syscall on a slow
mount. It costs nothing while no slow file system is mounted.

Not covered: a hard link inside a root to a file outside it is, to the kernel, a file inside
the root; only an administrator can create one to a file the user may not read anyway.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable

from moorage.protocol.errors import fail

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_SYS_OPENAT2 = 437  # one number on every Linux architecture
_AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _NoSymlinksOpen:
    """openat2(path, flags, RESOLVE_NO_SYMLINKS), one `open_how` per flag set, made once.
    Whether the kernel takes the call at all is asked once, on "/": before Linux 5.6 it
    has none (ENOSYS), and a seccomp filter that does not know it refuses it (EPERM)."""

    def __init__(self) -> None:
        self._how: dict[int, tuple[object, int]] = {}
        self._available: bool | None = None

    @property
    def available(self) -> bool:
        if self._available is None:
            try:
                os.close(self("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            except OSError:
                self._available = False
            else:
                self._available = True
        return self._available

    def __call__(self, path: str, flags: int) -> int:
        how = self._how.get(flags)
        if how is None:
            made = _OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
            how = self._how[flags] = (ctypes.byref(made), ctypes.sizeof(made))  # keeps it
        fd = _syscall(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), how[0], how[1])
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return fd


_open_no_symlinks = _NoSymlinksOpen()


class _Slow(Exception):
    """The resolution reached a slow file system."""


def _leads_to(path: str, rest: str, slow: Callable[[str], bool],
              seen: dict[str, str | None]) -> str:
    """posixpath's realpath walk of `rest` from the resolved `path`, raising _Slow before
    a syscall on a path `slow` names. A symlink loop ends it where the loop was found."""
    while rest:
        name, _, rest = rest.partition("/")
        if not name or name == ".":
            continue
        if name == "..":
            path = os.path.dirname(path) or "/"
            continue
        newpath = os.path.join(path, name)
        if slow(newpath):
            raise _Slow(newpath)
        try:
            is_link = stat.S_ISLNK(os.lstat(newpath).st_mode)
        except OSError:
            is_link = False
        if not is_link:
            path = newpath
            continue
        if newpath in seen:
            known = seen[newpath]
            if known is None:
                return os.path.join(newpath, rest)  # a loop
            path = known
            continue
        seen[newpath] = None
        target = os.readlink(newpath)
        path = _leads_to("/" if target.startswith("/") else path, target, slow, seen)
        seen[newpath] = path
    return path


class Roots:
    """The roots every op is confined to (empty: unconfined)."""

    def __init__(self, roots: list[str] | tuple[str, ...] = (), max_memo: int = 65536) -> None:
        self._memo: dict[str, str] = {}  # absolute path -> real path, checked on each use
        self.max_memo = max_memo
        # What is slow (mounts.MountTable.slow_check: None while nothing slow is mounted);
        # set by the actor, which owns the mount table.
        self.slow_check: Callable[[], Callable[[str], bool] | None] = lambda: None
        resolved = []
        for r in roots:
            if not isinstance(r, str) or not os.path.isabs(r):
                raise ValueError(f"roots: {r!r} is not an absolute path")
            resolved.append(os.path.realpath(r))
        self.roots = tuple(resolved)
        # "/" as a root would make every prefix test below wrong by one separator.
        self._prefixes = tuple(r if r.endswith("/") else r + "/" for r in self.roots)

    def __bool__(self) -> bool:
        return bool(self.roots)

    def absolute(self, path: str) -> str:
        """The path as given, made absolute against the first root (no resolution)."""
        if not isinstance(path, str) or not path or "\0" in path:
            raise fail("bad_args", f"not a usable path: {path!r:.200}")
        if path[0] == "/":
            return path
        if not self.roots:
            raise fail("bad_args", f"{path!r}: relative paths need configured roots")
        return os.path.join(self.roots[0], path)

    def on_slow(self, absolute: str) -> bool:
        """Is `absolute`, or what it resolves to, on a slow file system? Answered without a
        syscall there: a remembered resolution is judged by its real path, a new one walked
        component by component up to the first slow one (module docstring)."""
        slow = self.slow_check()
        if slow is None:
            return False
        if slow(absolute):
            return True
        real = self._memo.get(absolute)
        if real is not None:
            return slow(real)
        try:
            _leads_to("/", absolute, slow, {})
        except _Slow:
            return True
        except OSError:
            return False  # (a readlink that failed: the op's own resolution says why)
        return False

    def contains(self, real: str) -> bool:
        if not self.roots:
            return True
        return real in self.roots or real.startswith(self._prefixes)

    def resolve(self, path: str) -> str:
        """The real path behind `path`; `forbidden` when it lies outside every root."""
        real = os.path.realpath(self.absolute(path))
        if not self.contains(real):
            raise fail("forbidden", f"{path!r} resolves outside the configured roots",
                       detail={"path": path, "resolved": real})
        return real

    def resolve_fast(self, path: str) -> str:
        """`resolve`, but a path resolved before costs a stat and an lstat instead of a
        `realpath` (a syscall per component): the memo is used only while the kernel still
        leads `path` to the very inode at the remembered real path, which is inside."""
        return self._resolve_memo(path)[0]

    def resolve_lstat(self, path: str) -> tuple[str, os.stat_result | None]:
        """`resolve_fast`, and the real path's lstat (None: nothing is there), which a
        remembered resolution has made anyway."""
        real, lst = self._resolve_memo(path)
        if lst is None:
            try:
                lst = os.lstat(real)
            except OSError:
                pass
        return real, lst

    def _resolve_memo(self, path: str) -> tuple[str, os.stat_result | None]:
        absolute = self.absolute(path)
        real = self._memo.get(absolute)
        if real is not None:
            try:
                if real == absolute:
                    # (no symlink on the way when it was resolved: the path and its real
                    # path are one file unless the last name is a symlink now, and one lstat
                    # says so, where a stat beside it cost a syscall more on every miss)
                    lst = os.lstat(real)
                    if not stat.S_ISLNK(lst.st_mode):
                        return real, lst
                else:
                    st = os.stat(absolute)
                    lst = os.lstat(real)
                    if st.st_ino == lst.st_ino and st.st_dev == lst.st_dev:
                        return real, lst
            except OSError:
                pass
        real = self.resolve(absolute)
        if len(self._memo) >= self.max_memo:
            self._memo.clear()
        self._memo[absolute] = real
        return real, None

    @property
    def opens_without_symlinks(self) -> bool:
        """Does `open` ask the kernel to refuse every symlink on the way (openat2)? Then a
        caller may make that call itself (the compiled read), and take `open`'s long way
        only where the kernel refuses."""
        return bool(self.roots) and _open_no_symlinks.available

    def open(self, real: str, flags: int, path: str) -> int:
        """Open `real` (what `resolve` made of `path`) without following any symlink on the
        way: it has none, so the file opened is the one at `real`, inside a root. A symlink
        there now was swapped in since the resolution: that open, or one where the kernel
        cannot refuse symlinks, goes the long way (a final symlink refused, whatever opened
        checked against the roots)."""
        if self.roots and _open_no_symlinks.available:
            try:
                return _open_no_symlinks(real, flags)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
        fd = os.open(real, flags | os.O_NOFOLLOW)
        try:
            self.check_fd(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_fd(self, fd: int, path: str) -> None:
        """Refuse a descriptor whose file is outside the roots (a component was swapped
        between `resolve` and `open`)."""
        if not self.roots:
            return
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not self.contains(real):
            raise fail("forbidden", f"{path!r} was replaced by a link outside the roots",
                       detail={"path": path, "resolved": real})
