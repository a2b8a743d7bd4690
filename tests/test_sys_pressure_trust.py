"""`sys.pressure` is the resource actor's to tell, and the tree's actors hold what the tree
is at.

A client's `sys.pressure {level: critical, quality: 0}` used to be taken by any actor: the
watcher paused watching and the terminal refused and closed sessions, for good, while the
tree stood at normal/3 (the resource actor told workers only when its own state changed).
Now an actor takes it only with the tree's token (`forbidden` otherwise), and the resource
actor tells a worker again whenever it does not hold the tree's state: after a tell that
failed, and when a worker's `sys.info` shows another state (a tell that was not its own).
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from moorage.actors.runtime import trust
from moorage.protocol.errors import MoorageError
from tests.pressure_support import told
from tests.terminal_support import TERMINALS, env_for, make_home
from tests.test_resource_tree import Watch
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

NORMAL_3 = {"level": "normal", "quality": 3}


def tree_config(resource: str = "", heartbeat_misses: int = 5) -> str:
    return f"""
[supervisor]
heartbeat = {{ interval_ms = 200, misses = {heartbeat_misses} }}

[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"

[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"

[[children]]
id = "fake"
start = "tests.fakes:FakeActor"

{TERMINALS}parse = "local"

[actor.resource]
interval_s = 0.2
calm_interval_s = 1.0
cpu_weight = 0.0  # memory alone moves the level: a busy machine leaves the tree at normal
{resource}
"""


def held(tree, actor: str) -> dict:
    return tree.call(actor, "sys.info")["pressure"]


def forbidden(call) -> None:
    with pytest.raises(MoorageError) as e:
        call()
    assert e.value.name == "forbidden", e.value


def test_a_clients_sys_pressure_is_refused_and_the_actors_stay_as_the_tree_is(
        make_tree, tmp_path):
    """The review's repro: critical/0 told by a client to the watcher and the terminal."""
    tree = make_tree(tree_config()).start()
    wait_for(lambda: tree.call("resource", "resource.status", {"fresh": True})["sampler"]
             ["samples"], "a first sample")
    crit = {"level": "critical", "quality": 0}
    for actor in ("watcher", "terminal", "fake", "supervisor"):
        forbidden(lambda a=actor: tree.call(a, "sys.pressure", crit))
        forbidden(lambda a=actor: tree.call(a, "sys.pressure", {**crit, "tok": "0" * 32}))
        # the right name under another key (this process's: the tree drew its own)
        forbidden(lambda a=actor: tree.call(a, "sys.pressure", told("critical", 0)))
        assert held(tree, actor) == NORMAL_3
    level = tree.call("resource", "resource.level")
    assert (level["level"], level["quality"]) == ("normal", 3)
    # What the forged tell would have stopped works.
    (tmp_path / "w").mkdir()
    tree.call("watcher", "fs.watch", {"path": str(tmp_path / "w")})
    tree.call("terminal", "term.create", {"shell": "bash", "env": env_for(make_home(tmp_path))},
              timeout=30)


def test_the_trees_token_is_what_sys_pressure_takes(spawn_actor, client):
    """An actor forked from this process holds its key, as a tree's actors hold theirs: the
    same call with the token is taken."""
    spawn_actor("tests.fakes:FakeActor", "fake")
    high = {"level": "high", "quality": 1}
    forbidden(lambda: client.call("fake", "sys.pressure", high))
    # the right key for another name (the actor's own, as its metrics pushes carry)
    forbidden(lambda: client.call("fake", "sys.pressure", {**high, "tok": trust.token("fake")}))
    assert client.call("fake", "sys.info")["pressure"] == NORMAL_3
    r = client.call("fake", "sys.pressure", told("high", 1))
    assert (r["level"], r["quality"]) == ("high", 1)
    assert client.call("fake", "sys.info")["pressure"] == high


def test_a_worker_told_another_state_is_told_the_trees_again(make_tree, tmp_path):
    """A tell that is not the resource actor's (here a process of the tree, which holds the
    token) leaves the watcher paused; the resource actor finds it in the watcher's
    `sys.info` and tells it the tree's state again."""
    tree = make_tree(tree_config()).start()
    Watch(tree)  # (its first sample has told every worker)
    (tmp_path / "w").mkdir()
    r = tree.call("fake", "fake.pressure", {"actor": "watcher", "level": "critical",
                                            "quality": 0})
    assert (r["level"], r["quality"]) == ("critical", 0)  # taken: the watcher paused

    def back() -> bool:
        # (a fresh status has the next sample taken at once, not after the calm interval:
        # a worker's sys.info is asked every few samples, each worker in turn)
        tree.call("resource", "resource.status", {"fresh": True})
        return held(tree, "watcher") == NORMAL_3

    wait_for(back, "the watcher back at normal/3", 60)
    tree.call("watcher", "fs.watch", {"path": str(tmp_path / "w")})
    status = tree.call("resource", "resource.status")
    assert status["counters"]["drifts"] >= 1 and status["level"] == "normal"


def test_a_tell_that_failed_is_told_again(make_tree):
    """The worker cannot answer (stopped) when the quality changes: its tell times out and
    is not run. It is told again at the samples after, until it answers."""
    tree = make_tree(tree_config("tell_timeout_s = 0.3", heartbeat_misses=100000)).start()
    w = Watch(tree)
    fake = tree.child("fake")["pid"]
    os.kill(fake, signal.SIGSTOP)
    try:
        wait_for(lambda: psutil.Process(fake).status() == psutil.STATUS_STOPPED,
                 "the fake actor stopped")
        tree.call("resource", "resource.quality.set", {"quality": 1, "duration_s": 600})
        ev = w.level(lambda b: b["quality"] == 1)
        assert ev["actions"]["fake"] == {"error": "timeout"}, ev["actions"]
        wait_for(lambda: tree.call("resource", "resource.status")["counters"]
                 .get("tells_retried"), "a tell sent again")
    finally:
        os.kill(fake, signal.SIGCONT)
    want = {"level": "normal", "quality": 1}
    wait_for(lambda: held(tree, "fake") == want, "the fake actor at normal/1", 30)
    assert held(tree, "watcher") == want
    assert tree.call("resource", "resource.status")["counters"]["told_failed"] >= 1
    assert tree.child("fake")["pid"] == fake  # the same process: told again, not restarted
