"""A remote call that ends with no reply while its connection's CURVE handshake is still under
way (a slow link: the handshake is some three round trips, over 200 ms each way longer than a
subscription's 1 s replay page) leaves that connection to get in: the call keeps its error
(`timeout`, or `outcome_unknown`: its request is still queued, and goes once the handshake
completes), and the next call is answered on it. Closing the socket to say "nothing was
delivered" threw the handshake away: every call then began a new one, no faster, and on such
a link none was ever answered (perf.r9_relay: every replay after a link reset failed, and
the stream lost what the replay was to fill in).

A real tree on loopback tcp with CURVE, reached through a relay that holds each new
connection (nothing passes either way) until the test lets the ones open now through: a link
whose handshake takes as long as the test says. The calls that say nothing was delivered (a
stale server key, a tree down) are tests/test_remote_honest_errors.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol import curve
from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.errors import MoorageError
from moorage.protocol.remote import RemoteTarget, target_from_file
from tests.remote_support import (
    FAKE_TREE,
    TREE_PORTS,
    CutRelay,
    NetnsTree,
    free_port_block,
    make_keys,
)

pytestmark = pytest.mark.timeout(120)


class HeldRelay(CutRelay):
    """A relay (CutRelay's ports and connection file) on which a new connection is accepted
    and then gets nowhere, its tree end not even opened, until `release`: a handshake as
    slow as the test makes it, with no clock in it."""

    def __init__(self, tree_port: int, n: int) -> None:
        self.gates: list[asyncio.Event] = []  # one per connection held now
        super().__init__(tree_port, n)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     target: int) -> None:
        gate = asyncio.Event()
        self.gates.append(gate)
        try:
            await gate.wait()
        except asyncio.CancelledError:  # the relay is closing
            writer.close()
            return
        await super()._serve(reader, writer, target)

    def release(self) -> int:
        """Let the connections held now through (those made later stay held); how many."""
        async def open_gates() -> int:
            gates, self.gates = self.gates, []
            for gate in gates:
                gate.set()
            return len(gates)
        return self.run(open_gates)


@pytest.fixture
def held(runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         ) -> Iterator[tuple[NetnsTree, HeldRelay, RemoteTarget]]:
    """A tree listening on loopback tcp, a holding relay in front of all its ports, and the
    target a remote client reaches the tree by through it."""
    server_dir, _, client_pair = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))
    port = free_port_block(TREE_PORTS)
    tree = NetnsTree(runtime_dir, FAKE_TREE.format(host="127.0.0.1", port=port), None)
    relay: HeldRelay | None = None
    try:
        tree.start()
        relay = HeldRelay(port, TREE_PORTS)
        relayed_file = relay.relayed_file(runtime_dir / "tree.json", port,
                                          tmp_path / "relayed.json")
        yield tree, relay, target_from_file(relayed_file, client_pair)
    finally:
        if relay is not None:
            relay.close()
        tree.stop()


def effects(tree: NetnsTree) -> int:
    """The actor's own count of fake.effect runs, over ipc (not through the relay)."""
    return tree.call("alpha", "fake.count")["effects"]


def test_a_read_that_times_out_mid_handshake_leaves_the_connection_to_the_next_call(
        held: tuple[NetnsTree, HeldRelay, RemoteTarget]) -> None:
    _, relay, target = held
    with Client(remote=target, timeout=10.0) as c:
        with pytest.raises(MoorageError) as caught:
            c.call("alpha", "sys.ping", timeout=1.0)  # (as a replay page after a reset)
        assert caught.value.error.name == "timeout", caught.value
        assert relay.release() >= 1  # that call's connection gets in now
        # answered on it; a connection made anew would be held for good (timeout)
        assert c.call("alpha", "sys.ping", timeout=30.0) is not None


def test_an_effect_that_times_out_mid_handshake_is_outcome_unknown_and_the_next_gets_in(
        held: tuple[NetnsTree, HeldRelay, RemoteTarget]) -> None:
    tree, relay, target = held
    with Client(remote=target, timeout=10.0) as c:
        with pytest.raises(MoorageError) as caught:
            c.call("alpha", "fake.effect", timeout=1.0, idempotent=False)
        # its request is still queued on a connection that may yet get in: not "not run"
        assert caught.value.error.name == "outcome_unknown", caught.value
        assert relay.release() >= 1
        # In now, and answered on that connection. (The queued request got in past its
        # deadline: the actor refused it, deadline_expired, not run; so this one is the first.)
        assert c.call("alpha", "fake.effect", timeout=30.0, idempotent=False) == {
            "effects": 1}
        assert effects(tree) == 1


def test_the_asyncio_client_leaves_the_connection_the_same_way(
        held: tuple[NetnsTree, HeldRelay, RemoteTarget]) -> None:
    _, relay, target = held

    async def calls() -> Any:
        async with AsyncClient(remote=target, timeout=10.0) as ac:
            with pytest.raises(MoorageError) as caught:
                await ac.call("alpha", "sys.ping", timeout=1.0)
            assert caught.value.error.name == "timeout", caught.value
            assert relay.release() >= 1
            return await ac.call("alpha", "sys.ping", timeout=30.0)

    assert asyncio.run(calls()) is not None
