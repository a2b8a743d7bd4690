"""The TypeScript and Rust clients, as the Python one (tests/test_client_tree_gone.py): a client
that found its tree (by instance, or from its connection file) is told `not_running` once that
tree has ended, at the call's first unanswered attempt, and so is its next call (not
`circuit_open`); one given the tree's directory keeps waiting for a tree to come up there. A
call not safe to repeat that was in flight as the tree ended may have run there:
`outcome_unknown`. Once a client has seen its tree ended, a call is `not_running` before it is
sent (one not safe to repeat waited its whole budget), until a tree holds the instance again.

Real trees, stopped with `moorage down` or their root killed, while a node process
(protocol/typescript's dist) or protocol/rust/examples/tree_gone.rs holds clients of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Tree
from tests.remote_support import rust_example
from tests.test_remote_clients import PACKAGE, built  # noqa: F401  (a fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

CONFIG = """
[supervisor]
[[children]]
id = "one"
start = "tests.fakes:FakeActor"
"""
INSTANCE = "gone"

# What both node scripts share: a call's outcome, as the Rust example gives it, and a JSON line.
PRELUDE = """
import { createInterface } from "node:readline";
import { Client } from "%(dist)s";
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function outcome(c, actor, op) {
  try {
    return { result: await c.call(actor, op) };
  } catch (e) {
    if (!e.error) throw e;
    return { error: e.error.name, message: e.error.message, attempts: e.attempts,
             detail: e.error.detail ?? null };
  }
}
function say(v) {
  console.log(JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? Number(x) : x)));
}
"""

# The Rust example's `down`: the same three clients, in the same order.
DOWN = PRELUDE + """
const [instance, file, dir, actor] = process.argv.slice(2);
// (budgets longer than an attempt's 1 s: a call told not_running was told at an attempt)
const byInstance = new Client({ instance, timeout: 10 });
const byFile = Client.fromConnectionFile(file, { timeout: 10 });
const byDir = new Client({ runtimeDir: dir, timeout: 2 });
for (const c of [byInstance, byFile, byDir]) await c.call(actor, "sys.ping");
say({ ready: true });
await lines.next();
const ping = (c) => outcome(c, actor, "sys.ping");
const out = {
  instance: [await ping(byInstance), await ping(byInstance)],
  file: [await ping(byFile), await ping(byFile)],
  dir: [await ping(byDir)],
};
for (const c of [byInstance, byFile, byDir]) await c.close();
say(out);
process.exit(0);
"""

# The Rust example's `kill`: fake.held in flight on one client as the root is killed, then
# the other's calls, to the ended tree and to the next one.
KILL = PRELUDE + """
const [instance, actor] = process.argv.slice(2);
// (a budget far longer than an attempt's 1 s: one told not_running at once was not sent)
const held = new Client({ instance, timeout: 20 });
const c = new Client({ instance, timeout: 20 });
await c.call(actor, "fake.count"); // (its ops learned while the tree runs)
const inFlight = outcome(held, actor, "fake.held");
say({ ready: true });
const ended = { held: await inFlight };
ended.ping = await outcome(c, actor, "sys.ping");
ended.effect = await outcome(c, actor, "fake.effect");
say(ended);
await lines.next();
const again = { effect: await outcome(c, actor, "fake.effect") };
again.ping = await outcome(c, actor, "sys.ping");
say(again);
for (const x of [held, c]) await x.close();
process.exit(0);
"""


@pytest.fixture(scope="module")
def rust_built() -> Path:
    return rust_example("tree_gone")


@pytest.fixture
def named_tree() -> Iterator[tuple[Path, Tree]]:
    """A tree of instance INSTANCE under a private $XDG_RUNTIME_DIR (short: socket paths),
    and that directory; stopped and removed whatever the test did."""
    xdg = Path(tempfile.mkdtemp(prefix="tg-", dir="/tmp"))
    tree = None
    try:
        os.chmod(xdg, 0o700)
        rdir = xdg / "moorage" / INSTANCE
        rdir.mkdir(parents=True, mode=0o700)
        os.chmod(rdir.parent, 0o700)
        tree = Tree(rdir, CONFIG).start()
        yield xdg, tree
    finally:
        if tree is not None:
            tree.stop()
        shutil.rmtree(xdg, ignore_errors=True)


def clients(cmd: list[str], xdg: Path, *args: str) -> subprocess.Popen:
    """`cmd ARGS` with the tree's $XDG_RUNTIME_DIR (its clients find the tree by name), its
    stdin and stdout piped."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    env.pop("MOORAGE_RUNTIME_DIR", None)
    return subprocess.Popen([*cmd, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def said(proc: subprocess.Popen, what: str) -> dict[str, Any]:
    """The next JSON line `proc` prints; the test fails with its stderr if it ended instead."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=60)
        pytest.fail(f"no {what} (exit {proc.returncode}):\n{err[-3000:]}")
    return json.loads(line)


def across_down(cmd: list[str], xdg: Path, tree: Tree) -> dict[str, Any]:
    """Run `cmd` (its clients ping the tree, it says ready), stop the tree with `moorage
    down`, let it call on, and give its outcomes."""
    proc = clients(cmd, xdg, INSTANCE, str(tree.runtime_dir / "tree.json"),
                   str(tree.runtime_dir), "one")
    try:
        assert said(proc, "ready line") == {"ready": True}
        down = tree.cli("down")
        assert down.returncode == 0, (down.stdout, down.stderr)
        out, err = proc.communicate("go\n", timeout=180)
        assert proc.returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_told_not_running(out: dict[str, Any]) -> None:
    for found in ("instance", "file"):
        first, second = out[found]
        assert first.get("error") == "not_running", (found, out)
        assert "has ended (its instance lock is free)" in first["message"], (found, out)
        assert second.get("error") == "not_running", (found, out)  # (not circuit_open)
    # given the directory: no tree taken for gone, the call waited its budget out
    assert out["dir"][0].get("error") in ("timeout", "unavailable"), out


def across_kill(cmd: list[str], xdg: Path, tree: Tree) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `cmd` (its fake.held goes out, it says ready), kill the tree's root once the call
    is under way, take what its clients were told, start a new tree in the same directory,
    and take what they are told then."""
    proc = clients(cmd, xdg, INSTANCE, "one")
    try:
        assert said(proc, "ready line") == {"ready": True}
        wait_for(lambda: tree.call("one", "fake.count")["held"] == 1, "fake.held under way")
        # (SIGKILL: a stop would answer the held call itself; the root's lock is let go as it
        # dies, before its children learn of its death and end, with their connections)
        os.kill(tree.pid, signal.SIGKILL)
        ended = said(proc, "outcomes at the ended tree")
        again = Tree(tree.runtime_dir, CONFIG)  # (the instance taken again)
        try:
            again.start()
            out, err = proc.communicate("go\n", timeout=180)
        finally:
            again.stop()
        assert proc.returncode == 0, err[-3000:]
        return ended, json.loads(out.strip().splitlines()[-1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_in_flight_unknown_then_not_running(ended: dict[str, Any], again: dict[str, Any],
                                              runtime_dir: Path) -> None:
    held = ended["held"]
    # fake.held may have run (its effect counted) before the tree ended: not not_running
    assert held.get("error") == "outcome_unknown", ended
    assert held["message"] == (f"the moorage tree in {runtime_dir} ended while fake.held was "
                               "in flight; it may or may not have run"), ended
    assert held["detail"]["new_epoch"] is None and held["detail"]["old_epoch"], ended
    # the other client is told at its first unanswered attempt, and so sees the tree ended
    assert ended["ping"].get("error") == "not_running", ended
    assert "has ended (its instance lock is free)" in ended["ping"]["message"], ended
    assert ended["ping"]["attempts"] == 1, ended
    # then a call not safe to repeat is not_running unsent, not at its 20 s budget
    assert ended["effect"].get("error") == "not_running", ended
    assert ended["effect"]["attempts"] == 0, ended
    # the new tree answers (the refused fake.effect never reached it: its first effect)
    assert again["effect"] == {"result": {"effects": 1}}, again
    assert "result" in again["ping"], again


def test_the_typescript_client_of_a_tree_that_ended_is_told_not_running(
        built: None, named_tree: tuple[Path, Tree], tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "tree_gone.mjs"
    script.write_text(DOWN % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    assert_told_not_running(across_down(["node", str(script)], *named_tree))


def test_the_rust_client_of_a_tree_that_ended_is_told_not_running(
        rust_built: Path, named_tree: tuple[Path, Tree]) -> None:
    assert_told_not_running(across_down([str(rust_built), "down"], *named_tree))


def test_the_typescript_client_of_a_tree_killed_under_a_call_not_safe_to_repeat(
        built: None, named_tree: tuple[Path, Tree], tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "tree_killed.mjs"
    script.write_text(KILL % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    xdg, tree = named_tree
    assert_in_flight_unknown_then_not_running(
        *across_kill(["node", str(script)], xdg, tree), tree.runtime_dir)


def test_the_rust_client_of_a_tree_killed_under_a_call_not_safe_to_repeat(
        rust_built: Path, named_tree: tuple[Path, Tree]) -> None:
    xdg, tree = named_tree
    assert_in_flight_unknown_then_not_running(
        *across_kill([str(rust_built), "kill"], xdg, tree), tree.runtime_dir)
