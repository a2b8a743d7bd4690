"""The tree's metrics for Prometheus: one schema for `moorage metrics --prometheus` and for
`moorage up --metrics-http 127.0.0.1:PORT`'s `/metrics`, gathered the same way for both.

The op families are the metrics actor's (`metrics.prometheus`; actors/metrics/prometheus.py
documents them and why latency is a histogram); this module adds the tree's own:

  moorage_child_restarts_total{supervisor,child}   counter  restarts of a child
  moorage_child_up{supervisor,child}               gauge    1 running, 0 anything else
  moorage_child_uptime_seconds{supervisor,child}   gauge    since its current start
  moorage_pressure_ratio                           gauge    the tree's pressure, 0..1
  moorage_pressure_level{level}                    gauge    1 for the current level
  moorage_quality                                  gauge    3 (everything on) .. 0
  moorage_scrape_error{source}                     gauge    1 if that source did not answer

The metrics and resource actors are asked only when the tree has them. A source that does not
answer is reported as `moorage_scrape_error{source}` = 1 and its families are left out; the
scrape still succeeds with what the others said. The whole gathering is bounded by one
budget (each source gets what is left of it).

`/metrics` is opt-in, loopback only, served by prometheus_client's HTTP server in threads of
the root supervisor (started after its zygote was forked, so no child inherits a thread);
each scrape asks the tree through its own blocking `Client` (the client is per thread, and the
supervisor's sockets belong to its loop), and hands prometheus_client the families parsed
back from the same text the CLI prints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from moorage.actors.metrics.prometheus import CONTENT_TYPE, Text
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError

LOOPBACK = ("127.0.0.1", "localhost")
LEVELS = ("normal", "moderate", "high", "critical")
ADDR_FILE = "metrics-http"  # in the runtime dir: where the endpoint listens (port 0 resolved)

__all__ = ["CONTENT_TYPE", "MetricsHttp", "gather", "parse_listen", "tree_families"]


def parse_listen(text: str) -> tuple[str, int]:
    """`127.0.0.1:PORT` -> (host, port); anything not on loopback is refused."""
    host, sep, port = text.rpartition(":")
    if not sep or host not in LOOPBACK or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"want 127.0.0.1:PORT (loopback only), got {text!r}")
    return "127.0.0.1", int(port)


def walk(tree: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for c in tree.get("children", []):
        yield tree["id"], c
        if isinstance(c.get("tree"), dict):
            yield from walk(c["tree"])


def tree_families(status: dict[str, Any] | None, level: dict[str, Any] | None,
                  errors: dict[str, int]) -> str:
    """The tree's own families from `sup.status` and `resource.level` (None: not asked or
    not answered)."""
    t = Text()
    if status is not None:
        rows = list(walk(status))
        t.family("moorage_child_restarts_total", "counter", "Restarts of a child.")
        for sup, ch in rows:
            t.sample("moorage_child_restarts_total", {"supervisor": sup, "child": ch["id"]},
                     ch["restarts"])
        t.family("moorage_child_up", "gauge", "1 if the child is running, else 0.")
        for sup, ch in rows:
            t.sample("moorage_child_up", {"supervisor": sup, "child": ch["id"]},
                     1 if ch["state"] == "running" else 0)
        t.family("moorage_child_uptime_seconds", "gauge", "Time since the child's start.")
        for sup, ch in rows:
            t.sample("moorage_child_uptime_seconds", {"supervisor": sup, "child": ch["id"]},
                     float(ch["uptime_s"]))
    if level is not None:
        t.family("moorage_pressure_ratio", "gauge",
                 "The tree's memory and CPU pressure, 0 (none) to 1 (critical).")
        t.sample("moorage_pressure_ratio", {}, level["pressure"] / 100)
        t.family("moorage_pressure_level", "gauge", "1 for the current pressure level.")
        for name in LEVELS:
            t.sample("moorage_pressure_level", {"level": name}, 1 if level["level"] == name else 0)
        t.family("moorage_quality", "gauge",
                 "Degradation level: 3 everything on, 2 no command records, 1 no shell "
                 "integration, 0 no file watching.")
        t.sample("moorage_quality", {}, level["quality"])
    t.family("moorage_scrape_error", "gauge", "1 if that source did not answer this scrape.")
    for source, failed in sorted(errors.items()):
        t.sample("moorage_scrape_error", {"source": source}, failed)
    return t.render()


def gather(c: Client, budget: float) -> str:
    """The whole tree's metrics text, within `budget` seconds."""
    end = time.monotonic() + budget
    errors: dict[str, int] = {}

    def ask(actor: str, op: str) -> Any:
        left = end - time.monotonic()
        if left <= 0:  # the budget is spent: no answer from this one
            errors[actor] = 1
            return None
        try:
            out = c.call(actor, op, timeout=left, idempotent=True)
        except MoorageError as exc:
            logger.debug("metrics: {} {}: {}", actor, op, exc)
            errors[actor] = 1
            return None
        errors[actor] = 0
        return out

    status = ask("supervisor", "sup.status")
    ids = {ch["id"] for _, ch in walk(status)} if status else None
    ops = ask("metrics", "metrics.prometheus") if ids is None or "metrics" in ids else None
    level = ask("resource", "resource.level") if ids is None or "resource" in ids else None
    text = ops["text"] if ops else ""
    return text + tree_families(status, level, errors)


class TreeCollector(Collector):
    def __init__(self, runtime_dir: Path, budget: float = 4.0) -> None:
        self.runtime_dir = runtime_dir
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        with Client(self.runtime_dir, timeout=self.budget,
                    attempt_timeout=self.budget / 2) as c:
            text = gather(c, self.budget)
        yield from text_string_to_metric_families(text)


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
