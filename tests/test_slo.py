"""The SLO record's pure parts on an injected clock: windows, bins, downtime, persistence,
recovery incidents from supervisor events, the report's objectives, data-loss alerts and the
loss counters' way through a push."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from moorage.actors.metrics.alerts import AlertPolicy, Alerts
from moorage.actors.metrics.push import BadPush, decode_push
from moorage.actors.metrics.record import SloRecord
from moorage.actors.metrics.recovery import RecoveryTracker, failure_type
from moorage.actors.metrics.settings import Settings
from moorage.actors.metrics.slo import (
    HOUR,
    STATE_VERSION,
    SloStore,
    bin_top,
    latency_bin,
    load_state,
    percentile,
    save_state,
)
from moorage.actors.metrics.slo_report import Objectives, build_report
from moorage.actors.runtime import trust
from moorage.actors.runtime.stats import LOSS_COUNTERS, LossCounters
from moorage.protocol.envelope import TAG, packb

pytestmark = pytest.mark.timeout(60)

T0 = 1_800_000_000.0  # a whole hour: 500000 x 3600
DAY = 24 * HOUR


def ev(name: str, child: str, t: float, **kw) -> dict:
    return {"event": name, "supervisor": "supervisor", "child": child, "time": t, **kw}


def killed(child: str, t: float, pid: int = 100) -> dict:
    return ev("exited", child, t, pid=pid, reason="abnormal", code=None, signal=9, detail="")


# --- bins and windows --------------------------------------------------------------------------


@pytest.mark.parametrize("us", [1, 2, 3, 15, 16, 17, 100, 999, 1000, 1024, 65_535, 10**6,
                                3_600_000_000])
def test_a_latency_is_reported_at_most_4_4_percent_high_and_never_low(us):
    top = bin_top(latency_bin(us))
    assert us <= top <= max(us + 1, us * 1.0443)
    assert percentile(Counter({latency_bin(us): 7}), 99) == top


def test_figures_fall_out_of_each_window_as_its_time_passes():
    s = SloStore()
    s.add_ops("w", "fs.read", 10, 1, {100: 11}, T0)
    s.add_ops("w", "fs.read", 5, 0, {200: 5}, T0 + 30 * 60)
    s.add_ops("w", "fs.read", 7, 0, {300: 7}, T0 + 2 * HOUR)
    now = T0 + 2 * HOUR + 10
    assert s.window("1h", now).ops[("w", "fs.read")].ok == 7
    assert s.window("24h", now).ops[("w", "fs.read")].ok == 22
    later = T0 + 2 * DAY
    assert ("w", "fs.read") not in s.window("24h", later).ops
    assert s.window("30d", later).ops[("w", "fs.read")].requests == 23
    assert s.window("30d", T0 + 31 * DAY).ops == {}
    s.add_ops("w", "fs.read", 1, 0, {1: 1}, T0 + 31 * DAY)  # the ring forgets what is past
    assert len(s.hours.buckets) == 1 and len(s.minutes.buckets) == 1


def test_downtime_is_shared_between_the_buckets_it_spans():
    s = SloStore()
    s.add_down("parser", T0 + 59.5, T0 + 61.0)  # across a minute boundary
    assert sorted(b.down["parser"] for b in s.minutes.buckets.values()) == [0.5, 1.0]
    assert s.window("1h", T0 + 120).down["parser"] == pytest.approx(1.5)
    assert s.window("30d", T0 + 120).down["parser"] == pytest.approx(1.5)


def test_observed_time_adds_up_tick_by_tick_and_a_long_gap_is_not_counted():
    s = SloStore()
    for i in range(11):
        s.observe(T0 + i)
    s.observe(T0 + 10 + 3600)  # the metrics actor was away
    s.observe(T0 + 11 + 3600)
    assert s.window("24h", T0 + 3700).observed == pytest.approx(11.0)


# --- persistence -------------------------------------------------------------------------------


def _filled() -> tuple[SloStore, RecoveryTracker]:
    s = SloStore()
    s.add_ops("w", "fs.read", 10, 2, {100: 11, 5000: 1}, T0)
    s.add_loss("w", {"stream_lost": 3}, T0 + 1)
    s.add_down("parser", T0 + 2, T0 + 2.5)
    s.observe(T0)
    s.observe(T0 + 5)
    r = RecoveryTracker()
    r.take("ep", 1, killed("parser", T0 + 2))
    inc = r.take("ep", 2, ev("restarted", "parser", T0 + 2.4, pid=101))
    assert inc is not None
    r.close(inc, T0 + 2.5, "reply")
    r.take("ep", 3, killed("watcher", T0 + 3))
    return s, r


def test_the_record_round_trips_through_msgpack_unchanged():
    s, r = _filled()
    s2 = SloStore.from_state(msgpack.unpackb(packb(s.to_state())))
    r2 = RecoveryTracker()
    r2.load(msgpack.unpackb(packb(r.to_state())))
    now = T0 + 10
    targets = {"fs.read": 1000.0}
    assert build_report(s2, r2, now, targets, Objectives()) == \
        build_report(s, r, now, targets, Objectives())
    assert r2.seen("ep", 3) and not r2.seen("ep", 4) and not r2.seen("other", 1)


def test_a_saved_file_is_replaced_whole_and_read_back(tmp_path: Path):
    s, r = _filled()
    path = tmp_path / "metrics-slo.msgpack"
    save_state(path, {"v": STATE_VERSION, "slo": s.to_state(), "recovery": r.to_state()})
    save_state(path, {"v": STATE_VERSION, "slo": s.to_state(), "recovery": r.to_state()})
    assert sorted(os.listdir(tmp_path)) == ["metrics-slo.msgpack"]  # no temp file left
    back = load_state(path)
    assert back is not None and SloStore.from_state(back["slo"]).to_state() == s.to_state()
    assert load_state(tmp_path / "none") is None


@pytest.mark.parametrize("content", [
    b"\xc1garbage", packb({"v": 99}), packb([1, 2]),
    packb({"v": STATE_VERSION, "slo": {"first": None, "minutes": [[1]], "hours": []},
           "recovery": {}}),
    packb({"v": STATE_VERSION, "slo": {"first": None, "minutes": [packb([1])], "hours": []},
           "recovery": {}}),
    packb({"v": STATE_VERSION, "slo": {"first": None, "minutes": [], "hours": []},
           "recovery": {"closed": [["x"]]}})])
def test_an_unreadable_record_is_set_aside_and_the_record_starts_afresh(tmp_path, content):
    path = tmp_path / "metrics-slo.msgpack"
    path.write_bytes(content)
    rec = SloRecord(path, Settings.from_config({}))
    rec.load(T0)
    assert not rec.loaded and rec.store.first is None and not rec.tracker.closed
    assert not path.exists()
    assert (tmp_path / f"metrics-slo.msgpack.corrupt-{int(T0)}").read_bytes() == content
    rec.store.add_ops("a", "b", 1, 0, {1: 1}, T0)
    rec.dirty = True
    rec.save(T0)
    rec.flush()  # the write runs on its own thread
    assert rec.saves == 1 and load_state(path) is not None


def test_an_incident_whose_probe_was_on_the_way_closes_at_ready_when_loaded(tmp_path):
    r = RecoveryTracker()
    r.take("ep", 1, killed("parser", T0))
    r.take("ep", 2, ev("restarted", "parser", T0 + 0.02, pid=101))  # probe sent, then killed
    path = tmp_path / "slo"
    save_state(path, {"v": STATE_VERSION, "slo": SloStore().to_state(), "recovery": r.to_state()})
    rec = SloRecord(path, Settings.from_config({}))
    rec.load(T0 + 5)
    [inc] = rec.tracker.closed
    assert (inc.how, inc.recovery_ms) == ("ready", pytest.approx(20.0))
    assert rec.store.window("1h", T0 + 5).down["parser"] == pytest.approx(0.02)


# --- recovery incidents ------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "kind"), [
    ({"reason": "abnormal", "signal": 9}, "killed by SIGKILL"),
    ({"reason": "abnormal", "signal": 9, "detail": "missed heartbeats"},
     "hung (missed heartbeats)"),
    ({"reason": "abnormal", "signal": 9, "detail": "start timeout"}, "start timeout"),
    ({"reason": "abnormal", "code": 3}, "exit code 3"),
    ({"reason": "normal", "code": 0}, "exit code 0"),
    ({"reason": "abnormal", "detail": "fork: EAGAIN"}, "could not start"),
    ({"reason": "shutdown", "signal": 15}, None),
])
def test_the_failure_type_is_the_exit_reason(fields, kind):
    assert failure_type(fields) == kind


def test_an_incident_runs_from_the_exit_to_the_first_good_reply():
    r = RecoveryTracker()
    assert r.take("ep", 1, ev("started", "parser", T0 - 5, pid=100)) is None
    assert r.take("ep", 2, killed("parser", T0)) is None
    inc = r.take("ep", 3, ev("restarted", "parser", T0 + 0.010, pid=101))
    assert inc is not None and inc.new_pid == 101
    assert r.close(inc, T0 + 0.012, "reply")
    assert not r.close(inc, T0 + 0.5, "reply")  # once
    summary = r.summary(T0 - 1)
    assert summary["count"] == 1
    assert summary["by_type"]["killed by SIGKILL"]["max_ms"] == pytest.approx(12.0)
    assert inc.describe(r.rto("parser"))["ready_ms"] == pytest.approx(10.0)


def test_a_successor_that_dies_before_answering_keeps_the_outage_open():
    r = RecoveryTracker()
    r.take("ep", 1, killed("terminal", T0))
    inc = r.take("ep", 2, ev("restarted", "terminal", T0 + 0.01, pid=101))
    r.take("ep", 3, killed("terminal", T0 + 0.02, pid=101))
    assert inc is not None and not r.close(inc, T0 + 0.03, "reply")  # that probe lost its target
    again = r.take("ep", 4, ev("restarted", "terminal", T0 + 1.5, pid=102))
    assert again is inc and inc.deaths == 2
    r.close(inc, T0 + 1.6, "reply")
    assert r.summary(T0)["by_type"]["killed by SIGKILL"]["over_rto"] == 1  # terminal: 1 s


def test_a_requested_stop_is_no_incident_and_a_new_tree_abandons_open_ones():
    r = RecoveryTracker()
    r.take("ep", 1, ev("exited", "parser", T0, reason="shutdown", signal=15))
    assert not r.open
    r.take("ep", 2, killed("watcher", T0 + 1))
    r.take("ep2", 1, ev("started", "watcher", T0 + 100, pid=5))
    assert not r.open and r.abandoned == 1 and not r.closed


# --- the report --------------------------------------------------------------------------------


def test_the_report_judges_each_objective_over_its_own_window():
    s, r = SloStore(), RecoveryTracker()
    for i in range(101):
        s.observe(T0 + i)
    r.take("ep", 1, ev("started", "a", T0, pid=1))
    r.take("ep", 2, ev("started", "b", T0, pid=2))
    r.take("ep", 3, killed("a", T0 + 10))
    inc = r.take("ep", 4, ev("restarted", "a", T0 + 10.05, pid=3))
    assert inc is not None
    r.close(inc, T0 + 10.1, "reply")
    s.add_down("a", T0 + 10, T0 + 10.1)
    s.add_ops("a", "fs.read", 999, 1, {50: 980, 4000: 20}, T0 + 20)
    rep = build_report(s, r, T0 + 100, {"fs.read": 1000.0}, Objectives())
    slo = {o["name"]: o for o in rep["slo"]}
    assert slo["availability"]["value"] == pytest.approx(1 - 0.1 / 200)
    assert slo["availability"]["met"] is True
    assert slo["error_rate"]["value"] == pytest.approx(0.001)
    assert slo["error_rate"]["met"] is False
    assert slo["p99_latency_us"]["met"] is True
    assert slo["recovery_time_s"]["value"] == pytest.approx(0.1)
    assert slo["data_loss"] == {**slo["data_loss"], "value": 0, "met": True}
    [op] = rep["windows"]["1h"]["ops"]
    assert (op["op"], op["target_p99_us"], op["met"]) == ("fs.read", 1000.0, False)
    assert op["p99_us"] >= 4000


def test_an_open_incident_counts_as_down_until_now():
    s, r = SloStore(), RecoveryTracker()
    s.observe(T0)
    s.observe(T0 + 50)
    r.take("ep", 1, killed("a", T0 + 40))
    rep = build_report(s, r, T0 + 50, {}, Objectives())
    assert rep["windows"]["1h"]["down_s"] == {"a": 10.0}
    assert rep["open_incidents"][0]["child"] == "a"


# --- data loss: counters, pushes, alerts -------------------------------------------------------


def test_loss_counters_drain_and_a_refused_push_restores_them():
    c = LossCounters()
    c.add("stream_lost", 3)
    c.add("stream_lost", 0)
    drained = c.drain()
    assert drained == {"stream_lost": 3} and not c.pending()
    c.add("calls_unanswered")
    c.restore(drained)
    assert c.drain() == {"stream_lost": 3, "calls_unanswered": 1}
    assert set(LOSS_COUNTERS) >= {"stream_lost", "calls_unanswered"}


def test_a_push_header_carries_loss_counts_and_a_bad_one_is_refused_whole():
    header = {"actor": "w", "pid": 1, "ep": "e", "loss": {"replies_undelivered": 2},
              "tok": trust.token("w")}  # as the tree's own actor `w` makes it
    assert decode_push([TAG, packb(header), packb({})]).loss == {"replies_undelivered": 2}
    assert decode_push([TAG, packb({**header, "loss": None}), packb({})]).loss == {}
    for bad in ({"stream_lost": -1}, {"stream_lost": "1"}, [1], {"": 1},
                {"made_up_counter": 1}, {str(i): 1 for i in range(40)}):
        with pytest.raises(BadPush):
            decode_push([TAG, packb({**header, "loss": bad}), packb({})])


def test_a_data_loss_alert_is_raised_once_and_cleared_when_the_hour_holds_none():
    a = Alerts(AlertPolicy(), window_s=60)
    [raised] = a.evaluate_loss("w", "stream_lost", 3, now=1)
    assert (raised["kind"], raised["state"], raised["window_s"]) == ("data_loss", "raised", 3600)
    assert a.evaluate_loss("w", "stream_lost", 5, now=2) == []
    [cleared] = a.evaluate_loss("w", "stream_lost", 0, now=3)
    assert cleared["state"] == "cleared" and not a.active


def test_a_window_read_twice_sees_writes_to_current_and_closed_buckets():
    s = SloStore()
    t0 = 100 * HOUR
    s.add_ops("a", "x", 1, 0, {10: 1}, t0)
    s.add_ops("a", "x", 1, 0, {10: 1}, t0 + HOUR)
    assert s.window("24h", t0 + HOUR).ops[("a", "x")].ok == 2
    s.add_ops("a", "x", 1, 0, {10: 1}, t0 + HOUR + 1)  # the current hour
    assert s.window("24h", t0 + HOUR + 1).ops[("a", "x")].ok == 3
    s.add_down("c", t0 + 10, t0 + 20)  # a closed hour
    assert s.window("24h", t0 + HOUR + 2).down["c"] == 10
    s.add_ops("a", "x", 1, 0, {10: 1}, t0 + 2 * HOUR)  # the ring moves on
    assert s.window("24h", t0 + 2 * HOUR).ops[("a", "x")].ok == 4


def test_the_p99_objective_leaves_out_the_ops_whose_time_is_the_users():
    s, r = SloStore(), RecoveryTracker()
    s.add_ops("terminal", "term.exec", 50, 0, {5_000_000: 50}, T0)  # `sleep 5`
    s.add_ops("watcher", "fs.read", 950, 0, {300: 950}, T0)
    rep = build_report(s, r, T0 + 1, {}, Objectives())
    assert rep["windows"]["1h"]["p99_us"] < 400
    assert rep["windows"]["1h"]["requests"] == 1000
    rep = build_report(s, r, T0 + 1, {}, Objectives.from_config({"p99_exclude": []}))
    assert rep["windows"]["1h"]["p99_us"] >= 5_000_000
    with pytest.raises(ValueError):
        Objectives.from_config({"p99_exclude": "term.exec"})
