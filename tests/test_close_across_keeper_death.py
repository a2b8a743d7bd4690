"""A closed session stays closed whichever holder of its PTY dies after the close.

- A `term.close` whose `close` the keeper never read (it hangs, SIGSTOPped here, and its
  supervisor kills it as hung): the supervisor's custody still holds the PTY and hands it to
  the next keeper, which names the session in its welcome. The terminal closes it there
  again instead of restoring it (its tombstone), also when the terminal died too (the
  tombstone is on disk).
- A close the keeper did take, the keeper killed within the close's grace: its `closing`
  record in custody has the next keeper kill what is left of the session (a job that ignores
  SIGHUP and SIGTERM) at the grace's end; and never a process that took the shell's pid since
  (its start time).

Real trees, real shells, a real supervisor's custody; the keeper's hang is a SIGSTOP, so the
close is certain to be lost with it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import psutil
import pytest

from moorage.actors.runtime.custody import CustodyClient, custody_path
from moorage.actors.runtime.loop import Loop
from moorage.actors.terminal.keeper.actor import closing_key
from moorage.actors.terminal.keeper.ptys import process_start
from moorage.protocol.client import Client
from moorage.supervisor.custody import Custodian
from tests.conftest import pid_running, wait_pid_exit
from tests.terminal_support import (
    a_session_in_custody,
    env_for,
    hang_keeper,
    make_home,
    terminal_tree,
    welcomed_by_another_keeper,
)
from tests.waiting import turn_until, wait_for

pytestmark = pytest.mark.timeout(180)

# The close's grace in the tree of the job test: long enough that the keeper is killed within
# it (the test kills it a round trip after the close), short enough to wait for.
GRACE_MS = 4000


def session_events(c: Client, sid: str) -> list[str]:
    """The `term.session` events of `sid` the terminal published, from its retention."""
    body = c.request("terminal", "replay", {"topic": "term.session", "from_seq": 1}).body
    return [m[1]["event"] for m in body["messages"] if m[1].get("session") == sid]






def test_a_close_sent_to_a_hung_keeper_is_not_undone_by_its_successor(make_tree, tmp_path):
    """The close goes to a stopped keeper and is answered; the keeper is killed as hung
    with it unread. The next keeper takes the session back from custody and names it: the
    terminal closes it there, does not list it, and the shell ends; no event but `closed`."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    made = a_session_in_custody(c, tmp_path)
    sid, pid = made["session"], made["pid"]
    keeper = hang_keeper(tree)  # (the supervisor kills it as hung, stopped or not)
    assert c.call("terminal", "term.close", {"session": sid}) == {"closed": sid}
    assert wait_pid_exit(keeper, 30)
    wait_for(lambda: welcomed_by_another_keeper(c, keeper), "the terminal welcomed anew")

    assert [s["session"] for s in c.call("terminal", "term.list")["sessions"]] == []
    assert wait_pid_exit(pid, 30), "the closed session's shell lives on"
    wait_for(lambda: c.call("ptykeeper", "pty.list")["sessions"] == [],
             "the new keeper closing the session")
    info = wait_for(lambda: (lambda i: i if i["closes_unconfirmed"] == [] else None)(
        c.call("terminal", "sys.info")), "the close confirmed")
    assert info["closed_again"] == 1
    assert session_events(c, sid) == ["closed"]
    r = c.call("terminal", "term.create", {"shell": "bash", "session": sid,
                                           "env": env_for(make_home(tmp_path))}, timeout=30)
    assert r["session"] == sid  # (its id is free again)


def test_a_close_lost_with_the_keeper_stays_closed_when_the_terminal_dies_too(make_tree,
                                                                             tmp_path):
    """As above, the terminal SIGKILLed as well right after it answered the close: its
    successor knows the close from disk, closes the session the new keeper names, and
    writes no record of it back (a later loss would start it again)."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    made = a_session_in_custody(c, tmp_path)
    sid, pid = made["session"], made["pid"]
    terminal = tree.child("terminal")["pid"]
    keeper = hang_keeper(tree)
    assert c.call("terminal", "term.close", {"session": sid}) == {"closed": sid}
    os.kill(terminal, signal.SIGKILL)
    assert wait_pid_exit(keeper, 30) and wait_pid_exit(terminal, 30)
    wait_for(lambda: welcomed_by_another_keeper(c, keeper), "a new terminal welcomed anew")
    assert c.call("terminal", "sys.info")["pid"] != terminal

    assert [s["session"] for s in c.call("terminal", "term.list")["sessions"]] == []
    assert wait_pid_exit(pid, 30), "the closed session's shell lives on"
    records = tree.runtime_dir / "succession" / "terminal.sessions"
    assert sid not in (msgpack.unpackb(records.read_bytes()) if records.exists() else {})
    info = wait_for(lambda: (lambda i: i if i["closes_unconfirmed"] == [] else None)(
        c.call("terminal", "sys.info")), "the close confirmed")
    assert info["closed_again"] == 1
    wait_for(lambda: not (tree.runtime_dir / "succession" / "terminal.closed").exists(),
             "the tombstone gone from disk")
    assert c.call("ptykeeper", "pty.list")["sessions"] == []


def test_a_closed_sessions_job_is_killed_at_the_grace_end_by_the_next_keeper(make_tree,
                                                                             tmp_path):
    """A job that ignores SIGHUP and SIGTERM outlives the hang-up of its closed session;
    the keeper that closed it is killed within the grace, before its kill. The next keeper
    finds the close's record in custody and kills the job at the grace's end."""
    tree = make_tree(terminal_tree(f"\n[actor.ptykeeper]\nclose_grace_ms = {GRACE_MS}\n")
                     ).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    r = c.call("terminal", "term.exec", {
        "session": sid, "command": "(trap '' HUP TERM; exec sleep 1000) & echo JOB=$!"},
        timeout=30)
    job = int(re.search(r"JOB=(\d+)", r["output"])[1])  # type: ignore[index]
    try:
        wait_for(lambda: psutil.Process(job).name() == "sleep", "the job started")
        keeper = tree.child("ptykeeper")["pid"]
        assert c.call("terminal", "term.close", {"session": sid}) == {"closed": sid}
        wait_for(lambda: c.call("ptykeeper", "pty.list")["sessions"] == [],
                 "the keeper's close")
        os.kill(keeper, signal.SIGKILL)  # (within the grace: it had a round trip to run)
        assert wait_pid_exit(keeper, 30)
        assert wait_pid_exit(job, GRACE_MS / 1000 + 30), "the closed session's job lives on"
        finished = wait_for(lambda: c.call("ptykeeper", "sys.info")["closes_finished"],
                            "the new keeper's record of the close it finished")
        assert finished == 1
        wait_for(lambda: c.call("terminals", "sys.info")["custody"]["held"]
                 == {"ptykeeper": 0}, "the close's record dropped from custody")
    finally:
        if pid_running(job):
            os.kill(job, signal.SIGKILL)


# --- a keeper alone, a real Custodian holding a `closing` record its predecessor left -------

KEEPER = "moorage.actors.terminal.keeper.actor:PtyKeeper"


def test_a_closing_record_kills_its_session_only_while_the_pid_is_that_process(
        spawn_actor, client, runtime_dir: Path, loop: Loop):
    """The record names a pid and a start time: a process with that pid that started at
    another time is someone else's, and is left alone (the record dropped all the same);
    with its start time, what is left of the session is killed."""
    custodian = Custodian(loop, runtime_dir, "sup")
    victim = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    keepers = []
    try:
        started = process_start(victim.pid)
        assert started is not None
        key = closing_key(victim.pid)
        for n, start in enumerate((started + 1, started), 1):
            predecessor = CustodyClient(loop, custody_path(runtime_dir, "sup"), "ptykeeper")
            predecessor.keep(key, {"closing": {"s": "gone", "pid": victim.pid,
                                               "started": start, "until": time.monotonic()}},
                             [])
            turn_until(loop, lambda: key in custodian.held.get("ptykeeper", {}))
            predecessor.close()
            keepers.append(spawn_actor(KEEPER, "ptykeeper", supervised_by="sup",
                                       custody_wait_ms=0))
            turn_until(loop, lambda n=n: custodian.handed == n
                       and key not in custodian.held["ptykeeper"])
            assert client.call("ptykeeper", "sys.info")["closes_finished"] == 1
            if start != started:
                assert victim.poll() is None  # another process than the record's: alive
                keepers[-1].stop()
        assert victim.wait(10) == -signal.SIGKILL
    finally:
        for k in keepers:
            k.stop()
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        custodian.close()


def test_a_tombstone_names_a_shell_or_is_not_kept(tmp_path):
    """A tombstone that named no shell would match whatever is made again under its id (a
    successor's spec dropped, a live session closed again): one whose pid is unknown is not
    written, and one on disk without a pid is not taken."""
    from moorage.actors.terminal.keeper_client import Tombstones

    path = tmp_path / "terminal.closed"
    path.write_bytes(msgpack.packb({"none": {"pid": None, "started": None},
                                    "shell": {"pid": 4242, "started": 7}}))
    deferred: list = []
    tombstones = Tombstones(path, deferred.append)
    assert sorted(tombstones.closed) == ["shell"]
    assert not tombstones.names("none", 999, 1)  # (a session made again under that id)
    assert tombstones.names("shell", 4242, 7) and tombstones.names("shell", 4242, None)
    assert not tombstones.names("shell", 999, 7)  # (made again: another shell)

    assert tombstones.add("unknown", None, None) is False
    assert "unknown" not in tombstones and not tombstones.names("unknown", 999, 1)
    assert tombstones.add("known", 5151, 9) is True
    assert set(msgpack.unpackb(path.read_bytes())) == {"shell", "known"}
