"""The TypeScript and Rust clients in remote mode, against a real tree listening on loopback tcp: it
connects from the connection file and its user's key pair (`moorage keys init`), calls and
follows a stream over CURVE; with a key the tree does not allow, its call ends `unauthorized`
once the refusal is seen, naming the key to allow, and the tree counts the refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.protocol import curve
from tests.conftest import ROOT
from tests.remote_support import (
    FAKE_TREE,
    TREE_PORTS,
    NetnsTree,
    free_port_block,
    make_keys,
    rust_example,
)

pytestmark = pytest.mark.timeout(180)

PACKAGE = ROOT / "protocol" / "typescript"

SCRIPT = """
import { Client } from "%(dist)s";
const c = new Client({ timeout: 5, remote: { connectionFile: process.argv[2] } });
const out = {};
try {
  out.work = await c.call("alpha", "fake.work");
  const sub = c.subscribe("beta", ["rt"]);
  for (;;) {
    const info = await c.call("beta", "sys.info");
    if (info.subscriptions.applied >= 1) break;
  }
  await c.call("beta", "fake.publish", { topic: "rt", n: 3 });
  out.stream = [];
  for await (const ev of sub) {
    if (ev.kind === "message" && !ev.welcome) out.stream.push(ev.body.i);
    if (out.stream.length === 3) break;
  }
} catch (e) {
  out.error = e.error ? e.error.name : String(e);
  if (e.error) out.message = e.error.message;
}
await c.close();
console.log(JSON.stringify(out, (_k, v) => (typeof v === "bigint" ? Number(v) : v)));
process.exit(0);
"""


@pytest.fixture
def built() -> None:
    if shutil.which("node") is None or not (PACKAGE / "node_modules" / "zeromq").is_dir():
        pytest.fail("node and protocol/typescript's node_modules are needed: .ci/run "
                    "installs them")
    built_at = min((p.stat().st_mtime for p in (PACKAGE / "dist" / "src").glob("*.js")),
                   default=0.0)
    if any(p.stat().st_mtime > built_at for p in (PACKAGE / "src").glob("*.ts")):
        done = subprocess.run(["npx", "tsc", "-p", "."], cwd=PACKAGE, capture_output=True,
                              text=True, timeout=300)  # (npm test's build, when it is stale)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def tcp_tree(runtime_dir: Path, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[NetnsTree, Path]]:
    server_dir, client_dir, _ = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))
    tree = NetnsTree(runtime_dir, FAKE_TREE.format(host="127.0.0.1",
                                                   port=free_port_block(TREE_PORTS)), None)
    try:
        tree.start()
        yield tree, client_dir
    finally:
        tree.stop()


def run_client(cmd: list[str], keys_dir: Path) -> dict:
    """Run a client program; its last stdout line is its JSON report."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, curve.KEYS_ENV: str(keys_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_remote_client(cmd: list[str], tree: NetnsTree, client_dir: Path,
                        tmp_path: Path) -> None:
    """`cmd` + a copied connection file: with an allowed key, a call and a stream; with a
    key the tree never allowed, `unauthorized` with the command that allows that key, and a
    refusal counted by the tree."""
    conn = tmp_path / "tree.json"  # a copy, as an editor elsewhere has it
    conn.write_text((tree.runtime_dir / "tree.json").read_text())
    out = run_client([*cmd, str(conn)], client_dir)
    assert out.get("error") is None, out
    assert out["work"]["done"] >= 1 and out["stream"] == [0, 1, 2], out
    assert tree.call("alpha", "sys.info")["remote"]["accepted"] >= 1
    stranger = tmp_path / "stranger-keys"
    made = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "keys", "init"],
                          capture_output=True, timeout=60,
                          env={**os.environ, curve.KEYS_ENV: str(stranger)})
    assert made.returncode == 0, made.stderr
    refused = tree.call("alpha", "sys.info")["remote"]["refused"].get("unknown_key", 0)
    out = run_client([*cmd, str(conn)], stranger)
    key = curve.load_pair(stranger, curve.CLIENT).public.decode()
    assert out.get("error") == "unauthorized", out
    assert f"moorage keys allow '{key}'" in out["message"], out
    assert tree.call("alpha", "sys.info")["remote"]["refused"]["unknown_key"] > refused


def test_the_typescript_client_calls_and_follows_a_stream_over_tcp_with_curve(
        built: None, tcp_tree: tuple[NetnsTree, Path], tmp_path: Path) -> None:
    tree, client_dir = tcp_tree
    script = tmp_path / "remote.mjs"
    script.write_text(SCRIPT % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    check_remote_client(["node", str(script)], tree, client_dir, tmp_path)


def test_the_rust_client_calls_and_follows_a_stream_over_tcp_with_curve(
        tcp_tree: tuple[NetnsTree, Path], tmp_path: Path) -> None:
    program = rust_example("remote")
    tree, client_dir = tcp_tree
    check_remote_client([str(program)], tree, client_dir, tmp_path)
