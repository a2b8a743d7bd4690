"""Prometheus text exposition format 0.0.4 for the metrics table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from moorage.actors.metrics.series import PERCENTILES, Series, summarize

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
    for kind in ("failure_rate", "latency", "data_loss"):
        out.append(f'moorage_alerts_active{{kind="{kind}"}} {alerts_active.get(kind, 0)}')
    return "\n".join(out) + "\n"


