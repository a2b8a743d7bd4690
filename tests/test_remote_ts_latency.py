"""The TypeScript client in remote mode pushes its latency over tcp (PROTOCOL.md section 2,
"Remote"), as tests/test_remote.py shows of the Python client: with `metricsName` it pushes to
the connection file's `metrics.in` as a CURVE client, and the tree's metrics actor then shows
its calls as `client.<name>`; a stranger's push is refused at the handshake, counted, and
shows nothing.

A real tree on loopback tcp with a metrics actor, and a node process holding the client
open (its pusher's timer sends, no explicit push) until the tree has shown what it pushed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from moorage.protocol import curve
from tests.conftest import ROOT
from tests.remote_support import NetnsTree, keys_cli
from tests.test_remote import info, keys, metrics_tcp_tree, pushed_row  # noqa: F401  (fixtures)
from tests.test_remote_clients import PACKAGE, built  # noqa: F401  (fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

# Calls alpha as `client.<name>` and reports; then holds the client open until a line comes
# on stdin (the pusher's timer pushing meanwhile), closes it and reports what it saw.
SCRIPT = """
import { createInterface } from "node:readline";
import { Client } from "%(dist)s";
const [file, name, op, n] = process.argv.slice(2);
const c = new Client({ timeout: 5, metricsName: name, metricsInterval: 0.1,
                       remote: { connectionFile: file } });
const out = { calls: 0 };
try {
  for (let i = 0; i < Number(n); i++) {
    await c.call("alpha", op);
    out.calls += 1;
  }
} catch (e) {
  out.error = e.error ? e.error.name : String(e);
}
console.log(JSON.stringify(out));
for await (const _line of createInterface({ input: process.stdin })) break;
await c.close();
console.log(JSON.stringify({ closed: true }));
process.exit(0);
"""


class NodeClient:
    """The script run with `keys_dir` as its user's keys: its first report, then, once
    released, its closing."""

    def __init__(self, script: Path, conn: Path, keys_dir: Path, name: str, op: str,
                 n: int) -> None:
        self.proc = subprocess.Popen(
            ["node", str(script), str(conn), name, op, str(n)], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, curve.KEYS_ENV: str(keys_dir)})

    def report(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read()[-3000:] if self.proc.stderr else "no output"
        return json.loads(line)

    def release(self) -> None:
        out, err = self.proc.communicate("go\n", timeout=60)
        assert self.proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"closed": True}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def test_a_remote_typescript_client_pushes_its_latency_over_tcp_and_a_strangers_push_is_refused(
        built: None, metrics_tcp_tree: NetnsTree, keys: tuple,  # noqa: F811
        tmp_path: Path) -> None:
    _, client_dir, _ = keys
    tree = metrics_tcp_tree
    script = tmp_path / "latency.mjs"
    script.write_text(SCRIPT % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    clients: list[NodeClient] = []
    try:
        conn = tmp_path / "elsewhere" / "tree.json"  # a copy, as an editor elsewhere has it
        conn.parent.mkdir()
        conn.write_text((tree.runtime_dir / "tree.json").read_text())

        editor = NodeClient(script, conn, client_dir, "ts-editor", "fake.work", 20)
        clients.append(editor)
        assert editor.report() == {"calls": 20}
        # no explicit push: the pusher's timer sends within an interval, over tcp
        row = pushed_row(tree, "ts-editor", "alpha/fake.work", 20)
        assert (row["lifetime"]["count"], row["lifetime"]["ok"]) == (20, 20)
        editor.release()

        stranger_dir = tmp_path / "stranger-keys"
        assert keys_cli(stranger_dir, "init").returncode == 0
        refused = info(tree, "metrics")["remote"]["refused"].get("unknown_key", 0)
        stranger = NodeClient(script, conn, stranger_dir, "ts-stranger", "sys.ping", 1)
        clients.append(stranger)
        assert stranger.report() == {"calls": 0, "error": "unauthorized"}
        wait_for(lambda: info(tree, "metrics")["remote"]["refused"].get(
            "unknown_key", 0) > refused, "the stranger's push refused", 30)
        stranger.release()
        assert tree.call("metrics", "metrics.query", {"actor": "client.ts-stranger"})["ops"] == []
    finally:
        for c in clients:
            c.kill()
