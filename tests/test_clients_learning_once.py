"""The TypeScript client, as the asyncio one (tests/test_client_learning_once.py): a fresh
client's first calls made at once ask the actor's sys.info once, each waiting for its answer,
or its failure (then going on as a call to an actor whose ops are not known), and every call
is answered. (The Rust client makes one call at a time, and a pipeline learns before its
calls: it cannot have two first calls in flight.)

A real tree of one actor, alone in it: what it received (its sys.info's `received`, which
counts every request) is what the node process (protocol/typescript's dist) sent it, and this
test's own two looks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Tree
from tests.test_remote_clients import PACKAGE, built  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(120)

# Heartbeats that a process held stopped for a few seconds does not miss (it is not restarted).
ONE = """
[supervisor]
heartbeat = { interval_ms = 1000, misses = 30 }
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""

N = 200  # first calls made at once (under the actor's queue_limit: none is refused busy)

# N first calls of fake.effect, made at once (each starts before any reply can be read); it
# says when learning is over (its sys.info recorded), then what each call gave.
SCRIPT = """
import { Client } from "%(dist)s";
const [dir, n, timeout] = process.argv.slice(2);
const c = new Client({ runtimeDir: dir, timeout: Number(timeout), attemptTimeout: 30 });
const calls = Promise.all(Array.from({ length: Number(n) }, () => c.call("a", "fake.effect").then(
  (r) => r.effects, (e) => `${e.error?.name}: ${e.error?.message ?? e}`)));
const asked = () => c.latencyReport().filter((r) => r.op === "sys.info")
  .map((r) => [r.count, r.ok]);
while (asked().length === 0) await new Promise((r) => setTimeout(r, 10)); // (pacing the look)
console.log(JSON.stringify({ asked: asked() }));
const results = await calls;
await c.close();
console.log(JSON.stringify({ results, asked: asked() }));
process.exit(0);
"""


def received(tree: Tree) -> int:
    """Requests the actor has received so far, this look included."""
    return tree.call("a", "sys.info")["received"]


def first_calls(tree: Tree, script: Path, timeout: float, stopped: int | None = None
                ) -> tuple[list[Any], list[Any]]:
    """Run the script's N first calls with a client `timeout`; with `stopped` (the actor's
    pid, held stopped meanwhile), let the actor go once the client's learning is over. What
    each call gave, and the client's sys.info calls ([count, ok])."""
    proc = subprocess.Popen(["node", str(script), str(tree.runtime_dir), str(N), str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        assert line, proc.communicate(timeout=60)[1][-3000:]
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
        last = json.loads(out.strip().splitlines()[-1])
        return last["results"], last["asked"]
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "first_calls.mjs"
    path.write_text(SCRIPT % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    return path


def test_typescript_first_calls_made_at_once_ask_the_actor_once_and_all_succeed(
        built: None, make_tree, script: Path) -> None:  # noqa: F811
    tree = make_tree(ONE).start()
    before = received(tree)
    results, asked = first_calls(tree, script, 30.0)
    assert sorted(results) == list(range(1, N + 1)), [r for r in results if type(r) is str][:3]
    assert [count for count, _ in asked] == [1]
    assert received(tree) - before == N + 1 + 1  # the N calls, one sys.info, this look


def test_typescript_first_calls_go_on_when_the_learning_they_wait_for_fails(
        built: None, make_tree, script: Path) -> None:  # noqa: F811
    """The actor is stopped while the calls are made: the one sys.info goes unanswered for
    its whole share (3 s of 6), and each call is then sent with the rest of its time, in which
    the actor, let go, answers it."""
    tree = make_tree(ONE).start()
    pid = tree.child("a")["pid"]
    before = received(tree)
    os.kill(pid, signal.SIGSTOP)
    results, asked = first_calls(tree, script, 6.0, stopped=pid)
    assert asked == [[1, 0]], asked
    assert sorted(results) == list(range(1, N + 1)), [r for r in results if type(r) is str][:3]
    # One sys.info (answered late, once the actor was let go), the N calls, and this look.
    assert received(tree) - before == 1 + N + 1
