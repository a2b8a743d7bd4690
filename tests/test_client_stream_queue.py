"""A subscription's queue in the client's process is bounded (`STREAM_HWM` messages, not the
sockets' 100,000): a subscriber that stops reading holds at most that many, and what comes
past it and past the publisher's own queue is dropped and repaired from the publisher's
retention, every message once and in order. On a real actor, its `pub_hwm` small. A
subscription given its own queue (`rcvhwm`, in both Python clients) holds that instead, and
anything but a count of messages is refused."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from moorage.protocol import limits
from moorage.protocol.client import AsyncClient
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

N = 3000  # 1 KiB each: three times the queue, under a third of the actor's retention


def test_a_subscriber_that_stops_reading_holds_its_bound_and_gets_every_message(
        spawn_actor, client):
    spawn_actor(pub_hwm=10)
    sub = client.subscribe("fake", ["q."])
    try:
        assert sub.sock.getsockopt(zmq.RCVHWM) == limits.STREAM_HWM
        wait_for(lambda: sub.next(timeout=0.05) is None and "q." in sub.tracker.live,
                 "the subscription live")
        # Published in one turn of the actor while nothing is read here.
        assert client.call("fake", "fake.publish",
                           {"topic": "q.a", "n": N, "size": 1024})["last_seq"] == N
        bodies = []
        while len(bodies) < N:
            ev = sub.next(timeout=1)
            if ev is None:  # quiet before the end: the tail was dropped (section 12)
                sub.catch_up()
                ev = sub.next(timeout=10)
            assert isinstance(ev, StreamMessage) and ev.topic == "q.a", ev
            assert len(ev.attachments[0]) == 1024
            bodies.append(ev.body["i"])
        assert bodies == list(range(N))
        assert sub.tracker.replays_asked >= 1  # it was overrun: the queue held its bound
    finally:
        sub.close()


def test_a_subscription_given_its_own_queue_holds_that_and_a_bad_one_is_refused(
        spawn_actor, client):
    spawn_actor(pub_hwm=10)
    sub = client.subscribe("fake", ["q."], rcvhwm=5)
    try:
        assert sub.sock.getsockopt(zmq.RCVHWM) == 5
    finally:
        sub.close()
    for bad in (-1, 2.5, "10"):
        with pytest.raises(MoorageError) as err:
            client.subscribe("fake", ["q."], rcvhwm=bad)
        assert err.value.error.name == "bad_args"


def test_the_asyncio_client_takes_a_subscription_queue_too(spawn_actor, runtime_dir):
    spawn_actor(pub_hwm=10)

    async def main() -> tuple[int, int]:
        async with AsyncClient(runtime_dir, timeout=10.0) as ac:
            own, default = ac.subscribe("fake", ["q."], rcvhwm=7), ac.subscribe("fake", ["q."])
            try:
                return own.sock.getsockopt(zmq.RCVHWM), default.sock.getsockopt(zmq.RCVHWM)
            finally:
                own.close()
                default.close()

    assert asyncio.run(main()) == (7, limits.STREAM_HWM)
