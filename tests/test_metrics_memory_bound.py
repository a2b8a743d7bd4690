"""What the metrics table holds is bounded in values, not only in keys, whatever is pushed.

A push of about 1 KB (9 ops, each histogram spread over every HDR bucket), which any client
may send on metrics.in without a token, once cost the metrics actor about 2 MiB of heap: a
full counter per one-second interval, 60 of them a series, and a lifetime counter per series
kept for the process's life. Now a window folds its intervals into at most SLOTS slots, the
table counts the values it holds against a budget with a capped share for clients, a share
past its budget is folded (largest series first) and then loses the latencies of its least
recently merged series (counts stay exact), and a client's further pushes in an interval past
the budget are merged counts only; all of it counted in the actor's `sys.info`.

The table is fed injected data and interval numbers; the actor runs in a real tree (`moorage
up`) and takes real pushes on its real socket; its memory is read from /proc against a
generous bound, never against a time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from moorage.actors.metrics.push import OpSample, decode_ops
from moorage.actors.metrics.series import (
    CLIENT_BUDGET,
    MAX_HELD,
    SLOTS,
    MetricsTable,
    coarse_value,
    coarsen,
    summarize,
)
from moorage.actors.metrics.slo import bin_top, latency_bin
from moorage.protocol.envelope import TAG, packb
from moorage.protocol.histogram import Recorder, summary
from perf.metrics_flood import OPS_PER_PUSH, every_bucket_hist, flood_frames, proc_kb, send
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

MB = 1024  # /proc's figures are in kB


# --- helpers -----------------------------------------------------------------------------------


def sample(op: str, values: list[int], error: int = 0) -> OpSample:
    """One op's share of a push holding `values` (the last `error` of them failed)."""
    r = Recorder()
    for v in values:
        r.record(v)
    [s] = decode_ops({op: {"ok": len(values) - error, "error": error,
                           "hist": r.histogram().encode()}})
    return s


def dense(op: str) -> OpSample:
    """An op whose histogram holds one value in every HDR bucket (the widest a push holds)."""
    enc, n = every_bucket_hist()
    [s] = decode_ops({op: {"ok": n, "error": 0, "hist": enc}})
    return s


def recount(table: MetricsTable) -> tuple[int, int]:
    """The values every series holds, counted afresh from its counters: (all, clients')."""
    held = client = 0
    for s in table.series.values():
        n = len(s.counts) + len(s.window.counts) + sum(len(b.counts) for b in s.window.slots)
        held += n
        client += n if s.client else 0
    return held, client


def figures(table: MetricsTable, actor: str, op: str) -> tuple[Any, ...]:
    s = table.series[(actor, op)]
    return (s.ok, s.error, s.caller, s.sum_us, s.window.ok, s.window.error, s.window.sum_us)


# --- the window's slots ------------------------------------------------------------------------


def test_a_windows_intervals_are_folded_into_slots_that_leave_whole():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10)
    assert table.slot_width == 60 // SLOTS
    for idx in range(60):
        table.merge("watcher", sample("fs.read", [100 + idx]), idx)
    w = table.series[("watcher", "fs.read")].window
    assert len(w.slots) == SLOTS
    assert w.ok == 60 and sum(w.counts.values()) == 60
    # The first slot (intervals 0-4) stays while its last interval is in the window ...
    assert table.expire(63) == [] and w.ok == 60
    # ... and leaves whole after it: the window never holds less than its 60 intervals.
    table.expire(64)
    assert (w.ok, len(w.slots), min(w.counts)) == (55, SLOTS - 1, 105)
    table.expire(60 + 59 + table.slot_width)
    assert (w.ok, w.held, len(w.counts)) == (0, 0, 0)
    assert recount(table) == (table.held, table.client_held) == (60, 0)  # the lifetime's


def test_expiring_says_when_the_next_slot_leaves_so_an_idle_actor_can_sleep_till_then():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10)
    table.expire(0)
    assert table.next_expiry is None  # nothing held: nothing to wake for
    table.merge("watcher", sample("fs.read", [100]), 7)  # slot 1 (intervals 5-9)
    table.merge("parser", sample("parse.feed", [100]), 12)  # slot 2 (10-14)
    table.expire(12)
    leaves = table.next_expiry
    assert leaves == 2 * table.slot_width + 60 - 1  # slot 1's last interval leaves the window
    assert table.expire(leaves - 1) == [] and table.next_expiry == leaves
    [gone] = table.expire(leaves)
    assert gone.op == "fs.read" and table.next_expiry == 3 * table.slot_width + 60 - 1


def test_a_short_window_still_expires_interval_by_interval():
    table = MetricsTable(window_s=SLOTS, bucket_s=1, max_keys=10)
    assert table.slot_width == 1
    for idx in range(SLOTS):
        table.merge("watcher", sample("fs.read", [10]), idx)
    table.expire(SLOTS)
    assert table.series[("watcher", "fs.read")].window.ok == SLOTS - 1


# --- the values held and the budget ------------------------------------------------------------


def test_held_values_are_counted_across_lifetimes_windows_and_slots_as_they_come_and_go():
    table = MetricsTable(window_s=10, bucket_s=1, max_keys=10, max_client_keys=10)
    for idx in range(30):
        table.merge("watcher", sample("fs.read", [idx % 7 * 1000 + 5, 3]), idx)
        table.merge("client.ed", sample("watcher/fs.read", [idx * 50 + 1]), idx)
        if idx % 4 == 0:
            table.expire(idx)
        assert recount(table) == (table.held, table.client_held)
    # the client's 30 distinct values: all in its lifetime, the last 10 in its window and one
    # in each of its 10 slots (a window of 10 intervals has slots of one)
    assert table.client_held == 30 + 10 + 10
    assert table.held_by(False) == table.held - table.client_held
    table.clear()
    assert (table.held, table.client_held) == (0, 0)


def test_a_clients_share_past_its_budget_is_folded_then_loses_its_oldest_latencies():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10, max_client_keys=50,
                         max_held=20_000, client_budget=8_000)
    table.merge("watcher", sample("fs.read", list(range(1, 3000, 3))), 0)
    actor_before = dict(table.series[("watcher", "fs.read")].counts)
    for idx in range(6):  # each push: 2 dense ops, 6 x 3,327 values before any bound
        for k in range(2):
            table.merge("client.flood", dense(f"a/op{idx * 2 + k}"), idx)
        assert table.bound(idx, client=True)
        assert table.client_held <= 8_000
        assert recount(table) == (table.held, table.client_held)
    assert table.over_budget == {True: 6, False: 0}
    assert table.folded_series == 12  # every flood series, the largest first
    assert table.dropped_series > 0 and table.dropped_values > 0
    # The latencies dropped are the oldest: the latest push's series hold theirs.
    latest = table.series[("client.flood", "a/op11")]
    assert latest.held and latest.coarse
    assert not table.series[("client.flood", "a/op0")].held
    # No series is dropped and no count changes.
    assert len(table.series) == 13
    per_op = every_bucket_hist()[1]
    for i in range(12):
        s = table.series[("client.flood", f"a/op{i}")]
        assert (s.ok, s.window.ok) == (per_op, per_op)
    # The actors' share was within its budget: their series are untouched, exact.
    assert not table.bound(5, client=False)
    assert table.series[("watcher", "fs.read")].counts == actor_before
    assert not table.series[("watcher", "fs.read")].coarse


def test_a_series_whose_latencies_were_dropped_holds_those_merged_after():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10, max_client_keys=10,
                         max_held=100, client_budget=10)
    table.merge("client.a", sample("x/op", list(range(1, 200))), 0)
    assert table.bound(0, client=True) and table.series[("client.a", "x/op")].held == 0
    s = table.series[("client.a", "x/op")]
    table.merge("client.a", sample("x/op", [7, 7, 9]), 1)
    assert not table.bound(1, client=True)
    assert s.ok == 202 and s.counts == Counter({coarse_value(7): 2, coarse_value(9): 1})
    assert summarize(s.window.ok, s.window.error, s.window.counts)["count"] == 202
    assert recount(table) == (table.held, table.client_held)


def test_a_push_merged_without_latencies_adds_its_counts_and_holds_nothing():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10, max_client_keys=10)
    s = table.merge("client.a", sample("x/op", [5, 6, 7], error=1), 0, latencies=False)
    assert s is not None
    assert (s.ok, s.error, s.window.ok, s.held, table.client_held) == (2, 1, 2, 0, 0)
    assert s.sum_us == 18


def test_folding_keeps_counts_exact_and_percentiles_within_the_slo_records_precision():
    values = [v for v in range(1, 2_000_000, 997)] + [3_000_000_000]
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10)
    for idx in range(0, 60, 7):
        table.merge("watcher", sample("fs.read", values, error=5), idx)
    s = table.series[("watcher", "fs.read")]
    exact = summarize(s.ok, s.error, s.counts)
    before = figures(table, "watcher", "fs.read")
    held = s.held
    s.fold()
    folded = summarize(s.ok, s.error, s.counts)
    assert figures(table, "watcher", "fs.read") == before
    assert s.held < held / 4
    for name in ("p50", "p90", "p99", "p999", "max"):
        assert exact[name] <= folded[name] <= exact[name] * 1.045, name
    assert coarsen(s.counts) == s.counts  # folding again changes nothing
    # The window's total stays the sum of its slots: everything expires to nothing.
    table.expire(60 + 60 + table.slot_width)
    assert (s.window.ok, s.window.held, dict(s.window.counts)) == (0, 0, {})


def test_a_coarse_value_is_its_slo_bins_top():
    for us in (1, 2, 255, 256, 1000, 123_456, 3_600_000_000):
        c = coarse_value(us)
        assert c == bin_top(latency_bin(us)) and us <= c <= us * 1.045 + 1
        assert coarse_value(c) == c


def test_the_clients_share_is_a_tenth_of_the_budget_and_the_actors_have_the_rest():
    assert CLIENT_BUDGET * 10 == MAX_HELD
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=2000, max_client_keys=500)
    assert table.budget(False) == MAX_HELD - CLIENT_BUDGET


# --- the actor, in a real tree -----------------------------------------------------------------


CONFIG = """
[supervisor]
heartbeat = { interval_ms = 200, misses = 5 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[actor.metrics]
window_s = 4
bucket_s = 1
"""

FLOOD = 150  # pushes: the review's first flood (34 MB -> 375 MB before the bound)


def _metrics_pid(tree: Any) -> int:
    return int(tree.child("metrics")["pid"])


def _info(tree: Any) -> dict[str, Any]:
    return tree.call("metrics", "sys.info")


def _flood_taken(tree: Any, n: int) -> dict[str, Any] | None:
    q = tree.call("metrics", "metrics.query", {"actor": "client.flood"}, timeout=30)
    return q if q["actors"].get("client.flood", {}).get("pushes") == n else None


def test_a_clients_flood_is_held_within_its_share_counted_and_its_counts_stay_exact(make_tree):
    tree = make_tree(CONFIG).start()
    pid = _metrics_pid(tree)
    base_kb = proc_kb(pid, "VmRSS")
    send(tree.runtime_dir, flood_frames(FLOOD))
    q = wait_for(lambda: _flood_taken(tree, FLOOD), f"the {FLOOD} pushes taken", timeout=120)

    info = _info(tree)
    assert info["client_held_values"] <= info["client_budget"] == CLIENT_BUDGET
    assert info["held_values"] <= info["held_budget"] == MAX_HELD
    # Each push (9 ops of 3,327 values) is past the clients' share alone: every one that
    # brought its latencies went past it, and was counted; the actors' share never was.
    assert info["over_budget_pushes"] == info["client_over_budget_pushes"] >= 1
    assert info["folded_series"] >= OPS_PER_PUSH
    assert info["client_pushes_extra"] >= info["client_pushes_counts_only"]
    # Not one request is lost: every row's counts are exact.
    _, per_op = every_bucket_hist()
    assert sum(r["lifetime"]["count"] for r in q["ops"]) == FLOOD * OPS_PER_PUSH * per_op
    assert {r["lifetime"]["error"] for r in q["ops"]} == {0}
    assert _metrics_pid(tree) == pid  # never restarted
    # Taken at its CPU share (PUSH_SHARE): the flood (~10 ms of CPU a push here, past the
    # burst's 0.1 s many times over) waited in the socket between turns, and nothing was lost.
    assert info["push_pauses"] >= 1
    # Its memory: unbounded, this flood took it 193 MB up (300 MB with the default 60 s
    # window); bounded, about 10.
    grown_mb = (proc_kb(pid, "VmHWM") - base_kb) / MB
    assert grown_mb < 100, f"the metrics actor grew {grown_mb:.0f} MB"

    # Once the window has gone by, only the lifetimes are held.
    held = info["held_values"]
    wait_for(lambda: _info(tree)["held_values"] < held, "the window's values expired",
             timeout=60)


HOUR_INTERVALS = CONFIG.replace("window_s = 4\nbucket_s = 1", "window_s = 3600\nbucket_s = 3600")


def test_a_clients_further_pushes_in_an_interval_past_the_budget_go_in_counts_only(make_tree):
    """An interval of an hour: of 5 pushes sent at once, at most one interval boundary falls
    between two, so one at least follows a push of its own interval that (9 new dense ops)
    went past the clients' budget. Its counts are taken, its latencies not, and it is counted."""
    assert "bucket_s = 3600" in HOUR_INTERVALS
    tree = make_tree(HOUR_INTERVALS).start()
    send(tree.runtime_dir, flood_frames(5))
    q = wait_for(lambda: _flood_taken(tree, 5), "the 5 pushes taken", timeout=120)
    info = _info(tree)
    assert info["client_pushes_extra"] >= info["client_pushes_counts_only"] >= 1
    assert info["client_over_budget_pushes"] >= 1
    assert info["client_held_values"] <= CLIENT_BUDGET
    _, per_op = every_bucket_hist()
    assert [r["lifetime"]["count"] for r in q["ops"]] == [per_op] * 5 * OPS_PER_PUSH
    # the ops of a push that came in counts only hold no latency
    bare = [r for r in q["ops"] if r["lifetime"]["max"] == 0]
    assert len(bare) >= OPS_PER_PUSH * info["client_pushes_counts_only"]
    log = (tree.state_dir / "logs" / "metrics.log").read_text()
    assert "client push merged without its latencies" in log


def test_a_client_pushing_after_a_flood_keeps_exact_figures(make_tree):
    """The flood's series are the largest, folded first, and the oldest, dropped first: a
    client that pushes once beside it keeps every figure as exact as without a flood."""
    tree = make_tree(CONFIG).start()
    send(tree.runtime_dir, flood_frames(20))
    wait_for(lambda: _flood_taken(tree, 20), "the flood taken", timeout=120)
    r = Recorder()
    for v in (120, 130, 130, 4_000, 250_000):
        r.record(v)
    send(tree.runtime_dir, [[TAG, packb({"actor": "client.editor", "pid": 1, "ep": "s"}),
                             packb({"watcher/fs.read": {"ok": 4, "error": 1,
                                                         "hist": r.histogram().encode()}})]])
    [row] = wait_for(lambda: tree.call("metrics", "metrics.query",
                                       {"actor": "client.editor"})["ops"], "the editor's row")
    assert (row["lifetime"]["ok"], row["lifetime"]["error"]) == (4, 1)
    expected = summary(r.histogram())
    for fig in (row["lifetime"], row["window"]):
        assert {k: fig[k] for k in expected} == expected
