"""One Prometheus schema: `moorage metrics --prometheus` and `/metrics` of a real tree give the
same families, and both pass Prometheus' naming rules (what `promtool check metrics` checks,
through prometheus_client's parser and a lint of names and units; promtool itself too when it
is installed). The Grafana dashboard asks only for what the schema has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.test_metrics_http import TREE as HTTP_TREE
from tests.test_metrics_http import HttpTree, free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "moorage.json"
NAME = re.compile(r"^moorage_[a-z][a-z0-9_]*$")
# Units that are not Prometheus base units (seconds, bytes, ratios): their families are wrong.
NOT_BASE = ("_microseconds", "_milliseconds", "_us", "_ms", "_percent", "_kilobytes",
            "_megabytes", "_minutes", "_hours")


def lint(text: str) -> dict[str, str]:
    """Family name -> type, after checking the text as promtool's `check metrics` would; the
    problems found fail the test with every one of them listed."""
    problems = []
    declared: dict[str, str] = {}
    helped = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if name in declared:
                problems.append(f"{name}: TYPE declared twice")
            declared[name] = kind
        elif line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
    for name, kind in declared.items():
        if not NAME.match(name):
            problems.append(f"{name}: not snake case under moorage_")
        if name not in helped:
            problems.append(f"{name}: no HELP")
        if kind == "counter" and not name.endswith("_total"):
            problems.append(f"{name}: a counter must end in _total")
        if kind != "counter" and name.endswith("_total"):
            problems.append(f"{name}: only counters end in _total")
        if name.endswith(NOT_BASE):
            problems.append(f"{name}: not in base units")
        if kind == "summary":
            problems.append(f"{name}: latency is a histogram in this schema")
    families = list(text_string_to_metric_families(text))  # raises on anything unparsable
    for fam in families:
        if fam.type != "histogram":
            continue
        series: dict[tuple, list[tuple[float, float]]] = {}
        counts = {}
        for s in fam.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                series.setdefault(key, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                counts[key] = s.value
        for key, buckets in series.items():
            values = [v for _, v in sorted(buckets)]
            if values != sorted(values):
                problems.append(f"{fam.name}{dict(key)}: buckets not cumulative")
            if sorted(buckets)[-1][0] != float("inf") or values[-1] != counts.get(key):
                problems.append(f"{fam.name}{dict(key)}: +Inf bucket is not _count")
    assert problems == []
    return declared


@pytest.fixture
def http_tree(runtime_dir):
    tree = HttpTree(runtime_dir, HTTP_TREE)
    tree.listen = f"127.0.0.1:{free_port()}"
    yield tree
    tree.stop()


def test_the_cli_and_the_http_endpoint_give_one_schema_that_passes_the_naming_rules(http_tree):
    tree = http_tree.start()
    for _ in range(5):
        tree.call("fake", "fake.work")
    with pytest.raises(Exception):  # noqa: B017 - any error: a caller's, counted as such
        tree.call("fake", "fake.work", {"n": "x"})
    cli = tree.cli("metrics", "--prometheus")
    assert cli.returncode == 0, cli.stderr
    with urllib.request.urlopen(f"http://{tree.listen}/metrics", timeout=10) as r:
        http = r.read().decode()
    cli_types, http_types = lint(cli.stdout), lint(http)
    assert cli_types == http_types
    for name, kind in {"moorage_op_requests_total": "counter",
                       "moorage_op_errors_total": "counter",
                       "moorage_op_duration_seconds": "histogram",
                       "moorage_child_restarts_total": "counter",
                       "moorage_child_up": "gauge", "moorage_child_uptime_seconds": "gauge",
                       "moorage_pressure_ratio": "gauge", "moorage_pressure_level": "gauge",
                       "moorage_quality": "gauge", "moorage_alerts_active": "gauge"}.items():
        assert cli_types[name] == kind, name
    promtool = shutil.which("promtool")
    if promtool is not None:
        out = subprocess.run([promtool, "check", "metrics"], input=cli.stdout, text=True,
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_the_grafana_dashboard_asks_only_for_families_of_the_schema(http_tree):
    tree = http_tree.start()
    text = tree.cli("metrics", "--prometheus").stdout
    names = set(lint(text))
    have = names | {f"{n}_bucket" for n in names} | {f"{n}_sum" for n in names} | \
        {f"{n}_count" for n in names}
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {m for e in exprs for m in re.findall(r"\bmoorage_[a-z0-9_]+", e)}
    assert used and used <= have, used - have
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for want in ("latency", "errors", "restarts", "pressure"):
        assert want in titles
