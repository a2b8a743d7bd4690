"""File contents kept in memory, trusted only while the file's stat tuple is unchanged.

The key is (dev, ino, size, mtime_ns, ctime_ns). mtime alone misses `cp -p`, `rsync -t` and
`tar`, which set it back; ctime cannot be set from user space and changes with every write,
rename or chmod, and ino catches a file replaced by another. Every hit is revalidated by one
`stat` of the path, so the cache stays right even when the watcher has lost events or is not
watching that path at all; events only free memory sooner (an entry whose file still has its
key survives the event: it was read after that change).

Entries are kept by real path, in LRU order, bounded by bytes (and by a per-file cap, so one
big file cannot flush everything else). `aliases` maps the path a client used to the real path,
so a hit costs a dict lookup and a stat, not a `realpath`. A stale entry (key mismatch) is
kept until replaced: it is the "cache previous" fallback when a read fails transiently.

The stat key is only as fine as the file system's timestamps: where they move once per tick
(a jiffy, 1-10 ms, on every kernel before 6.13 and on ramfs, vfat, most network file systems
since; a second or two on vfat and ext4 with small inodes), a same-size rewrite within the tick
of the version read keeps the key. Git calls such an entry "racily clean", and so does this: a
version whose ctime is within a tick (`racy`) of when it was known to hold its bytes is kept
marked `racy`, and a hit on it is answered only once a read of the file gives those bytes again
(`hit`'s `confirm`); the first such read after the tick has passed makes it trusted, since any
later change gets a later ctime. A file not changed just now (the common case) is one stat.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moorage.actors.watcher.watches import under_any
from moorage.protocol.envelope import Packed

StatKey = tuple[int, int, int, int, int]

TICK_NS = 20_000_000
"""How far behind a change's ctime may be from the clock when it is made: a jiffy of the
kernel's coarse clock (10 ms at HZ=100) and the file system's rounding, with room to spare."""
COARSE_TICK_NS = 2_000_000_000 + TICK_NS
"""The same where ctime is a whole second: a file system that keeps seconds (vfat: two)."""


def racy(st: os.stat_result, since_ns: int) -> bool:
    """Could a change made after `since_ns` (time.time_ns) leave `st`'s stat key as it is?
    So when its ctime is within a tick of that moment, or after it: a change in the same tick
    gets the same timestamps (git's racy-clean rule)."""
    c = st.st_ctime_ns
    return c > since_ns - (COARSE_TICK_NS if c % 1_000_000_000 == 0 else TICK_NS)


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def etag(key: StatKey) -> str:
    """An opaque version tag of a file (for if_match): its stat key, in hex."""
    dev, ino, size, mtime, ctime = key  # (one f-string: a join over a generator costs 4x)
    return f"{dev:x}-{ino:x}-{size:x}-{mtime:x}-{ctime:x}"


def stat_info(st: os.stat_result) -> dict[str, Any]:
    """What the wire says about a file's stat."""
    mode = st.st_mode
    kind = ("file" if (mode & 0o170000) == 0o100000 else "dir" if (mode & 0o170000) == 0o040000
            else "symlink" if (mode & 0o170000) == 0o120000 else "other")
    return {"type": kind, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev,
            "mode": mode & 0o7777, "etag": etag(stat_key(st))}


@dataclass(slots=True)
class Entry:
    key: StatKey
    data: bytes
    info: dict[str, Any]  # stat_info of the read, reused by every hit
    # fs.read's reply body for the whole file, packed by its first hit and sent by every
    # hit after it (files.FileService.read_cached)
    whole: Packed | None = None
    # the version may have changed within its timestamp tick since it was read (`racy`): a
    # hit is confirmed by reading the file again
    racy: bool = False


class FileCache:
    def __init__(self, max_bytes: int = 64 << 20, max_file_bytes: int = 4 << 20,
                 max_aliases: int = 65536) -> None:
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.max_aliases = max_aliases
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.aliases: dict[str, str] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.evictions = 0
        self.invalidations = 0
        self.unconfirmed = 0  # hits on racy entries whose bytes a read did not give again

    def __len__(self) -> int:
        return len(self.entries)

    def hit(self, path: str, confirm: Callable[[str, Entry], bool] | None = None
            ) -> Entry | None:
        """The entry for the absolute path a client asked for, if the file on disk still has
        the key it had when read (one stat) and, for a `racy` entry, `confirm(real, entry)`
        says a read gives its bytes again (no `confirm`: a racy entry is a miss); None on a
        miss."""
        real = self.aliases.get(path)
        if real is None:
            return None
        e = self.entries.get(real)
        if e is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None  # the slow path will classify (and maybe retry) the error
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != e.key:
            return None
        if e.racy and (confirm is None or not confirm(real, e)):
            self.unconfirmed += 1
            return None
        self.entries.move_to_end(real)
        self.hits += 1
        return e

    def peek(self, real: str) -> Entry | None:
        """Whatever is kept for `real`, current or not (the stale fallback)."""
        return self.entries.get(real)

    def put(self, path: str, real: str, st: os.stat_result, data: bytes,
            info: dict[str, Any] | None = None, *, racy: bool = False) -> None:
        """Keep `data` as `real`'s contents at `st` (`info`: its stat_info, if made already;
        `racy`: the version was known within its timestamp tick, module docstring)."""
        if len(data) > self.max_file_bytes or len(data) > self.max_bytes:
            return
        old = self.entries.pop(real, None)
        if old is not None:
            self.bytes -= len(old.data)
        self.entries[real] = Entry(stat_key(st), data, info or stat_info(st), racy=racy)
        self.bytes += len(data)
        if len(self.aliases) >= self.max_aliases:
            self.aliases.clear()  # rebuilt by the next misses; cheaper than LRU bookkeeping
        self.aliases[path] = real
        while self.bytes > self.max_bytes and self.entries:
            _, e = self.entries.popitem(last=False)
            self.bytes -= len(e.data)
            self.evictions += 1

    def invalidate(self, real: str) -> None:
        e = self.entries.pop(real, None)
        if e is not None:
            self.bytes -= len(e.data)
            self.invalidations += 1

    def changed(self, real: str) -> None:
        """An event says `real` changed: drop it unless it still has the key it was read
        with (an event that trails a write the entry was read after must not cost a hit)."""
        e = self.entries.get(real)
        if e is None:
            return
        try:
            st = os.stat(real)
        except OSError:
            self.invalidate(real)
            return
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != e.key:
            self.invalidate(real)

    def invalidate_trees(self, real_dirs: list[str]) -> None:
        """Directories were deleted or moved: everything under them goes. One look at each
        entry for the lot (an `rm -rf` of a build's thousands of directories, one scan of
        the cache each, held the loop for seconds): a few directories are tested as
        prefixes in C; many, each entry's ancestors looked up among them."""
        dirs = {d.rstrip("/") or "/" for d in real_dirs}
        if len(dirs) <= 8:
            prefixes = tuple(d.rstrip("/") + "/" for d in dirs)
            gone = [p for p in self.entries if p.startswith(prefixes)]
        else:
            gone = [p for p in self.entries if under_any(p, dirs)]
        for p in gone:
            self.invalidate(p)

    def trim(self, fraction: float) -> dict[str, int]:
        """Drop the least recently used `fraction` of the bytes (1.0: everything)."""
        before_n, before_b = len(self.entries), self.bytes
        target = int(self.bytes * (1 - fraction)) if fraction < 1 else 0
        while self.entries and self.bytes > target:
            _, e = self.entries.popitem(last=False)
            self.bytes -= len(e.data)
        if fraction >= 1:
            self.aliases.clear()
        return {"entries_dropped": before_n - len(self.entries),
                "bytes_freed": before_b - self.bytes}

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self.entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "max_file_bytes": self.max_file_bytes, "hits": self.hits,
                "misses": self.misses, "stale_served": self.stale_served,
                "evictions": self.evictions, "invalidations": self.invalidations,
                "unconfirmed": self.unconfirmed}
