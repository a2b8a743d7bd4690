"""The metrics actor: pushes merged per (actor, op), percentiles, bad pushes, alerts, Prometheus.

The pure parts (push decoding, windows, alert edges, the Prometheus text) are fed injected data;
the actor itself runs in a real child process on real sockets, and the tests wait for facts
(a reply showing a count, a stream event) under a bounded deadline, never for a sleep.
"""

from __future__ import annotations

import base64
import contextlib
import math
import multiprocessing
import random
import shutil
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hdrh.histogram import HdrHistogram

from moorage.actors.metrics import slo as slo_store
from moorage.actors.metrics.actor import (
    AlertPolicy,
    Alerts,
    BadPush,
    MetricsTable,
    Settings,
    decode_ops,
    decode_push,
    fold_histogram,
    render_prometheus,
    summarize,
)
from moorage.actors.metrics.series import percentile
from moorage.actors.runtime import trust
from moorage.actors.runtime.process import run_actor
from moorage.actors.runtime.stats import OpStats
from moorage.protocol import endpoints, limits
from moorage.protocol.client import Client, Subscription
from moorage.protocol.envelope import TAG, StreamMessage, packb
from moorage.protocol.histogram import Recorder, decode, new_histogram, push_bodies, summary
from moorage.protocol.limits import MAX_ID
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

METRICS = "moorage.actors.metrics.actor:MetricsActor"
ECHO = "moorage.actors.runtime.actor:Actor"
FORK = multiprocessing.get_context("fork")


# --- helpers -----------------------------------------------------------------------------------


def hist(values: Iterable[int]) -> bytes:
    r = Recorder()
    for v in values:
        r.record(v)
    return r.histogram().encode()


def op_entry(ok: int, error: int, micros: int = 100) -> dict[str, Any]:
    return {"ok": ok, "error": error, "hist": hist([micros] * (ok + error))}


def push_frames(actor: str, body: Any, pid: int = 4242, ep: str = "ep-1",
                tok: str | None = None) -> list[bytes]:
    """A push as a process of this tree makes it (the tests' processes share its key)."""
    return [TAG, packb({"actor": actor, "pid": pid, "ep": ep,
                        "tok": trust.token(actor) if tok is None else tok}), packb(body)]


def samples(op: str, ok: int, error: int, micros: int = 100):
    return decode_ops({op: op_entry(ok, error, micros)})


# The bounds on one push's histograms (PROTOCOL.md, "Metric pushes")
PUSH_BUCKETS = 32_768  # non-zero counts
PUSH_VARINTS = 65_792  # varints of their counts arrays


def spread_hist(buckets: int, step: int = 1, first: int = 256) -> bytes:
    """Encoded by hdrh: one value in each of `buckets` buckets, `step` indices apart (hdrh writes
    each gap as one varint of -(step - 1))."""
    h = new_histogram()
    for i in range(first, first + buckets * step, step):
        h.record_value(h.get_value_from_index(i))
    return h.encode()


def varint(n: int) -> bytes:
    """`n` as HdrHistogram writes a count: ZigZag, then LEB128."""
    z, out = (n << 1) ^ (n >> 63), bytearray()
    while z >= 0x80:
        out.append(z & 0x7F | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def hand_hist(entries: list[int]) -> bytes:
    """Our shape's encoding of a counts array written as given: n >= 0 a count, -n a run of n
    zero counts (as PROTOCOL.md describes it for a language without an HDR library)."""
    body = b"".join(varint(n) for n in entries)
    payload = struct.pack(">IIIIQQd", 0x1C849313, len(body), 0, 2, 1, 3_600_000_000, 1.0) + body
    deflated = zlib.compress(payload)
    return base64.b64encode(struct.pack(">II", 0x1C849314, len(deflated)) + deflated)


def ops_of(hists: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """A push body of `hists`, each op's ok what its histogram holds."""
    return {name: {"ok": decode(h).get_total_count(), "error": 0, "hist": h}
            for name, h in hists.items()}



class Tree:
    """Actors in forked children, then this process's sockets; everything closed at the end.

    Children are forked before any ZeroMQ context exists here, so none inherits one.
    """

    def __init__(self, rundir: Path) -> None:
        self.rundir = rundir
        self.procs: list[Any] = []
        self.ctx: zmq.Context | None = None
        self.sockets: list[zmq.Socket] = []
        self.subs: list[Subscription] = []
        self._client: Client | None = None

    def start(self, entry: str, name: str, config: dict[str, Any]) -> None:
        assert self.ctx is None and self._client is None, "fork before opening sockets"
        p = FORK.Process(target=run_actor, args=(entry, name, str(self.rundir), config),
                         name=f"actor-{name}", daemon=True)
        p.start()
        self.procs.append(p)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.rundir, timeout=10.0)
        return self._client

    def call(self, actor: str, op: str, args: Any = None) -> Any:
        return self.client.call(actor, op, args, idempotent=op != "metrics.reset")

    def subscribe(self, actor: str, topics: list[str]) -> Subscription:
        sub = self.client.subscribe(actor, topics, from_seq=1)
        self.subs.append(sub)
        return sub

    def pusher(self) -> zmq.Socket:
        """A PUSH socket connected where every actor pushes its metrics."""
        if self.ctx is None:
            self.ctx = zmq.Context()
        s = self.ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoints.metrics_in(self.rundir))
        self.sockets.append(s)
        return s

    def close(self) -> None:
        try:
            for sub in self.subs:
                sub.close()
            if self._client is not None:
                self._client.close()
            for s in self.sockets:
                s.close(0)
            if self.ctx is not None:
                self.ctx.term()
        finally:
            for p in self.procs:
                p.terminate()
            for p in self.procs:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)


@contextlib.contextmanager
def forked_tree(prefix: str) -> Iterator[Tree]:
    """A Tree in a fresh directory under /tmp (pytest's tmp_path can exceed the 107-byte
    limit of an ipc:// path), closed and removed after."""
    rundir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    t = Tree(rundir)
    try:
        yield t
    finally:
        try:
            t.close()
        finally:
            shutil.rmtree(rundir)


@pytest.fixture
def tree():
    with forked_tree("mr-") as t:
        yield t


def query(tree: Tree, **args: Any) -> dict[str, Any]:
    return tree.call("metrics", "metrics.query", args)


def row(reply: dict[str, Any], actor: str, op: str) -> dict[str, Any] | None:
    return next((r for r in reply["ops"] if r["actor"] == actor and r["op"] == op), None)


# --- decoding pushes ---------------------------------------------------------------------------


def test_a_push_round_trips_through_msgpack_into_its_counts_and_latencies():
    frames = push_frames("echo", {"sys.ping": {"ok": 3, "error": 1, "hist": hist([5, 9, 9, 700])}})
    push = decode_push(frames)
    assert (push.actor, push.pid, push.ep) == ("echo", 4242, "ep-1")
    [s] = push.ops
    assert (s.op, s.ok, s.error) == ("sys.ping", 3, 1)
    assert sum(s.counts.values()) == 4 and s.counts[9] == 2
    assert s.sum_us == sum(v * n for v, n in s.counts.items())


def test_a_push_naming_an_actor_needs_the_trees_token_for_that_name():
    body = {"sys.ping": {"ok": 1, "error": 0, "hist": hist([5])}}
    assert decode_push(push_frames("watcher", body)).actor == "watcher"
    for tok in ("", "0" * 32, trust.token("terminal")):  # none, forged, another actor's
        with pytest.raises(BadPush, match="token"):
            decode_push(push_frames("watcher", body, tok=tok))
    # anyone may push as a client, without a token, but not the tree's data loss
    assert decode_push(push_frames("client.editor", body, tok="")).actor == "client.editor"
    assert decode_push(push_frames("client." + "é" * 100, body, tok="")).ops
    forged_loss = [TAG, packb({"actor": "client.x", "pid": 1, "ep": "e",
                               "loss": {"stream_lost": 1000}}), packb(body)]
    with pytest.raises(BadPush, match="loss"):
        decode_push(forged_loss)


def test_a_push_body_is_bounded_in_values_and_histogram_bytes():
    wide = [TAG, packb({"actor": "client.x", "pid": 1, "ep": "e"}),
            b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)]
    with pytest.raises(BadPush, match=r"max_array_len|values"):
        decode_push(wide)
    # refused on their size alone, before any of them is decoded
    big = b"A" * (limits.MAX_PUSH_HIST_BYTES // 200)
    many = {f"op{i}": {"ok": 1, "error": 0, "hist": big} for i in range(256)}
    with pytest.raises(BadPush, match="histograms"):
        decode_push(push_frames("client.x", many, tok=""))


def test_an_actors_drained_figures_are_cut_into_pushes_the_metrics_actor_takes():
    stats = OpStats()
    for i in range(40):
        for k in range(1_500):  # 1,500 distinct HDR buckets an op: 60,000 in all
            stats.record(f"op.{i}", (128 + k % 128) << (k // 128), True)
    bodies = list(push_bodies(stats.drain_entries()))
    assert len(bodies) > 1
    ops = [s for b in bodies for s in decode_ops(msgpack.unpackb(packb(b)))]
    assert sorted((s.op, s.ok) for s in ops) == sorted((f"op.{i}", 1_500) for i in range(40))


def test_a_drained_op_stats_decodes_like_a_push_does():
    stats = OpStats()
    for micros, ok in [(10, True), (20, True), (30_000, False)]:
        stats.record("fs.read", micros, ok)
    [s] = decode_ops(msgpack.unpackb(packb(stats.drain())))
    assert (s.ok, s.error, sum(s.counts.values())) == (2, 1, 3)


def _foreign_shape() -> bytes:
    h = HdrHistogram(1, 1000, 3)
    h.record_value(5)
    return h.encode()


def _zlib_bomb() -> bytes:
    payload = zlib.compress(b"\0" * (8 * 1024 * 1024))
    return base64.b64encode(struct.pack(">II", 0x1C849314, len(payload)) + payload)


def _deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


BAD_PUSHES = {
    "one frame": [b"junk"],
    "wrong tag": [b"MOOR9", packb({"actor": "a", "pid": 1, "ep": "e"}), packb({})],
    "header not msgpack": [TAG, b"\xc1", packb({})],
    "header not a map": [TAG, packb([1, 2]), packb({})],
    "no actor": [TAG, packb({"pid": 1, "ep": "e"}), packb({})],
    "client name empty": push_frames("client.", {}, tok=""),
    "client name of 101 characters": push_frames("client." + "x" * 101, {}, tok=""),
    "client name with a control character": push_frames("client.a\x1b[2Jb", {}, tok=""),
    "client name with a C1 control": push_frames("client.a\x9bb", {}, tok=""),
    "body not a map": push_frames("a", [1, 2, 3]),
    "body too deep": push_frames("a", {"x": _deep(100)}),
    "negative count": push_frames("a", {"x": {"ok": -1, "error": 0, "hist": hist([])}}),
    "bool count": push_frames("a", {"x": {"ok": True, "error": 0, "hist": hist([5])}}),
    "hist not base64": push_frames("a", {"x": {"ok": 1, "error": 0, "hist": "not base64!"}}),
    "hist not hdr": push_frames("a", {"x": {"ok": 1, "error": 0, "hist": b"SGVsbG8="}}),
    "hist of another shape": push_frames("a", {"x": {"ok": 1, "error": 0,
                                                     "hist": _foreign_shape()}}),
    "hist a zlib bomb": push_frames("a", {"x": {"ok": 1, "error": 0, "hist": _zlib_bomb()}}),
    "hist disagrees with counts": push_frames("a", {"x": {"ok": 5, "error": 0,
                                                          "hist": hist([1])}}),
}


@pytest.mark.parametrize("frames", BAD_PUSHES.values(), ids=BAD_PUSHES.keys())
def test_a_malformed_push_is_refused_whole_with_bad_push(frames):
    with pytest.raises(BadPush):
        decode_push(frames)


def test_folding_an_encoded_histogram_gives_what_recorder_add_histogram_gives():
    values = [1, 2, 3, 99, 100, 101, 1_000, 12_345, 999_999, 3_000_000_000]
    r = Recorder()
    for v in values * 3:
        r.record(v)
    slow = Recorder()
    slow.add_histogram(r.histogram())
    assert fold_histogram(r.histogram().encode()) == slow.counts


@pytest.mark.parametrize("encoded", [
    spread_hist(3328, first=0),  # every bucket
    spread_hist(500, step=3),  # a run of two zeros after each count
    hand_hist([0, 0, 0, 5, 0, 7, -3, 2**40, 0, 0, 1]),  # zeros one by one, a run, a big count
    hand_hist([-3327, 9]),  # the last bucket
    hand_hist([]),
], ids=["dense", "sparse", "zeros one by one", "last bucket", "empty"])
def test_folding_reads_every_encoding_of_the_counts_as_hdrh_does(encoded):
    slow = Recorder()
    slow.add_histogram(decode(encoded))
    assert fold_histogram(encoded) == slow.counts


def test_a_push_is_bounded_in_the_non_zero_counts_of_its_histograms():
    """However few bytes they take: 256 dense histograms of a few hundred bytes each once cost
    seconds of the metrics actor's loop."""
    at_bound = spread_hist(PUSH_BUCKETS // 256)
    body = ops_of({f"a/op{i}": at_bound for i in range(256)})
    assert sum(len(s.counts) for s in decode_ops(body)) == PUSH_BUCKETS
    body["a/op0"] = ops_of({"x": spread_hist(PUSH_BUCKETS // 256 + 1)})["x"]
    assert sum(len(d["hist"]) for d in body.values()) < limits.MAX_PUSH_HIST_BYTES // 8
    with pytest.raises(BadPush, match=f"more than {PUSH_BUCKETS} non-zero counts"):
        decode_ops(body)


def test_a_push_is_bounded_in_the_varints_of_its_histograms():
    # as hdrh writes them, with a gap after every count: two varints a count, within the bound
    sparse = spread_hist(PUSH_BUCKETS // 256, step=2)
    assert len(decode_ops(ops_of({f"a/op{i}": sparse for i in range(256)}))) == 256
    # zero runs written one varint for each zero: no count to bound, but as costly to read
    runs = hand_hist([-1] * (PUSH_VARINTS // 256) + [1])
    with pytest.raises(BadPush, match=f"more than {PUSH_VARINTS} varints"):
        decode_ops(ops_of({f"a/op{i}": runs for i in range(256)}))


@pytest.mark.parametrize("values", [[7], [1, 1, 2], list(range(1, 2000, 3)),
                                    [10] * 990 + [5_000] * 10, [3, 40_000, 40_001, 2**31]])
def test_percentiles_are_those_of_protocol_histogram_summary(values):
    r = Recorder()
    for v in values:
        r.record(v)
    counts = fold_histogram(r.histogram().encode())
    mine = summarize(len(values), 0, counts)
    theirs = summary(r.histogram())
    assert {k: mine[k] for k in theirs} == theirs


def test_one_percentile_walked_from_the_top_is_summarizes():
    rng = random.Random(3)
    cases = [Counter(), Counter({7: 1}), Counter({5: 99, 900: 1}), Counter({5: 98, 900: 2})]
    cases += [Counter({rng.randrange(1, 10**6): rng.randrange(1, 50)
                       for _ in range(rng.randrange(1, 300))}) for _ in range(300)]
    for counts in cases:
        n = sum(counts.values())
        whole = summarize(n, 0, counts)
        for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)):
            assert percentile(counts, p) == whole[name], (counts, p)


# --- windows and the table ---------------------------------------------------------------------


def test_the_window_forgets_intervals_older_than_its_span_and_keeps_a_running_total():
    table = MetricsTable(window_s=3, bucket_s=1, max_keys=10)
    for idx, (ok, error) in enumerate([(10, 0), (0, 5), (7, 1)]):
        [s] = samples("fs.read", ok, error, micros=100 * (idx + 1))
        table.merge("watcher", s, idx)
    series = table.series[("watcher", "fs.read")]
    assert (series.window.ok, series.window.error) == (17, 6)
    assert table.expire(2) == []
    assert table.expire(3) == [series]  # interval 0 left the window
    assert (series.window.ok, series.window.error) == (7, 6)
    assert 100 not in series.window.counts
    assert table.expire(5) == [series]
    assert series.window.requests == 0 and not series.window.counts
    assert (series.ok, series.error) == (17, 6)  # lifetime keeps everything


def test_the_table_refuses_samples_that_would_carry_a_lifetime_past_2_53():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10)
    full = decode_ops({"op": {"ok": MAX_ID - 1, "error": 1, "hist": hand_hist([0, MAX_ID])}})
    table.check("x", full)
    table.merge("x", full[0], 0)
    one_more = samples("op", 1, 0, micros=1)
    with pytest.raises(BadPush, match="2\\^53"):
        table.check("x", one_more)
    # 2.1 million requests of 4,295 s each: 2^53 us and a bit, in one push
    slow = decode_ops({"op": {"ok": 2_100_000, "error": 0,
                              "hist": hand_hist([-3327, 2_100_000])}})
    with pytest.raises(BadPush, match="microseconds"):
        table.check("y", slow)


def test_the_table_keeps_at_most_max_keys_and_counts_the_rest_as_dropped():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=2)
    for name in ("a", "b", "c", "c"):
        [s] = samples(name, 1, 0)
        table.merge("x", s, 0)
    assert sorted(table.series) == [("x", "a"), ("x", "b")]
    assert table.dropped_keys == 2


def test_clients_keys_fill_only_the_clients_share_of_the_table():
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=2, max_client_keys=3)
    for i in range(5):
        [s] = samples(f"op.{i}", 1, 0)
        table.merge(f"client.c{i % 2}", s, 0)
    for name in ("a", "b", "c"):
        [s] = samples(name, 1, 0)
        table.merge("x", s, 0)
    assert sorted(k for k in table.series if k[0] == "x") == [("x", "a"), ("x", "b")]
    assert sum(k[0].startswith("client.") for k in table.series) == 3
    assert table.dropped_keys == 3
    table.clear()
    [s] = samples("op.9", 1, 0)
    assert table.merge("client.c9", s, 0) is not None


def test_a_config_that_cannot_describe_a_window_or_targets_is_refused():
    for bad in ({"window_s": 0}, {"bucket_s": 5, "window_s": 1}, {"targets": {"x": [1]}},
                {"alert_clear_ratio": 1.5}):
        with pytest.raises(ValueError):
            Settings.from_config(bad)
    st = Settings.from_config({"targets": {"sys.ping": [100, 500, 2000]}})
    assert st.policy.latency_threshold("sys.ping") == 1000.0
    assert st.policy.latency_threshold("fs.read") is None


# --- alerts (pure) -----------------------------------------------------------------------------


def _alerts(**kw: Any) -> Alerts:
    return Alerts(AlertPolicy(**kw), window_s=60, history=100)


def test_a_failure_burst_raises_one_alert_not_one_per_sample_and_clears_once():
    a = _alerts()
    events = []
    for errors in range(1, 40):  # the window fills with failures, one evaluation per sample
        events += a.evaluate("fs", "fs.read", requests=20 + errors, errors=errors, p99=None,
                             now=float(errors))
    assert [(e["kind"], e["state"]) for e in events] == [("failure_rate", "raised")]
    assert events[0]["value"] == pytest.approx(3 / 23) and events[0]["threshold"] == 0.10
    # Between the clear level (0.8 x 10%) and the threshold: still raised, nothing new.
    assert a.evaluate("fs", "fs.read", requests=1000, errors=90, p99=None, now=50) == []
    [cleared] = a.evaluate("fs", "fs.read", requests=1000, errors=80, p99=None, now=51)
    assert cleared["state"] == "cleared" and not a.active
    assert a.evaluate("fs", "fs.read", requests=1000, errors=0, p99=None, now=52) == []
    assert (a.raised_total, a.cleared_total, len(a.recent)) == (1, 1, 2)


def test_a_failure_rate_over_too_few_requests_raises_nothing():
    a = _alerts(min_samples=20)
    assert a.evaluate("fs", "fs.read", requests=19, errors=19, p99=None, now=1) == []
    assert len(a.evaluate("fs", "fs.read", requests=20, errors=19, p99=None, now=2)) == 1


def test_a_latency_alert_needs_p99_over_twice_the_target_and_only_ops_with_a_target():
    a = _alerts(p99_targets={"sys.ping": 500.0})
    assert a.evaluate("x", "sys.ping", requests=50, errors=0, p99=1000, now=1) == []
    [raised] = a.evaluate("x", "sys.ping", requests=50, errors=0, p99=1001, now=2)
    assert (raised["kind"], raised["value"], raised["threshold"]) == ("latency", 1001, 1000.0)
    assert a.evaluate("x", "sys.ping", requests=50, errors=0, p99=900, now=3) == []
    assert a.evaluate("x", "fs.read", requests=50, errors=0, p99=10**9, now=4) == []
    [cleared] = a.evaluate("x", "sys.ping", requests=50, errors=0, p99=800, now=5)
    assert cleared["state"] == "cleared"


def test_an_alert_clears_when_its_window_empties():
    a = _alerts(p99_targets={"op": 10.0})
    events = a.evaluate("x", "op", requests=30, errors=30, p99=10**6, now=1)
    assert {e["kind"] for e in events} == {"failure_rate", "latency"}
    events = a.evaluate("x", "op", requests=0, errors=0, p99=0, now=2)
    assert {(e["kind"], e["state"]) for e in events} == {("failure_rate", "cleared"),
                                                          ("latency", "cleared")}


def test_clearing_all_alerts_reports_each_active_one_as_cleared_and_forgets_history():
    a = _alerts()
    a.evaluate("x", "op", requests=30, errors=30, p99=None, now=1)
    [cleared] = a.clear_all(now=2)
    assert (cleared["state"], cleared["reason"]) == ("cleared", "reset")
    assert not a.active and not a.recent and a.clear_all(now=3) == []


# --- Prometheus (pure) -------------------------------------------------------------------------


def _rendered() -> str:
    table = MetricsTable(window_s=60, bucket_s=1, max_keys=10)
    for actor in ("echo", 'we"ird\\act\nor'):
        for s in decode_ops({"sys.ping": {"ok": 2, "error": 1, "hist": hist([10, 20, 30])}}):
            table.merge(actor, s, 0)
    return render_prometheus(table.select(), pushes_ok=3, pushes_bad=1, dropped_keys=0,
                             alerts_active=Counter(latency=1))


def test_prometheus_text_declares_each_family_once_and_escapes_label_values():
    text = _rendered()
    assert text.endswith("\n")
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types)) == 6
    assert 'actor="we\\"ird\\\\act\\nor"' in text
    assert 'moorage_op_duration_seconds_bucket{actor="echo",op="sys.ping",le="5e-05"} 3' \
        in text
    assert 'moorage_alerts_active{kind="latency"} 1' in text


def test_prometheus_text_reads_back_with_prometheus_clients_parser():
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(_rendered())}
    assert families["moorage_op_duration_seconds"].type == "histogram"
    reqs = families["moorage_op_requests"].samples
    assert {s.labels["actor"] for s in reqs} == {"echo", 'we"ird\\act\nor'}
    inf = [s for s in families["moorage_op_duration_seconds"].samples
           if s.labels.get("le") == "+Inf"]
    assert [s.value for s in inf] == [3, 3]
    sums = [s.value for s in families["moorage_op_duration_seconds"].samples
            if s.name.endswith("_sum")]
    assert all(math.isclose(v, 60e-6, rel_tol=0.02) for v in sums)


# --- the actor, in a real process --------------------------------------------------------------


def test_n_pings_to_an_actor_show_up_as_n_sys_ping_with_sensible_percentiles(tree):
    tree.start(METRICS, "metrics", {})
    tree.start(ECHO, "echo", {"metrics_interval_s": 0.1})
    tree.client.hello("echo")  # ready; hello is not the op counted below
    n = 50
    for _ in range(n):
        tree.call("echo", "sys.ping")

    def counted():
        r = row(query(tree, actor="echo", op="sys.ping"), "echo", "sys.ping")
        return r if r and r["lifetime"]["count"] == n else None

    r = wait_for(counted, f"{n} sys.ping for echo")
    life, win = r["lifetime"], r["window"]
    assert (life["ok"], life["error"], life["error_rate"]) == (n, 0, 0.0)
    assert 1 <= life["p50"] <= life["p90"] <= life["p99"] <= life["p999"] <= life["max"]
    assert life["max"] < 1_000_000  # a ping is served in well under a second
    assert win["count"] == n and win["seconds"] == 60
    reply = query(tree, actor="echo")
    assert reply["actors"]["echo"]["pushes"] >= 1 and reply["bad_pushes"] == 0


def test_a_bad_push_is_counted_and_logged_and_the_actor_keeps_answering(tree):
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    bad = list(BAD_PUSHES.values())
    for frames in bad:
        push.send_multipart(frames)
    wait_for(lambda: query(tree)["bad_pushes"] == len(bad), f"{len(bad)} bad pushes")
    push.send_multipart(push_frames("fake", {"fs.read": op_entry(4, 1)}))
    r = wait_for(lambda: row(query(tree, actor="fake"), "fake", "fs.read"), "the good push")
    assert (r["lifetime"]["ok"], r["lifetime"]["error"]) == (4, 1)
    reply = query(tree)
    assert (reply["received_pushes"], reply["bad_pushes"]) == (len(bad) + 1, len(bad))
    log = (tree.rundir / "logs" / "metrics.log").read_text()
    assert "bad metrics push" in log


def test_a_client_pushing_name_after_name_costs_the_trees_actors_no_key(tree):
    """Anyone who reaches metrics.in may push as `client.<name>`, with any op names: the
    tree's own actors keep their share of the table and of the pushers seen."""
    tree.start(METRICS, "metrics", {"max_keys": 4, "max_client_keys": 6})
    push = tree.pusher()
    for i in range(40):
        push.send_multipart([TAG, packb({"actor": f"client.c{i}", "pid": 1, "ep": "s"}),
                             packb({f"a/op.{i}": op_entry(1, 0)})])
    wait_for(lambda: query(tree)["received_pushes"] == 40, "the clients' pushes")
    push.send_multipart(push_frames("fake", {"fs.read": op_entry(3, 0)}))
    r = wait_for(lambda: row(query(tree, actor="fake"), "fake", "fs.read"), "the actor's push")
    assert r["lifetime"]["ok"] == 3
    reply = query(tree)
    assert "fake" in reply["actors"]
    assert sum(a.startswith("client.") for a in reply["actors"]) == 6
    assert sum(r["actor"].startswith("client.") for r in reply["ops"]) == 6
    assert reply["dropped_keys"] == 34


def test_an_injected_failure_burst_raises_exactly_one_alert_then_clears(tree):
    tree.start(METRICS, "metrics", {"alert_min_samples": 20, "alert_failure_rate": 0.10})
    tree.client.hello("metrics")
    sub = tree.subscribe("metrics", ["metrics.alert"])
    push = tree.pusher()
    for _ in range(4):  # 40 requests, half failed: one alert once the 20th arrives
        push.send_multipart(push_frames("fake", {"fs.read": op_entry(5, 5)}))
    raised = sub.next(timeout=10)
    assert isinstance(raised, StreamMessage), raised
    assert raised.body["state"] == "raised" and raised.body["kind"] == "failure_rate"
    assert (raised.body["actor"], raised.body["op"]) == ("fake", "fs.read")
    push.send_multipart(push_frames("fake", {"fs.read": op_entry(400, 0)}))  # 20/440 < 8%
    cleared = sub.next(timeout=10)
    assert isinstance(cleared, StreamMessage), cleared
    assert cleared.body["state"] == "cleared" and cleared.seq == raised.seq + 1
    alerts = tree.call("metrics", "metrics.alerts")
    mine = [e for e in alerts["recent"] if e["actor"] == "fake"]
    assert [e["state"] for e in mine] == ["raised", "cleared"]
    assert alerts["active"] == []


def test_the_metrics_actor_counts_its_own_ops(tree):
    tree.start(METRICS, "metrics", {"bucket_s": 0.1})
    tree.call("metrics", "metrics.alerts")
    r = wait_for(lambda: row(query(tree, actor="metrics"), "metrics", "metrics.alerts"),
                 "metrics.alerts in the metrics actor's own figures")
    assert r["lifetime"]["count"] == 1


def test_the_prometheus_op_answers_text_that_prometheus_client_parses(tree):
    parser = pytest.importorskip("prometheus_client.parser")
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    push.send_multipart(push_frames('od"d\nname', {"fs.read": op_entry(3, 1, micros=250)}))
    wait_for(lambda: query(tree)["ops"], "the push")
    reply = tree.call("metrics", "metrics.prometheus")
    assert reply["content_type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(reply["text"])}
    count = next(s for s in families["moorage_op_duration_seconds"].samples
                 if s.name.endswith("_count"))
    assert count.labels["actor"] == 'od"d\nname' and count.value == 4


def test_reset_forgets_every_series_and_counter(tree):
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    push.send_multipart(push_frames("fake", {"fs.read": op_entry(1, 0)}))
    push.send_multipart([b"junk"])
    wait_for(lambda: query(tree)["bad_pushes"] == 1 and query(tree, actor="fake")["ops"],
             "the pushes")
    assert tree.call("metrics", "metrics.reset") == {"reset": True}
    reply = query(tree, actor="fake")
    assert (reply["ops"], reply["bad_pushes"], reply["received_pushes"]) == ([], 0, 0)


def test_a_push_past_the_bucket_bound_is_refused_whole_and_the_next_one_is_taken(tree):
    """256 dense histograms in a few KiB: refused as a bad push before any of it is merged,
    and a push at the bound right after it is taken."""
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    header = packb({"actor": "client.big", "pid": 1, "ep": "e"})
    at_bound = ops_of({f"a/op{i}": spread_hist(PUSH_BUCKETS // 256) for i in range(256)})
    over = {**at_bound, "a/op0": ops_of({"x": spread_hist(PUSH_BUCKETS // 256 + 1)})["x"]}
    push.send_multipart([TAG, header, packb(over)])
    push.send_multipart([TAG, header, packb(at_bound)])
    wait_for(lambda: query(tree, actor="-")["received_pushes"] == 2, "both pushes")
    reply = query(tree, actor="client.big")
    assert reply["bad_pushes"] == 1
    assert len(reply["ops"]) == 256
    assert {r["lifetime"]["count"] for r in reply["ops"]} == {PUSH_BUCKETS // 256}
    log = (tree.rundir / "logs" / "metrics.log").read_text()
    assert f"more than {PUSH_BUCKETS} non-zero counts" in log


def test_a_push_that_would_carry_a_lifetime_past_2_53_is_refused_and_figures_stay_exact(tree):
    tree.start(METRICS, "metrics", {})
    push = tree.pusher()
    full = packb({"a/op": {"ok": MAX_ID, "error": 0, "hist": hand_hist([0, MAX_ID])}})
    for _ in range(3):
        push.send_multipart([TAG, packb({"actor": "client.big", "pid": 1, "ep": "e"}), full])
    wait_for(lambda: query(tree, actor="-")["received_pushes"] == 3, "the pushes")
    reply = query(tree, actor="client.big")
    [r] = reply["ops"]
    assert r["lifetime"]["count"] == r["window"]["count"] == MAX_ID
    assert reply["bad_pushes"] == 2
    assert "past 2^53 - 1" in (tree.rundir / "logs" / "metrics.log").read_text()


def test_the_slo_report_and_record_saturate_at_2_53_and_still_encode(tree):
    """Each op within 2^53 - 1, but 2,304 of them sum past 2^64: the report still answers and
    the record is still saved, their sums read 2^53 - 1."""
    tree.start(METRICS, "metrics", {"max_keys": 4096, "slo_save_s": 0.1})
    push = tree.pusher()
    full = {"ok": MAX_ID, "error": 0, "hist": hand_hist([0, MAX_ID])}
    for a in range(9):
        push.send_multipart(push_frames(f"fake{a}", {f"op{i}": full for i in range(256)}))
    wait_for(lambda: query(tree, actor="-")["received_pushes"] == 9, "the pushes")
    saves = tree.call("metrics", "sys.info")["slo_saves"]
    report = tree.call("metrics", "metrics.slo")
    hour = report["windows"]["1h"]
    assert hour["requests"] == MAX_ID  # every op of every actor
    # (the metrics actor's own ops are there too once a tick took them: the queries above)
    pushed = [o for o in hour["ops"] if o["op"].startswith("op")]
    assert len(pushed) == 256
    assert {o["requests"] for o in pushed} == {MAX_ID}  # each op of nine actors

    def saved() -> slo_store.Figures | None:
        """The record on disk once a save holds the last push (a save whose snapshot was
        taken before that push was merged may end after `saves` was read)."""
        info = tree.call("metrics", "sys.info")
        if info["slo_saves"] <= saves:
            return None
        state = slo_store.load_state(Path(info["slo_file"]))
        assert state is not None
        kept = slo_store.SloStore.from_state(state["slo"]).window("1h", report["now"])
        return kept if ("fake8", "op255") in kept.ops else None

    kept = wait_for(saved, "a save of the record with every push")
    assert kept.ops[("fake8", "op255")].requests == MAX_ID
