"""What a subscriber sends a publisher's XPUB costs it a bounded share of its loop, and a
connection's subscriptions are the set of topics libzmq holds for it: a peer flooding the
socket with frames neither holds the actor's loop nor gets past the bound per connection."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from moorage.actors.runtime.actor import SUBSCRIPTION_FRAMES_PER_TURN
from moorage.protocol import endpoints, limits
from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage, decode_stream
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

# A peer on the actor's XPUB that sends frames of one kind as fast as it can, until its
# stdin is closed: a subscribe/unsubscribe pair of "" (each one applied and undone, with a
# welcome round each), or frames that are neither.
FLOODER = textwrap.dedent("""
    import select, sys, zmq
    ctx = zmq.Context()
    s = ctx.socket(zmq.XSUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 10)  # (the welcomes it is sent are dropped, never read)
    s.setsockopt(zmq.SNDHWM, 100_000)
    s.connect(sys.argv[1])
    frames = [b"\\x01", b"\\x00"] if sys.argv[2] == "subscribe" else [b"\\x02junk"]
    said = False
    while not select.select([sys.stdin], [], [], 0)[0]:
        for _ in range(500):
            for f in frames:
                s.send(f)
        if not said:
            print("flooding", flush=True)
            said = True
    s.close()
    ctx.term()
    """)


def subscriptions(client: Client) -> dict[str, int]:
    return client.call("fake", "sys.info")["subscriptions"]


@pytest.fixture
def xsub(runtime_dir: Path) -> Iterator[zmq.Socket]:
    """A raw XSUB on the fake actor's publisher: every frame it sends reaches the actor."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.XSUB)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoints.pub(runtime_dir, "fake"))
    try:
        yield s
    finally:
        s.close(0)
        ctx.term()


def welcomes_until(sock: zmq.Socket, last: str) -> list[StreamMessage]:
    """The welcomes `sock` receives up to and with the one for `last` (sent after the others:
    one connection's messages keep their order)."""
    got: list[StreamMessage] = []
    while not got or got[-1].topic != last:
        assert sock.poll(20_000), f"no welcome for {last!r} within 20 s"
        msg = decode_stream(sock.recv_multipart())
        assert msg.welcome
        got.append(msg)
    return got


@pytest.mark.parametrize("kind", ["subscribe", "junk"])
def test_a_peer_flooding_the_publisher_socket_does_not_hold_the_actors_loop(
        spawn_actor, client, runtime_dir, kind):
    a = spawn_actor()
    client.call("fake", "sys.ping")
    pid = a.pid
    with subprocess.Popen([sys.executable, "-c", FLOODER, endpoints.pub(runtime_dir, "fake"),
                           kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as flooder:
        assert flooder.stdout is not None and flooder.stdin is not None
        try:
            assert flooder.stdout.readline().strip() == "flooding"
            # The flood outran one read of the socket: its rest was left for a later turn.
            before = wait_for(lambda: subscriptions(client)["deferred"],
                              "a read of the flood cut short")
            # Requests are answered between the reads cut short, again and again, while
            # the flood goes on (each probe is a ping and an info, both answered).
            wait_for(lambda: client.call("fake", "sys.ping")
                     and subscriptions(client)["deferred"] >= before + 5,
                     "pings answered between reads of the flood")
            assert flooder.poll() is None, "the flood ended before the pings were answered"
            subs = subscriptions(client)
            assert 0 < subs["largest_drain"] <= SUBSCRIPTION_FRAMES_PER_TURN
            if kind == "junk":
                assert subs["refused"] > 0 and subs["applied"] == 0
        finally:
            flooder.stdin.close()
            flooder.wait(30)
    wait_for(lambda: subscriptions(client)["connections"] == 0, "the flooder's connection gone")
    assert client.call("fake", "sys.ping") and a.pid == pid and a.proc.is_alive()


def test_an_unsubscribe_of_a_refused_topic_frees_no_room_on_its_connection(
        spawn_actor, client, xsub):
    spawn_actor()
    client.call("fake", "sys.ping")
    held = [f"t.{i}".encode() for i in range(limits.MAX_SUBSCRIPTIONS)]
    for topic in held:
        xsub.send(b"\x01" + topic)
    welcomes_until(xsub, held[-1].decode())
    cycles = 50
    for i in range(cycles):
        xsub.send(b"\x01r")  # refused: the connection holds its 256
        xsub.send(b"\x00r")  # never applied: frees nothing
        xsub.send(b"\x01b.%d" % i)  # so refused too
    xsub.send(b"\x00" + held[0])  # room for one, which the last topic takes
    xsub.send(b"\x01end")
    got = welcomes_until(xsub, "end")
    assert [m.topic for m in got] == ["end"], "a topic past the bound was applied"
    subs = subscriptions(client)
    assert subs["applied"] == limits.MAX_SUBSCRIPTIONS and subs["connections"] == 1
    assert subs["refused"] == 2 * cycles


def test_a_topic_subscribed_again_on_its_connection_is_welcomed_again_and_counted_once(
        spawn_actor, client, xsub):
    """A subscription of a topic its connection's fd holds is served again (the fd may be a
    new connection's, taken over from one that closed with its subscription still queued),
    and counted once against the bound."""
    spawn_actor()
    client.call("fake", "sys.ping")
    for _ in range(3):
        xsub.send(b"\x01dup")
    xsub.send(b"\x01end")
    got = welcomes_until(xsub, "end")
    assert [m.topic for m in got] == ["dup", "dup", "dup", "end"]
    assert subscriptions(client)["applied"] == 2
    # The XSUB sends its unsubscription upstream once the last of its three is undone: the
    # one it sends takes the topic away (libzmq holds it once for the connection, as here).
    for _ in range(3):
        xsub.send(b"\x00dup")
    wait_for(lambda: subscriptions(client)["applied"] == 1, "the topic unsubscribed")
    assert subscriptions(client)["refused"] == 0


def test_frames_that_are_neither_subscription_nor_unsubscription_are_refused_and_counted(
        spawn_actor, client, xsub):
    spawn_actor()
    client.call("fake", "sys.ping")
    for i in range(10):
        xsub.send(b"\x02junk %d" % i)
    xsub.send(b"\x01end")
    welcomes_until(xsub, "end")
    subs = subscriptions(client)
    assert subs["refused"] == 10 and subs["applied"] == 1


def test_a_connections_topics_go_with_it_and_a_new_connection_has_the_whole_bound(
        spawn_actor, client, runtime_dir):
    spawn_actor()
    client.call("fake", "sys.ping")
    ctx = zmq.Context()
    try:
        for round_ in range(2):
            s = ctx.socket(zmq.XSUB)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoints.pub(runtime_dir, "fake"))
            topics = [f"{round_}.{i}" for i in range(limits.MAX_SUBSCRIPTIONS)]
            for topic in topics:
                s.send(b"\x01" + topic.encode())
            got = welcomes_until(s, topics[-1])
            assert len(got) == limits.MAX_SUBSCRIPTIONS
            assert subscriptions(client)["applied"] == limits.MAX_SUBSCRIPTIONS
            s.close(0)
            wait_for(lambda: (s := subscriptions(client))["connections"] == 0
                     and s["applied"] == 0, "the connection's topics gone with it")
    finally:
        ctx.term()
    assert subscriptions(client)["refused"] == 0


def test_a_subscriber_waiting_for_the_actor_to_bind_gets_its_welcome(spawn_actor, runtime_dir):
    """A subscriber that connects as soon as the actor binds (retrying every millisecond
    before: an editor started beside the tree) is served, whether or not the connection's
    event reached the monitor: such a subscription was once refused as from a connection
    gone, and the subscriber waited for ever."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    try:
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 1)
        s.setsockopt(zmq.SUBSCRIBE, b"early")
        s.connect(endpoints.pub(runtime_dir, "fake"))
        spawn_actor()
        assert [m.topic for m in welcomes_until(s, "early")][-1] == "early"
    finally:
        s.close(0)
        ctx.term()
