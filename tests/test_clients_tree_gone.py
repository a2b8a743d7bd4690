"""The TypeScript and Rust clients, as the Python one (tests/test_client_tree_gone.py): a client
that found its tree (by instance, or from its connection file) is told `not_running` once that
tree has ended, at the call's first unanswered attempt, and so is its next call (not
`circuit_open`); one given the tree's directory keeps waiting for a tree to come up there.

A real tree stopped with `moorage down` while a node process (protocol/typescript's dist) or
protocol/rust/examples/tree_gone.rs holds its three clients, each of which pinged the tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Tree
from tests.remote_support import rust_example
from tests.test_remote_clients import PACKAGE, built  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(240)

CONFIG = """
[supervisor]
[[children]]
id = "one"
start = "tests.fakes:FakeActor"
"""
INSTANCE = "gone"

# The same three clients as the Rust example, in the same order.
SCRIPT = """
import { once } from "node:events";
import { Client } from "%(dist)s";
const [instance, file, dir, actor] = process.argv.slice(2);
// (budgets longer than an attempt's 1 s: a call told not_running was told at an attempt)
const byInstance = new Client({ instance, timeout: 10 });
const byFile = Client.fromConnectionFile(file, { timeout: 10 });
const byDir = new Client({ runtimeDir: dir, timeout: 2 });
for (const c of [byInstance, byFile, byDir]) await c.call(actor, "sys.ping");
console.log(JSON.stringify({ ready: true }));
await once(process.stdin, "data");
async function outcome(c) {
  try {
    return { result: await c.call(actor, "sys.ping") };
  } catch (e) {
    if (!e.error) throw e;
    return { error: e.error.name, message: e.error.message };
  }
}
const out = {
  instance: [await outcome(byInstance), await outcome(byInstance)],
  file: [await outcome(byFile), await outcome(byFile)],
  dir: [await outcome(byDir)],
};
for (const c of [byInstance, byFile, byDir]) await c.close();
console.log(JSON.stringify(out, (_k, v) => (typeof v === "bigint" ? Number(v) : v)));
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


def across_down(cmd: list[str], xdg: Path, tree: Tree) -> dict[str, Any]:
    """Run `cmd` (its clients ping the tree, it says ready), stop the tree with `moorage
    down`, let it call on, and give its outcomes."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    env.pop("MOORAGE_RUNTIME_DIR", None)
    proc = subprocess.Popen([*cmd, INSTANCE, str(tree.runtime_dir / "tree.json"),
                             str(tree.runtime_dir), "one"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        if not ready:
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"the clients did not get in (exit {proc.returncode}):\n{err[-3000:]}")
        assert json.loads(ready) == {"ready": True}, ready
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


def test_the_typescript_client_of_a_tree_that_ended_is_told_not_running(
        built: None, named_tree: tuple[Path, Tree], tmp_path: Path) -> None:  # noqa: F811
    script = tmp_path / "tree_gone.mjs"
    script.write_text(SCRIPT % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    assert_told_not_running(across_down(["node", str(script)], *named_tree))


def test_the_rust_client_of_a_tree_that_ended_is_told_not_running(
        rust_built: Path, named_tree: tuple[Path, Tree]) -> None:
    assert_told_not_running(across_down([str(rust_built)], *named_tree))
