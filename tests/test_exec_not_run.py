"""term.exec when the shell does not run the command line it was given as it was given: bash
refusing a line before running it (a failed history expansion, histverify, histreedit), a
question the shell asks before it runs one (zsh's spelling correction), a line or question
of the shell's own when a command is to go, and control characters, which a line editor
takes as keys. Each command is answered for what it is, nothing runs that was not asked for,
and the session keeps its integration. Real trees, real bash and zsh."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.errors import MoorageError
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

ZSH = pytest.mark.skipif(shutil.which("zsh") is None,
                         reason="zsh is not installed (.ci/run installs it)")
RC = {"bash": ".bashrc", "zsh": ".zshrc"}
PROMPT = {"bash": "PS1='$ '\n", "zsh": "PS1='%# '\n"}
UNBIND = {"bash": "PROMPT_COMMAND=\"bind -r '\\e[\\C-?'\"\n",
          "zsh": "precmd() { bindkey -r '\\e[^?'; }\n"}
SHELLS = ["bash", pytest.param("zsh", marks=ZSH)]


class Shell:
    """One session of `shell` in the test's tree, `rc` its rc file in a HOME of its own."""

    def __init__(self, tree: Any, home: Path, shell: str, rc: str,
                 integration: bool = True) -> None:
        self.tree = tree
        self.home = home
        (home / RC[shell]).write_text(rc)
        self.sid = self.call("term.create", {"shell": shell, "env": env_for(home),
                                             "integration": integration})["session"]
        if integration:  # (a loaded machine may start the shell past the detection)
            wait_for(lambda: self.listed()["mode"] == "integration",
                     "the session's integration")

    def call(self, op: str, args: dict) -> Any:
        return self.tree.call("terminal", op, args, timeout=90.0)

    def exec(self, command: str) -> dict:
        return self.call("term.exec", {"session": self.sid, "command": command,
                                       "timeout_ms": 60_000})

    def refused(self, command: str) -> MoorageError:
        with pytest.raises(MoorageError) as err:
            self.exec(command)
        return err.value

    def listed(self) -> dict:
        (s,) = [s for s in self.call("term.list", {})["sessions"] if s["session"] == self.sid]
        return s

    def write(self, data: str) -> None:
        self.call("term.write", {"session": self.sid, "data": data})

    def shown(self, text: bytes) -> bool:
        reply = self.tree.client.request("terminal", "term.scrollback", {"session": self.sid})
        return text in reply.attachments[0]


def start_tree(make_tree: Any, tmp_path: Path, terminal: str = "") -> Any:
    tree = make_tree(terminal_tree(terminal)).start()
    home = make_home(tmp_path)
    return lambda shell, rc="", **kw: Shell(tree, home, shell, PROMPT[shell] + rc, **kw)


@pytest.fixture
def start(make_tree, tmp_path):
    return start_tree(make_tree, tmp_path)


@pytest.fixture
def start_quick(make_tree, tmp_path):
    """integration_detect_ms at 1.5 s: a command without markers gives the integration up
    sooner (the shell's own idleness, not this time, says when: _detect)."""
    return start_tree(make_tree, tmp_path, "integration_detect_ms = 1500\n")


def codes_after(sh: Shell) -> None:
    """The commands after: each its own exit code and output, trusted (no wait for a marker
    that never comes, no command added to a line the shell held)."""
    for command, code, output in [("false", 1, ""), ("(exit 3)", 3, ""),
                                  ("echo ok-$((6*7))", 0, "ok-42")]:
        r = sh.exec(command)
        assert (r["exit_code"], r["trusted"], r["mode"], r["output"]) == \
            (code, True, "integration", output), (command, r)
    assert (sh.listed()["mode"], sh.listed()["integration_back"]) == ("integration", 0)


# --- the shell goes back to its prompt without running the line ------------------------------


def test_a_bash_line_whose_history_expansion_fails_is_answered_at_once_and_nothing_lost(start):
    """bash refuses `echo "fix!important"` (event not found) and draws its prompt again with
    no PROMPT_COMMAND, so no D. That prompt after the line, with no C, says nothing ran: the
    exec is answered so (exit_code nil, trusted, the shell's message), where it waited for
    integration_detect_ms and the session lost its integration for good (every command
    after it 5 s and no exit code)."""
    sh = start("bash", UNBIND["bash"])
    r = sh.exec('echo "fix!important"')
    assert (r["exit_code"], r["trusted"], r["mode"]) == (None, True, "integration"), r
    assert r["output"].endswith("!important: event not found"), r
    codes_after(sh)


@pytest.mark.parametrize("shell, rc, command, said", [
    ("bash", "shopt -s histverify\n", "echo !!", ""),
    ("bash", "shopt -s histreedit\n", 'echo "a!zz"', "!zz: event not found"),
    pytest.param("zsh", "setopt HIST_VERIFY\n", "echo !!", "", marks=ZSH),
])
def test_a_line_put_back_for_editing_is_not_run_and_the_next_command_is_not_added_to_it(
        start, shell, rc, command, said):
    """With histverify (bash, zsh) the expanded line is put back in the editor instead of
    run, with histreedit (bash) the line whose expansion failed: nothing ran, and the line
    the shell holds is cancelled before the next command, which would have been added to it
    (bash ran `echo echo firsttouch ...`: the touch never ran)."""
    sh = start(shell, rc + UNBIND[shell])
    assert sh.exec("echo first")["output"] == "first"
    r = sh.exec(command)
    assert (r["exit_code"], r["trusted"], r["mode"]) == (None, True, "integration"), r
    assert r["output"].endswith(said), r
    r = sh.exec("touch ~/made.txt; echo made")
    assert (r["exit_code"], r["output"], r["trusted"]) == (0, "made", True), r
    assert (sh.home / "made.txt").exists()
    codes_after(sh)


@ZSH
def test_zsh_spelling_correction_is_answered_no_and_the_command_runs_as_given(start):
    """CORRECT asks "correct 'ecoh' to 'echo' [nyae]?" before the line runs: it is answered
    `n`, so the command runs as given (command not found, 127), where the question took the
    command's timeout and the next command's first letter answered it."""
    sh = start("zsh", "setopt CORRECT\n")
    r = sh.exec("ecoh hi")
    assert (r["exit_code"], r["trusted"]) == (127, True), r
    assert r["output"].endswith("command not found: ecoh"), r
    r = sh.exec("yes | head -2")
    assert (r["exit_code"], r["output"]) == (0, "y\ny"), r
    codes_after(sh)


@pytest.mark.parametrize("shell, rc, typed, shows, end, ran", [
    pytest.param("zsh", "setopt CORRECT\n", "ecoh by-hand\r", b"[nyae]? ", "n",
                 b"command not found: ecoh", marks=ZSH),
    ("bash", "", "echo 'open\r", b"\x1b]133;A;k=s;", "shut'\r", b"open\r\nshut\r\n"),
])
def test_a_question_or_line_of_the_shells_own_is_left_to_whoever_typed_it(
        start, shell, rc, typed, shows, end, ran):
    """Someone at the terminal left the shell at a question (a spelling correction) or in
    the middle of a quoted line: the command does not go into it (its first letter answered
    the question; it was read into the quote), nor is that line cancelled (it is theirs):
    term.exec is refused `session_busy`, nothing sent, until they end it; the command then
    runs alone."""
    sh = start(shell, rc)
    sh.write(typed)
    wait_for(lambda: sh.shown(shows), "the shell waiting on the line typed by hand")
    err = sh.refused("echo after-$((6*7))")
    assert err.name == "session_busy" and "typed" in err.error.message, err
    sh.write(end)

    def prompt_after_it() -> bool:
        reply = sh.tree.client.request("terminal", "term.scrollback", {"session": sh.sid})
        data = bytes(reply.attachments[0])
        at = data.rfind(ran)
        return at >= 0 and b"\x1b]633;B;" in data[at:]

    wait_for(prompt_after_it, "the line typed by hand run as its typist ended it")
    r = sh.exec("echo after-$((6*7))")
    assert (r["exit_code"], r["output"], r["trusted"]) == (0, "after-42", True), r
    codes_after(sh)


# --- bash's markers back after the integration was given up -----------------------------------


def test_a_session_without_its_integration_gets_it_back_at_the_next_commands_own_markers(
        start_quick):
    """A command that shows no marker in time drops the session to no_integration (here bash
    with bracketed paste turned off after each prompt, so its refusal of a line goes unseen).
    The next command's own trusted C ends it at its D and brings the integration back, and
    the ones after it have their exit codes: before, its C and D were ignored, the prompt
    after them waited afresh for a D gone by, and every command after took the detection
    time and had no exit code, for good."""
    sh = start_quick("bash", "PROMPT_COMMAND=\"bind 'set enable-bracketed-paste off'; "
                             "bind -r '\\e[\\C-?'\"\n")
    r = sh.exec('echo "fix!important"')
    assert (r["exit_code"], r["mode"], r["trusted"]) == (None, "no_integration", False), r
    assert sh.listed()["mode"] == "no_integration"
    r = sh.exec("echo back; false")
    assert (r["exit_code"], r["output"], r["mode"]) == (None, "back", "no_integration"), r
    assert (sh.listed()["mode"], sh.listed()["integration_back"]) == ("integration", 1)
    for command, code, output in [("(exit 3)", 3, ""), ("echo ok", 0, "ok")]:
        r = sh.exec(command)
        assert (r["exit_code"], r["trusted"], r["output"]) == (code, True, output), r


# --- control characters -----------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_a_command_with_control_characters_is_pasted_and_runs_as_given(start, shell):
    """A tab typed completes (`cut -d'<TAB>'` lost its delimiter: "the delimiter must be a
    single character"), ^A/^U/ESC edit the line, ^D may end the shell: a one-line command
    with any of them goes as a paste, as a multi-line one does, and runs as given."""
    sh = start(shell)
    r = sh.exec("printf 'k\\tv\\n' | cut -d'\t' -f2")
    assert (r["exit_code"], r["output"]) == (0, "v"), r
    r = sh.exec("printf '%s' '<\x01\x15\x04\x1b\x7f\x0b>' | od -An -tx1 | tr -d ' \\n'")
    assert (r["exit_code"], r["output"]) == (0, "3c0115041b7f0b3e"), r
    codes_after(sh)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_end_of_a_paste_in_a_command_is_refused_and_nothing_of_it_runs(start, shell):
    """`ESC [ 2 0 1 ~` inside the command ended the paste early: the shell ran its first part
    as the command, and the rest as typed keys after the answer (`echo three > three.out~`
    ran outside the exec). Refused, nothing sent."""
    sh = start(shell)
    err = sh.refused("printf 'a\x1b[201~b'; echo two > ~/two.out\necho three > ~/three.out")
    assert err.name == "bad_args" and "nothing was sent" in err.error.message, err
    r = sh.exec("ls ~")
    assert (r["exit_code"], r["trusted"]) == (0, True), r
    assert not list(sh.home.glob("t*.out*"))
    codes_after(sh)


def test_bytes_the_terminal_acts_on_and_without_the_integration_control_characters_are_refused(
        start):
    """^Z (like ^C, ^\\, ^S, ^Q) is taken by the terminal itself, pasted or not: a signal, then
    the rest of the line read alone (`b` ran). Without the integration a command is typed as
    keys: a tab would complete. Both refused, nothing sent; the sessions go on."""
    sh = start("bash")
    err = sh.refused("echo a\x1ab")
    assert err.name == "bad_args" and "0x1a" in err.error.message, err
    codes_after(sh)
    plain = start("bash", integration=False)
    assert plain.listed()["mode"] == "no_integration"
    for command in ("echo 'a\tb'", "echo a\x01b"):
        err = plain.refused(command)
        assert err.name == "bad_args" and "without the shell integration" in err.error.message, err
    wait_for(lambda: plain.listed()["state"] == "prompt", "the plain session at its prompt")
    r = plain.exec("echo plain-$((6*7))")
    assert (r["exit_code"], r["output"], r["mode"]) == (None, "plain-42", "no_integration"), r
