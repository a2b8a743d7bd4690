"""Which process the resource actor may kill at critical: a user's process only when killing
it is what ends the critical level (the pressure without it under 81, or the user's processes
holding most of the tree's memory). When the memory is an actor's own, killing a user's
process frees a fraction of it and the tree stays critical: the user's process is spared,
`no_runaway` is alerted at once naming it, and the actors' own remedies take over.

The pure decision (escalation.choose_runaway, PressureModel.without, Escalation) on numbers,
then a real tree: a FakeActor holding most of the budget itself and a user's `python3` in a
terminal session, which must not be killed.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass

import psutil
import pytest

from moorage.actors.resource.escalation import Escalation, choose_runaway
from moorage.actors.resource.levels import CRITICAL, HIGH, PressureModel, Reading
from moorage.protocol.envelope import StreamMessage
from tests.conftest import pid_running
from tests.terminal_support import TERMINALS, env_for, make_home
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

MB = 1024 * 1024


@dataclass
class R:
    pid: int
    role: str
    memory: int


# --- the decision, on numbers ------------------------------------------------------------------


def by_memory(budget: int):
    """pressure_without for a tree whose pressure is its memory term alone."""
    def without(total: int):
        return lambda freed: round(100 * (total - freed) / budget)
    return without


def test_a_user_process_is_a_candidate_only_if_the_tree_leaves_critical_without_it():
    budget = 1000
    actors = [R(1, "supervisor", 50), R(2, "zygote", 20), R(3, "actor", 850)]
    user = R(9, "descendant", 170)
    rows = [*actors, user]
    total = sum(r.memory for r in rows)  # 1090: 109%, 92% without the user's process
    c = choose_runaway(rows, 100, by_memory(budget)(total))
    assert c.candidate is None and c.spared is user
    assert c.pressure_without == 92 and c.descendants_share == pytest.approx(170 / 1090)

    # The same process when the tree is over because of it: 850 -> 700 for the actor.
    rows = [R(1, "supervisor", 50), R(2, "zygote", 20), R(3, "actor", 700), user]
    total = sum(r.memory for r in rows)  # 940: 94%, 77% without it
    c = choose_runaway(rows, 100, by_memory(budget)(total))
    assert c.candidate is user and c.spared is None and c.pressure_without == 77


def test_when_user_processes_hold_most_of_the_memory_the_largest_goes_first():
    """Three user processes of 45% each: none alone brings the tree under critical, but
    they, not the actors, put it over; the largest is the candidate, the next one after."""
    budget = 1000
    rows = [R(3, "actor", 150), R(7, "descendant", 440), R(8, "descendant", 450),
            R(9, "descendant", 430)]
    total = sum(r.memory for r in rows)
    c = choose_runaway(rows, 100, by_memory(budget)(total))
    assert c.pressure_without == 102 and c.descendants_share > 0.5
    assert c.candidate is rows[2] and c.spared is None


def test_nothing_to_spare_when_no_process_is_large_enough():
    rows = [R(3, "actor", 900), R(7, "descendant", 50)]
    c = choose_runaway(rows, 100, by_memory(1000)(950))
    assert (c.candidate, c.spared, c.pressure_without) == (None, None, None)


def test_the_pressure_without_a_process_frees_its_memory_and_the_machines():
    model = PressureModel(1000, 2.0, cpu_weight=0.8, cpu_samples=1, system_reserve=0.10)
    r = Reading(memory_bytes=900, cpu_cores=0.5, system_total=10_000, system_available=500)
    p = model.feed(r)
    assert (p.value, round(p.memory), round(p.system)) == (90, 90, 50)
    assert model.without(r, 300) == 60  # the memory term: 600 of 1000
    # The machine's side: 2% available is 80; freeing 300 leaves 8%, 20.
    tight = Reading(memory_bytes=100, cpu_cores=0.0, system_total=10_000, system_available=200)
    assert model.feed(tight).value == 80
    assert model.without(tight, 600) == 20
    assert model.feed(tight).value == 80  # `without` changed nothing


def test_a_kill_needs_kill_after_samples_in_a_row_with_a_candidate():
    """A candidate warned of, then spared (an actor grew), then a candidate again: the
    critical samples without one do not count toward its kill."""
    e = Escalation(kill_after=2, persist_after=100)
    user = R(7, "descendant", 10)
    assert [d.kind for d in e.feed(CRITICAL, user)] == ["warn"]
    assert [d.kind for d in e.feed(CRITICAL, None)] == ["no_runaway"]
    assert e.feed(CRITICAL, user) == []  # (alerted already; one sample with it, not two)
    assert [d.kind for d in e.feed(CRITICAL, user)] == ["kill"]
    assert e.feed(HIGH, None) == []


# --- a real tree ----------------------------------------------------------------------------

BUDGET_MB = 300
USER_MB = 60  # 20% of the budget: over runaway_min_share (10%)
# The user's process: allocates and touches USER_MB, says so, then waits.
USER = (f"import sys; held = b'x' * ({USER_MB} << 20); print('user', 'holds', len(held) >> 20,"
        " flush=True); sys.stdin.read()")

TREE = f"""
[supervisor]
# (the resource actor is stopped for a moment below: no heartbeat may take it for hung)
heartbeat = {{ interval_ms = 200, misses = 100000 }}

[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"

[[children]]
id = "fat"
start = "tests.fakes:FakeActor"

{TERMINALS}parse = "local"

[actor.resource]
interval_s = 0.2
calm_interval_s = 1.0
memory_budget_mb = {BUDGET_MB}
memory_metric = "pss"
cpu_weight = 0.0          # memory alone moves the level
kill_after_samples = 2
persist_after_samples = 5  # "persisting": five critical samples, past any kill's two
"""


def stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def test_a_users_process_is_not_killed_when_the_memory_is_an_actors_own(make_tree, tmp_path):
    tree = make_tree(TREE).start()
    c = tree.client
    alerts = c.subscribe("resource", ["resource.alert"], from_seq=1)
    home = make_home(tmp_path)
    sid = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                 timeout=30)["session"]
    c.call("terminal", "term.write", {"session": sid,
                                      "data": f"{sys.executable} -c \"{USER}\"\r"})

    def user_row() -> dict | None:
        st = c.call("resource", "resource.status", {"fresh": True})
        return next((r for r in st["processes"] if r["role"] == "descendant"
                     and r["name"].startswith("python") and r["rss"] >= USER_MB * MB), None)

    user = wait_for(user_row, "the user's process holding its memory", 60)
    assert user["id"] == "ptykeeper"  # a shell's child: what the keeper owns
    total = c.call("resource", "resource.status", {"fresh": True})["totals"]["memory"]
    assert total < 0.6 * BUDGET_MB * MB, f"the tree is at {total / MB:.0f} MB already"

    # The fat actor takes the tree to 115% of its budget, about 95% without the user's
    # process. The resource actor is held stopped meanwhile, so that its next sample sees all
    # of it: a sample in the middle of the allocation (the tree at 85%, 65% without the user)
    # would rightly find the user's process the runaway.
    resource = tree.child("resource")["pid"]
    os.kill(resource, signal.SIGSTOP)
    try:
        wait_for(lambda: stopped(resource), "the resource actor stopped")
        c.call("fat", "fake.memory", {"mb": int(1.15 * BUDGET_MB - total / MB)}, timeout=30)
    finally:
        os.kill(resource, signal.SIGCONT)

    seen: list[dict] = []

    def alert(action: str) -> dict:
        while True:
            ev = alerts.next(timeout=30)
            assert isinstance(ev, StreamMessage), f"no {action} alert; saw {seen}"
            seen.append(ev.body)
            if ev.body.get("action") == action:
                return ev.body

    no_runaway = alert("no_runaway")
    assert not [a for a in seen if a["kind"] == "runaway"], seen  # (no warn, no kill)
    assert no_runaway["kind"] == "critical" and no_runaway["pressure"] >= 81
    assert no_runaway["spared"]["pid"] == user["pid"], no_runaway
    assert no_runaway["spared"]["pressure_without"] >= 81
    assert no_runaway["descendants_share"] < 0.5
    assert no_runaway["top"][0]["id"] == "fat"

    # Critical persists (the actors' own remedies are all there is): still no kill.
    alert("persisting")
    assert not [a for a in seen if a["kind"] == "runaway"], seen
    assert pid_running(user["pid"])
    status = c.call("resource", "resource.status", {"fresh": True})
    assert status["level"] == "critical" and status["counters"].get("kills", 0) == 0
    assert any(r["pid"] == user["pid"] for r in status["processes"])

    # The actor lets its memory go: the tree returns, the user's process with it.
    c.call("fat", "fake.memory", {"mb": 0})
    wait_for(lambda: c.call("resource", "resource.status", {"fresh": True})["level"]
             != "critical", "the tree out of critical")
    assert pid_running(user["pid"])
