"""Flow control per session in a real tree: a subscriber that stops reading, and a consumer
that stops acknowledging, hold back only their own session, and only until the consumer is
dropped; every other session's output stays live meanwhile."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import decode_stream
from tests.terminal_support import Output, env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

WINDOW = 1 << 20  # the keeper's window_bytes (default)
FLOOD = 20_000_000
TREE = terminal_tree(terminal="consumer_timeout_ms = 1500")


def session(c: Client, sid: str) -> dict[str, Any]:
    return next(s for s in c.call("terminal", "term.list")["sessions"] if s["session"] == sid)


class StuckSubscriber:
    """A bare SUB on one session's output that takes the publisher's welcome (so its
    subscription is live) and then never reads again: its queue fills and stays full."""

    def __init__(self, c: Client, sid: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 1)
        self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.setsockopt(zmq.SUBSCRIBE, f"term.out.{sid}".encode())
        self.sock.connect(endpoints.pub(c.runtime_dir, "terminal"))
        assert self.sock.poll(30_000), "no welcome from the terminal's publisher"
        assert decode_stream(self.sock.recv_multipart()).welcome

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def test_a_stuck_subscriber_and_a_silent_consumer_hold_back_only_their_own_session(
        make_tree, tmp_path):
    tree = make_tree(TREE).start()
    c = tree.client
    env = env_for(make_home(tmp_path))
    a, b = (c.call("terminal", "term.create", {"shell": "bash", "env": env},
                   timeout=30)["session"] for _ in range(2))
    events = c.subscribe("terminal", ["term.session"], from_seq=1)
    stuck = StuckSubscriber(c, a)
    silent = Client(tree.runtime_dir, timeout=10.0)  # acknowledges once, then never again
    try:
        acked = silent.call("terminal", "term.ack",
                            {"session": a, "offset": session(c, a)["offset"]})["acked"]
        c.call("terminal", "term.write", {"session": a, "data": (
            f"head -c {FLOOD} /dev/zero | tr '\\0' y; echo; echo flood-done\r")})
        # The flood runs, held at the silent consumer's window...
        wait_for(lambda: session(c, a)["offset"] > acked + WINDOW // 2, "the flood runs",
                 timeout=60)
        # ...while the other session answers, and its subscriber sees its output.
        out_b = Output(c, b)
        for n in range(3):
            r = c.call("terminal", "term.exec", {"session": b, "command": f"echo b-live-{n}"},
                       timeout=30)
            assert (r["exit_code"], r["output"]) == (0, f"b-live-{n}"), r
            out_b.until(lambda d, n=n: f"b-live-{n}\r\n".encode() in d)
        out_b.close()

        # The silent consumer is dropped after consumer_timeout_ms, no further than its
        # window past what it acknowledged; then the flood runs to its end.
        dropped = None
        while dropped is None:
            ev = events.next(timeout=30)
            assert ev is not None, "no consumer_dropped event"
            body = getattr(ev, "body", None) or {}
            if body.get("event") == "consumer_dropped" and body["session"] == a:
                dropped = body
        assert dropped["consumer"] == silent.sid
        assert dropped["offset"] <= acked + WINDOW + 256 * 1024, (dropped, acked)
        wait_for(lambda: session(c, a)["offset"] >= FLOOD and session(c, a)["state"] ==
                 "prompt", "the flood runs to its end once the consumer is dropped",
                 timeout=120)
        assert c.call("terminal", "sys.info")["consumers_dropped"] >= 1
        # The stuck subscriber cost its session nothing more: it answers as before.
        r = c.call("terminal", "term.exec", {"session": a, "command": "echo a-after"},
                   timeout=30)
        assert (r["exit_code"], r["output"]) == (0, "a-after"), r
        assert session(c, a)["consumers"] == {}
    finally:
        events.close()
        silent.close()
        stuck.close()


def test_a_keeper_stopped_for_a_full_window_is_woken_however_its_output_was_taken(
        make_tree, tmp_path):
    """With a 64 KiB window the keeper stops for a full window every few reads, and the
    terminal often takes the output past the offset of the keeper's last word (all the ring
    holds) before the word that the keeper stopped comes: that word must wake it all the
    same, or the shell waits for ever."""
    tree = make_tree(TREE + "\n[actor.ptykeeper]\nwindow_bytes = 65536\n").start()
    c = tree.client
    home = make_home(tmp_path)
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    out = Output(c, sid)
    for i in range(3):
        r = c.call("terminal", "term.exec", {"session": sid, "command": "seq 1 200000",
                                             "timeout_ms": 60_000}, timeout=90)
        assert r["exit_code"] == 0 and r["output"].endswith("\n200000"), r["output"][-100:]
        # Read as it goes: on a loaded machine one command's output is up to ~600
        # messages of a few KiB, and three unread ones outgrew the topic's retention of
        # 2000 messages (a Loss, then the gap this collector fails on).
        out.until(lambda d, n=i + 1: d.count(b"\n200000\r\n") == n)
    assert not out.losses
    out.close()


def test_a_consumer_that_took_everything_is_not_dropped_by_the_first_output_after_a_while(
        make_tree, tmp_path):
    """A consumer caught up with an idle session owes nothing however long the session stays
    quiet: its silence counts from when it falls behind. (It counted from its last ack, so
    an editor's view of a session idle for consumer_timeout_ms was dropped by the session's
    next output within a check, before it could acknowledge it.)"""
    # (long enough for the command, the 2 s watch for a drop and the ack after it on a loaded
    # machine, which must come before the consumer's silence behind the output runs out:
    # 2 s to spare, tens of milliseconds used)
    timeout_s = 4.0
    tree = make_tree(terminal_tree(terminal=f"consumer_timeout_ms = {int(timeout_s * 1000)}")
                     ).start()
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
                 timeout=30)["session"]
    events = c.subscribe("terminal", ["term.session"], from_seq=1)
    consumer = Client(tree.runtime_dir, timeout=10.0)
    behind = Client(tree.runtime_dir, timeout=10.0)  # the clock: dropped once it has run out
    try:
        consumer.call("terminal", "term.ack", {"session": sid, "offset": session(c, sid)["offset"]})
        behind.call("terminal", "term.ack", {"session": sid, "offset": 0})  # (owes the prompt)
        # The session stays quiet past the timeout: the consumer behind, silent since after
        # ours, is dropped for it.
        while True:
            ev = events.next(timeout=30)
            assert ev is not None, "the consumer behind was not dropped"
            body = getattr(ev, "body", None) or {}
            if body.get("event") == "consumer_dropped":
                assert body["consumer"] == behind.sid, body
                break
        c.call("terminal", "term.exec", {"session": sid, "command": "echo fresh"}, timeout=30)
        until = time.monotonic() + 2.0  # (a check a second: a drop would come within it)
        while (left := until - time.monotonic()) > 0:
            ev = events.next(timeout=left)
            body = getattr(ev, "body", None) or {}
            assert body.get("event") != "consumer_dropped", body
        r = consumer.call("terminal", "term.ack",
                          {"session": sid, "offset": session(c, sid)["offset"]})
        assert r["consumers"] == 1 and session(c, sid)["consumers"] == {consumer.sid: r["acked"]}
        assert c.call("terminal", "sys.info")["consumers_dropped"] == 1  # (the one behind)
    finally:
        events.close()
        consumer.close()
        behind.close()


def test_a_shell_gone_while_its_last_output_waits_behind_a_full_window_exits_after_it(
        make_tree, tmp_path):
    """The shell writes its last output and exits while a silent consumer holds the window
    full: the rest waits in the PTY. Its exit is reported once that output is read (after
    the consumer is dropped), not a second after the shell was reaped, which answered the
    command without its last words."""
    # (the consumer dropped 1.5 s after the bug's answer, a second after the shell's reaping)
    tree = make_tree(terminal_tree(terminal="consumer_timeout_ms = 2500") +
                     "\n[actor.ptykeeper]\nwindow_bytes = 65536\n").start()
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
                 timeout=30)["session"]
    silent = Client(tree.runtime_dir, timeout=10.0)  # acknowledges once, then never again
    try:
        silent.call("terminal", "term.ack", {"session": sid, "offset": session(c, sid)["offset"]})
        r = c.call("terminal", "term.exec", {"session": sid, "command": (
            "head -c 70000 /dev/zero | tr '\\0' y; echo; echo last-words; exit 3")}, timeout=60)
    finally:
        silent.close()
    assert r["exit_code"] == 3, r
    assert "last-words" in r["output"][-64:], r["output"][-200:]  # (then bash's "exit")


def test_input_for_a_terminal_that_hung_up_is_dropped_and_the_keeper_rests(make_tree,
                                                                              tmp_path):
    """Input queued in the keeper for a program that never reads its terminal, which then
    ends: every slave fd is closed, no one will take that input. It is dropped (the keeper
    kept it, waiting for room that never came, and the hang-up woke its loop at every turn:
    it spun at a full core)."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    home = make_home(tmp_path)
    os.mkfifo(home / "gate")
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)}, timeout=30)
    sid, pid = s["session"], s["pid"]
    c.call("terminal", "term.write", {"session": sid,
                                      "data": "exec sh -c 'read -r _ < \"$HOME/gate\"'\r"})
    wait_for(lambda: b"read -r" in Path(f"/proc/{pid}/cmdline").read_bytes(),
             "the shell replaced by a program that does not read its terminal")

    def pending() -> int:
        return next(x for x in c.call("ptykeeper", "pty.list")["sessions"]
                    if x["s"] == sid)["pending"]

    while pending() == 0:  # more than the terminal's input buffer holds
        c.call("terminal", "term.write", {"session": sid, "data": "x" * 4095 + "\n"})
    with open(home / "gate", "w") as gate:
        gate.write("go\n")
    wait_for(lambda: session(c, sid)["state"] == "exited", "the session ended")
    wait_for(lambda: pending() == 0, "the input no one can read dropped")
    assert c.call("ptykeeper", "sys.ping") is not None


def test_a_session_keeps_at_most_64_consumers_and_a_new_one_pushes_out_the_least_heard(
        make_tree, tmp_path):
    """(Clients that acked and went away stayed registered until output left them behind,
    without a bound: 20,000 of them froze the terminal's loop for 0.8 s at the next output,
    and their drops flooded term.session's retention and the log.)"""
    tree = make_tree(TREE).start()
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
                 timeout=30)["session"]
    events = c.subscribe("terminal", ["term.session"], from_seq=1)
    try:
        offset = session(c, sid)["offset"]
        for i in range(64):
            with Client(tree.runtime_dir, timeout=10.0, sid=f"gone-{i:02d}") as one:
                r = one.call("terminal", "term.ack", {"session": sid, "offset": offset})
            assert r["consumers"] == i + 1
        with Client(tree.runtime_dir, timeout=10.0, sid="new") as one:
            r = one.call("terminal", "term.ack", {"session": sid, "offset": offset})
        assert r["consumers"] == 64
        consumers = session(c, sid)["consumers"]
        assert "new" in consumers and "gone-00" not in consumers and len(consumers) == 64
        while True:
            ev = events.next(timeout=30)
            assert ev is not None, "no consumer_dropped"
            body = getattr(ev, "body", None) or {}
            if body.get("event") == "consumer_dropped":
                assert body["consumer"] == "gone-00", body
                break
        assert c.call("terminal", "sys.info")["consumers_dropped"] == 1
    finally:
        events.close()
