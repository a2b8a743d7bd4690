"""A `term.exec` answered by a successor of the terminal that started it says how long the
command took from its start, not from its restore: the start is in the command's record (by
the wall clock, which the successor shares), and the duration counts from there."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from moorage.protocol.client import Client
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import gate_opened, open_gate, wait_for

pytestmark = pytest.mark.timeout(180)

TREE = terminal_tree()


@pytest.mark.parametrize("kills", [1, 2])
def test_the_duration_of_an_exec_answered_by_a_successor_counts_from_its_start(
        make_tree, tmp_path, kills):
    """The command waits on a FIFO while the terminal is SIGKILLed (`kills` times, each
    successor in turn); the client resends the exec (resumable) and the last successor
    answers it once the gate opens. The command started before it was seen running, and
    ended after the gate opened, which was after the kills: its duration is at least the
    time between those two. Counted from the restore it was the successor's share only."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    c.learn_ops("terminal")
    assert "term.exec" in c.core.resumable["terminal"]
    gate = home / "gate"
    os.mkfifo(gate)
    seen: dict[str, float] = {}

    def kill_then_open_the_gate() -> None:
        try:
            wait_for(lambda: (home / "started").exists(), "the command running")
            seen["running"] = time.monotonic()
            with Client(tree.runtime_dir, timeout=10.0) as other:
                for _ in range(kills):
                    victim = other.call("terminal", "sys.info")["pid"]
                    os.kill(victim, signal.SIGKILL)
                    wait_for(lambda victim=victim: other.call("terminal", "sys.info")["pid"]
                             != victim, "the terminal's successor")
            seen["opened"] = time.monotonic()
            open_gate(gate)  # the command, in the same shell, ends now
        finally:
            if "opened" not in seen:  # (failed on the way: the command is let go all the same)
                gate_opened(gate)

    helper = threading.Thread(target=kill_then_open_the_gate)
    helper.start()
    try:
        r = c.call("terminal", "term.exec", {
            "session": sid, "command": "touch ~/started; read -r _ < ~/gate; echo R$((6*7))"},
            timeout=60)
    finally:
        helper.join(60)
    assert (r["exit_code"], r["output"]) == (0, "R42"), r
    assert r["duration_ms"] >= (seen["opened"] - seen["running"]) * 1000, (r, seen)
