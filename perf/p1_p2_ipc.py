"""P1 (sys.ping round trip through the client) and P2 (pipelined throughput), each beside
the bare echo on the same frames in the same run (perf/_raw.py: the tree's own frame mover on
both ends; pyzmq's multipart calls measured beside it, informative): P1 alternates one raw
and one client round trip, so both see the same machine (this one is shared and its latency
drifts by 2x), in an order that turns each time (what runs just before a sample slows it).

    python -m perf.p1_p2_ipc [--n 20000]      (or: python perf/p1_p2_ipc.py)
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

if not __package__:  # run as a file: the repository root is what `-m` would have put first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf._raw import (
    LIMIT_ECHO,
    P2_TARGET,
    RawEcho,
    in_turn,
    p2_passes,
    pipelined_rates,
    timed,
)
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
    multipart = RawEcho(tree.dir, api="pyzmq")
    client = tree.client(timeout=10.0)
    batch_client = batch.client(timeout=10.0)
    try:
        for _ in range(2000):
            client.call(ACTOR, "sys.ping")
            batch_client.call(ACTOR, "sys.ping")
        ours: list[float] = []
        batched: list[float] = []
        limit: list[float] = []
        pyzmq: list[float] = []
        in_turn([lambda: limit.extend(raw.latencies(1)),
                 timed(partial(client.call, ACTOR, "sys.ping"), ours),
                 lambda: pyzmq.extend(multipart.latencies(1)),
                 timed(partial(batch_client.call, ACTOR, "sys.ping"), batched)], args.n)
        po, pl, pb, pm = (percentiles(x) for x in (ours, limit, batched, pyzmq))
        report.add(Row("P1", "sys.ping p50 via client (ipc)", "µs", "<= 1.15x limit",
                       po[50], pl[50], po[50] <= 1.15 * pl[50], note=f"limit: {LIMIT_ECHO}"))
        report.add(Row("P1", "bare echo with pyzmq's multipart calls, p50", "µs",
                       "(informative)", pm[50], pl[50], True,
                       note=f"p99 {pm[99]:.0f} µs; the client's p50 is "
                            f"{po[50] / pm[50]:.2f}x of it"))
        report.add(Row("P1", "sys.ping p99 via client (ipc)", "µs", "<= 500 µs",
                       po[99], pl[99], po[99] <= 500))
        report.add(Row("P1", "same, I/O threads SCHED_BATCH, p50", "µs", "(informative)",
                       pb[50], pl[50], True,
                       note=f"p99 {pb[99]:.0f} µs; default tree p50 {po[50]:.0f} µs"))
        report.add(Row("P1", "sys.ping p99.9 via client (ipc)", "µs", "(seed 2 ms)",
                       po[99.9], pl[99.9], po[99.9] <= 2000))
        plot_percentiles("p1_ping", {"moorage client sys.ping": ours, "bare echo": limit,
                                     "bare echo, pyzmq multipart": pyzmq})

        n = args.n * 2
        rates_ours, rates_raw = pipelined_rates(raw, client, ACTOR, n)
        rates_pyzmq = [multipart.pipelined(n) for _ in range(3)]
        ro, rl, rm = max(rates_ours), max(rates_raw), max(rates_pyzmq)
        report.add(Row("P2", "pipelined sys.ping through client", "/s", P2_TARGET, ro, rl,
                       p2_passes(ro, rl), note=f"best of 3; limit: {LIMIT_ECHO}"))
        report.add(Row("P2", "bare echo with pyzmq's multipart calls, pipelined", "/s",
                       "(informative)", rm, rl, True, note="best of 3"))
        report.extra = {"p1_us": {"ours": po, "limit": pl, "io_threads_batch": pb,
                                  "pyzmq_multipart": pm},
                        "p2_per_run": {"ours": rates_ours, "limit": rates_raw,
                                       "pyzmq_multipart": rates_pyzmq}}
    finally:
        client.close()
        batch_client.close()
        raw.close()
        multipart.close()
        tree.stop()
        batch.stop()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
