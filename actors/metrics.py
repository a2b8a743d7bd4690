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

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from loguru import logger

from actors.metering.alerts import AlertPolicy, Alerts
from actors.metering.prometheus import CONTENT_TYPE, render_prometheus
from actors.metering.push import BadPush, OpSample, Push, decode_ops, decode_push, fold_histogram
from actors.metering.series import MAX_SPAN, MetricsTable, Series, summarize
from actors.runtime import Actor, Call, op
from protocol import endpoints, limits

PUSH_BATCH = 256  # pushes taken per wake-up, so requests are not starved

__all__ = [
    "AlertPolicy", "Alerts", "BadPush", "MetricsActor", "MetricsTable", "OpSample", "Push",
    "Settings", "decode_ops", "decode_push", "fold_histogram", "render_prometheus", "summarize",
]


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
