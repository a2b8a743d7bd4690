"""A custody answer that comes late: the successor of a dead pty keeper lets the terminal in
after its custody wait without what its supervisor holds (a loaded machine, a busy supervisor).
The terminal is told so in the welcome, gets the sessions that come with the answer in a
`custody` message, and only then settles which of its sessions are lost: a session whose
shell lives on is never reported lost, killed and started anew, and no shell is adopted by
a keeper for no one.

The supervisor's side is real throughout: a whole tree whose custody answers late
($MOORAGE_TEST_CUSTODY_TAKE_DELAY_MS, supervisor/custody.py), and a keeper alone with a
Custodian whose loop the test turns only when the answer is to go. The keepers here wait
WAIT_MS for the answer (`custody_wait_ms`) before they let a terminal in, and a tree's
answers come DELAY_MS late: the tests rely on the margins between those, not their size."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.actors.runtime import trust
from moorage.actors.runtime.loop import Loop
from moorage.actors.terminal.keeper.actor import CUSTODY_GIVE_UP_S
from moorage.actors.terminal.link import LINK_TOKEN_NAME
from moorage.protocol.client import Client
from moorage.supervisor.custody import TAKE_DELAY_ENV, Custodian
from tests.conftest import ActorProcess, wait_pid_exit
from tests.terminal_support import RawLink, env_for, make_home, terminal_tree
from tests.waiting import turn_until, wait_for

pytestmark = pytest.mark.timeout(180)

KEEPER = "moorage.actors.terminal.keeper.actor:PtyKeeper"
HELLO = {"t": "hello", "tok": trust.token(LINK_TOKEN_NAME)}
ENV = {"PATH": os.defpath, "TERM": "dumb", "PS1": "$ "}
# The keeper's wait for its custody answer before it lets a terminal in (custody_wait_ms).
WAIT_MS = 500
# What a loaded machine has, past that wait, for what must come before the answer: the actors
# restarted, the new terminal welcomed, a client's resend taken in, the test's look at each
# (tens of milliseconds each).
MARGIN_MS = 2500
# Each `take` of the tree's custody answered this late: past the keeper's wait by the margin,
# well within its bound (the default custody_give_up_ms).
DELAY_MS = 3000
assert WAIT_MS + MARGIN_MS <= DELAY_MS <= CUSTODY_GIVE_UP_S * 1000 - 10_000
# The bound of a keeper whose custody never answers (custody_give_up_ms): past its wait by the
# margin, so that the terminal is let in before it.
GIVE_UP_MS = 3000
assert WAIT_MS + MARGIN_MS <= GIVE_UP_MS
# A tree's keeper, with that wait.
KEEPER_CONFIG = f"\n[actor.ptykeeper]\ncustody_wait_ms = {WAIT_MS}\n"


def test_a_session_custody_hands_back_late_is_the_same_shell_and_not_lost(make_tree,
                                                                          tmp_path):
    """The keeper and the terminal SIGKILLed at once, the supervisor's custody answering
    the new keeper long after it let the new terminal in: the session comes back with its
    shell (same pid, same state), serves a command, and is never reported lost."""
    tree = make_tree(terminal_tree(KEEPER_CONFIG)).start(
        env={**os.environ, TAKE_DELAY_ENV: str(DELAY_MS)})
    c = tree.client
    s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
               timeout=30)
    sid, pid = s["session"], s["pid"]
    r = c.call("terminal", "term.exec", {"session": sid, "command": "X=kept; echo $$"},
               timeout=30)
    assert (r["exit_code"], r["output"]) == (0, str(pid))
    wait_for(lambda: c.call("terminals", "sys.info")["custody"]["held"] == {"ptykeeper": 1},
             "the session in the supervisor's custody")
    victims = {name: tree.child(name)["pid"] for name in ("ptykeeper", "terminal")}
    for victim in victims.values():
        os.kill(victim, signal.SIGKILL)
    restarted: set[str] = set()  # (the two restart in either order)
    while restarted != set(victims):
        restarted.add(tree.wait_event(lambda e: e["event"] == "restarted"
                                      and e["child"] in victims)["child"])
    wait_for(lambda: c.call("terminal", "sys.info")["keeper_connected"],
             "the new terminal welcomed by the new keeper")

    # (an op on the session waits for the custody answer, then runs in the same shell)
    r = c.call("terminal", "term.exec", {"session": sid, "command": "echo $X $$"}, timeout=60)
    assert (r["exit_code"], r["output"]) == (0, f"kept {pid}")
    assert c.call("terminal", "sys.info").get("sessions_lost", 0) == 0
    keeper = c.call("ptykeeper", "sys.info")
    # it came from custody after the new terminal's welcome, in a `custody` message
    assert (keeper["from_custody"], keeper["custody_late"]) == (1, 1), keeper
    assert keeper["custody_pending"] is False
    (held,) = c.call("ptykeeper", "pty.list")["sessions"]
    assert held["pid"] == pid and held["adopted"]
    (listed,) = c.call("terminal", "term.list")["sessions"]
    assert (listed["session"], listed["pid"]) == (sid, pid)


# --- the keeper alone, with a real Custodian answering when the test lets it ---------------


@pytest.fixture
def custodian(loop: Loop, runtime_dir: Path) -> Iterator[Custodian]:
    cust = Custodian(loop, runtime_dir, "sup")  # (the keepers' `supervised_by`)
    try:
        yield cust
    finally:
        cust.close()


@pytest.fixture
def links() -> Iterator[list[RawLink]]:
    opened: list[RawLink] = []
    yield opened
    for link in opened:
        link.close()


def spawn_keeper(spawn_actor: Callable[..., ActorProcess], **config: Any) -> ActorProcess:
    """A keeper whose custody is with the test's Custodian ("sup"), letting a terminal in
    after WAIT_MS."""
    return spawn_actor(KEEPER, "ptykeeper", supervised_by="sup", custody_wait_ms=WAIT_MS,
                       **config)


def hello(client: Client, runtime_dir: Path, links: list[RawLink]) -> tuple[RawLink, dict]:
    """A terminal's link to the keeper, and the keeper's welcome (after WAIT_MS at most: the
    keeper's socket takes the connection at once, and answers once it listens)."""
    client.call("ptykeeper", "sys.ping")  # bound: the socket exists once it answers
    link = RawLink(runtime_dir / "ptykeeper.sock")
    links.append(link)
    link.send(HELLO)
    welcome = link.recv()
    assert welcome["t"] == "welcome"
    return link, welcome


def a_session_left_in_custody(spawn_actor, client: Client, runtime_dir: Path, loop: Loop,
                              custodian: Custodian, links: list[RawLink]) -> int:
    """A keeper that made a session (a shell waiting for a line) and left it with the
    custodian, then died with the terminal side's copies closed: the custodian's are the
    last. The shell's pid."""
    first = spawn_keeper(spawn_actor)
    client.call("ptykeeper", "sys.ping")
    turn_until(loop, lambda: "ptykeeper" in custodian.held)  # its `take`, answered
    link, welcome = hello(client, runtime_dir, links)
    assert welcome["custody"] is False
    link.send({"t": "create", "r": 1, "s": "late", "path": "/bin/sh",
               "argv": ["sh", "-c", "echo a; read x; echo got-$x"], "env": ENV, "cwd": "/",
               "cols": 80, "rows": 24, "meta": {"n": 1}})
    ok = link.wait(lambda m: m.get("r") == 1)
    assert ok["t"] == "ok", ok
    seen: dict[str, bytearray] = {}
    while b"a\r\n" not in seen.get("late", b""):
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen)
    turn_until(loop, lambda: "late" in custodian.held["ptykeeper"])
    os.kill(first.pid, signal.SIGKILL)
    assert wait_pid_exit(first.pid, 10)
    link.close()
    assert psutil.pid_exists(ok["pid"])
    return ok["pid"]


def test_a_terminal_let_in_before_the_custody_answer_gets_its_sessions_with_it(
        spawn_actor, client, runtime_dir, loop, custodian, links):
    pid = a_session_left_in_custody(spawn_actor, client, runtime_dir, loop, custodian, links)
    spawn_keeper(spawn_actor)
    # The custodian's loop is not turned: the new keeper's `take` waits unanswered.
    link, welcome = hello(client, runtime_dir, links)
    assert (welcome["custody"], welcome["sessions"]) == (True, [])
    assert client.call("ptykeeper", "sys.info")["custody_pending"] is True
    turn_until(loop, lambda: custodian.handed == 1)  # (the first keeper was handed none)
    late = link.wait(lambda m: m["t"] == "custody")
    (entry,) = late["sessions"]
    assert (entry["s"], entry["pid"], entry["meta"]) == ("late", pid, {"n": 1})
    assert link.wait(lambda m: m["t"] == "fds") == {"t": "fds", "s": "late"}
    seen: dict[str, bytearray] = {}
    link.send({"t": "write", "s": "late", "data": b"it\n"})
    while b"got-it\r\n" not in seen.get("late", b""):
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen)
    assert seen["late"].count(b"a\r\n") == 1  # the ring, whole: from the shell's first byte
    info = client.call("ptykeeper", "sys.info")
    assert (info["from_custody"], info["custody_late"], info["custody_pending"]) == (1, 1, False)
    assert wait_pid_exit(pid, 10)


def test_custody_that_fails_ends_the_wait_at_once_and_says_so(
        spawn_actor, client, runtime_dir, loop, custodian, links):
    """The supervisor gone before it answered (its custody socket closed): the terminal is
    told at once that nothing more comes (then it settles its sessions), and the keeper
    serves on."""
    spawn_keeper(spawn_actor)
    turn_until(loop, lambda: len(custodian.conns) == 1)  # accepted, `take` unread
    link, welcome = hello(client, runtime_dir, links)
    assert (welcome["custody"], welcome["sessions"]) == (True, [])
    custodian.close()
    assert link.wait(lambda m: m["t"] == "custody") == {"t": "custody", "sessions": []}
    link.send({"t": "create", "r": 1, "s": "after", "path": "/bin/sh", "argv": ["sh"],
               "env": ENV, "cwd": "/", "cols": 80, "rows": 24, "meta": {}})
    ok = link.wait(lambda m: m.get("r") == 1)
    assert ok["t"] == "ok", ok
    link.send({"t": "close", "r": 2, "s": "after"})
    assert link.wait(lambda m: m.get("r") == 2)["t"] == "ok"
    assert wait_pid_exit(ok["pid"], 10)


def test_custody_that_never_answers_is_given_up_and_what_it_hands_over_later_let_go(
        spawn_actor, client, runtime_dir, loop, custodian, links):
    """The bound: custody_give_up_ms without an answer, the terminal is told that nothing
    more comes (it settles: the session is lost to it); the answer, when it does come, is
    not adopted for no one: the supervisor's copies are dropped, and the shell hangs up."""
    pid = a_session_left_in_custody(spawn_actor, client, runtime_dir, loop, custodian, links)
    keeper = spawn_keeper(spawn_actor, custody_give_up_ms=GIVE_UP_MS)
    link, welcome = hello(client, runtime_dir, links)
    assert (welcome["custody"], welcome["sessions"]) == (True, [])
    given_up = link.wait(lambda m: m["t"] == "custody", timeout=GIVE_UP_MS / 1000 + 10)
    assert given_up == {"t": "custody", "sessions": []}
    assert client.call("ptykeeper", "sys.info")["custody_pending"] is False
    turn_until(loop, lambda: custodian.handed == 1)  # the answer, at last
    turn_until(loop, lambda: "late" not in custodian.held["ptykeeper"])  # dropped by the keeper
    info = client.call("ptykeeper", "sys.info")
    assert (info["from_custody"], info["sessions"]) == (0, 0)
    # The one copy of the master left is the one this keeper inherited from the test process
    # (forked while the custodian here held it; a tree's children come from a zygote): with
    # it, the shell hangs up.
    assert psutil.pid_exists(pid)
    os.kill(keeper.pid, signal.SIGKILL)
    assert wait_pid_exit(pid, 10)


# --- what a terminal does while the custody answer is pending --------------------------------

TERMINAL = "moorage.actors.terminal.actor:TerminalActor"


def test_a_session_closed_while_custody_is_pending_does_not_come_back_with_the_answer(
        spawn_actor, client, runtime_dir, loop, custodian, tmp_path):
    """A keeper-only restart, the supervisor busy: the surviving terminal hands its session
    to the new keeper (`adopt`), then the user closes it; the supervisor answers the take
    with what it held when the take came (in order, before that keep and drop), the session
    among it. The keeper lets it go rather than adopt it again for no one: a later terminal
    is not handed a session the user closed."""
    k1 = spawn_keeper(spawn_actor)
    client.call("ptykeeper", "sys.ping")
    turn_until(loop, lambda: "ptykeeper" in custodian.held)  # the first take, answered
    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    t1 = spawn_actor(TERMINAL, "terminal", quiet_ms=200, shells=["bash"])
    wait_for(lambda: client.call("terminal", "sys.info")["keeper_connected"], "welcome")
    sid = client.call("terminal", "term.create",
                      {"shell": "bash", "env": env_for(make_home(tmp_path))},
                      timeout=30)["session"]
    turn_until(loop, lambda: sid in custodian.held["ptykeeper"])
    os.kill(k1.pid, signal.SIGKILL)
    assert wait_pid_exit(k1.pid, 10)
    turn_until(loop, lambda: not custodian.conns)  # (the first keeper's connection ended)

    k2 = spawn_keeper(spawn_actor)  # its take waits, unread
    wait_for(lambda: (lambda i: i["keeper_pid"] == k2.pid and i["keeper_connected"])(
        client.call("terminal", "sys.info")), "the terminal welcomed by the new keeper")
    assert client.call("ptykeeper", "sys.info")["custody_pending"] is True
    wait_for(lambda: client.call("ptykeeper", "pty.list")["sessions"], "the terminal's adopt")
    assert client.call("terminal", "term.close", {"session": sid}) == {"closed": sid}
    # (the terminal answers once it has asked the keeper, over its own link, to close it)
    wait_for(lambda: client.call("ptykeeper", "pty.list")["sessions"] == [],
             "the keeper closing the session")

    turn_until(loop, lambda: custodian.handed >= 1)  # take (with the session), keep, drop
    wait_for(lambda: client.call("ptykeeper", "sys.info")["custody_pending"] is False,
             "the custody answer taken in")
    assert client.call("ptykeeper", "pty.list")["sessions"] == []
    info = client.call("ptykeeper", "sys.info")
    assert (info["from_custody"], info["custody_late"]) == (0, 0), info
    turn_until(loop, lambda: sid not in custodian.held.get("ptykeeper", {}))
    assert client.call("terminal", "term.list")["sessions"] == []

    # A later terminal is handed nothing.
    os.kill(t1.pid, signal.SIGKILL)
    assert wait_pid_exit(t1.pid, 10)
    spawn_actor(TERMINAL, "terminal", quiet_ms=200, shells=["bash"])
    wait_for(lambda: client.call("terminal", "sys.info")["keeper_connected"], "new welcome")
    assert client.call("terminal", "term.list")["sessions"] == []


def test_a_create_resent_while_custody_is_pending_gets_the_session_its_first_attempt_made(
        make_tree, tmp_path):
    """A term.create in flight (its shell still starting) when the keeper and the terminal
    die together: the client resends it to the new terminal, let in before the custody
    answer. The resend waits for that answer, which brings the first attempt's session, and
    is answered with it: no second shell."""
    tree = make_tree(terminal_tree(terminal="keeper_wait_ms = 20000\n"
                                            "integration_detect_ms = 60000\n"
                                   + KEEPER_CONFIG)).start(
        env={**os.environ, TAKE_DELAY_ENV: str(DELAY_MS)})
    c = tree.client
    wait_for(lambda: c.call("ptykeeper", "sys.info")["custody_pending"] is False,
             "the first keeper's custody answer", timeout=DELAY_MS / 1000 + 20)
    home = make_home(tmp_path, bashrc="while [ -e ~/hold ]; do sleep 0.05; done\n")
    (home / "hold").write_text("")
    result: dict[str, Any] = {}

    def create() -> None:
        with Client(tree.runtime_dir, timeout=10.0) as other:
            other.learn_ops("terminal")
            try:
                result["r"] = other.call("terminal", "term.create",
                                         {"shell": "bash", "env": env_for(home)}, timeout=120)
            except Exception as exc:  # (the assertions below report it)
                result["err"] = exc

    th = threading.Thread(target=create)
    th.start()
    try:
        (x,) = wait_for(lambda: c.call("ptykeeper", "pty.list")["sessions"], "X spawned")
        wait_for(lambda: c.call("terminals", "sys.info")["custody"]["held"]
                 == {"ptykeeper": 1}, "X in custody")
        victims = {n: tree.child(n)["pid"] for n in ("ptykeeper", "terminal")}
        for pid in victims.values():
            os.kill(pid, signal.SIGKILL)
        for n, pid in victims.items():
            wait_for(lambda n=n, pid=pid: c.call(n, "sys.info")["pid"] != pid, f"a new {n}")
        wait_for(lambda: c.call("terminal", "sys.info")["keeper_connected"], "welcome")
        # the resend has come while the answer is pending
        wait_for(lambda: c.call("terminal", "sys.info")["pending"] >= 1, "the resend")
        assert c.call("ptykeeper", "sys.info")["custody_pending"] is True
    finally:
        (home / "hold").unlink()
        th.join(120)
    assert "r" in result, result
    assert result["r"]["session"] == x["s"]
    listed = c.call("terminal", "term.list")["sessions"]
    assert [(s["session"], s["pid"]) for s in listed] == [(x["s"], x["pid"])]
    assert [s["s"] for s in c.call("ptykeeper", "pty.list")["sessions"]] == [x["s"]]


def test_term_list_answers_while_custody_is_pending_when_no_session_waits_for_it(
        make_tree, tmp_path):
    """A keeper-only restart, the custody answer late: the terminal outlived the keeper and
    holds every session it records, so term.list answers at once, not `unavailable`; so
    does a fresh tree's, which records none."""
    tree = make_tree(terminal_tree(KEEPER_CONFIG)).start(
        env={**os.environ, TAKE_DELAY_ENV: str(DELAY_MS)})
    c = tree.client
    wait_for(lambda: c.call("terminal", "sys.info")["keeper_connected"], "welcome")
    assert c.call("ptykeeper", "sys.info")["custody_pending"] is True
    assert c.call("terminal", "term.list", timeout=30)["sessions"] == []
    assert c.call("ptykeeper", "sys.info")["custody_pending"] is True

    wait_for(lambda: c.call("ptykeeper", "sys.info")["custody_pending"] is False,
             "the first keeper's custody answer", timeout=DELAY_MS / 1000 + 20)
    sid = c.call("terminal", "term.create",
                 {"shell": "bash", "env": env_for(make_home(tmp_path))}, timeout=30)["session"]
    old_terminal, old_keeper = tree.child("terminal")["pid"], tree.child("ptykeeper")["pid"]
    os.kill(old_keeper, signal.SIGKILL)
    wait_for(lambda: c.call("ptykeeper", "sys.info")["pid"] != old_keeper, "a new keeper")
    wait_for(lambda: c.call("terminal", "sys.info")["keeper_connected"], "the new welcome")
    assert c.call("ptykeeper", "sys.info")["custody_pending"] is True
    (listed,) = c.call("terminal", "term.list", timeout=30)["sessions"]
    assert listed["session"] == sid
    assert c.call("ptykeeper", "sys.info")["custody_pending"] is True
    assert tree.child("terminal")["pid"] == old_terminal
