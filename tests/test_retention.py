"""A publisher's retention on a real PUB socket: what it holds is what it counts, and what it
replays is what went out."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
import zmq

from moorage.actors.runtime.streams import (
    MAX_RELEASED,
    REPLAY_PAGE_BYTES,
    Publisher,
    pack_replay,
)
from moorage.protocol.envelope import decode_stream, unpackb

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
    assert "term.out.s1" not in p.topics and p.released["term.out.s1"] == 5
    r = p.replay("term.out.s1", 1)
    assert (r["messages"], r["lost"], r["last_seq"], r["first_seq"]) == ([], [1, 5], 5, 6)
    assert p.replay("term.out.s1", 6)["lost"] is None  # (nothing missed after the end)
    assert p.publish("term.out.s1", {"offset": 5}) == 6  # its seq goes on
    assert len(p.replay("term.out.s2", 1)["messages"]) == 1  # another topic untouched


def test_ended_topics_cost_a_seq_each_and_only_the_newest_are_remembered(pub_socket):
    """A terminal that made and closed thousands of sessions: its live topics (welcome
    scans, sys.info) are the open ones; an ended one's seq is kept for the newest
    MAX_RELEASED, and an older one answers as never published."""
    p = Publisher(pub_socket, "e1")
    n = MAX_RELEASED + 10
    for i in range(n):
        p.publish(f"term.out.s{i}", {"offset": 0})
        p.release(f"term.out.s{i}")
    p.publish("term.out.live", {"offset": 0})
    assert list(p.topics) == ["term.out.live"] and len(p.released) == MAX_RELEASED
    assert p.replay(f"term.out.s{n - 1}", 1)["lost"] == [1, 1]
    assert p.replay("term.out.s0", 1)["last_seq"] == 0  # (forgotten)


def test_a_replay_page_is_bounded_in_bytes_and_the_pages_give_every_message_in_order(pub_socket):
    p = Publisher(pub_socket, "e1")
    chunk = 100 * 1024
    for i in range(40):  # 4 MB retained: a page of all of it would hold the loop for its copies
        p.publish("term.out.s1", {"offset": i * chunk}, [bytes([i]) * chunk])
    got, seq, pages = [], 1, 0
    while True:
        r = p.replay("term.out.s1", seq)
        pages += 1
        assert sum(m.size for m in r["messages"]) <= REPLAY_PAGE_BYTES
        got += r["messages"]
        if not r["more"]:
            break
        seq = r["messages"][-1].seq + 1
    assert pages >= 4
    assert [(m.seq, m.body["offset"], m.attachments[0][:1]) for m in got] == [
        (i + 1, i * chunk, bytes([i])) for i in range(40)]
    # one message bigger than a page still goes, alone
    p.publish("term.out.s2", {"offset": 0}, [b"y" * (REPLAY_PAGE_BYTES + 1)])
    p.publish("term.out.s2", {"offset": 1}, [b"z"])
    r = p.replay("term.out.s2", 1)
    assert [m.seq for m in r["messages"]] == [1] and r["more"]


def test_the_replay_answer_carries_each_body_as_it_went_out_and_the_attachments_in_order(
        pub_socket):
    p = Publisher(pub_socket, "e1")
    bodies = [{"i": i, "nested": [1, "a", None, {"k": b"\x00", "f": 1.5}], "t": True}
              for i in range(5)]
    for i, body in enumerate(bodies):
        p.publish("t", body, [b"a" * i, b"b" * i])
    packed, atts = pack_replay(p.replay("t", 2, 3))
    assert unpackb(packed.data) == {
        "epoch": "e1", "first_seq": 1, "last_seq": 5, "lost": None, "more": True,
        "messages": [[seq, bodies[seq - 1], 2] for seq in (2, 3, 4)]}
    assert atts == [x * (seq - 1) for seq in (2, 3, 4) for x in (b"a", b"b")]
    empty, none = pack_replay(p.replay("nothing", 1))
    assert unpackb(empty.data) == {"epoch": "e1", "first_seq": 1, "last_seq": 0,
                                   "messages": [], "lost": None, "more": False} and none == []


def test_a_welcome_round_names_the_ended_topics_under_its_prefix(pub_socket):
    """A prefix subscriber that reconnected learns, topic by topic, what it missed: a
    session's output that ended (released) meanwhile included, or its loss stays silent."""
    sub = pub_socket.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect("inproc://retention")
    try:
        p = Publisher(pub_socket, "e1")
        for i in range(5):
            p.publish("term.out.A", {"offset": i})
        p.publish("term.out.B", {"offset": 0})
        p.release("term.out.A")
        while sub.poll(0):  # (the messages themselves)
            sub.recv_multipart()
        p.welcome("term.out.")
        got = []
        while sub.poll(1000):
            m = decode_stream(sub.recv_multipart())
            got.append((m.topic, m.seq, m.welcome))
            if m.topic == "term.out.":
                break
    finally:
        sub.close(0)
    assert got == [("term.out.A", 5, True), ("term.out.B", 1, True), ("term.out.", 0, True)]
