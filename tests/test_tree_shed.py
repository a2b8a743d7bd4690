"""`sup.shed` in a real tree: non-essential children are stopped gracefully and held, across
nested supervisors, without counting as failures or restarts, and come back when asked."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from moorage.protocol.errors import MoorageError
from moorage.supervisor.spec import ConfigError, parse_tree
from tests.conftest import pid_running
from tests.waiting import open_gate, wait_for

pytestmark = pytest.mark.timeout(120)

TREE = """
[supervisor]
heartbeat = { interval_ms = 200, misses = 5 }

[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
essential = false

[[children]]
id = "keep"
start = "tests.fakes:FakeActor"

[[children]]
id = "group"
type = "supervisor"
strategy = "one_for_all"

[[children.children]]
id = "inner"
start = "tests.fakes:FakeActor"

[[children.children]]
id = "extra"
start = "tests.fakes:FakeActor"
essential = false
"""

NON_ESSENTIAL = {"metrics", "extra"}


class Events:
    """The root's `sup.event` stream, every event kept: a wait looks at what was already
    read (from a mark) before reading on, so events of one step may come in any order."""

    def __init__(self, tree) -> None:
        self.tree = tree
        self.seen: list[dict] = []

    def mark(self) -> int:
        return len(self.seen)

    def wait(self, pred, since: int = 0) -> dict:
        for e in self.seen[since:]:
            if pred(e):
                return e
        return self.tree.wait_event(lambda e: self.seen.append(e) or pred(e))

    def all(self, wanted: set[tuple[str, str]], since: int = 0) -> dict[tuple[str, str], dict]:
        """Every (event, child) of `wanted`, the first of each from `since` on."""
        got: dict[tuple[str, str], dict] = {}

        def match(e: dict) -> bool:
            key = (e["event"], e.get("child"))
            if key in wanted and key not in got:
                got[key] = e
            return got.keys() == wanted

        self.wait(match, since)
        return got

    def alert(self, kind: str, action: str, since: int = 0) -> dict:
        """A resource alert of this kind and action, as republished on supervisor.pub."""
        return self.wait(lambda e: e["event"] == "alert" and e["source"] == "resource"
                         and e["alert"].get("kind") == kind
                         and e["alert"].get("action") == action, since)["alert"]


def states(tree) -> dict[str, str]:
    out = {}

    def walk(t: dict) -> None:
        for ch in t["children"]:
            out[ch["id"]] = ch["state"]
            if "tree" in ch:
                walk(ch["tree"])

    walk(tree.status())
    return out


def test_shed_stops_the_non_essential_children_of_the_whole_tree_and_brings_them_back(
        make_tree):
    tree = make_tree(TREE).start()
    pids = {c: tree.child(c)["pid"] for c in ("metrics", "extra", "keep", "inner")}

    ev = Events(tree)
    r = tree.call("supervisor", "sup.shed", {"on": True, "reason": "test"})
    assert r["shedding"] and set(r["shed"]) == NON_ESSENTIAL and r["failed"] == {}
    evs = ev.all({(k, c) for k in ("shed", "exited") for c in NON_ESSENTIAL})
    for cid in NON_ESSENTIAL:
        assert evs["shed", cid]["reason"] == "test" and evs["shed", cid]["pid"] == pids[cid]
        exited = evs["exited", cid]
        assert exited["reason"] == "shutdown" and exited["stage"] == "term"  # not killed
    assert states(tree) == {"metrics": "shed", "keep": "running", "group": "running",
                            "inner": "running", "extra": "shed"}
    extra = tree.child("extra")
    assert (extra["restarts"], extra["sheds"], extra["essential"]) == (0, 1, False)
    assert tree.status()["shedding"]

    # Shedding again holds what is shed; a shed child is neither restarted on request ...
    again = tree.call("supervisor", "sup.shed", {"on": True})
    assert again["shed"] == [] and set(again["held"]) == NON_ESSENTIAL
    with pytest.raises(MoorageError) as e:
        tree.call("supervisor", "sup.restart", {"child": "extra"})
    assert e.value.name == "busy"
    # ... nor by a sibling's death under one_for_all ...
    m = ev.mark()
    tree.call("supervisor", "sup.kill", {"child": "inner"})
    ev.all({("restarted", "inner")}, m)
    assert tree.child("extra")["restarts"] == 0  # and its group's restart does not count it
    # ... nor by its nested supervisor coming back: it is told to shed on its way up.
    m = ev.mark()
    tree.call("supervisor", "sup.kill", {"child": "group"})
    evs = ev.all({("restarted", "group"), ("shed", "extra"), ("exited", "extra")}, m)
    assert evs["shed", "extra"]["reason"] == "shedding when it started"
    assert states(tree)["extra"] == "shed" and states(tree)["metrics"] == "shed"
    assert tree.child("keep")["pid"] == pids["keep"]  # essential ones were never touched

    m = ev.mark()
    r = tree.call("supervisor", "sup.shed", {"on": False, "reason": "calm"})
    assert not r["shedding"] and set(r["resumed"]) == NON_ESSENTIAL
    evs = ev.all({(k, c) for k in ("unshed", "started") for c in NON_ESSENTIAL}, m)
    assert all(evs["started", c]["resumed"] is True for c in NON_ESSENTIAL)
    tree.wait_all_running()
    assert tree.call("metrics", "sys.ping")
    assert tree.child("metrics")["restarts"] == 0 and not tree.status()["shedding"]
    assert tree.call("supervisor", "sup.shed", {"on": False})["resumed"] == []


def test_essential_is_checked_and_the_resource_actor_cannot_be_shed():
    base = {"children": [{"id": "a", "start": "tests.fakes:FakeActor", "essential": "no"}]}
    with pytest.raises(ConfigError, match=r"children\[0\]\.essential"):
        parse_tree(base)
    res = {"children": [{"id": "resource", "start": "moorage.actors.resource.actor:ResourceActor",
                         "essential": False}]}
    with pytest.raises(ConfigError, match="must stay essential"):
        parse_tree(res)
    ok = parse_tree({"children": [{"id": "a", "start": "tests.fakes:FakeActor",
                                   "essential": False}]})
    assert ok.children[0].essential is False
    from moorage.supervisor.config import default_document

    default = {c.id: c.essential for _, c in parse_tree(default_document()).walk()}
    assert default == {"metrics": False, "resource": True, "parser": False, "watcher": True,
                       "terminals": True, "ptykeeper": True, "terminal": True}



def _events_until(tree, pred) -> list[dict]:
    seen: list[dict] = []
    tree.wait_event(lambda e: seen.append(e) or pred(e))
    return seen


GROUP_RESTARTING = """
[supervisor]
strategy = "rest_for_one"
start_timeout_ms = 60000
[[children]]
id = "first"
start = "tests.fakes:FakeActor"
config = {{ crash_after = 1, start_gate = "{gate}" }}
[[children]]
id = "extra"
start = "tests.fakes:FakeActor"
essential = false
[[children]]
id = "last"
start = "tests.fakes:FakeActor"
"""


def test_a_non_essential_child_whose_start_is_queued_is_shed_not_started(make_tree, tmp_path):
    """`first` dies: its group's restart stops `extra` and `last` and queues their starts
    behind `first`'s, held at its gate. `sup.shed` then sheds `extra` (its queued start does
    not run while the tree sheds), and `sup.shed {on: false}` brings it back."""
    gate = tmp_path / "gate"
    tree = make_tree(GROUP_RESTARTING.format(gate=gate)).start()
    old = tree.child("extra")["pid"]
    os.mkfifo(gate)
    try:
        with contextlib.suppress(MoorageError):
            tree.call("first", "fake.work", timeout=2)
        # first forked again and held at its gate: the group's stops are done (the job
        # queue runs one job at a time), the starts of extra and last queued behind it
        wait_for(lambda: (c := tree.child("first"))["state"] == "starting" and c["pid"],
                 "first starting, held at its gate")
        assert states(tree)["extra"] == "stopped"
        r = tree.call("supervisor", "sup.shed", {"on": True, "reason": "test"})
        assert r["shed"] == ["extra"] and r["held"] == [], r
        assert states(tree)["extra"] == "shed"
    finally:
        open_gate(gate)
    seen = _events_until(tree, lambda e: e["event"] == "restarted" and e["child"] == "last")
    assert not [e for e in seen if e["event"] in ("started", "restarted")
                and e["child"] == "extra" and e["pid"] != old], \
        "extra started while the tree sheds"
    s = tree.status()
    assert s["shedding"] and {c["id"]: c["state"] for c in s["children"]} == {
        "first": "running", "extra": "shed", "last": "running"}
    r = tree.call("supervisor", "sup.shed", {"on": False, "reason": "calm"})
    assert r["resumed"] == ["extra"]
    ev = tree.wait_event(lambda e: e["event"] == "started" and e["child"] == "extra")
    assert ev["resumed"] is True
    tree.wait_all_running()


GROUP_WAITING = """
[supervisor]
strategy = "rest_for_one"
stable_after_s = 30
backoff = { initial_ms = 60000, factor = 2.0, max_ms = 60000 }
[[children]]
id = "first"
start = "tests.fakes:FakeActor"
config = { crash_after = 1 }
[[children]]
id = "extra"
start = "tests.fakes:FakeActor"
essential = false
[[children]]
id = "last"
start = "tests.fakes:FakeActor"
"""


def test_a_start_that_falls_due_while_the_tree_sheds_is_held(make_tree):
    """`extra` is down when the tree starts shedding, its restart planned with its group's
    (a minute of back-off): nothing to shed then. When that restart comes (asked now), its
    start is not run: it is shed then, and resumed with the others."""
    tree = make_tree(GROUP_WAITING).start()
    pid = tree.child("first")["pid"]
    old = {c: {tree.child(c)["pid"]} for c in ("extra", "last")}
    with contextlib.suppress(MoorageError):
        tree.call("first", "fake.work", timeout=5)
    wait_for(lambda: tree.wait_all_running()["children"][0]["pid"] != pid,
             "the group restarted at once")
    for c in old:
        old[c].add(tree.child(c)["pid"])
    with contextlib.suppress(MoorageError):  # a second young death: a minute of back-off
        tree.call("first", "fake.work", timeout=5)
    wait_for(lambda: states(tree) == {"first": "backoff", "extra": "stopped",
                                      "last": "stopped"}, "the group waiting")
    r = tree.call("supervisor", "sup.shed", {"on": True, "reason": "test"})
    assert r["shed"] == [] and r["held"] == []
    tree.call("supervisor", "sup.restart", {"child": "first"})
    # (the stream may still hold the first restart's events: told apart by their pids)
    seen = _events_until(tree, lambda e: e["event"] == "restarted" and e["child"] == "last"
                         and e["pid"] not in old["last"])
    shed = [e for e in seen if e["event"] == "shed" and e["child"] == "extra"]
    assert len(shed) == 1 and not [e for e in seen if e["event"] in ("started", "restarted")
                                   and e["child"] == "extra" and e["pid"] not in old["extra"]]
    assert states(tree)["extra"] == "shed"
    assert tree.call("supervisor", "sup.shed", {"on": False})["resumed"] == ["extra"]
    ev = tree.wait_event(lambda e: e["event"] == "started" and e["child"] == "extra")
    assert ev["resumed"] is True


STOPPING_WHEN_SHED = """
[supervisor]
strategy = "one_for_one"
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
[[children]]
id = "extra"
start = "tests.fakes:FakeActor"
essential = false
shutdown_ms = 500
config = { ignore_sigterm = true }
[[children]]
id = "b"
start = "tests.fakes:FakeActor"
"""


def test_a_child_shed_while_it_stops_is_still_killed_and_the_queue_goes_on(make_tree):
    """`sup.restart` of a child that ignores SIGTERM: its stop is under way (SIGKILL due
    after shutdown_ms) and its start queued when the tree is shed. Taken for a child down
    with its start queued, it was put in `shed` under its stop: no SIGKILL came, the stop
    held the job queue, and no other child of the supervisor was started again."""
    tree = make_tree(STOPPING_WHEN_SHED).start()
    extra = tree.child("extra")["pid"]
    b = tree.child("b")["pid"]
    tree.call("supervisor", "sup.restart", {"child": "extra"})
    r = tree.call("supervisor", "sup.shed", {"on": True, "reason": "test"})
    assert r["shed"] == ["extra"], r
    try:
        wait_for(lambda: not pid_running(extra), "extra SIGKILLed after its shutdown_ms")
    finally:
        if pid_running(extra):
            os.kill(extra, signal.SIGKILL)  # (so that the tree can stop)
    wait_for(lambda: tree.child("extra")["state"] == "shed", "extra shed once stopped")
    tree.call("supervisor", "sup.restart", {"child": "b"})
    wait_for(lambda: (c := tree.child("b"))["state"] == "running" and c["pid"] != b,
             "b started again: the queue goes on")
    r = tree.call("supervisor", "sup.shed", {"on": False, "reason": "calm"})
    assert r["resumed"] == ["extra"]
    tree.wait_all_running()
