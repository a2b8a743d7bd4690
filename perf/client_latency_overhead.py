"""What recording and pushing the client's own latency costs a call.

Two figures, each beside its limit from the same run:
  - the record path alone (`LatencyBook.record`), pushing off and on, in ns per call, beside
    P1's sys.ping round trip, which every call pays anyway;
  - sys.ping round trips through three clients taking turns on the same actor: one that does
    not push (the limit), one pushing every second (the default interval) and one pushing every
    10 ms (a hundred times the work of the default, so any cost of the pusher's thread shows).

    python -m perf.client_latency_overhead [--n 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit

from moorage.protocol.client._latency import LatencyBook
from perf._report import Report, Row, percentiles, plot_percentiles
from perf._tree import BenchTree

ACTOR = "parser"  # an idle actor, as P1 uses


def record_ns(pushing: bool, n: int = 200_000) -> float:
    book = LatencyBook(pushing=pushing)
    rec = book.record
    best = min(timeit.repeat(lambda: rec("parser", "sys.ping", 85, True), number=n, repeat=5))
    return best / n * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="round trips per client")
    args = ap.parse_args(argv)
    report = Report("client_latency_overhead")

    off_ns, on_ns = record_ns(False), record_ns(True)

    tree = BenchTree()
    tree.start()
    plain = tree.client(timeout=10.0)
    default = tree.client(timeout=10.0, metrics_name="bench-1s", metrics_interval=1.0)
    busy = tree.client(timeout=10.0, metrics_name="bench-10ms", metrics_interval=0.01)
    try:
        pc = time.perf_counter
        for c in (plain, default, busy):
            for _ in range(2000):
                c.call(ACTOR, "sys.ping")
        lat: dict[str, list[float]] = {"plain": [], "push 1 s": [], "push 10 ms": []}
        clients = list(zip(lat.values(), (plain, default, busy), strict=True))
        for _ in range(args.n):
            for samples, c in clients:
                t0 = pc()
                c.call(ACTOR, "sys.ping")
                samples.append((pc() - t0) * 1e6)
        p = {k: percentiles(v) for k, v in lat.items()}
        p1 = p["plain"][50]
        report.add(Row("C1", "record path, pushing off (ns/call)", "ns", "<= 1% of P1 p50",
                       off_ns, p1 * 1000, off_ns <= 0.01 * p1 * 1000))
        report.add(Row("C1", "record path, pushing on (ns/call)", "ns", "<= 1% of P1 p50",
                       on_ns, p1 * 1000, on_ns <= 0.01 * p1 * 1000))
        for name in ("push 1 s", "push 10 ms"):
            for q, bound in ((50, 1.05), (99, 1.25)):
                m, lim = p[name][q], p["plain"][q]
                report.add(Row("C2", f"sys.ping p{q}, {name}", "µs", f"<= {bound}x not pushing",
                               m, lim, m <= bound * lim))
        assert default.core.pusher is not None and busy.core.pusher is not None
        report.extra = {
            "record_ns": {"off": off_ns, "on": on_ns},
            "percentiles_us": {k: {str(q): v for q, v in d.items()} for k, d in p.items()},
            "pushes": {"1s": default.core.pusher.sent, "10ms": busy.core.pusher.sent},
            "deferred": {"1s": default.core.pusher.deferred,
                         "10ms": busy.core.pusher.deferred},
            "n": args.n,
        }
        plot_percentiles("client_latency_overhead", lat)
    finally:
        for c in (plain, default, busy):
            c.close()
        tree.stop()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
