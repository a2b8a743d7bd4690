"""A dropped connection ends what was sent before it, not what was sent after it (PROTOCOL.md
section 10, "Early failure on a dead actor"; protocol/vectors/client.json's
a_dropped_connection_ends_what_was_sent_before_it_and_not_what_was_sent_after). A call
refused `busy` waits out the actor's retry_after_ms; when the actor is replaced meanwhile,
the resend goes to the successor, which runs it: the call ends with that reply, not with
`outcome_unknown`. And after a drop the actor's old epoch is forgotten: a later call is not
pinned to a life that is gone, whose successor would refuse the pinned resend of a call that
runs there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.client._core import ClientCore
from moorage.protocol.envelope import Request
from moorage.protocol.errors import WireError
from tests.bare_actor import ACTOR, EPOCH, SUCCESSOR, Router, running
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

# The refused call's wait before its resend: the drop is told long before it ends.
RETRY_AFTER_MS = 2000


def answer_read(core: ClientCore) -> bool:
    """Has the client read an answer of the first life (a reply tells its epoch)? Only then
    does that life end: one that ends with its answer unsent would lose it."""
    return core.heard.get(ACTOR) == EPOCH


def replaced_during_the_back_off(ctx: zmq.Context, runtime_dir: Any, core: ClientCore,
                                 ran: list[Request]) -> Callable[[], None]:
    """The actor refuses the call `busy` and ends (its connection drops); its successor binds
    the same endpoint and runs what reaches it."""

    def actor() -> None:
        first = Router(ctx, runtime_dir)
        got = first.recv()
        assert got is not None
        first.error(*got, WireError.of("busy", "later", retry_after_ms=RETRY_AFTER_MS))
        wait_for(lambda: answer_read(core), "the refusal read")
        first.close()
        successor = Router(ctx, runtime_dir, SUCCESSOR)
        try:
            again = successor.recv()
            assert again is not None, "the resend never reached the successor"
            ran.append(again[1])
            successor.reply(*again, {"ran": True})
            # (closed with LINGER 0 before the client read it, the answer could be lost
            # with the connection: a real actor's I/O thread sends it first)
            wait_for(lambda: core.heard.get(ACTOR) == SUCCESSOR, "the answer read")
        finally:
            successor.close()

    return actor


def test_a_resend_after_the_actor_was_replaced_is_not_blamed_on_the_drop(runtime_dir):
    ctx = zmq.Context()
    ran: list[Request] = []
    try:
        with Client(runtime_dir, learn_ops=False, timeout=30.0) as c, \
                running(replaced_during_the_back_off(ctx, runtime_dir, c.core, ran)):
            assert c.call(ACTOR, "bare.do", {}, idempotent=False) == {"ran": True}
    finally:
        ctx.term()
    assert len(ran) == 1


def test_an_asyncio_resend_after_the_actor_was_replaced_is_not_blamed_on_the_drop(
        runtime_dir):
    ctx = zmq.Context()
    ran: list[Request] = []

    async def main() -> Any:
        async with AsyncClient(runtime_dir, learn_ops=False, timeout=30.0) as c:
            with running(replaced_during_the_back_off(ctx, runtime_dir, c.core, ran)):
                return await c.call(ACTOR, "bare.do", {}, idempotent=False)

    try:
        assert asyncio.run(main()) == {"ran": True}
    finally:
        ctx.term()
    assert len(ran) == 1


def restarted_then_slow(ctx: zmq.Context, runtime_dir: Any, core: ClientCore,
                        refused: list[Request]) -> tuple[Callable[[], None], Any]:
    """The actor answers one call (its epoch is recorded), then is replaced; the successor
    runs the next call slowly (1.5 s) and refuses any resend pinned to another life, as a
    real one does."""
    first = Router(ctx, runtime_dir)
    replaced: list[bool] = []

    def actor() -> None:
        got = first.recv()
        assert got is not None
        first.reply(*got, {"pong": True})
        wait_for(lambda: answer_read(core), "the answer read")
        first.close()
        successor = Router(ctx, runtime_dir, SUCCESSOR)
        try:
            assert successor.accepted(), "the client never connected to the successor"
            replaced.append(True)
            call = successor.recv()
            assert call is not None
            while (again := successor.recv(1.5)) is not None:
                if again[1].epoch not in (None, SUCCESSOR):
                    refused.append(again[1])
                    successor.error(*again, WireError.of(
                        "outcome_unknown", "pinned to another life",
                        detail={"old_epoch": again[1].epoch, "new_epoch": SUCCESSOR}))
            successor.reply(*call, {"done": True})
            wait_for(lambda: core.heard.get(ACTOR) == SUCCESSOR, "the answer read")
        finally:
            successor.close()

    return actor, replaced


def test_a_call_after_a_restart_is_not_pinned_to_the_life_before_it(runtime_dir):
    ctx = zmq.Context()
    refused: list[Request] = []
    try:
        with Client(runtime_dir, learn_ops=False, timeout=30.0, attempt_timeout=0.2) as c:
            actor, replaced = restarted_then_slow(ctx, runtime_dir, c.core, refused)
            with running(actor):
                assert c.call(ACTOR, "bare.ping", idempotent=True) == {"pong": True}
                # The drop is told (queued on the client's monitor), not read yet: the next
                # call is made with the epoch of the life that is gone still recorded.
                wait_for(lambda: replaced, "the client connected to the successor")
                assert c.core.epochs.get(ACTOR) == EPOCH
                assert c.call(ACTOR, "bare.slow", {}, idempotent=False) == {"done": True}
    finally:
        ctx.term()
    assert refused == []


def test_an_asyncio_client_forgets_the_epoch_of_a_dropped_connection(runtime_dir):
    ctx = zmq.Context()
    refused: list[Request] = []

    async def main() -> Any:
        async with AsyncClient(runtime_dir, learn_ops=False, timeout=30.0,
                               attempt_timeout=0.2) as c:
            actor, replaced = restarted_then_slow(ctx, runtime_dir, c.core, refused)
            with running(actor):
                assert await c.call(ACTOR, "bare.ping", idempotent=True) == {"pong": True}
                await asyncio.to_thread(wait_for, lambda: replaced,
                                        "the client connected to the successor")
                await asyncio.to_thread(wait_for, lambda: ACTOR not in c.core.epochs,
                                        "the epoch forgotten at the drop")
                return await c.call(ACTOR, "bare.slow", {}, idempotent=False)

    try:
        assert asyncio.run(main()) == {"done": True}
    finally:
        ctx.term()
    assert refused == []


def test_a_drop_forgets_the_life_only_on_ipc_and_ends_the_older_of_two():
    """Over tcp a drop says nothing of the actor's life (a relay, the network): its epoch
    stays known, so a call made after it is still pinned (section 10). On ipc a drop told
    after a newer life has answered ends the older one: the newer is not taken for dead."""
    from moorage.protocol import curve
    from moorage.protocol.remote import RemoteTarget

    tcp = ClientCore("/tmp/moorage-nowhere", remote=RemoteTarget(
        {ACTOR: {"rpc": "tcp://127.0.0.1:9", "pub": "tcp://127.0.0.1:9"}},
        curve.new_pair().public, curve.new_pair()))
    tcp.note_epoch(ACTOR, EPOCH)
    tcp.dropped(ACTOR)
    assert tcp.epochs == {ACTOR: EPOCH}
    ipc = ClientCore("/tmp/moorage-nowhere")
    ipc.note_epoch(ACTOR, EPOCH)
    ipc.note_epoch(ACTOR, SUCCESSOR)  # (read before the older life's drop was told)
    ipc.dropped(ACTOR)
    assert ipc.epochs == {ACTOR: SUCCESSOR} and ipc.ended == {ACTOR: EPOCH}
    ipc.dropped(ACTOR)  # the successor's own end
    assert ipc.epochs == {} and ipc.ended == {ACTOR: SUCCESSOR}
