"""`moorage up --detach` beside an editor for weeks: the tree's console file
(`<state dir>/logs/up.out`, where the root logs every supervisor event) is kept under its size
with a fixed number of older copies, while the log files, and `moorage logs`, keep every line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from moorage.actors.runtime.logs import CONSOLE_MAX_BYTES, CONSOLE_ROTATE_ENV, KEEP
from tests.conftest import ROOT, Tree

pytestmark = pytest.mark.timeout(180)

TREE = """
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
"""

MAX = 4096
LINE = 1024  # more than any one console line here: a file ends at most one past MAX
ADOPTIONS = 200  # each logs an "adopted" line and its event, some 400 bytes in all


def up_detached(tree: Tree, env: dict[str, str]) -> int:
    """`moorage up --detach` on the tree's config (following this process, so a test run
    killed before its teardown leaves no tree for long); the root's pid."""
    up = subprocess.run(
        [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
         str(tree.runtime_dir), "up", "--detach", "--config", str(tree.config_path),
         "--allow-external-actors", "--parent", str(os.getpid())],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert up.returncode == 0, up.stderr
    ready = json.loads(up.stdout)
    assert ready["moorage"] == "ready", ready
    return ready["pid"]


def test_what_actors_print_to_stderr_is_kept_under_the_default_size(make_tree):
    """An actor's own stderr (a library printing, a thread's traceback) goes to the same
    file, and the actor's process rotates it too."""
    tree = make_tree(TREE)
    up_detached(tree, {k: v for k, v in os.environ.items() if k != CONSOLE_ROTATE_ENV})
    lines = CONSOLE_MAX_BYTES // 40  # some 50 bytes each: more than the file may hold
    tree.call("alpha", "fake.stderr", {"lines": lines}, timeout=60)
    logs = tree.state_dir / "logs"
    sizes = {p.name: p.stat().st_size for p in logs.glob("up.out*")}
    assert sorted(sizes) == ["up.out", "up.out.1"], sizes
    assert all(size <= CONSOLE_MAX_BYTES + LINE for size in sizes.values()), sizes
    newest = (logs / "up.out.1").read_text() + (logs / "up.out").read_text()
    assert f"warning {lines - 1} from a library" in newest and "Traceback" in newest
    assert tree.cli("down").returncode == 0


def test_a_detached_trees_console_file_is_rotated_within_its_bound(make_tree):
    """(up.out was appended to for as long as the tree ran, never rotated.)"""
    tree = make_tree(TREE)
    up_detached(tree, {**os.environ, CONSOLE_ROTATE_ENV: str(MAX)})
    for _ in range(ADOPTIONS):  # (each logged before it is answered)
        tree.call("supervisor", "sys.hello", {"client": "rotation", "adopt": True,
                                              "parent": os.getpid()})
    logs = tree.state_dir / "logs"
    names = sorted(p.name for p in logs.glob("up.out*"))
    assert names == ["up.out", *(f"up.out.{i}" for i in range(1, KEEP + 1))], names
    sizes = {n: (logs / n).stat().st_size for n in names}
    assert all(size <= MAX + LINE for size in sizes.values()), sizes
    newest = (logs / "up.out").read_text() + (logs / "up.out.1").read_text()
    assert "adopted (was attached)" in newest
    # every line is still in the supervisor's log, as `moorage logs` shows it
    out = tree.cli("logs")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("adopted (was attached)") == ADOPTIONS
    assert tree.cli("down").returncode == 0
