"""term.exec where the shell's integration stops showing or has not shown yet, and command
lines too long to type: a shell exec'd in place of the session's (it has no nonce, so no
marker ever comes from it), an rc file slower than integration_detect_ms (commands typed ahead
of its first prompt), and a line of a hundred kilobytes. Real keeper, real bash and zsh."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.terminal_support import env_for, make_home
from tests.waiting import gate_opened, open_gate, wait_for

pytestmark = pytest.mark.timeout(120)

SHELLS = ["bash", pytest.param("zsh", marks=pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it)"))]
RC = {"bash": ".bashrc", "zsh": ".zshrc"}
# an rc file held at a FIFO until the test opens it, deaf to SIGINT meanwhile (so that what
# a timeout does to the input typed ahead is all that decides whether that input runs)
GATED_RC = "trap '' INT\nread -r line < \"$HOME/gate\"\ntrap - INT\n"


class Term:
    def __init__(self, client: Client, home: Path) -> None:
        self.client = client
        self.home = home

    def call(self, op: str, args: dict, timeout: float = 30.0) -> Any:
        return self.client.call("terminal", op, args, timeout=timeout)

    def create(self, shell: str) -> str:
        return self.call("term.create", {"shell": shell, "env": env_for(self.home)})["session"]

    def exec(self, sid: str, command: str, timeout_ms: int = 20_000) -> dict:
        return self.call("term.exec", {"session": sid, "command": command,
                                       "timeout_ms": timeout_ms}, timeout=timeout_ms / 1000 + 10)

    def info(self, sid: str) -> dict:
        return next(s for s in self.call("term.list", {})["sessions"] if s["session"] == sid)

    def integrated(self, sid: str) -> None:
        """Until the session's integration shows (a loaded machine may start zsh past the
        detection; its first prompt's marker then brings the integration back)."""
        wait_for(lambda: self.info(sid)["mode"] == "integration" and
                 self.info(sid)["state"] == "prompt", "the session's integration")

    def gated(self, shell: str) -> tuple[str, Path]:
        """A session whose rc file waits at a gate: it settles without the integration."""
        (self.home / RC[shell]).write_text(GATED_RC)
        gate = self.home / "gate"
        os.mkfifo(gate)
        sid = self.create(shell)
        assert self.info(sid)["mode"] == "no_integration"
        return sid, gate

    def typed_ahead(self, sid: str, text: bytes) -> bool:
        """The terminal echoes input nobody has read yet (canonical mode)."""
        r = self.client.request("terminal", "term.scrollback", {"session": sid})
        return text in r.attachments[0]


# integration_detect_ms: with quiet_ms (200 ms, or 1000) what a quiet shell at its line editor
# must outlast to be taken for one that stopped marking; the tests that hold a quiet program
# hold it for four of these. A shell slower than this to its first prompt gets the
# integration back at it (Term.integrated waits for that).
DETECT_MS = 1000


def start_term(spawn_actor, client, tmp_path, quiet_ms: int,
               detect_ms: int = DETECT_MS) -> Term:
    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal", quiet_ms=quiet_ms,
                integration_detect_ms=detect_ms, shells=["bash"])
    return Term(client, make_home(tmp_path))


@pytest.fixture
def term(spawn_actor, client, tmp_path):
    return start_term(spawn_actor, client, tmp_path, quiet_ms=200)


@pytest.fixture
def hasty_term(spawn_actor, client, tmp_path):
    """integration_detect_ms far below what a shell takes to read a long paste."""
    return start_term(spawn_actor, client, tmp_path, quiet_ms=200, detect_ms=50)


@pytest.fixture
def patient_term(spawn_actor, client, tmp_path):
    """Without the integration a command ends at quiet_ms of silence: 200 ms is less than a
    loaded machine may leave between a command's input and its shell's first output."""
    return start_term(spawn_actor, client, tmp_path, quiet_ms=1000)


def expect_error(name: str, fn, *args, **kw) -> MoorageError:
    with pytest.raises(MoorageError) as e:
        fn(*args, **kw)
    assert e.value.name == name, e.value
    return e.value


# --- a shell that stops marking ---------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_a_shell_execd_in_place_of_the_sessions_ends_the_command_and_the_session_goes_on(
        term, shell):
    """`exec bash` (or zsh): its C came, but the new shell has no nonce, so no D ever does.
    Back at its line editor and quiet, it is known to read commands: the exec ends without
    the integration (no exit code) and the next commands run, where the exec waited for its
    timeout and the session then refused every command as busy, for good."""
    sid = term.create(shell)
    term.integrated(sid)
    r = term.exec(sid, f"exec {shell}")
    assert (r["mode"], r["trusted"], r["exit_code"]) == ("no_integration", False, None)
    assert (term.info(sid)["mode"], term.info(sid)["state"]) == ("no_integration", "prompt")
    r = term.exec(sid, "echo after-$((6*7))")
    assert (r["output"], r["mode"]) == ("after-42", "no_integration")


def test_a_session_whose_shell_stops_marking_takes_commands_again_after_a_timeout(
        patient_term):
    """`exec sh` reads its commands in canonical mode, as a running command would: the exec
    waits for its timeout (SIGINT). No marker within integration_detect_ms after that, and
    the shell the terminal's foreground group: the session takes commands without the
    integration, instead of answering session_busy for good."""
    term = patient_term
    sid = term.create("bash")
    term.integrated(sid)
    err = expect_error("timeout", term.exec, sid, "exec sh", timeout_ms=1500)
    assert err.error.detail["signalled"] == "SIGINT"
    wait_for(lambda: (term.info(sid)["mode"], term.info(sid)["state"]) ==
             ("no_integration", "prompt"), "the session free again")
    r = term.exec(sid, "echo after-$((6*7))")
    # (its last line: sh's prompt drawn again after the SIGINT may come ahead of the command
    # where the terminal had not yet read it when the command went: no marker says)
    assert (r["output"].splitlines()[-1:], r["mode"], r["exit_code"]) == (
        ["after-42"], "no_integration", None), r


def test_a_long_command_that_prints_nothing_is_waited_for_to_its_end(term):
    """A program in the foreground is no sign of a lost integration, however quiet."""
    sid = term.create("bash")
    term.integrated(sid)
    r = term.exec(sid, f"sleep {4 * DETECT_MS / 1000}; (exit 4)")
    assert (r["exit_code"], r["mode"]) == (4, "integration")


@pytest.mark.parametrize(("shell", "command"), [
    ("bash", "read -rsn1 -p 'Delete? [y/n] ' k; echo; echo got=$k"),
    pytest.param("zsh", "read -k1 '?Delete? [y/n] ' k; echo; echo got=$k", marks=SHELLS[1].marks),
])
def test_a_command_the_shell_reads_keys_for_itself_waits_for_them(term, shell, command):
    """A builtin reading keys (bash's `read -n1`, zsh's `read -k`, its `rm *` question) has
    the terminal as a line editor keeps it, in the shell's own process group, quiet: yet the
    shell is the session's own, whose D comes once it is answered. The command waits for
    its key (it was answered after integration_detect_ms, and the next command's first
    character taken for the answer)."""
    sid = term.create(shell)
    term.integrated(sid)
    box: dict[str, Any] = {}
    answered = threading.Event()

    def run() -> None:
        with Client(term.client.runtime_dir, timeout=60.0) as c:
            box["reply"] = c.call("terminal", "term.exec", {
                "session": sid, "command": command, "timeout_ms": 40_000}, timeout=50)
        answered.set()

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: term.typed_ahead(sid, b"Delete? [y/n] "), "the question asked")
        # four times integration_detect_ms, the key not given: still waiting for it
        assert not answered.wait(4 * DETECT_MS / 1000), box
        term.call("term.write", {"session": sid, "data": "y"})
    finally:
        t.join(60)
    r = box["reply"]
    assert (r["output"].splitlines()[-1], r["exit_code"], r["mode"]) == (
        "got=y", 0, "integration"), r


# --- an rc file slower than the detection -------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_a_command_typed_ahead_of_a_slow_rc_file_is_not_answered_before_it_runs(term, shell):
    """The session settled without the integration while its rc file still runs. The command
    typed ahead is not answered after a quiet spell (empty, run seconds later for nobody):
    no prompt yet, and its input unread, it waits; here its timeout comes first, and its
    input is dropped with ^C, so it never runs. The rc file's end brings the integration
    back, and the next command runs with it."""
    sid, gate = term.gated(shell)
    ran = term.home / "ran"
    err = expect_error("timeout", term.exec, sid, f"touch {ran}; echo typed-$((6*7))",
                       timeout_ms=1500)
    assert "had not started" in str(err) and "no prompt yet" in str(err)
    # (the ^C goes through the keeper, after the answer: the rc file let go before it lands
    # would have its SIGINT end the shell's start-up files there, the integration's too)
    wait_for(lambda: term.typed_ahead(sid, b"^C"), "the ^C taken by the terminal")
    # (bash's rc file waits on at its gate; zsh gives its rc file up at the SIGINT)
    wait_for(lambda: gate_opened(gate) or term.info(sid)["mode"] == "integration",
             "the rc file's end")
    term.integrated(sid)
    r = term.exec(sid, "echo next-$((6*7)); (exit 3)")
    assert (r["output"], r["exit_code"], r["mode"]) == ("next-42", 3, "integration")
    assert not ran.exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_timeout_drops_what_the_keeper_still_holds_of_a_command_not_started(term, shell):
    """A command longer than the terminal's input queue: the rest of it waits in the keeper.
    The ^C its timeout types drops what the terminal holds, and the keeper drops the rest:
    none of its lines runs when the shell reads again (they ran, after the ^C)."""
    sid, gate = term.gated(shell)
    made = term.home / "made"
    made.mkdir()
    lines = [f"touch {made}/f{i}" for i in range(600)]  # (about 20 KB: 4 KB fit in the queue)
    expect_error("timeout", term.exec, sid, "\n".join(lines), timeout_ms=1500)
    # (the ^C goes through the keeper, after the answer: the rc file let go before it lands
    # would have its SIGINT end the shell's start-up files there)
    wait_for(lambda: term.typed_ahead(sid, b"^C"), "the ^C taken by the terminal")
    wait_for(lambda: gate_opened(gate) or term.info(sid)["mode"] == "integration",
             "the rc file's end")
    term.integrated(sid)
    r = term.exec(sid, f"ls {made} | wc -l")
    assert (r["output"].strip(), r["exit_code"]) == ("0", 0), r


def test_a_command_typed_ahead_of_a_slow_rc_file_ends_at_its_marker_with_its_output(term):
    """Typed while the rc file waits, read at the first prompt: the answer is its output,
    ended by its own D (a pause in it is no end), whenever the rc file ends."""
    sid, gate = term.gated("bash")
    box: dict[str, Any] = {}

    def run() -> None:
        with Client(term.client.runtime_dir, timeout=60.0) as c:
            box["reply"] = c.call("terminal", "term.exec", {
                "session": sid, "command": "echo one-$((6*7)); sleep 1; echo two",
                "timeout_ms": 40_000}, timeout=50)

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: term.typed_ahead(sid, b"echo two"), "the command typed ahead")
        open_gate(gate)
    finally:
        t.join(60)
    r = box["reply"]
    assert (r["output"], r["mode"], r["trusted"]) == ("one-42\ntwo", "no_integration", False)
    r = term.exec(sid, "echo three")
    assert (r["output"], r["exit_code"], r["mode"]) == ("three", 0, "integration")


def test_a_shell_that_reads_the_command_without_marking_still_answers_at_quiet(term):
    """An rc file that replaces the shell with one that has no integration: the command is
    read (nothing waits unread), so after integration_detect_ms it ends at quiet."""
    (term.home / ".bashrc").write_text("exec sh\n")
    sid = term.create("bash")
    r = term.exec(sid, "echo test")
    assert (r["exit_code"], r["output"], r["mode"]) == (None, "test", "no_integration")


# --- long command lines -------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_a_long_command_line_goes_as_one_paste_and_runs_whole(term, shell):
    """150 KB on one line: typed, zsh's line editor redraws the line for every character
    (minutes), so the command outlived its timeout and its tail then ran on its own. As one
    bracketed paste it is read at once, runs whole, and is one history entry."""
    sid = term.create(shell)
    term.integrated(sid)
    n = 150_000
    r = term.exec(sid, f"echo {'x' * n} | wc -c", timeout_ms=30_000)
    assert (r["output"].strip(), r["exit_code"], r["mode"]) == (str(n + 1), 0, "integration")
    r = term.exec(sid, "fc -ln -1 | wc -c")
    assert int(r["output"].strip()) >= len(f"echo {'x' * n} | wc -c")
    r = term.exec(sid, "echo next")
    assert (r["output"], r["exit_code"]) == ("next", 0)


# a line editor's hook that works a while after each line is accepted (a prompt framework's
# widgets on a loaded machine), before the shell runs the line and the integration's C
BUSY_LINE_FINISH = ("zle-line-finish() { local i=0; while (( i < 300000 )); do (( i++ )); "
                    "done; }\nzle -N zle-line-finish\n")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_a_shell_at_work_on_a_line_it_read_past_integration_detect_ms_keeps_the_integration(
        hasty_term):
    """Its input all read and no marker yet is no lost integration while the shell is
    still at work on the line (runnable, or its CPU time moving): the command ends at its
    D with its exit code, where it was answered at the first quiet spell, before it ran,
    and the session left without the integration."""
    term = hasty_term
    (term.home / ".zshrc").write_text(BUSY_LINE_FINISH)
    sid = term.create("zsh")
    term.integrated(sid)
    r = term.exec(sid, "echo ran-$((6*7))", timeout_ms=60_000)
    assert (r["output"], r["exit_code"], r["mode"]) == ("ran-42", 0, "integration"), r
    assert term.info(sid)["mode"] == "integration"
