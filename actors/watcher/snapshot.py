"""The tree as the subscribers were told it, the walk that re-reads it, and the diff between.

`Index` is the told state: path -> stat (packed bytes, `Stat`), changed only when an event is
published (or a resync replaces it wholesale). It is what a resync diffs against, so anything
a subscriber has not been told shows up in the diff, and nothing it has been told is silently
dropped. A path whose stat could not be taken when its event went out holds `UNKNOWN`, which
matches nothing on disk: a later diff reports it again rather than assume.

Directories are compared by (dev, ino, mode) only: their size and times move with every child
and would make every diff report every directory. Files by (dev, ino, size, mtime_ns,
ctime_ns, mode): ctime and ino catch `cp -p`, which keeps mtime.

The checkpoint (`save`/`load`) survives the death of the process (a temporary file renamed
into place: a reader finds the old or the new file, never a torn one). It is not fsynced: the
runtime directory does not outlive the machine either.

A path is a str as os.fsdecode makes it: a name that is not UTF-8 (Linux allows any bytes
but "/" and NUL) holds its stray bytes as lone surrogates. The state files keep such a path
exactly (msgpack with surrogateescape, both ways); the wire cannot (a msgpack str is valid
UTF-8), so an answer or an event carries it as `wire_fields` says.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import msgpack

from moorage.actors.runtime.beat import progress as _progress
from moorage.actors.runtime.statefile import write_atomic, write_atomic_parts
from moorage.actors.watcher.coalesce import CREATED, DELETED, MODIFIED

# A stat as the index keeps it: 44 bytes, packed. A 100,000-file tree holds one per path, and
# as a tuple of six ints it cost about 180 bytes a file (the tuple and the ints over 256
# Python makes for each inode, size and time): 80 here, 9 MiB less for such a tree. Equal
# stats are equal bytes, so a diff compares them as they are.
_STAT = struct.Struct("<IQQqqq")  # mode, dev, ino, size, mtime_ns, ctime_ns
Stat = bytes
make_stat = _STAT.pack
stat_fields = _STAT.unpack  # (mode, dev, ino, size, mtime_ns, ctime_ns)
UNKNOWN: Stat = make_stat(0, 0, 0, -1, -1, -1)  # no file on disk has a size of -1
_DIR = stat_mod.S_IFDIR


def as_stat(st: os.stat_result) -> Stat:
    """The stat the index keeps for `st`: a directory's size and times are left out (module
    docstring), so they are zero."""
    mode = st.st_mode
    if (mode & 0o170000) == _DIR:
        return make_stat(mode, st.st_dev, st.st_ino, 0, 0, 0)
    return make_stat(mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_format(s: Stat) -> int:
    """The stat's S_IFMT bits: the mode's second byte, little-endian, holds them."""
    return (s[1] & 0xF0) << 8


def is_dir(s: Stat) -> bool:
    return (s[1] & 0xF0) == 0x40  # S_IFDIR


def _no_beat() -> None:
    pass


# --- paths on the wire ---------------------------------------------------------------------

# The state files' packing: a path with a name that is not UTF-8 is written as its bytes and
# read back as the same str (a strict packer refused it, and the write-ahead log's failure
# dropped a whole window's events).
PATHS = "surrogateescape"
BYTES_SUFFIX = "_bytes"


def path_bytes(s: str) -> bytes:
    """The bytes `s` stands for (os.fsencode's). A lone surrogate no file name makes (one
    outside the stray bytes' range) goes as UTF-8 would have it, rather than fail."""
    try:
        return s.encode("utf-8", PATHS)
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def readable(s: str) -> str:
    """`s` as valid UTF-8: each sequence of it that is not (a name's stray bytes) as U+FFFD.
    What a reader can show; not a path that names the file."""
    return path_bytes(s).decode("utf-8", "replace")


def sendable(s: str) -> bool:
    """May `s` go on the wire as a msgpack str?"""
    if s.isascii():
        return True
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def wire_fields(d: dict[str, Any], keys: Iterable[str] | None = None) -> int:
    """The wire's form of a map that names paths, in place: each str value (of `keys`, or
    every one) that is not valid UTF-8 becomes `readable`, and its exact bytes go in the
    field of the same name with BYTES_SUFFIX (`path` -> `path_bytes`, a msgpack bin).
    Returns how many fields it changed; the others, and a map without any, stay as they are.
    One such name thus never fails an answer or an event, and a client that needs the file
    itself has its bytes."""
    changed = 0
    for k in list(d if keys is None else keys):
        v = d.get(k)
        if type(v) is str and not sendable(v):
            raw = path_bytes(v)
            d[k] = raw.decode("utf-8", "replace")
            d[k + BYTES_SUFFIX] = raw
            changed += 1
    return changed


def wire_items(items: list[Any], key: str) -> int:
    """A list of names or paths (plain str, or maps naming one under `key`) in the wire's
    form, in place: a str that is not valid UTF-8 becomes the map {key, key_bytes} among
    the plain ones, a map's `key` as `wire_fields` makes it. Returns how many it changed;
    one pass over the names tells whether any is such (a list without pays nothing more)."""
    names = [i if type(i) is str else i.get(key, "") for i in items]
    if all_sendable(names):
        return 0
    changed = 0
    for n, item in enumerate(items):
        if type(item) is not str:
            changed += wire_fields(item, (key,))
        elif not sendable(item):
            items[n] = d = {key: item}
            changed += wire_fields(d)
    return changed


def all_sendable(names: list[str]) -> bool:
    """Are all of `names` valid UTF-8? One C-speed pass over a page's names, so that only a
    page holding one that is not pays for looking at each (`wire_fields`)."""
    try:
        "".join(names).encode()
    except UnicodeEncodeError:
        return False
    return True


StatFields = tuple[Stat, int, int, int]  # packed stat, st_mode, st_size, st_mtime_ns


def lstat_fields_python(path: str) -> StatFields | None:
    """The pipeline's lstat of a changed path: its packed stat and what its event says (the
    type, size and mtime), or None when it is gone again (its deletion follows)."""
    try:
        st = lstat_any(path)
    except OSError:
        return None
    return as_stat(st), st.st_mode, st.st_size, st.st_mtime_ns


def lstat_any(path: str) -> os.stat_result:
    """os.lstat of `path`, also of one PATH_MAX bytes or longer: its directory opened by
    `open_dir`, its name lstat'ed relative to that (the pipeline's stat of a change the walk
    would find past the limit agrees with the walk's)."""
    try:
        return os.lstat(path)
    except OSError as exc:
        parent, _, name = path.rpartition("/")
        if exc.errno != errno.ENAMETOOLONG or not parent or not name:
            raise
    fd = open_dir(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.lstat(name, dir_fd=fd)
    finally:
        os.close(fd)


def lstat_many_python(paths: list[str]) -> list[StatFields | None]:
    """`lstat_fields` of each path, in order (the stat-ahead thread's batch)."""
    return [lstat_fields_python(p) for p in paths]


def _load_compiled(name: str) -> Any:
    if os.environ.get("MOORAGE_WATCHER_CORE") == "python":
        return None
    try:
        from moorage.actors.watcher import _cwalk
    except ImportError:
        return None
    return getattr(_cwalk, name, None)


_walk_compiled: Callable[..., None] | None = _load_compiled("walk")
lstat_fields: Callable[[str], StatFields | None] = (
    _load_compiled("lstat_fields") or lstat_fields_python)
lstat_many: Callable[[list[str]], list[StatFields | None]] = (
    _load_compiled("lstat_many") or lstat_many_python)
WALK_CORE: str = "python" if _walk_compiled is None else "compiled"
"""The walk a worker runs here (the watcher's sys.info says it, `walk_core`): "compiled" when
`pip install` could build it, else "python"."""


OnError = Callable[[str, OSError], None]
PATH_MAX = 4096  # Linux's: the longest path one system call takes (limits.h), its NUL counted


def walk(root: str, keep: Callable[[str], bool] | None = None, recursive: bool = True,
         into: dict[str, Stat] | None = None, *, on_loop: bool = True,
         on_dir: Callable[[str], bool] | None = None,
         on_error: OnError | None = None) -> dict[str, Stat]:
    """Every entry below `root` (not `root` itself) with its stat; symlinks are entries, not
    followed. `keep(path)` false prunes a path (and, for a directory, what is below it).
    `on_loop` false: a worker thread walks, and must not beat for the loop (that would hide
    a loop that really hangs).

    `on_dir(directory)`, called for each directory below `root` before it is listed, lets
    the walk that places inotify watches be this one (guarded.py): a directory is watched,
    then read, so a change in it lands in the walk, in an event, or both. A directory it
    answers true for is walked even where `keep` prunes it (another watch may need its
    watches), though nothing `keep` prunes is recorded.

    A directory gone, no directory any more or unreadable (EACCES, EPERM) is skipped: its
    parent's diff says so. Anything else the walk cannot read (a directory it cannot open
    or list, an entry it cannot lstat) goes to `on_error(path, error)`, and the walk goes on
    past it; without `on_error` it is raised. A path longer than PATH_MAX is no such error:
    its directory is opened a part of the path at a time (`open_dir`), so the walk has no
    limit on depth.

    A worker's walk runs the compiled core when this process has it (`WALK_CORE`): the
    same entries and stats, about twice as fast (an lstat per entry is most of what is
    left), with the GIL let go while it reads and lstats. A walk on the loop beats for it
    and so stays in Python."""
    out: dict[str, Stat] = {} if into is None else into
    if _walk_compiled is not None and not on_loop:
        _walk_compiled(root, out, recursive, keep, on_dir, on_error)
        return out
    return walk_python(root, keep, recursive, out, on_loop=on_loop, on_dir=on_dir,
                       on_error=on_error)


def open_dir(path: str, flags: int = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) -> int:
    """A descriptor of the directory at `path` (opened with `flags`). A path the kernel does
    not take in one call (PATH_MAX bytes or more) is opened a part of fewer bytes at a time,
    each ending at a slash and opened relative to the one before (O_PATH: as an open of the
    whole path, the directories on the way need only be searchable)."""
    raw = os.fsencode(path)
    if len(raw) < PATH_MAX:
        return os.open(raw, flags)
    fd: int | None = None
    at = 0
    try:
        while at < len(raw):
            last = len(raw) - at < PATH_MAX
            end = len(raw) if last else raw.rfind(b"/", at + 1, at + PATH_MAX)
            if end < 0:  # (a name longer than a path may be: no file system makes one)
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
            nxt = os.open(raw[at:end], flags if last else os.O_PATH | os.O_DIRECTORY
                          | os.O_CLOEXEC, dir_fd=fd)
            if fd is not None:
                os.close(fd)
            fd = nxt
            at = end
            while at < len(raw) and raw[at] == 0x2F:  # "/"
                at += 1
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    assert fd is not None
    return fd


NAME_MAX = 255  # Linux's longest name
_SURELY_SHORT = (PATH_MAX - NAME_MAX - 1) // 4  # characters: a character is at most 4 bytes


def _scandir(top: str) -> tuple[Iterator[os.DirEntry[str]], int | None]:
    """os.scandir of `top`, and the descriptor it reads by or None. Where the path of an
    entry in it may reach PATH_MAX bytes, it reads by a descriptor (`open_dir`), relative to
    which each entry's stat is then taken (not by a path too long to name): the caller
    closes it once done with the entries. Each entry's `path` is then its name alone."""
    if len(top) < _SURELY_SHORT or len(os.fsencode(top)) < PATH_MAX - NAME_MAX - 1:
        return os.scandir(top), None
    fd = open_dir(top)
    try:
        return os.scandir(fd), fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _closing(fd: int | None) -> Iterator[None]:
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _listed(it: Iterator[os.DirEntry[str]], top: str,
            on_error: OnError | None) -> Iterator[os.DirEntry[str]]:
    """The entries of `it`; a listing that fails midway ends with those it gave, the failure
    told to `on_error` (or raised without it)."""
    while True:
        try:
            e = next(it)
        except StopIteration:
            return
        except OSError as exc:
            if on_error is None:
                raise
            on_error(top, exc)
            return
        yield e


def walk_python(root: str, keep: Callable[[str], bool] | None = None, recursive: bool = True,
                into: dict[str, Stat] | None = None, *, on_loop: bool = True,
                on_dir: Callable[[str], bool] | None = None,
                on_error: OnError | None = None) -> dict[str, Stat]:
    """`walk` in Python: the contract, and the fallback without the compiled core."""
    out: dict[str, Stat] = {} if into is None else into
    progress = _progress if on_loop else _no_beat
    stack = [root]
    lstat_dir = _DIR
    seen = 0
    stat_of = as_stat
    while stack:
        top = stack.pop()
        progress()  # a big tree takes longer than the hang detection allows one loop turn
        try:
            it, fd = _scandir(top)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # gone or unreadable since it was listed: its parent's diff says so
        except OSError as exc:
            if on_error is None:
                raise
            on_error(top, exc)
            continue
        prefix = top if top.endswith("/") else top + "/"
        with it, _closing(fd):
            for e in _listed(it, top, on_error):
                seen += 1
                if not seen & 4095:
                    progress()  # (a directory of 100,000 entries too)
                path = prefix + e.name
                if keep is not None and not keep(path):
                    if on_dir is not None and recursive and e.is_dir(follow_symlinks=False) \
                            and on_dir(path):
                        stack.append(path)
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if on_error is None:
                        raise
                    on_error(path, exc)
                    continue
                out[path] = stat_of(st)
                if recursive and (st.st_mode & 0o170000) == lstat_dir:
                    if on_dir is not None:
                        on_dir(path)
                    stack.append(path)
    return out


WARN_MAX = 16  # the warnings one walk gives at most; the last then counts those left out


def denied_warnings(denied: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """The `unreadable` warnings of directories no watch may be placed on for their
    permissions (path, errno name): nothing below one is watched nor walked until it can
    be read (a chmod, a chown), and then what it holds is reported created."""
    return [{"reason": "unreadable", "path": path, "error": code,
             "message": f"{path} could not be read ({code}): left out of the walks, and "
                        "not watched until it can be read"} for path, code in denied]


class RootWalks:
    """The walks of several roots (none inside another) into one map. A root's walk may be
    run by the placement that watches it (`base`: ObserverManager.place's base walk, which
    places the root's watches as it reads the tree); `rest` walks each root no placement
    walked to its end. Worker threads only.

    What a walk cannot read is kept (`unread`) and the walk goes on past it: one root's
    trouble never fails another root's walk, nor the rest of its own. `warnings` says what
    the map lacks, and what no watch can follow."""

    def __init__(self, keep: Callable[[str], bool] | None) -> None:
        self.keep = keep
        self.out: dict[str, Stat] = {}
        self.started: set[str] = set()
        self.done: set[str] = set()
        self.unread: list[tuple[str, OSError]] = []

    def base(self, path: str, recursive: bool) -> Callable[[Callable[[str], bool]], None]:
        def run(on_dir: Callable[[str], bool]) -> None:
            self.started.add(path)
            walk(path, self.keep, recursive, into=self.out, on_loop=False, on_dir=on_dir,
                 on_error=self._unread)
            self.done.add(path)
        return run

    def rest(self, roots: Mapping[str, bool]) -> dict[str, Stat]:
        """The map, once every root in `roots` is walked."""
        for path, recursive in roots.items():
            if path in self.done:
                continue
            if path in self.started:  # cut short by an error: what it saw may be gone since
                below = path.rstrip("/") + "/"
                for p in [p for p in self.out if p.startswith(below)]:
                    del self.out[p]
            walk(path, self.keep, recursive, into=self.out, on_loop=False,
                 on_error=self._unread)
        return self.out

    def _unread(self, path: str, exc: OSError) -> None:
        self.unread.append((path, exc))

    def warnings(self, denied: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """The `warning` events the walks call for, as the fields of each (after `rest`):
        - `unreadable`: a directory the walk could not read, or an entry it could not
          lstat (EIO, ELOOP...: not one gone, nor one it may not read); what is below it
          is not in the map. And each of `denied` (path, errno name): a directory it may
          not read (EACCES, EPERM), which the walk passes over and no inotify watch is
          placed on (observer.py's `unreadable`) until it can be read;
        - `path_too_long`: a directory whose path is PATH_MAX bytes or longer, below one
          whose path is not. The walk read it (`open_dir`), but inotify takes a watch's
          path in one call, so no watch is placed on it or below it: what changes there
          is seen by a resync only.
        At most WARN_MAX: the last then counts those left out (`more`)."""
        out: list[dict[str, Any]] = []
        for path, exc in self.unread:
            code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            out.append({"reason": "unreadable", "path": path, "error": code,
                        "message": f"{path} could not be read ({exc.strerror}): "
                                   "left out of the walk"})
        out += denied_warnings(denied)
        for path in self._too_long():
            out.append({"reason": "path_too_long", "path": path,
                        "message": f"{path} is {len(os.fsencode(path))} bytes long, more than "
                                   f"a watch's path may be ({PATH_MAX - 1}): what changes "
                                   "below it is seen by a resync only"})
        return self.bounded(out)

    @staticmethod
    def bounded(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """At most WARN_MAX of `out`: the last then counts those left out (`more`)."""
        if len(out) > WARN_MAX:
            left = len(out) - WARN_MAX
            out = out[:WARN_MAX]
            out[-1]["more"] = left
            out[-1]["message"] += f" (and {left} more warnings of this walk left out)"
        return out

    def _too_long(self) -> list[str]:
        """The directories of the map at PATH_MAX bytes or more below one that is not."""
        found = []
        shortest = PATH_MAX // 4  # (a character is at most 4 bytes: shorter ones fit)
        for p, s in self.out.items():
            if len(p) < shortest or not is_dir(s):
                continue
            n = len(os.fsencode(p))
            if n >= PATH_MAX and n - len(os.fsencode(p.rpartition("/")[2])) - 1 < PATH_MAX:
                found.append(p)
        return sorted(found)


def diff(old: Mapping[str, Stat], new: Mapping[str, Stat]) -> list[tuple[str, str, bool]]:
    """(kind, path, is_dir) turning `old` into `new`: deletions first (children before their
    directory), then creations and modifications (parents before children)."""
    gone = sorted((p for p in old if p not in new), reverse=True)
    out: list[tuple[str, str, bool]] = [(DELETED, p, is_dir(old[p])) for p in gone]
    changed = []
    for p, s in new.items():
        o = old.get(p)
        if o is None:
            changed.append((p, CREATED, s))
        elif o != s:
            changed.append((p, MODIFIED, s))
    changed.sort()
    out.extend((kind, p, is_dir(s)) for p, kind, s in changed)
    return out


class Index:
    """The told state, with each directory's children so a subtree goes in one step.

    A directory's children are kept as their full paths: the very string objects that key
    `entries`, so the map costs a set slot per entry and no second copy of each name (about
    55 bytes an entry: 5 MiB of a 100,000-file tree)."""

    __slots__ = ("children", "entries")

    def __init__(self, entries: dict[str, Stat] | None = None) -> None:
        self.entries: dict[str, Stat] = {}
        self.children: dict[str, set[str]] = {}
        if entries:
            self.replace(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def replace(self, entries: dict[str, Stat]) -> None:
        self.entries = entries
        kids: dict[str, set[str]] = {}
        for p in entries:
            parent = p.rpartition("/")[0]
            s = kids.get(parent)
            if s is None:
                kids[parent] = {p}
            else:
                s.add(p)
        self.children = kids

    def take(self, other: Index) -> None:
        """Become `other` (built off the loop), which is not used afterwards."""
        self.entries, self.children = other.entries, other.children

    def set(self, path: str, s: Stat) -> None:
        if path not in self.entries:
            parent = path.rpartition("/")[0]
            kids = self.children.get(parent)
            if kids is None:
                self.children[parent] = {path}
            else:
                kids.add(path)
        self.entries[path] = s

    def remove(self, path: str) -> None:
        """Forget `path` and everything below it."""
        if self.entries.pop(path, None) is not None:
            kids = self.children.get(path.rpartition("/")[0])
            if kids is not None:
                kids.discard(path)
        stack = [path]
        while stack:
            below = self.children.pop(stack.pop(), None)
            if below:
                for child in below:
                    self.entries.pop(child, None)
                    stack.append(child)

    def below(self, root: str) -> list[str]:
        """Every path under `root` (not `root` itself): the children of `root` and of each
        directory under it. Each path is in its parent's set, and only there, so none is
        missed and none repeats, and the cost is a test per directory and a C-speed copy
        of each set, not a test per path."""
        base = root.rstrip("/")
        prefix = base + "/"
        out: list[str] = []
        for parent, kids in self.children.items():
            if parent == base or parent.startswith(prefix):
                out += kids
        return out

    def discard(self, path: str) -> None:
        """Forget `path` alone (what is below it may still be watched)."""
        if self.entries.pop(path, None) is None:
            return
        parent = path.rpartition("/")[0]
        kids = self.children.get(parent)
        if kids is not None:
            kids.discard(path)
            if not kids and parent not in self.entries:
                del self.children[parent]
        if not self.children.get(path, True):
            del self.children[path]


# --- the checkpoint ------------------------------------------------------------------------

FORMAT = 2  # 2: stats as packed bytes, one map (a checkpoint of format 1 is not read)
# 3: a map without its entries, then the entries in maps of SAVE_CHUNK, then {"chunks": n}
STREAM_FORMAT = 3
SAVE_CHUNK = 512


def save(path: str, doc: dict[str, Any]) -> int:
    """Write `doc` (msgpack) to `path` atomically; returns the bytes written. A doc with
    `entries` (a dict, or an Index: `stream`) is written as a stream (`stream`)."""
    if not isinstance(doc.get("entries"), (dict, Index)):
        return write_atomic(path, msgpack.packb({"format": FORMAT, **doc}, use_bin_type=True,
                                                unicode_errors=PATHS))
    return write_atomic_parts(path, stream(doc))


def stream(doc: dict[str, Any]) -> Iterator[bytes]:
    """`doc` in STREAM_FORMAT, a part at a time: the watcher's loop packs a checkpoint a
    chunk a turn (state.py) and a worker only writes the parts. The entries are read as
    each chunk is packed: `entries` may be the live index's dict, which the loop changes in
    between. A path then holds its stat of the capture or a later one, and every path
    changed since the capture is in the wal's later generations, which a restart counts as
    unknown (Wal).

    `entries` may be the Index itself: its dict is then the one it holds when the entries'
    packing begins, not at the capture. A new watch's first crawl and a resync put a new
    dict in the Index (Index.take); the capture's old one, packed, put back on disk a told
    state without what they brought, and a watch answered before the capture's write
    could be lost by it (its crawl is in no wal generation: it is no event)."""
    held = doc.get("entries")
    packb = msgpack.Packer(use_bin_type=True, unicode_errors=PATHS).pack
    yield packb({"format": STREAM_FORMAT, **{k: v for k, v in doc.items() if k != "entries"}})
    entries: dict[str, Stat] = (held.entries if isinstance(held, Index) else held) or {}
    keys = list(entries)
    get = entries.get
    chunks = 0
    for i in range(0, len(keys), SAVE_CHUNK):
        part = keys[i:i + SAVE_CHUNK]
        # (a path gone since the capture is written as nil and not read back: it is in
        # the wal)
        chunks += 1
        yield packb(dict(zip(part, map(get, part), strict=True)))
    yield packb({"chunks": chunks})


def load(path: str) -> dict[str, Any] | None:
    """The saved doc, or None when there is none or it cannot be read (then a resync has no
    base, which the caller reports)."""
    try:
        with open(path, "rb") as f:
            objs = list(msgpack.Unpacker(f, strict_map_key=False, use_list=False,
                                         max_buffer_size=1 << 31, unicode_errors=PATHS))
    except (OSError, ValueError, msgpack.UnpackException):
        return None
    if not objs or not isinstance(objs[0], dict):
        return None
    doc = objs[0]
    if doc.get("format") == FORMAT and len(objs) == 1:
        return doc
    parts, end = objs[1:-1], objs[-1]
    if (doc.get("format") != STREAM_FORMAT or len(objs) < 2 or not isinstance(end, dict)
            or end.get("chunks") != len(parts) or not all(isinstance(o, dict) for o in parts)):
        return None
    entries: dict[str, Any] = {}
    for part in parts:
        entries.update(part)
    return {**doc, "entries": {p: s for p, s in entries.items() if s is not None}}


class Wal:
    """The paths of every event, appended before the event is published, in generations.

    A checkpoint is the told state at one moment; the events published after it exist only
    here. At a restart every path in a generation not older than the checkpoint's counts as
    unknown: whatever a subscriber may have heard about it, the restart diff reports its
    current state (or its deletion) again. A capture starts a new generation; once the
    checkpoint of that capture is written, the older generations are deleted. A torn last
    record (the process died inside the write) belonged to events never published.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory
        gens = self.generations()
        self.gen = (max(gens) + 1) if gens else 1
        self.fd = self._open(self.gen)
        self.records = 0

    def _path(self, gen: int) -> str:
        return os.path.join(self.dir, f"wal.{gen}.msgpack")

    def _open(self, gen: int) -> int:
        return os.open(self._path(gen), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                       0o600)

    def generations(self) -> list[int]:
        out = []
        for name in os.listdir(self.dir):
            parts = name.split(".")
            if len(parts) == 3 and parts[0] == "wal" and parts[1].isdigit():
                out.append(int(parts[1]))
        return sorted(out)

    def append(self, paths: list[str]) -> None:
        """Raises OSError when the record is not all written. A full disk takes a record's
        first bytes into the room left in the file's last page: kept, that half record
        would hide every later record of its generation from `touched`, and a restart
        would take paths whose events went out for paths the checkpoint knows. The part
        written is taken back, so the caller can give the state up on a whole log."""
        if paths:
            record = msgpack.packb(paths, use_bin_type=True, unicode_errors=PATHS)
            n = os.write(self.fd, record)
            if n < len(record):
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, os.lseek(self.fd, 0, os.SEEK_END) - n)
                raise OSError(errno.ENOSPC, f"the write-ahead log took {n} of a record's "
                                            f"{len(record)} bytes")
            self.records += 1

    def rotate(self) -> int:
        """Start a new generation; returns its number (the capture's tag). Raises OSError
        with the current one still open: its descriptor is closed only once the next is
        (closed first, its number could be another file's by the next append)."""
        fd = self._open(self.gen + 1)
        os.close(self.fd)
        self.fd = fd
        self.gen += 1
        return self.gen

    def drop_before(self, gen: int) -> None:
        for g in self.generations():
            if g < gen:
                try:
                    os.unlink(self._path(g))
                except FileNotFoundError:
                    pass

    def touched(self, since_gen: int) -> set[str]:
        """Every path recorded in generations >= `since_gen`."""
        out: set[str] = set()
        for g in self.generations():
            if g < since_gen:
                continue
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 30,
                                        unicode_errors=PATHS)
            with open(self._path(g), "rb") as f:
                unpacker.feed(f.read())
            try:
                for rec in unpacker:
                    if isinstance(rec, list):
                        out.update(p for p in rec if isinstance(p, str))
            except (ValueError, msgpack.UnpackException):
                continue  # a torn tail: those events were never published
        return out

    def close(self) -> None:
        os.close(self.fd)
