"""The SLO record holds the tree's own figures, within a bound, and reading it never looks hung.

A client's pushes (`client.<name>`) are shown beside the service time by metrics.query and
never counted in the SLO; the record keeps at most `max_keys` (actor, op) keys whatever the
resets and restarts, and a saved record holding more (or a client's) loads without them; the
ops that walk every series or key beat as they go, so the supervisor, watching real beats,
never takes a long read for a hang. Op names are held to the client name's rule (no control
character), and a pushed time of 0 µs is taken as 1.

Pure parts are fed injected data and an injected clock; the trees are real (a forked metrics
actor, or `moorage up` with its supervisor's heartbeats), and every wait is on a fact.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hdrh.histogram import HdrHistogram

from moorage.actors.metrics.push import BadPush, decode_ops
from moorage.actors.metrics.record import SloRecord
from moorage.actors.metrics.recovery import RecoveryTracker
from moorage.actors.metrics.series import summarize
from moorage.actors.metrics.settings import Settings
from moorage.actors.metrics.slo import (
    HOUR,
    MINUTE,
    STATE_VERSION,
    SloStore,
    load_state,
    save_state,
)
from moorage.protocol import endpoints
from moorage.protocol.envelope import TAG, packb
from moorage.protocol.histogram import new_histogram
from tests.conftest import Tree as UpTree
from tests.test_metrics_actor import (
    METRICS,
    Tree,
    forked_tree,
    op_entry,
    push_frames,
    query,
    row,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

T0 = 1_700_000_000.0  # an injected wall clock


def client_push(name: str, body: dict[str, Any]) -> list[bytes]:
    """A push as a process outside the tree makes it (no token)."""
    return [TAG, packb({"actor": f"client.{name}", "pid": 1, "ep": "s"}), packb(body)]


def hdrh_hist(values: list[int]) -> bytes:
    """Encoded by an HdrHistogram library (which records a 0 at index 0), not by our Recorder."""
    h: HdrHistogram = new_histogram()
    for v in values:
        h.record_value(v)
    return h.encode()


# --- the record's keys -------------------------------------------------------------------------


def test_the_record_takes_no_clients_figures():
    s = SloStore()
    assert not s.add_ops("client.editor", "terminal/term.exec", 5, 1, {5_000_000: 6}, T0)
    assert s.add_ops("terminal", "term.exec", 5, 0, {300: 5}, T0)
    for name in ("1h", "24h", "30d"):
        assert list(s.window(name, T0).ops) == [("terminal", "term.exec")]
    assert s.dropped_keys == 0  # a client's were never the record's: not counted as dropped


def test_the_record_keeps_at_most_max_keys_and_their_room_comes_back_when_they_age_out():
    s = SloStore(max_keys=3)
    for i in range(5):
        s.add_ops("a", f"op{i}", 1, 0, {100: 1}, T0)
    assert sorted(s.window("30d", T0).ops) == [("a", "op0"), ("a", "op1"), ("a", "op2")]
    assert s.dropped_keys == 2
    assert s.add_ops("a", "op0", 1, 0, {100: 1}, T0 + 1)  # a key it holds is still added to
    assert s.window("1h", T0 + 1).ops[("a", "op0")].requests == 2
    # 31 days on, the old hours are gone and their keys with them: room for new ones
    later = T0 + 31 * 24 * HOUR
    assert s.add_ops("a", "op9", 1, 0, {100: 1}, later)
    assert list(s.window("30d", later).ops) == [("a", "op9")]
    assert len(s.hours.keys) == 1


def _bucket_row(idx: int, keys: list[tuple[str, str]], bins: int) -> bytes:
    """A bucket as the record's file holds it: [idx, observed s, ops, loss, down], an op
    [actor, op, ok, error, [[bin, count]...], caller], each key one request in each of `bins`
    latency bins."""
    counts = [[b, 1] for b in range(bins)]
    return packb([idx, 1.0, [[a, o, bins, 0, counts, 0] for a, o in sorted(keys)], [], []])


def _record_with(path: Path, keys: list[tuple[str, str]], recent: list[tuple[str, str]],
                 now: float, bins: int = 3) -> None:
    """A saved record whose current minute and hour hold `recent` and whose hour of a day ago
    holds `keys` (as an older version wrote it, clients' included)."""
    hour = int(now // HOUR)
    slo = {"first": now - 24 * HOUR,
           "minutes": [_bucket_row(int(now // MINUTE), recent, bins)],
           "hours": [_bucket_row(hour - 24, keys, bins), _bucket_row(hour, recent, bins)]}
    save_state(path, {"v": STATE_VERSION, "saved_at": now, "slo": slo,
                      "recovery": RecoveryTracker().to_state()})


def test_a_saved_record_loads_without_clients_keys_or_keys_past_max_keys(tmp_path):
    path = tmp_path / "metrics-slo.msgpack"
    old = [("client.g", f"x/op{i}") for i in range(40)] + [("w", f"old{i}") for i in range(20)]
    recent = [("w", "fs.read"), ("client.g", "w/fs.read")]
    _record_with(path, old, recent, T0)
    rec = SloRecord(path, Settings.from_config({"max_keys": 5}))
    rec.load(T0)
    assert rec.loaded
    kept = set(rec.store.window("30d", T0).ops)
    assert ("w", "fs.read") in kept  # the keys seen last are kept first
    assert len(kept) == 5 and not any(a.startswith("client.") for a, _ in kept)
    assert rec.store.unloaded_keys == 40 + 1 + 16 and rec.store.dropped_keys == 16
    assert rec.dirty  # saved again without them, so that no later start reads them
    rec.save(T0)
    rec.flush()
    again = SloStore.from_state(load_state(path)["slo"])
    assert set(again.window("30d", T0).ops) == kept and again.unloaded_keys == 0
    assert rec.store.add_ops("w", "fs.read", 1, 0, {100: 1}, T0)
    assert not rec.store.add_ops("w", "new", 1, 0, {100: 1}, T0)  # the bound holds live too


# --- what a push may carry ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["\x1b]0;TITLE\x07\x1b[2Jterminal/term.exec", "a/op\x7f",
                                  "a/\u0085op", "a/op\n"])
def test_an_op_name_with_a_control_character_is_refused_whole(name):
    with pytest.raises(BadPush, match="control character"):
        decode_ops({"a/fine": op_entry(1, 0), name: op_entry(1, 0)})


def test_an_op_name_of_other_characters_is_taken():
    [s] = decode_ops({"ed/naïve op ✓": op_entry(2, 0)})
    assert s.op == "ed/naïve op ✓"


def test_a_time_of_0_us_is_taken_as_1():
    [s] = decode_ops({"a/op": {"ok": 4, "error": 0, "hist": hdrh_hist([0, 0, 0, 1])}})
    assert s.counts == {1: 4} and s.sum_us == 4
    figures = summarize(s.ok, s.error, s.counts)
    assert (figures["p50"], figures["max"]) == (1, 1)


# --- a forked metrics actor --------------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[Tree]:
    with forked_tree("mb-") as t:
        yield t


def _tree_rows(report: dict[str, Any], window: str) -> dict[str, dict[str, Any]]:
    """The ops of a window but the metrics actor's own (its calls go on while a test reads)."""
    return {o["op"]: o for o in report["windows"][window]["ops"]
            if not o["op"].startswith(("metrics.", "sys."))}


def _own_requests(report: dict[str, Any], window: str) -> int:
    return sum(o["requests"] for o in report["windows"][window]["ops"]
               if o["op"].startswith(("metrics.", "sys.")))


def test_a_clients_latency_push_leaves_the_trees_slo_figures_unchanged(tree):
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    # (so many that the metrics actor's own calls, slower, stay above the p99)
    push.send_multipart(push_frames("fake", {"fs.read": op_entry(50_000, 0, micros=100)}))
    push.send_multipart(push_frames("terminal", {"term.exec": op_entry(3, 0, micros=50_000)}))
    wait_for(lambda: row(query(tree, actor="terminal"), "terminal", "term.exec"), "the pushes")
    before = tree.call("metrics", "metrics.slo")
    # An editor times its calls end to end: slow, some failed, under `<actor>/<op>` names.
    push.send_multipart(client_push("editor", {
        "fake/fs.read": op_entry(2000, 500, micros=5_000_000),
        "terminal/term.exec": op_entry(6, 0, micros=9_000_000)}))
    wait_for(lambda: row(query(tree, actor="client.editor"), "client.editor", "fake/fs.read"),
             "the client's push, shown by metrics.query")
    after = tree.call("metrics", "metrics.slo")
    for window in ("1h", "24h", "30d"):
        w0, w1 = before["windows"][window], after["windows"][window]
        assert _tree_rows(after, window) == _tree_rows(before, window)
        assert (w1["p99_us"], w1["errors"], w1["caller_errors"]) == \
            (w0["p99_us"], w0["errors"], w0["caller_errors"])
        # every request counted once: the tree's pushes and the metrics actor's own calls
        assert w1["requests"] == 50_003 + _own_requests(after, window)
    objectives = {o["name"]: (o["value"], o["met"]) for o in after["slo"]}
    assert objectives["p99_latency_us"] == \
        {o["name"]: (o["value"], o["met"]) for o in before["slo"]}["p99_latency_us"]
    assert objectives["error_rate"] == (0.0, True)


def test_a_push_with_a_control_character_in_an_op_name_is_counted_bad_and_never_shown(tree):
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    push.send_multipart(client_push("ed", {"\x1b]0;PWNED\x07\x1b[2Jterminal/term.exec":
                                           op_entry(1, 0)}))
    push.send_multipart(client_push("ed", {"terminal/term.exec": op_entry(1, 0)}))
    reply = wait_for(lambda: (r := query(tree))["received_pushes"] == 2 and r, "both pushes")
    assert reply["bad_pushes"] == 1
    assert [r["op"] for r in reply["ops"] if r["actor"] == "client.ed"] == ["terminal/term.exec"]
    assert "\x1b" not in tree.call("metrics", "metrics.prometheus")["text"]
    assert "bad metrics push" in (tree.rundir / "logs" / "metrics.log").read_text()


def test_a_pushed_time_of_0_us_reads_1(tree):
    tree.start(METRICS, "metrics", {})
    tree.pusher().send_multipart(client_push("ed", {"a/op": {
        "ok": 3, "error": 0, "hist": hdrh_hist([0, 0, 0])}}))
    r = wait_for(lambda: row(query(tree, actor="client.ed"), "client.ed", "a/op"), "the push")
    assert {k: r["lifetime"][k] for k in ("count", "p50", "p99", "max")} == \
        {"count": 3, "p50": 1, "p99": 1, "max": 1}


# --- a real tree: the supervisor's heartbeats watch the metrics actor --------------------------

UP_CONFIG = """
[supervisor]
heartbeat = { interval_ms = 200, misses = 3 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[actor.metrics]
slo_save_s = 0.2
"""


def _dense_hist() -> tuple[bytes, int]:
    """One value in every bucket of our histograms' shape (3,328): the widest an op can push."""
    h = new_histogram()
    for i in range(h.counts_len):
        h.record_value(max(1, h.get_value_from_index(i)))
    return h.encode(), h.get_total_count()


def _flood(up: UpTree, tag: str) -> int:
    """The client's whole share of keys (500), each holding every latency bucket: a push at a
    time within the bounds (9 such ops hold 29,952 non-zero counts of the 32,768 allowed)."""
    encoded, n = _dense_hist()
    names = [f"{tag}/op{i}" for i in range(500)]
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    try:
        push.setsockopt(zmq.LINGER, 10_000)  # (sent before the close returns)
        push.connect(endpoints.metrics_in(up.runtime_dir))
        sent = 0
        for k in range(0, len(names), 9):
            push.send_multipart(client_push("g", {o: {"ok": n, "error": 0, "hist": encoded}
                                                  for o in names[k:k + 9]}))
            sent += 1
    finally:
        push.close()
        ctx.term()
    return sent


def _metrics_life(up: UpTree) -> tuple[int, int]:
    child = up.child("metrics")
    return child["pid"], child["restarts"]


def test_a_client_filling_its_share_of_keys_around_a_reset_leaves_metrics_serving(make_tree):
    """Within every bound of a push, and again after a reset (which empties the table, not the
    record): the walks of every series and key beat, and the SLO record takes none of it."""
    up = make_tree(UP_CONFIG).start()
    life = _metrics_life(up)

    def taken(sent: int) -> bool:
        """The client's pushes taken (the supervisor pushes its own figures too)."""
        pusher = up.call("metrics", "metrics.query", {"op": "-"})["actors"].get("client.g")
        return pusher is not None and pusher["pushes"] == sent

    for tag in ("a", "b"):
        sent = _flood(up, tag)
        wait_for(lambda n=sent: taken(n), f"the {tag} pushes", timeout=60)
        rows = up.call("metrics", "metrics.query", {"actor": "client.g"}, timeout=60)["ops"]
        assert len(rows) == 500
        text = up.call("metrics", "metrics.prometheus", timeout=60)["text"]
        assert text.count('moorage_op_duration_seconds_count{actor="client.g"') == 500
        report = up.call("metrics", "metrics.slo", timeout=60)
        assert not [o for o in report["windows"]["30d"]["ops"] if "/" in o["op"]]
        if tag == "a":
            up.call("metrics", "metrics.reset")
    assert up.call("metrics", "sys.info")["slo_keys"] < 50  # the metrics actor's own ops
    assert _metrics_life(up) == life  # never taken for hung, never restarted


def test_a_saved_record_full_of_clients_keys_loads_and_reports_without_a_hang(make_tree):
    """A record written before clients were kept out of it: 2,000 of their keys in the current
    minute and hour and an hour of a day ago, each of 300 bins. Read whole, each report took
    seconds of the loop."""
    up = make_tree(UP_CONFIG)
    up.state_dir.mkdir(parents=True, exist_ok=True)
    path = up.state_dir / "metrics-slo.msgpack"
    now = time.time()
    clients = [("client.g", f"a/op{i}") for i in range(2000)]
    _record_with(path, clients, [*clients, ("watcher", "fs.read")], now, bins=300)
    up.start()
    life = _metrics_life(up)
    report = up.call("metrics", "metrics.slo", timeout=60)
    # (the tree's own calls are left out: sys.*, metrics.*, and sup.status, which the
    # supervisor's push brings in whenever it lands before this report)
    for window in ("1h", "24h", "30d"):
        assert [o["op"] for o in report["windows"][window]["ops"]
                if not o["op"].startswith(("metrics.", "sys.", "sup."))] == ["fs.read"]
    assert _metrics_life(up) == life

    def saved_clean() -> bool:
        state = load_state(path)
        return state is not None and not any(
            a.startswith("client.") for a, _ in SloStore.from_state(state["slo"])
            .window("30d", time.time()).ops)

    wait_for(saved_clean, "the record saved again without the clients' keys")
    log = (up.state_dir / "logs" / "metrics.log").read_text()
    assert "2000 (actor, op) keys left out" in log
