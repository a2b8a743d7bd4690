"""The publisher's round of welcomes (PROTOCOL.md section 12) on real sockets: one welcome per
topic under the subscribed prefix with its seq, then the prefix's own, which makes the
subscription live; and what a prefix subscriber does with them."""

from __future__ import annotations

import time

import pytest
import zmq

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage, decode_stream
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(30)


def welcomes_until(sock: zmq.Socket, last_topic: str) -> list[tuple[str, int]]:
    got: list[tuple[str, int]] = []
    end = time.monotonic() + 10
    while True:
        assert sock.poll(int(max(0, end - time.monotonic()) * 1000)), f"no welcome: {got}"
        m = decode_stream(sock.recv_multipart())
        assert m.welcome, m
        got.append((m.topic, m.seq))
        if m.topic == last_topic:
            return got


def test_a_prefix_subscription_gets_a_welcome_per_topic_then_its_own(spawn_actor, client):
    spawn_actor()
    client.call("fake", "fake.publish", {"topic": "t.a", "n": 3})
    client.call("fake", "fake.publish", {"topic": "t.b", "n": 1})
    client.call("fake", "fake.publish", {"topic": "other", "n": 2})
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"t.")
    sub.connect(endpoints.pub(client.runtime_dir, "fake"))
    try:
        assert welcomes_until(sub, "t.") == [("t.a", 3), ("t.b", 1), ("t.", 0)]
    finally:
        sub.close(0)


def test_a_topic_born_while_a_prefix_subscriber_is_live_comes_whole(spawn_actor, runtime_dir):
    spawn_actor(pub_hwm=4)  # room for the round of two welcomes; a burst still overruns it
    with Client(runtime_dir, timeout=10.0) as c:
        c.call("fake", "fake.publish", {"topic": "t.old", "n": 2})
        sub = c.subscribe("fake", ["t."])
        wait_for(lambda: sub.next(timeout=0.05) is None and "t." in sub.tracker.live,
                 "the subscription live")
        # From now: t.old starts at its welcome's seq; nothing older is replayed.
        assert sub.tracker.topics["t.old"].last == 2
        # A burst on a new topic overruns the subscriber (a small pub_hwm, big messages): what
        # it loses is replayed, from seq 1 if the first message seen was past it (a topic born
        # while the subscription is live is wanted whole), so all of it arrives in order.
        c.call("fake", "fake.publish", {"topic": "t.new", "n": 60, "size": 131072})
        seqs = []
        while len(seqs) < 60:
            ev = sub.next(timeout=1)
            if ev is None:  # quiet before the end: the tail was dropped (section 12, tail loss)
                sub.catch_up()
                ev = sub.next(timeout=10)
            assert isinstance(ev, StreamMessage) and ev.topic == "t.new", ev
            seqs.append(ev.seq)
        assert seqs == list(range(1, 61))
        assert sub.tracker.replays_asked >= 1  # it was overrun, and repaired
        sub.close()
