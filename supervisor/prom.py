"""`moorage up --metrics-http 127.0.0.1:PORT`: the tree's metrics for a Prometheus scraper.

Opt-in, loopback only, served by prometheus_client's own HTTP server in threads of the root
supervisor process (started after the zygote was forked, so no child inherits a thread). Each
scrape asks the tree through its own blocking `Client` (one per scrape: the client is per
thread, and the supervisor's sockets belong to its loop):

  metric                                   labels                 from
  moorage_op_requests_total                actor, op              metrics.query (lifetime)
  moorage_op_errors_total                  actor, op              metrics.query (lifetime)
  moorage_op_latency_seconds               actor, op, quantile    metrics.query (lifetime)
  moorage_op_window_requests               actor, op              metrics.query (window)
  moorage_op_window_error_ratio            actor, op              metrics.query (window)
  moorage_child_restarts_total             supervisor, child      sup.status (whole tree)
  moorage_child_up                         supervisor, child      sup.status: 1 if running
  moorage_child_uptime_seconds             supervisor, child      sup.status
  moorage_pressure                         -                      resource.level (0..100)
  moorage_pressure_level                   level                  resource.level: 1 for now
  moorage_quality                          -                      resource.level (3..0)
  moorage_scrape_error                     source                 1 if that source failed

The metrics and resource actors are asked only when the tree has them.

A source that does not answer is reported as `moorage_scrape_error{source}` = 1 and its
metrics are left out: the scrape itself still succeeds with what the rest said.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError

LOOPBACK = ("127.0.0.1", "localhost")
QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"), ("0.999", "p999"), ("1", "max"))
LEVELS = ("normal", "moderate", "high", "critical")
ADDR_FILE = "metrics-http"  # in the runtime dir: where the endpoint listens (port 0 resolved)


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:PORT` -> (host, port); anything not on loopback is refused."""
    host, sep, port = text.rpartition(":")
    if not sep or host not in LOOPBACK or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"want 127.0.0.1:PORT (loopback only), got {text!r}")
    return "127.0.0.1", int(port)


def _walk(tree: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for c in tree.get("children", []):
        yield tree["id"], c
        if "tree" in c:
            yield from _walk(c["tree"])


class TreeCollector(Collector):
    def __init__(self, runtime_dir: Path, timeout: float = 2.0) -> None:
        self.runtime_dir = runtime_dir
        self.timeout = timeout

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily("moorage_scrape_error", "1 if that source did not answer",
                                   labels=["source"])
        with Client(self.runtime_dir, timeout=self.timeout,
                    attempt_timeout=self.timeout / 2) as c:
            status = self._ask(c, errors, "supervisor", "sup.status")
            if status is not None:
                yield from self._children(status)
            # Without the tree's status, ask anyway: an absent actor is then an error.
            kids = {ch["id"]: ch for _, ch in _walk(status)} if status else None
            if kids is None or "metrics" in kids:
                query = self._ask(c, errors, "metrics", "metrics.query")
                if query is not None:
                    yield from self._ops(query)
            if kids is None or "resource" in kids:
                level = self._ask(c, errors, "resource", "resource.level")
                if level is not None:
                    yield from self._pressure(level)
        yield errors

    def _ask(self, c: Client, errors: GaugeMetricFamily, actor: str, op: str) -> Any:
        try:
            out = c.call(actor, op)
        except MoorageError as exc:
            logger.warning("metrics-http: {} {}: {}", actor, op, exc)
            errors.add_metric([actor], 1)
            return None
        errors.add_metric([actor], 0)
        return out

    def _children(self, status: dict[str, Any]) -> Iterator[Metric]:
        labels = ["supervisor", "child"]
        restarts = CounterMetricFamily("moorage_child_restarts", "restarts of a child",
                                       labels=labels)
        up = GaugeMetricFamily("moorage_child_up", "1 if the child is running", labels=labels)
        uptime = GaugeMetricFamily("moorage_child_uptime_seconds", "since the child's start",
                                   labels=labels)
        for sup, ch in _walk(status):
            key = [sup, ch["id"]]
            restarts.add_metric(key, ch["restarts"])
            up.add_metric(key, 1 if ch["state"] == "running" else 0)
            uptime.add_metric(key, ch["uptime_s"])
        yield from (restarts, up, uptime)

    def _ops(self, query: dict[str, Any]) -> Iterator[Metric]:
        labels = ["actor", "op"]
        reqs = CounterMetricFamily("moorage_op_requests", "requests answered", labels=labels)
        errs = CounterMetricFamily("moorage_op_errors", "requests answered with an error",
                                   labels=labels)
        lat = GaugeMetricFamily("moorage_op_latency_seconds", "service time quantiles "
                                "(lifetime)", labels=[*labels, "quantile"])
        wreq = GaugeMetricFamily("moorage_op_window_requests",
                                 f"requests in the last {query['window_s']}s", labels=labels)
        werr = GaugeMetricFamily("moorage_op_window_error_ratio",
                                 f"error ratio in the last {query['window_s']}s", labels=labels)
        for r in query["ops"]:
            key, lt, w = [r["actor"], r["op"]], r["lifetime"], r["window"]
            reqs.add_metric(key, lt["count"])
            errs.add_metric(key, lt["error"])
            for q, field in QUANTILES:
                lat.add_metric([*key, q], lt[field] / 1e6)
            wreq.add_metric(key, w["count"])
            werr.add_metric(key, w["error_rate"])
        yield from (reqs, errs, lat, wreq, werr)

    def _pressure(self, level: dict[str, Any]) -> Iterator[Metric]:
        yield GaugeMetricFamily("moorage_pressure", "the tree's resource pressure, 0..100",
                                value=level["pressure"])
        lv = GaugeMetricFamily("moorage_pressure_level", "1 for the current level",
                               labels=["level"])
        for name in LEVELS:
            lv.add_metric([name], 1 if level["level"] == name else 0)
        yield lv
        yield GaugeMetricFamily("moorage_quality", "quality level, 3 (all on) .. 0",
                                value=level["quality"])


class MetricsHttp:
    """The running endpoint; `close()` stops it (the supervisor does on shutdown)."""

    def __init__(self, runtime_dir: Path, listen: str) -> None:
        host, port = parse_listen(listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TreeCollector(runtime_dir))
        self.server, self.thread = start_http_server(port, host, registry=registry)
        self.port = self.server.server_port
        self.addr_file = runtime_dir / ADDR_FILE
        self.addr_file.write_text(f"{host}:{self.port}\n")
        logger.info("metrics over HTTP on http://{}:{}/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.addr_file.unlink(missing_ok=True)
