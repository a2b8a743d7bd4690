"""P1 (sys.ping round trip through the client) and P2 (pipelined throughput), each beside
bare pyzmq on the same frames in the same run: P1 alternates one raw and one client round
trip, so both see the same machine (this one is shared and its latency drifts by 2x).

    python -m perf.p1_p2_ipc [--n 20000]      (or: python perf/p1_p2_ipc.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a file: the repository root is what `-m` would have put first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf._raw import P2_TARGET, RawEcho, p2_passes, pipelined_rates
from perf._report import Report, Row, percentiles, plot_percentiles
from perf._tree import BenchTree

ACTOR = "parser"  # an idle actor: the metrics actor spends milliseconds merging pushes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="round trips per side")
    args = ap.parse_args(argv)
    report = Report("p1_p2_ipc")
    tree = BenchTree()
    tree.start()
    # The same tree with ZeroMQ's I/O threads as SCHED_BATCH (io_threads_sched = "batch";
    # actors/runtime/actor.py says why it is not the default), measured in the same blocks.
    batch = BenchTree(f'[actor.{ACTOR}]\nio_threads_sched = "batch"\n')
    batch.start()
    raw = RawEcho(tree.dir)
    client = tree.client(timeout=10.0)
    batch_client = batch.client(timeout=10.0)
    try:
        pc = __import__("time").perf_counter
        for _ in range(2000):
            client.call(ACTOR, "sys.ping")
            batch_client.call(ACTOR, "sys.ping")
        ours: list[float] = []
        batched: list[float] = []
        limit: list[float] = []
        call, batch_call = client.call, batch_client.call
        for _ in range(args.n):
            limit += raw.latencies(1)
            t0 = pc()
            call(ACTOR, "sys.ping")
            t1 = pc()
            batch_call(ACTOR, "sys.ping")
            batched.append((pc() - t1) * 1e6)
            ours.append((t1 - t0) * 1e6)
        po, pl, pb = percentiles(ours), percentiles(limit), percentiles(batched)
        report.add(Row("P1", "sys.ping p50 via client (ipc)", "µs", "<= 1.15x limit",
                       po[50], pl[50], po[50] <= 1.15 * pl[50]))
        report.add(Row("P1", "sys.ping p99 via client (ipc)", "µs", "<= 500 µs",
                       po[99], pl[99], po[99] <= 500))
        report.add(Row("P1", "same, I/O threads SCHED_BATCH, p50", "µs", "(informative)",
                       pb[50], pl[50], True,
                       note=f"p99 {pb[99]:.0f} µs; default tree p50 {po[50]:.0f} µs"))
        report.add(Row("P1", "sys.ping p99.9 via client (ipc)", "µs", "(seed 2 ms)",
                       po[99.9], pl[99.9], po[99.9] <= 2000))
        plot_percentiles("p1_ping", {"moorage client sys.ping": ours, "raw pyzmq echo": limit})

        n = args.n * 2
        rates_ours, rates_raw = pipelined_rates(raw, client, ACTOR, n)
        ro, rl = max(rates_ours), max(rates_raw)
        report.add(Row("P2", "pipelined sys.ping through client", "/s", P2_TARGET, ro, rl,
                       p2_passes(ro, rl), note="best of 3"))
        report.extra = {"p1_us": {"ours": po, "limit": pl, "io_threads_batch": pb},
                        "p2_per_run": {"ours": rates_ours, "limit": rates_raw}}
    finally:
        client.close()
        batch_client.close()
        raw.close()
        tree.stop()
        batch.stop()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
