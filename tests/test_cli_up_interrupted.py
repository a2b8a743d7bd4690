"""`moorage up` as an editor drives it when things go wrong: the editor gives up on it while it
starts (SIGINT, SIGTERM, SIGHUP) and is told so on the line it reads, with nothing left that
`up` started; `--instance ''` (an editor's setting left unset) is refused, never taken for the
user's default tree; and a `--parent` that names a thread, which no pidfd can follow, is
refused before anything starts, as a parent that is gone is."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import tree_pid
from tests.conftest import (
    ROOT,
    WITH_STOP_SIGNALS,
    assert_all_gone,
    descendants,
    kill_instance,
    running,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

STOP_SIGNALS = [pytest.param(s, id=s.name)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]

# alpha's start waits at a FIFO no one opens: the tree never gets ready by itself.
GATED = """
[supervisor]
start_timeout_ms = 120000
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
config = {{ start_gate = "{gate}" }}
"""

# A package whose import holds `up` in its start: `--allow-external-actors` has `up` find the
# module `start =` names, which imports this package first, before the root serves.
HELD_AT_IMPORT = """
import os
open({reached!r}, "w").close()
os.close(os.open({gate!r}, os.O_RDONLY))  # (until a writer comes: none does)
"""


def moorage(rdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(rdir), *args]


def of_instance(rdir: Path) -> list[psutil.Process]:
    """Every live process of the instance in `rdir`: its command line names the dir (`up`,
    the root) or its title names the instance (`moorage[NAME]: ...`: zygotes, actors)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        words = " ".join(p.info["cmdline"] or [])
        if (str(rdir) in words or f"moorage[{rdir.name}]" in words) and running(p):
            found.append(p)
    return found


@pytest.fixture
def instance(runtime_dir: Path) -> Iterator[Path]:
    """A runtime dir whose name no other test's tree has (the titles carry it), and
    whatever holds it killed after the test, with what it started."""
    rdir = runtime_dir / runtime_dir.name
    yield rdir
    kill_instance(rdir)
    for p in of_instance(rdir):
        p.kill()


# The command run with SIGINT and SIGHUP at their defaults, as an editor starts it: `up` leaves
# an ignored stop signal ignored (a job started under nohup), and a test runner's worker may
# run with them ignored (pytest-xdist's do), which every child inherits through exec.
class Up:
    """`moorage up ...` as an editor starts it: stdout a pipe it reads the line from, in a
    session of its own (so a signal reaches it alone, and the clean-up takes all it made);
    stderr a file (a pipe no one reads would fill and hold a running tree's logging)."""

    def __init__(self, rdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen([*WITH_STOP_SIGNALS,
                                      *moorage(rdir, "up", "--allow-external-actors", *args)],
                                     stdout=subprocess.PIPE, stderr=self.err,
                                     stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                                     start_new_session=True)

    def line(self) -> dict[str, Any]:
        """The one line on stdout, read to its end (the line's channel is closed after it,
        and `up --detach` exits)."""
        assert self.proc.stdout is not None
        assert select.select([self.proc.stdout], [], [], 90)[0], "no line within 90 s"
        lines = self.proc.stdout.read().decode().splitlines()
        assert len(lines) == 1, f"not one line on stdout: {lines}; {self.stderr()}"
        return json.loads(lines[0])

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()


@pytest.fixture
def started() -> Iterator[list[Up]]:
    """The `moorage up` processes a test starts: killed (their whole session) and reaped
    after it, whatever it asserted."""
    ups: list[Up] = []
    yield ups
    for u in ups:
        u.close()


def start_up(started: list[Up], rdir: Path, *args: str,
             env: dict[str, str] | None = None) -> Up:
    u = Up(rdir, *args, env=env)
    started.append(u)
    return u


def titles(pid: int) -> list[str]:
    """The first word of each descendant's command line (a tree's process titles)."""
    found = []
    for p in descendants(pid):
        try:
            found.extend(p.cmdline()[:1])
        except psutil.Error:
            continue
    return found


# --- interrupted while it starts ----------------------------------------------------------


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_up_detach_interrupted_while_it_waits_stops_its_tree_and_says_failed(
        sig, instance, started, tmp_path):
    """The detached tree is in a session of its own: `up --detach` that dies of the signal
    leaves it running for good (and the next `up` finds it already running). Interrupted,
    it stops the tree and says why on its line, with the foreground's exit code."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    cfg = tmp_path / "gated.toml"
    cfg.write_text(GATED.format(gate=gate))
    # (--timeout: its wait for the line outlasts a loaded machine's slowest start)
    u = start_up(started, instance, "--detach", "--config", str(cfg), "--timeout", "600")
    wait_for(lambda: f"moorage[{instance.name}]: alpha" in titles(u.proc.pid),
             "the detached tree's alpha, held at its gate", timeout=90)
    tree = descendants(u.proc.pid)
    u.proc.send_signal(sig)
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed", line
    assert f"asked to stop ({sig.name}) before the tree was ready" in \
        line["error"]["message"], line
    assert u.proc.wait(60) == 1, u.stderr()
    assert_all_gone(tree)
    assert tree_pid(instance) is None  # the next `up` finds the instance free
    wait_for(lambda: not of_instance(instance), "no process of the instance left")


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_up_interrupted_before_its_root_serves_says_failed_on_its_line(
        sig, instance, started, tmp_path):
    """Before the root serves, SIGINT was a KeyboardInterrupt that ended `up` with 130 and
    SIGTERM or SIGHUP ended it at once: no line either way, where an editor waits for one.
    It is the failed line the root's own handlers give later in the start."""
    ext = tmp_path / "ext"
    (ext / "heldpkg").mkdir(parents=True)
    reached, gate = tmp_path / "reached", tmp_path / "gate"
    os.mkfifo(gate)
    (ext / "heldpkg" / "__init__.py").write_text(
        HELD_AT_IMPORT.format(reached=str(reached), gate=str(gate)))
    (ext / "heldpkg" / "actor.py").write_text("from tests.fakes import FakeActor  # noqa\n")
    cfg = tmp_path / "held.toml"
    cfg.write_text('[[children]]\nid = "alpha"\nstart = "heldpkg.actor:FakeActor"\n')
    env = {**os.environ, "PYTHONPATH": f"{ext}{os.pathsep}{os.environ['PYTHONPATH']}"}
    u = start_up(started, instance, "--config", str(cfg), env=env)
    wait_for(reached.exists, "`up` held in its start, importing the actor's package",
             timeout=90)
    u.proc.send_signal(sig)
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed", line
    assert line["error"]["message"] == \
        f"the tree was asked to stop ({sig.name}) before it was ready", line
    assert u.proc.wait(60) == 1, u.stderr()
    assert "Traceback" not in u.stderr(), u.stderr()
    assert tree_pid(instance) is None
    wait_for(lambda: not of_instance(instance), "no process of the instance left")


# --- an empty instance is no instance -----------------------------------------------------


def test_an_empty_instance_or_instance_dir_is_refused_not_taken_for_the_default(
        runtime_dir, started, tmp_path, monkeypatch):
    """`--instance "$name"` with the editor's setting unset: refused with exit 2 (the failed
    line for `up`), where it drove the user's default tree, and `down` stopped it, even with
    $MOORAGE_RUNTIME_DIR naming another instance."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    default = runtime_dir / "moorage" / "default"
    cfg = tmp_path / "tree.toml"
    cfg.write_text('[[children]]\nid = "alpha"\nstart = "tests.fakes:FakeActor"\n')
    u = start_up(started, default, "--config", str(cfg))
    try:
        assert u.line()["moorage"] == "ready"
        root = tree_pid(default)
        assert root == u.proc.pid
        other = runtime_dir / "other"
        for env, args in (({}, ["--instance", "", "down"]),
                          ({}, ["--instance", "", "status"]),
                          ({"MOORAGE_RUNTIME_DIR": str(other)}, ["--instance", "", "status"]),
                          ({}, ["--instance-dir", "", "down"]),
                          ({}, ["--instance-dir", "", "status"])):
            out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", *args],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60,
                                 env={**os.environ, **env})
            assert out.returncode == 2 and out.stdout == "", (args, out.stdout, out.stderr)
            assert "Traceback" not in out.stderr, out.stderr
            assert tree_pid(default) == root, f"{args} reached the default tree"
        for args in (["--instance", "", "up", "--detach"], ["--instance-dir", "", "up"]):
            out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", *args,
                                  "--config", str(cfg), "--allow-external-actors"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60)
            lines = out.stdout.splitlines()
            assert len(lines) == 1, (args, lines)
            line = json.loads(lines[0])
            assert line["moorage"] == "failed" and out.returncode == 2, (args, line)
            assert "empty" in line["error"]["message"], line
        with pytest.raises(MoorageError) as e:
            Client(instance="", timeout=5)
        assert e.value.name == "bad_args", e.value
        assert tree_pid(default) == root and u.proc.poll() is None
    finally:
        subprocess.run(moorage(default, "down"), capture_output=True, timeout=60)
        kill_instance(default)


# --- a parent that cannot be followed -----------------------------------------------------


@pytest.fixture
def thread_id() -> Iterator[int]:
    """The id of a thread of this process, parked for the test: /proc shows it as it shows
    a process of this user, but it is none."""
    parked = threading.Event()
    tids: list[int] = []
    thread = threading.Thread(target=lambda: (tids.append(threading.get_native_id()),
                                              parked.wait()))
    thread.start()
    try:
        yield wait_for(lambda: tids, "the thread's id")[0]
    finally:
        parked.set()
        thread.join()


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detach"])
def test_up_with_a_thread_for_its_parent_is_refused_before_anything_starts(
        detach, thread_id, instance, started, tmp_path):
    """It said ready, then found it could not follow its parent and stopped itself 60 s
    later as orphaned. It is refused as a parent that is gone is: the failed line, exit 2."""
    assert os.path.exists(f"/proc/{thread_id}") and thread_id != os.getpid()
    cfg = tmp_path / "tree.toml"
    cfg.write_text('[[children]]\nid = "alpha"\nstart = "tests.fakes:FakeActor"\n')
    u = start_up(started, instance, *(["--detach"] if detach else []), "--config", str(cfg),
                 "--parent", str(thread_id))
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed", line
    assert line["error"]["message"] == f"--parent {thread_id}: no such process of this user"
    assert u.proc.wait(60) == 2, u.stderr()
    assert tree_pid(instance) is None and not of_instance(instance)
    out = subprocess.run(moorage(instance, "adopt", "--parent", str(thread_id)),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "no such process of this user" in out.stderr, out.stderr
