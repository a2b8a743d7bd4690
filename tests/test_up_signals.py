"""What a stop signal reaches, on real trees. A tree that follows an editor (`up --parent`) is
in a session of its own: a hang-up or a Ctrl-C to the editor's process group (the terminal
the editor was started from closed, or interrupted) leaves the tree and its sessions' shells
running, and only the editor's death orphans it. A stop signal ignored when `up` started
(`nohup moorage up &`) stays ignored for the root's whole life. And `down` stops a root that
cannot be reached (its socket removed from the runtime dir): SIGTERM, then SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage
from moorage.supervisor.cli.common import tree_pid
from tests.conftest import (
    ROOT,
    assert_all_gone,
    descendants,
    kill_instance,
    pid_running,
    wait_pid_exit,
)
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

GRACE_S = 3  # the orphaned tree's grace: what the test waits out once the editor is gone
TREE = terminal_tree() + f"\n[lifecycle]\ngrace_s = {GRACE_S}\n"
SMALL = '[[children]]\nid = "alpha"\nstart = "tests.fakes:FakeActor"\n'

# An editor window: in a process group of its own (the test starts it in a new session), it
# starts `moorage up --parent <its pid>` in that group, as an editor's plain spawn does (its
# stdout the ready line's), and takes SIGHUP and SIGINT by noting them in argv[1]: handled,
# not ignored, so `up` starts with them at their defaults (exec resets a handled signal),
# whatever the test runner ignores.
EDITOR = """
import os, signal, subprocess, sys
def note(signum, frame):
    with open(sys.argv[1], "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
for s in (signal.SIGHUP, signal.SIGINT):
    signal.signal(s, note)
subprocess.Popen([*sys.argv[2:], "--parent", str(os.getpid())], stdin=subprocess.DEVNULL)
while True:
    signal.pause()
"""

# `moorage up` with one stop signal ignored, as `nohup` (SIGHUP) or a non-interactive shell's
# `&` (SIGINT) starts it, the others at their defaults whatever the test runner ignores.
IGNORING = """
import os, signal, sys
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN if s.name == sys.argv[1] else signal.SIG_DFL)
os.execv(sys.argv[2], sys.argv[2:])
"""


def up_command(rdir: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(rdir), "up",
            "--config", str(config), "--allow-external-actors"]


def ready_line(proc: subprocess.Popen) -> dict[str, Any]:
    """The one line `up` says on the pipe, once its tree is ready."""
    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], 90)[0], "no ready line within 90 s"
    line = json.loads(proc.stdout.readline())
    assert line["moorage"] == "ready", line
    return line


def text_of(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def ignored(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` ignores `sig` (its SigIgn mask in /proc)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask >> (sig - 1) & 1)


def next_event(events: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    """The next supervisor event called `name` on the stream (retained ones first)."""
    while True:
        ev = events.next(timeout=timeout)
        assert ev is not None, f"no {name} event within {timeout} s"
        if isinstance(ev, StreamMessage) and ev.body["event"] == name:
            return ev.body


@pytest.fixture
def left() -> Iterator[list[Any]]:
    """What a test starts (processes, psutil processes, runtime dirs): killed after it,
    however it ended, and checked gone."""
    things: list[Any] = []
    yield things
    procs: list[psutil.Process] = []
    for t in things:
        if isinstance(t, Path):
            kill_instance(t)
        elif isinstance(t, subprocess.Popen):
            with contextlib.suppress(ProcessLookupError):
                t.kill()
            t.wait(30)
            if t.stdout is not None:
                t.stdout.close()
        elif isinstance(t, psutil.Process):
            procs.append(t)
            with contextlib.suppress(psutil.NoSuchProcess):
                t.kill()
    assert_all_gone(procs)


def test_the_editors_group_hang_up_and_ctrl_c_leave_the_tree_and_its_shells_running(
        runtime_dir, tmp_path, left):
    """SIGHUP and SIGINT to the group of an editor that spawned `up --parent` in it reached
    every process of the tree, each taking it as a stop: the tree stopped at once, no grace,
    the session's shell gone. The tree is in a session of its own: nothing of it hears them;
    the editor's death orphans it, and the grace's end stops it, as before."""
    rdir = runtime_dir / "grp"
    config = tmp_path / "tree.toml"
    config.write_text(TREE)
    notes = tmp_path / "editor-signals"
    notes.touch()
    left.append(rdir)
    with open(tmp_path / "up.err", "wb") as err:
        editor = subprocess.Popen(
            [sys.executable, "-c", EDITOR, str(notes), *up_command(rdir, config)],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, start_new_session=True)
    left.append(editor)
    root = ready_line(editor)["pid"]
    assert psutil.Process(root).ppid() == editor.pid
    with Client(rdir, timeout=30.0) as c:
        events = c.subscribe("supervisor", ["sup.event"], from_seq=1)
        s = c.call("terminal", "term.create",
                   {"shell": "bash", "env": env_for(make_home(tmp_path))})
        shell = psutil.Process(s["pid"])
        tree = [psutil.Process(root), *descendants(root)]
        left.extend([*tree, shell])
        for n, sig in enumerate((signal.SIGHUP, signal.SIGINT), 1):
            os.killpg(editor.pid, sig)  # the editor's group: its terminal closed, a Ctrl-C
            wait_for(lambda n=n: len(notes.read_text().split()) == n,
                     f"the editor's note of its {sig.name}")
            assert c.call("supervisor", "sys.ping") is not None
            life = c.call("supervisor", "sup.status")["lifecycle"]
            assert life["state"] == "attached" and life["parent"] == editor.pid, life
            out = c.call("terminal", "term.exec",
                         {"session": s["session"], "command": "echo still-$((6 * 7))"})
            assert "still-42" in out["output"], (sig.name, out)
            assert all(pid_running(p.pid) for p in [*tree, shell]), sig.name
        assert notes.read_text().split() == ["SIGHUP", "SIGINT"]
        # The editor dies: orphaned, and stopped when the grace is over.
        editor.kill()
        editor.wait(30)
        orphaned = next_event(events, "orphaned")
        assert orphaned["parent"] == editor.pid, orphaned
        next_event(events, "orphan_timeout", timeout=GRACE_S + 60)
        events.close()
    assert wait_pid_exit(root, 60), "the root did not stop after its grace"
    assert_all_gone([*tree, shell], timeout=30)
    assert tree_pid(rdir) is None
    assert not (rdir / endpoints.CONNECTION_FILE).exists()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_ignored_at_the_start_stays_ignored_for_the_roots_life(
        sig, runtime_dir, tmp_path, left):
    """`nohup moorage up &`, then a hang-up of its terminal (SIGHUP to its process group):
    the tree stopped, the SIG_IGN it started with put aside once the root served, and each
    actor, started from the defaults, stopped (and was restarted: a keeper's shells with
    it). It is kept in every process of the tree; the stop signals it started with handled
    still stop it in order."""
    rdir = runtime_dir / "ign"
    config = tmp_path / "tree.toml"
    config.write_text(SMALL)
    left.append(rdir)
    with tempfile.TemporaryFile() as err:
        up = subprocess.Popen(
            [sys.executable, "-c", IGNORING, sig.name, *up_command(rdir, config),
             "--parent", str(os.getpid())],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT,
            start_new_session=True)
        left.append(up)
        root = ready_line(up)["pid"]
        assert root == up.pid
        tree = [psutil.Process(root), *descendants(root)]
        left.extend(tree)
        with Client(rdir, timeout=30.0) as c:
            os.killpg(root, sig)  # (the root leads the group every process of the tree is in)
            assert ignored(root, sig), f"the root does not ignore {sig.name}"
            assert c.call("supervisor", "sys.ping") is not None
            assert c.call("alpha", "sys.ping") is not None
            status = c.call("supervisor", "sup.status")
            assert status["lifecycle"]["state"] == "attached"
            assert [ch["restarts"] for ch in status["children"]] == [0], status["children"]
            assert all(pid_running(p.pid) for p in tree)
        os.kill(root, signal.SIGTERM)
        assert up.wait(60) == 0, text_of(err)
    assert_all_gone(tree)
    assert tree_pid(rdir) is None


def test_down_stops_a_root_whose_socket_is_gone(make_tree, runtime_dir):
    """The root's `supervisor.rpc` removed (a tmp cleaner), the root alive and holding the
    lock: `down` said `unavailable`, exit 1, and the tree ran on. The root is stopped (SIGTERM,
    its ordered stop), every process of the tree gone, exit 0."""
    tree = make_tree(SMALL).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    (runtime_dir / "supervisor.rpc").unlink()
    out = tree.cli("down")
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "moorage tree stopped" in out.stdout, out.stdout
    assert tree.proc is not None and tree.proc.wait(30) == 0
    assert_all_gone(procs)
    assert tree_pid(runtime_dir) is None
    assert not (runtime_dir / endpoints.CONNECTION_FILE).exists()
