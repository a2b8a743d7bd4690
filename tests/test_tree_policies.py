"""Restart types, fallbacks, start timeouts, shutdown order and systemd notification, on
real trees."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import wait_pid_exit
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)


RESTART_TYPES = """
[supervisor]
backoff = { initial_ms = 10, factor = 2.0, max_ms = 100 }
[[children]]
id = "perm"
start = "tests.fakes:FakeActor"
config = { exit_normally_after = 1 }
[[children]]
id = "trans"
start = "tests.fakes:FakeActor"
restart = "transient"
config = { exit_normally_after = 1, crash_after = 2 }
[[children]]
id = "temp"
start = "tests.fakes:FakeActor"
restart = "temporary"
"""


def test_a_permanent_child_is_restarted_even_after_a_normal_exit(make_tree):
    tree = make_tree(RESTART_TYPES).start()
    old = tree.child("perm")["pid"]
    with pytest.raises(MoorageError):
        tree.call("perm", "fake.work", timeout=1.0)  # it exits(0) instead of answering
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "perm")
    assert ev["pid"] != old
    assert tree.child("perm")["last_exit"] == "exit code 0"


def test_a_transient_child_is_not_restarted_after_a_normal_exit(make_tree):
    tree = make_tree(RESTART_TYPES).start()
    with pytest.raises(MoorageError):
        tree.call("trans", "fake.work", timeout=1.0)
    ev = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "trans")
    assert ev["reason"] == "normal"
    st = tree.child("trans")
    assert st["state"] == "stopped" and st["pid"] is None and st["restarts"] == 0


def test_a_temporary_child_is_never_restarted(make_tree):
    tree = make_tree(RESTART_TYPES).start()
    os.kill(tree.child("temp")["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "temp")
    st = tree.child("temp")
    assert st["state"] == "failed" and st["restarts"] == 0


FALLBACK = """
[supervisor]
intensity = 2
period_s = 30
stable_after_s = 30  # each death (a second or so after its start) is a young one
backoff = { initial_ms = 10, factor = 2.0, max_ms = 50 }
[[children]]
id = "flaky"
start = "tests.fakes:FakeActor"
fallbacks = ["degraded"]
config = { crash_after = 1 }
"""


def test_exceeding_the_intensity_engages_the_childs_fallback_instead_of_escalating(make_tree):
    tree = make_tree(FALLBACK).start()
    for _ in range(3):  # three deaths: the third exceeds intensity 2
        pid = tree.wait_all_running()["children"][0]["pid"]
        with pytest.raises(MoorageError):
            tree.call("flaky", "fake.work", timeout=1.0)
        assert wait_pid_exit(pid, 10)
    ev = tree.wait_event(lambda e: e["event"] == "fallback" and e["child"] == "flaky")
    assert ev["fallback"] == "degraded"
    started = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "flaky"
                              and e["fallback"] == "degraded")
    assert started["pid"] == tree.child("flaky")["pid"]
    assert tree.child("flaky")["fallback"] == "degraded"
    # The fallback reached the actor's config.
    assert tree.call("flaky", "sys.info")["actor"] == "flaky"


SLOW_START = """
[supervisor]
start_timeout_ms = 300
intensity = 1
period_s = 60
[[children]]
id = "ok"
start = "tests.fakes:FakeActor"
[[children]]
id = "sleepy"
start = "tests.fakes:FakeActor"
config = { start_delay_s = 30 }
"""


def test_a_child_that_does_not_become_ready_in_time_is_killed_and_counted(make_tree):
    tree = make_tree(SLOW_START).start(wait=False)
    ev = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "sleepy")
    assert ev["detail"] == "start timeout" and ev["signal"] == signal.SIGKILL
    tree.wait_event(lambda e: e["event"] == "escalated")
    assert tree.proc.wait(30) == 3  # it never came up: the root gave up, exit code 3


STOPPED_WHILE_STARTING = """
[supervisor]
start_timeout_ms = 120000
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "sleepy"
start = "tests.fakes:FakeActor"
config = { start_delay_s = 30 }
[[children]]
id = "after"
start = "tests.fakes:FakeActor"
"""


def test_a_child_stopped_while_it_starts_is_killed_as_hung_not_after_its_start_timeout(
        make_tree):
    """A SIGSTOP before the child is ready would hold the supervisor's job queue (the next
    child's start waits behind it) for the whole start timeout: it is a hang as soon as it
    has lasted as many ticks as a running child's missed beats."""
    tree = make_tree(STOPPED_WHILE_STARTING).start(wait=False)
    sleepy = wait_for(lambda: tree.child("sleepy")["pid"], "the slow child's process")
    os.kill(sleepy, signal.SIGSTOP)
    tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "sleepy")
    ev = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "sleepy")
    assert (ev["detail"], ev["signal"], ev["pid"]) == ("missed heartbeats", signal.SIGKILL,
                                                       sleepy)


RELAPSE = """
[supervisor]
intensity = 2
period_s = 60
backoff = { initial_ms = 10, factor = 2.0, max_ms = 20 }
[[children]]
id = "ok"
start = "tests.fakes:FakeActor"
[[children]]
id = "relapsing"
start = "tests.fakes:FakeActor"
config = { fail_at_start_if = "%s" }
"""


def test_once_up_the_root_retries_a_child_that_keeps_failing_and_never_gives_up(
        make_tree, tmp_path):
    flag = tmp_path / "fail"
    tree = make_tree(RELAPSE % flag).start()
    flag.write_text("")  # from now on it fails at start
    tree.call("supervisor", "sup.kill", {"child": "relapsing"})
    esc = tree.wait_event(lambda e: e["event"] == "escalated" and e["child"] == "relapsing")
    # The tree had come up: the root has no parent to give up to, so it retries later.
    assert esc["action"] == "retry" and esc["retry_in_s"] == 1.0
    assert tree.call("ok", "fake.work")["done"] == 1 and tree.proc.poll() is None
    flag.unlink()
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "relapsing")
    assert tree.call("relapsing", "fake.work")["pid"] == back["pid"]


NESTED_KILLED = """
[supervisor]
intensity = 1
period_s = 60
stable_after_s = 0
backoff = { initial_ms = 10, factor = 2.0, max_ms = 20 }
[[children]]
id = "group"
type = "supervisor"
intensity = 1
period_s = 60
backoff = { initial_ms = 10, factor = 2.0, max_ms = 20 }
[[children.children]]
id = "victim"
start = "tests.fakes:FakeActor"
"""


def running_pid(tree, cid: str) -> int | None:
    """`cid`'s pid while it runs; None while it (or the supervisor above it) is away."""
    def find(node: dict) -> dict | None:
        for ch in node.get("children", []):
            if ch["id"] == cid:
                return ch
            got = find(ch.get("tree") or {})
            if got:
                return got
        return None

    ch = find(tree.status())
    return ch["pid"] if ch is not None and ch["state"] == "running" else None


def test_the_roots_retries_of_a_nested_supervisor_that_gave_up_after_serving_back_off(
        make_tree):
    """A nested supervisor that came up and served, then gave up (its child killed again
    and again, as a crashing terminal does): the root's retries of it go further apart
    each time, 1 s then 2 s, instead of every second for ever (each retry restarting
    everything under it: a terminal's shells)."""
    tree = make_tree(NESTED_KILLED).start()
    retries: list[float] = []
    killed: set[int] = set()
    while len(retries) < 2:
        victim = wait_for(lambda: (p := running_pid(tree, "victim")) not in killed and p,
                          "the victim running (again)")
        killed.add(victim)
        os.kill(victim, signal.SIGKILL)
        ev = tree.wait_event(lambda e: (e["event"] == "restarted" and e["child"] == "victim")
                             or (e["supervisor"] == "supervisor" and e["child"] == "group"
                                 and e["event"] in ("restarted", "escalated")), 30)
        if ev["event"] == "escalated":
            assert ev["action"] == "retry"
            retries.append(ev["retry_in_s"])
    assert retries == [1.0, 2.0]


def test_a_nested_supervisor_that_served_a_whole_period_before_giving_up_is_retried_soon(
        make_tree):
    """The root's back-off of a nested supervisor's retries counts one storm: once the
    supervisor has served for a whole intensity period (the storm passed) and then gives up
    again, the root starts over at 1 s, not where the last storm left it."""
    # (a period long enough that a storm, on a loaded machine, fits in it: each life of the
    # group in a storm lasts two kills of its child, and a group just started again may
    # leave the root's sup.status, which finds the victim, waiting its 2 s for an answer)
    period_s = 7
    tree = make_tree(NESTED_KILLED.replace("period_s = 60\nstable_after_s",
                                           f"period_s = {period_s}\nstable_after_s", 1)).start()
    killed: set[int] = set()

    def storm() -> float:
        """Kill the victim until the root's retry of its supervisor: its delay."""
        while True:
            victim = wait_for(lambda: (p := running_pid(tree, "victim")) not in killed and p,
                              "the victim running (again)")
            killed.add(victim)
            os.kill(victim, signal.SIGKILL)
            ev = tree.wait_event(
                lambda e: (e["event"] == "restarted" and e["child"] == "victim")
                or (e["supervisor"] == "supervisor" and e["child"] == "group"
                    and e["event"] in ("restarted", "escalated")), 30)
            if ev["event"] == "escalated":
                return ev["retry_in_s"]

    assert [storm(), storm()] == [1.0, 2.0]
    wait_for(lambda: running_pid(tree, "victim") not in killed | {None}, "the group back")
    wait_for(lambda: next(c for c in tree.status()["children"] if c["id"] == "group")[
        "uptime_s"] > period_s + 0.5, "the group serving for more than its period", timeout=60)
    assert storm() == 1.0


ORDER = """
[[children]]
id = "one"
start = "tests.fakes:FakeActor"
[[children]]
id = "two"
start = "tests.fakes:FakeActor"
[[children]]
id = "three"
start = "tests.fakes:FakeActor"
"""


def test_children_start_in_order_and_stop_in_reverse_order(make_tree):
    tree = make_tree(ORDER).start()
    sub = tree.client.subscribe("supervisor", ["sup.event"], from_seq=1)
    try:
        events = [sub.next(timeout=10).body for _ in range(3)]  # caught up: the 3 starts
        assert tree.cli("down").returncode == 0
        # The stopping supervisor's last events are flushed before it exits.
        while not (events[-1]["event"] == "exited" and events[-1]["child"] == "one"):
            events.append(sub.next(timeout=10).body)
    finally:
        sub.close()
    started = [e["child"] for e in events if e["event"] == "started"]
    stopped = [e["child"] for e in events if e["event"] == "exited"]
    assert started == ["one", "two", "three"]
    assert stopped == ["three", "two", "one"]
    assert all(e["reason"] == "shutdown" for e in events if e["event"] == "exited")


def test_the_cli_restarts_kills_and_reports_in_json(make_tree):
    tree = make_tree(ORDER).start()
    before = tree.child("two")["pid"]
    assert tree.cli("restart", "two").returncode == 0
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "two")
    out = tree.cli("status", "--json")
    doc = json.loads(out.stdout)
    two = next(c for c in doc["children"] if c["id"] == "two")
    assert two["pid"] != before and two["state"] == "running" and two["restarts"] == 1
    out = tree.cli("kill", "three", "--signal", "TERM")
    assert out.returncode == 0 and "signal 15" in out.stdout
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "three")
    out = tree.cli("events", "--replay", "--count", "3")
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["event"] for x in lines] == ["started", "started", "started"]
    out = tree.cli("logs")
    assert out.returncode == 0 and "all children started" in out.stdout
    out = tree.cli("logs", "nosuch")
    assert out.returncode == 2 and "no log for 'nosuch'" in out.stderr


def test_the_root_speaks_sd_notify_when_systemd_asks(make_tree, runtime_dir):
    path = str(runtime_dir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    tree = make_tree(ORDER).start(wait=False, env=env)
    try:
        seen: list[str] = []
        while "READY=1" not in seen or "WATCHDOG=1" not in seen:
            seen += sock.recv(4096).decode().split("\n")
        assert any(s.startswith("STATUS=") for s in seen)
        assert tree.cli("down").returncode == 0
        while "STOPPING=1" not in seen:
            seen += sock.recv(4096).decode().split("\n")
    finally:
        sock.close()


def test_a_notify_socket_nobody_reads_never_holds_the_root(make_tree, runtime_dir):
    """systemd's socket full (its reader stopped): the root's pings are dropped and counted,
    its loop serves on and `down` stops it, where a blocking send would hold the loop."""
    path = str(runtime_dir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    # Filled to the brim before the tree starts, and never read: every send from now on
    # finds no room.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with pytest.raises(BlockingIOError):
        for _ in range(100_000):
            probe.sendto(b"FILL=1", socket.MSG_DONTWAIT, path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"}  # a ping each 10 ms
    tree = make_tree(ORDER).start(env=env)
    try:
        wait_for(lambda: tree.call("supervisor", "sys.info")["notify_dropped"] >= 20,
                 timeout=30, what="twenty pings dropped")
        assert tree.call("supervisor", "sys.ping") is not None
        assert tree.cli("down").returncode == 0
        assert wait_pid_exit(tree.pid, 10)
    finally:
        sock.close()
        probe.close()


@contextlib.contextmanager
def stderr_nobody_reads(full: bool = False) -> Iterator[int]:
    """The write end of a one-page pipe nobody reads (`full`: filled before it is given),
    for the tree's stderr; closed here once the tree has its own copy, the read end at the
    end."""
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # one page: full after a dozen lines
        if full:
            os.set_blocking(w, False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(w, b"x" * 512)
            os.set_blocking(w, True)
        yield w
    finally:
        os.close(w)
        os.close(r)


def test_a_stderr_nobody_reads_never_holds_the_tree(make_tree):
    """An editor that reads `moorage up`'s ready line and never its stderr: once the pipe is
    full, the tree's console lines are dropped and counted (the log files have them), and
    the tree serves on, restarts its children and stops."""
    with stderr_nobody_reads() as w:
        tree = make_tree(ORDER).start(stderr=w)
        # Each restart writes the root's INFO event lines to the console.
        for _ in range(40):
            tree.call("supervisor", "sup.restart", {"child": "two"})
            tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "two")
        info = tree.call("supervisor", "sys.info")
        assert info["console_dropped"] > 0
        assert tree.call("two", "sys.ping") is not None
        log = (tree.state_dir / "logs" / "supervisor.log").read_text()
        assert log.count("'event': 'restarted'") >= 40  # every line kept there
        assert tree.cli("down").returncode == 0
        assert wait_pid_exit(tree.pid, 10)


def test_what_a_process_writes_to_stderr_itself_never_waits_for_a_reader(make_tree):
    """Not loguru's lines: a library's print to sys.stderr and a thread's traceback, in an
    actor, with the inherited stderr a full pipe that nobody reads. They are dropped, and
    the actor answers at once and serves on; fd 2 itself is non-blocking in every process
    of the tree (what C code writes there)."""
    with stderr_nobody_reads(full=True) as w:
        tree = make_tree(ORDER).start(stderr=w)
        for _ in range(3):
            assert tree.call("two", "fake.stderr", {"lines": 200}, timeout=10) == {"lines": 200}
        assert tree.call("two", "sys.ping") is not None
        for pid in (tree.pid, tree.child("two")["pid"]):
            fdinfo = Path(f"/proc/{pid}/fdinfo/2").read_text()
            assert int(fdinfo.split("flags:")[1].split()[0], 8) & os.O_NONBLOCK, pid
        assert tree.cli("down").returncode == 0
        assert wait_pid_exit(tree.pid, 10)


def test_up_detach_returns_once_the_tree_answers_and_down_stops_it(make_tree):
    tree = make_tree(ORDER)
    out = tree.cli("up", "--detach", "--config", str(tree.config_path),
                   "--allow-external-actors")
    assert out.returncode == 0, out.stderr
    ready = json.loads(out.stdout)
    assert ready["moorage"] == "ready" and ready["runtime_dir"] == str(tree.runtime_dir)
    st = tree.cli("status")
    assert st.returncode == 0 and st.stdout.count("running") == 3
    assert tree.cli("down").returncode == 0
    assert tree.cli("status").returncode == 4


def test_the_runtime_dir_is_private_and_the_client_sees_a_restart_as_a_new_epoch(make_tree,
                                                                               runtime_dir):
    tree = make_tree(ORDER)
    tree.runtime_dir = runtime_dir / "inst"
    tree.runtime_dir.mkdir(mode=0o755)
    tree.config_path = runtime_dir / "moorage.toml"
    tree.client.close()
    tree.client = Client(tree.runtime_dir, timeout=10.0)
    tree.start()
    assert tree.runtime_dir.stat().st_mode & 0o777 == 0o700
    first = tree.client.hello("one")["ep"]
    os.kill(tree.child("one")["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "one")
    assert tree.client.hello("one")["ep"] != first
    assert tree.client.core.restarts_seen["one"] == 1


STUBBORN = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "plain"
start = "tests.fakes:FakeActor"
[[children]]
id = "stubborn"
start = "tests.fakes:FakeActor"
shutdown_ms = 300
config = { ignore_sigterm = true }
"""


def test_a_restart_asked_again_while_a_stop_is_under_way_still_ends_in_sigkill(make_tree):
    """The second `sup.restart` finds the child stopping: it must not call off the SIGKILL
    that ends a stop (a child that ignores SIGTERM would stay, the supervisor's queue of
    starts and stops stuck behind it for good)."""
    tree = make_tree(STUBBORN).start()
    old = tree.child("stubborn")["pid"]
    tree.call("supervisor", "sup.restart", {"child": "stubborn"})
    tree.call("supervisor", "sup.restart", {"child": "stubborn"})
    wait_for(lambda: (c := tree.child("stubborn"))["state"] == "running" and c["pid"] != old,
             "the stubborn child killed and started again")
    plain = tree.child("plain")["pid"]
    tree.call("supervisor", "sup.restart", {"child": "plain"})  # the queue moves on
    wait_for(lambda: (c := tree.child("plain"))["state"] == "running" and c["pid"] != plain,
             "the next restart done")


GROUP_IN_BACKOFF = """
[supervisor]
strategy = "rest_for_one"
stable_after_s = 30
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 60000, factor = 2.0, max_ms = 60000 }
[[children]]
id = "first"
start = "tests.fakes:FakeActor"
config = { crash_after = 1 }
[[children]]
id = "second"
start = "tests.fakes:FakeActor"
"""


def test_a_restart_asked_during_back_off_restarts_the_whole_group_now(make_tree):
    """`first` dies twice young: the second time its group's restart (`second` too, under
    rest_for_one) waits a minute. `sup.restart first` does that restart now: both come
    back, not `first` alone with `second` left stopped."""
    tree = make_tree(GROUP_IN_BACKOFF).start()
    pid = tree.child("first")["pid"]
    with contextlib.suppress(MoorageError):
        tree.call("first", "fake.work", timeout=5)
    wait_for(lambda: (c := tree.child("first"))["state"] == "running" and c["pid"] != pid
             and tree.child("second")["state"] == "running", "the first restart, at once")
    with contextlib.suppress(MoorageError):
        tree.call("first", "fake.work", timeout=5)
    wait_for(lambda: tree.child("first")["state"] == "backoff"
             and tree.child("second")["state"] == "stopped", "the group waiting a minute")
    tree.call("supervisor", "sup.restart", {"child": "first"})
    wait_for(lambda: tree.child("first")["state"] == "running"
             and tree.child("second")["state"] == "running", "the group back at once")


NEVER_STABLE = """
[supervisor]
intensity = 2
period_s = 60
stable_after_s = 0
heartbeat = {{ interval_ms = 100, misses = 3 }}
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
config = {{ fail_at_start_if = "{gate}" }}
"""


def test_a_child_that_never_comes_up_counts_as_young_even_with_stable_after_zero(
        make_tree, tmp_path):
    """stable_after_s = 0 makes every death of a child that served count as stable (P11's
    tree); one that dies in its start never served: its deaths add up to the intensity,
    and the root retries it further apart instead of restarting it in a tight loop."""
    gate = tmp_path / "fail"
    tree = make_tree(NEVER_STABLE.format(gate=gate)).start()
    gate.write_text("")
    os.kill(tree.child("a")["pid"], signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "escalated" and e.get("child") == "a")
    assert ev["action"] == "retry", ev
    assert tree.child("a")["restarts"] <= 4


FORGER = """
[supervisor]
heartbeat = {{ interval_ms = 100, misses = 3 }}
[[children]]
id = "victim"
start = "tests.fakes:FakeActor"
[[children]]
id = "forger"
start = "tests.fakes:FakeActor"
config = {{ forge_from = "{path}" }}
"""


def test_a_starting_child_cannot_speak_for_another_on_the_zygote_s_socket(make_tree, tmp_path):
    """Every starting child holds the zygote's socket until it is ready. One that says
    there that a sibling exited (and that the sibling is ready), and sends garbage, is not
    believed: the kernel says who sent each datagram. The sibling keeps its process, and
    no second one starts on its endpoint."""
    path = tmp_path / "victim.pid"
    tree = make_tree(FORGER.format(path=path)).start()
    victim = tree.child("victim")
    path.write_text(str(victim["pid"]))
    forger = tree.child("forger")["pid"]
    tree.call("supervisor", "sup.restart", {"child": "forger"})
    wait_for(lambda: (c := tree.child("forger"))["state"] == "running" and c["pid"] != forger,
             "the forger started again (its forgeries were read before its ready)")
    after = tree.child("victim")
    assert (after["pid"], after["restarts"], after["state"]) == (victim["pid"], 0, "running")
    assert tree.call("victim", "sys.ping") is not None
    log = tree.state_dir / "logs" / "supervisor.log"
    wait_for(lambda: log.read_text().count("refused an event on the zygote's socket") >= 3,
             "the three refusals logged")


def _events_until(tree, pred) -> list[dict]:
    """Every supervisor event read from now until (and with) the first that `pred` accepts."""
    seen: list[dict] = []
    tree.wait_event(lambda e: seen.append(e) or pred(e))
    return seen


def _is(event: str, child: str):
    return lambda e: e["event"] == event and e.get("child") == child


def _starts_of(events: list[dict], child: str, old: int | None = None) -> list[dict]:
    """The starts of `child` among `events` other than that of its process `old` (the
    stream is read from its beginning: the tree's first starts may not have been read)."""
    return [e for e in events if e["event"] in ("started", "restarted")
            and e["child"] == child and e["pid"] != old]


GROUP_START_FAILS = """
[supervisor]
strategy = "{strategy}"
intensity = 20
period_s = 60
start_timeout_ms = 60000
backoff = {{ initial_ms = 100, factor = 2.0, max_ms = 200 }}
[[children]]
id = "before"
start = "tests.fakes:FakeActor"
[[children]]
id = "base"
start = "tests.fakes:FakeActor"
config = {{ fail_at_start_if = "{flag}" }}
[[children]]
id = "dependant"
start = "tests.fakes:FakeActor"
"""


@pytest.mark.parametrize("strategy", ["rest_for_one", "one_for_all"])
def test_a_group_member_that_fails_to_start_holds_its_dependants_until_it_is_up(
        make_tree, tmp_path, strategy):
    """`base`'s restart fails (its group's restart under way): the starts queued after it
    do not run while it waits out its back-off; its dependants are started after it once
    it is up (one_for_all: `before` too is stopped and started again after its failure),
    each restarted once however often `base` failed."""
    flag = tmp_path / "fail"
    tree = make_tree(GROUP_START_FAILS.format(strategy=strategy, flag=flag)).start()
    old = {c: tree.child(c)["pid"] for c in ("before", "dependant")}
    flag.write_text("")
    os.kill(tree.child("base")["pid"], signal.SIGKILL)
    seen = _events_until(tree, lambda e: _is("exited", "base")(e)
                         and e["detail"].startswith("died during start"))
    flag.unlink()  # its next start, after its back-off, comes up
    seen += _events_until(tree, _is("restarted", "base"))
    assert _starts_of(seen, "dependant", old["dependant"]) == [], \
        "a dependant started while base was down"
    last_failure = max(i for i, e in enumerate(seen) if _is("exited", "base")(e))
    if strategy == "one_for_all":
        # stopped after base's failure, and started again before base
        assert any(_is("exited", "before")(e) for e in seen[last_failure:])
        assert _starts_of(seen[last_failure:], "before", old["before"])
    else:
        assert _starts_of(seen, "before", old["before"]) == []
    dep = tree.wait_event(_is("restarted", "dependant"))
    st = tree.child("dependant")
    assert (st["state"], st["pid"], st["restarts"]) == ("running", dep["pid"], 1)


LAST_RESORT_GROUP = """
[supervisor]
strategy = "rest_for_one"
intensity = 1
period_s = 60
backoff = {{ initial_ms = 10, factor = 2.0, max_ms = 20 }}
[[children]]
id = "base"
start = "tests.fakes:FakeActor"
config = {{ fail_at_start_if = "{flag}" }}
[[children]]
id = "dependant"
start = "tests.fakes:FakeActor"
"""


def test_the_roots_last_resort_retries_the_whole_group_in_start_order(make_tree, tmp_path):
    """`base` exhausts its intensity: the root retries it, 1 s on, and its dependant with
    it, after it; the dependant is not left running without it meanwhile."""
    flag = tmp_path / "fail"
    tree = make_tree(LAST_RESORT_GROUP.format(flag=flag)).start()
    old = tree.child("dependant")["pid"]
    flag.write_text("")
    tree.call("supervisor", "sup.kill", {"child": "base"})
    seen = _events_until(tree, _is("escalated", "base"))
    assert seen[-1]["action"] == "retry"
    dependant = tree.child("dependant")
    assert (dependant["state"], dependant["pid"]) == ("stopped", None)
    flag.unlink()
    seen += _events_until(tree, _is("restarted", "base"))
    assert _starts_of(seen, "dependant", old) == [], "the dependant ran while base was down"
    dep = tree.wait_event(_is("restarted", "dependant"))
    assert tree.child("dependant")["pid"] == dep["pid"]
    assert tree.call("dependant", "fake.work")["pid"] == dep["pid"]


FALLBACK_LEFT = """
[supervisor]
intensity = 1
period_s = {period}
backoff = {{ initial_ms = 10, factor = 2.0, max_ms = 20 }}
[[children]]
id = "flaky"
start = "tests.fakes:FakeActor"
fallbacks = ["degraded"]
config = {{ fail_primary_if = "{flag}" }}
"""


def _onto_its_fallback(tree) -> dict:
    """Kill `flaky` while its primary fails at start: its fallback is engaged, and serves."""
    tree.call("supervisor", "sup.kill", {"child": "flaky"})
    seen = _events_until(tree, _is("restarted", "flaky"))
    assert any(_is("fallback", "flaky")(e) for e in seen) and seen[-1]["fallback"] == "degraded"
    return seen[-1]


def test_an_explicit_restart_starts_a_child_on_its_primary_again(make_tree, tmp_path):
    flag = tmp_path / "fail"
    tree = make_tree(FALLBACK_LEFT.format(period=60, flag=flag)).start()
    flag.write_text("")
    _onto_its_fallback(tree)
    # Asked while its primary still fails: the primary is tried (and fails), and the
    # storm engages the fallback again.
    tree.call("supervisor", "sup.restart", {"child": "flaky"})
    seen = _events_until(tree, _is("restarted", "flaky"))
    assert any(_is("exited", "flaky")(e) and e["detail"].startswith("died during start")
               for e in seen)
    assert any(_is("fallback", "flaky")(e) for e in seen) and seen[-1]["fallback"] == "degraded"
    flag.unlink()
    tree.call("supervisor", "sup.restart", {"child": "flaky"})
    back = tree.wait_event(_is("restarted", "flaky"))
    assert back["fallback"] is None
    assert tree.child("flaky")["fallback"] is None


def test_a_fallback_that_served_for_the_intensity_period_gives_way_to_the_primary(
        make_tree, tmp_path):
    flag = tmp_path / "fail"
    period = 1.0
    tree = make_tree(FALLBACK_LEFT.format(period=period, flag=flag)).start()
    flag.write_text("")
    up = _onto_its_fallback(tree)
    flag.unlink()
    # Served its fallback for the period (uptime counts from the fork, serving from ready).
    wait_for(lambda: tree.child("flaky")["uptime_s"] >= period + up["start_ms"] / 1000 + 0.1,
             "the fallback serving for the intensity period")
    tree.call("supervisor", "sup.kill", {"child": "flaky"})
    back = tree.wait_event(_is("restarted", "flaky"))
    assert back["fallback"] is None and tree.child("flaky")["fallback"] is None


GROUP_BACKING_OFF = """
[supervisor]
strategy = "rest_for_one"
stable_after_s = 600
backoff = { initial_ms = 60000, factor = 2.0, max_ms = 60000 }
[[children]]
id = "base"
start = "tests.fakes:FakeActor"
config = { crash_after = 1 }
[[children]]
id = "dependant"
start = "tests.fakes:FakeActor"
"""


def test_a_restart_of_a_dependant_waiting_for_its_group_restarts_the_group_in_order(
        make_tree):
    """`base` died young twice and waits out a minute's back-off, `dependant` stopped
    behind it. A `sup.restart` of the dependant started it at once, before what it depends
    on, and it was left out when `base` came up: now the group's restart runs, `base`
    first."""
    tree = make_tree(GROUP_BACKING_OFF).start()
    pid = tree.child("base")["pid"]
    earlier = {pid, tree.child("dependant")["pid"]}  # (their starts may still be unread)
    with contextlib.suppress(MoorageError):
        tree.call("base", "fake.work", timeout=5)
    wait_for(lambda: tree.wait_all_running()["children"][0]["pid"] != pid,
             "the group restarted at once")
    old = {c: tree.child(c)["pid"] for c in ("base", "dependant")}
    earlier |= set(old.values())
    with contextlib.suppress(MoorageError):  # a second young death: a minute of back-off
        tree.call("base", "fake.work", timeout=5)
    wait_for(lambda: (tree.child("base")["state"], tree.child("dependant")["state"])
             == ("backoff", "stopped"), "the group waiting")
    tree.call("supervisor", "sup.restart", {"child": "dependant"})
    seen = _events_until(tree, lambda e: bool(_starts_of([e], "dependant", old["dependant"])))
    starts = [e["child"] for e in seen if e["event"] in ("started", "restarted")
              and e["pid"] not in earlier]
    assert starts == ["base", "dependant"], seen
    tree.wait_all_running()
