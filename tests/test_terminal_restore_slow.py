"""A terminal actor restarted while the keeper holds sessions whose rings are slow to catch up
on (megabytes of escape-heavy output): every session comes back, the idle one made last too.
(Its fds once came after the wait for them had run out on the time the restores before it
took: the session was dropped here while its shell lived on in the keeper.) And a session
whose fds never come is asked for again, then reported lost, never dropped in silence."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.terminal.keeper.ptys import process_start
from moorage.actors.terminal.link import FrameReader
from moorage.actors.terminal.restore import candidates
from moorage.actors.terminal.ring import SessionRing
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.conftest import pid_running, wait_pid_exit
from tests.terminal_support import env_for, make_home, send_message, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

TREE = terminal_tree()
ESC_BYTES = 2_000_000
STREAM_BYTES = 30_000_000


def test_sessions_restored_after_slow_catch_ups_are_all_served(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    c = tree.client
    env = env_for(make_home(tmp_path))

    def create() -> dict:
        return c.call("terminal", "term.create", {"shell": "bash", "env": env}, timeout=30)

    heavy = [create(), create()]
    for s in heavy:
        c.call("terminal", "term.write", {
            "session": s["session"],
            "data": f"head -c {ESC_BYTES} /dev/zero | tr '\\0' '\\033'; echo\r"})

    def offsets() -> dict[str, int]:
        return {s["session"]: s["offset"] for s in
                c.call("terminal", "term.list", timeout=30)["sessions"]}

    wait_for(lambda: all(offsets().get(s["session"], 0) > ESC_BYTES for s in heavy),
             "2 MB of ESC bytes through both sessions", 120)
    idle = create()  # made last: its fds come after the two slow ones'
    # and one whose shell goes on writing while the successor catches up on the others
    streaming = create()
    c.call("terminal", "term.write", {"session": streaming["session"],
                                      "data": f"yes 0123456789 | head -c {STREAM_BYTES}\r"})
    wait_for(lambda: offsets().get(streaming["session"], 0) > 1 << 20, "the stream going")
    made = {s["session"]: s["pid"] for s in [*heavy, idle, streaming]}

    victim = tree.child("terminal")["pid"]
    os.kill(victim, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "terminal",
                         timeout=60)
    assert ev["pid"] != victim

    def serving() -> bool:
        if tree.child("terminal")["state"] != "running":
            return False
        try:
            return c.call("terminal", "term.list", timeout=30)["keeper"]["connected"]
        except MoorageError as exc:  # (ops wait keeper_wait_ms for the restores, then this)
            assert exc.name == "unavailable", exc
            return False

    wait_for(serving, "the successor serving", 60)
    listed = {s["session"]: s["pid"] for s in
              c.call("terminal", "term.list", timeout=30)["sessions"]}
    held = {s["s"]: s["pid"] for s in c.call("ptykeeper", "pty.list")["sessions"]}
    assert listed == made, f"term.list {listed}, created {made}"
    assert held == made, f"only in the keeper: {set(held) - set(listed)}"
    def at_prompt(sid: str) -> bool:
        listed = c.call("terminal", "term.list", timeout=30)["sessions"]
        return any(s["session"] == sid and s["state"] == "prompt" for s in listed)

    wait_for(lambda: at_prompt(streaming["session"]), "the stream's end", 120)
    for sid, pid in made.items():
        r = c.call("terminal", "term.exec", {"session": sid, "command": "echo $$"},
                   timeout=60)
        assert (r["exit_code"], r["output"]) == (0, str(pid)), (sid, r)
    # the successor's loop kept turning: not taken for hung by its supervisor meanwhile
    assert tree.child("terminal")["pid"] == ev["pid"]
    assert all(pid_running(pid) for pid in made.values())
    # nothing the keeper wrote was lost to a catch-up: no offset ever jumped
    assert c.call("terminal", "sys.info")["output_skipped"] == 0


class FakeKeeper:
    """The keeper's end of the link, played by the test: one terminal actor's connection."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(20)
        self.sock: socket.socket | None = None
        self.reader = FrameReader()
        self.pending: list[dict[str, Any]] = []

    def accept(self) -> None:
        self.sock, _ = self.listener.accept()
        self.sock.settimeout(20)

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        assert self.sock is not None
        send_message(self.sock, msg, fds)

    def next(self, t: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next message of type `t` (those before it, of other types, are dropped)."""
        assert self.sock is not None
        end = time.monotonic() + timeout
        while True:
            while self.pending:
                msg = self.pending.pop(0)
                if msg["t"] == t:
                    return msg
            left = end - time.monotonic()
            assert left > 0, f"no {t!r} from the terminal in time"
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 16)
            assert data, "the terminal closed the link"
            self.pending.extend(self.reader.feed(data))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.listener.close()


def entry(sid: str, pid: int) -> dict[str, Any]:
    return {"s": sid, "pid": pid, "started": process_start(pid), "tty": "/dev/pts/0",
            "cols": 80, "rows": 24, "meta": {"mode": "no_integration"}, "base": 0,
            "acked": 0, "exited": None, "pending": 0, "paused": False}


def test_a_session_whose_fds_never_come_is_asked_for_again_then_reported_lost(
        spawn_actor, client, runtime_dir):
    """`late` comes when asked for again (`pass`); `never` does not, the keeper no longer
    holding it: the keeper is told to close it, its shell is ended, and it is reported lost
    (and started anew: refused here, so `gone`), as a session lost with every holder is. (A
    session the keeper still holds whose descriptors cannot come is asked for again instead:
    tests/test_fd_limit.py.)"""
    keeper = FakeKeeper(runtime_dir / "ptykeeper.sock")
    shells = [subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2)]
    ring = SessionRing.create(1 << 16, 1 << 15)
    master, slave = os.openpty()
    try:
        spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal",
                    shells=["bash"])
        keeper.accept()
        keeper.next("hello")
        late, never = entry("late", shells[0].pid), entry("never", shells[1].pid)
        keeper.send({"t": "welcome", "pid": os.getpid(), "custody": False,
                     "sessions": [late, never]})
        events = client.subscribe("terminal", ["term.session"], from_seq=1)
        asked = keeper.next("pass")
        again = keeper.next("pass")
        assert {asked["s"], again["s"]} == {"late", "never"}
        for msg in (asked, again):
            if msg["s"] == "late":
                keeper.send({"t": "fds", "s": "late"}, [master, ring.fd])
                keeper.send({"t": "ok", "r": msg["r"], "s": "late"})
            else:  # (as a keeper that no longer holds it answers)
                keeper.send({"t": "err", "r": msg["r"], "s": "never",
                             "name": "session_not_found", "message": "no session"})
        closed = keeper.next("close")
        assert closed["s"] == "never"
        keeper.send({"t": "ok", "r": closed["r"], "s": "never"})
        assert wait_pid_exit(shells[1].pid, 10)  # its shell ended
        # every shell the recreation tries, refused (then the minimal one)
        for _ in range(len(candidates(None, ["bash"], "/bin/sh")) + 1):
            create = keeper.next("create")
            assert create["s"] == "never"
            keeper.send({"t": "err", "r": create["r"], "name": "pty_failed",
                         "message": "refused by the test"})
        seen: dict[str, dict] = {}
        while "gone" not in seen:
            ev = events.next(timeout=20)
            assert ev is not None, f"no gone event; have {seen}"
            if isinstance(ev, StreamMessage):
                seen[ev.body["event"]] = ev.body
        assert seen["lost"]["session"] == "never"
        assert "never came here" in seen["lost"]["reason"]
        assert seen["lost"]["killed_left"] >= 1
        assert seen["gone"]["session"] == "never"
        listed = client.call("terminal", "term.list", timeout=10)["sessions"]
        assert [s["session"] for s in listed] == ["late"]
        assert listed[0]["pid"] == shells[0].pid
        events.close()
    finally:
        keeper.close()
        for p in shells:
            p.kill()
            p.wait()
        ring.close()
        os.close(master)
        os.close(slave)
