"""A reply that came in before the actor's connection dropped is the call's answer.

An actor's I/O thread queues a reply before the connection ends, so when a client learns of
the drop the reply may already wait in its socket. Acting on the drop first would end a
non-idempotent call `outcome_unknown` though it was answered, and resend a resumable one to
the successor (which may run it a second time). Here a bare ROUTER answers and closes while
the client's loop cannot run, so both the reply and the drop are there when it runs again;
the client reads its socket before it acts on a drop, whichever of the two its loop sees
first."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from moorage.protocol import endpoints
from moorage.protocol.client import AsyncClient
from moorage.protocol.envelope import decode_request, encode_reply
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ACTOR = "bare"


def answer_and_close(router: zmq.Socket) -> None:
    """Answer the one request waiting, then close (as an actor's end does when it dies)."""
    assert router.poll(10_000), "no request came"
    frames = router.recv_multipart()
    req = decode_request(frames[1:])
    router.send_multipart([frames[0], *encode_reply(req.id, "e1", {"answered": req.op})])
    router.close(linger=5_000)  # the reply goes out before the connection ends


def has_input(sock: zmq.Socket) -> bool:
    return bool(sock.get(zmq.EVENTS) & zmq.POLLIN)


@pytest.fixture
def router(runtime_dir):
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoints.rpc(runtime_dir, ACTOR))
    yield s
    s.close(0)
    ctx.term()


def test_the_async_client_takes_a_reply_queued_before_the_drop(runtime_dir, router):
    async def main() -> dict:
        async with AsyncClient(runtime_dir, timeout=10.0) as c:
            call = asyncio.ensure_future(c.call(ACTOR, "bare.do", idempotent=False))
            await asyncio.to_thread(router.poll, 10_000)  # the request is out
            conn = c._conns[ACTOR]
            # From here the loop does not run until both are in the client's sockets.
            answer_and_close(router)
            wait_for(lambda: has_input(conn.sock) and has_input(conn.monitor),
                     "the reply and the drop in the client's sockets")
            return await call

    assert asyncio.run(main()) == {"answered": "bare.do"}

