"""fs.read / fs.write / fs.stat / fs.list: confined, retried, cached.

Reads: a cache hit costs one stat. A miss opens the file confined (`Roots.open`: no symlink
followed on the way, or the descriptor checked against the roots), fstats, preads, and fstats
again: if the stat tuple moved during the read (a writer was busy) the read is torn, and
retried as a transient error, so no caller gets half of one version and half of another. A
read that still fails after the retries, while an earlier copy is cached, answers that copy
with `stale: true` (the seed's "cache previous"). Reads over `max_read` bytes are refused
with `file_too_large`: page them. On the loop a miss takes its bytes from the page cache only
(preadv2 RWF_NOWAIT): a file not all in memory is read again on an `offload` worker, so a
cold file on a slow disk never holds the loop.
A FIFO, device or socket is refused (`bad_args`, naming it) before it is opened; a file that
reports no size (procfs) is read to its end within `max_read`, and a file whose contents are
not its reported size (procfs, sysfs) is never cached: its stat key does not move with them.

Writes run on the `offload` workers (fsync waits for the disk), one at a time per file; a
FIFO, device or socket is refused by its stat before anything opens it, and the open itself
is O_NONBLOCK (a FIFO swapped in meanwhile fails it instead of waiting for a reader). Writes
happen under a descriptor of the parent directory (no path re-resolution between the
check and the write). `atomic` writes a temporary file beside the target, fsyncs it, renames
it over the target and fsyncs the directory, so a reader sees the old or the new file, never a
mix. `if_match` is the etag the caller last saw ("" = must not exist): anything else is a
`conflict`. Both the temporary and the target are reported to `on_self_write` so the
watcher can tag the events they cause `origin: self`.

A path on a slow file system (`slow`: NFS, SMB, FUSE and their kin, mounts.MountTable) may
not answer at all: every op on one runs wholly on the `remote` workers, its resolution
included, and is not cached (a hit's revalidating stat would run on the loop). A stalled
mount then holds those workers and its own calls (busy when they are all taken), never the
loop or the other files.

Seams for tests (replaced in-process, no sockets needed): `reader(real, offset, length,
wait=True)` and `stat(path)`; `schedule(delay, fn)` is the loop's `call_later`.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat as stat_mod
from collections.abc import Callable
from typing import Any

from moorage.actors.runtime import Attached
from moorage.actors.watcher.cache import FileCache, StatKey, etag, stat_info, stat_key
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.listing import Listing
from moorage.actors.watcher.retry import Attempts, Pending, RetryPolicy, Schedule, os_error
from moorage.actors.watcher.workers import Offload
from moorage.protocol.envelope import Packed, packb
from moorage.protocol.errors import MoorageError, fail

TMP_MARK = ".moorage-"
_SPECIAL = {stat_mod.S_IFIFO: "fifo", stat_mod.S_IFCHR: "character device",
            stat_mod.S_IFBLK: "block device", stat_mod.S_IFSOCK: "socket"}
READ_CHUNK = 1 << 16


def special_file(mode: int, path: str, verb: str) -> MoorageError:
    """The error for a FIFO, device or socket: opening one can wait forever (a FIFO with no
    reader) or act on hardware, so it is refused before anything is opened."""
    kind = _SPECIAL.get(stat_mod.S_IFMT(mode), "special file")
    return fail("bad_args", f"{path}: a {kind}, not a regular file; not {verb}",
                detail={"path": path, "type": kind})


def refuse_special(lst: os.stat_result | None, path: str, verb: str) -> None:
    """`special_file` when the lstat of the real path (`lst`; an lstat never blocks) is
    one; anything else, and a path where nothing is (None), goes on to the attempt, which
    classifies its own errors."""
    if lst is not None and stat_mod.S_IFMT(lst.st_mode) in _SPECIAL:
        raise special_file(lst.st_mode, path, verb)


class WouldWait(Exception):
    """A read on the loop found data not in the page cache (or a file system that cannot
    tell): it is done again where waiting is allowed."""


_NOWAIT_ERRNOS = (errno.EAGAIN, errno.EOPNOTSUPP)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", None)

_read_cached: Callable[[str, int, int, int], tuple[bytes, os.stat_result] | None] | None = None
_write_plain: Callable[[str, str, bytes], os.stat_result | None] | None = None
if os.environ.get("MOORAGE_WATCHER_CORE") != "python":
    try:  # the common cases in one call each (actors/watcher/_cfile.c)
        from moorage.actors.watcher._cfile import read_cached as _read_cached
        from moorage.actors.watcher._cfile import write_plain as _write_plain
    except ImportError:
        pass
FILE_CORE: str = "python" if _read_cached is None else "compiled"
"""The loop's page-cache read and a worker's write in place here (the watcher's sys.info
says it, `file_core`)."""


def _pread_cached(fd: int, n: int, offset: int) -> bytes:
    """`n` bytes at `offset` from the page cache only (preadv2 RWF_NOWAIT, Linux 4.14+);
    WouldWait when part of it would come from the disk or the network. Where the flag is
    unknown, a plain pread."""
    if _RWF_NOWAIT is None:
        return os.pread(fd, n, offset)
    buf = bytearray(n)
    try:
        got = os.preadv(fd, [buf], offset, _RWF_NOWAIT)
    except OSError as exc:
        if exc.errno in _NOWAIT_ERRNOS:
            raise WouldWait from None
        raise
    if got < n:  # the rest is not cached (or the file shrank: the full read will say)
        raise WouldWait
    return bytes(buf)


def _tmp_name(name: str) -> str:
    """The temporary file an atomic write of `name` goes through, beside it."""
    return f".{name[:200]}{TMP_MARK}{secrets.token_hex(4)}.tmp"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class FileService:
    def __init__(
        self,
        roots: Roots,
        cache: FileCache,
        policy: RetryPolicy,
        schedule: Schedule,
        *,
        max_read: int = 16 << 20,
        max_list: int = 50_000,
        max_list_scanned: int = 1_000_000,
        list_loop_entries: int = 2_000,
        on_self_write: Callable[[str, StatKey | None], None] | None = None,
        offload: Offload | None = None,
        remote: Offload | None = None,
        slow: Callable[[str], bool] | None = None,
        max_queued_writes: int = 32,
        max_write_bytes: int = 256 << 20,
    ) -> None:
        self.roots = roots
        self.cache = cache
        self.policy = policy
        self.schedule = schedule
        self.max_read = max_read
        self.max_list = max_list
        self.max_list_scanned = max_list_scanned
        self.list_loop_entries = list_loop_entries
        self.on_self_write = on_self_write or (lambda _path, _key: None)
        self.offload = offload  # None: the syscalls run inline (in-process tests, perf)
        # Paths on a slow file system (`slow`, mounts.MountTable.slow) are served wholly on
        # the `remote` workers, resolution included, and never cached (a hit's stat would
        # run here); without `remote`, on `offload`.
        self.slow: Callable[[str], bool] = slow or (lambda _path: False)
        self.remote = remote or offload
        # Files being written -> the writes waiting for them (started in order).
        self._writing: dict[str, list[Callable[[], None]]] = {}
        self.max_queued_writes = max_queued_writes
        # Bytes of accepted writes not yet done: past `max_write_bytes`, busy (one write is
        # always taken, whatever its size, when none is under way).
        self.max_write_bytes = max_write_bytes
        self.write_bytes = 0
        self.reader: Callable[..., tuple[bytes, os.stat_result]] = self.read_file
        self.reads_offloaded = 0  # reads the page cache could not answer at once
        self.remote_ops = 0  # ops on a slow file system, served on `remote`
        self.stat: Callable[[str], os.stat_result] = os.stat

    # --- reading ------------------------------------------------------------------------

    @staticmethod
    def answer(data: bytes, info: dict[str, Any], offset: int, length: int | None,
               stale: bool = False, whole: bool = True) -> Attached:
        """The reply for `data`: the whole file (sliced to the range here), or already the
        range (`whole` false)."""
        if whole and (offset or (length is not None and length < len(data))):
            data = data[offset:] if length is None else data[offset:offset + length]
        body = {"stat": info, "stale": stale, "size": info["size"], "offset": offset,
                "length": len(data)}
        return Attached(body, [data])

    def read_cached(self, path: str, offset: int, length: int | None) -> Attached | None:
        """The fast path: an answer from the cache, or None. A read of the whole file (the
        common one) answers the entry's body as packed by its first hit."""
        absolute = path if path[:1] == "/" else self.roots.absolute(path)
        e = self.cache.hit(absolute)
        if e is None:
            return None
        data = e.data
        if offset or (length is not None and length < len(data)):
            return self.answer(data, e.info, offset, length)
        whole = e.whole
        if whole is None:
            whole = e.whole = Packed(packb(self.answer(data, e.info, 0, None).body))
        return Attached(whole, [data])

    def read(self, path: str, offset: int = 0, length: int | None = None) -> Pending:
        if offset < 0 or (length is not None and length < 0):
            raise fail("bad_args", "offset and length must be >= 0")
        absolute = self.roots.absolute(path)
        self.cache.misses += 1
        if self._on_slow_fs(absolute):
            return self._read_remote(path, absolute, offset, length)
        real, lst = self.roots.resolve_lstat(absolute)
        refuse_special(lst, path, "read")

        def settle(got: tuple[bytes, os.stat_result]) -> Attached:
            data, st = got
            info = stat_info(st)
            # Only a whole file whose size is what the kernel says: a procfs or sysfs file
            # (size 0 or 4096 whatever it holds) keeps its stat key when its content changes.
            if offset == 0 and len(data) == st.st_size:
                self.cache.put(absolute, real, st, data, info)
            return self.answer(data, info, offset, length, whole=False)

        def attempt() -> Any:
            if self.offload is None:
                return settle(self.reader(real, offset, length))
            try:
                return settle(self.reader(real, offset, length, wait=False))
            except WouldWait:  # not all in the page cache: read it where waiting is allowed
                self.reads_offloaded += 1
                return self.offload(lambda: self.reader(real, offset, length), settle)

        def exhausted(exc: OSError, tries: int) -> Attached:
            e = self.cache.peek(real)
            if e is None:
                raise os_error(exc, path, tries)
            self.cache.stale_served += 1
            ans = self.answer(e.data, e.info, offset, length, stale=True)
            ans.body["stale_reason"] = os_error(exc, path, tries).error.message
            return ans

        return Attempts(self.policy, attempt, self.schedule, path, exhausted).run()

    def _on_slow_fs(self, absolute: str) -> bool:
        """Is `absolute` served on the `remote` workers (module docstring)?"""
        return self.remote is not None and self.slow(absolute)

    def _on_remote(self, path: str, blocking: Callable[[], Any],
                   finish: Callable[[Any], Any] | None = None) -> Pending:
        """An op on a slow file system: `blocking` (all of its syscalls, resolution
        included) on a `remote` worker, each try; `finish` back here."""
        self.remote_ops += 1
        return Attempts(self.policy, lambda: self.remote(blocking, finish),  # type: ignore[misc]
                        self.schedule, path).run()

    def _read_remote(self, path: str, absolute: str, offset: int, length: int | None
                     ) -> Pending:
        """A read on a slow file system: resolved, checked and read on a `remote` worker;
        not cached."""
        def blocking() -> tuple[bytes, os.stat_result]:
            real, lst = self.roots.resolve_lstat(absolute)
            refuse_special(lst, path, "read")
            return self.reader(real, offset, length)

        def settle(got: tuple[bytes, os.stat_result]) -> Attached:
            data, st = got
            return self.answer(data, stat_info(st), offset, length, whole=False)

        return self._on_remote(path, blocking, settle)

    def read_file(self, real: str, offset: int, length: int | None, wait: bool = True
                  ) -> tuple[bytes, os.stat_result]:
        """One untorn read of `real` (the default `reader`). With `wait` false (on the loop)
        the contents come only from the page cache: WouldWait when any of it is not there,
        or the file system cannot say so (RWF_NOWAIT). The common case on the loop is one
        compiled call where this process has it (`FILE_CORE`); whatever it leaves (see
        _cfile.c) comes here, which does it again and says why."""
        if not wait and _read_cached is not None and self.roots.opens_without_symlinks:
            got = _read_cached(real, offset, -1 if length is None else length, self.max_read)
            if got is not None:
                return got  # type: ignore[no-any-return]
        fd = self.roots.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, real)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(21, "Is a directory", real)
            if not stat_mod.S_ISREG(st.st_mode):
                raise special_file(st.st_mode, real, "read")
            if st.st_size == 0:  # empty, or a pseudo file that tells no size (procfs)
                data = self._read_to_eof(fd, real, offset, length)
                after = os.fstat(fd)
                if stat_key(after) != stat_key(st):
                    raise BlockingIOError(11, "changed during the read (torn); retrying", real)
                return data, after
            end = st.st_size if length is None else min(st.st_size, offset + length)
            n = max(0, end - offset)
            if n > self.max_read:
                raise fail("file_too_large", f"{real}: {n} bytes; page it with offset/length",
                           detail={"size": st.st_size, "max_read": self.max_read})
            if not wait and n:
                data = _pread_cached(fd, n, offset)
            else:
                data = os.pread(fd, n, offset) if n else b""
            while len(data) < n:
                more = os.pread(fd, n - len(data), offset + len(data))
                if not more:
                    break
                data += more
            after = os.fstat(fd)
            if stat_key(after) != stat_key(st):
                raise BlockingIOError(11, "changed during the read (torn); retrying", real)
            return data, after
        finally:
            os.close(fd)

    def _read_to_eof(self, fd: int, real: str, offset: int, length: int | None) -> bytes:
        """Read from `offset` to the end (or `length`), never more than `max_read`."""
        want = self.max_read + 1 if length is None else min(length, self.max_read + 1)
        parts: list[bytes] = []
        got = 0
        while got < want:
            more = os.pread(fd, min(READ_CHUNK, want - got), offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        if got > self.max_read:
            raise fail("file_too_large", f"{real}: over {self.max_read} bytes; page it with "
                       "offset/length", detail={"size": None, "max_read": self.max_read})
        return b"".join(parts)

    # --- writing ------------------------------------------------------------------------

    def write(self, path: str, data: bytes, atomic: bool = True,
              if_match: str | None = None) -> Pending:
        absolute = self.roots.absolute(path)
        remote = self._on_slow_fs(absolute)
        # (on a slow file system the path is resolved on the worker: its writes are kept in
        # order by the path as given)
        real = absolute if remote else self.roots.resolve_fast(absolute)
        if real in self.roots.roots:
            raise fail("is_directory", f"{path}: is a root directory")
        waiting = self._writing.get(real)
        if waiting is not None and len(waiting) >= self.max_queued_writes:
            raise fail("busy", f"{path}: {len(waiting)} writes already wait for this file",
                       retry_after_ms=50, detail={"path": path, "waiting": len(waiting)})
        if self.write_bytes and self.write_bytes + len(data) > self.max_write_bytes:
            raise fail("busy", f"{path}: {self.write_bytes} bytes of writes under way",
                       retry_after_ms=50, detail={"path": path, "bytes": self.write_bytes})
        self.write_bytes += len(data)
        out = Pending()

        def settled(done: Pending) -> None:
            self.write_bytes -= len(data)
            out.resolve(done.value, done.error)
            self._next_write(real)

        def start() -> None:
            attempt = self._write_remote if remote else self._write_attempt
            Attempts(self.policy,
                     lambda: attempt(path, absolute, real, data, atomic, if_match),
                     self.schedule, path).run().then(settled)

        # One write at a time per file, in arrival order: two on the worker threads at
        # once could both pass one if_match (check, then write), where one must conflict.
        if waiting is None:
            self._writing[real] = []
            start()
        else:
            waiting.append(start)
        return out

    def _next_write(self, real: str) -> None:
        waiting = self._writing.get(real)
        if waiting:
            waiting.pop(0)()
        else:
            self._writing.pop(real, None)

    def _write_attempt(self, path: str, absolute: str, real: str, data: bytes,
                       atomic: bool, if_match: str | None) -> Any:
        """One try: the syscalls on a worker (`offload`), the bookkeeping back here."""
        parent, name = os.path.split(real)
        tmp = _tmp_name(name) if atomic else None
        # The events the write causes may come through the pipeline before the worker is
        # back: until then any event on these paths is ours (key None).
        if tmp is not None:
            self.on_self_write(os.path.join(parent, tmp), None)
        self.on_self_write(real, None)

        def blocking() -> tuple[os.stat_result, dict[str, Any]]:
            st = self._write_once(path, parent, name, data, tmp, if_match)
            return st, stat_info(st)  # (made here: the worker has the time, the loop not)

        def finish(got: tuple[os.stat_result, dict[str, Any]]) -> dict[str, Any]:
            st, info = got
            self.cache.put(absolute, real, st, data, info)
            self.on_self_write(real, stat_key(st))
            return {"path": real, "stat": info, "bytes": len(data), "atomic": atomic}

        if self.offload is None:
            return finish(blocking())
        return self.offload(blocking, finish)

    def _write_remote(self, path: str, absolute: str, _key: str, data: bytes, atomic: bool,
                      if_match: str | None) -> Any:
        """One try on a slow file system: resolved and written on a `remote` worker, not
        cached. Its events are told as the watcher's own by the path as given (which is the
        real one unless a symlink leads there), until the worker is back."""
        self.remote_ops += 1
        parent, name = os.path.split(absolute)
        tmp = _tmp_name(name) if atomic else None
        if tmp is not None:
            self.on_self_write(os.path.join(parent, tmp), None)
        self.on_self_write(absolute, None)

        def blocking() -> tuple[str, os.stat_result, dict[str, Any]]:
            real = self.roots.resolve(absolute)
            if real in self.roots.roots:
                raise fail("is_directory", f"{path}: is a root directory")
            at, base = os.path.split(real)
            here = tmp
            if atomic and (at, base) != (parent, name):  # a symlink led elsewhere
                here = _tmp_name(base)
            st = self._write_once(path, at, base, data, here, if_match)
            return real, st, stat_info(st)

        def finish(got: tuple[str, os.stat_result, dict[str, Any]]) -> dict[str, Any]:
            real, st, info = got
            self.on_self_write(real, stat_key(st))
            return {"path": real, "stat": info, "bytes": len(data), "atomic": atomic}

        return self.remote(blocking, finish)  # type: ignore[misc]

    def _write_once(self, path: str, parent: str, name: str, data: bytes, tmp: str | None,
                    if_match: str | None) -> os.stat_result:
        """The write itself (on a worker thread: it may wait for the disk); touches nothing
        but the file system. A write in place with no if_match is one compiled call where
        this process has it (`FILE_CORE`), which leaves the rest (see _cfile.c) to this."""
        if (tmp is None and if_match is None and _write_plain is not None
                and self.roots.opens_without_symlinks):
            st = _write_plain(parent, name, data)
            if st is not None:
                return st
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self.roots.check_fd(dfd, path)
            try:
                cur: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                cur = None
            if cur is not None and stat_mod.S_ISDIR(cur.st_mode):
                raise IsADirectoryError(21, "Is a directory", os.path.join(parent, name))
            if cur is not None and stat_mod.S_ISLNK(cur.st_mode):
                raise fail("forbidden", f"{path}: became a symlink after it was resolved")
            if cur is not None and not stat_mod.S_ISREG(cur.st_mode):
                raise special_file(cur.st_mode, path, "written")
            if if_match is not None:
                have = etag(stat_key(cur)) if cur is not None else ""
                if have != if_match:
                    raise fail("conflict", f"{path}: changed since the caller saw it",
                               detail={"current": have, "if_match": if_match})
            mode = stat_mod.S_IMODE(cur.st_mode) if cur is not None else 0o644
            if tmp is not None:
                self._replace(dfd, tmp, name, data, mode)
                # the rename changed the inode's ctime: stat it where it now is
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
            # Overwrite, then cut what is left over: truncating to zero first would make
            # ext4 flush the file on close (its replace-via-truncate heuristic). O_NONBLOCK:
            # a FIFO swapped in since the check above fails the open instead of waiting.
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, mode, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat_mod.S_ISREG(st.st_mode):
                    raise special_file(st.st_mode, path, "written")
                _write_all(fd, data)
                if cur is not None and cur.st_size > len(data):
                    os.ftruncate(fd, len(data))
                return os.fstat(fd)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    @staticmethod
    def _replace(dfd: int, tmp: str, name: str, data: bytes, mode: int) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600, dir_fd=dfd)
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        os.fsync(dfd)

    # --- stat and list ------------------------------------------------------------------

    def stat_path(self, path: str) -> Pending:
        absolute = self.roots.absolute(path)
        if self._on_slow_fs(absolute):
            return self._on_remote(path, lambda: self._stat_of(self.roots.resolve_fast(
                absolute)))
        real, lst = self.roots.resolve_lstat(absolute)
        if lst is not None and not stat_mod.S_ISLNK(lst.st_mode):
            # The resolution's lstat of the real path, whose last name is no symlink: what a
            # stat of it says, one syscall instead of two.
            out = Pending()
            out.resolve({"path": real, **stat_info(lst)})
            return out
        return Attempts(self.policy, lambda: self._stat_of(real), self.schedule, path).run()

    def _stat_of(self, real: str) -> dict[str, Any]:
        return {"path": real, **stat_info(self.stat(real))}

    def list_dir(self, path: str, recursive: bool = False, glob: str | None = None
                 ) -> Pending:
        """Entries under a directory (relative names), symlinks listed but not followed: the
        first `list_loop_entries` looked at here, the rest of a bigger walk on a worker
        (listing.py)."""
        absolute = self.roots.absolute(path)
        if self._on_slow_fs(absolute):
            def whole() -> dict[str, Any]:
                listing = self._listing(self.roots.resolve_fast(absolute), recursive, glob)
                listing.step(None)
                return listing.answer()

            return self._on_remote(path, whole)
        real = self.roots.resolve_fast(absolute)

        def attempt() -> Any:
            listing = self._listing(real, recursive, glob)
            if listing.step(self.list_loop_entries):
                return listing.answer()
            if self.offload is None:  # (in-process use: no workers)
                listing.step(None)
                return listing.answer()
            try:
                return self.offload(lambda: listing.step(None), lambda _: listing.answer())
            except BaseException:  # refused (busy): the directory it was reading is closed
                listing.close()
                raise

        return Attempts(self.policy, attempt, self.schedule, path).run()

    def _listing(self, real: str, recursive: bool, glob: str | None) -> Listing:
        return Listing(real, recursive, glob, max_entries=self.max_list,
                       max_scanned=self.max_list_scanned)
