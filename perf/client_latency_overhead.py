"""What recording and pushing the client's own latency costs a call.

Two figures, each beside its limit from the same run:
  - the record path alone (`LatencyBook.record`), pushing off and on, in ns per call, beside
    P1's sys.ping round trip, which every call pays anyway;
  - sys.ping round trips through three kinds of client on the same actor: one that does not
    push (the limit), one pushing every second (the default interval) and one pushing every
    10 ms (a hundred times the work of the default, so any cost of the pusher's thread shows).
    They take turns in blocks, in an order that turns each round (what runs just before a
    block slows it), and each block has a client of its own, opened for it and closed after:
    a pusher is a thread of the process it runs in, so while a block runs, no other client
    and no other pusher is alive in this process. The limit is thus measured with no pusher
    at all, and each pushing client beside nothing but its own pusher. A block lasts at least
    `--block-s` seconds (default 1.2: longer than the default interval, so each block of the
    1 s client holds one of its pushes, about the rate it pushes at) and its share of `--n`;
    many short blocks rather than a few long ones, so that the machine's drift falls alike on
    each kind.

    python -m perf.client_latency_overhead [--n 20000] [--rounds 12] [--block-s 1.2]
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


KINDS: dict[str, dict[str, object]] = {
    "plain": {},
    "push 1 s": {"metrics_name": "bench-1s", "metrics_interval": 1.0},
    "push 10 ms": {"metrics_name": "bench-10ms", "metrics_interval": 0.01},
}
"""The clients compared, by the options that make them push (none: the limit)."""


def block(tree: BenchTree, options: dict[str, object], calls: int, min_s: float
          ) -> tuple[list[float], int, int]:
    """One block: a client of its own, warmed, then timed round trips until it made `calls`
    and `min_s` seconds have passed; closed after. Returns the samples (µs), and the pushes its
    pusher sent and deferred while the block ran (0 for a client that does not push)."""
    pc = time.perf_counter
    c = tree.client(timeout=10.0, **options)  # type: ignore[arg-type]
    try:
        for _ in range(200):  # warm; it also lets the previous block's last push be merged
            c.call(ACTOR, "sys.ping")
        pusher = c.core.pusher
        sent0, deferred0 = (0, 0) if pusher is None else (pusher.sent, pusher.deferred)
        out: list[float] = []
        call = c.call
        end = pc() + min_s
        while len(out) < calls or pc() < end:
            t0 = pc()
            call(ACTOR, "sys.ping")
            out.append((pc() - t0) * 1e6)
        if pusher is None:
            assert not options, "a client given metrics_name has no pusher"
            return out, 0, 0
        return out, pusher.sent - sent0, pusher.deferred - deferred0
    finally:
        c.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="round trips per kind of client, "
                    "at least")
    ap.add_argument("--rounds", type=int, default=12,
                    help="blocks per kind, in an order that turns each round")
    ap.add_argument("--block-s", type=float, default=1.2, help="seconds per block, at least")
    args = ap.parse_args(argv)
    report = Report("client_latency_overhead")

    off_ns, on_ns = record_ns(False), record_ns(True)

    tree = BenchTree()
    tree.start()
    try:
        block(tree, {}, 2000, 0.0)  # the tree's first connections and the actor, warm
        lat: dict[str, list[float]] = {k: [] for k in KINDS}
        pushes: dict[str, int] = {k: 0 for k in KINDS}
        deferred: dict[str, int] = {k: 0 for k in KINDS}
        names = list(KINDS)
        per_block = -(-args.n // args.rounds)
        for r in range(args.rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                samples, sent, kept = block(tree, KINDS[name], per_block, args.block_s)
                lat[name] += samples
                pushes[name] += sent
                deferred[name] += kept
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
                               m, lim, m <= bound * lim,
                               note=f"{args.rounds} blocks each in turn, no other client in "
                                    f"the process; n {len(lat[name])} (limit "
                                    f"{len(lat['plain'])}); {pushes[name]} pushes while "
                                    f"timed"))
        assert pushes["push 1 s"] > 0 and pushes["push 10 ms"] > 0, pushes
        report.extra = {
            "record_ns": {"off": off_ns, "on": on_ns},
            "percentiles_us": {k: {str(q): v for q, v in d.items()} for k, d in p.items()},
            "pushes": {"1s": pushes["push 1 s"], "10ms": pushes["push 10 ms"]},
            "deferred": {"1s": deferred["push 1 s"], "10ms": deferred["push 10 ms"]},
            "n": {k: len(v) for k, v in lat.items()},
            "rounds": args.rounds,
            "block_s": args.block_s,
        }
        plot_percentiles("client_latency_overhead", lat)
    finally:
        tree.stop()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
