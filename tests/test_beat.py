"""Liveness beats (moorage.actors.runtime.beat): the board across fork, the loop's marks, the
supervisor's reading of them, and hangs found without a message to the child."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

import psutil
import pytest

from moorage.actors.resource.sampler import _ProcFiles, system_memory
from moorage.actors.runtime import Call, beat, op
from moorage.actors.runtime.loop import Loop
from moorage.protocol.errors import MoorageError
from moorage.supervisor.policy import Heartbeat
from tests.fakes import FakeActor

pytestmark = pytest.mark.timeout(90)


class Blocker(FakeActor):
    """A fake whose `blocker.block` never returns: blocked in a call, not spinning."""

    name = "blocker"

    @op("blocker.block")
    def block(self, call: Call) -> dict[str, Any]:
        threading.Event().wait()  # for ever: the hang this actor fakes
        return {}


# --- the board ------------------------------------------------------------------------------


def test_a_forked_child_beats_on_the_board_its_parent_reads():
    board = beat.BeatBoard(8)
    assert board.read(3) == (0, 0)
    to_parent, to_child = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            b = board.beater(3)
            b.waiting(None)
            os.write(to_parent[1], b"w")  # the parent reads the board while we "wait"
            os.read(to_child[0], 1)
            b.woke()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    try:
        assert os.read(to_parent[0], 1) == b"w"
        turn, until = board.read(3)
        assert turn == 0 and until == beat.WAIT_FOREVER
    finally:
        os.write(to_child[1], b"g")
        _, status = os.waitpid(pid, 0)
        for fd in (*to_parent, *to_child):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    turn, until = board.read(3)
    assert until == 0 and 0 < turn <= time.monotonic_ns()
    assert board.read(2) == (0, 0) and board.read(4) == (0, 0)
    board.clear(3)
    assert board.read(3) == (0, 0)


def test_a_wait_with_a_timeout_promises_its_end_and_a_wake_clears_it():
    board = beat.BeatBoard(2)
    b = board.beater(1)
    before = time.monotonic_ns()
    b.waiting(50)
    _, until = board.read(1)
    assert before + 50_000_000 <= until <= time.monotonic_ns() + 50_000_000
    b.woke()
    turn, until = board.read(1)
    assert until == 0 and turn >= before
    with pytest.raises(ValueError):
        board.beater(2)


def test_only_the_process_it_was_installed_in_beats():
    board = beat.BeatBoard(1)
    beat.install(board.beater(0))
    try:
        assert beat.installed() is not None
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"1" if beat.installed() is None else b"0")
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(r, 1) == b"1"  # a process forked by the beating one has no beater
        os.close(r)
        os.close(w)
    finally:
        beat.install(None)
    assert beat.installed() is None


def test_the_loop_marks_itself_busy_while_it_runs_a_callback():
    board = beat.BeatBoard(1)
    beat.install(board.beater(0))
    try:
        loop = Loop()
    finally:
        beat.install(None)
    seen: list[tuple[int, int]] = []
    try:
        loop.call_later(0, lambda: seen.append(board.read(0)))
        loop.run_once()
    finally:
        loop.close()
    turn, until = seen[0]
    assert until == 0 and turn > 0  # woke, turning: a callback that hangs here stops it


# --- the supervisor's accounting ----------------------------------------------------------------


def test_a_turn_or_an_idle_wait_is_life_and_misses_in_a_row_are_a_hang():
    h = Heartbeat(misses=3)
    assert [h.observe(0, idle=True) for _ in range(10)] == [False] * 10  # idle, never woken
    assert h.observe(5, idle=False) is False  # it turned
    assert [h.observe(5, idle=False) for _ in range(3)] == [False, False, True]
    h.reset()
    assert [h.observe(0, idle=False) for _ in range(4)] == [False, False, False, True]
    h.reset()
    assert [h.observe(t, idle=False) for t in range(1, 20)] == [False] * 19  # turning


def test_a_stopped_process_is_told_from_a_sleeping_one():
    p = subprocess.Popen(["sleep", "60"])
    try:
        assert beat.stopped(p.pid) is False
        os.kill(p.pid, signal.SIGSTOP)
        os.waitpid(p.pid, os.WUNTRACED)  # reported stopped by the kernel
        assert beat.stopped(p.pid) is True
        os.kill(p.pid, signal.SIGCONT)
        os.waitpid(p.pid, os.WCONTINUED)
        assert beat.stopped(p.pid) is False
    finally:
        p.kill()
        p.wait()
    assert beat.stopped(p.pid) is False  # gone: its exit is what tells


def test_the_sampler_reads_the_figures_psutil_gives():
    p = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(p.pid, signal.SIGSTOP)  # figures that cannot move between the two reads
        os.waitpid(p.pid, os.WUNTRACED)
        files = _ProcFiles(p.pid)
        q = psutil.Process(p.pid)
        t = q.cpu_times()
        assert files.figures() == (q.memory_info().rss, t.user + t.system)
        files.close()
    finally:
        p.kill()
        p.wait()
    assert system_memory()[0] == psutil.virtual_memory().total


# --- a tree: hangs seen without sending the child anything ---------------------------------------

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "quiet"
start = "tests.fakes:FakeActor"
config = { push_metrics = false, metrics_interval_s = 3600 }
[[children]]
id = "blocker"
start = "tests.test_beat:Blocker"
"""


def test_an_idle_child_is_neither_sent_anything_nor_taken_for_hung(make_tree):
    tree = make_tree(TREE).start()
    before = tree.call("quiet", "sys.info")
    # A second of the loop's own timer elsewhere: ten heartbeat ticks pass meanwhile.
    assert tree.call("blocker", "fake.slow", {"ms": 1000}, timeout=10)["slept_ms"] == 1000
    after = tree.call("quiet", "sys.info")
    assert after["pid"] == before["pid"]
    assert after["received"] == before["received"] + 1  # this sys.info, and nothing else
    assert tree.child("quiet")["restarts"] == 0


def test_a_sigstopped_child_with_no_timer_due_is_seen_as_hung(make_tree):
    tree = make_tree(TREE).start()
    old = tree.child("quiet")["pid"]
    os.kill(old, signal.SIGSTOP)
    hung = tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "quiet")
    assert hung["pid"] == old and hung["misses"] == 3
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "quiet")
    assert ev["pid"] != old
    assert tree.child("quiet")["last_exit"] == "killed by signal 9 (missed heartbeats)"


def test_a_child_blocked_in_a_handler_is_killed_and_replaced(make_tree):
    tree = make_tree(TREE).start()
    old = tree.child("blocker")["pid"]
    with pytest.raises(MoorageError) as err:
        tree.call("blocker", "blocker.block", timeout=0.3)
    assert err.value.name == "outcome_unknown"  # not idempotent: it may have run
    hung = tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "blocker")
    assert hung["pid"] == old
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "blocker")
    assert ev["pid"] != old
    assert tree.call("blocker", "fake.work")["pid"] == ev["pid"]
