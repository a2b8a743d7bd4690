"""A tree paused whole (Ctrl-Z on `moorage up`, `kill -STOP -PGID`, a cgroup freezer) and then
continued does not take the pause for its children's failures: a stop asked of its root alone
continues the tree and ends it cleanly, a start caught by the pause is not killed for its
start timeout, and a consumer acking all along is not dropped for its silence.

Each pause is real (SIGSTOP of the tree's process group, SIGCONT), and its length is a sleep:
the pause is what is under test, not a way to wait for something."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from moorage.protocol.client import Client
from tests.conftest import Tree, assert_all_gone, descendants, pid_running, wait_pid_exit
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import gate_opened, wait_for

pytestmark = pytest.mark.timeout(180)


def stopped(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def in_group(p: psutil.Process, tree: Tree) -> bool:
    try:
        return os.getpgid(p.pid) == tree.pid
    except ProcessLookupError:
        return False


@contextmanager
def paused(tree: Tree) -> Iterator[list[psutil.Process]]:
    """The tree's whole process group stopped (every process of it seen stopped) for the
    block; continued after it, whatever the block did (a test that fails leaves no tree
    stopped for its teardown to wait out). The group's processes are yielded (a shell is
    not one of them: it leads a session of its own)."""
    procs = [p for p in [psutil.Process(tree.pid), *descendants(tree.pid)] if in_group(p, tree)]
    os.killpg(tree.pid, signal.SIGSTOP)  # (`up` runs in a session of its own: its group)
    try:
        wait_for(lambda: all(stopped(p) or not pid_running(p.pid) for p in procs),
                 "every process of the tree stopped")
        yield procs
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gone, reaped: nothing to continue)
            os.killpg(tree.pid, signal.SIGCONT)


def kill_lines(output: str) -> list[str]:
    """The lines of a tree's output that say a child was taken for failed and killed."""
    return [line for line in output.splitlines() if any(
        what in line for what in ("hung", "heartbeats unanswered", "SIGKILL", "start timeout",
                                  "not ready after", "lost", "untold"))]


# --- 1. a tree stopped whole, told to stop through its root alone -----------------------------

# `group` first: stopped last, it waits, continued, while its siblings stop.
STOPPED_WHOLE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3, idle_interval_ms = 100 }
[[children]]
id = "group"
type = "supervisor"
heartbeat = { interval_ms = 100, misses = 3, idle_interval_ms = 100 }
[[children.children]]
id = "inner"
start = "tests.fakes:FakeActor"
shutdown_ms = 1500
[[children.children]]
id = "inner2"
start = "tests.fakes:FakeActor"
shutdown_ms = 1500
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
shutdown_ms = 1500
[[children]]
id = "beta"
start = "tests.fakes:FakeActor"
shutdown_ms = 1500
[[children]]
id = "gamma"
start = "tests.fakes:FakeActor"
shutdown_ms = 1500
[[children]]
id = "stubborn"
start = "tests.fakes:FakeActor"
shutdown_ms = 1500
config = { ignore_sigterm = true }
"""


def test_a_tree_stopped_whole_and_told_to_stop_at_its_root_alone_stops_every_child_cleanly(
        make_tree):
    """SIGTERM and SIGCONT to the root alone, as `systemctl stop` sends them and `moorage
    down` does to a root that does not answer. (The root asked its stopped children to stop,
    one at a time: each waited out its shutdown_ms and was SIGKILLed, those waiting for
    their turn were killed for hung, and the stopped zygote left their exits untold.)"""
    tree = make_tree(STOPPED_WHOLE).start()
    with paused(tree) as procs:
        os.kill(tree.pid, signal.SIGTERM)
        os.kill(tree.pid, signal.SIGCONT)
        assert wait_pid_exit(tree.pid, 60)
    assert tree.proc is not None and tree.proc.wait(10) == 0, tree.output()[-3000:]
    assert_all_gone(procs)
    # (`stubborn` ignores SIGTERM: its SIGKILL after shutdown_ms is the one kill due, and
    # the time it takes is what `group` spends continued, waiting for its turn to stop)
    kills = kill_lines(tree.output())
    assert [line.split(" ", 1)[1] for line in kills] == [
        "supervisor WARNING stubborn: still alive 1500 ms after SIGTERM; SIGKILL"], \
        tree.output()[-3000:]


# --- 2. a start caught by a pause longer than its start timeout -------------------------------

GATED = """
[supervisor]
start_timeout_ms = 3000
heartbeat = {{ interval_ms = 100, misses = 3 }}
[[children]]
id = "gated"
start = "tests.fakes:FakeActor"
config = {{ start_gate = "{gate}" }}
"""
START_PAUSE_S = 4.0  # longer than the start timeout


def test_a_start_caught_by_a_pause_longer_than_its_start_timeout_is_not_killed_on_resume(
        make_tree, tmp_path):
    """(The start timeout was a monotonic timer: overdue at the resume, it fired on the
    root's first turn and SIGKILLed the child, which had had no time to start.) Its time
    counts what the root's loop was awake: the pause pushes it out."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    tree = make_tree(GATED.format(gate=gate)).start(wait=False)
    pid = wait_for(lambda: tree.child("gated")["pid"], "the child's process")
    with paused(tree):
        time.sleep(START_PAUSE_S)  # sleep-ok: the pause under test
    # Two round trips to the root: the second is read on a later turn than the first, so
    # the root's first turn after the resume, where an overdue timer runs, is over.
    for _ in range(2):
        assert tree.child("gated")["state"] == "starting"
    wait_for(lambda: gate_opened(gate) or not pid_running(pid),
             "the child let through its gate, or gone")
    ev = tree.wait_event(lambda e: e["event"] in ("started", "exited")
                         and e["child"] == "gated")
    assert (ev["event"], ev["pid"]) == ("started", pid), ev
    assert kill_lines(tree.output()) == [], tree.output()[-3000:]


# --- 3. a consumer acking all along, and a pause longer than consumer_timeout_ms -------------

CONSUMER_TIMEOUT_MS = 2000
CONSUMER_PAUSE_S = 4.0  # longer than the timeout and the sweep's interval (1 s) together


def test_a_consumer_acking_all_along_is_not_dropped_by_a_pause_longer_than_its_timeout(
        make_tree, tmp_path):
    """(Its silence counted the terminal's own pause: at the resume, the first sweep dropped
    it as "silent for 5.0 s", before its acks could come.) A consumer behind the session's
    output acks just before the pause and just after it."""
    tree = make_tree(terminal_tree(terminal=f"consumer_timeout_ms = {CONSUMER_TIMEOUT_MS}")
                     ).start()
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(
        tmp_path))}, timeout=30)["session"]

    def published() -> int:
        return next(s for s in c.call("terminal", "term.list")["sessions"]
                    if s["session"] == sid)["offset"]

    wait_for(published, "the shell's first output")
    with Client(tree.runtime_dir, timeout=30.0) as consumer:
        # behind: it has not taken the prompt yet
        ack = consumer.call("terminal", "term.ack", {"session": sid, "offset": 0})
        assert ack["offset"] > ack["acked"] == 0 and ack["consumers"] == 1, ack
        with paused(tree):
            time.sleep(CONSUMER_PAUSE_S)  # sleep-ok: the pause under test
        # Two round trips to the terminal (another session's): its first turn after the
        # resume, where the overdue sweep runs, is over.
        for _ in range(2):
            c.call("terminal", "sys.ping")
        ack = consumer.call("terminal", "term.ack", {"session": sid, "offset": 0})
        assert ack["consumers"] == 1, ack
    assert c.call("terminal", "sys.info").get("consumers_dropped", 0) == 0
    assert kill_lines(tree.output()) == [], tree.output()[-3000:]
