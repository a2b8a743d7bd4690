"""What waits on a session's shell while it starts: a `term.exec` sent before the first prompt
goes once the session is ready, by a prompt or without one (the integration given up), and
not past its own timeout; a creation whose records cannot be written is answered all the
same, its session serving."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def gated_home(tmp_path: Path) -> Path:
    """A home whose bashrc waits on a FIFO nobody writes: the shell never gets to its first
    prompt while the test runs."""
    home = make_home(tmp_path, bashrc='read -r _ < "$HOME/gate"\n')
    os.mkfifo(home / "gate")
    return home


def in_thread(runtime_dir: Path, box: dict[str, Any], key: str, actor: str, op: str,
              args: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with Client(runtime_dir, timeout=60.0) as c:
                box[key] = c.call(actor, op, args, timeout=60)
        except MoorageError as exc:
            box[key] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


def park_an_exec(tree, home: Path, box: dict[str, Any], exec_args: dict[str, Any],
                 see_parked: bool = True) -> list[threading.Thread]:
    """term.create of session "slow" from `home`, then a term.exec in it that waits for its
    first prompt; returns once both are in the actor, unanswered (`see_parked`), or once
    the exec is sent."""
    c = tree.client
    threads = [in_thread(tree.runtime_dir, box, "created", "terminal", "term.create",
                         {"shell": "bash", "env": env_for(home), "session": "slow"})]
    # (a minute: the suite's other trees on 2 cores once held this create past 20 s)
    wait_for(lambda: any(x["session"] == "slow"
                         for x in c.call("terminal", "term.list")["sessions"]),
             "the session made, its shell not ready", timeout=60)
    threads.append(in_thread(tree.runtime_dir, box, "exec", "terminal", "term.exec",
                             {"session": "slow", "command": "echo parked", **exec_args}))
    if see_parked:
        wait_for(lambda: c.call("terminal", "sys.info")["pending"] >= 2,
                 "the exec waiting beside the creation")
    return threads


def test_an_exec_waiting_for_the_first_prompt_is_not_answered_before_its_shell_reads_it(
        make_tree, tmp_path):
    """No prompt marker within integration_detect_ms: the creation gives the integration up
    and answers; the exec that waited for the first prompt is then typed, but the shell
    still runs its rc file and reads nothing: it is not answered at quiet as if it had run
    (it used to be, with empty output), nor kept past its own timeout, which answers that it
    had not started (its input dropped: nothing of it runs later)."""
    # (the exec's timeout well past the creation's detection, and its quiet well within the
    # time between them: an exec answered at quiet would be answered long before its timeout)
    tree = make_tree(terminal_tree("integration_detect_ms = 2500\nquiet_ms = 200")).start()
    box: dict[str, Any] = {}
    threads = park_an_exec(tree, gated_home(tmp_path), box, {"timeout_ms": 4000})
    try:
        threads[0].join(60)
        assert box["created"]["mode"] == "no_integration", box
        threads[1].join(60)
        assert isinstance(box["exec"], MoorageError) and box["exec"].name == "timeout", box
        assert "had not started" in box["exec"].error.message, box
    finally:
        tree.call("terminal", "term.close", {"session": "slow"})
        for t in threads:
            t.join(60)


def test_an_exec_waiting_for_the_first_prompt_times_out_on_its_own_time_unsent(
        make_tree, tmp_path):
    """The shell is not ready within the command's timeout_ms: the exec is answered
    `timeout` then, saying the command was not sent (it waited for its caller's deadline,
    the runtime's bare timeout, its own timeout armed only once the command went out)."""
    tree = make_tree(terminal_tree("integration_detect_ms = 60000")).start()
    box: dict[str, Any] = {}
    # (not looked for while it waits: its 1 s may be over by then on a busy machine)
    threads = park_an_exec(tree, gated_home(tmp_path), box, {"timeout_ms": 1000},
                           see_parked=False)
    try:
        threads[1].join(60)
        err = box["exec"]
        assert isinstance(err, MoorageError) and err.name == "timeout", box
        assert err.error.detail["signalled"] is None and "not sent" in err.error.message
        assert "created" not in box  # the shell is still starting
        assert tree.call("terminal", "term.list")["sessions"][0]["state"] == "starting"
    finally:
        tree.call("terminal", "term.close", {"session": "slow"})
        for t in threads:
            t.join(60)
    assert isinstance(box["created"], MoorageError) and box["created"].name == "shell_exited"


def test_a_creation_whose_records_cannot_be_written_is_answered_and_its_session_serves(
        make_tree, tmp_path):
    """The session records' file cannot be replaced (a directory stands at its path): the
    creation's success raised in the middle of taking the first prompt's output, so the
    creation was never answered and that output never published. The records stay in
    memory and the error is logged; the session is made and runs commands."""
    tree = make_tree(terminal_tree()).start()
    records = tree.runtime_dir / "succession" / "terminal.sessions"
    records.mkdir()
    (records / "in-the-way").write_bytes(b"")
    c = tree.client
    home = make_home(tmp_path)
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)}, timeout=30)
    r = c.call("terminal", "term.exec", {"session": s["session"], "command": "echo served"},
               timeout=30)
    assert r["output"] == "served" and r["mode"] == "integration"
    listed = c.call("terminal", "term.list")["sessions"]
    assert [x["state"] for x in listed] == ["prompt"]


def test_a_command_whose_markers_wait_behind_a_full_window_keeps_its_integration(
        make_tree, tmp_path):
    """A consumer that stopped acknowledging holds the session's output (the keeper's window
    is full, the shell blocks in write): a command sent meanwhile cannot show its markers
    until the consumer is dropped. The wait for them counts from when output flows again,
    not through the pause (which took the session to no_integration for good)."""
    # (the consumer's timeout three times the detection: the pause the command sees, from
    # when it is sent until the consumer is dropped, is well past the detection; counted
    # through the pause, the command would have gone to no_integration)
    tree = make_tree(terminal_tree(
        "consumer_timeout_ms = 6000\nintegration_detect_ms = 2000\n\n"
        "[actor.ptykeeper]\nwindow_bytes = 65536")).start()
    c = tree.client
    home = make_home(tmp_path)
    os.mkfifo(home / "gate")
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    flood = "(read -r _ < \"$HOME/gate\"; head -c 1000000 /dev/zero | tr '\\0' x) &"
    c.call("terminal", "term.exec", {"session": sid, "command": flood}, timeout=30)
    offset = c.call("terminal", "term.list")["sessions"][0]["offset"]
    with Client(tree.runtime_dir, timeout=10.0) as consumer:  # acknowledges once, then not
        consumer.call("terminal", "term.ack", {"session": sid, "offset": offset})
        with open(home / "gate", "w") as gate:
            gate.write("go\n")
        wait_for(lambda: c.call("ptykeeper", "pty.list")["sessions"][0]["paused"],
                 "the keeper's window full")
        box: dict[str, Any] = {}
        t = in_thread(tree.runtime_dir, box, "exec", "terminal", "term.exec",
                      {"session": sid, "command": "echo after-the-flood"})
        t.join(60)
    assert not isinstance(box["exec"], MoorageError), box
    assert box["exec"]["mode"] == "integration" and box["exec"]["exit_code"] == 0
    # (what the flood wrote while the command ran is its output too: one terminal)
    assert "after-the-flood" in box["exec"]["output"]
