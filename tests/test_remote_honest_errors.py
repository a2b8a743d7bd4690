"""A remote client and the CLI say when a tree elsewhere will never answer them, on real trees
listening on loopback tcp: a call on a connection that never completed its handshake (a stale
or wrong server key, a tree that is down) ends `unavailable`, saying nothing was delivered,
never `outcome_unknown`, and nothing of it ran; a subscription whose key the tree refuses
raises `unauthorized`; and `moorage --connection FILE events|subscribe` ends with the error
(exit 2 for a refused key) instead of printing nothing for ever, and says on stderr when its
link drops and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.protocol import curve
from moorage.protocol.client import Client
from moorage.protocol.client.aio import AsyncClient
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.conftest import ROOT
from tests.remote_support import (
    FAKE_TREE,
    TREE_PORTS,
    NetnsTree,
    free_port_block,
    keys_cli,
    make_keys,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, curve.KeyPair]:
    server_dir, client_dir, client = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))  # the tree's, as `up` reads it
    return server_dir, client_dir, client


@pytest.fixture
def tcp_tree(runtime_dir: Path, keys: tuple) -> Iterator[NetnsTree]:
    port = free_port_block(TREE_PORTS)
    tree = NetnsTree(runtime_dir, FAKE_TREE.format(host="127.0.0.1", port=port), None)
    try:
        tree.start()
        yield tree
    finally:
        tree.stop()


def copied_file(tree: NetnsTree, out: Path, **changes: object) -> Path:
    """The tree's connection file as a user elsewhere has it, `remote` fields changed."""
    info = tree.connection_file()
    info["remote"].update(changes)
    out.write_text(json.dumps(info))
    return out


def moorage(connection: Path, keys_dir: Path, here: Path, *args: str,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """`moorage --connection FILE --keys DIR ARGS` on a host where no tree runs (`here`);
    bounded: a command that never ends fails the test (its process is killed)."""
    return subprocess.run(
        [sys.executable, "-m", "moorage.supervisor.cli", "--connection", str(connection),
         "--keys", str(keys_dir), *args], capture_output=True, text=True, cwd=ROOT,
        timeout=timeout, env={**os.environ, "MOORAGE_RUNTIME_DIR": str(here)})


def assert_not_delivered(exc: MoorageError, endpoint: str, *hints: str,
                         name: str = "unavailable") -> None:
    err = exc.error
    assert err.name == name, exc
    assert "nothing was delivered" in err.message and endpoint in err.message, err.message
    for hint in hints:
        assert hint in err.message, err.message
    assert err.detail["delivered"] is False and err.detail["endpoint"] == endpoint, err.detail


def effects(tree: NetnsTree) -> int:
    return tree.call("alpha", "fake.count")["effects"]


def test_a_wrong_server_key_or_a_tree_down_ends_a_call_unavailable_and_nothing_ran(
        tcp_tree: NetnsTree, keys: tuple, tmp_path: Path) -> None:
    _, client_dir, client_pair = keys
    endpoint = tcp_tree.connection_file()["remote"]["endpoints"]["alpha"]["rpc"]
    wrong = copied_file(tcp_tree, tmp_path / "wrong.json",
                        server_key=curve.new_pair().public.decode())
    stale = "the connection file's server_key is likely stale"

    # fake.effect is not idempotent: it would end outcome_unknown ("may or may not have run")
    with Client.remote(wrong, client_keys=client_pair, timeout=2.0) as c:
        with pytest.raises(MoorageError) as caught:
            c.call("alpha", "fake.effect")
        assert_not_delivered(caught.value, endpoint, stale)
        assert caught.value.error.detail["ended_early"] >= 1
        with pytest.raises(MoorageError) as caught:  # an idempotent one: `timeout`, told so
            c.call("alpha", "sys.ping", timeout=1.0)
        assert_not_delivered(caught.value, endpoint, stale, name="timeout")

    async def async_call() -> MoorageError:
        async with AsyncClient.remote(wrong, client_keys=client_pair, timeout=2.0) as ac:
            with pytest.raises(MoorageError) as caught:
                await ac.call("alpha", "fake.effect")
            return caught.value

    assert_not_delivered(asyncio.run(async_call()), endpoint, stale)

    here = tmp_path / "no-tree-here"
    out = moorage(wrong, client_dir, here, "--timeout", "2", "call", "alpha", "fake.effect")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "unavailable (110)" in out.stderr and stale in out.stderr, out.stderr
    assert "outcome_unknown" not in out.stderr and "Traceback" not in out.stderr

    # Nothing is listening where the file points (the tree is down): the same, said so
    base = free_port_block(TREE_PORTS)
    gone = {name: {"rpc": f"tcp://127.0.0.1:{base + 2 * i}",
                   "pub": f"tcp://127.0.0.1:{base + 2 * i + 1}"}
            for i, name in enumerate(["supervisor", "alpha", "beta"])}
    down = copied_file(tcp_tree, tmp_path / "down.json", endpoints=gone)
    with Client.remote(down, client_keys=client_pair, timeout=1.0) as c:
        with pytest.raises(MoorageError) as caught:
            c.call("alpha", "fake.effect")
        assert_not_delivered(caught.value, gone["alpha"]["rpc"], "the tree is down")

    # none of those calls reached the actor; the right file's call does, once
    assert effects(tcp_tree) == 0
    with Client.remote(copied_file(tcp_tree, tmp_path / "right.json"),
                       client_keys=client_pair, timeout=10.0) as c:
        assert c.call("alpha", "fake.effect")["effects"] == 1
    assert effects(tcp_tree) == 1


def test_a_remote_subscription_whose_key_is_refused_raises_unauthorized(
        tcp_tree: NetnsTree, keys: tuple, tmp_path: Path) -> None:
    server_dir, _, client_pair = keys
    table = tcp_tree.connection_file()["remote"]
    copied = copied_file(tcp_tree, tmp_path / "tree.json")
    stranger = curve.new_pair()
    allow = f"moorage keys allow '{stranger.public.decode()}'"
    with Client.remote(copied, client_keys=stranger, timeout=5.0) as c:
        sub = c.subscribe("beta", ["t"])
        with pytest.raises(MoorageError) as caught:
            sub.next(timeout=30)
        assert caught.value.error.name == "unauthorized", caught.value
        assert allow in caught.value.error.message
        assert table["endpoints"]["beta"]["pub"] in caught.value.error.message
        with pytest.raises(MoorageError):  # for good: the connection is not tried again
            sub.next(timeout=0)

    async def async_next() -> MoorageError:
        async with AsyncClient.remote(copied, client_keys=stranger, timeout=5.0) as ac:
            asub = ac.subscribe("beta", ["t"])
            with pytest.raises(MoorageError) as caught:
                await asub.next(timeout=30)
            return caught.value

    assert asyncio.run(async_next()).error.name == "unauthorized"

    # Revoked while following: the events it had come first, then the refusal, after a drop
    with Client.remote(copied, client_keys=client_pair, timeout=10.0) as c:
        sub = c.subscribe("beta", ["t"])
        wait_for(lambda: c.call("beta", "sys.info")["subscriptions"]["applied"] >= 1,
                 "beta's subscription over tcp", 20)
        c.call("beta", "fake.publish", {"topic": "t", "n": 1, "size": 0})
        got = sub.next(timeout=20)
        assert isinstance(got, StreamMessage), got
        assert sub.link_changes() == []
        out = keys_cli(server_dir, "revoke", "editor")
        assert out.returncode == 0, out.stderr
        with pytest.raises(MoorageError) as caught:
            while True:
                assert sub.next(timeout=30) is not None, "no refusal within 30 s"
        assert caught.value.error.name == "unauthorized", caught.value
        assert sub.link_changes() == ["dropped"]


class Lines:
    """The lines a running process writes to one of its pipes, read by a thread (no wait
    here is a sleep: each is wait_for on what was read)."""

    def __init__(self, pipe: object) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            self.lines.append(line)

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


def test_the_cli_follower_of_a_tree_elsewhere_ends_on_a_refused_key_and_says_link_changes(
        tcp_tree: NetnsTree, keys: tuple, tmp_path: Path) -> None:
    server_dir, client_dir, _ = keys
    copied = copied_file(tcp_tree, tmp_path / "tree.json")
    here = tmp_path / "no-tree-here"
    stranger = tmp_path / "stranger-keys"
    assert keys_cli(stranger, "init").returncode == 0
    key = curve.load_pair(stranger, curve.CLIENT).public.decode()

    # A key the tree never allowed: one line and exit 2, within the test's bound
    for args in (("events",), ("subscribe", "alpha", "t")):
        out = moorage(copied, stranger, here, "--timeout", "2", *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "unauthorized (118)" in out.stderr and f"moorage keys allow '{key}'" \
            in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stdout == ""
    # A wrong server key: the hello before following (idempotent) times out, told why
    wrong = copied_file(tcp_tree, tmp_path / "wrong.json",
                        server_key=curve.new_pair().public.decode())
    out = moorage(wrong, client_dir, here, "--timeout", "2", "events")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "sys.hello timeout (200)" in out.stderr and "nothing was delivered" in out.stderr \
        and "server_key is likely stale" in out.stderr, out.stderr

    # An allowed follower: told when its link drops and comes back (a rebind for another
    # key's revocation), then ended by its own key's revocation
    other = curve.new_pair().public.decode()
    assert keys_cli(server_dir, "allow", other, "--name", "other").returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "moorage.supervisor.cli", "--connection", str(copied),
         "--keys", str(client_dir), "events", "--replay"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "MOORAGE_RUNTIME_DIR": str(here)})
    try:
        stdout, stderr = Lines(proc.stdout), Lines(proc.stderr)
        wait_for(lambda: stdout.lines, "the follower's first (replayed) event", 30)
        assert keys_cli(server_dir, "revoke", "other").returncode == 0
        wait_for(lambda: stderr.having("is back"), "the follower saying its link is back", 30)
        assert len(stderr.having("dropped; reconnecting")) == 1, stderr.lines
        assert all("supervisor's stream at tcp://" in line for line in stderr.lines)
        assert keys_cli(server_dir, "revoke", "editor").returncode == 0
        assert proc.wait(timeout=60) == 2, stderr.lines
        stderr.thread.join(timeout=10)
        assert stderr.having("unauthorized (118)"), stderr.lines
        assert len(stderr.having("dropped; reconnecting")) == 2, stderr.lines
        assert all(json.loads(line) for line in stdout.lines)  # stdout: the events only
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=30)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
