"""What a tree leaves in its runtime dir for its actors' successors (the terminal's session
records in `succession/`, each terminal's `<actor>.exec.<session>` records) lives no longer
than the tree: a tree whose root was SIGKILLed took its sessions with it, and the next `up`
on the same instance, after a `moorage down` or without one, starts none of them again
(PROTOCOL.md: "the next tree starts none of them"). A clean stop leaves none of them either,
even those of a terminal killed once. What is meant to outlast a tree stays."""

from __future__ import annotations

import fcntl
import os
import re
import signal
from pathlib import Path

import psutil
import pytest

from moorage.protocol import endpoints
from moorage.supervisor.launch import remove_dead_tree
from tests.conftest import Tree, assert_all_gone, wait_pid_exit
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TREE = terminal_tree()
RECORD = re.compile(r"[a-z0-9_-]+\.exec\..+")  # an exec record: <actor id>.exec.<session>


def exec_records(runtime_dir: Path) -> list[str]:
    """The exec records in `runtime_dir`: `<actor id>.exec.<session>`."""
    return sorted(n for n in os.listdir(runtime_dir) if RECORD.fullmatch(n))


def session_processes(shell: int) -> list[psutil.Process]:
    """The session's processes (those of the shell's session id), the shell first."""
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == shell:
                out.append(p)
        except OSError:
            continue
    return out


def a_session_whose_args_leave_a_trace(tree: Tree, tmp_path: Path) -> tuple[dict, Path]:
    """The session `build`, whose shell's args append a line to a file each time they run
    (as a session that starts a build would run it), with a command answered in it (so its
    exec record is on disk): its term.create answer, and that file."""
    trace = tmp_path / "started.log"
    s = tree.call("terminal", "term.create", {
        "session": "build", "shell": "bash", "env": env_for(make_home(tmp_path)),
        "args": ["-c", f"echo started >> {trace}; exec bash -i"]}, timeout=30)
    r = tree.call("terminal", "term.exec", {"session": "build", "command": "echo ready"},
                  timeout=30)
    assert r["output"].endswith("ready"), r
    assert trace.read_text() == "started\n"
    return s, trace


@pytest.mark.parametrize("down", [False, True], ids=["up", "down-then-up"])
def test_the_next_tree_after_a_killed_root_starts_none_of_its_sessions(make_tree, tmp_path,
                                                                         down):
    """The root SIGKILLed: its shells go with it, and what its terminal kept for a successor
    stays on disk. The next `up` (after a `moorage down`, whose clean-up removes what the
    dead tree left, or straight away) lists no session, runs no session's args again, and
    reports none lost; the dead tree's records are gone from the runtime dir."""
    tree = make_tree(TREE).start()
    rdir = tree.runtime_dir
    s, trace = a_session_whose_args_leave_a_trace(tree, tmp_path)
    # (what the dead tree leaves: the test means something only if they were there)
    assert (rdir / "succession" / "terminal.sessions").exists()
    assert exec_records(rdir) == ["terminal.exec.build"]
    procs = session_processes(s["pid"])
    os.kill(tree.pid, signal.SIGKILL)
    assert wait_pid_exit(tree.pid, 10)
    assert_all_gone(procs, timeout=15)
    assert (rdir / "succession").exists() and exec_records(rdir)
    if down:
        r = tree.cli("down")
        assert r.returncode == 0, r
        assert not (rdir / "succession").exists(), r.stderr
        assert exec_records(rdir) == [], r.stderr
        assert "succession" in r.stderr and "terminal.exec.build" in r.stderr, r.stderr
    again = make_tree(TREE).start()
    assert again.call("terminal", "term.list", timeout=30)["sessions"] == []
    info = wait_for(lambda: again.call("terminal", "sys.info"), "the terminal's info")
    assert info["sessions"] == 0 and not info.get("sessions_lost"), info
    assert not (rdir / "succession" / "terminal.sessions").exists()
    assert exec_records(rdir) == []
    assert trace.read_text() == "started\n"  # (its args ran once: in the tree that died)


def test_a_clean_stop_leaves_no_exec_record_of_a_terminal_killed_once(make_tree, tmp_path):
    """A terminal drops, as it stops, the exec records it wrote; those of a predecessor that
    was SIGKILLed name sessions the successor holds on, and stayed after the tree's stop.
    `moorage down` now leaves none, nor the session records."""
    tree = make_tree(TREE).start()
    rdir = tree.runtime_dir
    a_session_whose_args_leave_a_trace(tree, tmp_path)
    other = tree.call("terminal", "term.create", {
        "shell": "bash", "env": env_for(make_home(tmp_path))}, timeout=30)["session"]
    tree.call("terminal", "term.exec", {"session": other, "command": "true"}, timeout=30)
    assert exec_records(rdir) == sorted(["terminal.exec.build", f"terminal.exec.{other}"])
    victim = tree.child("terminal")["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: tree.call("terminal", "sys.info")["pid"] != victim, "the successor")
    assert len(tree.call("terminal", "term.list", timeout=30)["sessions"]) == 2
    assert exec_records(rdir)  # (the predecessor's, which no process holds open now)
    r = tree.cli("down")
    assert r.returncode == 0, r
    assert tree.proc is not None and tree.proc.wait(30) == 0
    assert exec_records(rdir) == []
    assert not (rdir / "succession").exists()


def test_down_s_clean_up_takes_the_records_a_dead_tree_left_and_keeps_what_outlives_it(
        runtime_dir):
    """`moorage down`'s clean-up of a dead tree (its lock free) removes the session records
    and every actor's exec records, and leaves what is meant to outlive a tree: the
    watcher's state (tied to its tree by the lock's identity, read by no other tree), the
    resource actor's quality override (kept until its own end, after a stop as well), and
    what is not a tree's at all."""
    (runtime_dir / endpoints.LOCK_FILE).write_text("12345")  # (a dead root's: no flock)
    (runtime_dir / "succession").mkdir()
    (runtime_dir / "succession" / "terminal.sessions").write_bytes(b"\x80")
    for name in ("terminal.exec.build", "term2.exec.s1"):
        (runtime_dir / name).write_bytes(b"\x01\x00\xc0")
    kept = ["watcher.state/watches.msgpack", "resource.quality", "notes.exec",
            "a.b.exec.c", "terminal.exec."]
    for name in kept:
        (runtime_dir / name).parent.mkdir(exist_ok=True)
        (runtime_dir / name).write_text("x")
    gone = remove_dead_tree(runtime_dir)
    assert sorted(gone) == sorted(["succession", "terminal.exec.build", "term2.exec.s1",
                                   endpoints.LOCK_FILE])
    assert not (runtime_dir / "succession").exists() and exec_records(runtime_dir) == []
    assert all((runtime_dir / name).read_text() == "x" for name in kept)


def test_a_live_tree_s_records_are_not_touched(runtime_dir):
    """While the instance lock is held (a live tree, or one starting), nothing goes."""
    (runtime_dir / "succession").mkdir()
    (runtime_dir / "succession" / "terminal.sessions").write_bytes(b"\x80")
    (runtime_dir / "terminal.exec.build").write_bytes(b"\x01\x00\xc0")
    fd = os.open(runtime_dir / endpoints.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_dead_tree(runtime_dir) == []
    finally:
        os.close(fd)
    assert (runtime_dir / "succession" / "terminal.sessions").exists()
    assert exec_records(runtime_dir) == ["terminal.exec.build"]
