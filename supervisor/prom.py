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

`/metrics` is opt-in, loopback only, prometheus_client's WSGI app served in threads of the
root supervisor (started after its zygote was forked, so no child inherits a thread), at most
SLOTS connections at once, each for a bounded time (`BoundedServer`);
each scrape asks the tree through its own blocking `Client` (the client is per thread, and the
supervisor's sockets belong to its loop), and hands prometheus_client the families parsed
back from the same text the CLI prints.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from loguru import logger
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from moorage.actors.metrics.prometheus import CONTENT_TYPE, Text
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError

LOOPBACK = ("127.0.0.1", "localhost")
LEVELS = ("normal", "moderate", "high", "critical")
ADDR_FILE = "metrics-http"  # in the runtime dir: where the endpoint listens (port 0 resolved)
SLOTS = 4  # connections served at once; one more is answered 503 and closed
SOCKET_TIMEOUT_S = 5.0  # a connection silent this long (reading or writing) is closed
CONNECTION_S = 15.0  # and none is served longer than this in all (a scrape's budget is 4 s)
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Retry-After: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n")

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


class QuietHandler(WSGIRequestHandler):
    timeout = SOCKET_TIMEOUT_S  # (set on each connection by StreamRequestHandler.setup)

    def log_message(self, format: str, *args: Any) -> None:
        """Not a line per scrape: the supervisor's log is the tree's."""


class BoundedServer(WSGIServer):
    """prometheus_client's own server starts a thread per connection and keeps it as long as
    the connection lasts: anything local opening connections and saying nothing would make
    the root supervisor start threads without end. Here at most SLOTS connections are served
    at once, each in a thread of its own for at most CONNECTION_S; one past them is answered
    503 at once and closed, never queued."""

    def __init__(self, addr: tuple[str, int]) -> None:
        super().__init__(addr, QuietHandler)
        self.slots = threading.BoundedSemaphore(SLOTS)
        self.lock = threading.Lock()
        self.deadlines: dict[socket.socket, float] = {}  # the connections being served

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):  # (a new socket's buffer takes it whole)
                request.send(BUSY, socket.MSG_DONTWAIT)
            self.shutdown_request(request)
            return
        with self.lock:
            self.deadlines[request] = time.monotonic() + CONNECTION_S
        threading.Thread(target=self.serve, args=(request, client_address), daemon=True,
                         name="metrics-http").start()

    def serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self.lock:  # (before the close: service_actions never cuts a closed one)
                del self.deadlines[request]
            self.shutdown_request(request)
            self.slots.release()

    def service_actions(self) -> None:
        """Between serve_forever's polls (every 0.5 s): a connection past its deadline, a
        client sending a byte now and then, is cut (its thread then ends)."""
        now = time.monotonic()
        with self.lock:
            for conn, end in self.deadlines.items():
                if end < now:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: nothing for the tree's console."""
        logger.opt(exception=True).debug("metrics over HTTP: {}", client_address)


class MetricsHttp:
    """The running endpoint; `close()` stops it (the supervisor does on shutdown)."""

    def __init__(self, runtime_dir: Path, listen: str) -> None:
        host, port = parse_listen(listen)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TreeCollector(runtime_dir))
        try:
            self.server = BoundedServer((host, port))
        except OSError as exc:  # (a port taken: say which, for the failed line)
            raise OSError(exc.errno, f"--metrics-http {listen}: {exc.strerror}") from None
        self.server.set_app(make_wsgi_app(registry))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="metrics-http-accept")
        self.thread.start()
        self.port = self.server.server_port
        self.addr_file = runtime_dir / ADDR_FILE
        self.addr_file.write_text(f"{host}:{self.port}\n")
        logger.info("metrics over HTTP on http://{}:{}/metrics", host, self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.addr_file.unlink(missing_ok=True)
