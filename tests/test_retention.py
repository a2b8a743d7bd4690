"""A publisher's retention on a real PUB socket: what it holds is what it counts, and what it
replays is what went out."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
import zmq

from moorage.actors.runtime.streams import Publisher

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pub_socket() -> Iterator[zmq.Socket]:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    s.bind("inproc://retention")
    yield s
    s.close(0)
    ctx.term()


def events(first: int, n: int) -> dict:
    """A body shaped like the watcher's: many small maps (Python objects cost several times
    their packed size)."""
    return {"events": [{"kind": "created", "path": f"/w/burst/f{i:06d}.txt", "type": "file",
                        "origin": "external", "watches": [1]} for i in range(first, first + n)]}


def test_a_body_changed_after_it_was_published_is_replayed_as_it_went_out(pub_socket):
    p = Publisher(pub_socket, "e1")
    body = {"events": [{"path": "/w/a", "kind": "created"}]}
    p.publish("fs.event", body)
    body["events"].append({"path": "/w/b", "kind": "created"})
    body["events"][0]["kind"] = "deleted"
    got = p.replay("fs.event", 1)["messages"]
    assert [(m.seq, m.body) for m in got] == [(1, {"events": [{"path": "/w/a",
                                                                 "kind": "created"}]})]


def test_retention_holds_no_more_memory_than_its_byte_bound(pub_socket):
    bound = 1 << 20
    p = Publisher(pub_socket, "e1", max_messages=1_000_000, max_bytes=bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(200):  # some 12 MB packed, twelve times the bound
            p.publish("fs.event", events(k * 1000, 1000))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    t = p.topics["fs.event"]
    assert t.bytes <= bound and t.first_seq > 1  # the bound was reached and kept
    # The retained messages plus the bookkeeping: within a quarter of the bound over it.
    assert held <= bound * 1.25, f"retention holds {held:,} bytes for a bound of {bound:,}"
    replayed = p.replay("fs.event", t.first_seq, 1)["messages"][0]
    assert replayed.body == events((t.first_seq - 1) * 1000, 1000)


def test_a_released_topic_holds_nothing_and_its_replay_says_what_is_lost(pub_socket):
    p = Publisher(pub_socket, "e1")
    for i in range(5):
        p.publish("term.out.s1", {"offset": i}, [b"x" * 1000])
    p.publish("term.out.s2", {"offset": 0})
    p.release("term.out.s1")
    assert p.topics["term.out.s1"].bytes == 0 and not p.topics["term.out.s1"].kept
    r = p.replay("term.out.s1", 1)
    assert (r["messages"], r["lost"], r["last_seq"]) == ([], [1, 5], 5)
    assert p.publish("term.out.s1", {"offset": 5}) == 6  # its seq goes on
    assert len(p.replay("term.out.s2", 1)["messages"]) == 1  # another topic untouched
