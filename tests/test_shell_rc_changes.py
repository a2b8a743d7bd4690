"""The shell integration after the user's rc does, mid-session, what rc files do. bash: a
PROMPT_COMMAND set again (`source ~/.bashrc` with `PROMPT_COMMAND="history -a;
$PROMPT_COMMAND"`, which runs the user's command before ours and hands ours its `$?`, or one
that leaves ours out), as a string or an array. zsh: a function named `precmd`, which zsh runs
before every hook of precmd_functions (ours, whose D marker ends the command, among them), and
hooks an rc read again puts before ours. Each time the exit codes stay the commands' own and
trusted, no command waits for its timeout, an exec's output is the command's alone, and the
user's hooks still run, given `$?`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TREE = terminal_tree()
ZSH = pytest.mark.skipif(shutil.which("zsh") is None,
                         reason="zsh is not installed (.ci/run installs it)")
RC = {"bash": ".bashrc", "zsh": ".zshrc"}
# Well under the default 60 s: a command whose D never comes fails the test in this time.
EXEC_TIMEOUT_MS = 20000


class Shell:
    """One session of `shell` in a tree of its own, `rc` its rc file in a HOME of its own."""

    def __init__(self, tree: Any, tmp_path: Path, shell: str, rc: str) -> None:
        self.tree = tree
        self.home = make_home(tmp_path)
        (self.home / RC[shell]).write_text(rc)
        self.created = self.call("term.create", {"shell": shell, "env": env_for(self.home)})
        self.sid = self.created["session"]

    def call(self, op: str, args: dict) -> Any:
        return self.tree.call("terminal", op, args, timeout=EXEC_TIMEOUT_MS / 1000 + 10)

    def exec(self, command: str) -> dict:
        return self.call("term.exec", {"session": self.sid, "command": command,
                                       "timeout_ms": EXEC_TIMEOUT_MS})

    def ran(self, command: str, code: int) -> dict:
        """`command` run with the integration: its exit code `code`, trusted."""
        r = self.exec(command)
        assert (r["exit_code"], r["mode"], r["trusted"]) == (code, "integration", True), \
            (command, r)
        return r

    def scrollback(self) -> bytes:
        reply = self.tree.client.request("terminal", "term.scrollback", {"session": self.sid})
        return reply.attachments[0]

    def log(self) -> list[str]:
        path = self.home / "pc.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def start(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    return lambda shell, rc: Shell(tree, tmp_path, shell, rc)


# The user's PROMPT_COMMAND: it logs the `$?` it is given, and prints (before the prompt, not
# in a command's output).
HOOK = """'echo "pc:$?" >> ~/pc.log; echo hook-out'"""


@pytest.mark.parametrize("setting", [
    # the review's two: the user's command before ours, and ours left out
    f'PROMPT_COMMAND={HOOK}"; ${{PROMPT_COMMAND:-}}"',
    f"PROMPT_COMMAND={HOOK}",
    # the same as arrays (bash gives each element the command's `$?`: the user's output
    # came before our D)
    f'PROMPT_COMMAND=({HOOK} "${{PROMPT_COMMAND[@]}}")',
    f"PROMPT_COMMAND=({HOOK})",
    # the user's command after ours, which worked before: ours first in a line of theirs
    f'PROMPT_COMMAND="${{PROMPT_COMMAND:+$PROMPT_COMMAND; }}"{HOOK}',
], ids=["string-before-ours", "string-without-ours", "array-before-ours",
        "array-without-ours", "string-after-ours"])
def test_bash_an_rc_read_again_that_sets_prompt_command_keeps_exit_codes(start, setting):
    """`source ~/.bashrc` sets PROMPT_COMMAND again (and PS1, without our markers): the source
    itself ends at once, and every command after it has its own exit code, trusted, and its
    own output, while the user's command runs at each prompt, given that code."""
    sh = start("bash", f"PS1='$ '\n{setting}\n")
    assert sh.created["mode"] == "integration"
    assert sh.ran("false", 1)["output"] == ""
    wait_for(lambda: "pc:1" in sh.log(), "the user's PROMPT_COMMAND after `false`")
    sh.ran("source ~/.bashrc", 0)
    for command, code in (("false", 1), ("(exit 3)", 3), ("true", 0)):
        seen = len(sh.log())
        assert sh.ran(command, code)["output"] == "", command
        wait_for(lambda seen=seen, entry=f"pc:{code}": entry in sh.log()[seen:],
                 f"the user's PROMPT_COMMAND after {command!r}")
    assert sh.ran("echo ok", 0)["output"] == "ok"


def test_bash_prompt_command_changed_at_the_prompt_keeps_the_hooks_it_was_built_on(start):
    """A PROMPT_COMMAND built on the one the shell shows (a tool's hook put before it) runs
    what it was built on too, as bash would, and the exit codes stay right; one unset runs
    nothing of the user's, and the exit codes stay right."""
    sh = start("bash", """PROMPT_COMMAND='echo "one:$?" >> ~/pc.log'\n""")
    sh.ran("""PROMPT_COMMAND='echo "two:$?" >> ~/pc.log; '"$PROMPT_COMMAND\"""", 0)
    seen = len(sh.log())
    sh.ran("(exit 3)", 3)
    wait_for(lambda: "two:3" in sh.log()[seen:], "the hook put before the first")
    wait_for(lambda: any(line.startswith("one:") for line in sh.log()[seen:]),
             "the hook it was built on")
    sh.ran("unset PROMPT_COMMAND", 0)
    sh.ran("(exit 4)", 4)
    seen = len(sh.log())
    sh.ran("false", 1)
    assert sh.ran("echo ok", 0)["output"] == "ok"
    assert sh.log()[seen:] == []


@ZSH
@pytest.mark.parametrize("options", ["", "setopt KSH_ARRAYS\n"])
def test_zsh_output_of_the_users_precmd_function_is_not_the_commands(start, options):
    """zsh runs a function named precmd before every precmd_functions hook, so what it prints
    came before our D, in the command's output; and so did a hook an rc read again puts
    before ours. Both still run, before the prompt, given `$?`; a preexec function's output
    stays out of the command's too."""
    sh = start("zsh", options + "PS1='%# '\n"
               "precmd() { print -- \"--- $?\"; }\n"
               "preexec() { print -- '>>>'; }\n"
               "early() { print -- '+++'; }\n"
               "precmd_functions=(early ${precmd_functions[@]})\n")
    assert sh.created["mode"] == "integration"
    assert sh.ran("echo hi", 0)["output"] == "hi"
    assert sh.ran("(exit 3)", 3)["output"] == ""
    wait_for(lambda: b"--- 3" in sh.scrollback(), "the user's precmd after `(exit 3)`")
    assert b"+++" in sh.scrollback() and b">>>" in sh.scrollback()
    # read again: precmd defined anew, `early` put before ours
    sh.ran("source ~/.zshrc", 0)
    assert sh.ran("echo hi", 0)["output"] == "hi"
    assert sh.ran("(exit 5)", 5)["output"] == ""
    wait_for(lambda: b"--- 5" in sh.scrollback(), "the user's precmd after `(exit 5)`")
