"""Hostile or careless local input costs the actor nothing it cannot afford: bounded decoding,
bounded work per loop turn, bounded subscriptions, and no forged metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import psutil
import pytest
import zmq

from moorage.protocol import endpoints, limits
from moorage.protocol.envelope import decode_reply, encode_request, packb
from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def empty_arrays(n: int) -> bytes:
    """An array32 of `n` empty arrays: one byte each, a Python list each when decoded."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


def dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 30_000)
    s.connect(endpoint)
    return s


def hostile_call(sock: zmq.Socket, rid: int, body: bytes) -> dict:
    frames = encode_request(rid, "abuser-1", "sys.ping", None)
    frames[2] = body
    sock.send_multipart(frames)
    reply = decode_reply(sock.recv_multipart())
    assert reply.id == rid and not reply.ok
    return reply.body


def test_a_body_of_a_million_empty_arrays_is_refused_unread_and_the_actor_serves_on(
        spawn_actor, client, runtime_dir):
    a = spawn_actor()
    pid = client.call("fake", "sys.ping") and a.pid
    ctx = zmq.Context()
    try:
        sock = dealer(ctx, endpoints.rpc(runtime_dir, "fake"))
        for i, mib in enumerate((0.5, 1, 4, 15)):
            err = hostile_call(sock, i + 1, empty_arrays(int(mib * (1 << 20))))
            assert err["name"] == "bad_request" and "max_array_len" in err["message"]
        # as many values as a body may hold are decoded (and then refused by the op's argument
        # check, bad_args); one more is refused undecoded (bad_request)
        err = hostile_call(sock, 9, packb([[]] * ((limits.MAX_BODY_VALUES - 1) // 2)))
        assert err["name"] == "bad_args"
        err = hostile_call(sock, 10, packb([[]] * limits.MAX_BODY_VALUES))
        assert err["name"] == "bad_request" and "values" in err["message"]
    finally:
        ctx.destroy(linger=0)
    assert client.call("fake", "sys.ping") and a.pid == pid and a.proc.is_alive()
    assert client.call("fake", "sys.info")["undecodable"] == 5


def test_a_flood_of_costly_requests_from_one_peer_does_not_hold_another_peers_ping(
        spawn_actor, client, runtime_dir):
    spawn_actor()
    client.call("fake", "sys.ping")
    ctx = zmq.Context()
    try:
        flooder = dealer(ctx, endpoints.rpc(runtime_dir, "fake"))
        # The first request holds the loop while the flood queues behind it; the actor then
        # takes the whole flood in one read. A ping sent once the flood has started being
        # served must not wait for all of it.
        flooder.send_multipart(encode_request(1, "flood-1", "fake.burn", {"ms": 300}))
        flood = 400
        for i in range(flood):
            flooder.send_multipart(encode_request(2 + i, "flood-1", "fake.burn", {"ms": 5}))
        got = 0
        while got < 2:  # the 300 ms one, and the first of the flood
            decode_reply(flooder.recv_multipart())
            got += 1
        assert client.call("fake", "sys.ping", timeout=30)
        while flooder.poll(0):
            decode_reply(flooder.recv_multipart())
            got += 1
        assert got < flood / 2, f"the ping waited for {got} of {flood + 1} flood replies"
        while got < flood + 1:
            decode_reply(flooder.recv_multipart())
            got += 1
    finally:
        ctx.destroy(linger=0)


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_subscriptions_are_bounded_in_length_and_number_and_cost_no_memory(
        spawn_actor, client, runtime_dir):
    a = spawn_actor()
    client.call("fake", "sys.ping")
    before = rss(a.pid)
    pub = endpoints.pub(runtime_dir, "fake")
    # Ten subscribers with 1 MB topics, from another process (its own memory is its own).
    script = textwrap.dedent(f"""
        import sys, zmq
        ctx = zmq.Context()
        subs = []
        for i in range(10):
            s = ctx.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.connect({pub!r})
            s.setsockopt(zmq.SUBSCRIBE, bytes([65 + i]) * (1 << 20))
            subs.append(s)
        wide = ctx.socket(zmq.SUB)
        wide.setsockopt(zmq.LINGER, 0)
        wide.connect({pub!r})
        for i in range({limits.MAX_SUBSCRIPTIONS} + 44):
            wide.setsockopt(zmq.SUBSCRIBE, f"t.{{i}}".encode())
        print("subscribed", flush=True)
        sys.stdin.read()
        """)
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline().strip() == "subscribed"
            subs = wait_for(lambda: (s := client.call("fake", "sys.info")["subscriptions"])
                            ["refused"] == 44 and s, "the subscriptions past the limit refused")
            assert subs["applied"] == limits.MAX_SUBSCRIPTIONS
            assert rss(a.pid) - before < 10 << 20
        finally:
            proc.stdin.close()
            proc.wait(30)
    wait_for(lambda: client.call("fake", "sys.info")["subscriptions"]["connections"] == 0,
             "the subscribers' connections gone")
    assert rss(a.pid) - before < 10 << 20 and a.proc.is_alive()


def test_a_topic_of_the_largest_length_is_applied_and_a_longer_one_is_refused_by_the_client(
        spawn_actor, client, runtime_dir):
    """256 bytes is a topic's limit as the document says: a raw SUB's subscription of it is
    applied (over ipc libzmq counts a SUBSCRIBE command's name against the socket's limit);
    the client refuses a longer one itself, before any socket could lose its topics."""
    spawn_actor()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoints.pub(runtime_dir, "fake"))
    sub.setsockopt(zmq.SUBSCRIBE, ("é" * 128).encode())  # 256 bytes
    try:
        wait_for(lambda: client.call("fake", "sys.info")["subscriptions"]["applied"] == 1,
                 "the 256-byte subscription applied")
    finally:
        sub.close(0)
        ctx.term()
    for topic in ("x" * (limits.MAX_TOPIC_LEN + 1), "é" * 129):
        with pytest.raises(MoorageError) as e:
            client.subscribe("fake", ["ok", topic])
        assert e.value.name == "bad_args" and "at most 256" in str(e.value)
    assert client.call("fake", "sys.info")["subscriptions"]["refused"] == 0
