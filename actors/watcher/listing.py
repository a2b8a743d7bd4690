"""fs.list's walk, in steps: a little on the loop, the rest on a worker.

A listing costs what it looks at, not what it returns: a recursive list with a glob that
matches nothing walks the whole tree to say so (400,000 files took longer than the
supervisor's heartbeat allows, and the watcher was killed as hung, again at each resend of
the same call). So a listing looks at `loop_entries` directory entries on the loop, which
answers the common small listing at once, and hands what is left to a worker thread that
walks it to the end while the loop serves. It stops early, `truncated`, at `max_entries`
entries returned or `max_scanned` entries looked at: the worker it holds is one of the few
that writes need too.

A `Listing` is touched by one thread at a time: the loop, then (after `step` said it is not
done) the worker it was handed to, then the loop again for `answer`.

A name that is not valid UTF-8 (Linux allows any bytes but "/" and NUL) is listed like any
other, readable in `name` and exactly in `name_bytes` (snapshot.wire_fields): one such file
never fails the listing of its directory.

Nor does a directory below the root that cannot be read fail the listing of the tree: a
`secret/` at mode 000, a build's scratch directory removed between its parent's readdir and
its own, an exited process's /proc/PID/net (EINVAL) are common in a big tree, and an error
for one of them would say nothing of the rest, and name the root, which can be read. The
walk goes on past such a directory, as a watch's walk does (snapshot.walk), and past an
entry whose lstat fails; each is named in `unreadable` ({name, error: its errno's name}),
at most `max_unreadable` of them, how many more in `unreadable_more`. A directory that
fails midway keeps the entries it gave. Only the root itself failing (to open, or to be
read to its end) fails the listing, with the root's own error.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from typing import Any

from moorage.actors.watcher.snapshot import all_sendable, wire_fields

_TYPES = {0o100000: "file", 0o040000: "dir", 0o120000: "symlink"}
_DIR = 0o040000
# A glob's length, at most: fnmatch translates it on the loop, in time quadratic in its `[`s
# (8,000 of them took seconds; 256 take a few ms).
MAX_GLOB_CHARS = 256
# The `unreadable` items one reply carries, at most: a non-root client's /proc has several
# per process of another user; the reply stays bounded as its entries are.
MAX_UNREADABLE = 1_000


class Listing:
    """The entries under `real` (names relative to it), symlinks listed but not followed."""

    __slots__ = ("_by_path", "_it", "_rel", "_stack", "entries", "glob", "max_entries",
                 "max_scanned", "max_unreadable", "real", "recursive", "scanned",
                 "truncated", "unreadable", "unreadable_more")

    def __init__(self, real: str, recursive: bool, glob: str | None, *, max_entries: int,
                 max_scanned: int, max_unreadable: int = MAX_UNREADABLE) -> None:
        self.real = real
        self.recursive = recursive
        self.glob = glob
        self.max_entries = max_entries
        self.max_scanned = max_scanned
        self.max_unreadable = max_unreadable
        self.entries: list[dict[str, Any]] = []
        self.unreadable: list[dict[str, Any]] = []
        self.unreadable_more = 0
        self.scanned = 0
        self.truncated = False
        self._by_path = glob is not None and "/" in glob
        self._stack: list[tuple[str, str]] = [(real, "")]
        self._it: Any = None  # the open scandir iterator of the directory being read
        self._rel = ""

    def step(self, budget: int | None) -> bool:
        """Look at up to `budget` more entries (None: no limit); True once the walk is over.
        OSError (the root unreadable) ends the walk with the iterator closed; one below the
        root is `unreadable`, not an error."""
        try:
            return self._walk(budget)
        except BaseException:
            self.close()
            raise

    def _walk(self, budget: int | None) -> bool:
        entries, glob, by_path = self.entries, self.glob, self._by_path
        left = -1 if budget is None else budget
        while not self.truncated:
            if self._it is None:
                if not self._stack:
                    return True
                top, self._rel = self._stack.pop()
                try:
                    self._it = os.scandir(top)
                except OSError as exc:
                    if not self._rel:
                        raise  # the root: the listing fails, naming it
                    self._skip(self._rel[:-1], exc)
                    continue
            rel = self._rel
            try:
                for e in self._it:
                    self.scanned += 1
                    name = f"{rel}{e.name}"
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # gone between readdir and stat
                    except OSError as exc:
                        self._skip(name, exc)
                        continue
                    if self.recursive and (st.st_mode & 0o170000) == _DIR:
                        self._stack.append((e.path, name + "/"))
                    if glob is None or fnmatch.fnmatchcase(name if by_path else e.name, glob):
                        if len(entries) >= self.max_entries:
                            self.truncated = True
                            break
                        entries.append({"name": name, "type": _TYPES.get(
                            st.st_mode & 0o170000, "other"), "size": st.st_size,
                            "mtime_ns": st.st_mtime_ns})
                    if self.scanned >= self.max_scanned:
                        self.truncated = True
                        break
                    left -= 1
                    if left == 0:
                        return False
                else:
                    self.close()
            except OSError as exc:  # reading the directory failed midway
                self.close()
                if not rel:
                    raise
                self._skip(rel[:-1], exc)
        self.close()
        return True

    def _skip(self, name: str, exc: OSError) -> None:
        """`name` (relative to the root) could not be read: left out, and said so."""
        if len(self.unreadable) >= self.max_unreadable:
            self.unreadable_more += 1
            return
        code = exc.errno or 0
        self.unreadable.append({"name": name, "error": errno.errorcode.get(code, str(code))})

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def answer(self) -> dict[str, Any]:
        """The reply; a path or name in it that is not valid UTF-8 in the wire's form (one
        pass over the names finds out: only a listing that has one looks at each).
        `unreadable` and `unreadable_more` only when there is something to say."""
        entries, unreadable = self.entries, self.unreadable
        for items in (entries, unreadable):
            if not all_sendable([e["name"] for e in items]):
                for e in items:
                    wire_fields(e, ("name",))
        out: dict[str, Any] = {"path": self.real, "entries": entries,
                               "truncated": self.truncated}
        if unreadable:
            out["unreadable"] = unreadable
        if self.unreadable_more:
            out["unreadable_more"] = self.unreadable_more
        wire_fields(out, ("path",))
        return out
