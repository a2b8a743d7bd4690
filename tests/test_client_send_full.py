"""A client whose DEALER is at its SNDHWM never holds a call past its deadline.

Toward an actor that reads nothing (here one stopped with SIGSTOP) a client's queue fills:
100000 requests (the HWM, PROTOCOL.md section 15), none of which goes anywhere until the
actor reads again. A blocking send there would wait for as long as the actor does. So a
request the socket has no room for waits for room only while its attempt waits for a reply,
and is then dropped unsent: the call ends at its deadline as an attempt with no reply does
(section 10: `timeout` when idempotent, else `outcome_unknown`), a pipeline's calls too, and
once the actor reads again the same client is answered, and sends what waited for room.

The queue is filled through the client's own socket with requests the actor refuses unrun
once it reads again (a deadline long past), under ids no call of the client uses. The real
HWM is kept: at a lower one the pipe's low-water mark (half the HWM) is below what the
kernel's socket buffer takes in, and the socket would find room again by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from moorage.protocol import limits
from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.envelope import encode_request
from moorage.protocol.errors import MoorageError
from moorage.protocol.wire import NOBLOCK, send_frames
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

ACTOR = "fake"
TIMEOUT = 2.0
FILL_IDS = 1 << 40  # far above the ids a client's calls take (1, 2, ...)
# The breaker is not this test's: its calls time out on purpose, and an open breaker would
# refuse the calls that show the client works again (`circuit_open`) for its cooldown.
OPTIONS: dict[str, Any] = {"timeout": 10.0, "breaker_threshold": 1_000_000}


def fill_request(n: int) -> list[bytes]:
    """A request the actor answers `deadline_expired` without running it (deadline 1 ms
    after the epoch), whose answer the client takes for a late reply."""
    return encode_request(FILL_IDS + n, "fill", "sys.ping", None, 1)


def fill(sock: zmq.Socket) -> int:
    """Queue requests on `sock` until it has no room for one more; how many it took.

    On an asyncio socket the sends bypass pyzmq's asyncio layer (a hundred thousand futures
    cost seconds); the look at the socket's events after them goes through it (zmq.asyncio's
    `get` runs what is pending), so a wake-up of the socket's descriptor that a send took is
    not lost to the client's reader."""
    n = 0
    while True:
        try:
            send_frames(sock, fill_request(n), NOBLOCK)
        except zmq.Again:
            break
        n += 1
    assert not sock.get(zmq.EVENTS) & zmq.POLLOUT  # (nothing moves toward a stopped actor)
    assert n > limits.HWM // 2  # (the client's own queue: its earlier calls took a few)
    return n


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """`pid` stopped (SIGSTOP) inside the block, going on (SIGCONT) after it, however it
    ends."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def names(results: list[Any]) -> list[str]:
    return [r.name if isinstance(r, MoorageError) else repr(r) for r in results]


def test_a_call_and_a_pipeline_end_at_their_deadlines_while_the_queue_is_full(
        runtime_dir, spawn_actor):
    actor = spawn_actor()
    with Client(runtime_dir, **OPTIONS) as c:
        c.learn_ops(ACTOR)  # (connected, and its ops known: nothing of that waits below)
        with stopped(actor.pid):
            fill(c._conns[ACTOR].sock)
            started = time.monotonic()
            with pytest.raises(MoorageError) as e:
                c.call(ACTOR, "sys.ping", timeout=TIMEOUT)
            assert e.value.name == "timeout", e.value
            assert time.monotonic() - started >= TIMEOUT
            with pytest.raises(MoorageError) as e:
                c.call(ACTOR, "fake.effect", timeout=TIMEOUT)  # (resent pinned, unsent too)
            assert e.value.name == "outcome_unknown", e.value
            started = time.monotonic()
            results = c.pipeline(ACTOR, [("sys.ping", None)] * 3 + [("fake.effect", None)],
                                 timeout=TIMEOUT)
            assert names(results) == ["timeout"] * 3 + ["outcome_unknown"]
            assert time.monotonic() - started >= TIMEOUT
        # Answered once the actor has read what was queued before (the fill): none of the
        # effects above was sent after its call ended, so these are its first.
        assert c.call(ACTOR, "sys.ping", timeout=60.0)["ep"]
        assert c.pipeline(ACTOR, [("fake.effect", None)] * 2, timeout=60.0) == [
            {"effects": 1}, {"effects": 2}]


def test_a_request_that_waits_for_room_is_sent_when_the_actor_reads_again(
        runtime_dir, spawn_actor):
    actor = spawn_actor()
    # One attempt to the deadline: the request goes out only when room comes.
    with Client(runtime_dir, attempt_timeout=60.0, **OPTIONS) as c:
        c.learn_ops(ACTOR)
        conn = c._conns[ACTOR]
        waiting = threading.Event()

        def go_on_once_it_waits() -> None:
            try:
                wait_for(lambda: conn.unsent is not None, "the call waiting for room")
                waiting.set()
            finally:
                os.kill(actor.pid, signal.SIGCONT)

        os.kill(actor.pid, signal.SIGSTOP)
        thread = threading.Thread(target=go_on_once_it_waits, daemon=True)
        try:
            fill(conn.sock)
            thread.start()
            assert c.call(ACTOR, "fake.effect", timeout=60.0) == {"effects": 1}
        finally:
            if thread.is_alive():
                thread.join(30)
            os.kill(actor.pid, signal.SIGCONT)
        assert waiting.is_set()


def test_asyncio_calls_end_at_their_deadlines_while_the_queue_is_full(
        runtime_dir, spawn_actor):
    actor = spawn_actor()

    async def main() -> None:
        async with AsyncClient(runtime_dir, **OPTIONS) as c:
            await c.learn_ops(ACTOR)
            with stopped(actor.pid):
                fill(c._conns[ACTOR].sock)
                started = time.monotonic()
                results = await asyncio.gather(
                    *(c.call(ACTOR, op, timeout=TIMEOUT)
                      for op in ["sys.ping", "fake.effect", "sys.ping", "fake.effect"]),
                    return_exceptions=True)
                assert names(results) == ["timeout", "outcome_unknown"] * 2
                assert time.monotonic() - started >= TIMEOUT
            assert (await c.call(ACTOR, "sys.ping", timeout=60.0))["ep"]
            assert await asyncio.gather(
                *(c.call(ACTOR, "fake.effect", timeout=60.0) for _ in range(2))) in (
                [{"effects": 1}, {"effects": 2}], [{"effects": 2}, {"effects": 1}])

    asyncio.run(main())


def test_an_asyncio_request_that_waits_for_room_is_sent_when_the_actor_reads_again(
        runtime_dir, spawn_actor):
    actor = spawn_actor()

    async def main() -> None:
        async with AsyncClient(runtime_dir, attempt_timeout=60.0, **OPTIONS) as c:
            await c.learn_ops(ACTOR)
            conn = c._conns[ACTOR]
            with stopped(actor.pid):
                fill(conn.sock)
                call = asyncio.create_task(c.call(ACTOR, "fake.effect", timeout=60.0))
                # One turn of the loop runs the call up to its first wait: its waiter made,
                # its send tried, and (no room) left waiting for room.
                await asyncio.sleep(0)  # sleep-ok: a yield to the call's task, not a wait
                assert conn.waiters
            assert await call == {"effects": 1}

    asyncio.run(main())
