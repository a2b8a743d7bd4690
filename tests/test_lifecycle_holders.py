"""One tree held by several editor windows, on real trees started as an editor starts them
(`moorage up --parent W1`, its stdout read for the ready line): each window that adopts holds
the tree beside the others, whichever closes first the tree stays attached to the rest with
its sessions running, and only the last one's exit orphans it (then it stops when its grace
is over). A pid that adopts again is still one holder, the holders are bounded, the first
editor's stdin closing lets only that editor go, and an adopt with no parent lets them all
go."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import adopt
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.lifecycle import MAX_HOLDERS
from tests.conftest import ROOT, assert_all_gone, descendants, pid_running, wait_pid_exit
from tests.terminal_support import env_for, make_home
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

LINE_WAIT_S = 60
# Two fake actors: a tree that starts in a moment, for the tests that need no terminal.
FAKES = """
[lifecycle]
grace_s = {grace}
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "beta"
start = "tests.fakes:FakeActor"
"""


class Window:
    """A stand-in editor window: a process of this user that does nothing until killed (its
    death is what the tree follows)."""

    def __init__(self) -> None:
        # (`cat` until its stdin ends: light enough to start 65 of, and gone with this
        # process however it ends)
        self.proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Up:
    """`moorage up --parent W ...` in the foreground, its stdout a pipe (as an editor reads
    it); close() kills whatever of it still runs and checks that nothing is left."""

    def __init__(self, rdir: Path, config: str, *extra: str, stdin: Any = subprocess.DEVNULL
                 ) -> None:
        self.rdir = rdir
        cfg = rdir.parent / f"{rdir.name}.toml"
        cfg.write_text(config)
        self.err = open(rdir.parent / f"{rdir.name}.err", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(rdir), "up",
             "--allow-external-actors", "--config", str(cfg), *extra],
            stdout=subprocess.PIPE, stderr=self.err, stdin=stdin, cwd=ROOT,
            start_new_session=True)
        self.procs: list[psutil.Process] = [psutil.Process(self.proc.pid)]

    def ready(self) -> None:
        assert self.proc.stdout is not None
        assert select.select([self.proc.stdout], [], [], LINE_WAIT_S)[0], \
            f"no ready line within {LINE_WAIT_S} s"
        line = json.loads(self.proc.stdout.readline())
        assert line["moorage"] == "ready", line
        self.procs += descendants(self.proc.pid)

    def log(self) -> str:
        return (endpoints.state_dir(self.rdir) / "logs" / "supervisor.log").read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.err.close()
        assert_all_gone(self.procs)


@pytest.fixture
def started(runtime_dir: Path) -> Iterator[list[Up | Window]]:
    """What a test starts (trees, windows): each is killed at the end, however it ends."""
    things: list[Up | Window] = []
    yield things
    for t in things:
        if isinstance(t, Window):
            t.kill()
    for t in things:
        if isinstance(t, Up):
            t.close()


def window(started: list[Up | Window]) -> Window:
    w = Window()
    started.append(w)
    return w


def up(started: list[Up | Window], rdir: Path, config: str, parent: Window, *extra: str,
       **kw: Any) -> Up:
    u = Up(rdir, config, "--parent", str(parent.pid), *extra, **kw)
    started.append(u)
    u.ready()
    return u


def lifecycle(c: Client) -> dict[str, Any]:
    return c.call("supervisor", "sup.status")["lifecycle"]


def lifecycle_when(c: Client, fact: Callable[[dict[str, Any]], bool], what: str
                   ) -> dict[str, Any]:
    """The tree's `lifecycle` once `fact` holds of it (asked again until then)."""
    def probe() -> dict[str, Any] | None:
        life = lifecycle(c)
        return life if fact(life) else None
    return wait_for(probe, what)


def holders(life: dict[str, Any]) -> list[int]:
    """Every pid holding the tree, as `lifecycle` says it (`holders` only when more than one
    does; one: `parent`)."""
    if "holders" in life:
        return life["holders"]
    return [life["parent"]] if life["state"] == "attached" else []


def orphaned_events(c: Client, until: str) -> list[dict[str, Any]]:
    """The root's `orphaned` events from the first retained event up to the first `until`."""
    sub = c.subscribe("supervisor", ["sup.event"], from_seq=1)
    seen: list[dict[str, Any]] = []
    try:
        while True:
            ev = sub.next(timeout=30)
            assert isinstance(ev, StreamMessage), f"no {until} event; saw {seen}"
            if ev.body.get("event") == "orphaned":
                seen.append(ev.body)
            if ev.body.get("event") == until:
                return seen
    finally:
        sub.close()


# --- two windows ------------------------------------------------------------------------------


def test_the_first_window_closing_leaves_the_tree_attached_to_the_second_with_its_shell(
        started, runtime_dir, tmp_path):
    """up --parent W1, a session; W2 adopts; W1 killed: the tree stays attached to W2 and the
    session's shell runs on; W2 killed: orphaned, and the tree stops when its grace is over."""
    w1, w2 = window(started), window(started)
    u = up(started, runtime_dir / "two", "[lifecycle]\ngrace_s = 2\n", w1)
    home = make_home(tmp_path)
    with Client(u.rdir, timeout=30) as c:
        s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)})
        sid, shell = s["session"], s["pid"]
        u.procs.append(psutil.Process(shell))
        life = adopt(c, w2.pid)["lifecycle"]
        assert life == {"state": "attached", "parent": w2.pid, "grace_s": 2.0,
                        "holders": [w1.pid, w2.pid]}
        w1.kill()
        life = lifecycle_when(c, lambda lf: holders(lf) != [w1.pid, w2.pid],
                              "W1's exit seen by the tree")
        assert life == {"state": "attached", "parent": w2.pid, "grace_s": 2.0}
        r = c.call("terminal", "term.exec", {"session": sid, "command": "echo still-''here"})
        assert r["exit_code"] == 0 and "still-here" in r["output"]
        assert pid_running(shell)
        w2.kill()
        (orphaned,) = orphaned_events(c, "orphaned")
        assert orphaned["parent"] == w2.pid and orphaned["reason"] == f"parent {w2.pid} exited"
    assert wait_pid_exit(u.proc.pid, 60) and u.proc.wait(10) == 0
    assert "orphan_timeout" in u.log()
    assert_all_gone(u.procs)


def test_the_adopter_closing_first_leaves_the_tree_attached_to_the_window_that_started_it(
        started, runtime_dir):
    """The other order: W2 adopts and is killed while W1, which started the tree, lives; the
    tree follows W1 on, never orphaned, until W1 is gone too."""
    w1, w2 = window(started), window(started)
    u = up(started, runtime_dir / "back", FAKES.format(grace=1), w1)
    with Client(u.rdir, timeout=30) as c:
        assert adopt(c, w2.pid)["lifecycle"]["parent"] == w2.pid
        w2.kill()
        life = lifecycle_when(c, lambda lf: lf["parent"] != w2.pid or lf["state"] != "attached",
                              "W2's exit seen by the tree")
        assert life == {"state": "attached", "parent": w1.pid, "grace_s": 1.0}
        assert c.call("alpha", "fake.work")["done"] == 1
        w1.kill()
        assert [e["parent"] for e in orphaned_events(c, "orphaned")] == [w1.pid]
    assert wait_pid_exit(u.proc.pid, 60) and u.proc.wait(10) == 0
    assert "orphan_timeout" in u.log()


# --- who holds it -----------------------------------------------------------------------------


def test_a_pid_that_adopts_again_is_one_holder_and_takes_the_tree_last(started, runtime_dir):
    """sys.hello is idempotent, and resent: an adopt by a holder adds nobody; it makes that
    holder the `parent` (the one that took the tree last)."""
    w1, w2 = window(started), window(started)
    u = up(started, runtime_dir / "twice", FAKES.format(grace=60), w1)
    with Client(u.rdir, timeout=30) as c:
        for _ in range(2):
            life = adopt(c, w2.pid)["lifecycle"]
            assert life["parent"] == w2.pid and life["holders"] == [w1.pid, w2.pid]
        for _ in range(2):
            life = adopt(c, w1.pid)["lifecycle"]
            assert life["parent"] == w1.pid and life["holders"] == [w2.pid, w1.pid]
        assert lifecycle(c) == {"state": "attached", "parent": w1.pid, "grace_s": 60.0,
                                "holders": [w2.pid, w1.pid]}
        out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                              str(u.rdir), "adopt", "--parent", str(w2.pid), "--json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["holders"] == [w1.pid, w2.pid]
    # Said to a person too: every holder, not only the last.
    for cmd, said in ((["adopt", "--parent", str(w1.pid)], "adopted: the tree is attached, "),
                      (["status"], "")):
        out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                              str(u.rdir), *cmd], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"{said}following pids {w2.pid}, {w1.pid} (it runs while one of them does; " \
               f"{w1.pid} took it last)" in out.stdout, out.stdout


def test_holders_are_bounded_and_a_slot_frees_when_one_exits(started, runtime_dir):
    """At most MAX_HOLDERS pids hold the tree (a pidfd each): one more is refused `busy`
    and changes nothing; a holder may still adopt again; one exiting makes room."""
    w1 = window(started)
    u = up(started, runtime_dir / "many", FAKES.format(grace=60), w1)
    more = [window(started) for _ in range(MAX_HOLDERS - 1)]
    extra = window(started)
    with Client(u.rdir, timeout=30) as c:
        for w in more:
            adopt(c, w.pid)
        full = [w1.pid, *(w.pid for w in more)]
        assert holders(lifecycle(c)) == full
        with pytest.raises(MoorageError) as e:
            adopt(c, extra.pid)
        assert e.value.name == "busy", e.value
        assert holders(lifecycle(c)) == full
        assert holders(adopt(c, w1.pid)["lifecycle"]) == [*full[1:], w1.pid]
        more[0].kill()
        lifecycle_when(c, lambda lf: more[0].pid not in holders(lf), "a holder's exit seen")
        assert holders(adopt(c, extra.pid)["lifecycle"]) == [*full[2:], w1.pid, extra.pid]


def test_the_first_editors_stdin_closing_lets_only_that_editor_go(started, runtime_dir):
    """up --parent W1 --exit-on-stdin-eof, W2 adopts: the end of file on stdin means W1 is
    gone (its pid may live on), so W2 alone holds the tree, which is not orphaned."""
    w1, w2 = window(started), window(started)
    u = up(started, runtime_dir / "eof", FAKES.format(grace=60), w1, "--exit-on-stdin-eof",
           stdin=subprocess.PIPE)
    with Client(u.rdir, timeout=30) as c:
        assert holders(adopt(c, w2.pid)["lifecycle"]) == [w1.pid, w2.pid]
        assert u.proc.stdin is not None
        u.proc.stdin.close()
        life = lifecycle_when(c, lambda lf: "holders" not in lf,
                              "the end of file seen by the tree")
        assert life == {"state": "attached", "parent": w2.pid, "grace_s": 60.0}
        assert pid_running(w1.pid)
        w2.kill()
        assert [e["reason"] for e in orphaned_events(c, "orphaned")] == [
            f"parent {w2.pid} exited"]


def test_an_adopt_with_no_parent_lets_every_holder_go(started, runtime_dir):
    """`moorage adopt` with no --parent: the tree follows nobody and runs until it is
    stopped, whoever held it before exits."""
    w1, w2, w3 = window(started), window(started), window(started)
    u = up(started, runtime_dir / "free", FAKES.format(grace=60), w1)
    with Client(u.rdir, timeout=30) as c:
        assert holders(adopt(c, w2.pid)["lifecycle"]) == [w1.pid, w2.pid]
        out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                              str(u.rdir), "adopt", "--json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"state": "standalone", "parent": None,
                                          "grace_s": 60.0}
        w1.kill()
        w2.kill()
        # W3 holds it, then exits: its orphaning is the only one (the tree no longer
        # followed W1 and W2: their deaths orphaned nothing)
        assert adopt(c, w3.pid)["lifecycle"]["parent"] == w3.pid
        w3.kill()
        assert [e["parent"] for e in orphaned_events(c, "orphaned")] == [w3.pid]
