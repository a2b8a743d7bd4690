"""Alerts end to end: real failed requests in a real tree raise one alert on the root's
`supervisor.pub` (where an editor listens), however many pushes carry the burst, and it clears.
"""

from __future__ import annotations

from typing import Any

import pytest

from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[actor.metrics]
alert_min_samples = 20
alert_failure_rate = 0.10
[actor.alpha]
metrics_interval_s = 0.05
"""



def errors_merged(tree: Any) -> int:
    rows = tree.call("metrics", "metrics.query", {"actor": "alpha", "op": "fake.work"})["ops"]
    return rows[0]["window"]["error"] if rows else 0


def test_a_failure_burst_raises_one_alert_on_supervisor_pub_and_it_clears(make_tree):
    tree = make_tree(CONFIG).start()
    # Three batches of failed fake.work (the service's failures: bad arguments, the caller's,
    # would not count), each merged before the next, so the metrics actor evaluates the
    # failure rate again and again while it stays high.
    for batch in range(1, 4):
        for _ in range(10):
            with pytest.raises(MoorageError) as err:
                tree.call("alpha", "fake.work", {"fail": True})
            assert err.value.name == "internal"
        wait_for(lambda b=batch: errors_merged(tree) == 10 * b, f"batch {batch} merged")
    raised = tree.wait_event(lambda e: e["event"] == "alert" and e["alert"]["state"] == "raised"
                             and e["alert"]["kind"] == "failure_rate")
    assert raised["source"] == "metrics"
    assert (raised["alert"]["kind"], raised["alert"]["actor"], raised["alert"]["op"]) == \
        ("failure_rate", "alpha", "fake.work")
    for _ in range(400):  # 30 errors in 430 requests: 7%, under the clear level (8%)
        tree.call("alpha", "fake.work")
    cleared = tree.wait_event(lambda e: e["event"] == "alert"
                              and e["alert"]["state"] == "cleared"
                              and e["alert"]["kind"] == "failure_rate")
    assert (cleared["alert"]["kind"], cleared["alert"]["op"]) == ("failure_rate", "fake.work")
    # Everything supervisor.pub carried for that op: one raised, one cleared.
    replay = tree.client.subscribe("supervisor", ["sup.event"], from_seq=1)
    try:
        seen: list[dict] = []
        while True:
            ev = replay.next(timeout=10)
            assert isinstance(ev, StreamMessage), ev
            if ev.body["event"] == "alert" and ev.body["alert"]["op"] == "fake.work":
                seen.append(ev.body["alert"])
            if ev.body == cleared:
                break
    finally:
        replay.close()
    assert [(a["kind"], a["state"]) for a in seen] == [("failure_rate", "raised"),
                                                       ("failure_rate", "cleared")]
    alerts = tree.call("metrics", "metrics.alerts")
    assert alerts["active"] == [] and alerts["raised_total"] == 1
