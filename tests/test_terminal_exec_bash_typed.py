"""A shell exec'd in place of the session's by a command typed with term.write (`exec bash`,
`exec zsh`), not sent by term.exec: its trusted C came, and the new shell has no nonce, so no
D ever does. The session was left `running` and `busy` for good, and every later term.exec
refused `session_busy`. Back at its line editor, quiet, and no longer the program the session
started, the shell is known to read commands: the session goes on without the integration,
as after an `exec bash` sent by term.exec. A long program typed (its own process group) and
the session's own shell reading a key are waited for to their D, the integration kept.
Real tree, real bash and zsh."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import Tree, module_tree
from tests.terminal_support import integrated_session, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

# quiet_ms: a command without the integration ends at a quiet spell that long, which on a
# loaded machine must outlast the wait between its input and its shell's first output.
# integration_detect_ms: the window the shell must stay at its line editor without a D, once
# quiet for quiet_ms (a shell slower than it to its first prompt gets the integration back
# there: integrated_session waits for that).
DETECT_MS = 1000
TREE = terminal_tree(f"quiet_ms = 1000\nintegration_detect_ms = {DETECT_MS}\n")
# The long programs' tree: every command there ends at its D, none at a quiet spell, so a
# short quiet_ms (the session's lookout for a line editor starts after it) lets a program
# held for four windows be past both by more than a second.
LONG_QUIET_MS = 250
LONG_TREE = terminal_tree(f"quiet_ms = {LONG_QUIET_MS}\nintegration_detect_ms = {DETECT_MS}\n")

SHELLS = ["bash", pytest.param("zsh", marks=pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it)"))]

# Programs typed that hold the session, quiet, for four integration_detect_ms and more, then
# end on their own (their D): a program in its own process group, and the session's own
# shell reading a key itself, the terminal as its line editor keeps it.
HELD_SECONDS = 4 * DETECT_MS // 1000
assert HELD_SECONDS * 1000 - LONG_QUIET_MS - DETECT_MS >= 1000
LONG = {
    "sleep": {"bash": f"sleep {HELD_SECONDS}", "zsh": f"sleep {HELD_SECONDS}"},
    "read": {"bash": f"read -rsn1 -t {HELD_SECONDS} k", "zsh": f"read -sk1 -t {HELD_SECONDS} k"},
}


@pytest.fixture(scope="module")
def tree() -> Iterator[Tree]:
    yield from module_tree(TREE)


@pytest.fixture(scope="module")
def long_tree() -> Iterator[Tree]:
    yield from module_tree(LONG_TREE)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_shell_execd_in_place_by_a_typed_command_frees_the_session(tree, tmp_path,
                                                                     shell):
    """`exec <shell>` typed: the session goes from `running` (its C) to `prompt` without the
    integration, no longer busy, and term.exec runs commands in the new shell."""
    s = integrated_session(tree, tmp_path, shell)
    pid = s.listed()["pid"]
    s.type(f"exec {shell}")
    wait_for(lambda: s.where() == ("prompt", False, "no_integration"),
             "the session free without the integration after the typed exec")
    assert s.listed()["pid"] == pid  # (the same process, now another program)
    r = s.exec("echo after-$((6*7))")
    assert (r["output"], r["mode"], r["exit_code"]) == ("after-42", "no_integration", None), r
    r = s.exec("echo $$")
    assert r["output"] == str(pid), r


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("program", sorted(LONG))
def test_a_long_program_typed_is_waited_for_to_its_end_with_the_integration(
        long_tree, tmp_path, shell, program):
    """A program typed that is quiet for four integration_detect_ms (`sleep`: its own
    process group; `read` of one key: the session's own shell, the terminal raw) is no shell
    exec'd in place: the session stays `running` and `busy` with the integration until its
    D, which ends it. Had the session been taken to be without the integration meanwhile,
    that D would have brought it back, and `integration_back` counted it."""
    s = integrated_session(long_tree, tmp_path, shell)
    s.type(LONG[program][shell])
    wait_for(lambda: s.where() == ("running", True, "integration"), f"{program} started")
    seen: set[tuple[str, bool, str]] = set()

    def ended() -> bool:
        where = s.where()
        seen.add(where)
        return where[0] == "prompt"

    wait_for(ended, f"{program}'s end", timeout=HELD_SECONDS + 20)
    assert seen <= {("running", True, "integration"), ("prompt", False, "integration")}, seen
    assert s.listed()["integration_back"] == 0
    r = s.exec("echo after-$((6*7))")
    assert (r["output"], r["mode"], r["exit_code"]) == ("after-42", "integration", 0), r
