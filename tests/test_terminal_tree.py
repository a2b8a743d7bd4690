"""The terminals supervisor in a real tree (`moorage up`): the shells outlive a SIGKILLed
terminal actor, or a SIGKILLed keeper, with every output byte; sessions that die with both
(the terminals supervisor killed) are reported and started again once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import msgpack
import pytest
import zmq

from moorage.actors.terminal.keeper.ptys import process_start
from moorage.actors.terminal.specs import ExecRecords
from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import Reply, StreamMessage, decode_reply, encode_request
from moorage.protocol.errors import MoorageError
from tests.conftest import Tree, pid_running, wait_pid_exit
from tests.pressure_support import TELLER, tell
from tests.terminal_support import (
    Commands,
    Output,
    RawOutput,
    env_for,
    make_home,
    terminal_tree,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TREE = terminal_tree()

LINES = 1_500_000  # about 11 MB of output: still running when the actor is killed


def expected_seq(n: int) -> bytes:
    return b"".join(b"%d\r\n" % i for i in range(1, n + 1))


def heavy_output(make_tree, tmp_path, config: str = TREE
                 ) -> tuple[Tree, dict[str, Any], RawOutput, Commands]:
    """A tree whose bash session is in the middle of `seq 1 LINES` (500 KB of it seen): the
    tree, the session (term.create's answer), its output as a subscriber sees it, and its
    command records (subscribed before the command)."""
    tree = make_tree(config).start()
    c = tree.client
    s = c.call("terminal", "term.create",
               {"shell": "bash", "env": env_for(make_home(tmp_path))}, timeout=30)
    out = RawOutput(c, s["session"])
    out.wait_live()
    cmds = Commands(c, s["session"])
    c.call("terminal", "term.write", {"session": s["session"],
                                      "data": f"seq 1 {LINES}; echo seq-''done\r"})
    out.until(lambda d: len(d) > 500_000)
    return tree, s, out, cmds


def test_sigkill_of_the_terminal_during_heavy_output_keeps_the_shell_and_every_byte(
        make_tree, tmp_path):
    tree, s, out, cmds = heavy_output(make_tree, tmp_path)
    c, sid = tree.client, s["session"]
    keeper = tree.child("ptykeeper")
    victim = tree.child("terminal")["pid"]
    os.kill(victim, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "terminal")
    assert ev["pid"] != victim
    # the shell was still writing after its reader died
    (held,) = c.call("ptykeeper", "pty.list")["sessions"]
    total = len(expected_seq(LINES))
    assert held["pid"] == s["pid"] and held["read"] < total

    data = out.until(lambda d: b"seq-done\r\n" in d, timeout=120)
    assert expected_seq(LINES) in data  # in order, whole, once: the collector checks repeats
    assert data.count(b"\r\n%d\r\n" % (LINES // 2)) == 1
    assert len(out.epochs) >= 2 and out.repeated > 0  # two publishers; the tail came again
    end = cmds.next_event("end")
    assert end["exit_code"] == 0

    (listed,) = c.call("terminal", "term.list")["sessions"]
    assert listed["pid"] == s["pid"]
    assert len(out.until(lambda d: len(d) >= listed["offset"])) == listed["offset"]
    r = c.call("terminal", "term.exec", {"session": sid, "command": "echo after"}, timeout=30)
    assert (r["exit_code"], r["output"], r["mode"]) == (0, "after", "integration")
    after = tree.child("ptykeeper")
    assert after["pid"] == keeper["pid"] and after["restarts"] == 0
    out.close()
    cmds.close()


def test_a_long_running_command_keeps_running_through_a_terminal_restart(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    (home / "go").write_text("")
    out = RawOutput(c, sid)
    out.wait_live()
    script = "while [ -e ~/go ]; do sleep 0.05; done; echo lo''op-ended $$"
    c.call("terminal", "term.write", {"session": sid, "data": script + "\r"})
    cmds = Commands(c, sid)
    cmds.next_event("start")
    out.until(lambda d: b"633;E;" in d)
    os.kill(tree.child("terminal")["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "terminal")
    (listed,) = c.call("terminal", "term.list")["sessions"]
    assert listed["state"] == "running"
    (home / "go").unlink()  # the same loop, in the same shell, sees it
    data = out.until(lambda d: b"loop-ended" in d)
    assert f"loop-ended {listed['pid']}".encode() in data
    assert cmds.next_event("end")["exit_code"] == 0  # seen by the new actor
    assert c.call("terminal", "term.exec", {"session": sid, "command": "echo $$"},
                  timeout=30)["output"] == str(listed["pid"])
    out.close()
    cmds.close()


def test_sigkill_of_the_keeper_during_heavy_output_keeps_the_shell_and_every_byte(
        make_tree, tmp_path):
    tree, s, out, cmds = heavy_output(make_tree, tmp_path)
    c, sid = tree.client, s["session"]
    terminal = tree.child("terminal")
    victim = tree.child("ptykeeper")["pid"]
    os.kill(victim, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "ptykeeper")
    assert ev["pid"] != victim
    data = out.until(lambda d: b"seq-done\r\n" in d, timeout=120)
    assert expected_seq(LINES) in data  # in order, whole, once: the collector checks repeats
    assert data.count(b"\r\n%d\r\n" % (LINES // 2)) == 1
    assert cmds.next_event("end")["exit_code"] == 0
    (held,) = c.call("ptykeeper", "pty.list")["sessions"]
    assert held["pid"] == s["pid"] and held["adopted"]  # the same shell, handed over
    (listed,) = c.call("terminal", "term.list")["sessions"]
    assert listed["pid"] == s["pid"]
    r = c.call("terminal", "term.exec", {"session": sid, "command": "echo after $$"},
               timeout=30)
    assert (r["exit_code"], r["output"], r["mode"]) == (0, f"after {s['pid']}", "integration")
    after = tree.child("terminal")
    assert after["pid"] == terminal["pid"] and after["restarts"] == 0  # one_for_one
    # its end, seen by the new keeper through the supervisor that reaped it (its parent
    # died: the shell is that supervisor's now)
    ends = c.subscribe("terminal", ["term.session"], from_seq=1)
    c.call("terminal", "term.write", {"session": sid, "data": "exit 4\r"})
    ended = ends.next(timeout=30)
    while not (isinstance(ended, StreamMessage) and ended.body.get("event") == "exited"):
        ended = ends.next(timeout=30)
    assert ended.body["session"] == sid and ended.body["code"] == 4
    ends.close()
    out.close()
    cmds.close()


def test_output_a_new_keeper_read_before_the_terminal_came_back_is_taken_and_it_reads_on(
        make_tree, tmp_path):
    """A keeper restarted while the terminal cannot connect (stopped here) takes the session
    from custody and reads until its window is full, telling no one (no link); the
    terminal, back, takes that output from the ring on the keeper's welcome and wakes the
    keeper: every byte comes, nothing stalls. (The terminal may stay stopped longer than
    the usual hang budget: its heartbeat allows it.)"""
    # (stopped, the terminal beats no more: its heartbeat allows 60 s, twice the wait below,
    # however slowly a loaded machine brings the new keeper up)
    tree, _, out, cmds = heavy_output(make_tree, tmp_path,
                                      TREE.replace("misses = 5", "misses = 300"))
    c = tree.client
    terminal = tree.child("terminal")["pid"]
    keeper = tree.child("ptykeeper")["pid"]
    os.kill(terminal, signal.SIGSTOP)
    try:
        os.kill(keeper, signal.SIGKILL)

        def paused_alone() -> bool:
            try:
                listed = c.call("ptykeeper", "pty.list", timeout=2)
            except MoorageError:
                return False  # not restarted yet
            if not listed["sessions"]:
                return False  # serving, the session not yet taken from custody
            (held,) = listed["sessions"]
            return not listed["connected"] and held["paused"] and held["adopted"]

        wait_for(paused_alone, "the new keeper's window full, no terminal connected", 30)
    finally:
        os.kill(terminal, signal.SIGCONT)
    data = out.until(lambda d: b"seq-done\r\n" in d, timeout=120)
    assert expected_seq(LINES) in data  # in order, whole, once: the collector checks repeats
    assert tree.child("terminal")["pid"] == terminal
    out.close()
    cmds.close()


def test_sessions_that_die_with_both_processes_are_reported_alerted_and_started_again(
        make_tree, tmp_path):
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home),
                                           "cwd": str(tmp_path)}, timeout=30)
    sid = s["session"]
    events = c.subscribe("terminal", ["term.session", "term.alert"], from_seq=1)
    seen: list[tuple[str, dict]] = []

    def gather(*wanted: str) -> dict[str, dict]:
        """Events until each wanted kind was seen (two topics: no order between them)."""
        found: dict[str, dict] = {}
        for topic, body in seen:
            found.setdefault(body.get("event") or topic, body)
        while not all(w in found for w in wanted):
            ev = events.next(timeout=30)
            assert ev is not None, f"no terminal event in time; have {list(found)}"
            if isinstance(ev, StreamMessage):
                seen.append((ev.topic, ev.body))
                found.setdefault(ev.body.get("event") or ev.topic, ev.body)
        return found

    os.kill(tree.child("terminals")["pid"], signal.SIGKILL)
    found = gather("lost", "term.alert", "recreated")
    assert found["lost"]["session"] == sid
    assert found["term.alert"]["sessions"] == [sid]
    assert found["term.alert"]["severity"] == "critical"
    assert found["recreated"]["session"] == sid and found["recreated"]["pid"] != s["pid"]
    assert not pid_running(s["pid"])  # the old shell went with its tree
    r = c.call("terminal", "term.exec", {"session": sid, "command": "pwd"}, timeout=30)
    assert (r["exit_code"], r["output"]) == (0, str(tmp_path))

    # Each loss is recreated (one attempt each time); an exec sent meanwhile waits for it.
    # (Sent once the terminal actor is gone: one that reached it before it died may have run
    # in the lost shell, and is answered outcome_unknown: the test below.)
    seen.clear()
    first = found["recreated"]["pid"]
    old_terminal = tree.child("terminal")["pid"]
    os.kill(tree.child("terminals")["pid"], signal.SIGKILL)
    assert wait_pid_exit(old_terminal, 30)
    r = c.call("terminal", "term.exec", {"session": sid, "command": "echo again"}, timeout=60)
    assert (r["exit_code"], r["output"]) == (0, "again")
    again = gather("lost", "recreated")
    assert again["recreated"]["session"] == sid and again["recreated"]["pid"] != first
    events.close()


def test_a_session_restored_after_a_restart_by_hand_then_lost_takes_its_own_jobs_only(
        make_tree, tmp_path):
    """A restart by hand clears the records (on_stop); the successor records each session it
    restores with its shell's pid. Lost later with every holder, none of which could clean
    up, the session's job that ignores SIGHUP is killed by the next terminal, by that pid.
    (A record without the pid once made that clean-up kill session 0: every process the
    kernel's init left in it.)"""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    job = int(c.call("terminal", "term.exec", {  # (bash says "[1] <pid>" first)
        "session": sid, "command": "nohup sleep 300 >/dev/null 2>&1 & echo $!"},
        timeout=30)["output"].split()[-1])
    try:
        events = c.subscribe("terminal", ["term.session"], from_seq=1)
        old = tree.child("terminal")["pid"]
        c.call("terminals", "sup.restart", {"child": "terminal"})  # (answers at once)
        # the successor, not the terminal still stopping (it would take the exec and fail it
        # outcome_unknown as it stops)
        wait_for(lambda: (ch := tree.child("terminal"))["pid"] not in (None, old) and
                 ch["state"] == "running", "the terminal's successor running")
        r = c.call("terminal", "term.exec", {"session": sid, "command": "echo back"},
                   timeout=30)  # restored by the successor
        assert (r["exit_code"], r["output"]) == (0, "back")
        assert pid_running(job)
        sup = kill_the_holders_behind_a_stopped_supervisor(tree)
        os.kill(sup, signal.SIGKILL)
        lost = next_loss(events)
        assert lost["session"] == sid and lost["killed_left"] >= 1, lost
        assert wait_pid_exit(job, 10)
        events.close()
    finally:
        if pid_running(job):
            os.kill(job, signal.SIGKILL)


def test_a_restart_by_hand_of_the_terminals_reports_each_session_lost_and_starts_it_again(
        make_tree, tmp_path):
    """`moorage restart terminals`: the keeper's stop hangs every session up. Its successor
    finds them in the records, reports them lost and starts them again, as after a crash
    (they ended with no word, their ids then unknown). The tree stopped, the records go
    with it: the next tree starts none of them."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home),
                                           "cwd": str(tmp_path)}, timeout=30)
    events = c.subscribe("terminal", ["term.session"], from_seq=1)
    old = tree.child("terminals")["pid"]
    c.call("supervisor", "sup.restart", {"child": "terminals"})
    lost = next_loss(events)
    assert lost["session"] == s["session"], lost
    while True:
        ev = events.next(timeout=30)
        assert ev is not None, "no recreated session"
        if isinstance(ev, StreamMessage) and ev.body.get("event") == "recreated":
            break
    assert ev.body["session"] == s["session"] and ev.body["pid"] != s["pid"]
    assert tree.child("terminals")["pid"] != old and not pid_running(s["pid"])
    r = c.call("terminal", "term.exec", {"session": s["session"], "command": "pwd"}, timeout=30)
    assert (r["exit_code"], r["output"]) == (0, str(tmp_path))
    events.close()
    tree.stop()
    assert not (tree.runtime_dir / "succession").exists()


def kill_the_holders_behind_a_stopped_supervisor(tree: Tree) -> int:
    """Every holder of the sessions' PTYs killed, none with time to clean up (a keeper that
    sees its supervisor go kills its sessions itself), the terminals supervisor held still
    meanwhile: its pid, for the caller to kill in turn."""
    sup = tree.child("terminals")["pid"]
    holders = [tree.client.call(actor, "sys.info")["pid"] for actor in ("ptykeeper", "terminal")]
    os.kill(sup, signal.SIGSTOP)
    for pid in holders:
        os.kill(pid, signal.SIGKILL)
    assert all(wait_pid_exit(pid, 10) for pid in holders)
    return sup


def next_loss(events: Any) -> dict[str, Any]:
    """The body of the next `lost` event on a term.session subscription."""
    while True:
        ev = events.next(timeout=30)
        assert ev is not None, "no lost session reported"
        if isinstance(ev, StreamMessage) and ev.body.get("event") == "lost":
            return ev.body


def test_a_lost_session_whose_shell_pid_runs_another_session_now_leaves_that_one_alone(
        make_tree, tmp_path):
    """The records on disk outlive the pids they name: after a tree that died unclean, a
    lost shell's pid may be another session's leader. The clean-up kills by that pid only
    when the process there started when the shell did. (It killed whatever session the pid
    named: here a stranger's `sleep`, which stands for the pid reused.)"""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    stranger: subprocess.Popen | None = None
    try:
        events = c.subscribe("terminal", ["term.session"], from_seq=1)
        sup = kill_the_holders_behind_a_stopped_supervisor(tree)
        records = tree.runtime_dir / "succession" / "terminal.sessions"
        specs = msgpack.unpackb(records.read_bytes())
        started = specs[sid]["started"]
        assert isinstance(started, int)  # the shell's, kept with its pid
        # (start times are counted in clock ticks: one begun in the shell's tick is not a
        # stranger the record can tell apart)
        while stranger is None or process_start(stranger.pid) == started:
            if stranger is not None:
                stranger.kill()
                stranger.wait()
            stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
        specs[sid]["pid"] = stranger.pid
        records.write_bytes(msgpack.packb(specs))
        os.kill(sup, signal.SIGKILL)
        lost = next_loss(events)
        assert lost["session"] == sid and lost["killed_left"] == 0, lost
        assert stranger.poll() is None  # (the report comes after the clean-up)
        events.close()
    finally:
        if stranger is not None:
            stranger.kill()
            stranger.wait()


def test_a_subscriber_sees_a_terminal_restart_as_a_new_epoch_and_loses_no_byte(make_tree,
                                                                              tmp_path):
    """Through the client's own Subscription: a seq belongs to one publisher's life, so the
    restart shows as a Reset (a new epoch, seqs from 1), never as a Loss; the successor
    republishes the keeper's tail and the bytes, put together by offset, are whole."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    out = Output(c, sid)
    c.call("terminal", "term.write", {"session": sid,
                                      "data": f"seq 1 {LINES}; echo seq-''done\r"})
    out.until(lambda d: len(d) > 500_000)
    os.kill(tree.child("terminal")["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "terminal")
    data = out.until(lambda d: b"seq-done\r\n" in d, timeout=120)
    assert expected_seq(LINES) in data  # the collector fails on a gap or a differing repeat
    assert data.count(b"\r\n%d\r\n" % (LINES // 2)) == 1
    # The successor republished bytes the subscriber had; the client dropped them by offset
    # (PROTOCOL.md section 12, byte streams), so none reached the collector twice.
    assert out.resets >= 1 and out.losses == [] and out.repeated == 0
    assert out.sub.tracker.duplicate_bytes > 0
    (listed,) = c.call("terminal", "term.list")["sessions"]
    assert len(out.until(lambda d: len(d) >= listed["offset"])) == listed["offset"]
    out.close()


@pytest.mark.parametrize("quality", [3, 1])
def test_an_exec_in_flight_when_the_terminal_dies_is_answered_by_its_successor(
        make_tree, tmp_path, quality):
    """term.exec is resumable: the client resends it to the successor, which had taken the
    command over from the keeper's record of it and answers it once it completes (at
    quality 1, without integration, at its D all the same: its silent loop is no end)."""
    tree = make_tree(TREE + TELLER).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    tell(tree, "terminal", "normal", quality)
    c.learn_ops("terminal")
    assert c.core.resumable["terminal"] >= {"term.exec", "term.create"}
    (home / "go").write_text("")
    victim = tree.child("terminal")["pid"]

    def kill_then_let_it_finish() -> None:
        wait_for(lambda: (home / "started").exists(), "the command running")
        os.kill(victim, signal.SIGKILL)
        with Client(tree.runtime_dir, timeout=10.0) as other:
            wait_for(lambda: other.call("terminal", "sys.ping")["ep"] and
                     other.call("terminal", "sys.info")["pid"] != victim, "the successor")
        (home / "go").unlink()  # the same loop, in the same shell, ends now

    helper = threading.Thread(target=kill_then_let_it_finish)
    helper.start()
    r = c.call("terminal", "term.exec", {
        "session": sid,
        # (a second without output after it goes on: longer than quiet_ms)
        "command": "touch ~/started; while [ -e ~/go ]; do sleep 0.05; done; sleep 1; "
                   "echo R$((6*7))"},
        timeout=60)
    helper.join()
    assert (r["exit_code"], r["output"]) == (0 if quality == 3 else None, "R42")
    assert tree.child("terminal")["pid"] != victim


def test_an_exec_in_flight_when_the_keeper_and_the_terminal_die_together_is_answered_once(
        make_tree, tmp_path):
    """The command in flight is in the session's state, which lives in its ring (held by
    the terminals supervisor too): the successors take it over and answer the resend, and
    the command ran once, in the same shell."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)}, timeout=30)
    c.learn_ops("terminal")
    (home / "go").write_text("")
    victims = {name: tree.child(name)["pid"] for name in ("ptykeeper", "terminal")}

    def kill_then_let_it_finish() -> None:
        wait_for(lambda: (home / "started").exists(), "the command running")
        for pid in victims.values():
            os.kill(pid, signal.SIGKILL)
        with Client(tree.runtime_dir, timeout=10.0) as other:
            for name, pid in victims.items():
                wait_for(lambda name=name, pid=pid: other.call(name, "sys.info")["pid"] != pid,
                         f"the {name}'s successor")
        (home / "go").unlink()  # the same loop, in the same shell, ends now

    helper = threading.Thread(target=kill_then_let_it_finish)
    helper.start()
    r = c.call("terminal", "term.exec", {
        "session": s["session"],
        "command": "echo run >> ~/runs; touch ~/started; while [ -e ~/go ]; do sleep 0.05; "
                   "done; echo R$$"}, timeout=60)
    helper.join()
    assert (r["exit_code"], r["output"]) == (0, f"R{s['pid']}")
    assert (home / "runs").read_text() == "run\n"


def test_a_session_can_be_named_by_its_creator_and_a_name_is_taken_once(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home),
                                           "session": "my-shell"}, timeout=30)
    assert s["session"] == "my-shell"
    with pytest.raises(MoorageError) as e:
        c.call("terminal", "term.create", {"shell": "bash", "session": "my-shell"}, timeout=30)
    assert e.value.name == "conflict"
    with pytest.raises(MoorageError) as e:
        c.call("terminal", "term.create", {"session": "no spaces here"}, timeout=30)
    assert e.value.name == "bad_args"


def test_sigkill_of_the_keeper_and_the_terminal_at_once_keeps_the_shell_and_every_byte(
        make_tree, tmp_path):
    """Neither holder of the PTY master is left: the terminals supervisor, the third
    (actors.runtime.custody), hands the session to the new keeper, which hands it to the new
    terminal actor: the same shell, every byte once, integration after."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)}, timeout=30)
    sid = s["session"]
    assert c.call("terminals", "sys.info")["custody"]["held"] == {"ptykeeper": 1}
    out = RawOutput(c, sid)
    out.wait_live()
    c.call("terminal", "term.write", {"session": sid,
                                      "data": f"seq 1 {LINES}; echo seq-''done\r"})
    out.until(lambda d: len(d) > 500_000)
    victims = {name: tree.child(name)["pid"] for name in ("ptykeeper", "terminal")}
    for pid in victims.values():
        os.kill(pid, signal.SIGKILL)
    # read on at once (the output does not wait for a reader that is not back yet, and
    # what overflows the publisher's retention meanwhile would be a reported loss)
    data = out.until(lambda d: b"seq-done\r\n" in d, timeout=120)
    restarted: set[str] = set()  # (the two restart in either order)
    while restarted != set(victims):
        restarted.add(tree.wait_event(lambda e: e["event"] == "restarted"
                                      and e["child"] in victims)["child"])
    assert expected_seq(LINES) in data  # in order, whole, once: the collector checks repeats
    assert data.count(b"\r\n%d\r\n" % (LINES // 2)) == 1
    (held,) = c.call("ptykeeper", "pty.list")["sessions"]
    assert held["pid"] == s["pid"] and held["adopted"]
    assert c.call("ptykeeper", "sys.info")["from_custody"] == 1
    (listed,) = c.call("terminal", "term.list")["sessions"]
    assert listed["pid"] == s["pid"]
    r = c.call("terminal", "term.exec", {"session": sid, "command": "echo after $$"},
               timeout=30)
    assert (r["exit_code"], r["output"], r["mode"]) == (0, f"after {s['pid']}", "integration")
    # A close lets go of every copy: the supervisor's too, or the PTY would never hang up.
    c.call("terminal", "term.close", {"session": sid}, timeout=30)
    wait_for(lambda: not pid_running(s["pid"]), timeout=30, what="the closed session's shell")
    wait_for(lambda: c.call("terminals", "sys.info")["custody"]["held"] == {"ptykeeper": 0},
             what="the supervisor letting go of the closed session")
    out.close()


def test_a_stranger_on_the_custody_socket_is_refused_and_the_sessions_stay_held(make_tree,
                                                                              tmp_path):
    tree = make_tree(TREE).start()
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
               timeout=30)
    path = tree.runtime_dir / "terminals.custody.sock"
    assert path.stat().st_mode & 0o777 == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as forger, \
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as silent:
        forger.connect(str(path))
        silent.connect(str(path))
        forger.send(msgpack.packb({"t": "hello", "tok": "0" * 32, "child": "ptykeeper"}))
        for stranger in (forger, silent):  # a wrong token; no hello at all
            stranger.settimeout(30)
            assert stranger.recv(4096) == b""  # closed, and nothing handed over
    info = c.call("terminals", "sys.info")["custody"]
    assert info["strangers_refused"] == 2 and info["handed"] == 0
    assert info["held"] == {"ptykeeper": 1}
    r = c.call("terminal", "term.exec", {"session": s["session"], "command": "echo still"},
               timeout=30)
    assert r["output"] == "still"


@pytest.mark.parametrize("outcome", ["result", "timeout"])
def test_a_resend_of_an_exec_its_predecessor_answered_is_refused_not_run_again(
        make_tree, tmp_path, outcome):
    """A terminal answers an exec (its result, or its timeout: the command ran either way)
    and dies before the answer reaches the caller, whose client resends the same (sid, id)
    to the successor: the command ran, so the successor says `outcome_unknown` (ran) and
    does not run it a second time."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    args = {"session": sid, "command": "echo run >> ~/runs; echo R$((6*7))"}
    if outcome == "timeout":  # the shell's read waits for input that never comes
        args = {"session": sid, "command": "echo run >> ~/runs; read -r never",
                "timeout_ms": 300}
    frames = encode_request(7, "resender-0123456789", "term.exec", args,
                            int(time.time() * 1000) + 60_000)
    ctx = zmq.Context()

    def send_once() -> Reply:  # on a connection of its own, as a reconnected client's
        with ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoints.rpc(tree.runtime_dir, "terminal"))
            sock.send_multipart(frames)
            assert sock.poll(30_000), "no answer"
            return decode_reply(sock.recv_multipart())

    try:
        reply = send_once()
        if outcome == "timeout":
            assert not reply.ok and reply.body["name"] == "timeout", reply.body
        else:
            assert reply.ok and reply.body["output"] == "R42"
        # The terminal records that the command ran just after its answer left, in the same
        # loop turn: a call it answers after that turn is past the record. (Killed between
        # the two, its successor finds the command in flight and answers the resend from
        # its output instead: not run again either, but not this test's case.)
        c.call("terminal", "sys.ping")
        victim = tree.child("terminal")["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: c.call("terminal", "sys.info")["pid"] != victim, "the successor")
        resent = send_once()
        assert not resent.ok and resent.body["name"] == "outcome_unknown", resent.body
        assert resent.body["detail"]["ran"] is True
        # the same session takes the next command, and the first ran once
        assert c.call("terminal", "term.exec", {"session": sid, "command": "cat ~/runs"},
                      timeout=30)["output"] == "run"
    finally:
        ctx.destroy(linger=0)


def test_a_command_lost_with_its_session_is_not_run_again_by_the_resend(make_tree, tmp_path):
    """The terminals supervisor dies while a command runs: the shell, the keeper's records and
    the terminal actor go with it. The client resends the call (term.exec is resumable) to
    the successor, which recreates the session; it must answer that the outcome is unknown,
    not run the command a second time in the new shell."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home),
                                             "cwd": str(tmp_path)}, timeout=30)["session"]
    ran = tmp_path / "ran"
    got: list[object] = []

    def call() -> None:
        try:
            got.append(c.call("terminal", "term.exec", {
                "session": sid, "command": f"echo once >> {ran}; sleep 2"}, timeout=60))
        except MoorageError as exc:
            got.append(exc)

    t = threading.Thread(target=call)
    t.start()
    try:
        wait_for(lambda: ran.exists() and ran.read_text() == "once\n", "the command's first line",
                 timeout=30)
        os.kill(tree.child("terminals")["pid"], signal.SIGKILL)
    finally:
        t.join(90)
    assert not t.is_alive()
    (answer,) = got
    assert isinstance(answer, MoorageError) and answer.name == "outcome_unknown", answer
    assert answer.error.detail == {"session": sid, "lost": True}
    # the session is back, and the command ran once: the next one runs in the new shell
    r = c.call("terminal", "term.exec", {"session": sid, "command": "echo next"}, timeout=60)
    assert (r["exit_code"], r["output"]) == (0, "next")
    assert ran.read_text() == "once\n"


def test_exec_records_are_read_back_by_a_successor_as_last_written(tmp_path):
    """Overwritten in place (a shorter record after a longer one reads as the shorter one),
    taken once, pruned to the sessions still recorded, and a damaged one is nothing."""
    mine = ExecRecords(tmp_path, "terminal")
    long_sid = "é" * 128  # the longest sid the protocol allows, two bytes a character
    mine.write("s1", (long_sid, 2**53 - 1), ("a", 1))
    mine.write("s1", ("b", 7), None)
    mine.write("s2", None, ("c", 3))
    mine.write("gone", ("d", 4), None)
    successor = ExecRecords(tmp_path, "terminal")
    assert successor.take("s1") == (("b", 7), None)
    assert successor.take("s1") == (None, None)  # taken: dropped
    successor.prune({"s2"})
    assert not (tmp_path / "terminal.exec.gone").exists()
    assert successor.take("s2") == (None, ("c", 3))
    (tmp_path / "terminal.exec.s3").write_bytes(b"\xff\xff\x00garbage")
    assert successor.take("s3") == (None, None)
    assert not (tmp_path / "terminal.exec.s3").exists()
    mine.clear()
    assert sorted(os.listdir(tmp_path)) == []
