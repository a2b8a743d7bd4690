"""The resource actor in a real tree when critical persists: it has the supervisors stop the
non-essential actors (across nested supervisors), says so on `supervisor.pub`, counts it,
and brings them back once the pressure has stayed down; a restarted resource actor adopts a
shed tree, and keeps a quality override it was given."""

from __future__ import annotations

import pytest

from tests.test_resource_tree import MB, Watch
from tests.test_tree_shed import Events

pytestmark = pytest.mark.timeout(120)


def tree_config(budget_mb: int, **resource: object) -> str:
    extra = "\n".join(f"{k} = {v!r}".replace("'", '"').replace("False", "false")
                      .replace("True", "true") for k, v in resource.items())
    return f"""
[supervisor]
heartbeat = {{ interval_ms = 200, misses = 5 }}

[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
essential = false

[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"

[[children]]
id = "hog"
start = "tests.hog_actor:HogActor"

[[children]]
id = "extras"
type = "supervisor"

[[children.children]]
id = "parser"
start = "moorage.actors.parser.actor:ParserActor"
essential = false

[actor.resource]
interval_s = 0.2
calm_interval_s = 1.0  # a calm tree: a hog is seen within a second
memory_budget_mb = {budget_mb}
memory_metric = "pss"
down_samples = 2
quality_up_samples = 1
{extra}
"""


def test_critical_that_persists_sheds_the_non_essential_actors_until_it_has_passed(make_tree):
    budget = 600
    tree = make_tree(tree_config(budget, kill_runaways=False, persist_after_samples=3,
                                 restore_after_samples=3)).start()
    w, ev = Watch(tree), Events(tree)
    status = tree.call("resource", "resource.status", {"fresh": True})
    baseline = status["totals"]["memory"] / MB
    assert baseline < 0.2 * budget, f"the idle tree alone is at {baseline:.0f} MB"

    hog = tree.call("hog", "hog.start", {"mb": int(0.9 * budget)})
    w.level(lambda b: b["level"] == "critical")
    persisting = ev.alert("critical", "persisting")
    assert persisting["next"] == "shed"
    shed = ev.alert("shed", "stopped")
    assert set(shed["actors"]) == {"metrics", "parser"} and shed["failed"] == {}
    ev.all({("exited", "metrics"), ("exited", "parser")})
    assert tree.child("metrics")["state"] == tree.child("parser")["state"] == "shed"
    assert tree.child("hog")["state"] == "running"  # killing is off: only alerted
    status = tree.call("resource", "resource.status")
    assert status["shed"]["shedding"] and set(status["shed"]["actors"]) == {"metrics",
                                                                              "parser"}
    assert status["counters"]["actors_shed"] == 2

    # A resource actor restarted meanwhile finds the tree shed, and will bring it back.
    m = ev.mark()
    tree.call("supervisor", "sup.kill", {"child": "resource"})
    ev.all({("restarted", "resource")}, m)
    w = Watch(tree)
    after = tree.call("resource", "resource.status", {"fresh": True})
    assert after["shed"]["shedding"] and after["counters"].get("shed_calls", 0) == 0

    m = ev.mark()
    tree.call("hog", "hog.stop")
    w.level(lambda b: b["level"] == "normal")
    restored = ev.alert("shed", "restored", m)
    assert set(restored["actors"]) == {"metrics", "parser"}
    evs = ev.all({("started", "metrics"), ("started", "parser")}, m)
    assert evs["started", "metrics"]["resumed"] and evs["started", "parser"]["resumed"]
    tree.wait_all_running()
    assert tree.call("parser", "sys.ping") and tree.call("metrics", "sys.ping")
    for cid in ("metrics", "parser"):
        ch = tree.child(cid)
        # Shedding is neither a failure nor a restart: only a death of its own (a start or
        # heartbeat missed on a loaded machine) would have counted.
        deaths = [e for e in ev.seen if e["event"] == "exited" and e.get("child") == cid
                  and e["reason"] == "abnormal"]
        assert (ch["restarts"], ch["sheds"]) == (len(deaths), 1), (ch, tree.output())
    status = tree.call("resource", "resource.status")
    assert not status["shed"]["shedding"] and status["counters"]["actors_restored"] == 2
    assert hog["pid"] not in [p["pid"] for p in status["processes"]]


def test_the_quality_override_survives_a_restart_of_the_resource_actor(make_tree):
    # the level is memory's alone: a busy machine makes a starting tree busy
    tree = make_tree(tree_config(1024, cpu_weight=0.0)).start()
    w = Watch(tree)
    r = tree.call("resource", "resource.quality.set", {"quality": 1, "duration_s": 3600})
    assert r["quality"] == 1
    w.level(lambda b: b["quality"] == 1)
    old = tree.child("resource")["pid"]

    tree.call("supervisor", "sup.kill", {"child": "resource"})
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "resource")
    assert ev["pid"] != old
    w = Watch(tree)  # the new instance's stream: its first sample tells where it stands
    assert (w.first["level"], w.first["quality"], w.first["override"]) == ("normal", 1, True)
    status = tree.call("resource", "resource.status")
    # Less than the whole hour, and far more than this test's own timeout could have used.
    assert 3600 - 600 < status["override_left_s"] < 3600
    assert status["counters"]["override_restored"] == 1 and status["derived_quality"] == 3
    told = tree.call("hog", "sys.info")["pressure"]
    assert told == {"level": "normal", "quality": 1}

    # Removed, it stays removed across the next restart.
    tree.call("resource", "resource.quality.set", {"quality": 3, "duration_s": 0})
    w.level(lambda b: b["quality"] == 3)
    tree.call("supervisor", "sup.kill", {"child": "resource"})
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "resource")
    w = Watch(tree)
    assert (w.first["quality"], w.first["override"]) == (3, False)
    assert "override_restored" not in tree.call("resource", "resource.status")["counters"]
