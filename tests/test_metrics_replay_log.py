"""The metrics actor's log across its own restart: the incidents it takes again from the
supervisor's retention are summed up in one line, while an incident seen live keeps its own.

A real tree (`moorage up`): a child is killed again and again, then the metrics actor itself,
whose record was never saved (`slo_save_s` far away), so its successor replays every one of
those incidents. The test reads the metrics log file the successor writes, and waits only on
facts: supervisor events, the SLO report, lines in that file.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.conftest import Tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

REPLAYED = 8  # incidents the restarted metrics actor takes from the retention

CONFIG = """
[supervisor]
intensity = 50
backoff = { initial_ms = 20, factor = 2.0, max_ms = 100 }
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[actor.metrics]
slo_save_s = 3600
"""


def kill_and_wait_restart(tree: Tree, child: str) -> tuple[int, int]:
    """SIGKILL `child`; (the pid killed, its successor's) once the supervisor says so."""
    old = tree.child(child)["pid"]
    os.kill(old, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == child
                         and e["pid"] != old)
    return old, ev["pid"]


def lines_of(tree: Tree, pid: int) -> list[str]:
    """The metrics log's INFO lines written by the metrics process `pid` (the file's level:
    debug lines are not written there)."""
    path = tree.state_dir / "logs" / "metrics.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    mine = re.compile(rf" INFO\s+metrics\[{pid}\] ")
    return [line for line in text.splitlines() if mine.search(line)]


def closed(tree: Tree, child: str, how: str) -> set[int]:
    """The pids of `child` whose incidents the metrics actor last closed `how`."""
    report = tree.call("metrics", "metrics.slo")
    return {i["pid"] for i in report["recent_incidents"]
            if i["child"] == child and i.get("how") == how}


def test_a_restart_sums_up_the_replayed_incidents_in_one_line_and_a_live_one_keeps_its_own(
        make_tree):
    tree = make_tree(CONFIG).start()
    killed = {kill_and_wait_restart(tree, "alpha")[0] for _ in range(REPLAYED)}
    _, metrics_pid = kill_and_wait_restart(tree, "metrics")

    # Nothing was saved: the successor takes every alpha incident from the supervisor's
    # retention, each closed at its successor's ready time.
    wait_for(lambda: closed(tree, "alpha", "ready") >= killed,
             f"the {REPLAYED} replayed alpha incidents closed")
    assert not [line for line in lines_of(tree, metrics_pid) if "alpha recovered" in line]
    summary = wait_for(lambda: [line for line in lines_of(tree, metrics_pid)
                                if "replayed" in line], "the replay's summary line")
    assert len(summary) == 1, summary
    assert f"replayed {REPLAYED} incidents" in summary[0]

    # An incident seen live is logged as it closes, timed by the successor's reply.
    live, _ = kill_and_wait_restart(tree, "alpha")
    wait_for(lambda: live in closed(tree, "alpha", "reply"), "the live alpha incident")
    told = [line for line in lines_of(tree, metrics_pid) if "alpha recovered" in line]
    assert len(told) == 1 and "(reply;" in told[0], told
    assert len(lines_of(tree, metrics_pid)) <= 5, lines_of(tree, metrics_pid)
