"""The metrics actor: merges what every actor pushes, answers percentiles, raises alerts.

  op                  args                     reply                                   errors
  metrics.query       {op?: str, actor?: str}  {ops: [{actor, op, lifetime, window}],  bad_args
                                                received_pushes, bad_pushes,
                                                dropped_keys, window_s, actors}
  metrics.alerts      {}                       {active: [alert], recent: [alert],      bad_args
                                                raised_total, cleared_total, policy}
  metrics.prometheus  {}                       {text, content_type}                    bad_args
  metrics.reset       {}                       {reset: true}                           bad_args

`lifetime` and `window` are {count, ok, error, error_rate, p50, p90, p99, p999, max}, latencies
in microseconds; `window` adds `seconds`. query's filters match exactly. The first three ops
are idempotent; reset is not (it also publishes every active alert as cleared).

Config (all optional): window_s 60, bucket_s 1, max_keys 2000, alert_history 100,
alert_min_samples 20, alert_failure_rate 0.10, alert_latency_factor 2.0, alert_clear_ratio 0.8,
targets {op: [p50_us, p99_us, p999_us]}. A config that cannot work fails the start.

Input: a PULL on `metrics.in`. Every other actor pushes about once a second
`[TAG, {actor, pid, ep}, {op: {ok, error, hist}}]` (see `Actor._push_metrics`); this actor's
own ops are merged from `self.stats` on the bucket timer. A push is taken whole or not at all:
one that fails bounded decoding is counted in `bad_pushes`, logged, and dropped.

Per (actor, op): lifetime counts and latency counts, plus a window of `window_s` seconds made of
`bucket_s` intervals with a running total, so reading the window sums no intervals. Latencies are
kept as counts of HDR-equivalent microsecond values (protocol.histogram's shape), decoded once
per push. At most `max_keys` (actor, op) pairs are kept; entries for more count in
`dropped_keys`.

Alerts (seed 8.1), evaluated over the window after each merge and each interval:
  failure_rate  raised when requests >= alert_min_samples and errors/requests > alert_failure_rate
  latency       raised when requests >= alert_min_samples and p99 > alert_latency_factor x the
                op's p99 target (config `targets`: op -> [p50_us, p99_us, p999_us])
Each is raised once when its condition starts and cleared once when the value falls to
`alert_clear_ratio` (0.8) of the threshold, or the window empties; both edges go out on
`metrics.alert` as {kind, state, actor, op, value, threshold, window_s, time, samples}.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import struct
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from loguru import logger

from actors.runtime import Actor, Call, op
from protocol import endpoints, limits
from protocol.envelope import TAG, DecodeError, unpackb
from protocol.histogram import DIGITS, HIGHEST_US, LOWEST_US, decode

MAX_OPS_PER_PUSH = 1000
MAX_HIST_BYTES = 256 * 1024  # encoded; one of our shape is a few KiB at most
MAX_HIST_PAYLOAD = 256 * 1024  # decompressed: bounds a zlib bomb before hdrh sees it
MAX_SPAN = 86_400  # intervals in one window
PUSH_BATCH = 256  # pushes taken per wake-up, so requests are not starved
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
_EXT_HEADER = struct.Struct(">II")  # cookie, length of the compressed payload
_PAYLOAD_HEADER = struct.Struct(">IIIIQQd")  # cookie, len, offset, digits, lowest, highest, ratio


# --- decoding pushes ---------------------------------------------------------------------------


class BadPush(ValueError):
    """A push that cannot be taken; raised before anything of it is merged."""


@dataclass(slots=True)
class OpSample:
    """One op's share of a push: counts since the sender's last push."""

    op: str
    ok: int
    error: int
    counts: Counter[int]  # HDR highest-equivalent microsecond value -> occurrences
    sum_us: int


@dataclass(slots=True)
class Push:
    actor: str
    pid: int
    ep: str
    ops: list[OpSample]


def _count(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= limits.MAX_ID:
        raise BadPush(f"{what} must be an integer in [0, 2^53), not {v!r:.40}")
    return v


def _check_shape(encoded: Any) -> None:
    # protocol.histogram.decode builds a histogram of whatever shape the payload claims and
    # inflates it without a limit; both are bounded here first.
    if not isinstance(encoded, (bytes, str)) or len(encoded) > MAX_HIST_BYTES:
        raise BadPush("hist must be an encoded HDR histogram (str or bytes, bounded)")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPush(f"hist is not base64: {exc}") from exc
    head = _EXT_HEADER.size
    if len(raw) < head or _EXT_HEADER.unpack_from(raw)[1] != len(raw) - head:
        raise BadPush("hist: bad length header")
    inflate = zlib.decompressobj()
    try:
        payload = inflate.decompress(raw[head:], MAX_HIST_PAYLOAD)
    except zlib.error as exc:
        raise BadPush(f"hist: {exc}") from exc
    if inflate.unconsumed_tail or len(payload) < _PAYLOAD_HEADER.size:
        raise BadPush("hist: payload too large or too short")
    shape = _PAYLOAD_HEADER.unpack_from(payload)[3:6]
    if shape != (DIGITS, LOWEST_US, HIGHEST_US):
        raise BadPush(f"hist: shape {shape} is not {(DIGITS, LOWEST_US, HIGHEST_US)}")


def fold_histogram(encoded: Any) -> Counter[int]:
    """An encoded histogram as counts of values; equal to `Recorder.add_histogram`'s, at a
    tenth of its cost (the recorded iterator walks every index in Python)."""
    _check_shape(encoded)
    try:
        h = decode(encoded)
    except Exception as exc:  # hdrh raises TypeError, zlib.error and its own classes
        raise BadPush(f"hist undecodable: {type(exc).__name__}: {exc}") from exc
    counts: Counter[int] = Counter()
    raw = h.counts[: h.counts_len]
    for i, n in enumerate(raw):
        if n:
            counts[h.get_highest_equivalent_value(h.get_value_from_index(i))] += n
    return counts


def decode_ops(body: Any) -> list[OpSample]:
    """`{op: {ok, error, hist}}` (an `OpStats.drain`) -> samples, or BadPush."""
    if type(body) is not dict or len(body) > MAX_OPS_PER_PUSH:
        raise BadPush(f"body must be a map of at most {MAX_OPS_PER_PUSH} ops")
    out = []
    for name, d in body.items():
        if type(name) is not str or not 0 < len(name) <= limits.MAX_OP_LEN:
            raise BadPush(f"op name must be a non-empty string: {name!r:.40}")
        if type(d) is not dict:
            raise BadPush(f"{name}: entry must be a map")
        ok, error = _count(d.get("ok"), f"{name}.ok"), _count(d.get("error"), f"{name}.error")
        counts = fold_histogram(d.get("hist"))
        total = sum(counts.values())
        if total != ok + error:  # every request, ok or not, records its service time
            raise BadPush(f"{name}: hist holds {total} values for {ok + error} requests")
        out.append(OpSample(name, ok, error, counts, sum(v * n for v, n in counts.items())))
    return out


def decode_push(frames: Sequence[bytes]) -> Push:
    if len(frames) != 3 or frames[0] != TAG:
        raise BadPush(f"expected [TAG, header, body], got {len(frames)} frame(s)")
    try:
        header = unpackb(frames[1], limits.MAX_HEADER_SIZE)
        body = unpackb(frames[2])
    except DecodeError as exc:
        raise BadPush(exc.error.message) from exc
    if type(header) is not dict:
        raise BadPush("header must be a map")
    actor, pid, ep = header.get("actor"), header.get("pid"), header.get("ep")
    if type(actor) is not str or not 0 < len(actor) <= 128:
        raise BadPush(f"header.actor must be a non-empty string: {actor!r:.40}")
    if type(ep) is not str or len(ep) > 128:
        raise BadPush("header.ep must be a string")
    return Push(actor, _count(pid, "header.pid"), ep, decode_ops(body))


# --- series and windows ------------------------------------------------------------------------


def summarize(ok: int, error: int, counts: Counter[int]) -> dict[str, Any]:
    """Counts and percentiles; the percentiles equal protocol.histogram.summary's on the same
    values (HDR's rule: the first value whose cumulative count reaches round(p% x total))."""
    n = ok + error
    out: dict[str, Any] = {"count": n, "ok": ok, "error": error,
                           "error_rate": error / n if n else 0.0}
    total = sum(counts.values())
    if not total:
        out.update({name: 0 for name, _ in PERCENTILES}, max=0)
        return out
    values = sorted(counts.items())
    seen, i = 0, 0
    for name, p in PERCENTILES:
        target = max(1, int(p * total / 100 + 0.5))
        while seen + values[i][1] < target:
            seen += values[i][1]
            i += 1
        out[name] = values[i][0]
    out["max"] = values[-1][0]
    return out


class _Bucket:
    __slots__ = ("counts", "error", "idx", "ok", "sum_us")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.ok = self.error = self.sum_us = 0
        self.counts: Counter[int] = Counter()


class Window:
    """The last `span` intervals of one series and their running total (read in O(1))."""

    __slots__ = ("buckets", "counts", "error", "ok", "span", "sum_us")

    def __init__(self, span: int) -> None:
        self.span = span
        self.buckets: deque[_Bucket] = deque()
        self.ok = self.error = self.sum_us = 0
        self.counts: Counter[int] = Counter()

    def add(self, idx: int, s: OpSample) -> None:
        self.expire(idx)
        if not self.buckets or self.buckets[-1].idx < idx:
            self.buckets.append(_Bucket(idx))
        b = self.buckets[-1]  # a clock that went back (it cannot: monotonic) lands here too
        for target in (b, self):
            target.ok += s.ok
            target.error += s.error
            target.sum_us += s.sum_us
            target.counts.update(s.counts)

    def expire(self, idx: int) -> bool:
        """Drop intervals that left the window ending at interval `idx`; True if any did."""
        gone = False
        while self.buckets and self.buckets[0].idx <= idx - self.span:
            b = self.buckets.popleft()
            self.ok -= b.ok
            self.error -= b.error
            self.sum_us -= b.sum_us
            for v, n in b.counts.items():
                left = self.counts[v] - n
                if left:
                    self.counts[v] = left
                else:
                    del self.counts[v]
            gone = True
        return gone

    @property
    def requests(self) -> int:
        return self.ok + self.error


class Series:
    """One (actor, op): lifetime totals and the recent window."""

    __slots__ = ("actor", "counts", "error", "ok", "op", "sum_us", "window")

    def __init__(self, actor: str, op: str, span: int) -> None:
        self.actor = actor
        self.op = op
        self.ok = self.error = self.sum_us = 0
        self.counts: Counter[int] = Counter()
        self.window = Window(span)

    def add(self, idx: int, s: OpSample) -> None:
        self.ok += s.ok
        self.error += s.error
        self.sum_us += s.sum_us
        self.counts.update(s.counts)
        self.window.add(idx, s)


class MetricsTable:
    """Every series, keyed (actor, op), at most `max_keys` of them. Time is an interval
    number the caller computes (`interval(now)`), so tests need no clock."""

    def __init__(self, window_s: float, bucket_s: float, max_keys: int) -> None:
        self.bucket_s = bucket_s
        self.span = max(1, math.ceil(window_s / bucket_s))
        self.max_keys = max_keys
        self.series: dict[tuple[str, str], Series] = {}
        self.dropped_keys = 0  # op entries not kept because the table was full

    def interval(self, now: float) -> int:
        return int(now // self.bucket_s)

    def merge(self, actor: str, s: OpSample, idx: int) -> Series | None:
        key = (actor, s.op)
        series = self.series.get(key)
        if series is None:
            if len(self.series) >= self.max_keys:
                self.dropped_keys += 1
                return None
            series = self.series[key] = Series(actor, s.op, self.span)
        series.add(idx, s)
        return series

    def expire(self, idx: int) -> list[Series]:
        """Series whose window lost an interval (their alerts need a new look)."""
        return [s for s in self.series.values() if s.window.expire(idx)]

    def select(self, actor: str | None = None, op: str | None = None) -> list[Series]:
        return [s for (a, o), s in sorted(self.series.items())
                if (actor is None or a == actor) and (op is None or o == op)]

    def clear(self) -> None:
        self.series.clear()
        self.dropped_keys = 0


# --- alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    min_samples: int = 20
    failure_rate: float = 0.10
    latency_factor: float = 2.0
    clear_ratio: float = 0.8  # hysteresis: cleared at this fraction of the threshold
    p99_targets: Mapping[str, float] = field(default_factory=dict)  # op -> p99 target, us

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AlertPolicy:
        targets = {}
        for name, t in dict(config.get("targets") or {}).items():
            if not (isinstance(t, (list, tuple)) and len(t) >= 2
                    and isinstance(t[1], (int, float)) and t[1] > 0):
                raise ValueError(f"targets[{name!r}] must be [p50_us, p99_us, p999_us]")
            targets[name] = float(t[1])
        policy = cls(int(config.get("alert_min_samples", 20)),
                     float(config.get("alert_failure_rate", 0.10)),
                     float(config.get("alert_latency_factor", 2.0)),
                     float(config.get("alert_clear_ratio", 0.8)), targets)
        if policy.min_samples < 1 or not 0 < policy.clear_ratio <= 1:
            raise ValueError("alert_min_samples must be >= 1, alert_clear_ratio in (0, 1]")
        return policy

    def latency_threshold(self, op: str) -> float | None:
        target = self.p99_targets.get(op)
        return None if target is None else target * self.latency_factor


class Alerts:
    """Raised and cleared alerts, de-duplicated; pure: fed window figures, it returns the
    events to publish and keeps the active set and the last `history` events."""

    def __init__(self, policy: AlertPolicy, window_s: float, history: int = 100) -> None:
        self.policy = policy
        self.window_s = window_s
        self.active: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=history)
        self.raised_total = 0
        self.cleared_total = 0

    def evaluate(self, actor: str, op: str, *, requests: int, errors: int,
                 p99: float | None, now: float) -> list[dict[str, Any]]:
        """`p99` over the window is needed only when `policy.latency_threshold(op)` is set."""
        pol = self.policy
        enough = requests >= pol.min_samples
        events = []
        rate = errors / requests if requests else 0.0
        events += self._edge("failure_rate", actor, op, rate, pol.failure_rate,
                             enough, requests, now)
        limit = pol.latency_threshold(op)
        if limit is not None:
            events += self._edge("latency", actor, op, p99 or 0, limit, enough, requests, now)
        return events

    def _edge(self, kind: str, actor: str, op: str, value: float, threshold: float,
              enough: bool, samples: int, now: float) -> list[dict[str, Any]]:
        key = (kind, actor, op)
        on = key in self.active
        if not on and enough and value > threshold:
            state = "raised"
            self.raised_total += 1
        elif on and (samples == 0 or value <= threshold * self.policy.clear_ratio):
            state = "cleared"
            self.cleared_total += 1
        else:
            return []
        event = {"kind": kind, "state": state, "actor": actor, "op": op, "value": value,
                 "threshold": threshold, "window_s": self.window_s, "time": now,
                 "samples": samples}
        if state == "raised":
            self.active[key] = event
        else:
            del self.active[key]
        self.recent.append(event)
        return [event]

    def clear_all(self, now: float) -> list[dict[str, Any]]:
        """Forget everything; the cleared events of what was active, to publish."""
        events = [{**e, "state": "cleared", "time": now, "reason": "reset"}
                  for e in self.active.values()]
        self.active.clear()
        self.recent.clear()
        self.raised_total = self.cleared_total = 0
        return events

    def active_by_kind(self) -> Counter[str]:
        return Counter(k for k, _, _ in self.active)


# --- Prometheus text format 0.0.4 --------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def render_prometheus(series: Iterable[Series], *, pushes_ok: int, pushes_bad: int,
                      dropped_keys: int, alerts_active: Mapping[str, int],
                      window_s: float) -> str:
    """Quantiles are over the recent window (NaN while it is empty), as Prometheus client
    summaries do with a max age; _sum and _count are since the metrics actor started, and _sum
    is at HDR resolution (within 1%)."""
    rows = list(series)
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    family("moorage_op_requests_total", "counter", "Requests served, per actor, op and outcome.")
    for s in rows:
        ls = f'actor="{_label(s.actor)}",op="{_label(s.op)}"'
        out.append(f'moorage_op_requests_total{{{ls},outcome="ok"}} {s.ok}')
        out.append(f'moorage_op_requests_total{{{ls},outcome="error"}} {s.error}')
    name = "moorage_op_latency_microseconds"
    family(name, "summary", f"Service time per op; quantiles over the last {window_s:g} s.")
    for s in rows:
        ls = f'actor="{_label(s.actor)}",op="{_label(s.op)}"'
        w = summarize(s.window.ok, s.window.error, s.window.counts)
        for key, p in PERCENTILES:
            q = w[key] if w["count"] else math.nan
            out.append(f'{name}{{{ls},quantile="{p / 100:g}"}} {_num(q)}')
        out.append(f"{name}_sum{{{ls}}} {s.sum_us}")
        out.append(f"{name}_count{{{ls}}} {s.ok + s.error}")
    family("moorage_metrics_pushes_total", "counter", "Metrics pushes received, by result.")
    out.append(f'moorage_metrics_pushes_total{{result="ok"}} {pushes_ok}')
    out.append(f'moorage_metrics_pushes_total{{result="bad"}} {pushes_bad}')
    family("moorage_metrics_dropped_keys_total", "counter",
           "Op entries not kept because the (actor, op) table was full.")
    out.append(f"moorage_metrics_dropped_keys_total {dropped_keys}")
    family("moorage_alerts_active", "gauge", "Alerts currently raised, by kind.")
    for kind in ("failure_rate", "latency"):
        out.append(f'moorage_alerts_active{{kind="{kind}"}} {alerts_active.get(kind, 0)}')
    return "\n".join(out) + "\n"


# --- the actor ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    window_s: float
    bucket_s: float
    max_keys: int
    history: int
    policy: AlertPolicy

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> Settings:
        s = cls(c.get("window_s", 60), c.get("bucket_s", 1), int(c.get("max_keys", 2000)),
                int(c.get("alert_history", 100)), AlertPolicy.from_config(c))
        if not (isinstance(s.window_s, (int, float)) and isinstance(s.bucket_s, (int, float))
                and 0 < s.bucket_s <= s.window_s and s.window_s / s.bucket_s <= MAX_SPAN):
            raise ValueError(f"need 0 < bucket_s <= window_s <= {MAX_SPAN} x bucket_s")
        if s.max_keys < 1 or s.history < 1:
            raise ValueError("max_keys and alert_history must be >= 1")
        return s


class MetricsActor(Actor):
    name = "metrics"

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        self.settings = Settings.from_config(config or {})  # a bad config fails before binding
        super().__init__(name, runtime_dir, config)
        st = self.settings
        self.table = MetricsTable(st.window_s, st.bucket_s, st.max_keys)
        self.alerts = Alerts(st.policy, st.window_s, st.history)
        self.received_pushes = 0  # every message on metrics.in, bad ones included
        self.bad_pushes = 0
        self.actors: dict[str, dict[str, Any]] = {}
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.MAXMSGSIZE, limits.MAX_BODY_SIZE)
        self._bind(self.pull, endpoints.metrics_in(self.runtime_dir))

    def on_start(self) -> None:
        self.loop.add_reader(self.pull, self._on_pushes)
        self.loop.call_every(self.settings.bucket_s, self._tick)

    def info(self) -> dict[str, Any]:
        return {"received_pushes": self.received_pushes, "bad_pushes": self.bad_pushes,
                "keys": len(self.table.series), "dropped_keys": self.table.dropped_keys}

    # --- merging ---------------------------------------------------------------------------

    def _on_pushes(self) -> None:
        idx = self.table.interval(time.monotonic())
        for _ in range(PUSH_BATCH):
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.received_pushes += 1
            try:
                push = decode_push(frames)
            except BadPush as exc:
                self.bad_pushes += 1
                if self.bad_pushes <= 10 or self.bad_pushes % 1000 == 0:
                    logger.warning("bad metrics push (#{}): {}", self.bad_pushes, exc)
                continue
            self._note_actor(push)
            self._merge(push.actor, push.ops, idx)

    def _note_actor(self, push: Push) -> None:
        seen = self.actors.get(push.actor)
        if seen is None:
            if len(self.actors) >= self.settings.max_keys:
                return
            seen = self.actors[push.actor] = {"pid": push.pid, "ep": push.ep, "pushes": 0,
                                              "epochs": 1}
        elif seen["ep"] != push.ep:
            seen["epochs"] += 1  # the actor restarted
        seen.update(pid=push.pid, ep=push.ep, last_push=time.time())
        seen["pushes"] += 1

    def _merge(self, actor: str, samples: list[OpSample], idx: int) -> None:
        for s in samples:
            series = self.table.merge(actor, s, idx)
            if series is not None:
                self._evaluate(series)

    def _evaluate(self, s: Series) -> None:
        w = s.window
        p99 = None
        if self.alerts.policy.latency_threshold(s.op) is not None:
            p99 = summarize(w.ok, w.error, w.counts)["p99"]
        for event in self.alerts.evaluate(s.actor, s.op, requests=w.requests, errors=w.error,
                                          p99=p99, now=time.time()):
            logger.warning("alert {} {}: {} {} {:.4g} (threshold {:.4g})", event["kind"],
                           event["state"], s.actor, s.op, event["value"], event["threshold"])
            self.publisher.publish("metrics.alert", event)

    def _advance(self) -> int:
        """Expire old intervals everywhere and re-evaluate the series that changed."""
        idx = self.table.interval(time.monotonic())
        for s in self.table.expire(idx):
            self._evaluate(s)
        return idx

    def _tick(self) -> None:
        idx = self._advance()
        if self.stats.pending():  # our own ops: no push socket to ourselves
            try:
                samples = decode_ops(self.stats.drain())
            except BadPush:
                logger.exception("own op stats undecodable")
                return
            self._merge(self.name, samples, idx)

    # --- ops -------------------------------------------------------------------------------

    @op("metrics.query", args={"op": (str, None), "actor": (str, None)}, idempotent=True)
    def _op_query(self, call: Call, op: str | None, actor: str | None) -> dict[str, Any]:
        """Counts and percentiles per (actor, op), lifetime and over the recent window."""
        self._advance()
        rows = []
        for s in self.table.select(actor, op):
            w = s.window
            rows.append({"actor": s.actor, "op": s.op,
                         "lifetime": summarize(s.ok, s.error, s.counts),
                         "window": {**summarize(w.ok, w.error, w.counts),
                                    "seconds": self.settings.window_s}})
        return {"ops": rows, "received_pushes": self.received_pushes,
                "bad_pushes": self.bad_pushes, "dropped_keys": self.table.dropped_keys,
                "window_s": self.settings.window_s,
                "actors": {a: d for a, d in self.actors.items() if actor in (None, a)}}

    @op("metrics.alerts", idempotent=True)
    def _op_alerts(self, call: Call) -> dict[str, Any]:
        """Alerts raised now, and the last alert events (raised and cleared)."""
        self._advance()
        a, pol = self.alerts, self.alerts.policy
        return {"active": list(a.active.values()), "recent": list(a.recent),
                "raised_total": a.raised_total, "cleared_total": a.cleared_total,
                "policy": {"min_samples": pol.min_samples, "failure_rate": pol.failure_rate,
                           "latency_factor": pol.latency_factor, "clear_ratio": pol.clear_ratio,
                           "p99_targets": dict(pol.p99_targets),
                           "window_s": self.settings.window_s}}

    @op("metrics.prometheus", idempotent=True)
    def _op_prometheus(self, call: Call) -> dict[str, Any]:
        """Everything in Prometheus text exposition format 0.0.4."""
        self._advance()
        text = render_prometheus(
            self.table.select(), pushes_ok=self.received_pushes - self.bad_pushes,
            pushes_bad=self.bad_pushes, dropped_keys=self.table.dropped_keys,
            alerts_active=self.alerts.active_by_kind(), window_s=self.settings.window_s)
        return {"text": text, "content_type": CONTENT_TYPE}

    @op("metrics.reset")
    def _op_reset(self, call: Call) -> dict[str, Any]:
        """Forget everything (tests, benchmarks); active alerts are published as cleared."""
        for event in self.alerts.clear_all(time.time()):
            self.publisher.publish("metrics.alert", event)
        self.table.clear()
        self.stats.drain()
        self.actors.clear()
        self.received_pushes = self.bad_pushes = 0
        logger.info("metrics reset (pid {})", os.getpid())
        return {"reset": True}
