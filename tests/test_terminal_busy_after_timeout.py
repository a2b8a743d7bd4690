"""A program a timed-out term.exec left in the foreground, as term.list tells it: the exec is
answered `timeout` while the program still runs (it outlived the SIGINT), and the session is
`busy` (and `running`) until the shell's next prompt, as term.exec, which answers
`session_busy` meanwhile, says it is. It was listed `busy: false` while the shell was not at
its prompt: an editor trusting that sent its next command into the running program. Real
tree, real bash and zsh."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import Tree, module_tree
from tests.terminal_support import ListedSession, integrated_session, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

TREE = terminal_tree()

SHELLS = ["bash", pytest.param("zsh", marks=pytest.mark.skipif(
    shutil.which("zsh") is None, reason="zsh is not installed (.ci/run installs it)"))]

# Long enough for an idle shell to read the line and start the program (its C) on a loaded
# machine (tens of milliseconds, or a stall of a second): the command then times out while it
# runs, not before it started.
EXEC_TIMEOUT_MS = 1500


def end_by_eof(s: ListedSession) -> None:
    s.call("term.write", {"data": "\x04"})  # (cat ends at the end of its input)


def end_by_signal(s: ListedSession) -> None:
    s.call("term.signal", {"signal": "SIGTERM", "target": "foreground"})


def outlive_a_timeout(s: ListedSession, word: str, end: Callable[[ListedSession], None]) -> None:
    """Run `cat`, deaf to SIGINT, past its exec's timeout; check what term.list and a second
    term.exec say while it runs; end it with `end`, and check the session free again."""
    err = s.refused("cat", timeout_ms=EXEC_TIMEOUT_MS)
    assert err.name == "timeout", err
    assert err.error.detail["signalled"] == "SIGINT", err
    assert "still running after its timeout" in str(err), err  # (it had started)
    # (its C may still be on its way when the shell had read the line by the deadline)
    wait_for(lambda: s.where() == ("running", True, "integration"),
             "the session listed busy while cat runs")

    # cat still runs after the SIGINT (sent before the answer, so before this input): it
    # echoes a line back, after the terminal's own echo of it
    s.call("term.write", {"data": word + "\r"})
    wait_for(lambda: s.shown(f"{word}\r\n{word}\r\n".encode()),
             f"cat echoing {word!r} after the SIGINT")
    assert s.where() == ("running", True, "integration")
    busy = s.refused(f"echo not-{word}")
    assert busy.name == "session_busy", busy
    assert s.where() == ("running", True, "integration")
    assert not s.shown(f"not-{word}".encode())  # (refused: nothing typed into cat)

    end(s)
    wait_for(lambda: s.where() == ("prompt", False, "integration"),
             f"the session free once cat ended ({end.__name__})")


@pytest.fixture(scope="module")
def tree() -> Iterator[Tree]:
    """One tree for the module: each test has its own session, and looks at nothing else."""
    yield from module_tree(TREE)


@pytest.mark.parametrize("shell", SHELLS)
def test_a_program_left_running_by_a_timed_out_exec_keeps_the_session_busy_to_the_prompt(
        tree, tmp_path, shell):
    """`cat` deaf to SIGINT (the shell ignores it, and its commands inherit that) outlives
    its exec's timeout. While it runs the session is listed `busy`, `running`, with the
    integration, and a second term.exec is refused `session_busy` (nothing of it reaches
    cat); once cat ends (at EOF, or killed by a signal) and the shell's prompt is back, the
    session is listed free and runs the next command with its exit code."""
    s = integrated_session(tree, tmp_path, shell)
    assert s.exec("trap '' INT")["exit_code"] == 0
    for n, end in enumerate((end_by_eof, end_by_signal)):
        outlive_a_timeout(s, f"alive-{n}", end)
        r = s.exec(f"echo after-{n}-$((6*7))")
        assert (r["output"], r["exit_code"], r["mode"]) == (f"after-{n}-42", 0,
                                                            "integration"), r
