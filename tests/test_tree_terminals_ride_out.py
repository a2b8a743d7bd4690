"""The default tree's shells ride out a crash loop of the terminal actor or of the pty keeper:
the `terminals` supervisor retries the one that fails (1 s doubling to 60 s, as the root
retries a child) instead of escalating, which would stop the other one and every shell with
it. Meanwhile `sup.status` and `moorage status` say that the child is given up on for now,
and when its retry is due.

The crash loop is a real start failure: the child's rpc socket path is a directory, so each
start dies before it binds, until the test takes the directory away."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Tree, pid_running
from tests.terminal_support import env_for, make_home
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

# The embedded default tree (no `children` here: its own), bash only, test heartbeats.
CONFIG = """
[supervisor]
heartbeat = { interval_ms = 200, misses = 5 }

[actor.terminal]
shells = ["bash"]
"""


def _shell_with_a_job(tree: Tree, tmp_path: Path) -> tuple[str, int, int]:
    """A bash session holding state only that shell has (an exported variable, a background
    job): its id, its shell's pid, the job's pid."""
    s = tree.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
                  timeout=30)
    r = tree.call("terminal", "term.exec", {
        "session": s["session"], "command": "export FOO=kept; sleep 1000 & echo JOB=$!",
        "timeout_ms": 20_000}, timeout=30)
    return s["session"], s["pid"], int(r["output"].split("JOB=")[1].split()[0])


def _crash_loop(tree: Tree, cid: str) -> Path:
    """`cid` fails every start from now on (its rpc path is a directory it cannot bind
    over) and is SIGKILLed: each restart dies young, until the directory is removed."""
    rpc = tree.runtime_dir / f"{cid}.rpc"
    rpc.unlink()
    rpc.mkdir()
    os.kill(tree.child(cid)["pid"], signal.SIGKILL)
    return rpc


def _given_up_on(tree: Tree, cid: str) -> dict[str, Any]:
    """Its first give-up: the `terminals` supervisor's `escalated` event about `cid`."""
    return tree.wait_event(lambda e: e["event"] == "escalated" and e["child"] == cid
                           and e["supervisor"] == "terminals", timeout=30)


def _waiting_its_retry(tree: Tree, cid: str) -> dict[str, Any]:
    """`cid` as sup.status shows it while it waits out a last-resort retry (it spends most
    of its time so: each wait is longer than the last, its quick retries in between not)."""
    return wait_for(lambda: (c := tree.child(cid)).get("past_intensity") and c,
                    f"{cid} shown waiting its last-resort retry")


def _status_line(tree: Tree, cid: str) -> str:
    """`cid`'s row in `moorage status`."""
    out = tree.cli("status")
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if ln.split()[:1] == [cid]]
    return line


def _same_shell_answers(tree: Tree, session: str, shell: int, job: int) -> None:
    r = tree.call("terminal", "term.exec", {
        "session": session, "command": f"echo FOO=$FOO SH=$$; kill -0 {job} && echo JOB-ALIVE",
        "timeout_ms": 20_000}, timeout=30)
    assert r["output"].split() == ["FOO=kept", f"SH={shell}", "JOB-ALIVE"], r


@pytest.mark.parametrize(("failing", "other"), [("terminal", "ptykeeper"),
                                               ("ptykeeper", "terminal")])
def test_a_crash_looping_child_of_terminals_is_retried_and_the_other_keeps_every_shell(
        make_tree, tmp_path, failing, other):
    """The terminal actor or the keeper in a crash loop: retried past its intensity as the
    root retries, while the other one and the terminals supervisor are never stopped (the
    shells live on either one's copy of their PTYs)."""
    tree = make_tree(CONFIG).start()
    session, shell, job = _shell_with_a_job(tree, tmp_path)
    kept = tree.child(other)
    terminals = tree.child("terminals")

    rpc = _crash_loop(tree, failing)
    ev = _given_up_on(tree, failing)
    assert ev.get("action") == "retry" and ev["retry_in_s"] >= 1.0, ev

    st = _waiting_its_retry(tree, failing)
    assert st["state"] == "backoff" and st["retry_in_s"] > 0, st
    line = wait_for(lambda: "past intensity" in (ln := _status_line(tree, failing)) and ln,
                    f"`moorage status` showing the {failing} given up on for now")
    assert "backoff (past intensity, retry in " in line, line
    # the other one and the terminals supervisor were never stopped; the shell and its job live
    assert tree.child(other)["pid"] == kept["pid"]
    assert tree.child(other)["restarts"] == kept["restarts"]
    assert tree.child("terminals")["pid"] == terminals["pid"]
    assert pid_running(shell) and pid_running(job)

    rpc.rmdir()
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == failing,
                    timeout=70)
    _same_shell_answers(tree, session, shell, job)
    assert tree.child(other)["pid"] == kept["pid"]
