"""Requests in flight when the pty keeper dies are a pause, not a failure, and are done once.

`term.create`, `term.write`, `term.resize` and `term.signal` sent to a keeper that hangs
(SIGSTOPped here: the request is certain to be unread) and is killed as hung by its
supervisor wait for the next keeper and are done there: the line typed reaches the shell
once, the size is set, the signal is sent once, the create makes one shell. Input a keeper
had queued and not written when it was SIGKILLed is written by the next, from where the dead
one stopped (its ledger in the session's ring, keeper/ledger.py), not again from the start.

Real trees, real shells, a real supervisor's custody; and the keeper alone over its socket
for what it does with a request sent again, and the ledger on a real ring for the instant
no record can tell (a keeper killed between its write(2) and its note of it)."""

from __future__ import annotations

import os
import re
import signal
import string
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.actors.runtime import trust
from moorage.actors.terminal.keeper.ledger import Ledger
from moorage.actors.terminal.link import LINK_TOKEN_NAME
from moorage.actors.terminal.ring import SessionRing
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import descendants, wait_pid_exit
from tests.terminal_support import (
    RawLink,
    a_session_in_custody,
    env_for,
    hang_keeper,
    make_home,
    terminal_tree,
    welcomed_by_another_keeper,
)
from tests.waiting import gate_opened, open_gate, wait_for

pytestmark = pytest.mark.timeout(180)


# --- a real tree, its keeper hung, then killed ----------------------------------------------








def scrollback(c: Client, sid: str) -> bytes:
    reply = c.request("terminal", "term.scrollback", {"session": sid, "from_offset": 0})
    return b"".join(reply.attachments)


def at_prompt(c: Client, sid: str) -> bool:
    return any(s["session"] == sid and s["state"] == "prompt"
               for s in c.call("terminal", "term.list")["sessions"])


def test_a_line_typed_to_a_hung_keeper_is_written_once_by_the_next(make_tree, tmp_path):
    """The write sits unread in the stopped keeper; the keeper is killed as hung. The
    write is answered as queued, sent to the next keeper, and the shell runs the line once."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    typed = tmp_path / "typed"
    keeper = hang_keeper(tree)
    line = f"echo TYPED >> {typed}\n"
    assert c.call("terminal", "term.write", {"session": sid, "data": line}, timeout=30) == {
        "queued": len(line)}
    assert wait_pid_exit(keeper, 30), "the hung keeper was not killed"
    assert c.call("terminal", "sys.info")["keeper_ops_resent"] == 1  # (it was in flight)

    wait_for(lambda: typed.exists() and typed.read_text() == "TYPED\n", "the line run")
    wait_for(lambda: at_prompt(c, sid), "the prompt after it")
    # (a second copy of the line, had one been sent, is ahead of this command in the PTY)
    r = c.call("terminal", "term.exec", {"session": sid, "command": f"cat {typed}"},
               timeout=30)
    assert r["output"].strip() == "TYPED"
    # (the shell's integration marks each command line it runs: this one, once)
    assert scrollback(c, sid).count(b"\x1b]633;E;echo TYPED") == 1


def test_a_line_no_keeper_came_back_for_in_time_is_unavailable_and_never_written(make_tree,
                                                                                 tmp_path):
    """The keeper dies with the write unread, and none comes back within keeper_wait_ms
    (its supervisor is stopped meanwhile): the write is answered `unavailable`, and the next
    keeper, once there, is not sent it: the line never runs."""
    config = terminal_tree("keeper_wait_ms = 1000").replace("misses = 5", "misses = 100")
    tree = make_tree(config).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    typed = tmp_path / "typed"
    keeper, terminals = tree.child("ptykeeper")["pid"], tree.child("terminals")["pid"]

    def write() -> str:
        with Client(tree.runtime_dir, timeout=30) as own:
            try:
                return str(own.call("terminal", "term.write", {
                    "session": sid, "data": f"echo TYPED >> {typed}\n"}))
            except MoorageError as exc:
                return exc.error.name

    os.kill(terminals, signal.SIGSTOP)  # (no keeper is started again while it is stopped)
    try:
        os.kill(keeper, signal.SIGSTOP)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(write)
            wait_for(lambda: c.call("terminal", "sys.info")["keeper_ops_waiting"] == 1,
                     "the write sent to the stopped keeper")
            os.kill(keeper, signal.SIGKILL)
            assert answer.result(timeout=60) == "unavailable"
    finally:
        os.kill(terminals, signal.SIGCONT)
    assert wait_pid_exit(keeper, 30)
    wait_for(lambda: welcomed_by_another_keeper(c, keeper), "the terminal welcomed anew")
    assert c.call("terminal", "sys.info")["keeper_ops_resent"] == 0
    r = c.call("terminal", "term.exec", {"session": sid, "command": f"cat {typed} || echo no"},
               timeout=30)
    assert r["output"].strip().splitlines()[-1] == "no"
    assert not typed.exists()


def ring_of(keeper: int, sid: str) -> int:
    """A descriptor of the session's ring, opened again from the keeper's (a memfd)."""
    fds = Path(f"/proc/{keeper}/fd")
    for fd in fds.iterdir():
        if os.readlink(fd).startswith(f"/memfd:moorage-{sid} "):
            return os.open(fd, os.O_RDWR)
    raise AssertionError(f"no ring of {sid} in the keeper")


def test_a_write_a_killed_keeper_may_have_made_is_outcome_unknown_and_not_sent_again(
        make_tree, tmp_path):
    """A keeper killed between its write(2) and its note of it leaves the bytes in doubt:
    that instant is made certain here by writing the keeper's note of a write it is about
    to make into the real ring (its ledger), the keeper stopped with the write unread. The
    write is answered `outcome_unknown`, never sent to the next keeper; input after it is
    numbered on past it, and written."""
    # (its supervisor slow to take the stopped keeper for hung: the test kills it, after)
    tree = make_tree(terminal_tree().replace("misses = 5", "misses = 100")).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    typed, after = tmp_path / "typed", tmp_path / "after"
    line = f"echo TYPED >> {typed}\n"
    keeper = hang_keeper(tree)

    def write() -> str:
        with Client(tree.runtime_dir, timeout=30) as own:
            try:
                return str(own.call("terminal", "term.write", {"session": sid, "data": line}))
            except MoorageError as exc:
                return exc.error.name

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(write)
        wait_for(lambda: c.call("terminal", "sys.info")["keeper_ops_waiting"] == 1,
                 "the write sent to the stopped keeper")
        fd = ring_of(keeper, sid)
        try:
            ledger = Ledger(fd)
            ledger.writing(0, len(line))  # (the session's first input: at 0)
            ledger.close()
        finally:
            os.close(fd)
        os.kill(keeper, signal.SIGKILL)
        assert answer.result(timeout=60) == "outcome_unknown"
    wait_for(lambda: welcomed_by_another_keeper(c, keeper), "the terminal welcomed anew")
    info = c.call("terminal", "sys.info")
    assert (info["keeper_ops_in_doubt"], info["keeper_ops_resent"]) == (1, 0)

    c.call("terminal", "term.write", {"session": sid, "data": f"echo AFTER >> {after}\n"})
    wait_for(lambda: after.exists() and after.read_text() == "AFTER\n", "the next line run")
    assert not typed.exists()


def test_input_queued_in_a_killed_keeper_is_written_on_by_the_next(make_tree, tmp_path):
    """A paste the shell does not read yet (the PTY takes a few KiB, the keeper queues the
    rest, answered `queued`): the keeper is SIGKILLed with most of it queued. The next
    keeper writes the rest, from where the dead one stopped: the program that then reads
    it gets every byte once, in order."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    ready, gate, out = tmp_path / "ready", tmp_path / "gate", tmp_path / "out"
    os.mkfifo(gate)
    n = 1 << 20
    data = (string.ascii_letters * (n // len(string.ascii_letters) + 1))[:n].encode()
    data = b"".join(data[i:i + 997][::-1] for i in range(0, n, 997))  # (no period to hide in)
    c.call("terminal", "term.write", {"session": sid, "data": (
        f"stty raw -echo; touch {ready}; cat {gate} > /dev/null; head -c {n} > {out}; "
        "stty sane\n")})
    try:
        wait_for(ready.exists, "the shell in raw mode, its reader at the gate")
        assert c.call("terminal", "term.write", {"session": sid, "data": data},
                      timeout=30) == {"queued": n}
        pending = wait_for(lambda: c.call("ptykeeper", "pty.list")["sessions"][0]["pending"],
                           "the paste queued in the keeper")
        assert 0 < pending < n
        keeper = tree.child("ptykeeper")["pid"]
        os.kill(keeper, signal.SIGKILL)
        assert wait_pid_exit(keeper, 30)
        wait_for(lambda: welcomed_by_another_keeper(c, keeper), "the terminal welcomed anew")
        open_gate(gate)
        wait_for(lambda: out.exists() and out.stat().st_size == n, "the paste read whole")
        assert out.read_bytes() == data
        assert c.call("terminal", "sys.info")["keeper_ops_resent"] == 1
    finally:
        if not out.exists():
            gate_opened(gate)  # (the shell is not left at its gate)


def test_input_kept_for_a_keeper_s_death_is_let_go_of_once_the_shell_has_read_it(make_tree,
                                                                                 tmp_path):
    """Writes the keeper queues (the shell reads nothing) are kept in the terminal until
    written: no more of them than the keeper has not written yet, and none once the shell
    has read them all, with no write after it (the keeper says its queue is empty)."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    ready, gate, out = tmp_path / "ready", tmp_path / "gate", tmp_path / "out"
    os.mkfifo(gate)
    size, writes = 1023, 300  # (far more than the PTY takes while no one reads it)
    total = size * writes
    c.call("terminal", "term.write", {"session": sid, "data": (
        f"stty raw -echo; touch {ready}; cat {gate} > /dev/null; head -c {total} > {out}; "
        "stty sane\n")})
    try:
        wait_for(ready.exists, "the shell in raw mode, its reader at the gate")
        for i in range(writes):
            chunk = bytes([0x41 + i % 26]) * size
            assert c.call("terminal", "term.write", {"session": sid, "data": chunk},
                          timeout=30) == {"queued": size}
        pending = wait_for(lambda: c.call("ptykeeper", "pty.list")["sessions"][0]["pending"],
                           "the writes queued in the keeper")
        kept = c.call("terminal", "sys.info")["keeper_input_kept"]
        # (each kept write has bytes the keeper has not written: at most one starts before
        # the first of those)
        assert 0 < kept <= pending // size + 1
        open_gate(gate)
        wait_for(lambda: out.exists() and out.stat().st_size == total, "the writes read")
        wait_for(lambda: c.call("terminal", "sys.info")["keeper_input_kept"] == 0,
                 "the kept copies let go of")
        assert c.call("ptykeeper", "pty.list")["sessions"][0]["pending"] == 0
        assert out.read_bytes() == b"".join(bytes([0x41 + i % 26]) * size
                                            for i in range(writes))
    finally:
        if not out.exists():
            gate_opened(gate)  # (the shell is not left at its gate)


def test_a_create_sent_to_a_hung_keeper_makes_one_shell_with_the_next(make_tree, tmp_path):
    """The create sits unread in the stopped keeper, which is killed as hung: the next
    keeper's custody holds no shell of it, so the create goes again and is answered with
    the one session it made: listed, held by the keeper, the only shell in the tree."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    keeper = hang_keeper(tree)
    made = c.call("terminal", "term.create", {
        "shell": "bash", "env": env_for(make_home(tmp_path)), "session": "late"}, timeout=30)
    assert made["session"] == "late" and made["mode"] == "integration"
    assert wait_pid_exit(keeper, 30), "the hung keeper was not killed"
    assert c.call("terminal", "sys.info")["creates_sent_again"] == 1  # (it was in flight)

    assert [s["session"] for s in c.call("terminal", "term.list")["sessions"]] == ["late"]
    held = c.call("ptykeeper", "pty.list")["sessions"]
    assert [(h["s"], h["pid"]) for h in held] == [("late", made["pid"])]
    terminals = tree.child("terminals")["pid"]
    shells = [p.pid for p in descendants(terminals) if p.name() == "bash"]
    assert shells == [made["pid"]]
    r = c.call("terminal", "term.exec", {"session": "late", "command": "echo $((6*7))"},
               timeout=30)
    assert r["output"].strip() == "42"


def test_a_resize_sent_to_a_hung_keeper_is_set_by_the_next(make_tree, tmp_path):
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    keeper = hang_keeper(tree)
    assert c.call("terminal", "term.resize", {"session": sid, "cols": 101, "rows": 33},
                  timeout=30) == {"cols": 101, "rows": 33}
    assert wait_pid_exit(keeper, 30), "the hung keeper was not killed"
    assert c.call("terminal", "sys.info")["keeper_ops_resent"] == 1

    r = c.call("terminal", "term.exec", {"session": sid, "command": "stty size"}, timeout=30)
    assert r["output"].strip() == "33 101"
    held = c.call("ptykeeper", "pty.list")["sessions"][0]
    assert (held["cols"], held["rows"]) == (101, 33)  # (what its successor would get)


SIGNALLED = ("import signal; seen = {}\n"
             "def h(n, f):\n"
             "    seen[n] = seen.get(n, 0) + 1; print('got', signal.Signals(n).name, seen[n],"
             " flush=True)\n"
             "signal.signal(signal.SIGINT, h); signal.signal(signal.SIGUSR1, h)\n"
             "print('listen' + 'ing', flush=True)\n"
             "while True: signal.pause()\n")


def test_a_signal_sent_to_a_hung_keeper_is_sent_once_by_the_next(make_tree, tmp_path):
    """A program counting its SIGINTs runs in the foreground; the SIGINT goes to the
    stopped keeper, which is killed as hung. It is answered with the program's group, and
    the program gets it once (a SIGUSR1 after it is the fence: it comes after any copy)."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    sid = a_session_in_custody(c, tmp_path)["session"]
    script = tmp_path / "signalled.py"
    script.write_text(SIGNALLED)
    c.call("terminal", "term.write", {"session": sid,
                                      "data": f"{sys.executable} -u {script}\n"})
    wait_for(lambda: b"listening" in scrollback(c, sid), "the program listening")
    program = next(p for p in psutil.Process(a_session_pid(c, sid)).children()
                   if p.cmdline()[-1:] == [str(script)])
    keeper = hang_keeper(tree)
    assert c.call("terminal", "term.signal", {"session": sid, "signal": "SIGINT"},
                  timeout=30) == {"pgid": program.pid, "signal": int(signal.SIGINT)}
    assert wait_pid_exit(keeper, 30), "the hung keeper was not killed"
    assert c.call("terminal", "sys.info")["keeper_ops_resent"] == 1

    wait_for(lambda: b"got SIGINT 1" in scrollback(c, sid), "the SIGINT taken")
    c.call("terminal", "term.signal", {"session": sid, "signal": "SIGUSR1"}, timeout=30)
    wait_for(lambda: b"got SIGUSR1 1" in scrollback(c, sid), "the fence taken")
    assert re.findall(rb"got SIGINT \d+", scrollback(c, sid)) == [b"got SIGINT 1"]


def a_session_pid(c: Client, sid: str) -> int:
    return next(s["pid"] for s in c.call("terminal", "term.list")["sessions"]
                if s["session"] == sid)


# --- the keeper alone: a request sent again ------------------------------------------------

HELLO = {"t": "hello", "tok": trust.token(LINK_TOKEN_NAME)}
COUNTING = ("import signal, sys; seen = {}\n"
            "def h(n, f):\n"
            "    seen[n] = seen.get(n, 0) + 1; print(signal.Signals(n).name, seen[n], flush=True)\n"
            "signal.signal(signal.SIGUSR1, h); signal.signal(signal.SIGUSR2, h)\n"
            "print('listen' + 'ing', flush=True)\n"
            "for line in sys.stdin: print('read', line.strip(), flush=True)\n")


class Counting:
    """A keeper of its own on a raw link, with one session `a` running COUNTING (it says what
    it reads and which signals it took), listening: `output_has` reads the session's output
    until it holds `text`."""

    def __init__(self, spawn_actor: Any, client: Any, runtime_dir: Path,
                 tmp_path: Path) -> None:
        spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
        client.call("ptykeeper", "sys.ping")
        script = tmp_path / "counting.py"
        script.write_text(COUNTING)
        self.link = link = RawLink(runtime_dir / "ptykeeper.sock")
        self.seen: dict[str, bytearray] = {}
        try:
            link.send(HELLO)
            assert link.recv()["t"] == "welcome"
            link.send({"t": "create", "r": 1, "s": "a", "path": sys.executable,
                       "argv": [sys.executable, "-u", str(script)],
                       "env": {"PATH": os.defpath}, "cwd": "/", "cols": 80, "rows": 24,
                       "meta": {}})
            assert link.wait(lambda m: m.get("r") == 1)["t"] == "ok"
            self.output_has(b"listening")
        except BaseException:
            link.close()
            raise

    def output_has(self, text: bytes) -> bool:
        while text not in self.seen.get("a", b""):
            msg = self.link.recv()
            if msg["t"] == "out":
                self.link.read_out(msg, self.seen)
        return True


def test_the_keeper_does_what_its_ledger_says_it_did_not_and_only_that(spawn_actor, client,
                                                                        runtime_dir, tmp_path):
    """Input numbered by the terminal (`at`): what the keeper took already is not taken
    again, the rest is; the ledger in the ring says how far it wrote. A signal numbered
    (`seq`) that the ledger says was sent is answered, not sent again."""
    counting = Counting(spawn_actor, client, runtime_dir, tmp_path)
    link, seen, output_has = counting.link, counting.seen, counting.output_has
    try:
        replies = []
        for r, at, data in ((2, 0, b"one\n"), (3, 0, b"one\n"), (4, 2, b"e\ntwo\n")):
            link.send({"t": "write", "r": r, "s": "a", "at": at, "data": data})
            replies.append(link.wait(lambda m, r=r: m.get("r") == r))
        assert [(m["t"], m["queued"], m["done"]) for m in replies] == [
            ("ok", 4, 4), ("ok", 0, 4), ("ok", 4, 8)]
        output_has(b"read two")
        assert re.findall(rb"read \w+", bytes(seen["a"])) == [b"read one", b"read two"]
        assert Ledger.read(link.rings["a"].fd).done == 8

        for r, seq, sig in ((5, 1, signal.SIGUSR1), (6, 1, signal.SIGUSR1),
                            (7, 2, signal.SIGUSR2)):
            link.send({"t": "signal", "r": r, "s": "a", "sig": int(sig), "to": "fg",
                       "seq": seq})
            reply = link.wait(lambda m, r=r: m.get("r") == r)
            assert reply["t"] == "ok"
            if r == 5:
                output_has(b"SIGUSR1 1")
        output_has(b"SIGUSR2 1")  # (after any second SIGUSR1: they are sent in order)
        assert re.findall(rb"SIGUSR\d \d", bytes(seen["a"])) == [b"SIGUSR1 1", b"SIGUSR2 1"]
        state = Ledger.read(link.rings["a"].fd)
        assert (state.sig_done, state.sig_doubt, state.signal_sent(2)) == (2, None, True)
    finally:
        link.close()


def test_the_keeper_does_not_send_a_signal_its_ledger_says_may_have_been_sent(
        spawn_actor, client, runtime_dir, tmp_path):
    """A signal whose seq the ledger holds in doubt (a keeper killed between its kill(2)
    and its note: written into the real ring here) is answered `outcome_unknown`, not sent
    again; the next is sent (and is the fence: a SIGUSR1 sent first is taken before it)."""
    counting = Counting(spawn_actor, client, runtime_dir, tmp_path)
    link, seen, output_has = counting.link, counting.seen, counting.output_has
    try:
        ledger = Ledger(link.rings["a"].fd)
        try:
            ledger.signalling(1)  # (a predecessor killed before its note that it sent it)
        finally:
            ledger.close()
        link.send({"t": "signal", "r": 2, "s": "a", "sig": int(signal.SIGUSR1), "to": "fg",
                   "seq": 1})
        reply = link.wait(lambda m: m.get("r") == 2)
        assert (reply["t"], reply["name"]) == ("err", "outcome_unknown")
        link.send({"t": "signal", "r": 3, "s": "a", "sig": int(signal.SIGUSR2), "to": "fg",
                   "seq": 2})
        assert link.wait(lambda m: m.get("r") == 3)["t"] == "ok"
        output_has(b"SIGUSR2 1")
        assert re.findall(rb"SIGUSR\d \d", bytes(seen["a"])) == [b"SIGUSR2 1"]
    finally:
        link.close()


# --- the ledger on a real ring ------------------------------------------------------------


def test_the_ledger_tells_a_write_cut_short_from_one_done_and_one_not_begun():
    """A keeper killed between its write(2) and its note of it leaves those bytes in doubt
    (the one thing that cannot be known); before the write(2), or after the note, there is
    no doubt; a refused write's numbers are skipped, never taken for written bytes."""
    ring = SessionRing.create(1 << 16, 4096)
    keeper = Ledger(ring.fd)
    try:
        assert Ledger.read(ring.fd).done == 0
        keeper.writing(0, 10)
        keeper.wrote(10)
        state = Ledger.read(ring.fd)
        assert (state.done, state.doubt, state.input_end) == (10, None, 10)
        keeper.writing(10, 6)  # (killed here: the write(2) made or not)
        state = Ledger.read(ring.fd)
        assert (state.done, state.doubt, state.input_end) == (10, (10, 6), 16)
        keeper.wrote(13)  # (the PTY took half of it: the rest is known not written)
        state = Ledger.read(ring.fd)
        assert (state.done, state.doubt) == (13, None)
        keeper.writing(20, 4)  # (16..20 refused: never queued, never written)
        state = Ledger.read(ring.fd)
        assert (state.done, state.doubt) == (20, (20, 4))
        keeper.wrote(20)  # (EAGAIN: nothing written)
        keeper.dropped(24)  # (an interrupt dropped it)
        assert Ledger.read(ring.fd)[:2] == (24, None)

        assert Ledger.read(ring.fd).signal_sent(1) is False
        keeper.signalling(1)
        assert Ledger.read(ring.fd).signal_sent(1) is None
        keeper.signalled(1, 4242)
        state = Ledger.read(ring.fd)
        assert (state.signal_sent(1), state.signal_sent(2), state.pgid) == (True, False, 4242)
        keeper.signalling(2)
        keeper.not_signalled()  # (killpg failed: not sent, and no doubt of it)
        assert Ledger.read(ring.fd).signal_sent(2) is False
        keeper.signalled(65536 + 3, 7)  # (seqs compare in 16 bits, across the wrap)
        state = Ledger.read(ring.fd)
        assert (state.signal_sent(65536 + 3), state.signal_sent(65536 + 4)) == (True, False)
    finally:
        keeper.close()
        ring.close()


def test_a_successor_folds_its_predecessors_doubt_into_what_is_done():
    """A predecessor's doubt stays in the ledger (for the terminal to read) until the
    successor folds it: past it, never written again, and no length left standing that a
    note of the successor's own could be paired with."""
    ring = SessionRing.create(1 << 16, 4096)
    dead, successor = Ledger(ring.fd), Ledger(ring.fd)
    try:
        dead.writing(0, 100)
        dead.wrote(100)
        dead.writing(100, 4096)  # (killed here)
        state = Ledger.read(ring.fd)
        assert (state.done, state.doubt, state.input_end) == (100, (100, 4096), 4196)
        successor.fold(state.input_end)
        state = Ledger.read(ring.fd)
        assert (state.done, state.doubt, state.input_end) == (4196, None, 4196)
        successor.writing(4196, 10)  # (killed here: its own write in doubt, no other)
        assert Ledger.read(ring.fd)[:2] == (4196, (4196, 10))
        successor.wrote(4206)
        assert Ledger.read(ring.fd)[:2] == (4206, None)
    finally:
        dead.close()
        successor.close()
        ring.close()
