"""fs.write on a full disk: the file keeps its old contents, and the answer says so.

A write in place (`atomic: false`, or an atomic write of a file with other hard links, which
must keep its links) reserves the room for its bytes before it overwrites any, so a disk
without that room answers `no_space` with the file as it was (`detail.unchanged: true`); a
new file is not left behind half made. Each test mounts a real 1 MiB tmpfs as the watcher's
root (torn down even when the test fails), fills it with a real file, and writes through a
real watcher actor; the compiled write (actors/watcher/_cfile.c) and the Python one alike.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.actors.watcher import files
from moorage.protocol.errors import MoorageError

pytestmark = pytest.mark.timeout(120)

ENTRY = "moorage.actors.watcher.actor:WatcherActor"
OLD = b"OLD-CONTENT-" * 1000  # 12 KB: three pages of the tmpfs
NEW = b"NEW-CONTENT-" * 20000  # 240 KB: more than a full disk has
CORES = ["python", "compiled"] if files.FILE_CORE == "compiled" else ["python"]


@pytest.fixture
def disk() -> Iterator[Path]:
    """A fresh 1 MiB tmpfs, mounted for this test alone and unmounted after it (lazily if
    something still holds it); skipped where this process may not mount one."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to mount a small tmpfs with")
    where = Path(tempfile.mkdtemp(prefix="moorage-full-", dir="/tmp"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if made.returncode != 0:
        where.rmdir()
        pytest.skip(f"mounting a tmpfs is not permitted here (root or CAP_SYS_ADMIN in this "
                    f"mount namespace): {made.stderr.strip()}")
    try:
        yield Path(os.path.realpath(where))
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)
        where.rmdir()


def fill(disk: Path) -> Path:
    """Fill `disk` to its last page with a file; that file (removing it gives the room back)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler
    finally:
        os.close(fd)


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which write in place the watcher runs: set in this process before the actor is
    forked from it, so the actor has the same."""
    if request.param == "python":
        monkeypatch.setattr(files, "_write_plain", None)
    return str(request.param)


@pytest.fixture
def watcher(disk: Path, core: str, spawn_actor, client):
    """A watcher actor whose root, watched, is `disk`; a first write there (while it has
    room) has looked for leftover temporaries, so a write in place with no if_match that
    follows is the one compiled call where the core is compiled."""
    spawn_actor(ENTRY, "watcher", roots=[str(disk)], settle_ms=10)
    client.hello("watcher")
    client.call("watcher", "fs.watch", {"path": str(disk)})
    client.call("watcher", "fs.write", {"path": str(disk / "first.txt"), "data": b"x",
                                        "atomic": False})
    return client


def refused_for_room(client, path: Path, atomic: bool) -> MoorageError:
    with pytest.raises(MoorageError) as e:
        client.call("watcher", "fs.write", {"path": str(path), "data": NEW, "atomic": atomic})
    assert e.value.name == "no_space", e.value
    return e.value


@pytest.mark.parametrize(("links", "atomic"), [(2, True), (2, False), (1, False), (1, True)])
def test_a_write_refused_for_room_leaves_the_old_contents_and_says_so(
        disk: Path, watcher, links: int, atomic: bool) -> None:
    target = disk / "saved.txt"
    target.write_bytes(OLD)
    if links == 2:
        os.link(target, disk / "saved-link.txt")
    filler = fill(disk)

    err = refused_for_room(watcher, target, atomic)
    assert target.read_bytes() == OLD
    if links == 2:
        assert (disk / "saved-link.txt").read_bytes() == OLD
    assert sorted(os.listdir(disk)) == sorted(
        ["first.txt", "filler", "saved.txt"] + (["saved-link.txt"] if links == 2 else []))
    assert err.error.detail["unchanged"] is True, err
    assert "the file is as it was" in err.error.message

    filler.unlink()  # room again: the same write now goes through, links kept
    done = watcher.call("watcher", "fs.write", {"path": str(target), "data": NEW,
                                                "atomic": atomic})
    assert done["bytes"] == len(NEW) and done["atomic"] is (atomic and links == 1)
    assert target.read_bytes() == NEW
    if links == 2:
        assert (disk / "saved-link.txt").read_bytes() == NEW


@pytest.mark.parametrize("atomic", [False, True])
def test_a_new_file_refused_for_room_is_not_left_behind(
        disk: Path, watcher, atomic: bool) -> None:
    fill(disk)
    err = refused_for_room(watcher, disk / "new.txt", atomic)
    assert sorted(os.listdir(disk)) == ["filler", "first.txt"]
    assert err.error.detail["unchanged"] is True, err


@pytest.mark.skipif(files.FILE_CORE != "compiled",
                    reason="the compiled core was not built here (no compiler)")
def test_the_compiled_write_hands_a_want_of_room_back_with_the_file_as_it_was(
        disk: Path) -> None:
    """No room for the bytes (or for a new file): None, the Python path's to answer, and
    nothing of the file changed, none made; with room, the write as before."""
    (disk / "old.txt").write_bytes(OLD)
    filler = fill(disk)
    assert files._write_plain(str(disk), "old.txt", NEW) is None
    assert (disk / "old.txt").read_bytes() == OLD
    assert files._write_plain(str(disk), "new.txt", NEW) is None
    assert not (disk / "new.txt").exists()
    filler.unlink()
    st = files._write_plain(str(disk), "old.txt", NEW)
    assert st is not None and st.st_size == len(NEW)
    assert (disk / "old.txt").read_bytes() == NEW


def test_a_reservation_holds_the_room_and_leaves_the_size(disk):
    """The room for a write in place is reserved without growing the file: grown at once
    to its new size, it showed readers (a `tail -f`, another editor) zeros where the new
    bytes were still to come, and a watcher killed mid-write left a file of the new size,
    mostly zeros, none of the old bytes. The blocks are taken all the same (a full disk is
    still told before a byte changes)."""
    f = disk / "f.txt"
    f.write_bytes(OLD)
    before = shutil.disk_usage(disk).free
    fd = os.open(f, os.O_RDWR)
    try:
        files.reserve(fd, len(NEW))
        assert os.fstat(fd).st_size == len(OLD)
        assert f.read_bytes() == OLD
        assert before - shutil.disk_usage(disk).free >= len(NEW) - len(OLD) - 4096
    finally:
        os.close(fd)
