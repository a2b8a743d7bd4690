"""A subscription whose reader stops holds a bounded queue in its own process (the clients'
`STREAM_HWM`, PROTOCOL.md section 2), and then loses messages, as a gap it repairs by
replay or reports: it took the whole stream in (RCVHWM 100,000: a gigabyte of a busy
terminal's output held in an editor that stopped reading, and nothing said). A real actor,
a real client."""

from __future__ import annotations

from moorage.protocol.client import Loss
from moorage.protocol.envelope import StreamMessage

PUB_HWM = 1000  # the actor's per-subscriber queue
N = 30_000  # far more than both queues and the sockets' buffers hold
READ_BETWEEN = 500  # messages read before one more is published (it lands in the room made)


def test_a_subscription_that_stops_reading_holds_a_bounded_queue_then_has_a_gap(
        spawn_actor, client):
    spawn_actor(pub_hwm=PUB_HWM, retention_messages=100)
    sub = client.subscribe("fake", ["t"], from_seq=1)  # (from 1: none missed before it)
    last = client.call("fake", "fake.publish", {"topic": "t", "n": N, "size": 100},
                       timeout=60)["last_seq"]
    # What the queues dropped at the stream's end shows only when a later message comes: one
    # is published after every READ_BETWEEN read, until one of them is seen.
    seen: set[int] = set()
    lost = read = 0
    while last not in seen:
        m = sub.next(timeout=30)
        assert m is not None, (len(seen), lost, last)
        if isinstance(m, Loss):
            lost += m.last - m.first + 1
        elif isinstance(m, StreamMessage):
            seen.add(m.seq)
            read += 1
        if read >= READ_BETWEEN:
            last = client.call("fake", "fake.publish", {"topic": "t", "n": 1})["last_seq"]
            read = 0
    assert lost > 0 and sub.tracker.replays_asked >= 1
    assert len(seen) + lost == last  # each message delivered or said lost, once
    sub.close()
