"""An idempotent call whose attempts time out climbs the ladder (the attempt's wait doubled, at
most two resends) and then waits to its own deadline: an op that is slow, not lost, answers
late, and any copy's reply (one id for all) ends the call (PROTOCOL.md section 10). Every
reply is a success to the actor's breaker, one that comes after its call ended included
(section 11): a slow actor is not a dead one."""

from __future__ import annotations

import asyncio
import threading

import pytest
import zmq

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.envelope import Request
from moorage.protocol.errors import MoorageError
from moorage.protocol.recovery import BreakerState
from tests.bare_actor import ACTOR, Router, running
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ATTEMPT = 0.05  # the ladder's waits: 0.05, 0.1, then to the deadline
COPIES = 3  # the first send and the ladder's two resends


def test_an_idempotent_call_slower_than_the_ladder_gets_its_late_reply(runtime_dir):
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    copies: list[tuple[bytes, Request]] = []
    call_over = threading.Event()

    def actor() -> None:
        for _ in range(COPIES):
            got = router.recv()
            assert got is not None, "a resend of the ladder never came"
            copies.append(got)
        call_over.wait(2.0)  # slow: answers well after the ladder's own waits are over
        router.reply(*copies[0], {"synced": True})

    try:
        with Client(runtime_dir, learn_ops=False, attempt_timeout=ATTEMPT) as c, \
                running(actor):
            try:
                result = c.call(ACTOR, "bare.sync", timeout=60, idempotent=True)
            finally:
                call_over.set()
    finally:
        router.close()
        ctx.term()
    assert result == {"synced": True}
    assert len({req.id for _, req in copies}) == 1  # copies of one call, not new calls


def test_slow_calls_to_a_live_actor_leave_its_breaker_closed(runtime_dir):
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    calls = 3  # each one's ladder times out twice: six failures, were its reply not counted

    def actor() -> None:
        for _ in range(calls):
            copies = [router.recv() for _ in range(COPIES)]
            assert all(copies), "a resend of the ladder never came"
            threading.Event().wait(0.5)  # slow, not lost
            router.reply(*copies[0], {"synced": True})  # type: ignore[misc]
        got = router.recv()
        assert got is not None
        router.reply(*got, {"pong": True})

    try:
        with Client(runtime_dir, learn_ops=False, attempt_timeout=ATTEMPT,
                    breaker_threshold=5) as c, running(actor):
            for _ in range(calls):
                assert c.call(ACTOR, "bare.sync", timeout=60, idempotent=True) == \
                    {"synced": True}
            assert c.breaker_state(ACTOR) is BreakerState.CLOSED
            assert c.call(ACTOR, "bare.ping", timeout=60) == {"pong": True}
    finally:
        router.close()
        ctx.term()


def test_a_reply_that_comes_after_its_call_ended_counts_as_a_success(runtime_dir):
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    call_over = threading.Event()

    def actor() -> None:
        got = router.recv()
        assert got is not None
        assert call_over.wait(30)
        router.reply(*got, {"late": True})

    async def main() -> None:
        async with AsyncClient(runtime_dir, learn_ops=False) as c:
            with pytest.raises(MoorageError) as e:
                await c.call(ACTOR, "bare.sync", timeout=0.3, idempotent=True)
            assert e.value.name == "timeout"
            breaker = c.core.breaker(ACTOR)
            assert breaker.failures >= 1
            call_over.set()
            await asyncio.to_thread(wait_for, lambda: breaker.failures == 0,
                                    "the late reply counted as a success")

    try:
        with running(actor):
            try:
                asyncio.run(main())
            finally:
                call_over.set()
    finally:
        router.close()
        ctx.term()
