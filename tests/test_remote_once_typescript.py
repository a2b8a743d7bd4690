"""The TypeScript client in remote mode, across a dropped link and a refused key (R9, as
tests/test_remote_exactly_once.py shows of the Python clients): a non-idempotent call whose
tcp connection is reset while the actor runs it is resent pinned to that actor life (the
request header's `ep`) and answered once, by the run it joins; one whose actor was killed
meanwhile ends `outcome_unknown`, refused unrun by the successor; and a key revoked while a
call waits ends that call at once as `unauthorized`, not at its deadline.

A real tree on loopback tcp with CURVE (through the tests' cutting relay for the drops), a
node process making the call, and the actor's own counts, read over ipc, saying how many
times the op ran.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol import curve
from moorage.protocol.errors import MoorageError, WireError
from moorage.protocol.remote import RemoteTarget, target_from_file
from tests.conftest import ROOT
from tests.remote_support import CutRelay, NetnsTree, keys_cli
from tests.test_remote_clients import PACKAGE, built, tcp_tree  # noqa: F401  (fixtures)
from tests.test_remote_exactly_once import (  # noqa: F401  (relayed: a fixture)
    count,
    kill_and_refuse,
    relayed,
    reset_and_join,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

# One call of fake.held with 60 s to live, as one attempt (no timeout ladder: only a drop
# resends it); the actor's epoch is known before it goes (hello), so it can be pinned.
SCRIPT = """
import { Client } from "%(dist)s";
const [file, keys] = process.argv.slice(2);
const c = new Client({ timeout: 60, attemptTimeout: 60,
                       remote: { connectionFile: file, keys: JSON.parse(keys) } });
const out = {};
await c.hello("alpha");
const t0 = performance.now();
try {
  out.result = await c.call("alpha", "fake.held");
} catch (e) {
  if (!e.error) throw e;
  out.error = e.error;
}
out.seconds = (performance.now() - t0) / 1000;
await c.close();
console.log(JSON.stringify(out, (_k, v) => (typeof v === "bigint" ? Number(v) : v)));
process.exit(0);
"""


def run_call(cmd: list[str]) -> Any:
    """Run the script; the call's result, or its error as a MoorageError (`extra`: the
    seconds the call took)."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in out:
        raise MoorageError(WireError.from_wire(out["error"]), op="fake.held", actor="alpha",
                           extra={"seconds": out["seconds"]})
    return out["result"]


def held_call(tree: NetnsTree, target: RemoteTarget, tmp_path: Path,
              pool: ThreadPoolExecutor) -> Future:
    """Start the script's call through `target` (the endpoints, the tree's key and the
    client's pair it was handed) and return once the actor holds it (it ran, unanswered)."""
    script = tmp_path / "once.mjs"
    script.write_text(SCRIPT % {"dist": PACKAGE / "dist" / "src" / "index.js"})
    conn = tmp_path / "node-tree.json"
    conn.write_text(json.dumps({"remote": {
        "transport": "tcp", "curve": True, "endpoints": target.endpoints,
        "server_key": target.server_key.decode()}}))
    assert target.client.secret is not None
    keys = json.dumps({"publicKey": target.client.public.decode(),
                       "secretKey": target.client.secret.decode()})
    future = pool.submit(run_call, ["node", str(script), str(conn), keys])
    wait_for(lambda: future.done() or count(tree)["held"] == 1, "the call held by the actor",
             60)
    assert not future.done(), future.exception()
    return future


def test_a_call_running_when_its_link_is_reset_is_answered_once_by_the_run_it_joins(
        built: None, relayed: tuple[NetnsTree, CutRelay, RemoteTarget],  # noqa: F811
        tmp_path: Path) -> None:
    tree, relay, target = relayed
    with ThreadPoolExecutor(1) as pool:
        reset_and_join(tree, relay, held_call(tree, target, tmp_path, pool))


def test_a_call_whose_actor_was_killed_meanwhile_ends_outcome_unknown_and_is_not_run_again(
        built: None, relayed: tuple[NetnsTree, CutRelay, RemoteTarget],  # noqa: F811
        tmp_path: Path) -> None:
    tree, _, target = relayed
    with ThreadPoolExecutor(1) as pool:
        err = kill_and_refuse(tree, held_call(tree, target, tmp_path, pool))
    assert err.message.startswith("alpha's connection dropped while fake.held was in flight")


def test_a_key_revoked_while_a_call_waits_ends_it_at_once_as_unauthorized(
        built: None, tcp_tree: tuple[NetnsTree, Path], tmp_path: Path) -> None:  # noqa: F811
    tree, client_dir = tcp_tree
    client = curve.load_pair(client_dir, curve.CLIENT)
    target = target_from_file(tree.runtime_dir / "tree.json", client)
    refused = tree.call("alpha", "sys.info")["remote"]["refused"].get("unknown_key", 0)
    with ThreadPoolExecutor(1) as pool:
        future = held_call(tree, target, tmp_path, pool)
        # (the tree's keys dir: the fixture points $MOORAGE_KEYS_DIR at it)
        out = keys_cli(Path(os.environ[curve.KEYS_ENV]), "revoke", "editor")
        assert out.returncode == 0, out.stderr
        with pytest.raises(MoorageError) as e:
            future.result(120)
    err = e.value.error
    assert err.name == "unauthorized", err
    assert f"moorage keys allow '{client.public.decode()}'" in err.message
    # ended on the refusal, not at its 60 s deadline; and it may have run (it did, once)
    assert "outcome_unknown: no reply: the tree refused this client's key" in err.message
    assert e.value.extra["seconds"] < 30, e.value.extra
    assert tree.call("alpha", "sys.info")["remote"]["refused"]["unknown_key"] > refused
    assert count(tree)["effects"] == 1
