"""term.exec runs exactly the command it was sent: the shell applies no history expansion to it
(`echo "done!!"` printed `doneecho one`, `echo "fix!x"` ran a line of the user's history),
while a line a person types with term.write in the same session expands as the user's shell
has it; and bash's command records and E markers name the whole command line, not its first
simple command. Real trees, real bash and zsh, each shell in a HOME of the test's own whose
history file holds a line `!x` matches (the real ~/.bash_history is neither read nor
written)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.terminal_support import (
    Commands,
    ListedSession,
    env_for,
    make_home,
    terminal_tree,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

ZSH = pytest.mark.skipif(shutil.which("zsh") is None,
                         reason="zsh is not installed (.ci/run installs it)")
SHELLS = ["bash", pytest.param("zsh", marks=ZSH)]
RC = {"bash": ".bashrc", "zsh": ".zshrc"}
# zsh keeps no history file unless told to
BASE_RC = {"bash": "PS1='$ '\n",
           "zsh": "PS1='%# '\nHISTFILE=~/.zsh_history\nHISTSIZE=100\nSAVEHIST=100\n"}
HISTORY = {"bash": ".bash_history", "zsh": ".zsh_history"}
FROM_HISTORY = "xmarks-the-spot-from-history"  # what `!x` finds in the history file


class Shell(ListedSession):
    """A session of `shell` in the test's tree, with `rc` in a HOME of its own."""

    def __init__(self, tree: Any, home: Path, shell: str, rc: str) -> None:
        self.home = home
        (home / RC[shell]).write_text(BASE_RC[shell] + rc)
        (home / HISTORY[shell]).write_text(f"echo early\n{FROM_HISTORY}\necho late\n")
        super().__init__(tree.client, tree.client.call(
            "terminal", "term.create", {"shell": shell, "env": env_for(home)},
            timeout=90.0)["session"])
        wait_for(lambda: self.listed()["mode"] == "integration", "the session's integration")

    def exec(self, command: str, timeout_ms: int = 60_000) -> dict:
        r = super().exec(command, timeout_ms)
        assert (r["trusted"], r["mode"]) == (True, "integration"), (command, r)
        return r

    def typed(self, line: str, shows: bytes) -> None:
        """`line` typed with term.write, as a person would, and run: the terminal `shows`
        what it says, its command over (a D after that), and the session not busy."""
        self.type(line)

        def over() -> bool:
            out = self.scrollback()
            at = out.rfind(shows)
            return at >= 0 and b"\x1b]633;D;" in out[at:] and not self.listed()["busy"]

        wait_for(over, f"{line!r} run, showing {shows!r}")


@pytest.fixture
def start(make_tree, tmp_path):
    tree = make_tree(terminal_tree()).start()
    home = make_home(tmp_path)
    return lambda shell, rc="": Shell(tree, home, shell, rc)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_command_runs_as_sent_while_a_typed_line_still_expands(start, shell):
    """`!!`, `!x` and a first `^` in a command of term.exec are text: it runs as sent, where
    the shell replaced them from its history list (and the user's history file) before it
    ran the line. A line typed with term.write in the same session, before and after, is
    expanded as the user's shell always does it."""
    sh = start(shell)
    assert sh.exec("echo one")["output"] == "one"
    r = sh.exec("^one^two")  # (the previous line, `one` made `two`: `echo two` ran)
    assert r["exit_code"] == 127 and "^one^two" in r["output"], r  # (command not found)
    for command, output in [('echo "done!!"', "done!!"), ('echo "fix!x"', "fix!x"),
                            ("echo !! '!!' \"!x\" a!b", "!! !! !x a!b")]:
        r = sh.exec(command)
        assert (r["exit_code"], r["output"]) == (0, output), (command, r)
    sh.exec("echo last-sent")
    sh.typed('echo "typed:!!"', b"typed:echo last-sent")
    r = sh.exec('echo "again!!" "!x"')
    assert (r["exit_code"], r["output"]) == (0, "again!! !x"), r
    sh.typed('echo "typed-again:!x"', f"typed-again:{FROM_HISTORY}".encode())


@pytest.mark.parametrize("shell, off", [("bash", "set +H"),
                                        pytest.param("zsh", "setopt NO_BANG_HIST", marks=ZSH)])
def test_the_users_own_setting_is_what_a_typed_line_gets(start, shell, off):
    """A user's history character of their own (`histchars`) is the one a typed line gets
    after a command of term.exec, which expands neither; and once the user turns expansion
    off, the commands of term.exec do not turn it on again."""
    sh = start(shell, "histchars='@^#'\n")
    sh.exec("echo one")
    r = sh.exec('echo "sent@@" "!!"')
    assert (r["exit_code"], r["output"]) == (0, "sent@@ !!"), r
    sh.typed('echo "typed:@@"', b"typed:echo sent@@ !!")
    sh.typed(off, off.encode())
    assert sh.exec('echo "sent-again@@"')["output"] == "sent-again@@"
    sh.typed('echo "typed-off:@@"', b"typed-off:@@\r\n")


@pytest.mark.parametrize("shell, rc", [("bash", "set -o vi\n"),
                                       pytest.param("zsh", "bindkey -v\n", marks=ZSH)])
def test_a_command_runs_as_sent_in_vi_mode_too(start, shell, rc):
    """The key the terminal sends first is bound in the vi keymaps too, where an ESC it did
    not match would leave insert mode and take what follows as vi commands."""
    sh = start(shell, rc)
    sh.exec("echo one")
    for command, output in [('echo "vi!!"', "vi!!"), ("echo plain", "plain")]:
        r = sh.exec(command)
        assert (r["exit_code"], r["output"]) == (0, output), (command, r)
    sh.typed('echo "typed:!!"', b"typed:echo plain")


def test_bash_a_prompt_drawn_again_before_the_command_does_not_answer_it(start):
    """bash draws its prompt again when the key sent before a command runs its function;
    after an rc read again (PROMPT_COMMAND set without ours), that prompt holds the D of the
    command before (PS1 gives it), which must not answer the command (with `source`'s exit
    code, before it ran); and the command runs as sent."""
    sh = start("bash", "PROMPT_COMMAND='echo hook-out'\n")
    for _ in range(2):
        assert sh.exec("source ~/.bashrc")["exit_code"] == 0
        r = sh.exec('[ "a!" = b ] && echo same')
        assert (r["exit_code"], r["output"]) == (1, ""), r
        r = sh.exec('echo "ran!!"')
        assert (r["exit_code"], r["output"]) == (0, "ran!!"), r


@pytest.mark.parametrize("shell", SHELLS)
def test_a_multi_line_command_runs_as_sent(start, shell):
    """A command over several lines goes as one paste: no line of it is expanded (each is
    read after the one before ran, all before the next prompt)."""
    sh = start(shell)
    sh.exec("echo one")
    r = sh.exec('echo "first!!"\necho "second!!"\nfor i in 1; do echo "third!x"; done')
    assert (r["exit_code"], r["output"]) == (0, "first!!\nsecond!!\nthird!x"), r
    sh.exec("echo last-sent")
    sh.typed('echo "typed:!!"', b"typed:echo last-sent")


# --- bash's record of a command names the whole line ----------------------------------------


def e_markers(sh: Shell) -> list[bytes]:
    """The command lines of the E markers in the session's output, as sent (escaped)."""
    out = sh.scrollback()
    return [part.split(b"\x07", 1)[0].rsplit(b";", 1)[0]
            for part in out.split(b"\x1b]633;E;")[1:]]


def ends(commands: Commands, n: int) -> list[str]:
    return [commands.next_event("end")["command"] for _ in range(n)]
