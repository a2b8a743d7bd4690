"""The instance's files in its runtime dir: kept from tmp cleaners while the tree runs
(sticky, as the XDG spec asks cleaners to honour), and at a tree's end removed only while they
are its own. On real trees."""

from __future__ import annotations

import os
import signal
import stat

import pytest

from moorage.protocol.client.connection import read_connection_file
from tests.conftest import wait_pid_exit
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[supervisor]
[[children]]
id = "one"
start = "tests.fakes:FakeActor"
"""


def ready_pid(d) -> int | None:
    """The root pid the instance's connection file names, if there is one now."""
    try:
        return read_connection_file(d / "tree.json").get("pid")
    except (OSError, ValueError):
        return None


def sticky(path) -> bool:
    return bool(os.lstat(path).st_mode & stat.S_ISVTX)


def test_a_running_trees_files_are_sticky(make_tree):
    tree = make_tree(CONFIG).start()
    d = tree.runtime_dir
    files = [d / "lock", d / "tree.json",
             *(p for p in d.iterdir() if stat.S_ISSOCK(os.lstat(p).st_mode))]
    assert len(files) > 3, sorted(p.name for p in d.iterdir())
    wait_for(lambda: all(sticky(p) for p in files),
             "every file of the instance marked sticky once the tree is ready")
    tree.call("one", "sys.ping")  # (a socket marked still serves)


def test_a_tree_ending_leaves_the_files_of_a_tree_started_after_its_lock_was_removed(
        make_tree):
    """A cleaner removed tree A's lock; tree B started on the instance. A's end must not
    remove B's lock, connection file and sockets (B ran on, and nobody could find it)."""
    first = make_tree(CONFIG).start()
    d = first.runtime_dir
    (d / "lock").unlink()
    # (not start(): its status calls would reach the first tree, whose sockets are there
    # until the second's start replaces them)
    second = make_tree(CONFIG).start(wait=False)
    wait_for(lambda: ready_pid(d) == second.pid,
             "the second tree ready (its connection file names its root)")
    assert second.call("one", "sys.ping")
    os.kill(first.pid, signal.SIGTERM)
    assert wait_pid_exit(first.pid, 60), "the first tree did not end"
    first.proc.wait(10)
    assert (d / "lock").exists() and (d / "tree.json").exists(), sorted(
        p.name for p in d.iterdir())
    assert second.call("one", "sys.ping")
    assert second.call("supervisor", "sys.ping")
