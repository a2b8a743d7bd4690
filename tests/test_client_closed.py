"""A closed client refuses what it is asked from then on, `cancelled` ("not sent"), rather than
a raw ZeroMQ error from a terminated context; an asyncio call waiting out a back-off when its
client is closed ends then, `cancelled` (nothing of it runs), and one in flight ends then as
any unanswered attempt does. The actor is a fake on real sockets (tests/bare_actor.py)."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.errors import MoorageError, WireError
from tests.bare_actor import ACTOR, Router

pytestmark = pytest.mark.timeout(60)

BACK_OFF_MS = 30_000  # (one no call waits out in this test's time)
CALL_S = 120.0  # (within the call's time: a back-off past it ends the call with the refusal)


def refused_closed(e: pytest.ExceptionInfo[MoorageError], op: str) -> None:
    assert (e.value.name, e.value.attempts) == ("cancelled", 0), e.value
    assert f"the client is closed: {op} to {ACTOR} not sent" in str(e.value)


def test_a_closed_client_refuses_calls_and_subscriptions_not_sent(runtime_dir):
    c = Client(runtime_dir, learn_ops=False)
    c.close()
    with pytest.raises(MoorageError) as e:
        c.call(ACTOR, "bare.ping")
    refused_closed(e, "bare.ping")
    with pytest.raises(MoorageError) as e:
        c.subscribe(ACTOR)
    refused_closed(e, "subscribe")


def test_a_closed_asyncio_client_refuses_calls_and_subscriptions_not_sent(runtime_dir):
    async def main() -> None:
        c = AsyncClient(runtime_dir, learn_ops=False)
        await c.close()
        with pytest.raises(MoorageError) as e:
            await c.call(ACTOR, "bare.ping")
        refused_closed(e, "bare.ping")
        with pytest.raises(MoorageError) as e:
            c.subscribe(ACTOR)
        refused_closed(e, "subscribe")

    asyncio.run(main())


@pytest.mark.parametrize("answer", ["busy", None])
def test_an_asyncio_call_waiting_when_its_client_closes_ends_then(runtime_dir, answer):
    """Refused `busy` with a long retry_after_ms: the call waits out its back-off, and the
    close ends it `cancelled`, naming the refusal (it raised a ZeroMQ error at the back-off's
    end, on a closed socket). Unanswered (None): in flight, it ends `outcome_unknown`."""
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)

    async def main() -> MoorageError:
        c = AsyncClient(runtime_dir, learn_ops=False, timeout=CALL_S)
        call = asyncio.ensure_future(c.call(ACTOR, "bare.effect", idempotent=False))
        got = await asyncio.to_thread(router.recv)
        assert got is not None
        if answer is not None:
            peer, req = got
            router.error(peer, req, WireError.of(answer, "held", retry_after_ms=BACK_OFF_MS))
            # A ping answered after the refusal, on the same connection: once it is back, the
            # refusal is in the call's queue, ahead of what close() puts there.
            ping = asyncio.ensure_future(c.call(ACTOR, "bare.ping", idempotent=True))
            pinged = await asyncio.to_thread(router.recv)
            assert pinged is not None
            router.reply(*pinged, "pong")
            assert await ping == "pong"
        await c.close()
        with pytest.raises(MoorageError) as e:
            await call
        return e.value

    try:
        err = asyncio.run(main())
    finally:
        router.close()
        ctx.term()
    if answer is None:
        assert err.name == "outcome_unknown" and "the client was closed" in str(err), err
    else:
        assert err.name == "cancelled" and "answered busy" in str(err), err
