"""Who is who in the tree, for the resource actor: the roles `sup.status` gives, and the ones
the sampler must find without it (a nested supervisor that did not answer in time, a process
orphaned to a supervisor). A role decides what may be killed as a runaway: an actor taken for
a descendant is killed, a runaway taken for a zygote is never.

On fake trees built here (each process titled as the tree's own, `moorage[`, or not), and on
real ones: a restarted nested supervisor that does not answer, and a hog backgrounded the way
a shell's `(cmd &)` does it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from moorage.actors.resource import Roles, TreeSampler, roles_from_status
from moorage.protocol.envelope import StreamMessage
from tests.conftest import end_built_tree, pid_running, wait_pid_exit
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

MB = 1024 * 1024

# --- roles_from_status ----------------------------------------------------------------------


def _child(cid: str, pid: int | None, kind: str = "worker", state: str = "running",
           **extra: Any) -> dict[str, Any]:
    return {"id": cid, "type": kind, "state": state, "pid": pid, **extra}


def _status(inner: dict[str, Any]) -> dict[str, Any]:
    return {"id": "supervisor", "pid": 100, "zygote": {"pid": 101, "restarts": 1, "spare": 102},
            "children": [_child("resource", 110), inner]}


ERROR = {"error": {"code": 504, "name": "timeout"}}


def test_a_nested_tree_that_answered_for_its_pid_gives_its_zygotes_and_actors():
    r = roles_from_status(_status(_child("inner", 120, "supervisor", tree={
        "id": "inner", "pid": 120, "zygote": {"pid": 121, "restarts": 0, "spare": None},
        "children": [_child("fat", 130)]})))
    assert r.supervisors == {100: "supervisor", 120: "inner"}
    assert r.zygotes == {101: "supervisor", 102: "supervisor", 121: "inner"}
    assert r.actors == {110: "resource", 130: "fat"}
    assert r.workers == {"resource": 110, "fat": 130}
    assert r.unanswered == {}


@pytest.mark.parametrize("tree", [
    # its last-known tree, of the process before a restart (every state `unknown`)
    {"id": "inner", "pid": 90, "zygote": {"pid": 91, "restarts": 0, "spare": None},
     "children": [_child("fat", 93, state="unknown")], **ERROR},
    # its last-known tree, of this very process, which did not answer now
    {"id": "inner", "pid": 120, "zygote": {"pid": 121, "restarts": 0, "spare": None},
     "children": [_child("fat", 130, state="unknown")], **ERROR},
    # never seen answering: its spec
    {"id": "inner", "children": [_child("fat", None, state="unknown")], **ERROR},
    # an answer, but of another process than the one the root runs now
    {"id": "inner", "pid": 90, "zygote": {"pid": 91, "restarts": 0, "spare": None},
     "children": [_child("fat", 93)]},
], ids=["stale_previous_process", "stale_same_process", "spec_only", "other_process"])
def test_a_nested_tree_that_did_not_answer_for_its_current_pid_gives_no_pids(tree):
    r = roles_from_status(_status(_child("inner", 120, "supervisor", tree=tree)))
    assert r.supervisors == {100: "supervisor", 120: "inner"}  # its pid, now
    assert r.actors == {110: "resource"} and r.workers == {"resource": 110}
    assert r.zygotes == {101: "supervisor", 102: "supervisor"}
    assert r.unanswered == {120: False}  # its spec has no supervisor of its own


def test_an_unanswered_subtree_may_nest_if_its_spec_says_so_or_nothing_says():
    nested = _child("inner", 120, "supervisor", tree={
        "id": "inner", "children": [_child("deeper", None, "supervisor", state="unknown")],
        **ERROR})
    assert roles_from_status(_status(nested)).unanswered == {120: True}
    starting = _child("inner", 120, "supervisor", state="starting")  # not asked: no tree
    assert roles_from_status(_status(starting)).unanswered == {120: True}


def test_each_status_read_is_newer_than_the_ones_before():
    first, second = roles_from_status(_status(_child("x", 1))), Roles()
    assert second.serial > first.serial


# --- the sampler on fake trees ----------------------------------------------------------------

# Builds the process tree described by a JSON node {name, title?, subreaper?, orphan?,
# children?}: each process names itself (/proc/self/comm: its title, else its name, as a
# program it exec'd would be named), says "<name> <pid>", and
# waits for its stdin (shared) to close. An `orphan` is forked through a go-between that exits
# at once: it is reparented to the nearest subreaper above, as `(cmd &)` from a shell is.
BUILD = r"""
import ctypes, json, os, signal, sys

def be(node):
    with open("/proc/self/comm", "w") as f:
        f.write(node.get("title") or node["name"])
    if node.get("subreaper"):
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    sys.stdout.write(f"{node['name']} {os.getpid()}\n")
    sys.stdout.flush()
    for child in node.get("children", []):
        if os.fork() == 0:
            if child.get("orphan") and os.fork() != 0:
                os._exit(0)
            be(child)
    sys.stdin.buffer.read()
    os._exit(0)

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # (a go-between is reaped at once)
be(json.loads(sys.argv[1]))
"""


def node(name: str, *children: dict[str, Any], titled: bool = False,
         **flags: Any) -> dict[str, Any]:
    return {"name": name, "title": f"moorage[t]: {name}" if titled else None,
            "children": list(children), **flags}


@pytest.fixture
def build() -> Iterator[Callable[[dict[str, Any]], dict[str, int]]]:
    procs: list[tuple[subprocess.Popen, dict[str, int]]] = []

    def make(root: dict[str, Any]) -> dict[str, int]:
        def names(n: dict[str, Any]) -> list[str]:
            return [n["name"], *(x for c in n["children"] for x in names(c))]

        proc = subprocess.Popen([sys.executable, "-c", BUILD, json.dumps(root)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        pids: dict[str, int] = {}
        procs.append((proc, pids))
        for _ in names(root):
            name, pid = proc.stdout.readline().split()
            pids[name] = int(pid)
        return pids

    yield make
    for proc, pids in procs:
        end_built_tree(proc, pids)


def parent_of(pid: int) -> int:
    return psutil.Process(pid).ppid()


def roles_of(sample: Any) -> dict[int, tuple[str, str]]:
    return {r.pid: (r.role, r.owner) for r in sample.rows}


def nested_tree(*, orphan: bool) -> dict[str, Any]:
    """root -> its zygote -> inner (a nested supervisor, a subreaper) -> inner's zygote ->
    fat (an actor) -> sh -> cmd -> deep; and, with `orphan`, o -> oc -> occ orphaned to inner."""
    extra = [node("o", node("oc", node("occ")), orphan=True)] if orphan else []
    inner = node("inner", node("izygote", node("fat", node("sh", node("cmd", node("deep"))),
                                                   titled=True), titled=True),
                 *extra, titled=True, subreaper=True)
    return node("root", node("zygote", inner, titled=True), titled=True)


def test_an_unanswered_subtree_has_no_candidate_among_what_may_be_the_tree_s_own(build):
    p = build(nested_tree(orphan=True))
    wait_for(lambda: parent_of(p["o"]) == p["inner"], "o orphaned to inner")
    roles = Roles(root_pid=p["root"], supervisors={p["root"]: "supervisor", p["inner"]: "inner"},
                  zygotes={p["zygote"]: "supervisor"}, unanswered={p["inner"]: False})
    sample = TreeSampler().sample(roles)
    got = roles_of(sample)
    assert got[p["inner"]] == ("supervisor", "inner")  # by the pid its parent's entry has
    # Within two levels of it, anything may be its zygote or an actor of one (a replacement
    # zygote is untitled for a moment, and what it forks meanwhile too): never a candidate.
    assert got[p["izygote"]] == ("zygote", "inner")
    assert got[p["fat"]] == ("actor", "")
    assert got[p["o"]] == ("zygote", "inner")
    assert got[p["oc"]] == ("actor", "")
    # Below, an untitled process is surely none of the tree's own (its spec nests none).
    for name in ("sh", "cmd", "deep", "occ"):
        assert got[p[name]] == ("descendant", "inner"), name
    assert sample.doubts == 1  # (the status is asked again until inner answers)


def test_where_an_unanswered_subtree_may_nest_a_titled_process_may_be_a_supervisor(build):
    p = build(nested_tree(orphan=False))
    roles = Roles(root_pid=p["root"], supervisors={p["root"]: "supervisor", p["inner"]: "inner"},
                  zygotes={p["zygote"]: "supervisor"}, unanswered={p["inner"]: True})
    got = roles_of(TreeSampler().sample(roles))
    # izygote and fat may be supervisors (an adopted one, a nested one): sh may be fat's
    # zygote, and cmd an actor of it
    assert [got[p[n]][0] for n in ("izygote", "fat", "sh", "cmd")] == \
        ["zygote", "zygote", "zygote", "actor"]
    assert got[p["deep"]] == ("descendant", "inner")


def test_the_actor_of_a_restarted_nested_supervisor_is_not_a_descendant_of_the_old_one(build):
    """The defect the stale tree made: its pids were taken, not the entry's current one, and
    the new supervisor's actor was classed a descendant."""
    p = build(nested_tree(orphan=False))
    stale = {"id": "inner", "pid": 1, "zygote": {"pid": 2, "restarts": 0, "spare": None},
             "children": [{"id": "fat", "type": "worker", "state": "unknown", "pid": 3}],
             **ERROR}
    roles = roles_from_status({
        "id": "supervisor", "pid": p["root"],
        "zygote": {"pid": p["zygote"], "restarts": 0, "spare": None},
        "children": [_child("inner", p["inner"], "supervisor", tree=stale)]})
    got = roles_of(TreeSampler().sample(roles))
    assert got[p["inner"]] == ("supervisor", "inner")
    assert got[p["fat"]][0] != "descendant"


def test_a_child_of_a_supervisor_no_status_accounts_for_is_a_descendant_once_one_is_newer(build):
    p = build(node("root", node("zygote", node("actor", titled=True), titled=True),
                   node("spare", titled=True), node("stray", titled=True),
                   node("bg", node("bgchild")), titled=True, subreaper=True))
    def roles() -> Roles:
        return Roles(root_pid=p["root"], supervisors={p["root"]: "supervisor"},
                     zygotes={p["zygote"]: "supervisor", p["spare"]: "supervisor"},
                     actors={p["actor"]: "a"}, workers={"a": p["actor"]})

    s, first = TreeSampler(), roles()
    sample = s.sample(first)
    got = roles_of(sample)
    assert got[p["zygote"]] == got[p["spare"]] == ("zygote", "supervisor")  # as the status says
    assert got[p["actor"]] == ("actor", "a")
    # titled, though no status names it: the tree's own (a spare not yet known, say)
    assert got[p["stray"]] == ("zygote", "supervisor")
    # untitled: orphaned here, or a zygote started after the status was asked; not judged
    # until a newer status is (the actor asks for one)
    assert got[p["bg"]] == ("zygote", "supervisor") and sample.doubts == 1
    assert got[p["bgchild"]][0] == "actor"
    again = s.sample(first)
    assert roles_of(again)[p["bg"]] == ("zygote", "supervisor") and again.doubts == 1
    newer = s.sample(roles())
    got = roles_of(newer)
    assert got[p["bg"]] == ("descendant", "supervisor") and newer.doubts == 0
    assert got[p["bgchild"]] == ("descendant", "supervisor")
    assert got[p["stray"]] == ("zygote", "supervisor")


def test_a_titled_process_below_an_actor_is_the_actor_s_own(build):
    p = build(node("root", node("zygote", node("actor", node("fork", node("exec"), titled=True),
                                               titled=True), titled=True), titled=True))
    roles = Roles(root_pid=p["root"], supervisors={p["root"]: "supervisor"},
                  zygotes={p["zygote"]: "supervisor"}, actors={p["actor"]: "a"})
    got = roles_of(TreeSampler().sample(roles))
    assert got[p["fork"]] == ("actor", "a")  # a fork of it that has not exec'd
    assert got[p["exec"]] == ("descendant", "a")


# --- real trees -----------------------------------------------------------------------------------

STALE_TREE = """
[supervisor]
heartbeat = { interval_ms = 200, misses = 100000 }

[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"
[[children]]
id = "inner"
type = "supervisor"
[[children.children]]
id = "fat"
start = "tests.hog_actor:FatActor"
config = { mb = 200 }

[actor.resource]
interval_s = 1.0
calm_interval_s = 1.0
memory_budget_mb = 200
memory_metric = "pss"
cpu_weight = 0.0
kill_after_samples = 2
persist_after_samples = 1000
"""


def test_a_restarted_nested_supervisor_s_actor_is_never_killed_while_its_status_is_stale(
        make_tree):
    """inner is killed and restarted, and its successor stops answering once ready (here:
    SIGSTOPped, the resource actor stopped meanwhile so that no status of its asking reaches
    the new one first): the root answers for it with the previous process's tree. The fat
    actor under the new one holds the whole budget (critical throughout) and must not be
    killed."""
    tree = make_tree(STALE_TREE).start()
    resource = tree.child("resource")["pid"]
    stopped: list[int] = []

    def answered() -> dict | None:
        inner = tree.child("inner")  # (and the root's last-known tree of it: this one's)
        return inner if "error" not in inner["tree"] else None

    try:
        for _ in range(3):
            old = wait_for(answered, "inner answering")["pid"]
            os.kill(resource, signal.SIGSTOP)
            stopped.append(resource)
            os.kill(old, signal.SIGKILL)
            new = tree.wait_event(lambda e, old=old: e["event"] == "restarted"
                                  and e["child"] == "inner" and e["pid"] != old)["pid"]
            os.kill(new, signal.SIGSTOP)
            stopped.append(new)
            inner = next(c for c in tree.status()["children"] if c["id"] == "inner")
            assert inner["pid"] == new and "error" in inner["tree"]
            if inner["tree"].get("pid") == old:
                break
            # A status asked before the resource actor stopped reached the new inner first:
            # its last-known tree is its own. Again.
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            stopped.clear()
        else:
            pytest.fail("the root never answered for inner with the previous one's tree")
        (zygote,) = psutil.Process(new).children()
        (fat,) = zygote.children()
        os.kill(resource, signal.SIGCONT)
        stopped.remove(resource)

        stale_samples = []

        def sampled_at_critical() -> bool:
            st = tree.call("resource", "resource.status", {"fresh": True}, timeout=15)
            rows = {r["pid"]: r for r in st["processes"]}
            assert pid_running(fat.pid), f"fat was killed: {st['recent_alerts']}"
            assert st["counters"].get("kills", 0) == 0, st["recent_alerts"]
            assert rows[fat.pid]["role"] != "descendant", rows[fat.pid]
            assert rows[zygote.pid]["role"] != "descendant", rows[zygote.pid]
            if rows[new]["role"] == "supervisor" and st["pressure"] >= 81:  # the stale status
                assert rows[new]["id"] == "inner"
                stale_samples.append(st["sampler"]["samples"])
            return len(stale_samples) >= 4  # (a kill comes at the 2nd critical sample)

        wait_for(sampled_at_critical, "samples at critical with inner's status stale", 60)
        os.kill(new, signal.SIGCONT)
        stopped.remove(new)

        # inner answers again (the resource actor asks until it does): fat is named
        def fat_named() -> bool:
            st = tree.call("resource", "resource.status", {"fresh": True}, timeout=15)
            rows = {r["pid"]: r for r in st["processes"]}
            return (rows[fat.pid]["role"], rows[fat.pid]["id"]) == ("actor", "fat")

        wait_for(fat_named, "fat named by inner's own status", 30)
        assert pid_running(fat.pid)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


ORPHAN_TREE = """
[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"
[[children]]
id = "hog"
start = "tests.hog_actor:HogActor"

[actor.resource]
interval_s = 0.2
calm_interval_s = 1.0
calm_after_samples = 3
memory_budget_mb = 400
memory_metric = "pss"
cpu_weight = 0.0
kill_after_samples = 2
persist_after_samples = 1000
"""


def test_a_hog_orphaned_to_the_root_supervisor_is_the_runaway_killed(make_tree):
    """A hog started through `sh -c 'cmd &'` is reparented to the root supervisor (a
    subreaper). It is a descendant owned by the supervisor, and at critical it, the largest,
    is alerted and killed: not the smaller hog under the actor."""
    budget = 400
    tree = make_tree(ORPHAN_TREE).start()
    alerts = tree.client.subscribe("resource", ["resource.alert"], from_seq=1)
    baseline = tree.call("resource", "resource.status", {"fresh": True})["totals"]["memory"]
    assert baseline < 0.2 * budget * MB, f"the idle tree alone is at {baseline / MB:.0f} MB"
    mb = int(0.6 * budget - baseline / MB)  # the tree at 60%: not critical yet
    bg = tree.call("hog", "hog.background", {"mb": mb})["pid"]
    try:
        wait_for(lambda: parent_of(bg) == tree.pid, "the hog orphaned to the root")

        def sampled() -> dict | None:
            st = tree.call("resource", "resource.status", {"fresh": True})
            row = next((r for r in st["processes"] if r["pid"] == bg), None)
            return row if row and row["role"] == "descendant" and row["rss"] >= mb * MB \
                else None

        row = wait_for(sampled, "the orphaned hog sampled as a descendant, allocated", 15)
        assert row["id"] == "supervisor"
        # A smaller hog under the actor takes the tree past its budget.
        small = tree.call("hog", "hog.start", {"mb": int(0.35 * budget)})["pid"]
        seen: list[dict] = []

        def alert(action: str) -> dict:
            while True:
                ev = alerts.next(timeout=30)
                assert isinstance(ev, StreamMessage), f"no {action} alert; saw {seen}"
                seen.append(ev.body)
                if ev.body.get("action") == action:
                    return ev.body

        warn, killed = alert("warn"), alert("killed")
        assert warn["pid"] == killed["pid"] == bg, seen
        assert killed["id"] == "supervisor"
        assert wait_pid_exit(bg, 10)
        assert tree.call("hog", "sys.info")["hogs"] == [small]
        assert tree.call("resource", "resource.status")["counters"]["kills"] == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bg, signal.SIGKILL)
