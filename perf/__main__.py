"""Every benchmark and every peer in one run, and one table of all their rows.

    python -m perf [--quick] [--only NAME ...] [--skip NAME ...] [--out DIR] [--list]

Each benchmark runs as its own process (`python -m perf.<name>`, exactly as it runs alone),
one after another so none measures another's load, with its output in DIR/<name>.log and its
rows and plots in DIR/<name>/. A benchmark that crashes or overruns its time is a failed line in the
table, not the end of the run; a peer that is not installed is a skipped line that says how to
install it (the script's own words). The table that ends the run is also written as Markdown
(DIR/table.md, with the date, the machine and its load), the form README's performance
section quotes.

`--quick` runs every benchmark on small counts (a few minutes in all): figures to see that
each runs, not to quote. The exit status is 1 when any row failed or any benchmark did not
finish.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf._report import RESULTS_DIR


@dataclass(frozen=True)
class Bench:
    """One script: its module under perf, and the arguments of a quick run."""

    name: str
    quick: tuple[str, ...] = ()
    timeout_s: float = 1800.0

    @property
    def module(self) -> str:
        return f"perf.{self.name}"


BENCHES = (
    Bench("p1_p2_ipc", ("--n", "3000")),
    Bench("p1_p2_tcp", ("--n", "3000")),
    Bench("request_path", ("--n", "3000")),
    Bench("client_latency_overhead", ("--n", "3000")),
    Bench("p3_p4_terminal", ("--n", "300", "--mb", "10", "--p13", "500", "--sessions", "10")),
    Bench("p5_parser", ("--mb", "1", "--commands", "2000", "--repeat", "1")),
    Bench("p5_parser_actor", ("--mb", "1", "--n", "300", "--repeat", "1")),
    Bench("p6_p10_watcher", ("--n", "3000", "--files", "10000")),
    Bench("p11_p12_recovery", ("--kills", "10", "--stops", "2")),
    Bench("p14_idle", ("--seconds", "4", "--warmup", "2")),
    Bench("p15_startup", ("--runs", "2")),
    Bench("r10_levels", ("--max-seconds", "30")),
    Bench("metrics_flood", ("--pushes", "150", "--after-s", "10")),
    Bench("clients", ("--n", "2000")),
    Bench("chaos", ("--short",)),
    Bench("r9_relay", ("--duration-s", "10")),
    Bench("peers.ray_actors", ("--quick",)),
    Bench("peers.node_pty", ("--quick",)),
    Bench("peers.watchman", ("--samples", "30", "--burst", "2000", "--files", "10000")),
    Bench("peers.xterm_headless", ("--mb", "1", "--commands", "2000", "--repeat", "1")),
)


@dataclass
class Outcome:
    bench: Bench
    status: str  # ran | skipped | crashed | timed out
    exit_code: int | None
    seconds: float
    rows: list[dict[str, Any]]
    last_line: str


def run_one(bench: Bench, quick: bool, out: Path) -> Outcome:
    """The benchmark in its own process group, so an overrun takes its trees with it."""
    log = out / f"{bench.name}.log"
    argv = [sys.executable, "-m", bench.module, *(bench.quick if quick else ())]
    env = dict(os.environ, MOORAGE_PERF_DIR=str(out / bench.name))
    t0 = time.monotonic()
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent)
        try:
            code: int | None = proc.wait(bench.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.monotonic() - t0
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    rows = read_rows(out / bench.name)
    if code is None:
        status = "timed out"
    elif rows:
        status = "ran"
    elif code == 0:
        status = "skipped"  # a peer that is not installed says so and exits 0
    else:
        status = "crashed"
    return Outcome(bench, status, code, seconds, rows, last)


def read_rows(folder: Path) -> list[dict[str, Any]]:
    """The rows a script wrote (it may write none: a peer not installed)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        rows += list(doc.get("rows", [])) if isinstance(doc, dict) else chaos_rows(doc)
    return rows


def chaos_rows(doc: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """chaos.py writes its scenarios, not rows: each is read as a row of its target (R1, R2,
    R5, R12, R14)."""
    return [{"id": r["scenario"].split()[0], "what": f"chaos {r['scenario']}: calls answered right",
             "unit": "%", "target": ">= 99.9%, 0 hung/wrong/gaps"
             + (", sys.ping <= 50 ms" if r["scenario"].startswith("R12") else ""),
             "measured": 100.0 * r["success"], "limit": None, "ratio": None,
             "passed": r["passed"],
             "note": f"{r['calls']} calls, hung {r['hung']}, wrong {r['wrong']}, "
                     f"unreported gaps {r['gaps_unreported']}, orphans {r['orphans']}"
                     + _slowest_ping(r)}
            for r in doc]


def _slowest_ping(scenario: dict[str, Any]) -> str:
    """R12's slowest sys.ping during the abuse, and whose (the row fails past 50 ms)."""
    pings = scenario.get("notes", {}).get("max_ping_ms")
    if not pings:
        return ""
    who = max(pings, key=pings.get)
    return f", slowest sys.ping {pings[who]} ms ({who})"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load average at start {load}")


def figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def table(outcomes: list[Outcome]) -> list[str]:
    """Markdown: one line per row, and one per benchmark that gave none."""
    lines = ["| bench | id | what | measured | limit | ratio | target | ok |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        if not o.rows:
            lines.append(f"| {o.bench.name} | - | {o.status}: {o.last_line[:100]} | - | - | - "
                         f"| - | {'skip' if o.status == 'skipped' else 'FAIL'} |")
        for r in o.rows:
            unit = r.get("unit", "")
            lines.append(
                f"| {o.bench.name} | {r['id']} | {r['what']} | {figure(r['measured'])} {unit} "
                f"| {figure(r.get('limit'))} | {figure(r.get('ratio'))} | {r['target']} "
                f"| {'PASS' if r['passed'] else 'FAIL'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in BENCHES]
    ap = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: minutes, not to quote")
    ap.add_argument("--only", nargs="+", choices=names, metavar="NAME")
    ap.add_argument("--skip", nargs="+", choices=names, default=[], metavar="NAME")
    ap.add_argument("--out", type=Path, help="where logs and rows go (default: a new folder "
                                             "under perf/results)")
    ap.add_argument("--list", action="store_true", help="name every benchmark and stop")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(names))
        return 0
    chosen = [b for b in BENCHES if (not args.only or b.name in args.only)
              and b.name not in args.skip]
    out = args.out or RESULTS_DIR / time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    header = [f"# moorage performance, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
              f"{' (quick)' if args.quick else ''}", "", machine(), ""]
    print("\n".join(header))
    outcomes = []
    for bench in chosen:
        print(f"{bench.name:<26} ...", end="", flush=True)
        o = run_one(bench, args.quick, out)
        failed = sum(1 for r in o.rows if not r["passed"])
        print(f" {o.status}, {len(o.rows)} rows, {failed} failed, {o.seconds:.0f} s"
              + (f" (exit {o.exit_code})" if o.status in ("crashed", "timed out") else ""))
        outcomes.append(o)
    lines = header + table(outcomes)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print()
    print("\n".join(table(outcomes)))
    print(f"\nlogs, rows and plots in {out}; the table in {out / 'table.md'}")
    bad = [o for o in outcomes if o.status in ("crashed", "timed out")
           or any(not r["passed"] for r in o.rows)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
