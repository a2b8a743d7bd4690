"""The shell integration under the strict options a user's rc may turn on: errexit (`set -e`,
`setopt ERR_EXIT`) and nounset (`set -u`, `setopt NO_UNSET`). The integrated shell survives
what the same shell survives without it, dies where that one dies, and its hooks see the
status the command left; a user without hooks of their own keeps the integration."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.errors import MoorageError
from tests.terminal_support import ListedSession, env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

TREE = terminal_tree()
ZSH = pytest.mark.skipif(shutil.which("zsh") is None,
                         reason="zsh is not installed (.ci/run installs it)")
RC = {"bash": ".bashrc", "zsh": ".zshrc"}


class Shell(ListedSession):
    """One session of `shell` (with `args`) in a tree of its own, `rc` its start-up file
    (`rc_file`, else the shell's rc) in a HOME of its own."""

    def __init__(self, tree: Any, tmp_path: Path, shell: str, rc: str, rc_file: str = "",
                 args: tuple[str, ...] = ()) -> None:
        self.home = make_home(tmp_path)
        (self.home / (rc_file or RC[shell])).write_text(rc)
        self.created = tree.client.call("terminal", "term.create", {
            "shell": shell, "args": list(args), "env": env_for(self.home)}, timeout=30.0)
        super().__init__(tree.client, self.created["session"])

    def log(self) -> list[str]:
        path = self.home / "hooks.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def start(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    return lambda shell, rc, **kw: Shell(tree, tmp_path, shell, rc, **kw)


# Commands whose failure errexit forgives (an `&&` list, a negation), each with its exit code.
FORGIVEN = [("false && true", 1), ("! true", 1), ("[ -f ~/nosuch ] && echo there", 1),
            ("false || echo rescued", 0)]


@pytest.mark.parametrize("shell, rc", [
    ("bash", "set -e\n"),
    pytest.param("zsh", "setopt ERR_EXIT\n", marks=ZSH),
])
def test_under_errexit_a_failure_the_shell_forgives_leaves_the_session_and_a_bare_one_ends_it(
        start, shell, rc):
    sh = start(shell, rc)
    assert sh.created["mode"] == "integration"
    for command, code in FORGIVEN:
        r = sh.exec(command)
        assert (r["exit_code"], r["mode"]) == (code, "integration"), (command, r)
    assert sh.exec("echo alive")["output"] == "alive"
    assert sh.listed()["state"] == "prompt"
    # a bare failure ends the shell, as without the integration, with its status
    assert sh.exec("false")["exit_code"] == 1
    wait_for(lambda: sh.listed()["state"] == "exited", "the shell's exit")
    assert sh.listed()["exited"]["code"] == 1
    with pytest.raises(MoorageError) as err:
        sh.exec("echo no")
    assert err.value.name == "shell_exited"


def test_under_errexit_bash_hooks_of_the_user_see_the_status_and_do_not_end_the_shell(start):
    """The user's PROMPT_COMMAND and DEBUG trap, run after ours, get `$?` as the command left
    it, and so does PS1; with a DEBUG trap, `false || echo` runs its rescue; and the ERR
    trap, which fires where errexit would exit, never fires for what errexit forgives."""
    sh = start("bash", "set -e\n"
                       "PS1='st=$?> '\n"
                       "PROMPT_COMMAND='echo \"pc:$?\" >> ~/hooks.log'\n"
                       "trap 'echo \"dbg:$?:$BASH_COMMAND\" >> ~/hooks.log' DEBUG\n"
                       "trap 'echo \"err:$?\" >> ~/hooks.log' ERR\n")
    r = sh.exec("(exit 3) && :")
    assert (r["exit_code"], r["mode"]) == (3, "integration")
    wait_for(lambda: "pc:3" in sh.log(), "the PROMPT_COMMAND after `(exit 3)`")
    wait_for(lambda: b"st=3> " in sh.scrollback(), "the prompt after `(exit 3)`")
    r = sh.exec("false || echo rescued")
    assert (r["exit_code"], r["output"]) == (0, "rescued")
    assert "dbg:1:echo rescued" in sh.log()  # the trap saw false's status
    r = sh.exec("! true")
    assert r["exit_code"] == 1
    wait_for(lambda: "pc:1" in sh.log()[sh.log().index("dbg:1:echo rescued"):],
             "the PROMPT_COMMAND after `! true`")
    wait_for(lambda: b"st=1> " in sh.scrollback(), "the prompt after `! true`")
    assert sh.exec("echo alive")["output"] == "alive"
    assert not [line for line in sh.log() if line.startswith("err:")]


@ZSH
def test_under_err_exit_zsh_precmd_hooks_of_the_user_and_the_prompt_see_the_status(start):
    sh = start("zsh", "setopt ERR_EXIT\n"
                      "PROMPT='st=%?> '\n"
                      "user_precmd() { echo \"precmd:$?\" >> ~/hooks.log }\n"
                      "precmd_functions+=(user_precmd)\n"
                      "TRAPZERR() { echo \"zerr:$?\" >> ~/hooks.log }\n")
    r = sh.exec("(exit 3) && :")
    assert (r["exit_code"], r["mode"]) == (3, "integration")
    wait_for(lambda: "precmd:3" in sh.log(), "the user's precmd after `(exit 3)`")
    wait_for(lambda: b"st=3> " in sh.scrollback(), "the prompt after `(exit 3)`")
    assert sh.exec("! true")["exit_code"] == 1
    wait_for(lambda: "precmd:1" in sh.log(), "the user's precmd after `! true`")
    assert sh.exec("echo alive")["output"] == "alive"
    assert not [line for line in sh.log() if line.startswith("zerr:")]


@pytest.mark.parametrize("rc_file, args", [(".bashrc", ()), (".bash_profile", ("-l",))])
def test_an_rc_with_errexit_that_ends_on_a_failed_test_starts_with_integration(start, rc_file,
                                                                              args):
    """bash ignores the status a start-up file ends with; an rc (or a login shell's profile)
    that sets -e and ends on `[ -f x ] && . x` must not end the shell when the integration
    reads it."""
    sh = start("bash", "set -e\n[ -f ~/.nosuch ] && . ~/.nosuch\n", rc_file=rc_file,
               args=args)
    assert sh.created["mode"] == "integration"
    r = sh.exec("echo alive")
    assert (r["exit_code"], r["output"]) == (0, "alive")


def test_a_user_debug_trap_that_prints_under_extdebug_is_kept_as_it_is(start):
    """Under extdebug a command substitution inherits the DEBUG trap: reading the user's trap
    must not take what it prints for its text."""
    sh = start("bash", "shopt -s extdebug\ntrap 'echo \"dbg:$?\"' DEBUG\n")
    assert sh.created["mode"] == "integration"
    r = sh.exec("(exit 2)")
    assert (r["exit_code"], r["mode"]) == (2, "integration")
    r = sh.exec("echo hi")
    assert r["exit_code"] == 0 and "hi" in r["output"].splitlines(), r
    assert "dbg:" in r["output"] and "not found" not in r["output"], r
    assert b"command not found" not in sh.scrollback()
    assert sh.exec("[[ $- == *T* ]]")["exit_code"] == 0  # (function tracing on again)


@pytest.mark.parametrize("rc", [
    "set -e\nPROMPT_COMMAND='[ -n \"${VIRTUAL_ENV-}\" ] && echo venv'\n",
    "set -e\ntrap '[ -n \"${VIRTUAL_ENV-}\" ] && echo venv' DEBUG\n",
])
def test_under_errexit_a_user_hook_whose_last_test_fails_leaves_the_shell_as_without_us(start,
                                                                                       rc):
    """bash ignores the last status of PROMPT_COMMAND and of a DEBUG trap under errexit when
    it is an `&&` list's (`[ -n "$X" ] && f`, a virtualenv or direnv hook): run by the
    integration, the hook must not end the shell either (bash used to exit at its first
    prompt, and the session started as /bin/sh without the integration)."""
    sh = start("bash", rc)
    assert (sh.created["kind"], sh.created["mode"]) == ("bash", "integration"), sh.created
    r = sh.exec("echo alive")
    assert (r["exit_code"], r["output"]) == (0, "alive")


def test_an_rc_with_errexit_stops_at_its_first_failed_command_as_without_integration(start):
    """Reading the rc must not hold errexit off within it: a command in it that fails ends
    the shell there, as bash's own reading of it does (the session then starts on the next
    shell of the chain), and the rest of the rc never runs."""
    sh = start("bash", "set -e\nfalse\ntouch ~/after_false\n")
    assert sh.created["session"]
    assert not (sh.home / "after_false").exists()
    assert any(a["shell"].endswith("bash") for a in sh.created["attempts"]), sh.created


@pytest.mark.parametrize("shell, rc", [
    pytest.param("zsh", "setopt NO_UNSET\n", marks=ZSH),
    pytest.param("zsh", "setopt NO_UNSET\nunset PS2\n", marks=ZSH),
    ("bash", "set -u\nunset PS1\n"),
])
def test_under_nounset_a_user_without_hooks_or_a_prompt_keeps_the_integration(start, shell,
                                                                               rc):
    sh = start(shell, rc)
    assert sh.created["mode"] == "integration"
    r = sh.exec("(exit 4)")
    assert (r["exit_code"], r["mode"], r["trusted"]) == (4, "integration", True)
    r = sh.exec("echo a; echo b")
    assert (r["exit_code"], r["output"]) == (0, "a\nb")
    assert b"not set" not in sh.scrollback() and b"unbound" not in sh.scrollback()
