"""`sup.shed` in a real tree: non-essential children are stopped gracefully and held, across
nested supervisors, without counting as failures or restarts, and come back when asked."""

from __future__ import annotations

import pytest

from moorage.protocol.errors import MoorageError
from moorage.supervisor.spec import ConfigError, parse_tree

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
