"""Who counts what a replay reports lost (PROTOCOL.md section 12, "What a replay's `lost`
means, and who counts it inside the tree"), on real actors: a publisher with a small retention
and a follower inside the tree (`Follow`, as the metrics actor follows the supervisor's
`sup.event`), each keeping a running total of the loss counters it added.

A replay from a seq past 1 shows the publisher the follower's claim: the publisher counts its
`lost`. A replay from 1 shows none: the follower counts its `lost` when all of the topic was
wanted (after a reset, for a topic it knew at seq 0), and nobody does when it only asked for
whatever was retained of a topic first seen at its start. Each lost message is counted once.

The Python client's subscriptions count nothing, but report every such range as a `Loss`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.runtime import Actor, Call, op
from moorage.actors.runtime.follow import Follow
from moorage.actors.runtime.outbound import Outbound
from moorage.actors.runtime.stats import LossCounters
from moorage.protocol.client import Client, Loss, Reset
from moorage.protocol.envelope import StreamMessage, encode_stream
from tests.fakes import FakeActor
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

PUB = "tests.test_follow_losses:Publisher"
FOLLOWER = "tests.test_follow_losses:Follower"
METRICS = "moorage.actors.metrics.actor:MetricsActor"
RETENTION = 5


class TallyLosses(LossCounters):
    """Loss counters that also keep a running total: a metrics push drains the counters,
    while a test must read everything an actor ever counted."""

    def __init__(self) -> None:
        super().__init__()
        self.total: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        super().add(name, n)
        if n > 0:
            self.total[name] += n

    def restore(self, drained: dict[str, int]) -> None:
        for name, n in drained.items():  # (counted once already: a push that failed)
            super().add(name, n)


class Publisher(FakeActor):
    """A fake actor that says what it counted, which replays it answered, and which
    subscriptions it applied; `publish_at_start` ({topic: n}) publishes before the loop
    applies any subscription, so that no subscriber can have those messages live (a restarted
    publisher's first burst, all published before its subscribers are back)."""

    def __init__(self, name: str | None, runtime_dir: Any, config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        self.losses = TallyLosses()
        self.replays: list[list[Any]] = []  # [topic, from_seq, lost] of each replay answered
        self.subscribed: list[str] = []
        replay = self.publisher.replay

        def recorded(topic: str, from_seq: int, *args: Any, **kw: Any) -> dict[str, Any]:
            r = replay(topic, from_seq, *args, **kw)
            self.replays.append([topic, from_seq, r["lost"]])
            return r

        self.publisher.replay = recorded  # type: ignore[method-assign]

    def on_start(self) -> None:
        super().on_start()
        for topic, n in (self.config.get("publish_at_start") or {}).items():
            for i in range(n):
                self.publisher.publish(topic, {"i": i})

    def on_subscribed(self, topic: str) -> None:
        self.subscribed.append(topic)

    @op("pub.drop", args={"topic": str, "n": int})
    def drop(self, call: Call, topic: str, n: int) -> dict[str, Any]:
        """`n` messages retained but never sent, as a PUB socket drops them for a subscriber
        at its high-water mark: only the next message's seq shows the gap."""
        t = self.publisher.topic(topic)
        for i in range(n):
            frames = encode_stream(topic, t.seq + 1, self.epoch, {"dropped": i})
            t.keep(frames[3], [], sum(map(len, frames)))
        return {"last_seq": t.seq}

    @op("pub.state", idempotent=True)
    def state(self, call: Call) -> dict[str, Any]:
        return {"epoch": self.epoch, "replays": self.replays, "subscribed": self.subscribed,
                "counted": dict(self.losses.total)}


class Follower(Actor):
    """An actor following `source`'s `topic` with `Follow`, as the metrics actor follows the
    supervisor: it says which events it got and what loss it counted."""

    name = "follower"

    def __init__(self, name: str | None, runtime_dir: Any, config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        self.losses = TallyLosses()
        self.outbound = Outbound(self)
        self.seen: list[list[Any]] = []

    def on_start(self) -> None:
        self.follow = Follow(self, self.outbound, self.config["source"], self.config["topic"],
                             self._on_event)

    def on_stop(self) -> None:
        self.follow.close()
        self.outbound.close()

    def _on_event(self, ev: StreamMessage | Loss | Reset) -> None:
        if isinstance(ev, StreamMessage):
            self.seen.append(["msg", ev.epoch, ev.seq])
        elif isinstance(ev, Loss):
            self.seen.append(["loss", ev.epoch, ev.first, ev.last])
        else:
            self.seen.append(["reset", ev.old_epoch, ev.new_epoch])

    @op("follower.state", idempotent=True)
    def state(self, call: Call) -> dict[str, Any]:
        return {"seen": self.seen, "counted": dict(self.losses.total)}


def msgs(epoch: str, first: int, last: int) -> list[list[Any]]:
    return [["msg", epoch, s] for s in range(first, last + 1)]


def seen_until(client: Client, epoch: str, seq: int) -> dict[str, Any]:
    """The follower's state once it has delivered `seq` of `epoch`."""
    return wait_for(lambda: (s := client.call("follower", "follower.state"))
                    and ["msg", epoch, seq] in s["seen"] and s,
                    f"the follower at seq {seq} of {epoch}")


def test_a_reset_counts_what_the_new_epoch_lost_once(spawn_actor, client):
    """The publisher restarts and publishes 20 before the follower is back: the follower
    wants all of the new epoch, asks from 1, and counts the 15 retention dropped (the
    publisher does not: a replay from 1 shows it no claim). The SLO report has 15."""
    pushes = {"push_metrics": True, "metrics_interval_s": 0.2}
    first = spawn_actor(PUB, "pub", retention_messages=RETENTION,
                        publish_at_start={"t": 3}, **pushes)
    spawn_actor(METRICS, "metrics", bucket_s=0.2)
    spawn_actor(FOLLOWER, "follower", source="pub", topic="t", **pushes)
    e1 = client.call("pub", "pub.state")["epoch"]
    before = seen_until(client, e1, 3)
    assert before["seen"] == msgs(e1, 1, 3)

    first.stop()
    spawn_actor(PUB, "pub", retention_messages=RETENTION, publish_at_start={"t": 20}, **pushes)
    pub = client.call("pub", "pub.state")
    e2 = pub["epoch"]
    assert e2 != e1
    after = seen_until(client, e2, 20)
    assert after["seen"][3:] == [["reset", e1, e2], ["loss", e2, 1, 15], *msgs(e2, 16, 20)]
    assert after["counted"] == {"stream_lost": 15}
    pub = client.call("pub", "pub.state")
    assert pub["replays"] == [["t", 1, [1, 15]]]
    assert pub["counted"] == {}

    def loss() -> dict[str, Any] | None:
        w = client.call("metrics", "metrics.slo")["windows"]["1h"]
        return w if w["loss_by_actor"] else None

    w = wait_for(loss, "the follower's loss in the SLO report")
    assert w["loss_by_actor"] == {"follower/stream_lost": 15}
    assert w["loss_total"] == 15


def test_a_follower_starting_on_a_long_running_publisher_counts_nothing(spawn_actor, client):
    """A topic first seen at the follower's start is asked from 1 for whatever is retained:
    what retention dropped before is reported (a Loss event), but counted by nobody."""
    spawn_actor(PUB, "pub", retention_messages=RETENTION)
    client.call("pub", "fake.publish", {"topic": "t", "n": 20})
    spawn_actor(FOLLOWER, "follower", source="pub", topic="t")
    ep = client.call("pub", "pub.state")["epoch"]
    state = seen_until(client, ep, 20)
    assert state["seen"] == [["loss", ep, 1, 15], *msgs(ep, 16, 20)]
    assert state["counted"] == {}
    pub = client.call("pub", "pub.state")
    assert pub["replays"] == [["t", 1, [1, 15]]]
    assert pub["counted"] == {}


def test_a_topic_known_at_seq_0_counts_what_a_replay_from_1_lost(spawn_actor, client):
    """The follower was subscribed before the topic's first message (its welcome said seq 0):
    all of it is wanted, so when its first messages are dropped and retention has let them go,
    the replay from 1 is a claim the follower counts."""
    spawn_actor(PUB, "pub", retention_messages=RETENTION)
    spawn_actor(FOLLOWER, "follower", source="pub", topic="t")
    wait_for(lambda: "t" in client.call("pub", "pub.state")["subscribed"],
             "the follower's subscription applied (its welcome: t at seq 0)")
    client.call("pub", "pub.drop", {"topic": "t", "n": 10})
    client.call("pub", "fake.publish", {"topic": "t", "n": 1})
    ep = client.call("pub", "pub.state")["epoch"]
    state = seen_until(client, ep, 11)
    assert state["seen"] == [["loss", ep, 1, 6], *msgs(ep, 7, 11)]
    assert state["counted"] == {"stream_lost": 6}
    pub = client.call("pub", "pub.state")
    assert pub["replays"] == [["t", 1, [1, 6]]]
    assert pub["counted"] == {}


def test_a_gap_past_seq_1_is_counted_by_the_publisher_alone(spawn_actor, client):
    """A gap after messages the follower had: its replay from there shows the publisher the
    claim, and the publisher counts the loss; the follower reports it and counts nothing."""
    spawn_actor(PUB, "pub", retention_messages=RETENTION, publish_at_start={"t": 3})
    spawn_actor(FOLLOWER, "follower", source="pub", topic="t")
    ep = client.call("pub", "pub.state")["epoch"]
    seen_until(client, ep, 3)
    client.call("pub", "pub.drop", {"topic": "t", "n": 10})
    client.call("pub", "fake.publish", {"topic": "t", "n": 1})
    state = seen_until(client, ep, 14)
    assert state["seen"] == [*msgs(ep, 1, 3), ["loss", ep, 4, 9], *msgs(ep, 10, 14)]
    assert state["counted"] == {}
    pub = client.call("pub", "pub.state")
    assert pub["replays"] == [["t", 1, None], ["t", 4, [4, 9]]]
    assert pub["counted"] == {"replay_beyond_retention": 6}


def test_a_client_subscriber_sees_the_loss_of_a_reset_and_of_a_topic_born_while_away(
        spawn_actor, runtime_dir: Path):
    """A subscription to `t.` knows `t.a`; the publisher restarts and publishes 20 on `t.a`
    and on a new `t.b` before the subscriber is back: both are wanted whole (a reset, a new
    topic under a live prefix), and what retention dropped of each comes as a Loss."""
    first = spawn_actor(PUB, "pub", retention_messages=RETENTION, publish_at_start={"t.a": 3})
    with Client(runtime_dir, timeout=10.0) as c:
        e1 = c.call("pub", "pub.state")["epoch"]
        sub = c.subscribe("pub", ["t."])
        wait_for(lambda: sub.next(timeout=0.05) is None and "t." in sub.tracker.live,
                 "the subscription live")
        assert sub.tracker.topics["t.a"].last == 3  # from now: t.a starts at its welcome
        first.stop()
        spawn_actor(PUB, "pub", retention_messages=RETENTION,
                    publish_at_start={"t.a": 20, "t.b": 20})
        e2 = c.call("pub", "pub.state")["epoch"]
        got: dict[str, list[Any]] = {"t.a": [], "t.b": []}
        while not all(got[t] and got[t][-1] == StreamMessage(t, 20, e2, {"i": 19}, [])
                      for t in got):
            ev = sub.next(timeout=20)
            assert ev is not None, got
            got[ev.topic].append(ev)
        tail = [StreamMessage("t.a", s, e2, {"i": s - 1}, []) for s in range(16, 21)]
        assert got["t.a"] == [Reset("t.a", e1, e2), Loss("t.a", 1, 15, e2), *tail]
        tail = [StreamMessage("t.b", s, e2, {"i": s - 1}, []) for s in range(16, 21)]
        assert got["t.b"] == [Loss("t.b", 1, 15, e2), *tail]
        sub.close()
