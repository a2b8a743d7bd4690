"""`moorage logs -f` follows the log by its name, as `tail -F` does: after a rotation (the
actor's RotatingFile renames NAME.log to NAME.log.1 and the process goes on in a new NAME.log)
it shows the new file's lines, after the old file's last ones, and no line twice; a file
truncated under it is read again from its start.

The rotation is made here as RotatingFile makes it (shift_rotated, then the rename), without
writing 10 MiB through the tree: the follower sees only the file system. The actor is then
restarted, so that a real process of the tree writes its last lines into the renamed file and
its successor makes the new NAME.log, as a process that rotated its log goes on in it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.actors.runtime.logs import shift_rotated
from tests.conftest import ROOT, Tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TREE = """
[supervisor]
heartbeat = { interval_ms = 1000, misses = 30 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
"""


class Follower:
    """`moorage logs alpha -f`, its stdout and stderr into files (read while it runs, never
    a blocking read of a pipe)."""

    def __init__(self, tree: Tree, tmp_path: Path) -> None:
        self.out = tmp_path / "follow.out"
        self.err = tmp_path / "follow.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                 str(tree.runtime_dir), "logs", "alpha", "-f"],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)

    def shown(self) -> bytes:
        return self.out.read_bytes()

    def end(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # (stopped by a test that failed)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def follow(tmp_path: Path) -> Iterator[list[Follower]]:
    made: list[Follower] = []
    yield made
    for f in made:
        f.end()


def rotate(log: Path) -> Path:
    """What RotatingFile._rotate does to the files: older copies shifted, NAME.log renamed to
    NAME.log.1 (the writer then opens a new NAME.log)."""
    shift_rotated(log)
    os.replace(log, log.with_name(f"{log.name}.1"))
    return log.with_name(f"{log.name}.1")


def restart_alpha(tree: Tree) -> int:
    """alpha restarted: the old process logs that it stopped (into the file it has open),
    the new one opens NAME.log and logs that it serves. The new pid."""
    old = tree.child("alpha")["pid"]
    tree.call("supervisor", "sup.restart", {"child": "alpha"})
    return tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha"
                           and e["pid"] != old)["pid"]


def serving(pid: int) -> bytes:
    return f"alpha serving (pid {pid},".encode()


def stop_tree(tree: Tree, follower: Follower) -> None:
    """The tree stops; the follower writes what was left and ends with 0."""
    tree.call("supervisor", "sup.stop")
    assert follower.proc.wait(60) == 0, follower.err.read_bytes()


def test_logs_f_goes_on_in_the_new_file_after_a_rotation(make_tree, tmp_path, follow):
    tree = make_tree(TREE).start()
    log = tree.state_dir / "logs" / "alpha.log"
    follower = Follower(tree, tmp_path)
    follow.append(follower)
    first = tree.child("alpha")["pid"]
    wait_for(lambda: serving(first) in follower.shown(), "alpha's first line followed")
    old = rotate(log)
    new_pid = restart_alpha(tree)
    wait_for(lambda: serving(new_pid) in follower.shown(),
             "the line the restarted alpha wrote into the new alpha.log")
    stop_tree(tree, follower)
    # Every line of both files, in order, once: the old one's last lines ("stopped", written
    # after the rename) before the new one's.
    assert b"alpha stopped" in old.read_bytes()
    assert follower.shown() == old.read_bytes() + log.read_bytes()
    assert follower.err.read_bytes() == b""


def test_logs_f_reads_a_file_rotated_past_between_two_looks(make_tree, tmp_path, follow):
    """Two rotations while the follower is held (SIGSTOP): the file it has open is now .2,
    and .1, written in between, is read whole before the new alpha.log."""
    tree = make_tree(TREE).start()
    log = tree.state_dir / "logs" / "alpha.log"
    follower = Follower(tree, tmp_path)
    follow.append(follower)
    first = tree.child("alpha")["pid"]
    wait_for(lambda: serving(first) in follower.shown(), "alpha's first line followed")
    os.kill(follower.proc.pid, signal.SIGSTOP)
    rotate(log)
    log.write_bytes(b"".join(b"a line of the file rotated past %d\n" % i for i in range(300)))
    rotate(log)
    new_pid = restart_alpha(tree)
    os.kill(follower.proc.pid, signal.SIGCONT)
    wait_for(lambda: serving(new_pid) in follower.shown(), "the restarted alpha's line")
    stop_tree(tree, follower)
    held, between = log.with_name("alpha.log.2"), log.with_name("alpha.log.1")
    assert follower.shown() == held.read_bytes() + between.read_bytes() + log.read_bytes()


def test_logs_f_reads_a_truncated_file_again_from_its_start(make_tree, tmp_path, follow):
    tree = make_tree(TREE).start()
    log = tree.state_dir / "logs" / "alpha.log"
    first = tree.child("alpha")["pid"]
    # (alpha may be told running before its first line is written: no line comes after this)
    wait_for(lambda: serving(first) in log.read_bytes(), "alpha's first line written")
    # More than a restart writes, so that the file is still shorter than what was read when
    # the follower next looks.
    with open(log, "ab") as f:
        f.write(b"".join(b"an older line %d\n" % i for i in range(4000)))
    before = log.read_bytes()
    follower = Follower(tree, tmp_path)
    follow.append(follower)
    wait_for(lambda: follower.shown() == before, "the whole log followed")
    os.truncate(log, 0)
    new_pid = restart_alpha(tree)
    wait_for(lambda: serving(new_pid) in follower.shown(), "the restarted alpha's line")
    stop_tree(tree, follower)
    assert follower.shown() == before + log.read_bytes()
    assert b"was truncated; following it from its start" in follower.err.read_bytes()
