"""term.exec and input a person typed with term.write. A command of term.exec went to the
shell whenever its last trusted marker was a prompt's B, whatever had been typed since: after
a half-typed line it was added to that line (`echo partial-` and `echo EXEC` ran as
`partial-echo EXEC`, answered as the exec's, trusted); after a line just entered, whose
command had not started yet, it was type-ahead for that command (the exec was answered with
the user's command's exit code, and its own line ran later as a stray command, or went into
the program: a `cat > f` wrote it to the file). Input typed since the last prompt that took
it makes the session refuse term.exec `session_busy` (nothing sent, the user's line left as
it is) until a prompt comes after a line was let go; then the command runs alone. Without
the integration, a program the shell started holding the terminal (its foreground process
group) makes the session busy: term.exec would be typed into it. A command the shell never
read, a program holding the terminal, is not signalled at its timeout: the signal was that
program's.
Real tree, real bash and zsh."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.terminal_support import ListedSession, env_for, make_home, terminal_tree
from tests.waiting import open_gate, wait_for

pytestmark = pytest.mark.timeout(120)

# quiet_ms: a command without the integration ends at a quiet spell that long, which on a
# loaded machine must outlast the wait between its input and its shell's first output.
TREE = terminal_tree("quiet_ms = 1000\n")

SHELLS = ["bash", pytest.param("zsh", marks=pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it)"))]

PROMPT_END = b"\x1b]633;B;"  # a prompt's B, as the integration draws it
# What comes just before a command's output: the BEL that ends its C (zsh) or E (bash)
# marker; the shell's echo of a line typed is not preceded by it
OUTPUT = b"\x07"


def session(tree: Any, tmp_path: Path, shell: str, integration: bool = True) -> ListedSession:
    c = tree.client
    sid = c.call("terminal", "term.create", {"shell": shell, "integration": integration,
                                             "env": env_for(make_home(tmp_path))},
                 timeout=30)["session"]
    s = ListedSession(c, sid)
    mode = "integration" if integration else "no_integration"
    wait_for(lambda: s.where() == ("prompt", False, mode), "the session at its first prompt")
    return s


def scrollback(s: ListedSession) -> bytes:
    r = s.client.request("terminal", "term.scrollback", {"session": s.sid})
    return bytes(r.attachments[0])


def prompt_after(s: ListedSession, text: bytes) -> bool:
    """Has the shell drawn a prompt (its B) after the last `text` in the session's output?
    What term.scrollback serves the session has taken, and an exec is decided on all that
    output parsed: a term.exec from here on finds that prompt."""
    data = scrollback(s)
    at = data.rfind(text)
    return at >= 0 and PROMPT_END in data[at + len(text):]


def typed_then_exec(s: ListedSession, typed: str, command: str,
                    timeout_ms: int) -> tuple[threading.Thread, dict[str, Any]]:
    """`typed` written and a term.exec of `command` sent right behind it (pipelined: the
    exec reaches the terminal before the shell has read the line), in a thread with a
    client of its own (the exec may wait on what the test does next); the exec's result or
    its error into the dict returned."""
    out: dict[str, Any] = {}

    def run() -> None:
        with Client(s.client.runtime_dir, timeout=10.0) as client:
            wrote, ran = client.pipeline("terminal", [
                ("term.write", {"session": s.sid, "data": typed}),
                ("term.exec", {"session": s.sid, "command": command,
                               "timeout_ms": timeout_ms})], timeout=timeout_ms / 1000 + 10)
            assert wrote == {"queued": len(typed.encode())}, wrote
            out["error" if isinstance(ran, MoorageError) else "result"] = ran

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def held_then_run_alone(s: ListedSession, output: bytes) -> bytes:
    """term.exec refused `session_busy` while the line typed waits at the prompt, nothing of
    it sent; then Enter runs that line (its `output`), and once its prompt is back the
    command runs alone. The scrollback then."""
    refused = s.refused("echo EXEC")
    assert refused.name == "session_busy", refused
    assert b"EXEC" not in scrollback(s)
    s.call("term.write", {"data": "\r"})
    wait_for(lambda: prompt_after(s, OUTPUT + output), "the line typed run, its prompt back")
    r = s.exec("echo EXEC")
    assert (r["output"], r["exit_code"], r["trusted"]) == ("EXEC", 0, True), r
    return scrollback(s)

@pytest.mark.parametrize("shell", SHELLS)
def test_a_half_typed_line_refuses_term_exec_and_is_left_as_typed(make_tree, tmp_path, shell):
    """`echo partial-` typed, no Enter: term.exec is refused `session_busy` (it would have
    been added to the line), nothing of it sent; a resize, which draws the prompt again with
    the line, does not change that. Enter then runs the user's line as typed, and once its
    prompt is back the command runs alone, with its own output and exit code."""
    s = session(make_tree(TREE).start(), tmp_path, shell)
    s.call("term.write", {"data": "echo partial-"})
    refused = s.refused("echo EXEC")
    assert refused.name == "session_busy", refused
    assert "typed" in refused.error.message, refused
    prompts = scrollback(s).count(PROMPT_END)
    s.call("term.resize", {"cols": 100, "rows": 30})
    wait_for(lambda: scrollback(s).count(PROMPT_END) > prompts,
             "the prompt drawn again on the resize, with the line")
    data = held_then_run_alone(s, b"partial-\r\n")
    assert b"partial-echo" not in data, data[-600:]
    assert data.count(OUTPUT + b"partial-\r\n") == 1, data[-600:]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_line_just_entered_is_not_given_the_exec_nor_its_exit_code(make_tree, tmp_path,
                                                                    shell):
    """A command line entered (Enter) and a term.exec right after it, while that command
    waits at a fifo (it reads nothing from the terminal): the exec was type-ahead for it,
    answered with the user's command's exit code (7), and its line run later as a stray
    command. Now it is refused `session_busy` (or waits, and runs alone), never given the
    user's exit code; refused, it runs alone once the user's command ended and its prompt is
    back. Its line runs once. Three rounds: the race was lost some of the time."""
    s = session(make_tree(TREE).start(), tmp_path, shell)
    user_end = b"\x1b]633;D;7;"
    for i in range(3):
        fifo = tmp_path / f"go{i}"
        os.mkfifo(fifo)
        command = f"echo EXEC-RAN-{i}"
        user = f"sh -c 'read x < {fifo}; echo user-done; exit 7'\r"
        t, out = typed_then_exec(s, user, command, 20_000)
        open_gate(fifo)
        t.join(30)
        assert not t.is_alive()
        if "error" in out:
            assert out["error"].name == "session_busy", out
            wait_for(lambda i=i: scrollback(s).count(user_end) == i + 1 and
                     prompt_after(s, user_end), "the user's command ended, its prompt back")
            r = s.exec(command)
        else:
            r = out["result"]
        assert (r["output"], r["exit_code"], r["trusted"]) == (f"EXEC-RAN-{i}", 0, True), r
        wait_for(lambda i=i: prompt_after(s, f"EXEC-RAN-{i}\r\n".encode()),
                 "the exec's prompt back")
        data = scrollback(s)
        assert data.count(user_end) == i + 1, data[-800:]
        assert data.count(OUTPUT + f"EXEC-RAN-{i}\r\n".encode()) == 1, data[-800:]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_line_typed_ahead_while_a_command_runs_holds_the_exec_at_the_next_prompt(
        make_tree, tmp_path, shell):
    """`echo ahead-` typed (no Enter) while a command runs that reads nothing from the
    terminal: the shell takes it at its next prompt, as the start of that prompt's line. The
    command's D came after the typing, which counted as the line let go: term.exec then ran
    joined to it (`echo ahead-echo EXEC`). Now the prompt after the command holds it (the
    integration says input waits for the line editor), term.exec is refused `session_busy`
    until that line is taken, and then runs alone."""
    s = session(make_tree(TREE).start(), tmp_path, shell)
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    s.call("term.write", {"data": f"read x < {fifo}; echo user-done\r"})
    wait_for(lambda: s.where()[:2] == ("running", True), "the user's command running")
    s.call("term.write", {"data": "echo ahead-"})
    open_gate(fifo)
    wait_for(lambda: prompt_after(s, b"user-done\r\n"),
             "the user's command ended, its prompt back")
    assert b"ahead-echo" not in held_then_run_alone(s, b"ahead-\r\n")

@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("command", "answer", "said"), [
    ({"bash": "read -p 'Name? ' x; echo got=$x", "zsh": "read '?Name? ' x; echo got=$x"},
     "yes\r", "got=yes"),  # a line, read whole
    ({"bash": "read -rsn1 -p 'Sure? ' k; echo; echo key=$k",
      "zsh": "read -k1 '?Sure? ' k; echo; echo key=$k"}, "y", "key=y"),  # a key as it comes
])
def test_input_a_command_read_leaves_no_line_for_the_next_prompt(
        make_tree, tmp_path, shell, command, answer, said):
    """What a running command asked for and read (a line, or a key with the terminal out of
    canonical mode, as both shells set it before they ask) is not type-ahead: term.exec
    runs at the next prompt."""
    s = session(make_tree(TREE).start(), tmp_path, shell)
    s.call("term.write", {"data": command[shell] + "\r"})
    wait_for(lambda: scrollback(s).endswith(b"? "), "the command asking")
    s.call("term.write", {"data": answer})
    wait_for(lambda: prompt_after(s, said.encode() + b"\r\n"), "the command ended, its prompt")
    r = s.exec("echo EXEC")
    assert (r["output"], r["exit_code"], r["trusted"]) == ("EXEC", 0, True), r

@pytest.mark.parametrize("shell", SHELLS)
def test_a_program_reading_the_terminal_is_not_given_the_exec(make_tree, tmp_path, shell):
    """`cat > file` entered and a term.exec right after it: the exec's line went into the
    file, and its timeout then interrupted cat. Now it is refused (or waits, and runs alone
    after cat): the file holds only what the user typed, and cat ends as the user ends it
    (^D). Three rounds: the race was lost some of the time."""
    s = session(make_tree(TREE).start(), tmp_path, shell)
    for i in range(3):
        target = tmp_path / f"typed{i}.txt"
        t, out = typed_then_exec(s, f"cat > {target}\r", "echo MARK", 20_000)
        wait_for(lambda: s.where()[:2] == ("running", True), "cat running")
        prompts = scrollback(s).count(PROMPT_END)
        s.call("term.write", {"data": "hello\r"})
        wait_for(lambda target=target: target.exists() and target.read_bytes() == b"hello\n",
                 "the user's line in the file, and only it")
        assert s.refused("echo MARK").name == "session_busy"
        s.call("term.write", {"data": "\x04"})
        t.join(30)
        assert not t.is_alive()
        if "error" in out:
            assert out["error"].name == "session_busy", out
            wait_for(lambda prompts=prompts: scrollback(s).count(PROMPT_END) > prompts,
                     "cat ended by the user's ^D, its prompt back")
            r = s.exec("echo MARK")
        else:
            r = out["result"]
        assert (r["output"], r["exit_code"]) == ("MARK", 0), r
        assert target.read_bytes() == b"hello\n"


@pytest.mark.parametrize("shell", SHELLS)
def test_without_the_integration_a_program_in_the_foreground_makes_the_session_busy(
        make_tree, tmp_path, shell):
    """A session created without the integration, `cat > file` typed: the program holds the
    terminal, so term.list says busy and term.exec is refused `session_busy` (it was typed
    into cat, and the file gained it). Once cat ends, the shell holds the terminal again and
    the command runs."""
    s = session(make_tree(TREE).start(), tmp_path, shell, integration=False)
    target = tmp_path / "typed.txt"
    s.type(f"cat > {target}")
    wait_for(lambda: s.listed()["busy"], "cat holding the terminal, the session busy")
    refused = s.refused("echo MARK")
    assert refused.name == "session_busy", refused
    assert "foreground" in refused.error.message, refused
    s.call("term.write", {"data": "hello\r\x04"})
    wait_for(lambda: not s.listed()["busy"], "cat ended, the session free")
    r = s.exec("echo MARK")
    # (without the integration a command's output is a guess, by silence: what cat's end and
    # the prompt after it drew may still come before it on a loaded machine)
    assert (r["output"].splitlines()[-1:], r["mode"], r["exit_code"]) == (
        ["MARK"], "no_integration", None), r
    assert target.read_bytes() == b"hello\n"
