"""The Rust client in remote mode across a dropped link and a refused key: a non-idempotent
call whose tcp connection is reset while it runs is resent pinned to the actor life it went
to (the request header's `ep`), which answers it once; a successor (the actor was killed
meanwhile) refuses it `outcome_unknown` without running it; and a key the tree refuses ends a
call as soon as the refusal is seen, not at its deadline.

A real tree on loopback tcp with CURVE (through the relay the test resets, as
tests/test_remote_exactly_once.py does for the Python clients), called by
protocol/rust/examples/remote_call.rs; the actor's own counts, read over ipc, say how many
times the op ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol import curve
from moorage.protocol.remote import RemoteTarget
from tests.conftest import ROOT
from tests.remote_support import CRATE, CutRelay, NetnsTree, rust_example
from tests.test_remote_clients import tcp_tree  # noqa: F401  (a fixture)
from tests.test_remote_exactly_once import count, relayed  # noqa: F401  (a fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

PROGRAM = CRATE / "target" / "debug" / "examples" / "remote_call"
# The call's whole time; one attempt lasts all of it, so a resend is only ever the drop's.
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def built() -> None:
    rust_example("remote_call")


def client_files(tree: NetnsTree, target: RemoteTarget, base: Path) -> tuple[Path, Path]:
    """What the Rust program reads: the tree's connection file with the relayed endpoints,
    and a keys dir holding the pair the relayed tree allows."""
    info = tree.connection_file()
    info["remote"]["endpoints"] = target.endpoints
    conn = base / "relayed-rust.json"
    conn.write_text(json.dumps(info))
    keys = base / "rust-keys"
    keys.mkdir(mode=0o700)
    curve.write_certificate(keys / f"{curve.CLIENT}{curve.SECRET_SUFFIX}", target.client,
                            "client")
    return conn, keys


def start(conn: Path, keys: Path, op: str, *more: str, timeout: float = TIMEOUT
          ) -> subprocess.Popen:
    """The program's call of `op` to alpha, one attempt for its whole `timeout`."""
    return subprocess.Popen([str(PROGRAM), str(conn), "alpha", op, str(timeout),
                             str(timeout), *more],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, curve.KEYS_ENV: str(keys)})


def outcome(proc: subprocess.Popen) -> dict[str, Any]:
    """The program's report (its last stdout line); it ends by its call's deadline at the
    latest (a refused key's call was given 60 s)."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def held_call(tree: NetnsTree, target: RemoteTarget, base: Path) -> subprocess.Popen:
    """Start the program's fake.held call (after a hello: the actor life it will be pinned
    to is known before it goes) and return once the actor holds it (it ran, unanswered)."""
    conn, keys = client_files(tree, target, base)
    proc = start(conn, keys, "fake.held", "--hello")
    wait_for(lambda: proc.poll() is not None or count(tree)["held"] == 1,
             "the call held by the actor")
    assert proc.poll() is None, proc.communicate()
    return proc


def test_a_call_running_when_its_link_is_reset_joins_the_run_and_gets_its_one_result(
        built: None, relayed: tuple[NetnsTree, CutRelay, RemoteTarget],  # noqa: F811
        tmp_path: Path) -> None:
    tree, relay, target = relayed
    proc = held_call(tree, target, tmp_path)
    assert relay.reset() >= 2
    # (one attempt lasts the whole call: only the drop's pinned resend can join the run)
    wait_for(lambda: proc.poll() is not None or count(tree)["held_attempts"] >= 2,
             "the resend joining the held call")
    assert tree.call("alpha", "fake.release") == {"released": 1}
    out = outcome(proc)
    assert out.get("result") == {"effects": 1}, out
    assert count(tree)["effects"] == 1  # ran exactly once


def test_a_reply_lost_with_the_link_is_answered_from_the_reply_cache_not_run_again(
        built: None, relayed: tuple[NetnsTree, CutRelay, RemoteTarget],  # noqa: F811
        tmp_path: Path) -> None:
    tree, relay, target = relayed
    proc = held_call(tree, target, tmp_path)
    hits = tree.call("alpha", "sys.info")["reply_cache"]["hits"]
    relay.lose_replies()
    assert tree.call("alpha", "fake.release") == {"released": 1}  # answered, into the void
    assert relay.reset() >= 2
    out = outcome(proc)
    assert out.get("result") == {"effects": 1}, out
    assert count(tree)["effects"] == 1  # ran exactly once
    assert tree.call("alpha", "sys.info")["reply_cache"]["hits"] >= hits + 1


def test_a_call_whose_actor_was_killed_meanwhile_ends_outcome_unknown_and_is_not_run_again(
        built: None, relayed: tuple[NetnsTree, CutRelay, RemoteTarget],  # noqa: F811
        tmp_path: Path) -> None:
    tree, _, target = relayed
    proc = held_call(tree, target, tmp_path)
    first = tree.call("alpha", "sys.hello")
    os.kill(first["pid"], signal.SIGKILL)  # the call ran there; its reply never left
    out = outcome(proc)
    successor = tree.call("alpha", "sys.hello")
    assert successor["ep"] != first["ep"]
    assert out.get("error") == "outcome_unknown", out
    assert out["message"].startswith("alpha's connection dropped while fake.held was in "
                                      "flight;"), out
    # the successor heard the resend and refused it: it names both lives
    assert out["detail"]["old_epoch"] == first["ep"], out
    assert out["detail"]["new_epoch"] == successor["ep"], out
    assert count(tree)["effects"] == 0  # not run by the successor
    assert tree.call("alpha", "sys.info")["refused"].get("outcome_unknown", 0) >= 1


def test_a_refused_key_ends_a_call_at_once_as_unauthorized(
        built: None, tcp_tree: tuple[NetnsTree, Path], tmp_path: Path) -> None:  # noqa: F811
    tree, _ = tcp_tree
    conn = tmp_path / "tree.json"  # a copy, as an editor elsewhere has it
    conn.write_text((tree.runtime_dir / "tree.json").read_text())
    stranger = tmp_path / "stranger-keys"
    made = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "keys", "init"],
                          capture_output=True, timeout=60,
                          env={**os.environ, curve.KEYS_ENV: str(stranger)})
    assert made.returncode == 0, made.stderr
    key = curve.load_pair(stranger, curve.CLIENT).public.decode()
    out = outcome(start(conn, stranger, "fake.work", timeout=60.0))
    assert out.get("error") == "unauthorized", out
    assert f"moorage keys allow '{key}'" in out["message"], out
    # ended on the refusal, not at its 60 s deadline (nor did its sys.info, asked first,
    # wait for its share of the 60 s)
    assert "no reply: the tree refused this client's key" in out["message"], out
    assert "no reply in" not in out["message"], out
    assert out["seconds"] < 30, out
