"""`moorage up --metrics-http`: a real tree serving Prometheus text over real HTTP, read back
with prometheus_client's own parser."""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from moorage.supervisor.prom import ADDR_FILE, SLOTS, parse_listen
from tests.conftest import ROOT, Tree, kill_instance
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"
[[children]]
id = "fake"
start = "tests.fakes:FakeActor"
[actor.resource]
interval_s = 0.2
"""


class HttpTree(Tree):
    """The conftest tree, started with `--metrics-http` (everything else as there)."""

    listen = ""

    def start(self, wait: bool = True) -> Tree:
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moorage.supervisor.cli",
                 "--instance-dir", str(self.runtime_dir),
                 "up", "--config", str(self.config_path), "--metrics-http", self.listen,
                 "--allow-external-actors"],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                start_new_session=True)
        self.events = self.client.subscribe("supervisor", ["sup.event"], from_seq=1)
        if wait:
            self.wait_all_running()
        return self


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=[TREE])
def http_tree(runtime_dir, request):
    tree = HttpTree(runtime_dir, request.param)
    tree.listen = f"127.0.0.1:{free_port()}"
    yield tree
    tree.stop()


def scrape(listen: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], family: str, **labels: str) -> float:
    for s in families[family].samples:
        if all(s.labels.get(k) == v for k, v in labels.items()) and not s.name.endswith(
                "_created"):
            return s.value
    raise AssertionError(f"no {family} sample with {labels}")


def test_the_endpoint_serves_ops_restarts_and_pressure_in_prometheus_format(http_tree):
    tree = http_tree.start()
    assert (tree.runtime_dir / ADDR_FILE).read_text().strip() == tree.listen
    for _ in range(5):
        tree.call("fake", "fake.work")
    # The metrics actor hears of the calls on the fake's next push (about a second): no event
    # says so, hence a bounded poll of the fact itself.
    end = time.monotonic() + 20
    while not tree.call("metrics", "metrics.query", {"actor": "fake", "op": "fake.work"})["ops"]:
        assert time.monotonic() < end, "fake.work never reached the metrics actor"
        time.sleep(0.1)  # sleep-ok: a bounded poll of a fact no event announces

    fams = scrape(tree.listen)
    assert sample(fams, "moorage_op_requests", actor="fake", op="fake.work") >= 5
    assert sample(fams, "moorage_op_errors", actor="fake", op="fake.work",
                  fault="service") == 0
    assert sample(fams, "moorage_op_duration_seconds", actor="fake", op="fake.work",
                  le="+Inf") >= 5
    assert sample(fams, "moorage_child_restarts", supervisor="supervisor", child="fake") == 0
    assert sample(fams, "moorage_child_up", child="resource") == 1
    assert 0 <= sample(fams, "moorage_pressure_ratio") <= 1
    assert sample(fams, "moorage_quality") in (0, 1, 2, 3)
    assert sum(s.value for s in fams["moorage_pressure_level"].samples) == 1
    assert all(s.value == 0 for s in fams["moorage_scrape_error"].samples)

    old = tree.child("fake")["pid"]
    tree.call("supervisor", "sup.kill", {"child": "fake"})
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "fake"
                    and e["pid"] != old)
    assert sample(scrape(tree.listen), "moorage_child_restarts", child="fake") == 1


# Heartbeats slow enough that a stopped metrics actor is not restarted during the scrape.
SLOW_HEARTBEAT = TREE.replace("interval_ms = 100, misses = 3", "interval_ms = 1000, misses = 30")


@pytest.mark.parametrize("http_tree", [SLOW_HEARTBEAT], indirect=True)
def test_a_source_that_does_not_answer_is_reported_not_fatal(http_tree):
    tree = http_tree.start()
    tree.call("supervisor", "sup.kill", {"child": "metrics", "signal": "SIGSTOP"})
    try:
        fams = scrape(tree.listen)
        assert sample(fams, "moorage_scrape_error", source="metrics") == 1
        assert sample(fams, "moorage_scrape_error", source="supervisor") == 0
        assert "moorage_child_restarts" in fams
    finally:
        tree.call("supervisor", "sup.kill", {"child": "metrics", "signal": "SIGCONT"})


def test_metrics_http_listens_on_loopback_only(runtime_dir):
    out = subprocess.run(
        [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(runtime_dir), "up",
         "--metrics-http", "0.0.0.0:9464"], capture_output=True, text=True, cwd=ROOT,
        timeout=60)
    assert out.returncode == 2 and "loopback only" in out.stderr


def test_metrics_http_on_a_port_taken_is_a_failed_start_naming_it(runtime_dir):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        listen = f"127.0.0.1:{other.getsockname()[1]}"
        try:
            out = subprocess.run(
                [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                 str(runtime_dir), "up", "--metrics-http", listen], capture_output=True,
                text=True, cwd=ROOT, timeout=90)
        finally:
            kill_instance(runtime_dir)
    error = json.loads(out.stdout)["error"]
    assert out.returncode == 1 and error["name"] == "start_failed", (out.returncode, error)
    assert f"--metrics-http {listen}: Address already in use" in error["message"], error


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def scraped(listen: str) -> dict[str, Any] | None:
    """A scrape, or None if the endpoint was busy (503) or closed the connection."""
    try:
        return scrape(listen)
    except (OSError, http.client.HTTPException):
        return None


SILENT = 40


def test_silent_connections_hold_a_few_threads_for_a_while_then_scrapes_are_served(http_tree):
    """(prometheus_client's server started a thread per connection and kept it while the
    connection lasted: forty connections that said nothing were forty threads in the root
    supervisor, for ever.)"""
    tree = http_tree.start()
    assert scraped(tree.listen)
    before = threads(tree.pid)
    silent = [socket.create_connection(parse_listen(tree.listen), timeout=10)
              for _ in range(SILENT)]
    try:
        answered: set[socket.socket] = set()

        def answered_at_least(n: int) -> bool:
            waiting = [s for s in silent if s not in answered]
            answered.update(select.select(waiting, [], [], 1.0)[0] if waiting else [])
            return len(answered) >= n or threads(tree.pid) > before + SILENT // 2

        wait_for(lambda: answered_at_least(SILENT - SLOTS), "connections past the slots "
                 "answered")
        assert threads(tree.pid) <= before + SLOTS, (before, threads(tree.pid))
        # 503 at once; or, on a machine slow to connect them all, end of file for one that
        # was served and has since been cut for its silence
        replies = {s.recv(100)[:13] for s in answered}
        assert b"HTTP/1.0 503 " in replies and replies <= {b"HTTP/1.0 503 ", b""}, replies
        # Those served say nothing: each is cut after its socket timeout, freeing its slot.
        wait_for(lambda: answered_at_least(SILENT), "silent connections cut", timeout=60)
        assert threads(tree.pid) <= before + SLOTS
    finally:
        for s in silent:
            s.close()
    fams = wait_for(lambda: scraped(tree.listen), "a scrape once the slots were free")
    assert sample(fams, "moorage_child_up", child="fake") == 1
