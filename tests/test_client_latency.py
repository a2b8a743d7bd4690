"""The client's own view of latency: recorded once per call, reported per (actor, op), pushed
to the metrics actor as `client.<name>`, and shown by `moorage metrics` beside service time.

The pure parts (the book, the push bodies, bounded recorders) are fed values; the rest runs
real actors, a real metrics actor and the real CLI, and waits for a reply showing the fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from moorage.actors.metrics.push import decode_push
from moorage.protocol import limits
from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.client import _latency as latency
from moorage.protocol.client._latency import (
    IDLE_PUSH_S,
    LatencyBook,
    LatencyPusher,
    check_metrics_name,
    encode_pending,
    pushed_op,
)
from moorage.protocol.envelope import TAG, packb
from moorage.protocol.errors import MoorageError
from moorage.protocol.histogram import (
    MAX_DISTINCT,
    Recorder,
    equivalent_counts,
    new_histogram,
    summary,
)
from moorage.protocol.limits import MAX_OP_LEN
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

METRICS = "moorage.actors.metrics.actor:MetricsActor"
FAKE = "tests.fakes:FakeActor"

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
"""



def client_rows(c: Client, name: str) -> dict[str, dict[str, Any]]:
    q = c.call("metrics", "metrics.query", {"actor": f"client.{name}"}, idempotent=True)
    return {r["op"]: r for r in q["ops"]}


# --- the book and the push bodies ------------------------------------------------------------


def test_the_book_keeps_each_actor_and_op_apart_with_outcomes():
    book = LatencyBook()
    for v in (100, 200, 300):
        book.record("watcher", "fs.read", v, ok=True)
    book.record("watcher", "fs.read", 5000, ok=False)
    book.record("parser", "sys.ping", 50, ok=True)
    rows = {(r["actor"], r["op"]): r for r in book.report()}
    read = rows[("watcher", "fs.read")]
    assert (read["ok"], read["error"], read["count"]) == (3, 1, 4)
    assert read["p50"] == 200 and read["max"] == pytest.approx(5000, rel=0.01)
    assert rows[("parser", "sys.ping")]["count"] == 1
    assert book.take() == {}  # not pushing: nothing pending


def test_pending_calls_leave_once_and_an_unsent_push_comes_back_whole():
    book = LatencyBook(pushing=True)
    for i in range(50):
        book.record("alpha", "fake.work", 100 + i, ok=i % 10 != 0)
    bodies = list(encode_pending(book.take()))
    assert len(bodies) == 1 and list(bodies[0]) == ["alpha/fake.work"]
    assert (bodies[0]["alpha/fake.work"]["ok"], bodies[0]["alpha/fake.work"]["error"]) == (45, 5)
    assert book.take() == {}
    book.put_back(bodies[0])  # as when the metrics actor's queue is full
    book.record("alpha", "fake.work", 100, ok=True)
    again = list(encode_pending(book.take()))
    assert (again[0]["alpha/fake.work"]["ok"], again[0]["alpha/fake.work"]["error"]) == (46, 5)
    assert book.report()[0]["count"] == 51  # the lifetime view is not drained


def test_push_bodies_pass_the_metrics_actors_own_decoder():
    book = LatencyBook(pushing=True)
    book.record("alpha", "fake.work", 120, ok=True)
    book.record("alpha", "fake.fail", 90, ok=False)
    body = next(encode_pending(book.take()))
    push = decode_push([TAG, packb({"actor": "client.editor", "pid": 1, "ep": "s"}),
                        packb(body)])
    got = {s.op: (s.ok, s.error) for s in push.ops}
    assert got == {"alpha/fake.work": (1, 0), "alpha/fake.fail": (0, 1)}


def _accepted(bodies: list[dict[str, dict]]) -> dict[str, tuple[int, int]]:
    """Every body through the metrics actor's own decoder, which refuses a push whole."""
    got: dict[str, tuple[int, int]] = {}
    for body in bodies:
        push = decode_push([TAG, packb({"actor": "client.editor", "pid": 1, "ep": "s"}),
                            packb(body)])
        for s in push.ops:
            assert s.op not in got
            got[s.op] = (s.ok, s.error)
    return got


def test_many_ops_are_split_into_pushes_the_metrics_actor_accepts():
    book = LatencyBook(pushing=True)
    n = limits.MAX_OPS_PER_PUSH + 44
    for i in range(n):
        book.record("alpha", f"op.{i}", 10, ok=i % 3 != 0)
    got = _accepted(list(encode_pending(book.take())))
    assert got == {f"alpha/op.{i}": (int(i % 3 != 0), int(i % 3 == 0)) for i in range(n)}


def test_pushes_are_split_by_their_histograms_bytes_too(monkeypatch):
    """Wide histograms fill a push's byte bound before its op bound: the bound is lowered
    here so a few dozen ops reach it."""
    monkeypatch.setattr(limits, "MAX_PUSH_HIST_BYTES", 16 * 1024)
    rng = random.Random(5)
    book = LatencyBook(pushing=True)
    for i in range(60):
        for _ in range(400):
            book.record("alpha", f"op.{i}", int(1.02 ** rng.uniform(0, 1000)), ok=True)
    bodies = list(encode_pending(book.take()))
    assert len(bodies) > 1
    assert all(sum(len(d["hist"]) for d in b.values()) <= 16 * 1024 for b in bodies)
    assert _accepted(bodies) == {f"alpha/op.{i}": (400, 0) for i in range(60)}


def test_pushes_are_split_by_their_histograms_non_zero_counts_too():
    """Latencies spread wide: 40 ops of 1,500 distinct HDR buckets each are 60,000 non-zero
    counts, past what the metrics actor takes in one push (it refuses such a push whole)."""
    book = LatencyBook(pushing=True)
    for i in range(40):
        for k in range(1_500):
            book.record("alpha", f"op.{i}", (128 + k % 128) << (k // 128), ok=True)
    bodies = list(encode_pending(book.take()))
    assert len(bodies) > 1
    got = _accepted(bodies)
    assert got == {f"alpha/op.{i}": (1_500, 0) for i in range(40)}


def test_long_names_are_cut_to_the_op_limit_and_merged_when_they_collide():
    long_op = "x" * MAX_OP_LEN
    assert len(pushed_op("alpha", long_op)) == MAX_OP_LEN
    book = LatencyBook(pushing=True)
    book.record("alpha", long_op + "a", 10, ok=True)
    book.record("alpha", long_op + "b", 10, ok=False)
    (body,) = encode_pending(book.take())
    (entry,) = body.values()
    assert (entry["ok"], entry["error"]) == (1, 1)


@pytest.mark.parametrize("name", ["", "x" * 101, "tab\there", 7, None])
def test_a_bad_metrics_name_is_refused_when_the_client_is_made(name, runtime_dir):
    with pytest.raises(ValueError):
        check_metrics_name(name)
    if name is not None:
        with pytest.raises(ValueError):
            Client(runtime_dir, metrics_name=name)


def test_a_recorder_holds_hdr_buckets_so_it_stays_small_and_its_histogram_exact():
    rng = random.Random(7)
    rec, hdr = Recorder(), new_histogram()
    for _ in range(200_000):
        v = int(rng.lognormvariate(8, 1.5))  # spread over tens of thousands of µs values
        rec.record(v)
        hdr.record_value(max(1, v))
    assert len(rec.counts) <= MAX_DISTINCT
    assert equivalent_counts(rec.histogram()) == equivalent_counts(hdr)  # bucket for bucket
    assert summary(rec.histogram()) == summary(hdr)


def test_a_recorder_given_more_distinct_values_folds_them_and_keeps_its_percentiles():
    spread = Counter({v: 1 + v % 3 for v in range(1, 3 * MAX_DISTINCT)})  # (as merged counts)
    bounded, exact = Recorder(), Recorder()
    bounded.counts, exact.counts = Counter(spread), Counter(spread)
    bounded.bound()
    assert len(bounded.counts) < len(exact.counts)
    assert summary(bounded.histogram()) == summary(exact.histogram())


# --- a real client against real actors -------------------------------------------------------


@contextlib.contextmanager
def pusher_to_pull(tmp_path: Any, interval: float
                   ) -> Iterator[tuple[LatencyBook, LatencyPusher, zmq.Socket]]:
    """A pushing book whose pusher sends to a PULL socket of the test's; all closed after."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/pull.sock"
    pull.bind(endpoint)
    book = LatencyBook(pushing=True)
    pusher = LatencyPusher(book, ctx, lambda _s: endpoint, "inline", "sid-1", interval)
    try:
        yield book, pusher, pull
    finally:
        pusher.close()
        pull.close()
        ctx.term()


def test_a_call_that_ends_once_a_push_is_due_makes_it_before_it_returns(tmp_path):
    with pusher_to_pull(tmp_path, 60.0) as (book, pusher, pull):  # (its thread: a minute on)
        book.record("alpha", "fake.work", 120, True)
        assert pusher.sent == 0  # not due
        book.due_at = time.monotonic()  # due now, as it is a minute on
        book.record("alpha", "fake.work", 130, True)
        assert pusher.sent == 1  # sent by that record, on its own thread
        assert book.due_at > time.monotonic() + 59  # and the next one a minute on
        assert pull.poll(10_000)
        push = decode_push(pull.recv_multipart())  # what the metrics actor takes
        assert push.actor == "client.inline"
        assert [(s.op, s.ok, s.counts.total()) for s in push.ops] == [("alpha/fake.work", 2, 2)]
        book.record("alpha", "fake.work", 140, True)
        assert pusher.sent == 1


def test_a_push_that_raises_in_a_call_stops_the_pushes_and_the_call_goes_on(
        tmp_path, monkeypatch):
    with pusher_to_pull(tmp_path, 60.0) as (book, pusher, _pull):
        def broken(taken: Any) -> Any:  # (a fault of the encoder's, injected)
            raise ValueError("no push today")

        monkeypatch.setattr(latency, "encode_pending", broken)
        try:
            book.due_at = time.monotonic()
            book.record("alpha", "fake.work", 120, True)  # returns: the fault is the push's
            assert isinstance(pusher.failure, ValueError)
            assert book.due_at == math.inf  # no call tries again
            book.record("alpha", "fake.work", 130, True)
            assert pusher.sent == 0
        finally:
            monkeypatch.undo()  # (before the pusher's last push, as it closes)


def test_what_a_client_that_stopped_calling_recorded_is_pushed_by_the_thread(tmp_path):
    with pusher_to_pull(tmp_path, 0.01) as (book, pusher, pull):
        assert pusher.interval < IDLE_PUSH_S
        book.record("alpha", "fake.work", 120, True)  # (due 10 ms later: no call ends then)
        assert pull.poll(30_000), "the thread never pushed"
        push = decode_push(pull.recv_multipart())
        assert [(s.op, s.ok) for s in push.ops] == [("alpha/fake.work", 1)]
        # (counted once the thread's push is done: its message may arrive before that)
        wait_for(lambda: pusher.sent == 1, "the thread's push counted")


def test_calls_are_recorded_once_each_with_retries_and_errors_counted(spawn_actor, client):
    spawn_actor(FAKE, "alpha")
    for _ in range(20):
        client.call("alpha", "fake.work")
    for _ in range(3):
        with pytest.raises(MoorageError):
            client.call("alpha", "fake.fail")
    client.pipeline("alpha", [("sys.ping", None)] * 30)
    rows = {(r["actor"], r["op"]): r for r in client.latency_report()}
    assert rows[("alpha", "fake.work")]["ok"] == 20
    assert (rows[("alpha", "fake.fail")]["ok"], rows[("alpha", "fake.fail")]["error"]) == (0, 3)
    assert rows[("alpha", "sys.ping")]["count"] == 30
    assert client.push_latency() == 0  # pushing is opt-in


def test_a_pushing_client_shows_up_in_metrics_beside_the_service(spawn_actor, runtime_dir):
    spawn_actor(FAKE, "alpha")
    spawn_actor(METRICS, "metrics")
    with Client(runtime_dir, timeout=10.0, metrics_name="editor",
                metrics_interval=0.1) as c:
        for _ in range(40):
            c.call("alpha", "fake.work")
        # No explicit push: a call past the push's time sends it (or the pusher's thread,
        # within IDLE_PUSH_S).
        rows = wait_for(lambda: (r := client_rows(c, "editor")).get("alpha/fake.work")
                        and r["alpha/fake.work"]["lifetime"]["count"] == 40 and r,
                        "the client's pushed row")
        own = {(r["actor"], r["op"]): r for r in c.latency_report()}
        assert rows["alpha/fake.work"]["lifetime"]["p50"] == own[("alpha", "fake.work")]["p50"]
        assert c.core.pusher is not None and c.core.pusher.deferred == 0


def test_pushes_made_while_metrics_is_down_arrive_when_it_starts(spawn_actor, runtime_dir):
    spawn_actor(FAKE, "alpha")
    with Client(runtime_dir, timeout=10.0, metrics_name="late", metrics_interval=60) as c:
        for _ in range(5):
            c.call("alpha", "fake.work")
        with pytest.raises(MoorageError):
            c.call("alpha", "fake.fail")
        assert c.push_latency() == 1  # queued on the socket: nobody listens yet
        spawn_actor(METRICS, "metrics")
        rows = wait_for(lambda: client_rows(c, "late"), "the queued push")
        assert rows["alpha/fake.work"]["lifetime"]["ok"] == 5
        assert rows["alpha/fake.fail"]["lifetime"]["error"] == 1


def test_the_async_client_records_and_pushes_through_the_same_core(spawn_actor, runtime_dir):
    spawn_actor(FAKE, "alpha")
    spawn_actor(METRICS, "metrics")

    async def main() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with AsyncClient(runtime_dir, timeout=10.0, metrics_name="async",
                               metrics_interval=60) as ac:
            await asyncio.gather(*(ac.call("alpha", "fake.work") for _ in range(25)))
            assert ac.push_latency() == 1
            deadline = time.monotonic() + 20
            while True:  # until the metrics actor answers with the pushed row
                q = await ac.call("metrics", "metrics.query", {"actor": "client.async"},
                                  idempotent=True)
                if q["ops"] or time.monotonic() > deadline:
                    return ac.latency_report(), {r["op"]: r for r in q["ops"]}

    report, rows = asyncio.run(main())
    assert report[0]["count"] == 25
    assert rows["alpha/fake.work"]["lifetime"]["count"] == 25


def test_moorage_metrics_shows_service_and_client_time_side_by_side(make_tree):
    tree = make_tree(TREE).start()
    with Client(tree.runtime_dir, timeout=10.0, metrics_name="editor") as c:
        for _ in range(30):
            c.call("alpha", "fake.work")
        c.push_latency()
        wait_for(lambda: client_rows(c, "editor"), "the client's row")
    # The actor pushes its service time about once a second.
    wait_for(lambda: tree.call("metrics", "metrics.query",
                               {"actor": "alpha", "op": "fake.work"})["ops"], "alpha's row")
    out = tree.cli("metrics", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    (row,) = [r for r in doc["services"] if (r["actor"], r["op"]) == ("alpha", "fake.work")]
    assert row["lifetime"]["count"] == 30 and row["lifetime"]["p99"] > 0
    editor = row["clients"]["editor"]["lifetime"]
    assert editor["count"] == 30 and editor["p50"] >= row["lifetime"]["p50"]
    # The client's own metrics.query calls are pushed too, and so is the sys.info by which it
    # learnt alpha's idempotent ops before its first fake.work.
    rows = {(c["client"], c["target_actor"], c["target_op"]) for c in doc["clients"]}
    assert rows - {("editor", "metrics", "sys.info")} == {
        ("editor", "alpha", "sys.info"), ("editor", "alpha", "fake.work"),
        ("editor", "metrics", "metrics.query")}

    table = tree.cli("metrics", "fake.work")
    assert table.returncode == 0, table.stderr
    head, *lines = table.stdout.splitlines()
    assert "CLIENT_P50us" in head and "CLIENT_P99us" in head
    (line,) = [ln for ln in lines if ln.split()[:2] == ["alpha", "fake.work"]]
    assert line.split()[-3:] == ["editor", str(editor["p50"]), str(editor["p99"])]
