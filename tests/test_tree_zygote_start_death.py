"""A child whose start is cut short by its zygote's death is not charged for it: restarted at
once from the zygote's successor, and not counted against its intensity (here 0, so one
counted death would engage its fallback). A start the supervisor itself ends (it timed out)
still counts."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from moorage.supervisor.zygote import UNTOLD_EXIT
from tests.test_tree_zygote import _traced
from tests.waiting import wait_for, waiting_at_gate

pytestmark = pytest.mark.timeout(90)

def config(a_config: str = "", start_timeout_ms: int = 10_000) -> str:
    """Two fake children, `a` with `a_config` and a fallback. stable_after_s = 0: a death
    after `ready` counts against nothing (a test's kill of a child that served); intensity
    = 0: any death that counts engages `a`'s fallback at once."""
    return f"""
[supervisor]
heartbeat = {{ interval_ms = 100, misses = 3 }}
intensity = 0
period_s = 600
stable_after_s = 0
start_timeout_ms = {start_timeout_ms}
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
fallbacks = ["degraded"]
config = {{ {a_config} }}
[[children]]
id = "b"
start = "tests.fakes:FakeActor"
"""


def _new_zygote(tree) -> dict:
    """Kill the zygote: the children it forked are the supervisor's from then on (so their
    deaths signal no zygote), and its successor serves, its spare standing by."""
    old = tree.status()["zygote"]["pid"]
    os.kill(old, signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["old_pid"] == old)
    return wait_for(lambda: (z := tree.status()["zygote"])["spare"] and z, "a spare")


def _exits_until_back(tree, cid: str) -> tuple[list[dict], dict]:
    """`cid`'s `exited` events up to its next `restarted` or `fallback`, and that event."""
    exits: list[dict] = []

    def back(e: dict) -> bool:
        if e.get("child") == cid and e["event"] == "exited":
            exits.append(e)
        return e.get("child") == cid and e["event"] in ("restarted", "fallback")

    return exits, tree.wait_event(back)


def test_a_child_whose_zygote_died_before_telling_it_to_start_is_restarted_uncounted(
        make_tree, tmp_path):
    """The zygote forks `a`, tells the supervisor its pid, and is killed at the write that
    would let `a` go on (strace's fault injection): `a` exits unstarted (UNTOLD_EXIT). That
    death is the zygote's: `a` starts again at once on its primary, no fallback engaged."""
    tree = make_tree(config()).start()
    z = _new_zygote(tree)
    log = tmp_path / "strace.log"
    # The zygote's first write from now on is the byte that tells `a`'s fork to go on: `a`'s
    # death (the supervisor's child now) signals no zygote, so no wake-up byte comes before.
    with _traced(z["pid"], log, "-e", "trace=write,sendto",
                 "-e", "inject=write:signal=SIGKILL:when=1") as strace:
        os.kill(tree.child("a")["pid"], signal.SIGKILL)
        exits, back = _exits_until_back(tree, "a")
        wait_for(lambda: strace.poll() is not None, "strace's end (its tracee died)")
    # (the zygote's last calls: the fork's pid told, the byte to the fork killed at its write)
    lines = [" ".join(line.split()) for line in log.read_text().splitlines()]
    assert "spawned" in lines[-3] and lines[-2].startswith("write(") \
        and '"\\1", 1)' in lines[-2] and lines[-1] == "+++ killed by SIGKILL +++", lines
    assert tree.status()["zygote"]["pid"] != z["pid"]

    assert back["event"] == "restarted" and back["fallback"] is None, (back, exits)
    # The fork's exit: its status as reaped (UNTOLD_EXIT), or, reaped before its zygote's
    # death was, untold (the supervisor's waitpid returns the two in either order).
    cut = exits[-1]
    assert len(exits) == 2 and cut["pid"] != exits[0]["pid"], exits
    assert (cut["code"], cut["detail"]) in (
        (UNTOLD_EXIT, "died during start; its zygote had died"),
        (None, "its exit went untold: its zygote died")), cut
    a = tree.child("a")
    assert (a["state"], a["fallback"], a["pid"]) == ("running", None, back["pid"])
    assert psutil.Process(back["pid"]).ppid() == tree.status()["zygote"]["pid"]
    assert tree.call("a", "fake.work")["pid"] == back["pid"]


def test_a_child_killed_starting_after_its_zygote_died_is_restarted_uncounted(
        make_tree, tmp_path):
    """`a` held at its start gate when its zygote is killed, then killed itself before it is
    ready (as what kills processes by the zygote's name takes a child it just forked): not
    counted, restarted at once on its primary."""
    gate = tmp_path / "gate"
    tree = make_tree(config(f'start_gate = "{gate}"')).start()
    os.mkfifo(gate)
    os.kill(tree.child("a")["pid"], signal.SIGKILL)
    held = wait_for(lambda: (c := tree.child("a"))["state"] == "starting" and c["pid"],
                    "a forked")
    # (at its gate, not on its way there: a zygote dying before the fork's start reached it
    # would cut the start short, which is the other tests' case)
    wait_for(lambda: waiting_at_gate(held), "a held at its gate")
    _new_zygote(tree)
    os.kill(held, signal.SIGKILL)
    cut = tree.wait_event(lambda e: e["event"] == "exited" and e["pid"] == held)
    os.unlink(gate)  # (the next start passes its gate)
    back = tree.wait_event(lambda e: e["event"] in ("restarted", "fallback")
                           and e["child"] == "a")
    assert back["event"] == "restarted" and back["fallback"] is None, back
    assert cut["detail"] == "died during start; its zygote had died", cut
    assert tree.child("a")["fallback"] is None


def test_a_start_that_times_out_after_its_zygote_died_is_counted(make_tree, tmp_path):
    """`a` held at its start gate past its start timeout, its zygote killed meanwhile: the
    supervisor kills it for a start that hangs, its own failure, which counts (its fallback
    engaged) though its zygote died while it started."""
    gate = tmp_path / "gate"
    # (5 s: the zygote is replaced well before `a`'s start times out, on a busy machine too)
    tree = make_tree(config(f'start_gate = "{gate}"', start_timeout_ms=5000)).start()
    os.mkfifo(gate)
    os.kill(tree.child("a")["pid"], signal.SIGKILL)
    held = wait_for(lambda: (c := tree.child("a"))["state"] == "starting" and c["pid"],
                    "a forked")
    # (at its gate, not on its way there: a zygote dying before the fork's start reached it
    # would cut the start short, which is the other tests' case)
    wait_for(lambda: waiting_at_gate(held), "a held at its gate")
    _new_zygote(tree)
    # The gate stays until `a`'s start is cut: its zygote's death interrupts its open of the
    # FIFO (the reparent signal), which is then tried again on the path, found gone had it
    # been unlinked, and the start would fail of itself, no timeout.
    cut = tree.wait_event(lambda e: e["event"] == "exited" and e["pid"] == held)
    assert cut["detail"] == "start timeout", cut
    engaged = tree.wait_event(lambda e: e["event"] == "fallback" and e["child"] == "a")
    assert engaged["fallback"] == "degraded"
    # A writer that never blocks (O_RDWR), kept until its fallback runs: that start passes.
    writer = os.open(gate, os.O_RDWR)
    try:
        wait_for(lambda: (c := tree.child("a"))["state"] == "running"
                 and c["fallback"] == "degraded", "a running on its fallback")
    finally:
        os.close(writer)
