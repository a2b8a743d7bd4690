"""Confinement to the configured roots (R11): every path an op touches must stay inside them.

A path is resolved as `realpath` resolves it, so `..` and symlinks are followed before the
check: a `..` or a symlink that leads outside is refused as `forbidden`, one that stays inside
is fine. What a client sends costs at most its length: a path of PATH_MAX bytes or more, which
no system call takes, is refused (`bad_args`) before anything is done with it, and the
resolution (`realpath`) looks up each name below a directory it holds open, so its cost grows
with the path's length, not with its square as `os.path.realpath`'s does (an lstat of every
prefix, each walking the whole prefix again: about 100 ms for 4,095 bytes of 2,000 names). As
the kernel does, it follows at most MAXSYMLINKS symlinks.
`resolve_fast` remembers resolutions and trusts one only while the path still reaches the same
inode as the remembered real path. It remembers only what exists (a miss would not be trusted
anyway) and holds at most MEMO_MAX_BYTES of paths, the oldest forgotten first.
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
import posixpath
import stat
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable

from moorage.actors.watcher.snapshot import PATH_MAX
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


class _Redo(Exception):
    """A directory the resolution found could not be opened (gone meanwhile, no descriptor
    left): the resolution is made again the plain way."""


MAXSYMLINKS = 40
"""Symlinks one resolution follows at most, a symlink met again counted again (Linux's
limit: a path that needs more is refused by every system call, ELOOP)."""
_HOP = 16  # names looked up below the directory held open before the next one is opened
_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def _size(name: str) -> int:
    """The bytes of `name` in a system call (fsencode's)."""
    return len(name) if name.isascii() else len(name.encode("utf-8", "surrogateescape"))


def realpath(path: str, slow: Callable[[str], bool] | None = None) -> str:
    """`os.path.realpath(path)` of an absolute `path`, made in time linear in its length.

    The same walk as posixpath's (each name lstat'ed, a symlink's target walked in its
    place, `..` taken from the path resolved so far, a symlink met again while it is being
    resolved ending the walk with the rest of the path as it is), but each name is lstat'ed
    below a directory held open (opened again every _HOP names) rather than by its whole
    path, and no string the length of the path is made for a name that is not a symlink. A
    prefix of PATH_MAX bytes or more is not looked up (the kernel would refuse it, as it
    refused posixpath's lstat); past MAXSYMLINKS symlinks the walk ends as at a loop (the
    kernel refuses the path, ELOOP). `slow`: raise _Slow before any system call on a path
    it names (the module docstring); each name's path is then made to ask it, a string of
    fewer than PATH_MAX bytes."""
    try:
        return _realpath(path, slow)
    except _Redo:
        return os.path.realpath(path) if slow is None else _leads_to("/", path, slow, {})


def _realpath(path: str, slow: Callable[[str], bool] | None) -> str:
    parts: list[str] = []  # the path resolved so far: "/" + "/".join(parts)
    sizes: list[int] = []  # the bytes each part adds to it (its "/" included)
    size = 1  # the bytes of the path resolved so far
    ok = 0  # parts[:ok]: directories that exist, with no symlink among them
    fd = -1  # parts[:base] held open (O_PATH); -1: nothing, names looked up from "/"
    base = 0
    links = 0
    seen: dict[str, tuple[list[str], list[int], int, int] | None] = {}
    # What is left to walk, innermost last: (names, [the next one], the symlink whose
    # target they are).
    levels: list[tuple[list[str], list[int], str | None]] = [(path.split("/"), [0], None)]

    def below(name: str) -> tuple[int | None, str]:
        """(directory descriptor, name relative to it) of `name` below parts[:ok]."""
        nonlocal fd, base
        if ok - base > _HOP:
            rel = "/".join(parts[base:ok])
            try:
                new = os.open(rel, _O_DIR, dir_fd=fd) if fd >= 0 else os.open("/" + rel, _O_DIR)
            except OSError:
                raise _Redo from None
            if fd >= 0:
                os.close(fd)
            fd, base = new, ok
        rel = "/".join([*parts[base:ok], name])
        return (fd, rel) if fd >= 0 else (None, "/" + rel)

    def forget() -> None:
        """parts changed other than by a name or a `..`: nothing of them is held open."""
        nonlocal fd, base
        if fd >= 0:
            os.close(fd)
        fd, base = -1, 0

    try:
        while levels:
            names, at, key = levels[-1]
            if at[0] == len(names):
                levels.pop()
                if key is not None:
                    seen[key] = (parts[:], sizes[:], size, ok)
                continue
            name = names[at[0]]
            at[0] += 1
            if not name or name == ".":
                continue
            if name == "..":  # the parent of what is resolved so far (as posixpath does)
                if parts:
                    parts.pop()
                    size -= sizes.pop()
                    ok = min(ok, len(parts))
                    if base > ok:  # (by one: the directory held open is left)
                        try:
                            up = os.open("..", _O_DIR, dir_fd=fd)
                        except OSError:
                            raise _Redo from None
                        os.close(fd)
                        fd, base = up, base - 1
                continue
            grown = _size(name) + (1 if parts else 0)
            st = None
            where: int | None = None
            rel = ""
            # (below a name that is no directory, nothing is; nor at PATH_MAX bytes or more)
            if len(parts) == ok and size + grown < PATH_MAX:
                if slow is not None:
                    newpath = "/" + "/".join([*parts, name])
                    if slow(newpath):
                        raise _Slow(newpath)
                where, rel = below(name)
                try:
                    st = os.lstat(rel, dir_fd=where)
                except OSError:
                    st = None
            if st is None or not stat.S_ISLNK(st.st_mode):
                parts.append(name)
                sizes.append(grown)
                size += grown
                if st is not None and stat.S_ISDIR(st.st_mode):
                    ok += 1
                continue
            newpath = "/" + "/".join([*parts, name])
            links += 1
            known = seen.get(newpath, False)
            if known is None or links > MAXSYMLINKS:  # a loop: the rest as it is
                out = newpath
                for names, at, _ in reversed(levels):
                    out = posixpath.join(out, "/".join(names[at[0]:]))
                return posixpath.normpath(out)
            if known is not False:  # resolved before in this walk
                parts, sizes, size, ok = known[0][:], known[1][:], known[2], known[3]
                forget()
                continue
            seen[newpath] = None
            target = os.readlink(rel, dir_fd=where)
            levels.append((target.split("/"), [0], newpath))
            if target.startswith("/"):
                parts, sizes, size, ok = [], [], 1, 0
                forget()
    finally:
        if fd >= 0:
            os.close(fd)
    return "/" + "/".join(parts)


def _leads_to(path: str, rest: str, slow: Callable[[str], bool],
              seen: dict[str, str | None]) -> str:
    """posixpath's realpath walk of `rest` from the resolved `path`, raising _Slow before
    a syscall on a path `slow` names. A symlink loop ends it where the loop was found.
    (`realpath`'s way when a directory it found cannot be opened.)"""
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


MEMO_MAX_BYTES = 8 << 20
"""The resolutions `resolve_fast` remembers hold at most this many bytes (their two paths and
an entry's own cost, MEMO_ENTRY_BYTES): a client that names many long paths (4 KB each, with
`./` or `..` in them to make them distinct) costs the watcher this much, not 65,536 of them."""
MEMO_ENTRY_BYTES = 100  # what a remembered resolution costs beside its two strings


def _memo_cost(absolute: str, real: str) -> int:
    """The bytes a remembered resolution holds: its strings (one, when the path is its own
    real path) and its entry."""
    cost = sys.getsizeof(absolute) + MEMO_ENTRY_BYTES
    # (equal strings are one stored string: _remember keeps the absolute path as its own real
    # path; `is` would count a second one when an equal string replaces the entry)
    return cost if real == absolute else cost + sys.getsizeof(real)


class Roots:
    """The roots every op is confined to (empty: unconfined)."""

    def __init__(self, roots: list[str] | tuple[str, ...] = (), max_memo: int = 65536,
                 max_memo_bytes: int = MEMO_MAX_BYTES) -> None:
        # absolute path -> real path, checked on each use; oldest first
        self._memo: OrderedDict[str, str] = OrderedDict()
        self.max_memo = max_memo
        self.max_memo_bytes = max_memo_bytes
        self.memo_bytes = 0
        # (resolutions are remembered on the loop and on the remote workers)
        self._memo_lock = threading.Lock()
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
        """The path as given, made absolute against the first root (no resolution). One of
        PATH_MAX bytes or more is refused here, before anything costs its length: no system
        call takes it (ENAMETOOLONG), and resolving it is work for nothing."""
        if not isinstance(path, str) or not path or "\0" in path:
            raise fail("bad_args", f"not a usable path: {path!r:.200}")
        if path[0] != "/":
            if not self.roots:
                raise fail("bad_args", f"{path!r:.200}: relative paths need configured roots")
            path = os.path.join(self.roots[0], path)
        if len(path) >= PATH_MAX or (not path.isascii() and _size(path) >= PATH_MAX):
            raise fail("bad_args", f"a path of {_size(path)} bytes, {path[:100]!r}...: at most "
                       f"{PATH_MAX - 1} (PATH_MAX, its NUL counted; ENAMETOOLONG)",
                       detail={"bytes": _size(path), "max": PATH_MAX - 1,
                               "errno": "ENAMETOOLONG"})
        return path

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
            realpath(absolute, slow)
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
        real = realpath(self.absolute(path))
        if not self.contains(real):
            raise fail("forbidden", f"{path!r:.200} resolves outside the configured roots",
                       detail={"path": path, "resolved": real})
        return real

    def resolve_fast(self, path: str) -> str:
        """`resolve`, but a path resolved before costs a stat and an lstat instead of a
        `realpath` (a syscall per component): the memo is used only while the kernel still
        leads `path` to the very inode at the remembered real path, which is inside."""
        return self._resolve_memo(path)[0]

    def resolve_lstat(self, path: str) -> tuple[str, os.stat_result | None]:
        """`resolve_fast`, and the real path's lstat (None: nothing is there), which a
        resolution has made anyway."""
        return self._resolve_memo(path)

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
        try:
            lst = os.lstat(real)
        except OSError:
            return real, None  # (nothing there: not remembered, a hit would not be trusted)
        self._remember(absolute, real)
        return real, lst

    def _remember(self, absolute: str, real: str) -> None:
        """Remember a resolution, the oldest forgotten past `max_memo` entries or
        `max_memo_bytes` bytes."""
        if real == absolute:
            real = absolute  # (one string for both)
        cost = _memo_cost(absolute, real)
        with self._memo_lock:
            old = self._memo.pop(absolute, None)
            if old is not None:
                self.memo_bytes -= _memo_cost(absolute, old)
            while self._memo and (len(self._memo) >= self.max_memo
                                  or self.memo_bytes + cost > self.max_memo_bytes):
                key, value = self._memo.popitem(last=False)
                self.memo_bytes -= _memo_cost(key, value)
            if cost <= self.max_memo_bytes:
                self._memo[absolute] = real
                self.memo_bytes += cost

    def memo_stats(self) -> dict[str, int]:
        """The remembered resolutions (the watcher's sys.info `resolve_memo`)."""
        return {"entries": len(self._memo), "bytes": self.memo_bytes,
                "max_bytes": self.max_memo_bytes}

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
