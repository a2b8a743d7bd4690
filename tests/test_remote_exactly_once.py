"""Exactly once across a dropped link (R9, issue 18): a remote client whose tcp connection is
reset while a non-idempotent call is in flight resends it pinned to the actor life it went to
(the request header's `ep`). That life answers it once: it joins the run still going, or
answers from its reply cache when the reply was lost with the link. A successor (the actor
was killed meanwhile) refuses it `outcome_unknown` without running it.

A real tree on loopback tcp with CURVE, reached through a relay the test resets (an RST on
every connection, as a middlebox dropping its state does); the actor's own counts, read over
ipc, say how many times the op ran.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol import curve
from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.errors import MoorageError, WireError
from moorage.protocol.remote import RemoteTarget, target_from_file
from tests.remote_support import (
    FAKE_TREE,
    TREE_PORTS,
    CutRelay,
    NetnsTree,
    free_port_block,
    make_keys,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def relayed(runtime_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            ) -> Iterator[tuple[NetnsTree, CutRelay, RemoteTarget]]:
    """A tree listening on loopback tcp, a relay in front of all its ports, and the target
    a remote client reaches it by through the relay."""
    server_dir, _, client_pair = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))
    port = free_port_block(TREE_PORTS)
    tree = NetnsTree(runtime_dir, FAKE_TREE.format(host="127.0.0.1", port=port), None)
    relay: CutRelay | None = None
    try:
        tree.start()
        relay = CutRelay(port, TREE_PORTS)
        relayed_file = relay.relayed_file(runtime_dir / "tree.json", port,
                                          tmp_path / "relayed.json")
        yield tree, relay, target_from_file(relayed_file, client_pair)
    finally:
        if relay is not None:
            relay.close()
        tree.stop()


@pytest.fixture
def remote_call(relayed: tuple[NetnsTree, CutRelay, RemoteTarget],
                ) -> Iterator[tuple[Client, ThreadPoolExecutor]]:
    """A remote client (through the relay) and a thread to make its call in, while the test
    breaks the link from this one."""
    _, _, target = relayed
    pool = ThreadPoolExecutor(1)
    client = Client(remote=target, timeout=30.0)
    try:
        yield client, pool
    finally:
        pool.shutdown(wait=True)
        client.close()


def count(tree: NetnsTree) -> dict[str, Any]:
    """The actor's own counts, over ipc (not through the relay)."""
    return tree.call("alpha", "fake.count")


def held_call(tree: NetnsTree, client: Client, pool: ThreadPoolExecutor) -> Future:
    """Start a fake.held call and return once the actor holds it (it ran, unanswered)."""
    client.hello("alpha")  # the actor life the call will be pinned to, known before it goes
    future = pool.submit(client.call, "alpha", "fake.held")
    wait_for(lambda: future.done() or count(tree)["held"] == 1, "the call held by the actor")
    assert not future.done(), future.exception()
    return future


def test_a_call_running_when_its_link_is_reset_joins_the_run_and_gets_its_one_result(
        relayed: tuple[NetnsTree, CutRelay, RemoteTarget],
        remote_call: tuple[Client, ThreadPoolExecutor]) -> None:
    tree, relay, _ = relayed
    client, pool = remote_call
    reset_and_join(tree, relay, held_call(tree, client, pool))


def reset_and_join(tree: NetnsTree, relay: CutRelay, future: Future) -> None:
    """The link of a held call is reset: the pinned resend reaches the same actor life and
    joins the held call (two attempts), which ends with its one result, run once."""
    assert relay.reset() >= 2
    wait_for(lambda: future.done() or count(tree)["held_attempts"] == 2,
             "the resend joining the held call")
    assert tree.call("alpha", "fake.release") == {"released": 1}
    assert future.result(30) == {"effects": 1}
    assert count(tree)["effects"] == 1  # ran exactly once


def test_the_asyncio_client_resends_the_same_way(
        relayed: tuple[NetnsTree, CutRelay, RemoteTarget]) -> None:
    tree, relay, target = relayed

    async def call() -> Any:
        async with AsyncClient(remote=target, timeout=30.0) as client:
            await client.hello("alpha")
            return await client.call("alpha", "fake.held")

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(asyncio.run, call())
        wait_for(lambda: future.done() or count(tree)["held"] == 1, "the call held")
        reset_and_join(tree, relay, future)


def test_a_reply_lost_with_the_link_is_answered_from_the_reply_cache_not_run_again(
        relayed: tuple[NetnsTree, CutRelay, RemoteTarget],
        remote_call: tuple[Client, ThreadPoolExecutor]) -> None:
    tree, relay, _ = relayed
    client, pool = remote_call
    future = held_call(tree, client, pool)
    hits = tree.call("alpha", "sys.info")["reply_cache"]["hits"]
    relay.lose_replies()
    assert tree.call("alpha", "fake.release") == {"released": 1}  # answered, into the void
    assert relay.reset() >= 2
    assert future.result(30) == {"effects": 1}
    assert count(tree)["effects"] == 1  # ran exactly once
    assert tree.call("alpha", "sys.info")["reply_cache"]["hits"] == hits + 1


def test_a_call_whose_actor_was_killed_meanwhile_ends_outcome_unknown_and_is_not_run_again(
        relayed: tuple[NetnsTree, CutRelay, RemoteTarget],
        remote_call: tuple[Client, ThreadPoolExecutor]) -> None:
    tree, _, _ = relayed
    client, pool = remote_call
    kill_and_refuse(tree, held_call(tree, client, pool))


def kill_and_refuse(tree: NetnsTree, future: Future) -> WireError:
    """The actor of a held call is killed: the call ran there and its reply never left. Its
    pinned resend reaches the successor, which refuses it unrun; the call ends
    `outcome_unknown` naming both lives (returned for the caller's own checks)."""
    first = tree.call("alpha", "sys.hello")
    os.kill(first["pid"], signal.SIGKILL)
    with pytest.raises(MoorageError) as e:
        future.result(60)
    err = e.value.error
    successor = tree.call("alpha", "sys.hello")
    assert successor["ep"] != first["ep"]
    assert err.name == "outcome_unknown", err
    assert err.detail["old_epoch"] == first["ep"] and err.detail["new_epoch"] == successor["ep"]
    assert count(tree)["effects"] == 0  # not run by the successor
    # (each drop while the successor started resent it: every copy was refused, none ran)
    assert tree.call("alpha", "sys.info")["refused"].get("outcome_unknown", 0) >= 1
    return err
