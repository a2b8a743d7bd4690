"""The terminal's parser hop in a real tree: output goes to the parser actor and its markers
complete the commands; with the parser actor down or killed the terminal parses in-process
and comes back to the actor when it is up again; no marker counts twice across a switch."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.terminal_support import Commands, Output, env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TREE = terminal_tree(parser="essential = false", terminal="""
parse_timeout_ms = 500
parse_retry_ms = 200
parse_retry_max_ms = 400""")
# A parser killed is seen by its successor's answer (the stream is gone), not by a timeout:
# with one of 500 ms, a feed slowed by a loaded machine sent the session back to local
# parsing after it had come back to the actor, and "it stays there" failed once in CI.
KILLED_TREE = terminal_tree(parser="essential = false", terminal="""
parse_timeout_ms = 5000
parse_retry_ms = 200
parse_retry_max_ms = 400""")


class Session:
    """A bash session in the tree and every command run in it, to check the records."""

    def __init__(self, tree: Any, tmp_path: Any) -> None:
        self.c = tree.client
        self.home = make_home(tmp_path)
        self.sid = self.c.call("terminal", "term.create",
                               {"shell": "bash", "env": env_for(self.home)},
                               timeout=30)["session"]
        self.cmds = Commands(self.c, self.sid)
        self.codes: list[int] = []

    def exec(self, n: int) -> dict:
        """`echo n` with exit code n % 7, checked; the reply."""
        r = self.c.call("terminal", "term.exec", {"session": self.sid,
                                                  "command": f"echo n{n}; (exit {n % 7})"},
                        timeout=30)
        assert (r["exit_code"], r["output"], r["mode"]) == (n % 7, f"n{n}", "integration"), r
        self.codes.append(n % 7)
        return r

    def until_parser(self, via: str, first: int, limit: int = 400) -> int:
        """Run commands until one is served by `via`; returns the next command number."""
        for n in range(first, first + limit):
            if self.exec(n)["parser"] == via:
                return n + 1
        raise AssertionError(f"no command served by the {via} parser in {limit}")

    def check_records(self) -> None:
        """One end record per command, with its exit code: no marker was applied twice
        (a doubled D would end a command early, or end one twice)."""
        ends = [self.cmds.next_event("end")["exit_code"] for _ in self.codes]
        assert ends == self.codes
        (listed,) = self.c.call("terminal", "term.list")["sessions"]
        assert listed["untrusted_markers"] == 0
        self.cmds.close()


def test_commands_complete_through_the_parser_actor(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    before = tree.call("parser", "parse.stats")["feeds"]
    for n in range(5):
        assert s.exec(n)["parser"] == "actor"
    # every byte goes to the parser actor (in batches), which finds the markers itself (the
    # terminal, which read each command's end, asks it for none of them back: `events_from`)
    wait_for(lambda: listed(s)["parsed"] == listed(s)["offset"],
             "the parser actor parsed all the output", timeout=30)
    stats = tree.call("parser", "parse.stats")
    assert stats["feeds"] > before and stats["events"] >= 5 * 4
    parse = tree.call("terminal", "sys.info")["parse"]
    assert parse["mode"] == "actor" and parse["breaker"] == "closed"
    assert parse.get("to_local", 0) == 0
    s.check_records()


def listed(s: Session) -> dict:
    (one,) = s.c.call("terminal", "term.list")["sessions"]
    return one


def test_a_closed_sessions_stream_is_closed_in_the_parser_actor(make_tree, tmp_path):
    """term.close closes the session's stream in the parser actor at once (it named a stream
    never opened, so each closed session's stream stayed until the parser's idle reaper, 300
    s on, counted against the terminal's streams: a churn of sessions evicted live ones)."""
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    assert s.exec(1)["parser"] == "actor"
    before = tree.call("parser", "parse.stats")
    assert before["streams"] == 1, before
    tree.call("terminal", "term.close", {"session": s.sid})
    after = wait_for(lambda: (st := tree.call("parser", "parse.stats"))["streams"] == 0 and st,
                     "the closed session's stream closed in the parser actor")
    assert after["closed"] == before["closed"] + 1 and after["reaped"] == 0, after
    s.cmds.close()


def test_plain_output_goes_to_the_parser_actor_all_the_same(make_tree, tmp_path):
    """Output with no ESC in it, arriving when the parser is in ground state, waits to go
    with the next chunk that has one (it cannot hold a marker), or a moment when none
    comes: the parser actor still gets every byte, in order."""
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    r = s.c.call("terminal", "term.exec", {"session": s.sid, "command": "seq 1 3000"},
                 timeout=30)
    assert r["output"].split("\n")[-1] == "3000" and r["parser"] == "actor", r
    s.codes.append(0)
    parse = tree.call("terminal", "sys.info")["parse"]
    flushed, counted = parse.get("inert_flushed", 0), parse.get("inert_bytes", 0)
    out = Output(s.c, s.sid)
    # the plain output comes when all before it is parsed, and nothing follows it; it comes
    # from the foreground job that the SIGINT below ends (a `seq; sleep` list would leave a
    # moment between its two jobs where the signal goes to a `seq` that is exiting)
    s.c.call("terminal", "term.write", {"session": s.sid, "data": (
        "while [ ! -e ~/go ]; do sleep 0.01; done; sh -c 'seq 7771 7775; exec sleep 60'\r")})
    wait_for(lambda: listed(s)["state"] == "running" and
             listed(s)["parsed"] == listed(s)["offset"],
             "the command runs and all its output so far is parsed", timeout=30)
    (s.home / "go").write_text("")
    out.until(lambda d: b"7775\r\n" in d)
    wait_for(lambda: listed(s)["parsed"] == listed(s)["offset"],
             "the parser actor parsed the plain output too", timeout=30)
    parse = tree.call("terminal", "sys.info")["parse"]
    assert parse["inert_flushed"] > flushed
    # and went as a count: the parser actor took the 25 bytes as parsed without them
    assert parse["inert_bytes"] >= counted + len("7771\r\n" * 5)
    out.close()
    s.c.call("terminal", "term.signal", {"session": s.sid, "signal": "SIGINT"})
    s.codes.append(130)
    wait_for(lambda: listed(s)["state"] == "prompt", "the interrupted command ends",
             timeout=30)
    for n in range(3):
        assert s.exec(n)["parser"] == "actor"
    s.check_records()


def test_a_count_the_parser_refuses_inside_an_osc_past_its_cap_goes_as_bytes(make_tree,
                                                                              tmp_path):
    """An OSC longer than the parser's cap (the 150 KB command line of an E marker) is
    consumed to its end without being held, so the parser says it buffers nothing: plain
    text within it, sent as a count, is refused ("send them"). The bytes go instead and the
    session stays on the parser actor, where it went to parsing in-process."""
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    s.exec(0)
    x = "head -c 100000 /dev/zero | tr '\\0' x"
    out = Output(s.c, s.sid)
    s.c.call("terminal", "term.write", {"session": s.sid, "data": (
        f"printf '\\033]777;'; {x}; while [ ! -e ~/go ]; do sleep 0.01; done; {x}; "
        "printf '\\007'; echo osc-''done\r")})
    wait_for(lambda: listed(s)["state"] == "running" and listed(s)["offset"] > 100_000 and
             listed(s)["parsed"] == listed(s)["offset"],
             "the OSC's first 100 KB parsed, the command still running", timeout=30)
    (s.home / "go").write_text("")
    out.until(lambda d: b"osc-done\r\n" in d)
    out.close()
    s.codes.append(0)
    wait_for(lambda: listed(s)["state"] == "prompt" and
             listed(s)["parsed"] == listed(s)["offset"], "the command ends", timeout=30)
    parse = tree.call("terminal", "sys.info")["parse"]
    assert parse.get("to_local", 0) == 0, parse
    assert parse.get("inert_refused", 0) >= 1, parse
    assert s.exec(1)["parser"] == "actor"
    s.check_records()


PLAIN_LOG = b"".join(b"line %07d of a plain log\n" % i for i in range(60_000))
COLOURED_LOG = b"".join(b"\x1b[1;32mline\x1b[0m %07d of a \x1b[33mcoloured\x1b[m log\n" % i
                        for i in range(60_000))


@pytest.mark.parametrize("log", [PLAIN_LOG, COLOURED_LOG], ids=["plain", "coloured"])
def test_a_big_inert_output_goes_as_counts_and_the_markers_around_it_as_bytes(
        make_tree, tmp_path, log: bytes) -> None:
    """A `cat` of 1.7 MB with no ESC in it, or of 3 MB of coloured lines (SGR sequences, as a
    build prints), printed when all before it is parsed. Plain: the parser actor is told its
    size, a MiB a feed at most, and sent none of it. Coloured: every byte is accounted to it
    once, as a count or as bytes (a chunk the PTY cut inside a sequence, and what follows it
    until a reply says the stream holds nothing), and counts carry some of it. The commands
    around it are recorded as ever."""
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    s.exec(0)
    (s.home / "big.log").write_bytes(log)
    s.c.call("terminal", "term.write", {"session": s.sid, "data": (
        "while [ ! -e ~/go ]; do sleep 0.01; done; cat ~/big.log; "
        "while [ ! -e ~/done ]; do sleep 0.01; done\r")})
    wait_for(lambda: listed(s)["state"] == "running" and
             listed(s)["parsed"] == listed(s)["offset"],
             "the command runs and all its output so far is parsed", timeout=30)
    before, at = tree.call("parser", "parse.stats"), listed(s)["offset"]
    (s.home / "go").write_text("")
    size = len(log) + log.count(b"\n")  # (the tty writes each \n as \r\n)
    wait_for(lambda: listed(s)["offset"] >= at + size and
             listed(s)["parsed"] == listed(s)["offset"],
             "the parser actor accounted for the cat's output", timeout=60)
    after = tree.call("parser", "parse.stats")
    counted = after["bytes_inert"] - before["bytes_inert"]
    parsed = after["bytes_parsed"] - before["bytes_parsed"]
    print(f"of {size} bytes: {counted} as counts, {parsed} as bytes")
    if log is PLAIN_LOG:
        assert (counted, parsed) == (size, 0)
        assert tree.call("terminal", "sys.info")["parse"]["inert_feeds"] >= 2
    else:
        assert counted + parsed == size and counted > 0, (counted, parsed, size)
    (s.home / "done").write_text("")
    s.codes.append(0)
    wait_for(lambda: listed(s)["state"] == "prompt", "the command ends", timeout=30)
    s.exec(1)
    parse = tree.call("terminal", "sys.info")["parse"]
    assert parse.get("to_local", 0) == 0, (parse, tree.output()[-3000:])
    assert tree.child("terminal")["restarts"] == 0, tree.output()
    s.check_records()


def test_the_end_of_a_command_is_read_at_once_when_the_parser_has_caught_up(make_tree,
                                                                            tmp_path):
    """The chunk with a command's end marker, arriving when the parser actor has parsed all
    before it, is read by the terminal itself: the command is answered without the round
    trip; the parser actor parses the chunk after, and is not asked for the markers the
    terminal has (one end record per command all the same)."""
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    for n in range(2):
        s.exec(n)
    before = tree.call("terminal", "sys.info")["parse"].get("read_ahead", 0)
    go = s.home / "go"
    box: dict[str, Any] = {}

    def run() -> None:
        with Client(s.c.runtime_dir, timeout=60.0) as c:
            box["reply"] = c.call("terminal", "term.exec", {
                "session": s.sid,
                "command": "echo gated; while [ ! -e ~/go ]; do sleep 0.01; done; (exit 4)"})

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: listed(s)["busy"] and listed(s)["state"] == "running" and
                 listed(s)["parsed"] == listed(s)["offset"],
                 "the command runs and all its output so far is parsed", timeout=30)
        go.write_text("")
    finally:
        t.join(60)
    r = box["reply"]
    assert (r["exit_code"], r["output"], r["parser"]) == (4, "gated", "actor"), r
    s.codes.append(4)
    assert tree.call("terminal", "sys.info")["parse"]["read_ahead"] > before
    wait_for(lambda: listed(s)["parsed"] == listed(s)["offset"],
             "the parser actor parsed the chunk too", timeout=30)
    s.check_records()


def test_commands_are_answered_while_the_parser_actor_is_frozen(make_tree, tmp_path):
    """A quick command's end is read in the terminal, and what a read-ahead parsed counts as
    parsed: with the parser actor frozen (SIGSTOP, no feed timing out), commands are still
    answered one after another, each starting when all the session's output before it is
    parsed. Thawed, the parser actor gets every byte (one end record per command)."""
    tree = make_tree(TREE.replace("misses = 5", "misses = 600")  # no hang while frozen
                     .replace("parse_timeout_ms = 500", "parse_timeout_ms = 120000")).start()
    s = Session(tree, tmp_path)
    assert s.exec(0)["parser"] == "actor"
    wait_for(lambda: listed(s)["parsed"] == listed(s)["offset"], "the first command parsed",
             timeout=30)
    pid = tree.child("parser")["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for n in range(1, 6):
            assert s.exec(n)["parser"] == "actor"
        assert listed(s)["parsed"] < listed(s)["offset"]  # the parser actor has not
        assert tree.call("terminal", "sys.info")["parse"]["held"] > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: listed(s)["parsed"] == listed(s)["offset"],
             "the parser actor parsed all of it", timeout=30)
    assert tree.call("terminal", "sys.info")["parse"]["breaker"] == "closed"
    s.check_records()


def test_parse_local_in_config_keeps_the_parser_actor_out(make_tree, tmp_path):
    tree = make_tree(TREE + 'parse = "local"\n').start()
    s = Session(tree, tmp_path)
    for n in range(3):
        assert s.exec(n)["parser"] == "local"
    assert tree.call("parser", "parse.stats")["feeds"] == 0
    assert tree.call("terminal", "sys.info")["parse"]["mode"] == "local"
    s.check_records()


def test_a_parser_actor_that_is_down_leaves_parsing_local_until_it_is_back(make_tree,
                                                                           tmp_path):
    tree = make_tree(TREE).start()
    s = Session(tree, tmp_path)
    assert s.exec(0)["parser"] == "actor"
    assert tree.call("supervisor", "sup.shed", {"on": True})["shed"] == ["parser"]
    tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "parser")
    # Commands are answered meanwhile (their ends read in the terminal), until the first
    # feed's timeout opens the breaker; from then on the session parses here.
    n = s.until_parser("local", 1, limit=1000)
    for m in range(n, n + 3):
        assert s.exec(m)["parser"] == "local"
    info = tree.call("terminal", "sys.info")["parse"]
    assert info["breaker"] != "closed" and info["to_local"] >= 1
    tree.call("supervisor", "sup.shed", {"on": False})
    tree.wait_event(lambda e: e["event"] == "started" and e["child"] == "parser")
    n = s.until_parser("actor", n + 3)
    for m in range(n, n + 3):  # and it stays there
        assert s.exec(m)["parser"] == "actor"
    # (the commands' ends are read in the terminal: the parser actor's first answers, which
    # close the breaker, may come after them)
    wait_for(lambda: tree.call("terminal", "sys.info")["parse"]["breaker"] == "closed",
             "the parser actor answered and the breaker closed", timeout=30)
    s.check_records()


def test_sigkill_of_the_parser_during_output_loses_no_marker_and_doubles_none(make_tree,
                                                                              tmp_path):
    tree = make_tree(KILLED_TREE).start()
    s = Session(tree, tmp_path)
    assert s.exec(0)["parser"] == "actor"
    out = Output(s.c, s.sid)
    go = s.home / "go"
    go.write_text("")
    box: dict[str, Any] = {}

    def run() -> None:
        with Client(s.c.runtime_dir, timeout=120.0) as c:
            try:
                box["reply"] = c.call("terminal", "term.exec", {
                    "session": s.sid,
                    "command": "while [ -e ~/go ]; do seq 1 2000; done; echo tail-end; (exit 3)"})
            except MoorageError as exc:
                box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    try:
        out.until(lambda d: len(d) > 300_000)
        victim = tree.child("parser")["pid"]
        tree.call("supervisor", "sup.kill", {"child": "parser", "signal": "SIGKILL"})
        ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "parser")
        assert ev["pid"] != victim
        seen = len(out.data)
        out.until(lambda d: len(d) > seen + 2_000_000)  # output went on over the switches
    finally:
        go.unlink()
        t.join(120)
        out.close()
    assert "error" not in box, box.get("error")
    r = box["reply"]
    assert r["exit_code"] == 3 and r["output"].endswith("2000\ntail-end"), r["output"][-200:]
    s.codes.append(3)
    n = s.until_parser("actor", 1)  # back to the parser actor once it answers again
    for m in range(n, n + 3):
        assert s.exec(m)["parser"] == "actor"
    parse = tree.call("terminal", "sys.info")["parse"]
    # the hop saw the parser go: its stream was gone (reopened) or its feed unanswered (local)
    assert parse.get("reopened", 0) + parse.get("to_local", 0) >= 1, parse
    s.check_records()
