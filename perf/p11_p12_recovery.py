"""P11: SIGKILL of an actor -> the first good reply from its successor.
P12: a hung actor (SIGSTOP) -> detected by heartbeat, killed, replaced, answering again.

The clock starts at the signal and stops at the first reply that carries the successor's
epoch, as a client sees it (the client resends on the disconnect; the request waits in its
queue until the successor binds).

    python -m perf.p11_p12_recovery [--kills 40] [--stops 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from perf._report import Report, Row, percentiles, plot_percentiles
from perf._tree import BenchTree

# P11 measures the restart path itself: the default tree, with an intensity that lets a
# benchmark kill the same actor many times in a row, and every start counted as stable, so
# the crash-loop back-off (which a kill every few milliseconds would rightly trigger) stays
# out of the figure. P12 runs on the untouched default tree.
KILL_CONFIG = """
[supervisor]
intensity = 100000
period_s = 1
stable_after_s = 0
"""
ACTOR = "metrics"


def signal_to_successor_ms(client, actor: str, sig: int) -> float:
    """Signal the actor; milliseconds until a reply carries its successor's epoch."""
    hello = client.call(actor, "sys.hello")
    t0 = time.perf_counter()
    os.kill(hello["pid"], sig)
    while client.call(actor, "sys.hello", timeout=10.0)["ep"] == hello["ep"]:
        pass
    return (time.perf_counter() - t0) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--stops", type=int, default=5)
    args = ap.parse_args(argv)
    report = Report("p11_p12_recovery")
    tree = BenchTree(KILL_CONFIG)
    tree.start()
    client = tree.client(timeout=10.0, attempt_timeout=0.5)
    try:
        kills = [signal_to_successor_ms(client, ACTOR, signal.SIGKILL)
                 for _ in range(args.kills)]
        pk = percentiles(kills)
        report.add(Row("P11", "SIGKILL -> successor's first reply p50", "ms", "<= 30 ms",
                       pk[50], None, pk[50] <= 30))
        report.add(Row("P11", "SIGKILL -> successor's first reply p99", "ms", "<= 150 ms",
                       pk[99], None, pk[99] <= 150, note=f"{len(kills)} kills; max "
                       f"{max(kills):.1f} ms"))
    finally:
        client.close()
        tree.stop()
    tree = BenchTree()
    tree.start()
    client = tree.client(timeout=10.0, attempt_timeout=0.5)
    try:
        stops: list[float] = []
        for _ in range(args.stops):
            stops.append(signal_to_successor_ms(client, ACTOR, signal.SIGSTOP))
            # Let the successor count as stable (default stable_after_s = 5), so the next hang
            # is a first failure again, not part of a crash loop.
            wait_stable = time.monotonic() + 5.2
            while time.monotonic() < wait_stable:
                client.call(ACTOR, "sys.ping")
        ps = percentiles(stops)
        report.add(Row("P12", "SIGSTOP -> detected, replaced, answering (max)", "ms",
                       "<= 1000 ms (defaults)", max(stops), None, max(stops) <= 1000,
                       note=f"{len(stops)} hangs; p50 {ps[50]:.0f} ms; heartbeat 200 ms x 3"))
        plot_percentiles("p11_kill_to_reply", {"SIGKILL -> first good reply": kills}, unit="ms")
        report.extra = {"kills_ms": kills, "stops_ms": stops}
    finally:
        client.close()
        tree.stop()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
