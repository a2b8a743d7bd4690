"""The watcher's saves and reads against other writers of the same files.

An atomic fs.write answers the version it made, taken from its own temporary, not whatever
the path holds once the directory's fsync is over; a file whose timestamps move once per
tick (ramfs, and every file system on kernels before 6.13) is not trusted by its stat key
within that tick; a write killed before its rename leaves a temporary that a later write in
that directory removes, and a write under way, however slow, holds its temporary's lock,
which keeps another watcher's sweep off it; a long multibyte name gets a legal temporary
name; a pseudo file that tells no size is read on an io worker, not on the loop, at any
offset.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.actors.watcher import files
from moorage.actors.watcher.cache import FileCache, etag, stat_key
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.files import FileService
from moorage.protocol.errors import MoorageError
from tests.test_watcher import start  # noqa: F401  (the fixture)
from tests.test_watcher_parts import POLICY, Later

pytestmark = pytest.mark.timeout(180)


# --- an atomic write's version -------------------------------------------------------------


def test_an_edit_made_while_an_atomic_write_syncs_its_directory_is_not_answered_as_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer rewrites the new file in place, same size, in the window of the
    directory's fsync (as a busy disk widens it): the write answers its own version, whose
    etag then conflicts, and the next read answers what is on disk."""
    root = tmp_path / "root"
    root.mkdir()
    target = root / "main.py"
    target.write_bytes(b"o" * 64)
    real_fsync = os.fsync

    def fsync_after_the_other_writer(fd: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):  # the directory's: the rename is done
            with open(target, "r+b") as f:
                f.write(b"X" * 64)
        real_fsync(fd)

    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    monkeypatch.setattr(files.os, "fsync", fsync_after_the_other_writer)
    answer = fs.write(str(target), b"A" * 64).unwrap()
    monkeypatch.undo()
    on_disk = target.read_bytes()
    assert on_disk == b"X" * 64
    assert answer["stat"]["etag"] != etag(stat_key(os.stat(target)))
    hit = fs.read_cached(str(target), 0, None)
    read = hit if hit is not None else fs.read(str(target)).unwrap()
    assert read.attachments == [on_disk]
    with pytest.raises(MoorageError) as e:
        fs.write(str(target), b"E" * 64, if_match=answer["stat"]["etag"]).unwrap()
    assert e.value.name == "conflict"
    assert target.read_bytes() == on_disk


def test_an_atomic_write_answers_the_etag_of_the_file_it_leaves(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    answer = fs.write(str(root / "f"), b"new").unwrap()
    assert answer["stat"]["etag"] == etag(stat_key(os.stat(root / "f")))
    assert answer["atomic"] is True
    fs.write(str(root / "f"), b"again", if_match=answer["stat"]["etag"]).unwrap()
    assert (root / "f").read_bytes() == b"again"


# --- coarse timestamps ---------------------------------------------------------------------


@pytest.fixture
def ramfs(data: Path) -> Iterator[Path]:
    """A ramfs inside the watched directory: its timestamps move once per jiffy."""
    if os.geteuid() != 0:
        pytest.skip("mounting a ramfs needs root (CAP_SYS_ADMIN)")
    mnt = data / "ram"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_same_size_rewrite_within_one_timestamp_tick_is_read_not_the_cached_version(
        start, ramfs: Path) -> None:  # noqa: F811
    """Twenty times: a version read (and kept), then rewritten in place at once, same size,
    which on ramfs keeps its stat key (one tick); the next read answers the bytes on disk."""
    w = start()
    path = ramfs / "status.json"
    stale = []
    for i in range(20):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, b'{"state": "building", "n": %04d}\n' % i, 0)
            w.client.request("watcher", "fs.read", {"path": str(path)})
            os.pwrite(fd, b'{"state": "finished", "n": %04d}\n' % i, 0)
        finally:
            os.close(fd)
        got = w.client.request("watcher", "fs.read", {"path": str(path)})
        if got.attachments[0] != path.read_bytes():
            stale.append((i, bytes(got.attachments[0])))
    assert stale == []


def test_a_racy_entry_is_answered_only_once_a_read_gives_its_bytes_again(tmp_path: Path
                                                                         ) -> None:
    """With the clock within a tick of the file's ctime the entry is racy: a hit reads the
    file again (counted neither as trusted nor missed when it agrees), and once the clock is
    past the tick the entry is trusted by its stat alone."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"alpha")
    ctime = os.stat(root / "a.txt").st_ctime_ns
    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    fs.now_ns = lambda: ctime + 1_000_000
    path = str(root / "a.txt")
    assert fs.read(path).unwrap().attachments == [b"alpha"]
    entry = fs.cache.peek(path)
    assert entry is not None and entry.racy
    reads = []
    reader = fs.reader
    fs.reader = lambda *a, **k: reads.append(a) or reader(*a, **k)
    assert fs.read_cached(path, 0, None) is not None and len(reads) == 1 and entry.racy
    fs.now_ns = lambda: ctime + 10**9
    assert fs.read_cached(path, 0, None) is not None and len(reads) == 2
    assert not entry.racy
    assert fs.read_cached(path, 0, None) is not None and len(reads) == 2


# --- leftover temporaries ------------------------------------------------------------------


def leftover(directory: Path, name: str, age_s: float) -> Path:
    """A temporary as a write killed before its rename leaves it, last written `age_s`
    ago."""
    p = directory / name
    p.write_bytes(b"x" * 4096)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - int(age_s * 1e9)))
    return p


def test_the_next_write_in_a_directory_removes_the_temporaries_killed_writes_left(
        start, data: Path) -> None:  # noqa: F811
    w = start()
    sub = data / "src"
    sub.mkdir()
    old = leftover(sub, ".big.bin.moorage-42606b83.tmp", 600)
    fresh = leftover(sub, ".other.moorage-92a956a7.tmp", 0)  # another watcher's, under way
    unmarked = leftover(sub, ".big.bin.swp", 600)
    w.call("fs.write", {"path": str(sub / "main.py"), "data": b"print()\n"})
    assert not old.exists()
    assert fresh.exists() and unmarked.exists()
    assert (sub / "main.py").read_bytes() == b"print()\n"


def test_leftovers_removed_are_counted_and_a_live_temporary_is_not_one(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    leftover(root, ".a.moorage-0123abcd.tmp", 600)
    leftover(root, ".b.moorage-0123abce.tmp", 600)
    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    fs._temps.add(str(root / ".b.moorage-0123abce.tmp"))  # a write of ours under way
    fs.write(str(root / "f"), b"x").unwrap()
    assert sorted(p.name for p in root.iterdir()) == [".b.moorage-0123abce.tmp", "f"]
    assert fs.stats()["temps_removed"] == 1


def test_another_watchers_write_leaves_the_temporary_of_a_save_still_syncing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Watcher A's save of a big file is in its temporary's fsync (a slow disk), which keeps
    that temporary's mtime still past a leftover's age (made so here), when watcher B,
    another tree on the same project, writes in that directory: B leaves the temporary,
    whose lock A holds, and A's save goes through."""
    root = tmp_path / "root"
    root.mkdir()
    target = root / "big.bin"
    target.write_bytes(b"old version")
    a = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    b = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    real_fsync = os.fsync
    b_answers: list[dict] = []

    def the_other_watcher_writes_during_the_sync(fd: int) -> None:
        real_fsync(fd)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".big.bin" + files.TMP_MARK) and not b_answers:
            st = os.fstat(fd)
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns - 600 * 10**9))
            b_answers.append(b.write(str(root / "other.txt"), b"b").unwrap())

    monkeypatch.setattr(files.os, "fsync", the_other_watcher_writes_during_the_sync)
    answer = a.write(str(target), b"the user's save").unwrap()
    monkeypatch.undo()
    assert len(b_answers) == 1 and answer["atomic"] is True
    assert target.read_bytes() == b"the user's save"
    assert b.stats()["temps_removed"] == 0
    assert sorted(p.name for p in root.iterdir()) == ["big.bin", "other.txt"]


LOCK_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_leftover_is_removed_once_the_process_that_held_its_lock_is_killed(
        tmp_path: Path) -> None:
    """A marked temporary past the leftover age whose lock a live process holds (a write
    under way in another tree) is left; once that process is killed the lock goes with it,
    and the next look for leftovers removes it."""
    root = tmp_path / "root"
    root.mkdir()
    tmp = leftover(root, ".big.bin.moorage-0123abcd.tmp", 600)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    now = [1000.0]
    fs.clock = lambda: now[0]
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        fs.write(str(root / "a.txt"), b"a").unwrap()
        assert tmp.exists() and fs.stats()["temps_removed"] == 0
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    now[0] += 30.0
    fs.write(str(root / "b.txt"), b"b").unwrap()
    assert not tmp.exists() and fs.stats()["temps_removed"] == 1


def test_a_write_looks_for_leftovers_again_once_the_last_look_there_is_30_s_old(
        tmp_path: Path) -> None:
    """A leftover made just after a directory was looked through, already past the leftover
    age, stays through a write there 29 s after that look and is removed by one at 30 s."""
    root = tmp_path / "root"
    root.mkdir()
    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    now = [1000.0]
    fs.clock = lambda: now[0]
    fs.write(str(root / "a.txt"), b"a").unwrap()  # the first write there: a look
    left = leftover(root, ".a.txt.moorage-0123abcd.tmp", 31)
    now[0] += 29.0
    fs.write(str(root / "b.txt"), b"b").unwrap()
    assert left.exists()
    now[0] += 1.0
    fs.write(str(root / "c.txt"), b"c").unwrap()
    assert not left.exists() and fs.stats()["temps_removed"] == 1


# --- names and pseudo files ----------------------------------------------------------------


def test_an_atomic_write_of_a_long_multibyte_name_gets_a_legal_temporary(
        start, data: Path) -> None:  # noqa: F811
    w = start()
    name = "漢" * 80  # 240 bytes: a legal name
    got = w.call("fs.write", {"path": str(data / name), "data": b"ok"})
    assert got["atomic"] is True
    assert (data / name).read_bytes() == b"ok"
    assert [p.name for p in data.iterdir()] == [name]


def test_a_pseudo_file_that_tells_no_size_is_read_on_an_io_worker(start) -> None:  # noqa: F811
    w = start(roots=[])
    before = w.call("fs.stats")["files"]["reads_offloaded"]
    got = w.client.request("watcher", "fs.read", {"path": "/proc/self/status"})
    assert got.body["size"] == 0 and b"Pid:" in got.attachments[0]
    assert w.call("fs.stats")["files"]["reads_offloaded"] == before + 1


def test_a_pseudo_file_read_past_its_start_is_read_on_an_io_worker(start) -> None:  # noqa: F811
    """At an offset the kernel makes all of a seq_file before it (/proc/kallsyms: tens of ms)
    even for a read that finds nothing there: so it is not done on the loop."""
    w = start(roots=[])
    before = w.call("fs.stats")["files"]["reads_offloaded"]
    got = w.client.request("watcher", "fs.read",
                           {"path": "/proc/self/status", "offset": 1 << 30, "length": 1})
    assert got.body["size"] == 0 and got.attachments[0] == b""
    assert w.call("fs.stats")["files"]["reads_offloaded"] == before + 1
