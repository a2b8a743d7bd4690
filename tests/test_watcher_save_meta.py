"""What an atomic fs.write keeps of the file it replaces: owner and group (with a setuid
bit only where the owner is kept), extended attributes and mode; a file with other hard links
is written in place (the answer says `atomic: false`), so the links stay one file; a new file
gets the umask's mode, atomic or not. A real watcher, real files.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_watcher import ENTRY, Watcher, start  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(180)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


@root_only
def test_an_atomic_write_of_another_users_setuid_file_keeps_its_owner_and_mode(
        start, data: Path) -> None:  # noqa: F811
    w = start()
    f = data / "tool"
    f.write_bytes(b"old\n")
    os.chown(f, 1000, 1000)
    os.chmod(f, 0o4750)
    got = w.call("fs.write", {"path": str(f), "data": b"new\n"})
    st = os.stat(f)
    assert got["atomic"] is True and f.read_bytes() == b"new\n"
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o4750)


def test_an_atomic_write_keeps_the_extended_attributes(start, data: Path) -> None:  # noqa: F811
    w = start()
    f = data / "f.txt"
    f.write_bytes(b"old\n")
    try:
        os.setxattr(f, "user.note", b"keep me")
    except OSError as exc:
        pytest.skip(f"no user xattrs here: {exc}")
    got = w.call("fs.write", {"path": str(f), "data": b"new\n"})
    assert got["atomic"] is True and f.read_bytes() == b"new\n"
    assert os.getxattr(f, "user.note") == b"keep me"


def test_a_file_with_other_hard_links_is_written_in_place(start, data: Path) -> None:  # noqa: F811
    w = start()
    f, link = data / "f.txt", data / "link.txt"
    f.write_bytes(b"old\n")
    os.link(f, link)
    got = w.call("fs.write", {"path": str(f), "data": b"new\n"})
    assert got["atomic"] is False
    assert link.read_bytes() == b"new\n" and os.stat(f).st_ino == os.stat(link).st_ino
    assert got["stat"]["ino"] == os.stat(f).st_ino


@pytest.mark.parametrize("atomic", [True, False])
def test_a_new_file_gets_the_mode_the_watchers_umask_gives(
        spawn_actor, client, data: Path, atomic: bool) -> None:
    old = os.umask(0o027)  # (the watcher's process inherits it)
    try:
        proc = spawn_actor(ENTRY, "watcher", roots=[str(data)], settle_ms=10)
    finally:
        os.umask(old)
    client.hello("watcher")
    w = Watcher(proc, client, data)
    w.call("fs.write", {"path": str(data / "new.txt"), "data": b"x", "atomic": atomic})
    assert os.stat(data / "new.txt").st_mode & 0o777 == 0o640
