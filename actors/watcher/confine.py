"""Confinement to the configured roots (R11): every path an op touches must stay inside them.

A path is resolved with `realpath`, so `..` and symlinks are followed before the check: a
`..` or a symlink that leads outside is refused as `forbidden`, one that stays inside is fine.
`resolve_fast` remembers resolutions and trusts one only while the path still reaches the same
inode as the remembered real path.
Resolving and then opening is a race (a component swapped for a symlink in between), so
whatever is opened is checked again through `/proc/self/fd`, which names what the descriptor
really is. With no roots configured nothing is confined, but paths must be absolute.

Not covered: a hard link inside a root to a file outside it is, to the kernel, a file inside
the root; only an administrator can create one to a file the user may not read anyway.
"""

from __future__ import annotations

import os

from moorage.protocol.errors import fail


class Roots:
    """The roots every op is confined to (empty: unconfined)."""

    def __init__(self, roots: list[str] | tuple[str, ...] = (), max_memo: int = 65536) -> None:
        self._memo: dict[str, str] = {}  # absolute path -> real path, checked on each use
        self.max_memo = max_memo
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
        absolute = self.absolute(path)
        real = self._memo.get(absolute)
        if real is not None:
            try:
                st = os.stat(absolute)
                lst = os.lstat(real)
                if st.st_ino == lst.st_ino and st.st_dev == lst.st_dev:
                    return real
            except OSError:
                pass
        real = self.resolve(absolute)
        if len(self._memo) >= self.max_memo:
            self._memo.clear()
        self._memo[absolute] = real
        return real

    def check_fd(self, fd: int, path: str) -> None:
        """Refuse a descriptor whose file is outside the roots (a component was swapped
        between `resolve` and `open`)."""
        if not self.roots:
            return
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not self.contains(real):
            raise fail("forbidden", f"{path!r} was replaced by a link outside the roots",
                       detail={"path": path, "resolved": real})
