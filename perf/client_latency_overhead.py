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

And two informative kinds beside them, which say how much of the 10 ms row is the machine's: a
client pushing every 10 ms to a sink process outside the tree instead of the metrics actor (the
client's own cost, and a receiver's wake-up with no work after it), and a client that does not
push, beside a process that only wakes every 10 ms (perf/_beside.py: what any 100 Hz activity
costs a round trip on this machine, the least a 100 Hz push can cost).

    python -m perf.client_latency_overhead [--n 20000] [--rounds 12] [--block-s 1.2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moorage.protocol.client import Client
from moorage.protocol.client._latency import LatencyBook, LatencyPusher
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
    "push 10 ms, to a sink": {"metrics_name": "bench-10ms-sink", "metrics_interval": 0.01},
    "plain, beside a 100 Hz tick": {},
}
"""The clients compared, by the options that make them push (none: the limit)."""

BESIDE = {"push 10 ms, to a sink": "sink", "plain, beside a 100 Hz tick": "tick"}
"""The kinds that run with a process of perf/_beside.py beside them, and which."""


@contextmanager
def beside(what: str | None) -> Iterator[str | None]:
    """A perf/_beside.py process for the block, if its kind has one: yields the sink's
    endpoint (None for a tick or none), and kills the process after the block."""
    if what is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mp-sink-", dir="/tmp") as d:
        endpoint = f"ipc://{Path(d) / 'sink'}"
        args = ["sink", endpoint] if what == "sink" else ["tick"]
        proc = subprocess.Popen([sys.executable, "-m", "perf._beside", *args],
                                stdout=subprocess.PIPE, text=True)
        try:
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"perf._beside {what} did not start")
            yield endpoint if what == "sink" else None
        finally:
            proc.kill()
            proc.wait()


def block(tree: BenchTree, name: str, calls: int, min_s: float
          ) -> tuple[list[float], int, int]:
    """One block of kind `name`: a client of its own (and the process its kind has beside
    it), warmed, then timed round trips until it made `calls` and `min_s` seconds have
    passed; closed after. Returns the samples (µs), and the pushes its pusher sent and
    deferred while the block ran (0 for a client that does not push)."""
    options = KINDS[name]
    with beside(BESIDE.get(name)) as sink:
        c = tree.client(timeout=10.0, **options)  # type: ignore[arg-type]
        try:
            assert (c.core.pusher is None) == (not options), f"{name}: pusher as not asked"
            if sink is not None:  # its pushes go to the sink instead of the metrics actor
                core = c.core
                core.pusher.close()  # type: ignore[union-attr]
                core.pusher = LatencyPusher(core.latency, c.ctx, lambda sock: sink,
                                            str(options["metrics_name"]), core.sid,
                                            float(options["metrics_interval"]))  # type: ignore[arg-type]
            return timed(c, calls, min_s)
        finally:
            c.close()


def timed(c: Client, calls: int, min_s: float) -> tuple[list[float], int, int]:
    pc = time.perf_counter
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
        return out, 0, 0
    return out, pusher.sent - sent0, pusher.deferred - deferred0


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
        block(tree, "plain", 2000, 0.0)  # the tree's first connections and the actor, warm
        lat: dict[str, list[float]] = {k: [] for k in KINDS}
        pushes: dict[str, int] = {k: 0 for k in KINDS}
        deferred: dict[str, int] = {k: 0 for k in KINDS}
        names = list(KINDS)
        per_block = -(-args.n // args.rounds)
        for r in range(args.rounds):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                samples, sent, kept = block(tree, name, per_block, args.block_s)
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
        # What the machine charges for 100 Hz, beside the 10 ms row (informative): the
        # same pushes into a sink, and a process that only wakes at that rate.
        for name in BESIDE:
            for q in (50, 99):
                m, lim = p[name][q], p["plain"][q]
                report.add(Row("C2", f"sys.ping p{q}, {name}", "µs", "(informative)", m,
                               lim, True, note=f"what 100 Hz costs here without the metrics "
                                               f"actor; n {len(lat[name])}; {pushes[name]} "
                                               f"pushes while timed"))
        assert all(pushes[k] > 0 for k in KINDS if KINDS[k]), pushes
        report.extra = {
            "record_ns": {"off": off_ns, "on": on_ns},
            "percentiles_us": {k: {str(q): v for q, v in d.items()} for k, d in p.items()},
            "pushes": pushes,
            "deferred": deferred,
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
