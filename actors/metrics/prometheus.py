"""The metrics actor's families in Prometheus text exposition format 0.0.4.

One schema for the whole tree (supervisor/prom.py adds the tree's own families: children,
pressure, quality): names in snake case under `moorage_`, base units (seconds, ratios),
counters ending in `_total`.

Latency is one **histogram** family per op, `moorage_op_duration_seconds`, not a summary:
this actor holds every op's service times as exact counts (HDR-equivalent values), so
cumulative buckets cost nothing to give, and unlike a summary's quantiles they can be summed
across ops, actors and trees and turned into any quantile over any range in PromQL
(`histogram_quantile`). Buckets are DURATION_BUCKETS; a value on a bucket's bound counts in
it (`le`). `_sum` is at HDR resolution (within 1%). All op figures are since the metrics actor
started (counters reset when it restarts, as Prometheus expects of a process's counters).

  moorage_op_requests_total{actor,op}          counter    requests answered
  moorage_op_errors_total{actor,op,fault}      counter    of them, errors; fault = caller |
                                                          service (protocol.errors.Fault)
  moorage_op_duration_seconds{actor,op}        histogram  service time
  moorage_metrics_pushes_total{result}         counter    pushes received, ok | bad
  moorage_metrics_dropped_keys_total           counter    op entries the full table refused
  moorage_alerts_active{kind}                  gauge      failure_rate | latency | data_loss
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import accumulate

from moorage.actors.metrics.series import Series
from moorage.actors.runtime.beat import progress

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: 50 µs (a cache hit) to a minute (a long term.exec), about 2.5x apart.
DURATION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ALERT_KINDS = ("failure_rate", "latency", "data_loss")


def label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class Text:
    """Families written one after another, each with its HELP and TYPE lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        ls = ",".join(f'{k}="{label(v)}"' for k, v in labels.items())
        self.lines.append(f"{name}{{{ls}}} {num(value)}" if ls else f"{name} {num(value)}")

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


_EDGES_US = tuple(round(b * 1e6) for b in DURATION_BUCKETS)
_LES = (*(f"{b:g}" for b in DURATION_BUCKETS), "+Inf")
# microsecond value -> its bucket's index. A series holds HDR-equivalent values, 3,328 at
# most, so each is placed once: a walk of the edges for every value of every series made
# rendering a full table cost seconds of the loop.
_BUCKET_OF: dict[int, int] = {}
_BUCKET_OF_MAX = 8192


def duration_buckets(counts: Mapping[int, int]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs of microsecond values, +Inf last."""
    per = [0] * len(_LES)
    known = _BUCKET_OF
    for us, n in counts.items():
        i = known.get(us)
        if i is None:
            i = bisect_left(_EDGES_US, us)  # the first edge at or above it (`le`)
            if len(known) < _BUCKET_OF_MAX:
                known[us] = i
        per[i] += n
    return list(zip(_LES, accumulate(per), strict=True))


def render_prometheus(series: Iterable[Series], *, pushes_ok: int, pushes_bad: int,
                      dropped_keys: int, alerts_active: Mapping[str, int]) -> str:
    rows = list(series)
    t = Text()
    t.family("moorage_op_requests_total", "counter",
             "Requests answered, per actor and op.")
    for s in rows:
        t.sample("moorage_op_requests_total", {"actor": s.actor, "op": s.op}, s.ok + s.error)
    t.family("moorage_op_errors_total", "counter",
             "Requests answered with an error, by whose fault it was: the caller's (bad "
             "arguments, unknown op, missing file) or the service's.")
    for s in rows:
        for fault, n in (("caller", s.caller), ("service", s.error - s.caller)):
            t.sample("moorage_op_errors_total", {"actor": s.actor, "op": s.op, "fault": fault},
                     n)
    name = "moorage_op_duration_seconds"
    t.family(name, "histogram", "Service time of an op, in the actor.")
    for s in rows:
        progress()  # a series at a time: a full table's values outlast one loop turn
        key = {"actor": s.actor, "op": s.op}
        for le, n in duration_buckets(s.counts):
            t.sample(f"{name}_bucket", {**key, "le": le}, n)
        t.sample(f"{name}_sum", key, s.sum_us / 1e6)
        t.sample(f"{name}_count", key, s.ok + s.error)
    t.family("moorage_metrics_pushes_total", "counter",
             "Metrics pushes the metrics actor received, by result.")
    t.sample("moorage_metrics_pushes_total", {"result": "ok"}, pushes_ok)
    t.sample("moorage_metrics_pushes_total", {"result": "bad"}, pushes_bad)
    t.family("moorage_metrics_dropped_keys_total", "counter",
             "Op entries not kept because the (actor, op) table was full.")
    t.sample("moorage_metrics_dropped_keys_total", {}, dropped_keys)
    t.family("moorage_alerts_active", "gauge", "Alerts raised now, by kind.")
    for kind in ALERT_KINDS:
        t.sample("moorage_alerts_active", {"kind": kind}, alerts_active.get(kind, 0))
    return t.render()
