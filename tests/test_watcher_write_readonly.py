"""fs.write's default (atomic) save of a read-only file (mode 0444) by a watcher that may not
override file permissions, as a user's may not: it replaced the file through a temporary
(the directory allows that) and answered success, where an in-place save is refused
`forbidden`; an editor never heard the EACCES it asks "overwrite a read-only file?" on. It is
refused `forbidden` now, the file as it was. A real tree, started without root's permission
overrides (tests/test_fs_list_unreadable.launcher_refused), real files."""

from __future__ import annotations

import os

import pytest

from moorage.protocol.errors import MoorageError
from tests.test_fs_list_unreadable import TREE, launcher_refused

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("atomic", [True, False])
def test_a_read_only_file_is_not_replaced_by_a_save(make_tree, data, atomic):
    probe = data / "probe"
    probe.mkdir(mode=0)
    tree = make_tree(TREE.format(roots=f"\"{data}\""))
    tree.launcher = launcher_refused(probe)
    probe.rmdir()
    tree.start()
    f = data / "locked.txt"
    f.write_bytes(b"old\n")
    f.chmod(0o444)
    with pytest.raises(MoorageError) as got:
        tree.client.call("watcher", "fs.write", {"path": str(f), "data": b"new\n",
                                                 "atomic": atomic})
    assert (got.value.error.name, got.value.error.detail["errno"]) == ("forbidden", "EACCES")
    assert f.read_bytes() == b"old\n" and f.stat().st_mode & 0o777 == 0o444
    assert sorted(os.listdir(data)) == ["locked.txt"]  # (no temporary left)
    f.chmod(0o644)  # a writable one is saved as ever
    assert tree.client.call("watcher", "fs.write", {"path": str(f), "data": b"new\n",
                                                    "atomic": atomic})["atomic"] is atomic
    assert f.read_bytes() == b"new\n"
