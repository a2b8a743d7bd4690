"""The SLO record on a real tree: recovery times that agree with the supervisor's events, a
record that survives a SIGKILL of the metrics actor, real data loss counted, and `moorage slo`.

Every wait is on a fact: a supervisor event, or a reply showing what the test waits for.
"""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
import zmq

from moorage.protocol import endpoints
from moorage.protocol.envelope import encode_request
from tests.conftest import Tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[actor.metrics]
slo_save_s = 0.2
[actor.alpha]
metrics_interval_s = 0.05
retention_messages = 5
"""



def slo(tree: Tree) -> dict:
    return tree.call("metrics", "metrics.slo")


def incident(tree: Tree, child: str, pid: int) -> dict | None:
    return next((i for i in slo(tree)["recent_incidents"]
                 if i["child"] == child and i["pid"] == pid), None)


def op_row(report: dict, window: str, op: str) -> dict | None:
    return next((o for o in report["windows"][window]["ops"] if o["op"] == op), None)


def test_the_recovery_time_of_a_sigkilled_actor_matches_what_the_supervisor_saw(make_tree):
    tree = make_tree(CONFIG).start()
    old = tree.child("alpha")["pid"]
    os.kill(old, signal.SIGKILL)
    exited = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "alpha")
    ready = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    inc = wait_for(lambda: incident(tree, "alpha", old), "the alpha incident")
    assert inc["exited_at"] == exited["time"]
    assert inc["type"] == "killed by SIGKILL" and exited["signal"] == signal.SIGKILL
    assert inc["new_pid"] == ready["pid"] != old
    assert inc["ready_ms"] == round((ready["time"] - exited["time"]) * 1000, 3)
    # Timed by a real reply of the successor, which comes after it reported ready.
    assert inc["how"] == "reply"
    assert inc["recovery_ms"] >= inc["ready_ms"] > 0
    summary = slo(tree)["windows"]["1h"]["recovery"]["by_type"]["killed by SIGKILL"]
    assert summary["count"] == 1 and summary["children"] == ["alpha"]
    assert summary["max_ms"] == inc["recovery_ms"]
    down = slo(tree)["windows"]["1h"]["down_s"]["alpha"]
    assert down == pytest.approx(inc["recovery_ms"] / 1000, abs=1e-3)


def test_a_hang_counts_from_the_last_sign_of_life_and_shows_in_the_failure_type_table(
        make_tree):
    tree = make_tree(CONFIG).start()
    old = tree.child("alpha")["pid"]
    os.kill(old, signal.SIGSTOP)
    hung = tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "alpha")
    exited = tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "alpha")
    # It stopped answering before the supervisor could tell (3 missed checks of 100 ms).
    assert hung["down_since"] < hung["time"] and exited["down_since"] == hung["down_since"]
    assert exited["time"] - exited["down_since"] >= 0.2
    inc = wait_for(lambda: incident(tree, "alpha", old), "the alpha incident")
    assert inc["type"] == "hung (missed heartbeats)"
    assert inc["exited_at"] == hung["down_since"]
    assert inc["recovery_ms"] >= (exited["time"] - hung["down_since"]) * 1000
    for window in ("1h", "24h", "30d"):
        row = slo(tree)["windows"][window]["recovery"]["by_type"]["hung (missed heartbeats)"]
        assert row["count"] == 1 and row["max_ms"] == inc["recovery_ms"]


def test_the_slo_windows_survive_a_sigkill_of_the_metrics_actor(make_tree):
    tree = make_tree(CONFIG).start()
    n = 30
    for _ in range(n):
        tree.call("alpha", "fake.work")
    wait_for(lambda: (op_row(slo(tree), "1h", "fake.work") or {}).get("requests") == n,
             f"{n} fake.work in the SLO windows")
    saves = tree.call("metrics", "sys.info")["slo_saves"]
    wait_for(lambda: tree.call("metrics", "sys.info")["slo_saves"] > saves,
             "a save of the record after the requests were merged")
    old = tree.child("metrics")["pid"]
    killed = tree.cli("kill", "metrics")
    assert killed.returncode == 0, killed.stderr
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "metrics")
    assert ev["pid"] != old
    report = slo(tree)
    for window in ("1h", "24h", "30d"):
        row = op_row(report, window, "fake.work")
        assert row is not None and row["requests"] == n and row["errors"] == 0, window
    # ... and its own death is on the record, timed from its own first loop turn.
    mine = wait_for(lambda: incident(tree, "metrics", old), "the metrics actor's incident")
    assert (mine["how"], mine["new_pid"]) == ("self", ev["pid"])


def test_a_replay_past_retention_is_counted_as_data_loss_and_alerted(make_tree):
    tree = make_tree(CONFIG).start()
    assert tree.call("alpha", "fake.publish", {"topic": "t", "n": 20})["last_seq"] == 20
    answer = tree.call("alpha", "replay", {"topic": "t", "from_seq": 3})
    assert answer["lost"] == [3, 15]  # retention kept the last 5
    alert = tree.wait_event(lambda e: e["event"] == "alert"
                            and e["alert"]["kind"] == "data_loss")["alert"]
    assert (alert["state"], alert["actor"], alert["op"], alert["value"]) == \
        ("raised", "alpha", "replay_beyond_retention", 13)
    report = slo(tree)
    assert report["windows"]["30d"]["loss"]["replay_beyond_retention"] == 13
    data_loss = next(o for o in report["slo"] if o["name"] == "data_loss")
    assert (data_loss["value"], data_loss["met"]) == (13, False)
    # From seq 1 is "whatever you still have": no gap, nothing counted.
    tree.call("alpha", "replay", {"topic": "t", "from_seq": 1})
    tree.call("alpha", "fake.work")
    wait_for(lambda: op_row(slo(tree), "1h", "fake.work"), "the next push")
    assert slo(tree)["windows"]["30d"]["loss"]["replay_beyond_retention"] == 13


def test_a_reply_whose_caller_gave_up_and_went_is_not_counted_as_lost(make_tree):
    """A caller that gave up at its deadline (a CLI's --timeout) and closed its connection
    before the answer: nothing is lost that it could still take, so no data_loss in the
    SLO; `sys.info` counts such replies apart."""
    tree = make_tree(CONFIG).start()
    actor = psutil.Process(tree.child("alpha")["pid"])
    rpc = endpoints.rpc(tree.runtime_dir, "alpha")

    def accepted() -> int:  # (the actor's ends of the connections to its request socket)
        return sum(1 for c in actor.net_connections(kind="unix") if c.laddr == rpc[6:])

    tree.call("alpha", "fake.count")  # (the tree's client connected first: counted here)
    before = accepted()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(rpc)
    sock.send_multipart(encode_request(1, "sid-gone", "fake.held", {}))
    wait_for(lambda: tree.call("alpha", "fake.count")["held"] == 1, "the call held")
    sock.close(0)
    ctx.term()  # (its descriptor closed when this returns)
    # The actor's I/O thread closes its end once it has read the end of the connection, the
    # end of the connection's pipe queued for the socket by then; a request after that has
    # the socket take it (on a loaded machine, requests over another connection could be
    # read first: the reply then went into the closing pipe, counted nowhere).
    wait_for(lambda: accepted() == before, "the actor's end of the closed connection closed")
    tree.call("alpha", "fake.count")
    tree.call("alpha", "fake.count")
    assert tree.call("alpha", "fake.release")["released"] == 1
    wait_for(lambda: tree.call("alpha", "sys.info")["replies_to_gone"] == 1,
             "the reply counted as one to a caller gone")
    tree.call("alpha", "fake.work")
    wait_for(lambda: op_row(slo(tree), "1h", "fake.work"), "the push after it")
    assert "replies_undelivered" not in slo(tree)["windows"]["30d"]["loss"]


def test_moorage_slo_prints_the_report_and_its_json(make_tree):
    tree = make_tree(CONFIG).start()
    old = tree.child("alpha")["pid"]
    os.kill(old, signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    wait_for(lambda: incident(tree, "alpha", old), "the alpha incident")
    out = tree.cli("slo")
    assert out.returncode == 0, out.stderr
    for text in ("availability", "error_rate", "recovery_time_s", "data_loss",
                 "killed by SIGKILL", "replies_undelivered", "alpha"):
        assert text in out.stdout, (text, out.stdout)
    js = tree.cli("slo", "--json")
    assert js.returncode == 0, js.stderr
    report = json.loads(js.stdout)
    assert set(report["windows"]) == {"1h", "24h", "30d"}
    assert report["windows"]["30d"]["recovery"]["count"] >= 1
