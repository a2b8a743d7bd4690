"""What an atomic fs.write keeps of the file it replaces: owner and group (with a setuid
bit only where the owner is kept), extended attributes (file capabilities too, and none the
directory's default ACL would add) and mode; a file with other hard links is written in
place (the answer says `atomic: false`), so the links stay one file, and synced before the
answer; a new file gets the umask's mode, atomic or not. A real watcher, real files.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from moorage.actors.watcher import files
from moorage.actors.watcher.cache import FileCache
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.files import FileService
from tests.test_watcher import ENTRY, Watcher, start  # noqa: F401  (the fixture)
from tests.test_watcher_parts import POLICY, Later

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


def test_an_atomic_write_that_falls_back_to_writing_in_place_syncs_the_file_before_it_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hard-link fallback is not crash-atomic, but an atomic write promised that once
    answered its bytes survive a crash: the file is fsynced (each fsync's file recorded)."""
    root = tmp_path / "root"
    root.mkdir()
    f = root / "f.txt"
    f.write_bytes(b"a long old version\n")
    os.link(f, root / "link.txt")
    fs = FileService(Roots([str(root)]), FileCache(), POLICY, Later())
    real_fsync = os.fsync
    synced: list[int] = []

    def recorded(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(files.os, "fsync", recorded)
    got = fs.write(str(f), b"short\n").unwrap()
    monkeypatch.undo()
    assert got["atomic"] is False and f.read_bytes() == b"short\n"
    assert os.stat(f).st_ino in synced


CAP_NET_BIND_SERVICE = 10
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x1


@root_only
def test_an_atomic_write_keeps_the_files_capabilities(start, data: Path) -> None:  # noqa: F811
    """A write drops a file's security.capability (the kernel's killpriv): the temporary gets
    it after its data."""
    w = start()
    f = data / "server"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o755)
    caps = struct.pack("<IIIII", VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
                       1 << CAP_NET_BIND_SERVICE, 0, 0, 0)
    try:
        os.setxattr(f, "security.capability", caps)
    except OSError as exc:
        pytest.skip(f"no file capabilities here: {exc}")
    kept = os.getxattr(f, "security.capability")  # (as the kernel stores it)
    got = w.call("fs.write", {"path": str(f), "data": b"#!/bin/sh\nexec true\n"})
    assert got["atomic"] is True and f.read_bytes() == b"#!/bin/sh\nexec true\n"
    assert os.getxattr(f, "security.capability") == kept
    assert os.stat(f).st_mode & 0o7777 == 0o755


ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """A system.posix_acl_* value (version 2): (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_an_atomic_write_under_a_default_acl_keeps_the_permissions_the_file_had(
        start, data: Path) -> None:  # noqa: F811
    """A 0640 file with no ACL, in a directory whose default ACL (set after the file was
    made) gives another user rwx: its replacement would inherit an access ACL that lets
    that user read it; it is removed, so the file stays 0640 with no ACL."""
    w = start()
    shared = data / "shared"
    shared.mkdir()
    f = shared / "secret.txt"
    f.write_bytes(b"old\n")
    os.chmod(f, 0o640)
    default = posix_acl([(ACL_USER_OBJ, 7, ACL_UNDEFINED_ID), (ACL_USER, 7, 12345),
                         (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID), (ACL_MASK, 7, ACL_UNDEFINED_ID),
                         (ACL_OTHER, 0, ACL_UNDEFINED_ID)])
    try:
        os.setxattr(shared, "system.posix_acl_default", default)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EPERM, errno.EACCES):
            raise
        pytest.skip(f"no POSIX ACLs here: {exc}")
    got = w.call("fs.write", {"path": str(f), "data": b"new\n"})
    assert got["atomic"] is True and f.read_bytes() == b"new\n"
    assert "system.posix_acl_access" not in os.listxattr(f)
    assert os.stat(f).st_mode & 0o7777 == 0o640


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
