"""An asyncio call whose reply is already queued when it comes to wait takes it, even with no
time left to wait (asyncio.wait_for(queue.get(), 0) gives up before get() has run, and so
would end the call `timeout` with its reply in hand). Here the event loop is held past the
call's deadline while the call waits out a `busy`, with a reply queued meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import zmq

from moorage.protocol.client import AsyncClient
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import WireError
from tests.bare_actor import ACTOR, Router, running
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

# The `busy`'s wait (the time the test has to queue the answer while the call waits it out,
# on a loaded machine), within the call's deadline with as much again to spare.
TIMEOUT = 4.0
RETRY_AFTER_MS = 2000


def test_a_reply_queued_by_the_deadline_is_taken(runtime_dir):
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    refusal_read = threading.Event()  # the call has the `busy`: it waits out its retry_after
    answer = threading.Event()

    def actor() -> None:
        got = router.recv()
        assert got is not None
        router.error(*got, WireError.of("busy", "later", retry_after_ms=RETRY_AFTER_MS))
        assert answer.wait(30)
        router.reply(*got, {"answered": True})  # (an answer under the same id: a copy's)

    def check(actor: str, op: str, reply: Reply) -> None:
        if not reply.ok:
            refusal_read.set()

    async def main() -> Any:
        async with AsyncClient(runtime_dir, learn_ops=False) as c:
            c.core.reply_check = check  # (called in the call's task as it reads a reply)
            started = time.monotonic()
            call = asyncio.create_task(c.call(ACTOR, "bare.read", timeout=TIMEOUT,
                                              idempotent=True))
            await asyncio.to_thread(wait_for, refusal_read.is_set, "the refusal read")
            answer.set()
            (inbox,) = c._conns[ACTOR].waiters.values()
            await asyncio.to_thread(wait_for, inbox.qsize, "the answer queued for the call")
            # The event loop held (by other work) until the call's deadline has passed: the
            # scenario itself, not a wait for another thread (none is running then).
            while time.monotonic() <= started + TIMEOUT:
                time.sleep(0.05)  # sleep-ok: blocking the loop past the deadline is the test
            return await call

    try:
        with running(actor):
            try:
                assert asyncio.run(main()) == {"answered": True}
            finally:
                answer.set()
    finally:
        router.close()
        ctx.term()
