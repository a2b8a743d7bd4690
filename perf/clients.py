"""The clients in the editors' languages beside their own language's raw zeromq: sys.ping
round-trip p50/p99 and pipelined throughput from the Python, TypeScript and Rust clients,
each beside a bare DEALER of the same language sending the same frames to a bare ROUTER echo,
in the same run. Each side alternates one raw and one client round trip, so both see the same
machine. Target: each client's p50 <= 1.3x its own language's raw echo. Beside it, in a block
of its own alternated with the raw echo in the same way, the frames a client sends (a new id
and a deadline each) sent by a bare DEALER of the language straight to the actor: the echo
does no work, the actor decodes, dispatches and records. That splits each client's excess
over the raw echo into the actor's share (bare - raw) and the client's own (the rest), each
block's excess taken over the raw echo of the same block (the echo's own p50 moves from one
block to the next by as much as the client's share).

    python -m perf.clients [--n 10000]      (needs node/npm and cargo; builds what it runs)
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: the repository root is what `-m` would have put first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from moorage.protocol import endpoints
from moorage.protocol.envelope import encode_request
from moorage.protocol.wire import recv_frames, send_frames
from perf._raw import RawEcho
from perf._report import Report, Row, percentiles
from perf._tree import BenchTree

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "protocol" / "typescript"
RUST = ROOT / "protocol" / "rust"
ACTOR = "parser"  # an idle actor: the metrics actor spends milliseconds merging pushes
P50_FACTOR = 1.3


def python_side(tree: BenchTree, raw: RawEcho, n: int) -> dict:
    client = tree.client(timeout=10.0)
    ctx = zmq.Context()
    bare = ctx.socket(zmq.DEALER)  # the same frames straight to the actor: no client code
    bare.setsockopt(zmq.LINGER, 0)
    bare.connect(endpoints.rpc(tree.dir, ACTOR))
    ids = itertools.count(1)

    def bare_trip() -> float:
        """The frames a client sends (a new id, a deadline), with no client code: µs."""
        frames = encode_request(next(ids), "bare-dealer-0123456789", "sys.ping", None,
                                int(time.time() * 1000) + 10_000)
        t0 = pc()
        send_frames(bare, frames)
        recv_frames(bare)
        return (pc() - t0) * 1e6

    pc = time.perf_counter
    try:
        for _ in range(2000):
            raw.round_trip()
            client.call(ACTOR, "sys.ping")
            bare_trip()
        ours: list[float] = []
        limit: list[float] = []
        direct: list[float] = []
        limit_beside: list[float] = []
        for _ in range(n):  # the limit and ours in turn
            limit += raw.latencies(1)
            t0 = pc()
            client.call(ACTOR, "sys.ping")
            ours.append((pc() - t0) * 1e6)
        # The actor's own share, after them in a block of its own (a third round trip
        # between the two compared slows whichever comes after it: perf/p1_p2_tcp.py),
        # alternated with the raw echo as the client was.
        for _ in range(n):
            limit_beside += raw.latencies(1)
            direct.append(bare_trip())
        rates_ours, rates_raw = [], []
        for _ in range(3):
            rates_raw.append(raw.pipelined(2 * n))
            t0 = pc()
            results = client.pipeline(ACTOR, [("sys.ping", None)] * (2 * n), window=256)
            rates_ours.append(2 * n / (pc() - t0))
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:  # (an error reply is no call done)
                raise RuntimeError(f"{len(failed)} pipelined sys.ping failed: {failed[0]}")
    finally:
        client.close()
        bare.close(0)
        ctx.term()
    po, pl, pd, pb = (percentiles(x, (50, 99)) for x in (ours, limit, direct, limit_beside))
    return {"client": {"p50": po[50], "p99": po[99], "rate": max(rates_ours)},
            "raw": {"p50": pl[50], "p99": pl[99], "rate": max(rates_raw)},
            "actor_direct": {"p50": pd[50], "p99": pd[99], "raw_p50": pb[50]}}


def external_side(cmd: list[str], cwd: Path) -> dict:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000, help="round trips per side")
    ap.add_argument("--only", choices=["python", "typescript", "rust"], action="append",
                    help="measure only these clients (default: all three)")
    args = ap.parse_args(argv)
    # Built before anything is timed.
    subprocess.run(["npm", "run", "build"], cwd=TS, check=True, capture_output=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "bench"], cwd=RUST,
                   check=True, capture_output=True)
    report = Report("clients")
    tree = BenchTree()
    tree.start()
    raw = RawEcho(tree.dir)  # the bare ROUTER echo every language's raw DEALER talks to
    sides: dict[str, dict] = {}
    try:
        only = set(args.only or ["python", "typescript", "rust"])
        common = [str(tree.dir), ACTOR, raw.endpoint, str(args.n)]
        if "python" in only:
            sides["python"] = python_side(tree, raw, args.n)
        if "typescript" in only:
            sides["typescript"] = external_side(["node", "dist/bench/ping.js", *common], TS)
        if "rust" in only:
            sides["rust"] = external_side(
                [str(RUST / "target" / "release" / "examples" / "bench"), *common], RUST)
    finally:
        raw.close()
        tree.stop()
    for lang, s in sides.items():
        c, r = s["client"], s["raw"]
        report.add(Row(f"C-{lang[:2]}", f"{lang}: sys.ping p50 vs raw {lang} echo", "µs",
                       f"<= {P50_FACTOR}x limit", c["p50"], r["p50"],
                       c["p50"] <= P50_FACTOR * r["p50"]))
        d, beside = s["actor_direct"]["p50"], s["actor_direct"]["raw_p50"]
        report.add(Row(f"C-{lang[:2]}", f"{lang}: p50 of the same frames sent bare", "µs",
                       "(reported)", d, beside, True,
                       note=f"a bare DEALER to the actor alternated with the raw echo (its "
                            f"p50 in that block the limit): the actor's share about "
                            f"{d - beside:.0f} µs, the client's own about "
                            f"{(c['p50'] - r['p50']) - (d - beside):.0f} µs (each block's "
                            "excess over its own raw echo)"))
        report.add(Row(f"C-{lang[:2]}", f"{lang}: sys.ping p99 (raw p99 as limit)", "µs",
                       "(reported)", c["p99"], r["p99"], True))
        report.add(Row(f"C-{lang[:2]}", f"{lang}: pipelined sys.ping (raw as limit)", "/s",
                       "(reported)", c["rate"], r["rate"], True, note="best of 3, window 256"))
    report.extra = {"sides": sides, "n": args.n}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
