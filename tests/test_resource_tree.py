"""The resource actor in a real tree: a real memory hog inside it raises the level, the tree
sheds, the hog is killed at critical after an alert, and everything comes back (R10).

The hog is a child process of `HogActor` (tests/hog_actor.py), an actor of the tree, so it
is a descendant the resource actor must find by itself, exactly as a shell's child would be.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.conftest import Tree, wait_pid_exit
from tests.waiting import wait_for as wait_until

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024
# Allocate, say so, then hold the memory until stdin closes (the actor's death closes it too).
def tree_config(budget_mb: int, metric: str = "pss", extra: str = "",
                calm_interval_s: float = 1.0) -> str:
    # PSS: the forked actors share the interpreter's pages, and PSS counts them once, so a
    # small budget fits the idle tree (45-60 MB PSS here, against 160 MB of RSS summed; PSS
    # moves with how many other processes on the machine map the same files). A calm tree
    # is sampled once a second, not every 5 s: a hog is seen soon enough for a test.
    return f"""
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"
[[children]]
id = "hog"
start = "tests.hog_actor:HogActor"

[actor.resource]
interval_s = 0.2
calm_interval_s = {calm_interval_s}
calm_after_samples = 3
memory_budget_mb = {budget_mb}
memory_metric = "{metric}"
down_samples = 3
quality_up_samples = 2
kill_after_samples = 2
{extra}
"""


def wait_for(sub: Any, pred: Callable[[dict], bool], seen: list[dict],
             timeout: float = 30) -> dict:
    """The next stream message matching `pred`; every message read goes to `seen`."""
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        assert left > 0, f"nothing matching within {timeout}s; saw {seen}"
        ev = sub.next(timeout=left)
        if isinstance(ev, StreamMessage):
            seen.append(ev.body)
            if pred(ev.body):
                return ev.body


class Watch:
    """The resource actor's streams from their first message, and every level event seen."""

    def __init__(self, tree: Tree) -> None:
        self.levels = tree.client.subscribe("resource", ["resource.level"], from_seq=1)
        self.alerts = tree.client.subscribe("resource", ["resource.alert"], from_seq=1)
        self.seen: list[dict] = []
        self.alerts_seen: list[dict] = []
        # The first sample always publishes (previous None).
        self.first = self.level(lambda b: b["previous"] is None)

    def level(self, pred: Callable[[dict], bool]) -> dict:
        return wait_for(self.levels, pred, self.seen)

    def alert(self, pred: Callable[[dict], bool]) -> dict:
        return wait_for(self.alerts, pred, self.alerts_seen)


def timeline(events: list[dict], alerts: list[dict], t0: float) -> str:
    lines = []
    for e in sorted(events + alerts, key=lambda e: e["time"]):
        if "kind" in e:
            lines.append(f"  t={e['time'] - t0:6.2f}s  pressure {e['pressure']:3d}  alert "
                         f"{e['kind']}/{e['action']}: pid {e.get('pid')} under "
                         f"{e.get('id')!r}, {e.get('memory', 0) / MB:.0f} MB")
            continue
        lines.append(f"  t={e['time'] - t0:6.2f}s  pressure {e['pressure']:3d}  "
                     f"{e['level']:<9} quality {e['quality']}  (was {e['previous']}/"
                     f"{e['previous_quality']})  told {sorted(e['actions'])}")
    return "\n".join(lines)


def test_a_memory_hog_raises_the_level_is_killed_at_critical_and_the_tree_returns(make_tree):
    budget = 400
    # Memory alone moves the level (cpu_weight 0): each step below is the hogs' doing, not a
    # busy machine's.
    tree = make_tree(tree_config(budget, extra="cpu_weight = 0.0")).start()
    w = Watch(tree)
    assert (w.first["level"], w.first["quality"]) == ("normal", 3)
    status = tree.call("resource", "resource.status", {"fresh": True})  # after the start
    roles = {r["id"]: r["role"] for r in status["processes"] if r["role"] == "actor"}
    assert roles == {"metrics": "actor", "resource": "actor", "hog": "actor"}
    baseline = status["totals"]["memory"] / MB
    # Below normal's boundary (31) minus the margin (5), with room: or it could never return.
    assert baseline < 0.2 * budget, f"the idle tree alone is at {baseline:.0f} MB"

    # Moderate: a hog that brings the tree to about 45% of its budget.
    small = tree.call("hog", "hog.start", {"mb": int(0.45 * budget - baseline - 10)})
    moderate = w.level(lambda b: b["level"] == "moderate")
    assert moderate["quality"] == 2 and moderate["features_off"] == ["decorations"]
    assert moderate["actions"]["hog"]["noted"] == 1  # sys.pressure reached the actor
    assert "reply_cache_dropped" in moderate["actions"]["metrics"]

    # Critical: a second, larger hog takes the tree past its budget.
    big = tree.call("hog", "hog.start", {"mb": int(0.6 * budget)})
    critical = w.level(lambda b: b["level"] == "critical")
    assert critical["quality"] == 0
    warn = w.alert(lambda b: b.get("action") == "warn")
    killed = w.alert(lambda b: b.get("action") == "killed")
    assert warn["pid"] == killed["pid"] == big["pid"]  # the largest, not the smaller hog
    # Killed once the pressure stayed critical, possibly before it finished allocating.
    assert killed["id"] == "hog" and killed["memory"] > 0.3 * budget * MB
    assert wait_pid_exit(big["pid"], 10)

    # The big hog is gone: the level drops back to moderate; the small one still runs.
    after = w.level(lambda b: b["previous"] == "critical")
    assert after["level"] == "moderate"
    assert tree.call("hog", "sys.info")["hogs"] == [small["pid"]]

    # And with the small hog gone too, level and quality return to normal (R10).
    tree.call("hog", "hog.stop")
    back = w.level(lambda b: b["level"] == "normal" and b["quality"] == 3)
    assert back["features_off"] == []
    print("\nR10 levels over time:\n" + timeline(w.seen, w.alerts_seen, w.first["time"]))

    levels = [e["level"] for e in w.seen]
    assert levels.index("moderate") < levels.index("critical") < len(levels) - 1
    log = tree.call("hog", "sys.info")["pressure_log"]
    assert ["critical", 0] in log and log[-1] == ["normal", 3]
    status = tree.call("resource", "resource.status")
    assert status["counters"]["kills"] == 1 and status["level"] == "normal"
    assert status["actions"]["noted"] >= 3
    assert tree.child("hog")["restarts"] == 0  # the actor itself was never touched


def test_a_calm_tree_is_sampled_less_often_until_pressure_comes(make_tree):
    budget = 400
    tree = make_tree(tree_config(budget, extra="cpu_weight = 0.0", calm_interval_s=3.0)).start()
    w = Watch(tree)
    assert w.first["level"] == "normal"

    def calm() -> bool:
        # A fresh status is answered from a sample taken after it was asked (at most
        # interval_s after the one before): three in a row at normal make the tree calm.
        return tree.call("resource", "resource.status", {"fresh": True})["sampler"]["calm"]

    # (asked until it is: a tree just started may still grow by a point of its budget
    # between two samples, which is not calm)
    wait_until(calm, "a calm tree", 60)

    # Pressure: sampled every interval_s again until it has passed.
    baseline = tree.call("resource", "resource.status")["totals"]["memory"] / MB
    tree.call("hog", "hog.start", {"mb": int(0.45 * budget - baseline - 10)})
    w.level(lambda b: b["level"] == "moderate")
    assert not calm()
    tree.call("hog", "hog.stop")
    w.level(lambda b: b["level"] == "normal" and b["quality"] == 3)
    wait_until(calm, "the tree calm again", 60)


def test_fresh_requests_do_not_sample_faster_than_the_interval(make_tree):
    # Every count of samples (kill_after_samples, down_samples, ...) and the CPU figure assume
    # samples interval_s apart: a client asking for fresh ones again and again gets each
    # from the next sample due, not a sample each at once.
    tree = make_tree(tree_config(400, extra="cpu_weight = 0.0")).start()
    first = tree.call("resource", "resource.status", {"fresh": True})["sampler"]["samples"]
    t0 = time.monotonic()
    for _ in range(10):
        last = tree.call("resource", "resource.status", {"fresh": True})
    elapsed = time.monotonic() - t0
    taken = last["sampler"]["samples"] - first
    assert 10 <= taken <= 2 * elapsed / 0.2 + 3, (taken, elapsed)


def test_quality_override_holds_for_its_duration_and_is_told_to_restarted_workers(make_tree):
    # The tree's CPU does not count here (cpu_weight 0): a busy machine makes a starting tree
    # busy, which would move the derived quality this test reads under the override.
    tree = make_tree(tree_config(1024, extra="cpu_weight = 0.0")).start()
    w = Watch(tree)
    tree.call("resource", "resource.status", {"fresh": True})  # it has seen every worker
    with pytest.raises(MoorageError) as e:
        tree.call("resource", "resource.quality.set", {"quality": 4})
    assert e.value.name == "bad_args"
    with pytest.raises(MoorageError) as e:
        tree.call("resource", "resource.quality.set", {"quality": 1, "duration_s": -1})
    assert e.value.name == "bad_args"

    r = tree.call("resource", "resource.quality.set", {"quality": 1, "duration_s": 60})
    assert r["quality"] == 1 and r["derived_quality"] == 3 and r["override_left_s"] > 59
    ev = w.level(lambda b: b["quality"] == 1)
    assert ev["override"] and ev["level"] == "normal" and ev["actions"]["hog"]["noted"] == 1
    level = tree.call("resource", "resource.level")
    assert (level["level"], level["quality"]) == ("normal", 1)

    # A worker restarted meanwhile starts at quality 3: it is told where the tree stands.
    tree.call("supervisor", "sup.kill", {"child": "hog"})
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "hog")
    told = tree.client.subscribe("hog", ["hog.pressure"], from_seq=1)
    assert wait_for(told, lambda b: True, []) == {"level": "normal", "quality": 1}
    assert tree.call("hog", "sys.info")["pid"] == ev["pid"]

    # A short override expires by itself and the derived quality comes back.
    tree.call("resource", "resource.quality.set", {"quality": 0, "duration_s": 0.5})
    w.level(lambda b: b["quality"] == 0)
    # (back to what the pressure gives: 3 on a quiet machine, less on a busy one)
    back = w.level(lambda b: not b["override"])
    assert back["previous_quality"] == 0 and back["quality"] == back["derived_quality"]
    status = tree.call("resource", "resource.status")
    assert status["override_left_s"] is None and status["counters"]["retold"] >= 1


def test_a_quality_override_that_cannot_be_saved_holds_all_the_same(make_tree):
    """Saved first (for a successor), it was applied in memory before the save raised: the
    caller got `internal` (cached for its retries) while the override was in force."""
    tree = make_tree(tree_config(1024, extra="cpu_weight = 0.0")).start()
    (tree.runtime_dir / "resource.quality").mkdir()  # (where the save's rename must go)
    r = tree.call("resource", "resource.quality.set", {"quality": 1, "duration_s": 60})
    assert r["quality"] == 1 and r["override_left_s"] > 59
    assert tree.call("resource", "resource.level")["quality"] == 1


def test_a_config_that_cannot_work_fails_the_start(runtime_dir):
    from moorage.actors.resource.actor import ResourceActor

    for bad in ({"interval_s": 0}, {"memory_budget_mb": "big"}, {"memory_metric": "vms"},
                {"cpu_weight": 2.0}, {"margin": 2.5}, {"calm_interval_s": 1e9},
                {"calm_after_samples": 0}, {"pss_every": 0}):
        with pytest.raises(ValueError):
            ResourceActor("resource", runtime_dir, bad)


def test_without_a_supervisor_answering_it_still_samples_and_serves(spawn_actor, client):
    spawn_actor("moorage.actors.resource.actor:ResourceActor", "resource", interval_s=0.05,
                status_timeout_s=0.05)
    status = client.call("resource", "resource.status", {"fresh": True})
    assert status["counters"]["status_failures"] >= 1
    assert status["processes"] == [] and status["level"] == "normal"
    assert status["system"]["total"] > 0
    assert client.call("resource", "resource.level")["quality"] == 3
