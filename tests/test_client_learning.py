"""The client learns each actor's idempotent ops from its sys.info before the first call that
needs them, so retries follow the actor's own table (PROTOCOL.md section 10)."""

from __future__ import annotations

import pytest

from moorage.protocol.client import Client
from moorage.protocol.client._core import CallPlan

pytestmark = pytest.mark.timeout(60)


def test_the_first_call_learns_the_actors_idempotent_ops(spawn_actor, client):
    spawn_actor()
    assert "fake" not in client.core.learned
    client.call("fake", "fake.effect")
    info = client.call("fake", "sys.info")
    declared = {name for name, d in info["ops"].items() if d["idempotent"]}
    assert client.core.learned["fake"] == declared
    assert "fake.count" in declared and "fake.effect" not in declared
    assert CallPlan(client.core, "fake", "fake.count", None, 1.0, None).idempotent
    assert not CallPlan(client.core, "fake", "fake.effect", None, 1.0, None).idempotent
    # Asked once: a later call of an op it cannot tell about does not ask again.
    asked = next(r for r in client.latency_report() if r["op"] == "sys.info")["count"]
    client.call("fake", "fake.work")
    assert next(r for r in client.latency_report() if r["op"] == "sys.info")["count"] == asked


def test_an_actor_that_cannot_say_leaves_its_ops_not_idempotent_and_is_asked_again(
        runtime_dir, spawn_actor):
    with Client(runtime_dir, timeout=0.3) as c:
        assert c.learn_ops("fake", timeout=0.2) == frozenset()
        assert "fake" not in c.core.learned
        assert not CallPlan(c.core, "fake", "fake.count", None, 1.0, None).idempotent
        spawn_actor()
        assert "fake.count" in c.learn_ops("fake", timeout=10.0)


def test_learning_can_be_turned_off(spawn_actor, runtime_dir):
    spawn_actor()
    with Client(runtime_dir, timeout=10.0, learn_ops=False) as c:
        c.call("fake", "fake.count")
        assert c.core.learned == {}
        assert not CallPlan(c.core, "fake", "fake.count", None, 1.0, None).idempotent
