"""fs.read / fs.write / fs.stat / fs.list: confined, retried, cached.

Reads: a cache hit costs one stat. A miss opens the file confined (`Roots.open`: no symlink
followed on the way, or the descriptor checked against the roots), fstats, preads, and fstats
again: if the stat tuple moved during the read (a writer was busy) the read is torn, and
retried as a transient error, so no caller gets half of one version and half of another. A
read that still fails after the retries, while an earlier copy is cached, answers that copy
with `stale: true` (the seed's "cache previous"). Reads over `max_read` bytes are refused
with `file_too_large`: page them. An offset or length outside [0, 2^53) (MAX_ID: what the
protocol's ints carry exactly) is `bad_args` before anything is read. On the loop a miss
takes its bytes from the page cache only (preadv2 RWF_NOWAIT): a file not all in memory is
read again on an `offload` worker, so a cold file on a slow disk never holds the loop.
A FIFO, device or socket is refused (`bad_args`, naming it) before it is opened; a file that
reports no size (procfs) and yet has contents, or is read past its start, is read to its end
within `max_read` on an `offload` worker (making /proc/kallsyms takes tens of ms, and a
read at an offset makes all before it), and a file whose contents are not its reported size
(procfs, sysfs) is never cached: its stat key does not move with them.
The stat key moves only once per timestamp tick (cache.py): a file whose ctime is within a
tick of the read may have changed during it unseen, so it is read twice and the two must
agree (else torn), and it is cached `racy` (a hit reads it again before it answers).

Writes run on the `offload` workers (fsync waits for the disk), one at a time per file; a
FIFO, device or socket is refused by its stat before anything opens it, and the open itself
is O_NONBLOCK (a FIFO swapped in meanwhile fails it instead of waiting for a reader). Writes
happen under a descriptor of the parent directory (no path re-resolution between the check
and the write). `atomic` writes a temporary file beside the target, gives it the target's
owner, group, extended attributes (those alone) and mode, fsyncs it, renames it over the
target and fsyncs the directory, so a reader sees the old or the new file, never a mix. A
target with other hard links, or whose owner, group or attributes the temporary cannot be
given (another user's file), or beside which no temporary may be made (a writable file in a
directory the user may not write: EACCES, EPERM), is written in place instead and fsynced,
and the answer says `atomic: false`: a replacement would split the links or hand the file to
the watcher's user, and the save would fail where an editor's in-place save works. A write
in place first reserves the room for its bytes (fallocate), so a disk without it answers
`no_space` while the file is still as it was (a hard-linked file saved with `atomic`
included), and a new file it made is removed; every `no_space` says whether the file is as
it was (`_raise_for_room`). A new file's mode is the umask's. The version answered is the
one the write made, taken from its own descriptor: a writer that changes the file before
that look (its mtime) makes it the temporary's, which no file has, and then nothing is
cached or told as ours.
A path whose last name is empty or `.` (`f.txt/`) names a directory, as the kernel reads it:
fs.write of one is `not_a_directory` where a file is, `is_directory` where nothing is (EISDIR,
as open(2) says of such a creation) or a directory is, and writes nothing.
`if_match` is the etag the caller last saw ("" = must not exist): anything else is a
`conflict`, checked again just before the rename. Both the temporary and the target are
reported to `on_self_write` so the watcher can tag the events they cause `origin: self`. A
write holds a lock on its temporary until it is closed. A temporary left by a write killed
before its rename (it has the mark, is not written to for TMP_MAX_AGE_NS and no writer holds
its lock) is removed by a write in its directory that comes SWEEP_EVERY_S or more after the
last look for leftovers there (the first write there since this process started is one),
and counted (`temps_removed`).

A path on a slow file system (`slow`: NFS, SMB, FUSE and their kin, mounts.MountTable) may
not answer at all: every op on one runs wholly on the `remote` workers, its resolution
included, and is not cached (a hit's revalidating stat would run on the loop). A stalled
mount then holds those workers and its own calls (busy when they are all taken), never the
loop or the other files.

Seams for tests (replaced in-process, no sockets needed): `reader(real, offset, length,
wait=True)`, `stat(path)`, `now_ns()` (the wall clock the racy rule compares ctimes with) and
`clock()` (the monotonic one that spaces the looks for leftovers); `schedule(delay, fn)` is
the loop's `call_later`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import stat as stat_mod
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from loguru import logger

from moorage.actors.runtime import Attached
from moorage.actors.watcher.cache import (
    Entry,
    FileCache,
    StatKey,
    etag,
    racy,
    stat_info,
    stat_key,
)
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.listing import MAX_GLOB_CHARS, Listing
from moorage.actors.watcher.retry import Attempts, Pending, RetryPolicy, Schedule, os_error
from moorage.actors.watcher.workers import Offload
from moorage.protocol.envelope import Packed, packb
from moorage.protocol.errors import MoorageError, fail
from moorage.protocol.limits import MAX_ID, MAX_MESSAGE_SIZE

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


TMP_NAME_BYTES = 200
"""The most of a file's name its temporary keeps, in bytes (a name is at most 255 of them)."""
_LEFTOVER = re.compile(r"\..*" + re.escape(TMP_MARK) + r"[0-9a-f]{8}\.tmp", re.S)
TMP_MAX_AGE_NS = 30 * 10**9
"""A temporary with the mark not written to for this long, whose lock no writer holds, is a
leftover (a write killed between making it and its rename). The lock tells another
watcher's write under way, whose fsync of a big file to a slow disk may keep its mtime still
for longer; the age covers a file system without locks. (An unnamed one, O_TMPFILE, would
leave nothing, but inotify reports its writes under a name, "#<inode>", that no file has.)"""
SWEEP_EVERY_S = TMP_MAX_AGE_NS / 1e9
"""A write looks through its directory for leftovers when that was last done this long ago
or more (or never, by this process): so a leftover is removed by the first write there once
it is TMP_MAX_AGE_NS old and the last look there SWEEP_EVERY_S old, which is any write once
the leftover is as old as the two together (60 s)."""


def _tmp_name(name: str) -> str:
    """The temporary file an atomic write of `name` goes through, beside it: the name's
    first TMP_NAME_BYTES bytes (cut between characters), so it is a legal name too."""
    base = os.fsencode(name)[:TMP_NAME_BYTES].decode("utf-8", "ignore")
    return f".{base}{TMP_MARK}{secrets.token_hex(4)}.tmp"


def _names_a_directory(path: str) -> bool:
    """Does `path` end in a name that makes it a directory's (`f.txt/`, `f.txt/.`,
    `d/..`)? The kernel takes such a path for a directory, whatever realpath makes of it."""
    last = path.rpartition("/")[2]
    return last in ("", ".", "..")


def refuse_climb_past_non_directory(absolute: str) -> None:
    """ENOTDIR for an absolute path with a `..` right after a name that is no directory
    (`f.txt/..`, `f.txt/../g.txt`), ENOENT after one that is nothing (`none/..`), as the
    kernel answers it: realpath takes the name before a `..` away whatever it is, so the
    path resolved to the directory holding `f.txt`. The path up to its last `..` names a
    directory wherever it leads; its stat is the kernel's own walk of every name before
    it. Only a path with a `..` in it pays that syscall."""
    at = absolute.rfind("/..")
    while at != -1 and absolute[at + 3:at + 4] not in ("", "/"):
        at = absolute.rfind("/..", 0, at)  # (`..b` is a name like any other)
    if at == -1:
        return
    try:
        os.stat(absolute[:at + 3])
    except OSError as exc:  # (anything else: the resolution's own answer stands)
        if exc.errno in (errno.ENOTDIR, errno.ENOENT):
            raise


def climb_checked(absolute: str, path: str) -> None:
    """`refuse_climb_past_non_directory`, its error classified for `path` (the ops that
    resolve on the loop: on a worker, the job's error is classified where it is taken)."""
    try:
        refuse_climb_past_non_directory(absolute)
    except OSError as exc:
        raise os_error(exc, path) from None


def _refuse_directory_name(real: str) -> NoReturn:
    """The error of a write to a path that names a directory (`_names_a_directory`), `real`
    what it resolved to: as open(2) answers it, ENOTDIR where a file (or anything but a
    directory) is, EISDIR where a directory or nothing is (a file is never made)."""
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        st = None
    if st is not None and not stat_mod.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (the path ends in '/')", real)
    raise IsADirectoryError(errno.EISDIR, "Is a directory (the path ends in '/')", real)


def refuse_file_as_directory(st: os.stat_result | None, path: str, real: str) -> None:
    """ENOTDIR for a path that names a directory (`f.txt/`) where something else is, `st`
    the stat of what it resolved to (None: nothing there, for the attempt to classify). The
    resolution drops the slash (realpath does); the kernel would not open such a path, and a
    read or stat of `f.txt/` must not answer `f.txt`."""
    if st is not None and not stat_mod.S_ISDIR(st.st_mode) and _names_a_directory(path):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (the path ends in '/')", real)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# fallocate(2) itself: os.posix_fallocate falls back, where a file system has no fallocate,
# to glibc's emulation, which preads the descriptor (a write-only one fails it, EBADF) and
# writes a zero byte into each block a concurrent writer may be filling.
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate64
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
# The room is reserved, the size left: a file grown at once to its new size would show its
# readers, and leave after a crash, zeros where the new bytes were still to come.
FALLOC_FL_KEEP_SIZE = 0x01  # <linux/falloc.h>
_CANNOT_RESERVE = (errno.EOPNOTSUPP, errno.ENOSYS)
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
# What refuses an atomic write its temporary while the file may still be written in place.
_NO_TEMPORARY = (errno.EACCES, errno.EPERM)


def reserve(fd: int, size: int) -> None:
    """Make the room for `size` bytes from the start of the file `fd` before any of its
    bytes is overwritten (blocks for its holes and for its growth; its size stays, and
    grows as the bytes are written): the want of room is then an error while the file is
    still as it was, not halfway through it. Where the file system cannot reserve (NFSv3,
    some FUSE mounts) nothing is, and the write goes on as it did before there was a
    reservation."""
    while _fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        code = ctypes.get_errno()
        if code in _CANNOT_RESERVE:
            return
        if code != errno.EINTR:
            raise OSError(code, os.strerror(code))


def _raise_for_room(exc: OSError, path: str, unchanged: bool) -> NoReturn:
    """Raise a write's failure `exc`: a want of room as `no_space` saying whether the file is
    still as it was (`detail.unchanged`), since a caller whose save failed must know whether
    it still has its old contents; any other error as it is (classified, or retried, by
    `Attempts`)."""
    if exc.errno not in _NO_ROOM:
        raise exc
    err = os_error(exc, path)
    err.error.message += ("; the file is as it was" if unchanged else
                          "; the file may hold the first part of the new bytes")
    err.error.detail["unchanged"] = unchanged
    raise err from exc


def _make_room(dfd: int, fd: int, path: str, name: str, st: os.stat_result, size: int,
               made: bool) -> None:
    """`reserve` for a write in place of `size` bytes into the file `fd` (`st` its fstat
    after the open; `made`: this write's open created it); when there is no room, the file
    put back as it was (`_put_back`) before the error is raised."""
    if size == 0:
        return
    try:
        reserve(fd, size)
    except OSError as exc:
        _raise_for_room(exc, path, unchanged=_put_back(dfd, fd, path, name, st, made))


def _put_back(dfd: int, fd: int, path: str, name: str, st: os.stat_result, made: bool
              ) -> bool:
    """Undo a failed reservation: the file's size (one that ran out partway may have grown
    it) or, one this write made, the file itself. False, logged, where that failed."""
    try:
        if made:
            if _ino_at(dfd, name) == st.st_ino:
                os.unlink(name, dir_fd=dfd)
        else:  # (its size, and the blocks a reservation that ran out partway took past it)
            os.ftruncate(fd, st.st_size)
    except OSError as exc:
        logger.warning("watcher: {} not put back after a failed reservation: {}", path, exc)
        return False
    return True


@dataclass(slots=True)
class Written:
    """What one write left: the version to answer (`st`); whether it holds our bytes
    (`ours`: cached and claimed as the watcher's own; not when another writer came between
    our fsync and our look, whose version then is not answered as ours); whether the file
    was replaced (`atomic`) or written in place; leftovers removed in its directory."""

    st: os.stat_result
    ours: bool
    atomic: bool
    swept: int = 0


def _conflict(path: str, have: str, if_match: str) -> MoorageError:
    return fail("conflict", f"{path}: changed since the caller saw it",
                detail={"current": have, "if_match": if_match})


def _sweep(dfd: int, live: frozenset[str]) -> int:
    """Remove the leftover temporaries in the directory `dfd` (`_remove_leftover`) but `live`, the
    watcher's writes under way; how many. A leftover that cannot be removed is logged and
    left: the write goes on."""
    removed = 0
    now = time.time_ns()
    try:
        with os.scandir(dfd) as entries:
            names = [e.name for e in entries
                     if e.name not in live and _LEFTOVER.fullmatch(e.name)]
    except OSError as exc:
        logger.warning("watcher: leftover temporaries not looked for: {}", exc)
        return 0
    for name in names:
        try:
            if _remove_leftover(dfd, name, now):
                removed += 1
        except FileNotFoundError:
            continue  # (renamed by its writer, or removed by another sweep, meanwhile)
        except OSError as exc:
            logger.warning("watcher: leftover temporary {} not removed: {}", name, exc)
    return removed


def _remove_leftover(dfd: int, name: str, now_ns: int) -> bool:
    """Remove `name` if it is a leftover: a regular file not written to for TMP_MAX_AGE_NS
    whose lock it can take (a write under way holds its temporary's from its making to its
    close, `_open_tmp`, in whatever process; a killed writer's went with it). One this user
    may not open cannot be told from a live write: it is left to its owner's watcher."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not stat_mod.S_ISREG(st.st_mode) or now_ns - st.st_mtime_ns <= TMP_MAX_AGE_NS:
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                     dir_fd=dfd)
    except PermissionError:
        return False
    try:
        if not _lock(fd) or os.fstat(fd).st_ino != st.st_ino:
            return False  # a write under way, or another file by that name since the stat
        os.unlink(name, dir_fd=dfd)
        return True
    finally:
        os.close(fd)


def _lock(fd: int) -> bool:
    """Take the exclusive lock of the temporary `fd` without waiting: False when a writer
    holds it. A file system without locks (ENOLCK, EOPNOTSUPP) says True: there the age
    alone tells a leftover."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    return True


def _open_tmp(dfd: int, tmp: str, new: bool) -> int:
    """The temporary of an atomic write, locked until it is closed (another watcher's sweep
    then leaves it, however long its fsync keeps its mtime still). A new file's mode is the
    umask's (and a default ACL's), as for any file made in the directory; a copy of an
    existing one stays private until it is given that one's."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o666 if new else 0o600, dir_fd=dfd)
    try:
        _lock(fd)  # (just made, not yet old enough for a sweep to take its lock)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dfd)
        raise
    return fd


def _give_owner(fd: int, cur: os.stat_result) -> bool:
    """Give the temporary `fd` the owner and group of `cur`, the file it replaces; False
    where that cannot be done (another user's file, a group this user is not in): then it
    is written in place."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (cur.st_uid, cur.st_gid):
        try:
            os.fchown(fd, cur.st_uid, cur.st_gid)
        except PermissionError:
            return False
    return True


def _give_xattrs(fd: int, dfd: int, name: str) -> bool:
    """Give the temporary `fd` the extended attributes (ACLs, labels, capabilities) of
    `name`, the file it replaces, and no others: one it was made with (an access ACL from
    the directory's default one) would change who may do what with the file. After the data
    is written: a write drops security.capability. False where that cannot be done (an
    attribute this user may not set or remove): then it is written in place."""
    where = f"/proc/self/fd/{dfd}/{name}"  # (xattr calls take no dir_fd)
    try:
        keys = os.listxattr(where, follow_symlinks=False)
        for key in keys:
            value = os.getxattr(where, key, follow_symlinks=False)
            try:
                same = os.getxattr(fd, key) == value  # (a label it was made with already)
            except OSError:
                same = False
            if not same:
                os.setxattr(fd, key, value)
        for key in set(os.listxattr(fd)) - set(keys):
            os.removexattr(fd, key)
    except OSError as exc:
        return exc.errno == errno.EOPNOTSUPP  # (a file system without them: none to keep)
    return True


def _replace(dfd: int, path: str, tmp: str, name: str, data: bytes,
             cur: os.stat_result | None, if_match: str | None) -> Written | None:
    """An atomic write: a temporary given the file's owner and group, written, given its
    attributes and mode, fsynced and renamed over it, then the directory fsynced. Its
    version is taken from the temporary (an fstat after its fsync, and one after the rename,
    which changes only its ctime): an editor that writes the new file in place before our
    look changes its mtime, and then the version answered is the temporary's, which no file
    has (an if_match with it is a conflict), and nothing is cached or claimed. None: it
    cannot be given the file's owner or attributes (`_give_owner`, `_give_xattrs`), or,
    the file being there, no temporary may be made beside it (EACCES, EPERM: a directory
    the user may not write, where the file itself may be writable)."""
    try:
        fd = _open_tmp(dfd, tmp, cur is None)
    except OSError as exc:
        if cur is not None and exc.errno in _NO_TEMPORARY:
            return None
        _raise_for_room(exc, path, unchanged=True)
    renamed = False
    try:
        if cur is not None and not _give_owner(fd, cur):
            return None
        _write_all(fd, data)
        if cur is not None:
            if not _give_xattrs(fd, dfd, name):
                return None
            # (after the fchown and the write, which clear setuid and setgid: kept with the
            # owner only)
            os.fchmod(fd, stat_mod.S_IMODE(cur.st_mode))
        os.fsync(fd)
        ours = os.fstat(fd)
        if if_match is not None:
            # (the file may have changed while this one was written and synced: the
            # rename replaces whatever is there)
            _still(dfd, path, name, cur, if_match)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        renamed = True
        after = os.fstat(fd)
    except OSError as exc:
        if renamed:
            raise
        _raise_for_room(exc, path, unchanged=True)  # (the target was not touched)
    finally:
        os.close(fd)
        if not renamed:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass  # (gone already; a leftover is swept by a later write)
    os.fsync(dfd)
    same = ((after.st_ino, after.st_size, after.st_mtime_ns)
            == (ours.st_ino, ours.st_size, ours.st_mtime_ns))
    return Written(after if same else ours, same, atomic=True)


def _ino_at(dfd: int, name: str) -> int | None:
    """The inode `name` is now (None = nothing)."""
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino
    except FileNotFoundError:
        return None


def _still(dfd: int, path: str, name: str, cur: os.stat_result | None, if_match: str) -> None:
    """`conflict` unless `name` is still the version the if_match was checked against."""
    have = _etag_at(dfd, name)
    if have != (etag(stat_key(cur)) if cur is not None else ""):
        raise _conflict(path, have, if_match)


def _etag_at(dfd: int, name: str) -> str:
    """The etag of what `name` is now ("" = nothing)."""
    try:
        return etag(stat_key(os.stat(name, dir_fd=dfd, follow_symlinks=False)))
    except FileNotFoundError:
        return ""


def _in_place(dfd: int, path: str, name: str, data: bytes, cur: os.stat_result | None,
              if_match: str | None, sync: bool) -> Written:
    """A write in place: the file keeps its inode, owner, links and attributes. Its room is
    reserved first (`_make_room`), so a disk without it leaves the file as it was; then it
    is overwritten and what is left over cut: truncating to zero first would make ext4
    flush the file on close (its replace-via-truncate heuristic). `sync`: fsynced before it
    is answered (an atomic write that could not replace the file still promised that once
    answered it survives a crash; what a crash during it leaves may be the new bytes over
    the old tail). O_NONBLOCK: a FIFO swapped in since the check fails the open instead of
    waiting. A new file is made by this open alone (O_EXCL: a failed write removes only
    what it made); with an if_match, the file opened must be the one checked."""
    mode = stat_mod.S_IMODE(cur.st_mode) if cur is not None else 0o666
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    if cur is None:
        flags |= os.O_EXCL
    try:
        fd = os.open(name, flags, mode, dir_fd=dfd)
    except FileExistsError:
        if if_match is not None:
            raise _conflict(path, _etag_at(dfd, name), if_match) from None
        # (made by another writer since the look: the next try writes over it)
        raise BlockingIOError(errno.EAGAIN, "made meanwhile by another writer",
                              path) from None
    except OSError as exc:
        _raise_for_room(exc, path, unchanged=True)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise special_file(st.st_mode, path, "written")
        if if_match is not None and cur is not None and stat_key(st) != stat_key(cur):
            raise _conflict(path, etag(stat_key(st)), if_match)
        _make_room(dfd, fd, path, name, st, len(data), made=cur is None)
        try:
            _write_all(fd, data)
            if st.st_size > len(data):
                os.ftruncate(fd, len(data))
            if sync:
                os.fsync(fd)
        except OSError as exc:
            _raise_for_room(exc, path, unchanged=False)
        after = os.fstat(fd)
        # (a size other than ours: another writer at work meanwhile, not our version)
        return Written(after, after.st_size == len(data), atomic=False)
    finally:
        os.close(fd)


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
        if not 1 <= max_read <= MAX_MESSAGE_SIZE:  # (a read's bytes go as one frame)
            raise ValueError(f"max_read_bytes must be 1..{MAX_MESSAGE_SIZE}")
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
        self.temps_removed = 0  # leftover temporaries of killed writes removed (_sweep)
        self._temps: set[str] = set()  # temporaries of the writes under way
        # directory -> when its leftovers were looked for (`clock`)
        self._swept: dict[str, float] = {}
        self.remote_ops = 0  # ops on a slow file system, served on `remote`
        self.stat: Callable[[str], os.stat_result] = os.stat
        # the wall clock the racy rule compares ctimes with (cache.racy)
        self.now_ns: Callable[[], int] = time.time_ns
        self._confirm_racy = self._confirm  # (bound once: a cache hit passes it every time)
        # the monotonic clock, in seconds, that spaces a directory's looks for leftovers
        self.clock: Callable[[], float] = time.monotonic

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
        e = self.cache.hit(absolute, self._confirm_racy)
        if e is None:
            return None
        data = e.data
        if offset or (length is not None and length < len(data)):
            return self.answer(data, e.info, offset, length)
        whole = e.whole
        if whole is None:
            whole = e.whole = Packed(packb(self.answer(data, e.info, 0, None).body))
        return Attached(whole, [data])

    def _confirm(self, real: str, e: Entry) -> bool:
        """A hit on a racy entry (cache.py): answered only if a read gives its bytes and key
        again, and trusted from then on once that read was a tick after its ctime. Any
        failure is a miss: the slow path classifies it."""
        since = self.now_ns()
        try:
            if self.offload is None:
                data, st = self.reader(real, 0, None)
            else:
                data, st = self.reader(real, 0, None, wait=False)
        except (OSError, WouldWait, MoorageError):
            return False
        if data != e.data or stat_key(st) != e.key:
            return False
        e.racy = racy(st, since)
        return True

    def read(self, path: str, offset: int = 0, length: int | None = None) -> Pending:
        if not 0 <= offset <= MAX_ID or (length is not None and not 0 <= length <= MAX_ID):
            # (past 2^63 a pread overflows, and no reply could carry such an offset exactly)
            raise fail("bad_args", f"offset and length must be in [0, {MAX_ID}]",
                       detail={"offset": offset, "length": length, "max": MAX_ID})
        absolute = self.roots.absolute(path)
        self.cache.misses += 1
        if self._on_slow_fs(absolute):
            return self._read_remote(path, absolute, offset, length)
        climb_checked(absolute, path)
        real, lst = self.roots.resolve_lstat(absolute)
        refuse_special(lst, path, "read")
        try:
            refuse_file_as_directory(lst, path, real)
        except OSError as exc:
            raise os_error(exc, path) from None
        since = 0  # when the try began (the racy rule's moment: an earlier one is safe)

        def settle(got: tuple[bytes, os.stat_result]) -> Attached:
            data, st = got
            info = stat_info(st)
            # Only a whole file whose size is what the kernel says: a procfs or sysfs file
            # (size 0 or 4096 whatever it holds) keeps its stat key when its content changes.
            if offset == 0 and len(data) == st.st_size:
                self.cache.put(absolute, real, st, data, info, racy=racy(st, since))
            return self.answer(data, info, offset, length, whole=False)

        def attempt() -> Any:
            nonlocal since
            since = self.now_ns()
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
            refuse_climb_past_non_directory(absolute)
            real, lst = self.roots.resolve_lstat(absolute)
            refuse_special(lst, path, "read")
            refuse_file_as_directory(lst, path, real)
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
        _cfile.c) comes here, which does it again and says why. A version whose ctime is
        within a tick of the read (cache.racy) is read twice: a change during the first read
        may have left the stat key as it was, never the bytes."""
        since = self.now_ns()
        if not wait and _read_cached is not None and self.roots.opens_without_symlinks:
            got = _read_cached(real, offset, -1 if length is None else length, self.max_read)
            if got is not None and not racy(got[1], since):
                return got  # type: ignore[no-any-return]
        fd = self.roots.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, real)
        try:
            data, st, sized = self._read_fd(fd, real, offset, length, wait)
            if sized and racy(st, since):
                again, st_again, _ = self._read_fd(fd, real, offset, length, wait)
                if again != data or stat_key(st_again) != stat_key(st):
                    raise BlockingIOError(11, "changed while it was read (torn)", real)
            return data, st
        finally:
            os.close(fd)

    def _read_fd(self, fd: int, real: str, offset: int, length: int | None, wait: bool
                 ) -> tuple[bytes, os.stat_result, bool]:
        """One read of the open `real` between two fstats that must agree (else torn), and
        whether its bytes are what its size says (a pseudo file's are not: no version to
        check them against)."""
        st = os.fstat(fd)
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", real)
        if not stat_mod.S_ISREG(st.st_mode):
            raise special_file(st.st_mode, real, "read")
        if st.st_size == 0:  # empty, or a pseudo file that tells no size (procfs)
            # Contents made as they are read are read on a worker, not on the loop: at offset
            # 0 a 1-byte probe tells them from an empty file (a seq_file makes its first page
            # only); past it the probe alone would make everything up to the offset.
            if not wait and (offset > 0 or os.pread(fd, 1, 0)):
                raise WouldWait
            data = self._read_to_eof(fd, real, offset, length)
            after = os.fstat(fd)
            if stat_key(after) != stat_key(st):
                raise BlockingIOError(11, "changed while it was read (torn)", real)
            return data, after, not data
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
            raise BlockingIOError(11, "changed while it was read (torn)", real)
        return data, after, len(data) == n

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
        if not remote:
            climb_checked(absolute, path)
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
        made: list[str] = []  # the temporaries its tries named: live until it is settled

        def settled(done: Pending) -> None:
            self.write_bytes -= len(data)
            self._temps.difference_update(made)
            out.resolve(done.value, done.error)
            self._next_write(real)

        def start() -> None:
            attempt = self._write_remote if remote else self._write_attempt
            Attempts(self.policy,
                     lambda: attempt(path, absolute, real, data, atomic, if_match, made),
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

    def _new_tmp(self, parent: str, name: str, made: list[str]) -> str:
        """A temporary name for an atomic write of `name`, live (never swept) until its write
        is settled; any event on it is the watcher's own."""
        tmp = _tmp_name(name)
        full = os.path.join(parent, tmp)
        made.append(full)
        self._temps.add(full)
        self.on_self_write(full, None)
        return tmp

    def _sweep_due(self, parent: str) -> frozenset[str] | None:
        """The names of this watcher's live temporaries in `parent` when its leftovers are
        to be looked for now (its first write since this process started, then any write
        SWEEP_EVERY_S or more after the last look), else None."""
        now = self.clock()
        last = self._swept.get(parent)
        if last is not None and now - last < SWEEP_EVERY_S:
            return None
        if len(self._swept) >= 4096:
            self._swept.clear()  # (a sweep more than needed costs one listing)
        self._swept[parent] = now
        return frozenset(os.path.basename(t) for t in self._temps
                         if os.path.dirname(t) == parent)

    def _write_attempt(self, path: str, absolute: str, real: str, data: bytes,
                       atomic: bool, if_match: str | None, made: list[str]) -> Any:
        """One try: the syscalls on a worker (`offload`), the bookkeeping back here."""
        parent, name = os.path.split(real)
        tmp = self._new_tmp(parent, name, made) if atomic else None
        live = self._sweep_due(parent)
        # The events the write causes may come through the pipeline before the worker is
        # back: until then any event on these paths is ours (key None).
        self.on_self_write(real, None)

        def blocking() -> tuple[Written, dict[str, Any]]:
            w = self._write(path, parent, name, data, tmp, if_match, live)
            return w, stat_info(w.st)  # (made here: the worker has the time, the loop not)

        def finish(got: tuple[Written, dict[str, Any]]) -> dict[str, Any]:
            w, info = got
            self.temps_removed += w.swept
            if w.ours:
                # made just now, so within its timestamp tick: racy (cache.py)
                self.cache.put(absolute, real, w.st, data, info, racy=True)
            else:
                self.cache.invalidate(real)
            # Only our version is ours: an event that shows another (a writer that came
            # between) is told as external.
            self.on_self_write(real, stat_key(w.st))
            return {"path": real, "stat": info, "bytes": len(data), "atomic": w.atomic}

        if self.offload is None:
            return finish(blocking())
        return self.offload(blocking, finish)

    def _write_remote(self, path: str, absolute: str, _key: str, data: bytes, atomic: bool,
                      if_match: str | None, made: list[str]) -> Any:
        """One try on a slow file system: resolved and written on a `remote` worker, not
        cached. Its events are told as the watcher's own by the path as given (which is the
        real one unless a symlink leads there), until the worker is back."""
        self.remote_ops += 1
        parent, name = os.path.split(absolute)
        tmp = self._new_tmp(parent, name, made) if atomic else None
        live = self._sweep_due(parent)
        self.on_self_write(absolute, None)

        def blocking() -> tuple[str, Written, dict[str, Any]]:
            refuse_climb_past_non_directory(absolute)
            real = self.roots.resolve(absolute)
            if real in self.roots.roots:
                raise fail("is_directory", f"{path}: is a root directory")
            at, base = os.path.split(real)
            here = tmp
            if atomic and (at, base) != (parent, name):  # a symlink led elsewhere
                here = _tmp_name(base)
            w = self._write(path, at, base, data, here, if_match, live)
            return real, w, stat_info(w.st)

        def finish(got: tuple[str, Written, dict[str, Any]]) -> dict[str, Any]:
            real, w, info = got
            self.temps_removed += w.swept
            self.on_self_write(real, stat_key(w.st))
            return {"path": real, "stat": info, "bytes": len(data), "atomic": w.atomic}

        return self.remote(blocking, finish)  # type: ignore[misc]

    def _write(self, path: str, parent: str, name: str, data: bytes, tmp: str | None,
               if_match: str | None, live: frozenset[str] | None) -> Written:
        """The write itself (on a worker thread: it may wait for the disk); touches nothing
        but the file system. `live`: sweep `parent` of leftover temporaries, but these. A
        write in place with no if_match and no sweep is one compiled call where this process
        has it (`FILE_CORE`), which leaves the rest (see _cfile.c) to this. An atomic write
        of a file with other hard links, or whose owner, group or extended attributes its
        replacement could not be given, or beside which no temporary may be made, is made in
        place (`atomic` false in the answer). A `path` that names a directory (`f.txt/`:
        `_names_a_directory`) writes nothing."""
        if _names_a_directory(path):
            _refuse_directory_name(os.path.join(parent, name))
        if (tmp is None and if_match is None and live is None and _write_plain is not None
                and self.roots.opens_without_symlinks):
            try:
                st = _write_plain(parent, name, data)
            except OSError as exc:
                # (a want of room before its first byte is handed back here, None: this
                # one came after it, where the file system could not reserve)
                _raise_for_room(exc, path, unchanged=False)
            if st is not None:
                return Written(st, st.st_size == len(data), atomic=False)
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self.roots.check_fd(dfd, path)
            swept = 0 if live is None else _sweep(dfd, live)
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
                    raise _conflict(path, have, if_match)
            w = None
            if tmp is not None and (cur is None or cur.st_nlink == 1):
                if cur is not None and not os.access(name, os.W_OK, dir_fd=dfd,
                                                     effective_ids=True,
                                                     follow_symlinks=False):
                    # (a read-only file, 0444: the directory would let a new one take its
                    # place, but its mode says no, as an in-place write's open would)
                    raise PermissionError(errno.EACCES, "Permission denied (the file is "
                                          "read-only)", os.path.join(parent, name))
                w = _replace(dfd, path, tmp, name, data, cur, if_match)
            if w is None:
                w = _in_place(dfd, path, name, data, cur, if_match, sync=tmp is not None)
            w.swept = swept
            return w
        finally:
            os.close(dfd)

    def stats(self) -> dict[str, int]:
        """The file service's counters (the watcher's fs.stats `files`)."""
        return {"reads_offloaded": self.reads_offloaded, "remote_ops": self.remote_ops,
                "temps_removed": self.temps_removed}

    # --- stat and list ------------------------------------------------------------------

    def stat_path(self, path: str) -> Pending:
        absolute = self.roots.absolute(path)
        if self._on_slow_fs(absolute):
            def blocking() -> dict[str, Any]:
                refuse_climb_past_non_directory(absolute)
                return self._stat_of(self.roots.resolve_fast(absolute), path)

            return self._on_remote(path, blocking)
        climb_checked(absolute, path)
        real, lst = self.roots.resolve_lstat(absolute)
        if lst is not None and not stat_mod.S_ISLNK(lst.st_mode):
            try:
                refuse_file_as_directory(lst, path, real)
            except OSError as exc:
                raise os_error(exc, path) from None
            # The resolution's lstat of the real path, whose last name is no symlink: what a
            # stat of it says, one syscall instead of two.
            out = Pending()
            out.resolve({"path": real, **stat_info(lst)})
            return out
        return Attempts(self.policy, lambda: self._stat_of(real, path), self.schedule,
                        path).run()

    def _stat_of(self, real: str, path: str) -> dict[str, Any]:
        st = self.stat(real)
        refuse_file_as_directory(st, path, real)
        return {"path": real, **stat_info(st)}

    def list_dir(self, path: str, recursive: bool = False, glob: str | None = None
                 ) -> Pending:
        """Entries under a directory (relative names), symlinks listed but not followed: the
        first `list_loop_entries` looked at here, the rest of a bigger walk on a worker
        (listing.py)."""
        if glob is not None and len(glob) > MAX_GLOB_CHARS:
            raise fail("bad_args", f"fs.list: a glob of at most {MAX_GLOB_CHARS} characters",
                       detail={"max": MAX_GLOB_CHARS})
        absolute = self.roots.absolute(path)
        if self._on_slow_fs(absolute):
            def whole() -> dict[str, Any]:
                refuse_climb_past_non_directory(absolute)
                listing = self._listing(self.roots.resolve_fast(absolute), recursive, glob)
                listing.step(None)
                return listing.answer()

            return self._on_remote(path, whole)
        climb_checked(absolute, path)
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
