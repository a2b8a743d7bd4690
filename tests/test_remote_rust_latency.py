"""The Rust client in remote mode pushes its latency over tcp: with `metrics_name` set it
pushes to the connection file's `metrics.in` as a CURVE client (PROTOCOL.md section 2,
"Remote"), and the tree's metrics actor shows its calls under `client.<name>`; a connection
file that names no `metrics.in` is refused `bad_args` when the client is made.

A real tree on loopback tcp with CURVE, called by protocol/rust/examples/remote_latency.rs
from a copy of the connection file whose runtime dir is elsewhere, so that no ipc path of the
tree can be what the push went through.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from moorage.protocol import curve
from tests.conftest import ROOT
from tests.remote_support import CRATE, NetnsTree, rust_example
from tests.test_remote import keys, metrics_tcp_tree, pushed_row  # noqa: F401  (fixtures)

pytestmark = pytest.mark.timeout(180)

PROGRAM = CRATE / "target" / "debug" / "examples" / "remote_latency"
CALLS = 20


@pytest.fixture(scope="module")
def built() -> None:
    rust_example("remote_latency")


def start(conn: Path, keys_dir: Path, name: str) -> subprocess.Popen:
    """The program: CALLS calls of alpha's fake.work pushed as `client.<name>`; it keeps its
    client (and pusher) until its stdin closes."""
    return subprocess.Popen([str(PROGRAM), str(conn), "alpha", "fake.work", str(CALLS), name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, curve.KEYS_ENV: str(keys_dir)})


def report(proc: subprocess.Popen) -> dict:
    """The program's first line: {calls} or {error, message}."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=60)[1][-3000:]
    return json.loads(line)


def test_a_remote_rust_client_pushes_its_latency_over_tcp(
        built: None, metrics_tcp_tree: NetnsTree, keys: tuple,  # noqa: F811
        tmp_path: Path) -> None:
    _, client_dir, _ = keys
    tree = metrics_tcp_tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    info = json.loads((tree.runtime_dir / "tree.json").read_text())
    info["runtime_dir"] = str(elsewhere)  # (no ipc path of the tree's from this copy)
    assert info["remote"]["endpoints"]["metrics"]["in"].startswith("tcp://127.0.0.1:")
    copied = elsewhere / "tree.json"
    copied.write_text(json.dumps(info))

    proc = start(copied, client_dir, "rusty")
    try:
        assert report(proc) == {"calls": CALLS}
        # no push asked for: the pusher's thread sends within its 100 ms, over tcp
        assert pushed_row(tree, "rusty", "alpha/fake.work", CALLS)["lifetime"]["count"] == CALLS
    finally:
        _, err = proc.communicate(input="", timeout=60)
    assert proc.returncode == 0, err[-3000:]

    # a connection file naming no metrics.in: refused when the client is made
    del info["remote"]["endpoints"]["metrics"]["in"]
    copied.write_text(json.dumps(info))
    proc = start(copied, client_dir, "nowhere")
    out = report(proc)
    proc.communicate(timeout=60)
    assert out["error"] == "bad_args" and "metrics.in" in out["message"], out
    assert tree.call("metrics", "metrics.query", {"actor": "client.nowhere"})["ops"] == []
