"""A tree that keeps going when its own machinery is killed: a zygote killed is replaced and
its children live on (their supervisor adopts them), deaths of children that had been serving
never add up to a give-up, and the tree still leaves nothing behind when its root dies."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest

from moorage.actors.runtime.beat import BeatBoard
from moorage.supervisor.zygote import ZygoteHandle
from tests.conftest import assert_all_gone, descendants, wait_pid_exit
from tests.waiting import open_gate, wait_for

pytestmark = pytest.mark.timeout(120)

TWO = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
[[children]]
id = "b"
start = "tests.fakes:FakeActor"
"""

NESTED = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
[[children]]
id = "inner"
type = "supervisor"
[[children.children]]
id = "c"
start = "tests.fakes:FakeActor"
"""


def _killed_comes_back_from_the_zygote(tree, cid: str) -> None:
    """SIGKILL `cid`: it is restarted, forked by the zygote that serves now, and answers."""
    os.kill(tree.child(cid)["pid"], signal.SIGKILL)
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == cid)
    assert psutil.Process(back["pid"]).ppid() == tree.status()["zygote"]["pid"]
    assert tree.call(cid, "fake.work")["pid"] == back["pid"]


def _beat_board_fds(pid: int) -> list[tuple[int, bool]]:
    """The beat board's fds in process `pid`, each with whether it is closed at exec."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "moorage-beats" not in os.readlink(f"/proc/{pid}/fd/{name}"):
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except OSError:
            continue  # (an fd closed meanwhile)
        out.append((int(name), bool(flags & 0o2000000)))  # O_CLOEXEC
    return out


def test_a_replacement_zygote_and_its_children_close_the_beat_board_at_exec(make_tree):
    """A replacement zygote is a new program, given the supervisor's beat board as an fd it
    had to inherit; it and the children it forks close it at exec, as the first zygote's do:
    a program a child runs (a shell the keeper starts) gets no handle on the board."""
    tree = make_tree(TWO).start()
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted")
    os.kill(tree.child("a")["pid"], signal.SIGKILL)
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
    assert psutil.Process(back["pid"]).ppid() == ev["zygote_pid"]
    for pid in (ev["zygote_pid"], back["pid"]):
        fds = _beat_board_fds(pid)
        assert fds and all(cloexec for _, cloexec in fds), (pid, fds)


def test_a_killed_zygote_is_replaced_and_its_children_live_on(make_tree):
    tree = make_tree(TWO).start()
    before = tree.status()
    pids = {c["id"]: c["pid"] for c in before["children"]}
    old = before["zygote"]["pid"]
    os.kill(old, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted")
    assert ev["old_pid"] == old and ev["restarts"] == 1
    # the new zygote forks its spare (known once it has said hello)
    after = wait_for(lambda: (s := tree.status())["zygote"]["spare"] and s,
                     "the new zygote's spare")
    spare = after["zygote"]["spare"]
    assert after["zygote"] == {"pid": ev["zygote_pid"], "restarts": 1, "spare": spare}
    assert spare not in (old, ev["zygote_pid"])
    assert psutil.Process(spare).ppid() == ev["zygote_pid"]
    assert {c["id"]: c["pid"] for c in after["children"]} == pids  # the same processes
    assert all(c["state"] == "running" for c in after["children"])
    assert tree.call("a", "fake.work")["pid"] == pids["a"]
    # An adopted child's death is seen (we reap it now) and it comes back from the new zygote.
    os.kill(pids["a"], signal.SIGKILL)
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
    assert back["pid"] != pids["a"]
    assert psutil.Process(back["pid"]).ppid() == ev["zygote_pid"]
    assert tree.call("a", "fake.work")["pid"] == back["pid"]


def test_from_the_first_death_on_a_spare_zygote_stands_by_and_takes_over_at_once(make_tree):
    """The spare, its modules already imported, becomes the zygote the moment the next one
    dies (no new interpreter to wait for), and another spare is started; a dead spare is
    replaced too."""
    tree = make_tree(TWO).start()
    assert tree.status()["zygote"]["spare"] is None  # an idle tree has none
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted")
    spare = wait_for(lambda: tree.status()["zygote"]["spare"], "a spare")
    os.kill(spare, signal.SIGKILL)  # the spare itself: replaced
    wait_for(lambda: tree.status()["zygote"]["spare"] not in (None, spare),
             "a new spare after the first one died")
    first = tree.status()["zygote"]
    os.kill(first["pid"], signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["restarts"] == 2)
    assert ev["zygote_pid"] == first["spare"]
    now = wait_for(lambda: (z := tree.status()["zygote"])["spare"] and z, "the next spare")
    assert now["pid"] == first["spare"] and now["spare"] != first["spare"]
    assert psutil.Process(now["spare"]).ppid() == now["pid"]  # forked by the zygote
    a = tree.child("a")["pid"]
    os.kill(a, signal.SIGKILL)
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
    assert psutil.Process(back["pid"]).ppid() == first["spare"]
    assert tree.call("a", "fake.work")["pid"] == back["pid"]


def test_a_zygote_killed_again_and_again_is_replaced_each_time_by_the_spare_it_forked(
        make_tree):
    """Each spare is forked by the zygote it stands by for (ready in a millisecond, its
    modules imported), so a zygote killed as soon as it serves is replaced at once, every
    time, and children still start."""
    tree = make_tree(TWO).start()
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["restarts"] == 1)
    for n in range(2, 12):
        z = wait_for(lambda: (z := tree.status()["zygote"])["spare"] and z, "a spare")
        assert psutil.Process(z["spare"]).ppid() == z["pid"]
        os.kill(z["pid"], signal.SIGKILL)
        ev = tree.wait_event(lambda e, n=n: e["event"] == "zygote_restarted"
                             and e["restarts"] == n)
        assert ev["zygote_pid"] == z["spare"]
    _killed_comes_back_from_the_zygote(tree, "a")


def test_after_a_zygote_was_replaced_the_root_killed_still_leaves_no_process(make_tree):
    tree = make_tree(NESTED).start()
    root = tree.pid
    inner_zygote = tree.child("inner")["tree"]["zygote"]["pid"]
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["supervisor"] ==
                    "supervisor")
    os.kill(inner_zygote, signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["supervisor"] == "inner")
    tree.wait_all_running()
    wait_for(lambda: tree.status()["zygote"]["spare"]
             and tree.child("inner")["tree"]["zygote"]["spare"], "both spares forked")
    procs = [psutil.Process(root), *descendants(root)]
    # root, its zygote and its spare, a, inner, inner's zygote and its spare, c
    assert len(procs) == 8
    os.kill(root, signal.SIGKILL)
    assert wait_pid_exit(root, 10)
    assert_all_gone(procs)


KILLED = """
[supervisor]
intensity = 2
period_s = 60
stable_after_s = 0
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""


def test_deaths_of_a_child_that_was_serving_never_add_up_to_a_give_up(make_tree):
    tree = make_tree(KILLED).start()
    for _ in range(6):  # three times the intensity
        pid = tree.child("a")["pid"]
        assert tree.call("a", "fake.work")["pid"] == pid  # serving
        os.kill(pid, signal.SIGKILL)
        assert wait_pid_exit(pid, 10)
        ev = tree.wait_event(lambda e: e["event"] in ("restarted", "fallback", "escalated")
                             and e.get("child") == "a")
        assert ev["event"] == "restarted", ev
    assert tree.child("a")["restarts"] == 6 and tree.child("a")["fallback"] is None


def _tracer(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _traced(pid: int, log: Path, *options: str) -> Iterator[subprocess.Popen]:
    """strace on `pid` (its fault injection kills or holds it at a chosen system call),
    attached when this yields; skips the test where strace is missing or cannot trace."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (.ci/run installs it)")
    strace = subprocess.Popen(["strace", "-qq", "-p", str(pid), "-o", str(log), *options],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: strace.poll() is not None or _tracer(pid) == strace.pid,
                 "strace attached or failed")
        if strace.poll() is not None:
            pytest.skip(f"strace cannot trace here: {strace.stderr.read().decode()[:200]}")
        yield strace
    finally:
        if strace.poll() is None:
            strace.kill()
        strace.wait()
        strace.stderr.close()


def _calls(log: Path) -> list[tuple[int, str]]:
    """strace's -f log as (pid, line) in the order the calls began, spaces squeezed; a call
    another process's line interrupted ("<unfinished ...>", then "<... name resumed>") made
    whole again at its start, as strace writes it when nothing interleaves."""
    out: list[tuple[int, str]] = []
    open_at: dict[int, int] = {}  # pid -> the index of its unfinished call
    for line in log.read_text().splitlines():
        pid_text, _, rest = line.partition(" ")
        pid, rest = int(pid_text), " ".join(rest.split())
        if rest.endswith(" <unfinished ...>"):
            open_at[pid] = len(out)
            out.append((pid, rest[: -len(" <unfinished ...>")]))
        elif rest.startswith("<... ") and pid in open_at:
            i = open_at.pop(pid)
            out[i] = (pid, " ".join((out[i][1] + rest.split(" resumed>", 1)[1]).split()))
        else:
            out.append((pid, rest))
    return out


def _processes_of_a(tree) -> list[int]:
    return [p.pid for p in descendants(tree.pid) if p.cmdline()[:1] and
            p.cmdline()[0].endswith(": a")]


def test_a_child_forked_by_a_zygote_killed_before_it_told_exits_unstarted(make_tree, tmp_path):
    """The zygote forks a restarted child and dies before it can tell the supervisor the
    child's pid (strace's fault injection kills it at that very send). The supervisor starts
    the child again from the new zygote; the first fork must not start beside it (two of one
    actor bind one endpoint, and the supervisor knows only one of them)."""
    tree = make_tree(TWO).start()
    before = tree.status()
    zygote = before["zygote"]["pid"]
    a = next(c["pid"] for c in before["children"] if c["id"] == "a")
    log = tmp_path / "strace.log"
    # the zygote's first send is a's "exited", its second the new a's "spawned": killed there
    with _traced(zygote, log, "-f", "-e", "trace=sendto,exit_group,bind",
                 "-e", "inject=sendto:signal=SIGKILL:when=2") as strace:
        os.kill(a, signal.SIGKILL)
        ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted")
        assert ev["old_pid"] == zygote
        back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
        assert psutil.Process(back["pid"]).ppid() == ev["zygote_pid"]
        wait_for(lambda: strace.poll() is not None, "strace's end (its tracee died)")
    lines = _calls(log)
    mine = [text for pid, text in lines if pid == zygote]
    assert "spawned" in mine[-2] and mine[-1] == "+++ killed by SIGKILL +++", lines
    # the first fork: traced with its zygote, its one call was to exit, before any bind
    forks = {pid for pid, _ in lines} - {zygote}
    assert len(forks) == 1, lines
    (first,) = forks
    assert [text for pid, text in lines if pid == first] == ["exit_group(75) = ?"], lines
    assert first != back["pid"]
    # and one a runs: the one the supervisor knows, answering
    assert _processes_of_a(tree) == [back["pid"]]
    assert tree.call("a", "fake.work")["pid"] == back["pid"]


def test_a_death_its_zygote_reaped_and_died_before_telling_is_not_waited_for_in_vain(
        make_tree, tmp_path):
    """The zygote reaps a child and is killed at the very send of its "exited" (strace's
    fault injection). The child is not our zombie to reap and no word of it will come:
    found ended when the zygote is replaced, it is restarted (it stayed "running" for good,
    its heartbeats missed and its SIGKILL refused for ever)."""
    tree = make_tree(TWO).start()
    before = tree.status()
    zygote = before["zygote"]["pid"]
    a = next(c["pid"] for c in before["children"] if c["id"] == "a")
    with _traced(zygote, tmp_path / "strace.log", "-e", "trace=sendto",
                 "-e", "inject=sendto:signal=SIGKILL:when=1") as strace:
        os.kill(a, signal.SIGKILL)
        ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted")
        assert ev["old_pid"] == zygote
        back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
        wait_for(lambda: strace.poll() is not None, "strace's end (its tracee died)")
    assert back["pid"] != a
    assert tree.call("a", "fake.work")["pid"] == back["pid"]
    exited = tree.status()["children"][0]["last_exit"]
    assert "untold" in str(exited), exited


@contextlib.contextmanager
def _descriptors_used_up(tree) -> Iterator[None]:
    """The root supervisor at its limit of descriptors, as with too many sessions in
    custody: its soft limit brought to 64 above what it holds, then a child leaving more
    than that with it (fake.custody). Let go (taken back, the limit as it was) after."""
    root = psutil.Process(tree.pid)
    soft, hard = root.rlimit(psutil.RLIMIT_NOFILE)
    limit = len(os.listdir(f"/proc/{tree.pid}/fd")) + 64
    root.rlimit(psutil.RLIMIT_NOFILE, (limit, hard))
    try:
        # one a datagram, so that every slot is taken (more than one would find the last
        # few too few, and be cut off)
        tree.call("b", "fake.custody", {"keys": 100, "fds": 1})
        wait_for(lambda: len(os.listdir(f"/proc/{tree.pid}/fd")) >= limit,
                 "the supervisor's descriptors all used")
        yield
    finally:
        root.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        tree.call("b", "fake.custody", {"keys": 0})


def test_a_zygote_that_cannot_be_replaced_for_want_of_descriptors_is_replaced_later(
        make_tree):
    """The supervisor has no descriptor left when its zygote dies: the replacement cannot
    be made. It is tried again a second later, and once descriptors are free it serves,
    and children start from it (the failure escaped the takeover: the supervisor kept the
    dead zygote as its own, and no child could start again)."""
    tree = make_tree(TWO).start()
    zygote = tree.status()["zygote"]["pid"]
    log = tree.state_dir / "logs" / "supervisor.log"
    with _descriptors_used_up(tree):
        os.kill(zygote, signal.SIGKILL)
        wait_for(lambda: "no zygote could replace" in log.read_text(),
                 "the replacement refused for want of descriptors")
    ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted")
    assert ev["old_pid"] == zygote
    a = next(c["pid"] for c in tree.status()["children"] if c["id"] == "a")
    os.kill(a, signal.SIGKILL)
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
    assert psutil.Process(back["pid"]).ppid() == ev["zygote_pid"]
    assert tree.call("a", "fake.work")["pid"] == back["pid"]


def test_a_child_its_zygote_told_of_before_dying_is_adopted_not_started_twice(
        make_tree, tmp_path):
    """The zygote sends the restarted child's "spawned", and dies; the supervisor, stopped
    meanwhile, then has both the zygote's death and that message waiting. What the dead
    zygote said is read first: the child it forked is adopted, not started again beside it."""
    tree = make_tree(TWO).start()
    before = tree.status()
    zygote = before["zygote"]["pid"]
    a = next(c["pid"] for c in before["children"] if c["id"] == "a")
    root = psutil.Process(tree.pid)
    # its second send ("spawned") waits 0.5 s, and the close after it kills the zygote (not
    # its fork: no -f)
    with _traced(zygote, tmp_path / "strace.log", "-e", "trace=sendto,close",
                 "-e", "inject=sendto:delay_enter=500000:when=2",
                 "-e", "inject=close:signal=SIGKILL:when=2"):
        os.kill(a, signal.SIGKILL)
        # asked of the zygote, which now sits in its delayed send: the supervisor stops
        wait_for(lambda: (c := next(c for c in tree.status()["children"] if c["id"] == "a"))
                 ["state"] == "starting" and c["pid"] is None, "a's start asked")
        root.suspend()
        try:
            wait_for(lambda: not psutil.pid_exists(zygote) or
                     psutil.Process(zygote).status() == psutil.STATUS_ZOMBIE, "the zygote's end")
        finally:
            root.resume()
    # (in either order: the adopted child may say ready while its zygote's death is read)
    seen: dict[str, dict] = {}
    while len(seen) < 2:
        e = tree.wait_event(lambda e: e["event"] == "zygote_restarted" or (
            e["event"] == "restarted" and e["child"] == "a"))
        seen[e["event"]] = e
    ev, back = seen["zygote_restarted"], seen["restarted"]
    wait_for(lambda: all(c["state"] == "running" for c in tree.status()["children"]),
             "every child running")
    assert _processes_of_a(tree) == [back["pid"]]
    assert psutil.Process(back["pid"]).ppid() != ev["zygote_pid"]  # the dead zygote's
    assert tree.call("a", "fake.work")["pid"] == back["pid"]


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """SIGSTOP `pid` for the block: a zygote stuck as if in an endless import or a swap
    storm. It is let go after (if it still lives) so that nothing stays stopped."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def test_a_death_its_stopped_zygote_cannot_tell_is_seen_and_the_child_restarted(make_tree):
    """The zygote reaps the children and tells how they died; stopped, it tells nothing. The
    child's pidfd still says it died: the zygote is replaced, and the child, its zombie,
    passes to the supervisor, which reaps it with its true status and starts it again."""
    tree = make_tree(TWO).start()
    zygote = tree.status()["zygote"]["pid"]
    a = tree.child("a")["pid"]
    with _stopped(zygote):
        os.kill(a, signal.SIGKILL)
        ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted")
        assert ev["old_pid"] == zygote and ev["reason"].startswith("a's exit went untold"), ev
        died = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "a")
        assert (died["pid"], died["signal"], died["reason"]) == (a, signal.SIGKILL, "abnormal")
        back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
        assert psutil.Process(back["pid"]).ppid() == ev["zygote_pid"]
        assert wait_pid_exit(zygote, 10)  # killed, though stopped
    assert tree.call("a", "fake.work")["pid"] == back["pid"]
    assert tree.call("b", "fake.work")["pid"] == tree.child("b")["pid"]


# TWO, b non-essential (sup.shed stops it and starts it again: a start asked at will), and a
# zygote's answer to a spawn waited for a minute (longer than any wait of the tests)
ONE_SHED = TWO.replace("[supervisor]\n", "[supervisor]\nstart_timeout_ms = 60000\n") + \
    "essential = false\n"


@pytest.mark.parametrize("spare", ["running", "stopped"])
def test_a_start_its_stopped_zygote_leaves_unanswered_is_asked_again_of_its_successor(
        make_tree, spare):
    """A spawn the zygote never answers (stopped: no fork, no `spawned`) leaves the child
    starting with no process, and every start and restart queued behind it. A zygote
    stopped for as many ticks as a child's missed beats while a fork waits is replaced (not
    after start_timeout_ms), and the start asked of the new one: its spare, or a new
    program when the spare is stopped too."""
    tree = make_tree(ONE_SHED).start()
    a = tree.child("a")["pid"]
    assert tree.call("supervisor", "sup.shed", {"on": True})["shed"] == ["b"]
    wait_for(lambda: tree.child("b")["state"] == "shed", "b shed")
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)  # from now on, a spare
    z = wait_for(lambda: (z := tree.status()["zygote"])["spare"] and z, "a spare")
    with _stopped(z["pid"]), _stopped(z["spare"] if spare == "stopped" else z["pid"]):
        assert tree.call("supervisor", "sup.shed", {"on": False})["resumed"] == ["b"]
        ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted"
                             and e["old_pid"] == z["pid"])
        assert ev["old_pid"] == z["pid"], ev
        assert ev["reason"] == "stopped for 3 ticks while a fork waited for it", ev
        assert (ev["zygote_pid"] == z["spare"]) is (spare == "running")
        up = tree.wait_event(lambda e: e["event"] == "started" and e["child"] == "b")
        assert psutil.Process(up["pid"]).ppid() == ev["zygote_pid"]
        assert wait_pid_exit(z["pid"], 10)
        if spare == "stopped":
            assert wait_pid_exit(z["spare"], 10)  # (killed, though stopped)
    assert tree.call("b", "fake.work")["pid"] == up["pid"]
    assert tree.child("a")["pid"] == a  # adopted, serving on
    assert tree.call("a", "fake.work")["pid"] == a


def test_a_tree_whose_zygote_is_stopped_still_stops_and_leaves_nothing(make_tree):
    """Stopping the tree waits for each child's death, which the zygote tells: stopped, it
    would hold the stop for ever. It is killed, and the children's deaths reaped here."""
    tree = make_tree(NESTED).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    zygote = tree.status()["zygote"]["pid"]
    with _stopped(zygote):
        tree.call("supervisor", "sup.stop")
        assert wait_pid_exit(tree.pid, 60), tree.output()
    assert tree.proc.wait(10) == 0
    assert_all_gone(procs)


def test_a_spare_its_zygote_reaped_is_not_taken_for_a_live_one(make_tree):
    """The spare dies while its zygote lives (the zygote, its parent, reaps it: no SIGCHLD
    comes to the supervisor for it), and then the zygote dies, all while the supervisor is
    stopped. When it runs again it learns of both in either order (the zygote's SIGCHLD, the
    spare's end closed); the dead spare must never become the zygote (every start would be
    asked of no one): a new zygote takes over, and children still start."""
    tree = make_tree(TWO).start()
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["restarts"] == 1)
    z = wait_for(lambda: (z := tree.status()["zygote"])["spare"] and z, "a spare")
    root = psutil.Process(tree.pid)
    root.suspend()
    try:
        os.kill(z["spare"], signal.SIGKILL)
        assert wait_pid_exit(z["spare"], 10)
        wait_for(lambda: not psutil.pid_exists(z["spare"]), "the spare reaped by its zygote")
        os.kill(z["pid"], signal.SIGKILL)
        assert wait_pid_exit(z["pid"], 10)
    finally:
        root.resume()
    ev = tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["restarts"] == 2)
    assert ev["old_pid"] == z["pid"] and ev["zygote_pid"] != z["spare"], ev
    _killed_comes_back_from_the_zygote(tree, "a")


def test_a_stop_while_a_spawn_is_unanswered_still_ends_the_tree(make_tree):
    """A child asked of a stopped zygote has no process to signal: its stop waits for the
    fork, which never comes. After start_timeout_ms the zygote is replaced, there is nothing
    to stop, and the tree ends, leaving nothing behind. (start_timeout_ms 10 s: its whole
    wait, and still far above a child's start on a loaded machine.)"""
    tree = make_tree(ONE_SHED.replace("start_timeout_ms = 60000", "start_timeout_ms = 10000"))
    tree.start()
    assert tree.call("supervisor", "sup.shed", {"on": True})["shed"] == ["b"]
    wait_for(lambda: tree.child("b")["state"] == "shed", "b shed")
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    zygote = tree.status()["zygote"]["pid"]
    with _stopped(zygote):
        assert tree.call("supervisor", "sup.shed", {"on": False})["resumed"] == ["b"]
        b = tree.child("b")
        assert (b["state"], b["pid"]) == ("starting", None)
        tree.call("supervisor", "sup.stop")
        assert wait_pid_exit(tree.pid, 60), tree.output()
    assert tree.proc.wait(10) == 0
    assert_all_gone(procs)


def test_a_zygote_started_as_a_new_program_serves_before_it_loads_zeromq_or_logging():
    """What a replacement zygote imports before it serves is what its start costs, and a
    supervisor whose zygote is killed faster than that starts no child at all: the boot
    (spawn_zygote's) loads neither ZeroMQ, the logging library, the actor runtime nor the
    launchers; those come between requests, or in the child that needs them first."""
    heavy = ["asyncio", "logging", "loguru", "moorage.actors.runtime.actor",
             "moorage.supervisor.launch", "setproctitle", "zmq"]
    boot = ("import sys; from moorage.supervisor import zygote; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-P", "-c", boot], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == ""
    from moorage.supervisor import launch, zygote

    assert launch.LAUNCHERS is zygote.LAUNCHERS
    assert sorted(zygote.LAUNCHERS) == sorted(zygote.KINDS)
    assert zygote.LAUNCH_STEPS[-1] == launch.__name__


def test_a_ready_queued_behind_the_reset_of_a_dead_zygotes_socket_is_read():
    """A zygote killed with a request of ours unread, then the last copy of its end (its
    starting child's) closed after the child's `ready`: the kernel reports the reset once,
    before the queued `ready`. It is read, and the end after it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    board = BeatBoard()
    handle = ZygoteHandle(0, ours, board, [])
    try:
        ours.send(msgpack.packb({"cmd": "fork_spare"}))  # never read: the zygote died
        theirs.send(msgpack.packb({"ev": "ready", "pid": 4242}))
        theirs.close()
        assert handle.read_events() == [{"ev": "ready", "pid": 4242, "from": os.getpid()}]
        with pytest.raises(EOFError):
            handle.read_events()
    finally:
        ours.close()
        os.close(board.fd)



GATED = TWO.replace('id = "a"\nstart = "tests.fakes:FakeActor"\n',
                    'id = "a"\nstart = "tests.fakes:FakeActor"\nconfig = { start_gate = "%s" }\n')


def test_a_child_whose_zygote_died_with_a_request_unread_is_taken_ready_not_timed_out(
        make_tree, tmp_path):
    """The zygote forks `a`, which is still starting when a request of ours (the next
    spare's fork) reaches the zygote, stopped, and the zygote is killed with it unread. Its
    end's last copy is then `a`'s, closed after `a` says ready: the supervisor reads that
    `ready` (behind the reset the kernel reports first) and `a` runs, instead of being
    killed at start_timeout_ms with every start queued behind it held as long."""
    gate = tmp_path / "gate"
    tree = make_tree(GATED.replace("%s", str(gate)).replace(
        "[supervisor]\n", "[supervisor]\nstart_timeout_ms = 60000\n")).start()
    os.kill(tree.status()["zygote"]["pid"], signal.SIGKILL)  # from now on, a spare
    z = wait_for(lambda: (z := tree.status()["zygote"])["spare"] and z, "a spare")
    os.mkfifo(gate)
    os.kill(tree.child("a")["pid"], signal.SIGKILL)
    a = wait_for(lambda: (c := tree.child("a"))["state"] == "starting" and c["pid"],
                 "a forked, held at its gate")
    assert psutil.Process(a).ppid() == z["pid"]
    # The supervisor knows `a` once the zygote's `spawned` is read; `a` waits on for the
    # zygote's byte that follows it (wait_told), and its launcher names it only after: a
    # zygote stopped in between (it can be, on a loaded machine) would die with `a` untold,
    # and `a` would exit before its gate.
    wait_for(lambda: a in _processes_of_a(tree), "a told by its zygote (named by its launcher)")
    with _stopped(z["pid"]):
        os.kill(z["spare"], signal.SIGKILL)  # the next spare is asked of the stopped zygote
        wait_for(lambda: tree.status()["zygote"]["spare"] != z["spare"], "the spare's end")
        os.kill(z["pid"], signal.SIGKILL)
        assert wait_pid_exit(z["pid"], 10)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["old_pid"] == z["pid"])
    # a goes on: its `ready` sent, then its copy of the end closed, all while the supervisor
    # is stopped (as a busy one is: else it may read the `ready` before the close)
    root = psutil.Process(tree.pid)
    root.suspend()
    try:
        open_gate(gate)
        gate.unlink()
        assert tree.call("a", "fake.work")["pid"] == a  # (served: its `ready` went first)
    finally:
        root.resume()
    back = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "a")
    assert back["pid"] == a
    assert tree.child("a")["pid"] == a
