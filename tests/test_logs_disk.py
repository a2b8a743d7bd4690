"""The log files on a disk that fails: read-only, full, out of inodes. A process whose log
file cannot be had starts all the same and logs to its console, which is told once; the file
is tried again at most once a second, and once it takes lines again it says how many it
missed. Real file systems: a tmpfs and a read-only bind mount made by the test (root only),
undone however the test ends."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.runtime import logs
from moorage.actors.runtime.logs import RotatingFile
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.commands import all_children_running
from tests.conftest import ROOT, kill_instance
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


class Mounts:
    """The mounts one test makes, each undone at its end, newest first."""

    def __init__(self) -> None:
        self.made: list[Path] = []

    def tmpfs(self, where: Path, options: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", str(where))
        self.made.append(where)
        return where

    def read_only(self, where: Path) -> None:
        """`where` seen read-only from now on: a bind mount of it on itself, made read-only.
        (What is open already stays writable: the new mount has no writers, the disk's own
        could not be remounted read-only under them.)"""
        self._mount("--bind", str(where), str(where))
        self.made.append(where)
        self._mount("-o", "remount,bind,ro", str(where))

    def undo(self, where: Path) -> None:
        """The newest mount on `where` undone (a read-only view: the disk is writable again)."""
        self.made.reverse()
        self.made.remove(where)
        self.made.reverse()
        subprocess.run(["umount", str(where)], check=True, capture_output=True)

    def undo_all(self) -> None:
        for where in reversed(self.made):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True)
        self.made.clear()

    def _mount(self, *args: str) -> None:
        out = subprocess.run(["mount", *args], capture_output=True, text=True)
        if out.returncode and not self.made:  # (the first: may this process mount at all?)
            pytest.skip(f"mounting is not permitted here: {out.stderr.strip()}")
        assert out.returncode == 0, out.stderr


@pytest.fixture
def mounts() -> Iterator[Mounts]:
    if os.geteuid() != 0:
        pytest.skip("making a tmpfs and a read-only bind mount needs root")
    m = Mounts()
    try:
        yield m
    finally:
        m.undo_all()


@pytest.fixture
def sinks(mounts: Mounts) -> Iterator[Callable[..., RotatingFile]]:
    """RotatingFile(**kw), each closed at the end (before the mounts it writes on go)."""
    made: list[RotatingFile] = []

    def make(**kw: Any) -> RotatingFile:
        made.append(RotatingFile(**kw))
        return made[-1]

    yield make
    for sink in made:
        sink.close()


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines_until(sink: RotatingFile, path: Path, fact: Callable[[str], bool]) -> str:
    """Log a line at a time into `sink` until the text of `path` shows `fact` (the file is
    tried again a second after it failed, on the real clock); that text."""
    def probe() -> str | None:
        sink.write("a line after the disk came back\n")
        text = path.read_text() if path.exists() else ""
        return text if fact(text) else None

    return wait_for(probe, f"{path} written again")


def test_a_log_file_that_cannot_be_opened_is_tried_again_at_most_once_a_second(
        mounts: Mounts, sinks: Callable[..., RotatingFile], tmp_path: Path):
    disk = mounts.tmpfs(tmp_path / "disk", "size=1m")
    mounts.read_only(disk)
    clock, said = Clock(), []
    sink = sinks(clock=clock, say=said.append)
    path = disk / "logs" / "alpha.log"
    sink.open(path)  # (no raise: the process goes on starting)
    for i in range(3):
        sink.write(f"line {i}\n")
    assert len(said) == 1, said
    assert f"log file {path} cannot be opened: Read-only file system; logging to the " \
        "console only" in said[0]
    mounts.undo(disk)
    clock.now += logs.RETRY_S / 2
    sink.write("line 3\n")
    assert not path.exists()  # (not tried again yet)
    clock.now += logs.RETRY_S / 2
    sink.write("line 4\n")
    text = path.read_text()
    note, line = text.splitlines()
    assert "WARNING alpha[" in note
    assert "4 log lines since" in note and "are missing here: the file cannot be opened: " \
        "Read-only file system" in note
    assert line == "line 4"
    assert len(said) == 2 and f"log file {path} is written again" in said[1]


def test_a_rotation_that_finds_no_inode_free_leaves_the_log_to_resume_once_one_is(
        mounts: Mounts, sinks: Callable[..., RotatingFile], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """(The rotation closed the file and left it closed: every line after it failed.)"""
    monkeypatch.setattr(logs, "MAX_BYTES", 2048)
    disk = mounts.tmpfs(tmp_path / "disk", "size=1m,nr_inodes=16")
    sink = sinks()
    path = disk / "actor.log"
    sink.open(path)
    fillers = []
    while True:  # every inode left used up
        filler = disk / f"f{len(fillers)}"
        try:
            filler.touch()
        except OSError:
            break
        fillers.append(filler)
    for i in range(40):  # past 2 KiB: renamed to actor.log.1, and no inode for a new one
        sink.write(f"line {i} " + "x" * 100 + "\n")
    assert not path.exists() and (disk / "actor.log.1").exists()
    for filler in fillers:
        filler.unlink()
    text = lines_until(sink, path, lambda text: "after the disk came back" in text)
    assert "are missing here: the file cannot be rotated: No space left on device" in text
    err = capsys.readouterr().err
    assert err.count(f"log file {path} cannot be rotated") == 1, err
    assert err.count(f"log file {path} is written again") == 1, err


def test_a_full_disk_costs_the_lines_it_did_not_take_counted_and_the_log_resumes(
        mounts: Mounts, sinks: Callable[..., RotatingFile], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]):
    disk = mounts.tmpfs(tmp_path / "disk", "size=256k")
    sink = sinks()
    path = disk / "actor.log"
    sink.open(path)
    sink.write("before\n")
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f, pytest.raises(OSError):
        while True:  # (unbuffered: what it raises is the disk's ENOSPC, here)
            f.write(b"\0" * 65536)
    for i in range(5):
        sink.write(f"line {i} " + "x" * 8192 + "\n")  # (more than a page: none fits)
    filler.unlink()
    text = lines_until(sink, path, lambda text: "after the disk came back" in text)
    assert text.startswith("before\n")
    # (on a line of its own, after the part of a line the full disk took)
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:.]+ WARNING actor\[\d+\] \d+ log lines since .* are "
                     "missing here: the file cannot be written: No space left on device$",
                     text, re.MULTILINE), text
    assert "line 4" not in text
    err = capsys.readouterr().err
    assert err.count(f"log file {path} cannot be written") == 1, err


TREE = """
[supervisor]
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "group"
type = "supervisor"
[[children.children]]
id = "inner"
start = "tests.fakes:FakeActor"
"""


def child_pids(status: dict) -> dict[str, int | None]:
    """Every child's pid in a sup.status answer, those of nested supervisors' too."""
    pids = {}
    for ch in status.get("children", []):
        pids[ch["id"]] = ch["pid"]
        pids.update(child_pids(ch.get("tree") or {}))
    return pids


def test_an_actor_and_a_supervisor_restarted_on_a_read_only_state_disk_start_and_log_again(
        mounts: Mounts, make_tree, tmp_path: Path):
    """(Each child's start opened its log file unguarded: on a read-only state dir every
    restart died of EROFS, and its supervisor gave up on it.)"""
    state = mounts.tmpfs(tmp_path / "statedisk", "size=16m") / "state"
    tree = make_tree(TREE).start(env={**os.environ, "MOORAGE_STATE_DIR": str(state)})
    log = state / "logs" / "alpha.log"
    assert log.exists()
    mounts.read_only(state)
    before = child_pids(tree.status())
    os.kill(before["alpha"], signal.SIGKILL)
    os.kill(before["group"], signal.SIGKILL)

    def all_back() -> bool:
        status = tree.status()
        pids = child_pids(status)
        return all_children_running(status) and all(
            pids.get(c) not in (None, before[c]) for c in before)

    wait_for(all_back, "alpha, group and inner running again")
    assert tree.child("alpha")["restarts"] == 1 and tree.child("group")["restarts"] == 1
    assert tree.call("alpha", "fake.work")["pid"] != before["alpha"]
    assert tree.call("inner", "fake.work")["pid"] != before["inner"]
    out = tree.output()
    for name in ("alpha", "group", "inner"):
        assert out.count(f"{name}.log cannot be opened: Read-only file system") == 1, out

    mounts.undo(state)

    def logged_again() -> str | None:
        with pytest.raises(MoorageError):  # (logged with its traceback: a line for the file)
            tree.call("alpha", "fake.work", {"fail": True})
        text = log.read_text()
        return text if "are missing here" in text else None

    text = wait_for(logged_again, "alpha's log file written again")
    assert "are missing here: the file cannot be opened: Read-only file system" in text
    assert "fake.work raised" in text.split("are missing here")[-1]
    wait_for(lambda: f"log file {log} is written again" in tree.output(),
             "alpha telling its console that its log file is written again")


def test_up_detach_on_a_read_only_state_dir_comes_up_with_its_console_in_the_runtime_dir(
        mounts: Mounts, runtime_dir: Path, tmp_path: Path):
    """(`up --detach` opened its console in the state dir only, and refused to start where a
    tree in the foreground runs: on a read-only state dir, its processes on the console.)"""
    state = mounts.tmpfs(tmp_path / "statedisk", "size=16m") / "state"
    state.mkdir()
    mounts.read_only(state)
    rdir = runtime_dir / "det"
    cfg = tmp_path / "det.toml"
    cfg.write_text(TREE)
    cli = [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(rdir)]
    out = subprocess.run([*cli, "up", "--detach", "--config", str(cfg),
                          "--allow-external-actors"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "MOORAGE_STATE_DIR": str(state)}, timeout=90)
    try:
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["moorage"] == "ready"
        console = rdir / "up.out"
        assert f"the tree's console is {console}: none could be opened in {state}" \
            in out.stderr
        wait_for(lambda: "alpha.log cannot be opened: Read-only file system"
                 in console.read_text(), "alpha telling the console its log file is missing")
    finally:
        subprocess.run([*cli, "down"], capture_output=True, timeout=60)
        kill_instance(rdir)
