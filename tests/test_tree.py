"""The supervisor tree, started for real by `moorage up`, attacked with real signals."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time

import psutil
import pytest

from moorage.protocol.errors import MoorageError
from tests.conftest import Tree, descendants, wait_pid_exit

pytestmark = pytest.mark.timeout(90)

TWO = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "beta"
start = "tests.fakes:FakeActor"
shutdown_ms = 500
"""


def test_up_status_down_leaves_no_process(make_tree):
    tree = make_tree(TWO).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    # root, the root's zygote, and two actors
    assert len(procs) == 4
    out = tree.cli("status")
    assert out.returncode == 0, out.stderr
    assert "alpha" in out.stdout and "running" in out.stdout
    down = tree.cli("down")
    assert down.returncode == 0, down.stderr
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == []
    assert tree.proc.wait(10) == 0


@pytest.mark.parametrize("victim", ["alpha", "beta"])
def test_sigkill_of_a_child_is_seen_and_the_child_replaced(make_tree, victim):
    tree = make_tree(TWO).start()
    old = tree.child(victim)["pid"]
    os.kill(old, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == victim)
    assert ev["pid"] != old
    new = tree.child(victim)
    assert new["state"] == "running" and new["pid"] == ev["pid"]
    assert new["restarts"] == 1
    assert new["last_exit"] == "killed by signal 9"
    assert tree.call(victim, "fake.work")["pid"] == ev["pid"]
    other = "beta" if victim == "alpha" else "alpha"
    assert tree.child(other)["restarts"] == 0


def test_sigstop_of_a_child_is_detected_by_heartbeat_and_it_is_replaced(make_tree):
    tree = make_tree(TWO).start()
    old = tree.child("alpha")["pid"]
    os.kill(old, signal.SIGSTOP)
    hung = tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "alpha")
    assert hung["pid"] == old
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    assert ev["pid"] != old
    assert tree.child("alpha")["last_exit"] == "killed by signal 9 (missed heartbeats)"
    assert tree.call("alpha", "fake.work")["pid"] == ev["pid"]


def test_a_child_that_hangs_holding_its_loop_is_killed_and_replaced(make_tree):
    tree = make_tree(TWO.replace('id = "alpha"\nstart = "tests.fakes:FakeActor"',
                                 'id = "alpha"\nstart = "tests.fakes:FakeActor"\n'
                                 'config = { hang_after = 1 }')).start()
    old = tree.child("alpha")["pid"]
    with pytest.raises(MoorageError) as err:
        tree.call("alpha", "fake.work", timeout=0.3)
    assert err.value.name == "outcome_unknown"  # not idempotent: it may have run
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    assert ev["pid"] != old


CRASH_LOOP = """
[supervisor]
intensity = 10
period_s = 60
[[children]]
id = "steady"
start = "tests.fakes:FakeActor"
[[children]]
id = "inner"
type = "supervisor"
intensity = 3
period_s = 30
backoff = { initial_ms = 20, factor = 2.0, max_ms = 1000 }
[[children.children]]
id = "crasher"
start = "tests.fakes:FakeActor"
config = { fail_at_start = true }
"""


def test_a_child_that_crashes_at_start_backs_off_then_escalates_without_a_storm(make_tree):
    tree = make_tree(CRASH_LOOP).start(wait=False)
    esc = tree.wait_event(lambda e: e["event"] == "escalated" and e["child"] == "crasher", 30)
    assert esc["supervisor"] == "inner"
    # The escalation reached the root: it saw its child supervisor exit abnormally.
    exited = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "inner")
    assert exited["reason"] == "abnormal" and exited["code"] == 3
    # Back-off: the starts of the crasher were spaced 0, 20, 40, 80 ms apart at least.
    tree.events.close()
    tree.events = tree.client.subscribe("supervisor", ["sup.event"], from_seq=1)
    crashes = []
    while True:
        ev = tree.events.next(timeout=0.5)
        if ev is None:
            break
        body = getattr(ev, "body", {})
        if body.get("event") == "exited" and body.get("child") == "crasher":
            crashes.append(body["time"])
        if len(crashes) >= 4:
            break
    assert len(crashes) == 4, "intensity 3 allows 3 restarts: 4 deaths, then escalation"
    gaps = [b - a for a, b in itertools.pairwise(crashes)]
    assert gaps[1] >= 0.02 and gaps[2] >= 0.04, gaps
    # The steady sibling was never touched.
    assert tree.child("steady")["restarts"] == 0


NESTED = """
[supervisor]
strategy = "one_for_all"
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "first"
start = "tests.fakes:FakeActor"
[[children]]
id = "group"
type = "supervisor"
strategy = "rest_for_one"
[[children.children]]
id = "keeper"
start = "tests.fakes:FakeActor"
[[children.children]]
id = "user"
start = "tests.fakes:FakeActor"
[[children.children]]
id = "late"
start = "tests.fakes:FakeActor"
[[children]]
id = "last"
start = "tests.fakes:FakeActor"
"""


def test_rest_for_one_restarts_the_dead_child_and_those_started_after_it(make_tree):
    tree = make_tree(NESTED).start()
    before = {c: tree.child(c)["pid"] for c in ("first", "keeper", "user", "late", "last")}
    os.kill(before["user"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "late")
    after = {c: tree.child(c)["pid"] for c in before}
    assert after["keeper"] == before["keeper"]
    assert after["user"] != before["user"] and after["late"] != before["late"]
    assert after["first"] == before["first"] and after["last"] == before["last"]


def test_one_for_all_restarts_every_sibling_including_a_nested_supervisor(make_tree):
    tree = make_tree(NESTED).start()
    before = {c: tree.child(c)["pid"] for c in ("first", "group", "keeper", "last")}
    os.kill(before["first"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "last")
    tree.wait_all_running()
    after = {c: tree.child(c)["pid"] for c in before}
    for c in before:
        assert after[c] != before[c], c
    # The old nested supervisor's children went with it.
    assert not psutil.pid_exists(before["keeper"]) or \
        psutil.Process(before["keeper"]).status() == psutil.STATUS_ZOMBIE


def test_sigkill_of_the_root_leaves_no_orphan(make_tree):
    tree = make_tree(NESTED).start()
    procs = descendants(tree.pid)
    assert len(procs) >= 8  # zygotes, actors, the nested supervisor
    os.kill(tree.pid, signal.SIGKILL)
    assert wait_pid_exit(tree.pid, 10)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]


def test_a_child_that_ignores_sigterm_is_killed_after_its_shutdown_time(make_tree):
    tree = make_tree(TWO.replace('shutdown_ms = 500',
                                 'shutdown_ms = 300\nconfig = { ignore_sigterm = true }')).start()
    t0 = time.monotonic()
    assert tree.cli("down").returncode == 0
    assert time.monotonic() - t0 >= 0.3
    ev_text = tree.state_dir.joinpath("logs", "supervisor.log").read_text()
    assert "still alive 300 ms after SIGTERM; SIGKILL" in ev_text


def test_a_second_up_on_a_live_instance_refuses_clearly(make_tree):
    tree = make_tree(TWO).start()
    out = tree.cli("up", "--config", str(tree.config_path), "--allow-external-actors")
    assert out.returncode == 1
    assert "already running" in out.stderr


def test_stale_sockets_of_a_dead_tree_are_cleaned_and_a_new_tree_comes_up(make_tree,
                                                                         runtime_dir):
    first = make_tree(TWO).start()
    os.killpg(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert (runtime_dir / "supervisor.rpc").exists()
    second = Tree(runtime_dir, TWO)
    try:
        second.start()
        assert second.child("alpha")["state"] == "running"
    finally:
        second.stop()


def test_cli_says_clearly_when_no_tree_runs_or_the_input_is_bad(make_tree):
    tree = make_tree(TWO)
    out = tree.cli("status")
    assert out.returncode == 4 and "no moorage tree is running" in out.stderr
    tree.start()
    out = tree.cli("call", "nosuch", "sys.ping")
    assert out.returncode == 2 and "unknown actor 'nosuch'" in out.stderr
    out = tree.cli("call", "alpha", "fake.work", "{not json")
    assert out.returncode == 2 and "bad JSON" in out.stderr
    out = tree.cli("call", "alpha", "fake.work", '{"n": "x"}')
    assert out.returncode == 2 and "bad_args" in out.stderr
    out = tree.cli("call", "alpha", "fake.work", '{"n": 2}')
    assert out.returncode == 0 and '"done": 1' in out.stdout
    out = tree.cli("kill", "alpha", "--signal", "SIGNOPE")
    assert out.returncode == 2 and "no signal named" in out.stderr


HANGS = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "busy"
start = "tests.fakes:FakeActor"
config = { hang_after = 1 }
"""


def test_a_hang_is_one_hung_event_and_one_kill_while_its_exit_goes_untold(make_tree):
    """The zygote is stopped: the killed child's exit goes untold until the zygote is
    replaced (EXIT_TELL_S), the child counted running meanwhile. Its heartbeat is not read
    again after the kill: one `hung` event (one SIGKILL), not one per tick."""
    tree = make_tree(HANGS).start()
    zygote = tree.status()["zygote"]["pid"]
    old = tree.child("busy")["pid"]
    os.kill(zygote, signal.SIGSTOP)
    try:
        with pytest.raises(MoorageError):
            tree.call("busy", "fake.work", timeout=0.3)
        seen: list[dict] = []
        tree.wait_event(lambda e: seen.append(e) or (e["event"] == "restarted"
                                                     and e["child"] == "busy"), timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(zygote, signal.SIGCONT)
    assert any(e["event"] == "zygote_restarted" for e in seen)
    hung = [e for e in seen if e["event"] == "hung"]
    assert [e["pid"] for e in hung] == [old], f"{len(hung)} hung events for one hang"
    exited = [e for e in seen if e["event"] == "exited"]
    assert [(e["pid"], e["signal"], e["detail"]) for e in exited] == [
        (old, signal.SIGKILL, "missed heartbeats")]
    # Its successor is watched again: its own hang is seen.
    new = seen[-1]["pid"]
    with pytest.raises(MoorageError):
        tree.call("busy", "fake.work", timeout=0.3)
    assert tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "busy")["pid"] == new
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "busy")
