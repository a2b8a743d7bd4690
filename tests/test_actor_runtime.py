"""The actor runtime on a real actor process and real sockets."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import psutil
import pytest
import zmq

from moorage.actors.runtime.actor import MAX_ROUTES
from moorage.protocol import endpoints
from moorage.protocol.client import AsyncClient, Client, Loss, Reset
from moorage.protocol.envelope import TAG, StreamMessage, decode_reply, encode_request, packb
from moorage.protocol.errors import MoorageError
from tests.fakes import FakeActor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake(spawn_actor, client):
    a = spawn_actor()
    client.hello("fake")  # waits until it serves
    return a


@pytest.fixture
def raw(runtime_dir):
    """A bare DEALER for frames the client would never send."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoints.rpc(runtime_dir, "fake"))
    yield s
    s.close(0)
    ctx.term()


def recv(sock: zmq.Socket, timeout_ms: int = 10_000):
    assert sock.poll(timeout_ms), "no reply"
    return decode_reply(sock.recv_multipart())


def test_hello_and_info_describe_the_actor(fake, client):
    hello = client.hello("fake")
    assert hello["pid"] == fake.pid and hello["proto"] == 1
    info = client.call("fake", "sys.info")
    assert info["ep"] == hello["ep"]
    assert "fake.work" in info["ops"] and info["ops"]["fake.count"]["idempotent"]
    assert info["ops"]["fake.work"]["args"]["n"] == {"type": "int", "required": False}


def test_unknown_ops_and_bad_arguments_get_classified_errors(fake, client):
    with pytest.raises(MoorageError) as e:
        client.call("fake", "no.such")
    assert e.value.name == "unknown_op" and e.value.code == 101
    with pytest.raises(MoorageError) as e:
        client.call("fake", "fake.work", {"n": "three"})
    assert e.value.name == "bad_args" and "'n' must be int" in str(e.value)
    with pytest.raises(MoorageError) as e:
        client.call("fake", "fake.work", {"bogus": 1})
    assert e.value.name == "bad_args"
    with pytest.raises(MoorageError) as e:
        client.call("fake", "fake.work", [1, 2])
    assert e.value.name == "bad_args"


def test_a_handler_that_raises_becomes_an_internal_error_and_the_actor_serves_on(fake, client):
    with pytest.raises(MoorageError) as e:
        client.call("fake", "fake.fail")
    assert e.value.name == "internal" and "ValueError" in str(e.value)
    assert client.call("fake", "fake.work")["done"] == 1


def test_an_expired_deadline_is_answered_without_running(fake, client, raw):
    raw.send_multipart(encode_request(7, "s1", "fake.effect", None,
                                      deadline_ms=int(time.time() * 1000) - 1))
    r = recv(raw)
    assert r.id == 7 and not r.ok and r.body["name"] == "deadline_expired"
    assert client.call("fake", "fake.count")["effects"] == 0


def test_a_deadline_more_than_a_day_ahead_is_refused_not_run(fake, client, raw):
    """Kept in the reply cache until then, it would make every pinned resend after its
    eviction `outcome_unknown`; its guard timer would overflow the loop's wait."""
    raw.send_multipart(encode_request(8, "s1", "fake.effect", None,
                                      deadline_ms=int(time.time() * 1000) + 30 * 86400_000))
    r = recv(raw)
    assert r.id == 8 and not r.ok and r.body["name"] == "bad_request"
    assert client.call("fake", "fake.count")["effects"] == 0


def test_a_stopping_actor_s_last_replies_leave_before_its_socket_closes(fake, raw):
    """sys.stop's own answer, and `outcome_unknown` for a call under way, are sent as the
    actor stops: its request socket closed at once dropped what had not left yet."""
    raw.send_multipart(encode_request(1, "s1", "fake.held"))
    raw.send_multipart(encode_request(2, "s1", "sys.stop"))
    got = {r.id: r for r in (recv(raw), recv(raw))}
    assert got[2].ok and got[2].body == {"stopping": True}
    assert not got[1].ok and got[1].body["name"] == "outcome_unknown"
    fake.proc.join(10)
    assert fake.proc.exitcode == 0


def test_an_idempotent_call_under_way_when_its_actor_stops_is_answered_stopping(fake, raw):
    """Safe to run again whatever ran: `stopping`, which a client sends again to the
    successor (`outcome_unknown`, as for a call with effects, ended a read for good)."""
    raw.send_multipart(encode_request(1, "s1", "fake.held_read"))
    raw.send_multipart(encode_request(2, "s1", "sys.stop"))
    got = {r.id: r for r in (recv(raw), recv(raw))}
    assert got[2].ok and not got[1].ok and got[1].body["name"] == "stopping", got[1].body
    fake.proc.join(10)
    assert fake.proc.exitcode == 0


def test_a_result_that_cannot_be_encoded_is_answered_internal_and_the_rest_are_served(
        fake, client, raw):
    """msgpack refuses an int of 2^64 with OverflowError: once the reply was taken as made,
    none was sent, and the requests after it in the batch were dropped."""
    for i, args in enumerate([{"exp": 3}, {"exp": 64}, {"exp": 5}, {"exp": 70}, {"exp": 1}]):
        raw.send_multipart(encode_request(i + 1, "s1", "fake.power", args))
    got = {r.id: r for r in (recv(raw) for _ in range(5))}
    assert [got[i].body["v"] for i in (1, 3, 5)] == [8, 32, 2]
    for i in (2, 4):
        assert not got[i].ok and got[i].body["name"] == "internal"
        assert "not sendable" in got[i].body["message"]
    assert client.call("fake", "fake.work")["done"] == 1


def test_an_error_whose_detail_cannot_be_encoded_is_answered_internal(fake, client, raw):
    raw.send_multipart(encode_request(3, "s1", "fake.unsendable_error"))
    r = recv(raw)
    assert r.id == 3 and not r.ok and r.body["name"] == "internal"
    assert "not_found" in r.body["message"]
    assert client.call("fake", "fake.work")["done"] == 1


def test_requests_the_loop_never_read_before_it_stopped_are_answered_stopping(runtime_dir):
    """Requests in the socket when the loop has ended were closed away unanswered; their
    callers waited out their deadlines for calls that never started. An actor in this
    process, its request socket also bound on inproc, where a send is in the socket's queue
    when it returns."""
    actor = FakeActor("fake", runtime_dir, {"push_metrics": False})
    actor.rpc.bind("inproc://never-read")
    dealer = actor.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect("inproc://never-read")
    try:
        for i in range(50):
            dealer.send_multipart(encode_request(i + 1, "s1", "fake.effect"))
        actor.refuse_requests()
        actor.loop.stop()
        actor.answer_remaining()  # (what serve does once its loop has ended, then close)
        replies = []
        while dealer.poll(0):
            replies.append(decode_reply(dealer.recv_multipart()))
    finally:
        dealer.close(0)
        actor.close()
    assert sorted(r.id for r in replies) == list(range(1, 51))
    assert {(r.ok, r.body["name"]) for r in replies} == {(False, "stopping")}
    assert actor.side_effects == 0


def test_copies_of_a_call_under_way_past_a_bound_are_answered_busy_at_once(fake, client, raw):
    """Each resend of the same frames joined the call: 500 of them were 500 entries held
    until it ended. Past MAX_ROUTES copies waiting, a copy is answered `busy` at once: every
    copy still gets one reply."""
    frames = encode_request(5, "s1", "fake.held")
    for _ in range(500):
        raw.send_multipart(frames)
    raw.send_multipart(encode_request(6, "s1", "fake.count"))  # served after all 500
    replies = [recv(raw) for _ in range(500 - MAX_ROUTES + 1)]
    busy, counted = replies[:-1], replies[-1]
    assert {(r.id, r.ok, r.body["name"]) for r in busy} == {(5, False, "busy")}
    assert counted.id == 6 and counted.body["effects"] == 1
    assert counted.body["held_attempts"] == MAX_ROUTES
    assert client.call("fake", "fake.release")["released"] == 1
    results = [recv(raw) for _ in range(MAX_ROUTES)]
    assert {(r.id, r.ok, r.body["effects"]) for r in results} == {(5, True, 1)}
    raw.send_multipart(encode_request(7, "s1", "fake.count"))
    assert recv(raw).id == 7  # and nothing more for 5


def test_a_retried_request_id_is_answered_from_the_cache_not_run_twice(fake, client, raw):
    frames = encode_request(42, "s1", "fake.effect")
    raw.send_multipart(frames)
    first = recv(raw)
    raw.send_multipart(frames)
    second = recv(raw)
    assert first == second and first.body == {"effects": 1}
    assert client.call("fake", "fake.count")["effects"] == 1
    # Another session with the same id is another request.
    raw.send_multipart(encode_request(42, "s2", "fake.effect"))
    assert recv(raw).body == {"effects": 2}


def test_a_resend_pinned_to_another_actor_life_is_refused_outcome_unknown_not_run(
        fake, client, raw):
    ep = client.hello("fake")["ep"]
    raw.send_multipart(encode_request(3, "s1", "fake.effect", epoch="0123456789abcdef"))
    r = recv(raw)
    assert not r.ok and r.body["name"] == "outcome_unknown"
    assert r.body["detail"] == {"old_epoch": "0123456789abcdef", "new_epoch": ep,
                                "request_id": 3}
    assert client.call("fake", "fake.count")["effects"] == 0


def test_a_pinned_resend_is_answered_from_the_cache_or_refused_once_its_reply_was_let_go(
        spawn_actor, client, raw):
    spawn_actor(reply_cache_entries=1)
    ep = client.hello("fake")["ep"]
    soon = int(time.time() * 1000) + 60_000

    def effect(rid: int, deadline: int, epoch: str | None = None):
        raw.send_multipart(encode_request(rid, "s1", "fake.effect", None, deadline,
                                          epoch=epoch))
        return recv(raw)

    assert effect(1, soon).body == {"effects": 1}
    assert effect(1, soon, ep).body == {"effects": 1}  # the cache answers the pinned resend
    assert effect(2, soon).body == {"effects": 2}  # the one entry the cache keeps: 1 goes
    # 1's reply was let go before its deadline: its resend may not run it again
    refused = effect(1, soon, ep)
    assert not refused.ok and refused.body["name"] == "outcome_unknown"
    assert "no longer kept" in refused.body["message"]
    # a pinned request whose deadline is later than any reply let go never ran: it runs
    assert effect(3, soon + 1, ep).body == {"effects": 3}
    assert client.call("fake", "fake.count")["effects"] == 3


def test_a_retry_that_arrives_while_the_first_attempt_runs_joins_it(fake, raw):
    frames = encode_request(9, "s1", "fake.slow", {"ms": 200})
    raw.send_multipart(frames)
    raw.send_multipart(frames)
    a, b = recv(raw), recv(raw)
    assert a == b and a.body == {"slept_ms": 200}


def test_a_full_inbound_queue_answers_busy_and_every_request_gets_one_reply(spawn_actor, client,
                                                                            raw):
    actor = spawn_actor(queue_limit=10)
    client.hello("fake")
    raw.send_multipart(encode_request(1, "s", "fake.slow", {"ms": 1}))
    recv(raw)
    # Stopped, the actor cannot read: the requests pile up and arrive as one batch.
    os.kill(actor.pid, signal.SIGSTOP)
    try:
        for i in range(100, 200):
            raw.send_multipart(encode_request(i, "s", "fake.effect"))
    finally:
        os.kill(actor.pid, signal.SIGCONT)
    replies = {}
    while len(replies) < 100:
        r = recv(raw)
        assert r.id not in replies
        replies[r.id] = r
    busy = [r for r in replies.values() if not r.ok]
    ok = [r for r in replies.values() if r.ok]
    assert busy, "a queue over its limit must refuse"
    assert all(r.body["name"] == "busy" and r.body["retry_after_ms"] > 0 for r in busy)
    assert client.call("fake", "fake.count")["effects"] == len(ok)


def test_ten_thousand_random_frames_get_error_replies_and_the_actor_still_answers(fake, client,
                                                                                raw):
    rng = random.Random(7)
    rss_before = psutil.Process(fake.pid).memory_info().rss
    n = 10_000
    for i in range(n):
        kind = i % 5
        if kind == 0:
            msg = [rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(1, 5))]
        elif kind == 1:
            msg = [TAG, rng.randbytes(rng.randint(0, 40)), rng.randbytes(rng.randint(0, 40))]
        elif kind == 2:
            msg = [TAG, packb({"id": i, "sid": "x", "op": "fake.work"}),
                   b"\xdd\xff\xff\xff\xff"]  # an array claiming 4 billion elements
        elif kind == 3:
            deep = b"\x91" * 2000 + b"\xc0"
            msg = [TAG, packb({"id": i, "sid": "x", "op": "fake.work"}), deep]
        else:
            msg = [TAG, packb({"id": rng.choice([-1, 1.5, "7", 2**60]), "sid": 3,
                               "op": None}), packb(None)]
        raw.send_multipart(msg)
    got = 0
    while got < n:
        r = recv(raw)
        assert not r.ok and r.body["category"] == "network"
        got += 1
    assert client.call("fake", "fake.work")["done"] == 1
    info = client.call("fake", "sys.info")
    assert info["undecodable"] >= n * 0.6
    grown = psutil.Process(fake.pid).memory_info().rss - rss_before
    assert grown < 50 * 1024 * 1024


def test_a_subscriber_gets_every_message_in_order_from_retention(fake, client):
    client.call("fake", "fake.publish", {"topic": "t", "n": 50})
    sub = client.subscribe("fake", ["t"], from_seq=1)
    try:
        seqs = []
        while len(seqs) < 50:
            ev = sub.next(timeout=10)
            assert isinstance(ev, StreamMessage)
            seqs.append(ev.seq)
            assert ev.body == {"i": ev.seq - 1}
        assert seqs == list(range(1, 51))
    finally:
        sub.close()


def test_loss_past_retention_is_reported_not_hidden(spawn_actor, client):
    spawn_actor(retention_messages=10)
    client.hello("fake")
    client.call("fake", "fake.publish", {"topic": "t", "n": 30})
    sub = client.subscribe("fake", ["t"], from_seq=1)
    try:
        first = sub.next(timeout=10)
        assert first == Loss("t", 1, 20, first.epoch)
        seqs = [sub.next(timeout=10).seq for _ in range(10)]
        assert seqs == list(range(21, 31))
    finally:
        sub.close()


def test_gaps_from_a_publisher_dropping_at_its_high_water_mark_are_filled_by_replay(
        spawn_actor, client):
    spawn_actor(pub_hwm=5)
    client.hello("fake")
    sub = client.subscribe("fake", ["big"], from_seq=1)
    try:
        # The subscription is live once a message published after it arrives.
        client.call("fake", "fake.publish", {"topic": "big", "n": 1})
        assert sub.next(timeout=10).seq == 1
        client.call("fake", "fake.publish", {"topic": "big", "n": 2000, "size": 2000})
        seqs = [sub.next(timeout=10).seq for _ in range(2000)]
        assert seqs == list(range(2, 2002))
    finally:
        sub.close()


def test_a_restarted_publisher_shows_up_as_a_reset(spawn_actor, client):
    first = spawn_actor()
    client.hello("fake")
    sub = client.subscribe("fake", ["t"], from_seq=1)
    try:
        client.call("fake", "fake.publish", {"topic": "t", "n": 1})
        assert sub.next(timeout=10).seq == 1
        first.stop()
        spawn_actor()
        # On the new actor's connection first (an idempotent call is sent again if the old
        # one drops under it): fake.publish may not be sent twice, and a drop seen while it
        # is in flight makes it outcome_unknown, which a loaded machine can make happen.
        client.hello("fake")
        client.call("fake", "fake.publish", {"topic": "t", "n": 1})
        ev = sub.next(timeout=10)
        assert isinstance(ev, Reset)
        assert sub.next(timeout=10).seq == 1
    finally:
        sub.close()


def test_the_async_client_runs_many_calls_at_once(fake, runtime_dir):
    async def main() -> list:
        async with AsyncClient(runtime_dir, timeout=10.0) as c:
            await c.hello("fake")
            return await asyncio.gather(*(c.call("fake", "fake.work") for _ in range(200)))

    results = asyncio.run(main())
    assert sorted(r["done"] for r in results) == list(range(1, 201))


def test_the_async_client_raises_classified_errors(fake, runtime_dir):
    async def main() -> MoorageError:
        async with AsyncClient(runtime_dir) as c:
            try:
                await c.call("fake", "fake.work", {"n": "x"})
            except MoorageError as exc:
                return exc
        raise AssertionError("no error")

    assert asyncio.run(main()).name == "bad_args"


def test_calls_to_an_actor_that_does_not_answer_open_its_breaker(runtime_dir):
    with Client(runtime_dir, timeout=0.05, attempt_timeout=0.05, breaker_threshold=3) as c:
        for _ in range(3):
            with pytest.raises(MoorageError) as e:
                c.call("ghost", "sys.ping")
            assert e.value.name == "timeout"
        assert c.breaker_state("ghost") == "open"
        t0 = time.monotonic()
        with pytest.raises(MoorageError) as e:
            c.call("ghost", "sys.ping")
        assert e.value.name == "circuit_open" and e.value.error.fallback_available
        assert time.monotonic() - t0 < 0.05


def test_pipelined_calls_return_results_in_order(fake, client):
    out = client.pipeline("fake", [("fake.work", None)] * 500 + [("no.op", None)])
    assert [r["done"] for r in out[:500]] == list(range(1, 501))
    assert isinstance(out[500], MoorageError) and out[500].name == "unknown_op"
