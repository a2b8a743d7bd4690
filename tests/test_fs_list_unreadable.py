"""A recursive fs.list goes on past a directory below its root that it cannot read.

A project with one `secret/` at mode 000, a build that removes its scratch directories while
the list walks, /proc with one exited process in it: each is one directory the walk cannot
read, and the listing of everything else must still answer, saying what it left out
(`unreadable`), instead of failing whole with an error that names the root (which can be
read). Only the root itself that cannot be read fails the call, and its error names it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.actors.watcher.listing import Listing
from moorage.protocol.errors import MoorageError

pytestmark = pytest.mark.timeout(120)

TREE = """
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[actor.watcher]
roots = [{roots}]
push_metrics = false
"""

# Root reads every directory whatever its mode (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): a
# tree started without those two capabilities is refused a mode-000 directory as any user is.
WITHOUT_DAC = ["setpriv", "--inh-caps=-all",
               "--bounding-set=-dac_override,-dac_read_search"]


def launcher_refused(directory: Path) -> list[str]:
    """What to start a tree with so that its processes may not read `directory` (mode 000):
    nothing for a user other than root, else setpriv dropping root's DAC capabilities. Each
    way is tried by a process that lists `directory`; the test is skipped when none is
    refused it."""
    ways = [[]] if os.geteuid() != 0 else []
    if shutil.which("setpriv"):
        ways.append(WITHOUT_DAC)
    for way in ways:
        probe = subprocess.run(
            [*way, sys.executable, "-c", "import os, sys; os.listdir(sys.argv[1])",
             str(directory)], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0 and "PermissionError" in probe.stderr:
            return way
    pytest.skip("running as root with no way to drop CAP_DAC_OVERRIDE and "
                "CAP_DAC_READ_SEARCH (setpriv missing or refused): a mode-000 directory "
                "stays readable to the tree")


@pytest.fixture
def project(data: Path) -> Iterator[Path]:
    """proj/{a.txt, sub/b.txt, secret/ (mode 000, holding hidden.txt)}; the mode given back
    at the end, so that the test's directory can be removed whatever the test did."""
    proj = data / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "secret").mkdir()
    (proj / "a.txt").write_text("a")
    (proj / "sub" / "b.txt").write_text("b")
    (proj / "secret" / "hidden.txt").write_text("h")
    os.chmod(proj / "secret", 0)
    try:
        yield proj
    finally:
        os.chmod(proj / "secret", 0o755)


def test_a_directory_it_may_not_read_is_left_out_and_named_and_the_rest_listed(
        make_tree, data, project):
    secret = project / "secret"
    tree = make_tree(TREE.format(roots=f'"{data}"'))
    tree.launcher = launcher_refused(secret)
    tree.start()

    got = tree.call("watcher", "fs.list", {"path": str(project), "recursive": True})
    assert {e["name"] for e in got["entries"]} == {"a.txt", "sub", "sub/b.txt", "secret"}
    assert got["unreadable"] == [{"name": "secret", "error": "EACCES"}]
    assert got["truncated"] is False and "unreadable_more" not in got

    # a glob filters the entries, not what the walk could not read (a match may be in it)
    got = tree.call("watcher", "fs.list", {"path": str(project), "recursive": True,
                                           "glob": "*.txt"})
    assert sorted(e["name"] for e in got["entries"]) == ["a.txt", "sub/b.txt"]
    assert got["unreadable"] == [{"name": "secret", "error": "EACCES"}]

    # a listing that could read everything says nothing of it
    got = tree.call("watcher", "fs.list", {"path": str(project / "sub"), "recursive": True})
    assert [e["name"] for e in got["entries"]] == ["b.txt"] and "unreadable" not in got

    # the root itself unreadable: the call fails, naming it (not a directory above it)
    for recursive in (False, True):
        with pytest.raises(MoorageError) as e:
            tree.call("watcher", "fs.list", {"path": str(secret), "recursive": recursive})
        assert e.value.name == "forbidden"
        assert e.value.error.detail["path"] == str(secret)
        assert str(secret) in e.value.error.message


def test_a_recursive_list_of_proc_goes_on_past_an_exited_process(make_tree):
    """An exited process not yet reaped keeps its /proc/PID, whose `net` fails EINVAL
    (it has no network namespace any more): one such directory among the thousands of
    /proc, which needs no privilege to list."""
    zombie = subprocess.Popen(["true"])
    try:
        # exited, and left unreaped (WNOWAIT) until the end of the test
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        z = str(zombie.pid)
        tree = make_tree(TREE.format(roots='"/proc"')).start()

        # The whole of /proc is walked; the glob keeps the reply to the exited process's.
        got = tree.call("watcher", "fs.list", {"path": "/proc", "recursive": True,
                                               "glob": f"{z}/*"}, timeout=60)
        names = {e["name"] for e in got["entries"]}
        assert {f"{z}/status", f"{z}/net", f"{z}/fd"} <= names
        assert {"name": f"{z}/net", "error": "EINVAL"} in got["unreadable"]
        assert got["truncated"] is False

        # that directory asked for itself: the call fails, naming it
        with pytest.raises(MoorageError) as e:
            tree.call("watcher", "fs.list", {"path": f"/proc/{z}/net"})
        assert e.value.name == "io_error"
        assert e.value.error.detail["path"] == f"/proc/{z}/net"
        assert e.value.error.detail["errno"] == "EINVAL"
    finally:
        zombie.wait(10)


# --- the walk itself: directories gone or replaced between their parent's readdir and theirs


def test_a_directory_gone_or_replaced_before_it_is_read_is_named_and_the_walk_goes_on(
        tmp_path):
    """A build removes its scratch directories while a list walks: one read in the parent
    may be gone (ENOENT), or a file by then (ENOTDIR), when its own turn comes. The walk
    is stopped after the parent's entries (its budget), the tree changed, and walked on."""
    root = tmp_path / "proj"
    for d in ("gone", "now_a_file", "stays"):
        (root / d).mkdir(parents=True)
        (root / d / "x").write_text("x")
    listing = Listing(str(root), True, None, max_entries=100, max_scanned=100)
    try:
        assert listing.step(3) is False  # the three directories read, none of them yet
        shutil.rmtree(root / "gone")
        shutil.rmtree(root / "now_a_file")
        (root / "now_a_file").write_text("f")
        assert listing.step(None) is True
    finally:
        listing.close()
    got = listing.answer()
    assert sorted(e["name"] for e in got["entries"]) == ["gone", "now_a_file", "stays",
                                                         "stays/x"]
    assert sorted(got["unreadable"], key=lambda u: u["name"]) == [
        {"name": "gone", "error": "ENOENT"}, {"name": "now_a_file", "error": "ENOTDIR"}]
    assert got["truncated"] is False


def test_what_the_walk_left_out_is_bounded_and_counted(tmp_path):
    root = tmp_path / "proj"
    for i in range(5):
        (root / f"d{i}").mkdir(parents=True)
    listing = Listing(str(root), True, None, max_entries=100, max_scanned=100,
                      max_unreadable=2)
    try:
        assert listing.step(5) is False
        for i in range(5):
            (root / f"d{i}").rmdir()
        assert listing.step(None) is True
    finally:
        listing.close()
    got = listing.answer()
    assert len(got["entries"]) == 5
    assert len(got["unreadable"]) == 2 and got["unreadable_more"] == 3
    assert all(u["error"] == "ENOENT" for u in got["unreadable"])

