"""Sessions end clean: `term.close` and a SIGKILL of the root leave no process of a session
behind, a job that ignores SIGHUP and SIGTERM included (killed as systemd's KillMode does),
and a tree stopped with `down` and started again does not bring old sessions back."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import psutil
import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import (
    WITH_STOP_SIGNALS,
    assert_all_gone,
    descendants,
    pid_running,
    wait_pid_exit,
)
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

TREE = terminal_tree()
STUBBORN = "trap '' HUP TERM; sh -c \"trap '' HUP TERM; sleep 1000\" & echo stubborn-$!"


def session_processes(sid_pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid_pid:
                out.append(p)
        except OSError:
            continue
    return out


def start_stubborn_job(c, tmp_path) -> tuple[str, int, int]:
    home = make_home(tmp_path)
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)}, timeout=30)
    r = c.call("terminal", "term.exec", {"session": s["session"], "command": STUBBORN},
               timeout=30)
    job = int(r["output"].split("stubborn-")[1])
    assert psutil.pid_exists(job)
    return s["session"], s["pid"], job


def test_term_close_leaves_no_process_of_the_session_even_one_that_ignores_hup_and_term(
        make_tree, tmp_path):
    tree = make_tree(TREE).start()
    sid, shell, job = start_stubborn_job(tree.client, tmp_path)
    procs = session_processes(shell)
    assert len(procs) >= 2
    tree.call("terminal", "term.close", {"session": sid})
    assert_all_gone(procs, timeout=15)  # after the keeper's close grace
    assert not pid_running(job)


def test_term_close_of_a_session_running_an_exec_answers_it_and_leaves_no_record(
        make_tree, tmp_path):
    """The exec running in a session that is closed is answered shell_exited, and the
    session's exec record (kept for a successor) goes with it: failing the exec wrote it
    anew after the close had dropped it, and it stayed, its fd held by the terminal."""
    tree = make_tree(TREE).start()
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
                 timeout=30)["session"]
    record = tree.runtime_dir / f"terminal.exec.{sid}"
    box: dict = {}

    def run() -> None:
        try:
            c2 = Client(tree.runtime_dir, timeout=60.0)
            try:
                c2.call("terminal", "term.exec", {"session": sid, "command": "sleep 100"})
            finally:
                c2.close()
        except MoorageError as exc:
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: c.call("terminal", "term.list")["sessions"][0]["state"] == "running",
                 "the exec running")
        assert record.exists()
        c.call("terminal", "term.close", {"session": sid})
    finally:
        t.join(60)
    assert box["error"].error.name == "shell_exited", box
    assert not record.exists()


def test_a_session_closed_before_its_first_prompt_is_not_created_after_all(make_tree,
                                                                          tmp_path):
    """term.close while the session's shell has not prompted yet (its rc file waits on a
    FIFO): term.create fails shell_exited, an exec sent meanwhile (it waits for the first
    prompt) fails session_not_found, and the name is free again. (The creation's timer used
    to find the closed session and answer it created, writing its records back; the exec
    waited for its own deadline.)"""
    tree = make_tree(TREE).start()
    c = tree.client
    home = make_home(tmp_path, bashrc='read -r _ < "$HOME/gate"\n')
    os.mkfifo(home / "gate")
    box: dict = {}

    def create() -> None:
        try:
            with Client(tree.runtime_dir, timeout=60.0) as c2:
                box["ok"] = c2.call("terminal", "term.create", {
                    "shell": "bash", "env": env_for(home), "session": "slow"}, timeout=30)
        except MoorageError as exc:
            box["error"] = exc

    def exec_() -> None:
        try:
            with Client(tree.runtime_dir, timeout=60.0) as c3:
                box["ran"] = c3.call("terminal", "term.exec", {
                    "session": "slow", "command": "true"}, timeout=30)
        except MoorageError as exc:
            box["exec_error"] = exc

    t = threading.Thread(target=create)
    t.start()
    e = threading.Thread(target=exec_)
    try:
        def made() -> bool:
            # (a create answered already, before the close: the failure to look at)
            assert "ok" not in box and "error" not in box, box
            return any(x["session"] == "slow"
                       for x in c.call("terminal", "term.list")["sessions"])

        wait_for(made, "the session made, its shell not ready")
        e.start()
        wait_for(lambda: c.call("terminal", "sys.info")["pending"] >= 2,
                 "the exec waiting beside the create")
        c.call("terminal", "term.close", {"session": "slow"})
    finally:
        t.join(60)
        if e.ident is not None:
            e.join(60)
    assert "ok" not in box and box["error"].name == "shell_exited", box
    assert "ran" not in box and box["exec_error"].name == "session_not_found", box
    (home / "gate").unlink()  # (a shell started from this home now prompts at once)
    again = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home),
                                               "session": "slow"}, timeout=30)
    assert again["session"] == "slow"


def kill_the_root_and_find_the_session_gone(tree, shell: int, job: int) -> None:
    procs = session_processes(shell)
    root = tree.pid
    os.kill(root, signal.SIGKILL)
    assert wait_pid_exit(root, 10)
    assert_all_gone(procs, timeout=15)
    assert not pid_running(job)


def test_a_sigkill_of_the_root_after_the_keepers_zygote_died_still_leaves_no_process(
        make_tree, tmp_path):
    """With its zygote gone the keeper's parent is the terminals supervisor itself; when that
    dies with the root, the keeper still gets to kill its sessions' processes (a SIGKILL as
    its parent-death signal would take it first, and a job that ignores HUP lives on)."""
    tree = make_tree(TREE).start()
    _, shell, job = start_stubborn_job(tree.client, tmp_path)
    terminals = tree.child("terminals")
    os.kill(terminals["tree"]["zygote"]["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "zygote_restarted" and e["supervisor"] ==
                    "terminals")
    keeper = tree.child("ptykeeper")["pid"]
    # (the supervisor sees the zygote's socket close as it exits, a moment before the
    # kernel hands the zygote's children to it)
    wait_for(lambda: psutil.Process(keeper).ppid() == terminals["pid"],
             "the keeper's parent the terminals supervisor")
    kill_the_root_and_find_the_session_gone(tree, shell, job)


def test_a_sigkill_of_the_root_leaves_no_process_of_any_session(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    _, shell, job = start_stubborn_job(tree.client, tmp_path)
    kill_the_root_and_find_the_session_gone(tree, shell, job)


@pytest.mark.parametrize("whom", ["group", "root"])
def test_a_hang_up_stops_the_tree_in_order_and_leaves_no_process_of_any_session(
        make_tree, tmp_path, whom):
    """SIGHUP to `moorage up`'s process group (the terminal it ran in closed) or to the root
    alone is a stop, as SIGTERM is: the root stops its children, the keeper kills its
    sessions' jobs, the runtime dir is left clean, and the exit is not a death by signal.
    (Started with SIGHUP at its default: one ignored at the start stays ignored.)"""
    tree = make_tree(TREE)
    tree.launcher = WITH_STOP_SIGNALS
    tree.start()
    _, shell, job = start_stubborn_job(tree.client, tmp_path)
    procs = [*session_processes(shell), psutil.Process(tree.pid), *descendants(tree.pid)]
    try:
        if whom == "group":
            os.killpg(tree.pid, signal.SIGHUP)
        else:
            os.kill(tree.pid, signal.SIGHUP)
        assert wait_pid_exit(tree.pid, 30)
        assert tree.proc is not None and tree.proc.wait(10) == 0
        assert_all_gone(procs, timeout=15)
        assert not pid_running(job)
        assert not (tree.runtime_dir / "tree.json").exists()
    finally:
        for p in procs:  # (what a failure left: the session's jobs are no tree's)
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_a_job_that_left_its_session_is_ended_when_the_tree_stops(make_tree, tmp_path):
    """`setsid -f` takes a job out of the session the keeper ends; orphaned, it becomes the
    terminals supervisor's child (a subreaper), which ends it as it stops: SIGTERM, then
    SIGKILL for one that ignores it."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    s = tree.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                  timeout=30)
    pidfile = tmp_path / "stray.pid"
    tree.call("terminal", "term.exec", {
        "session": s["session"],
        "command": f"setsid -f sh -c 'trap \"\" HUP TERM; echo $$ > {pidfile}; "
                   "exec sleep 1000'"}, timeout=30)
    stray = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(),
                         "the stray's pid"))
    proc = psutil.Process(stray)
    try:
        assert os.getsid(stray) != s["pid"]
        wait_for(lambda: proc.ppid() == tree.child("terminals")["pid"],
                 "the stray orphaned to the terminals supervisor")
        tree.stop()
        assert_all_gone([proc], timeout=15)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_down_then_up_starts_without_the_old_sessions(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    tree.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)}, timeout=30)
    assert len(tree.call("terminal", "term.list")["sessions"]) == 1
    tree.stop()
    again = make_tree(TREE).start()
    events = again.client.subscribe("terminal", ["term.session", "term.alert"], from_seq=1)
    try:
        assert again.call("terminal", "term.list")["sessions"] == []
        # nothing lost, nothing recreated: no event at all on those topics
        assert events.next(timeout=1.0) is None
    finally:
        events.close()
    info = wait_for(lambda: again.call("terminal", "sys.info"), "the terminal's info")
    assert info["sessions"] == 0 and not info.get("sessions_lost")


def test_a_closed_session_s_streams_are_let_go_after_their_grace(make_tree, tmp_path):
    """A closed session's output stays replayable for `closed_stream_keep_s` (late
    readers), then its retention goes: it stayed for the actor's life, up to 8 MiB a
    session. Its seq stays: a replay then says what is lost, never skips it."""
    tree = make_tree(terminal_tree(terminal="closed_stream_keep_s = 0.3")).start()
    home = make_home(tmp_path)
    s = tree.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                  timeout=30)["session"]
    tree.call("terminal", "term.exec", {"session": s, "command": "echo kept-for-a-while"},
              timeout=30)
    topic = f"term.out.{s}"
    before = tree.call("terminal", "replay", {"topic": topic, "from_seq": 1})
    assert before["messages"] and before["lost"] is None
    tree.call("terminal", "term.close", {"session": s})
    after = wait_for(lambda: (r := tree.call("terminal", "replay",
                                             {"topic": topic, "from_seq": 1}))["lost"] and r,
                     "the closed session's output let go")
    assert after["messages"] == [] and after["lost"] == [1, after["last_seq"]]
    assert after["last_seq"] >= before["last_seq"]
