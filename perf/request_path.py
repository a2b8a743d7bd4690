"""Where a request's time goes, per side, in µs: the breakdown behind P1 and P6.

The actor's side runs a real actor (the watcher, in this process, its sockets bound in a
temporary runtime dir) and times each step of its request path on the frames a real client
sends: decode, reply-cache lookup, argument binding, the handler, the result's shape check,
encoding, the send (handing the reply to ZeroMQ), the metrics record; then the whole
`_handle` the same number of times, so "sum of steps" and "whole" can be compared. Replies go
to a real DEALER and are drained between batches.

The client's side times the Python client's steps on the same op: building the call (ids,
deadline, encoding), the breaker, decoding the reply, its bookkeeping and latency record.

The wire is what a round trip costs beyond both: a bare DEALER to a bare ROUTER echo in
another process (perf/_raw.py) measured in the same run, beside the client's round trip to
the actor (another process too, the watcher of a real tree). And the send's own cost in a
process of its own, with ZeroMQ's I/O threads scheduled normally and as SCHED_BATCH
(actors/runtime/actor.py says why), alternated.

The scheduler's view (perf/_sched.py), in blocks of sys.ping and fs.read calls to the same
watcher and of the bare echo: each side's CPU per call (the actor's main and ZeroMQ I/O
threads, the client's), how often the actor's main thread was preempted and waited for a
CPU, and the CPU of both processes against the wall time. In-process steps run hot; these
are what the same work costs between wake-ups.

    python -m perf.request_path [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

if not __package__:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zmq

from moorage.actors.runtime.actor import Call
from moorage.actors.watcher.actor import WatcherActor
from moorage.protocol.client._core import CallPlan, ClientCore
from moorage.protocol.envelope import decode_reply, decode_request, encode_reply, shape_problem
from moorage.protocol.wire import recv_frames, send_frames
from perf import _sched
from perf._raw import RawEcho
from perf._report import Report, Row, percentiles
from perf._sched import Share
from perf._tree import BenchTree

pc = time.perf_counter


def per_call(fn: Callable[[], Any], n: int) -> float:
    """Median over 5 blocks of the mean µs per call of `fn` (a block is n/5 calls)."""
    block = max(1, n // 5)
    out = []
    for _ in range(5):
        t0 = pc()
        for _ in range(block):
            fn()
        out.append((pc() - t0) / block * 1e6)
    return statistics.median(out)


class ActorBench:
    """A watcher in this process, a DEALER talking to it, one op's request frames."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "run"
        self.dir.mkdir()
        self.actor = WatcherActor("watcher", self.dir, {"push_metrics": False})
        self.ctx = zmq.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.connect(f"ipc://{self.dir}/watcher.rpc")
        self.core = ClientCore(self.dir)
        self.pending = 0

    def frames(self, op: str, args: Any) -> list[bytes]:
        """A request as the client sends it, received by the actor's ROUTER (route first)."""
        plan = CallPlan(self.core, "watcher", op, args, 3600.0, True)
        send_frames(self.dealer, plan.frames)
        got = recv_frames(self.actor.rpc)
        return got

    def drain(self) -> None:
        while self.pending:
            recv_frames(self.dealer)
            self.pending -= 1

    def handle(self, frames: list[bytes]) -> None:
        self.actor.handle_request(frames)
        self.pending += 1
        if self.pending >= 256:
            self.drain()

    def steps(self, frames: list[bytes], n: int) -> dict[str, float]:
        a = self.actor
        route, wire = frames[:1], frames[1:]
        req = decode_request(wire)
        spec = a.ops[req.op]
        kwargs = spec.bind(req.args)
        call = Call(a, [route], req, pc(), spec)
        result = spec.handler(call, **kwargs)
        body, atts = (result.body, result.attachments) if hasattr(result, "body") \
            else (result, ())
        reply = encode_reply(req.id, a.epoch, body, atts)

        def send() -> None:
            a.send_reply(route, reply)
            self.pending += 1
            if self.pending >= 256:
                self.drain()

        out = {
            "decode": per_call(lambda: decode_request(wire), n),
            "reply cache lookup": per_call(lambda: a.cache.get(req.sid, req.id), n),
            "bind arguments": per_call(lambda: spec.bind(req.args), n),
            "handler": per_call(lambda: spec.handler(call, **kwargs), n),
            "shape check": per_call(lambda: shape_problem(body), n)
            if spec.checked else 0.0,
            "encode": per_call(lambda: encode_reply(req.id, a.epoch, body, atts), n),
            "send (to ZeroMQ)": per_call(send, n),
            "metrics record": per_call(lambda: a.stats.record(req.op, 42, True, False), n),
        }
        self.drain()
        out["sum of steps"] = sum(out.values())
        out["whole _handle"] = per_call(lambda: self.handle(frames), n)
        self.drain()
        return out

    def client_steps(self, op: str, args: Any, reply: list[bytes], n: int) -> dict[str, float]:
        core = self.core

        def build() -> CallPlan:
            return CallPlan(core, "watcher", op, args, 5.0, True)

        plan = build()
        decoded = decode_reply(reply)

        def finish() -> None:
            p = build()
            p.start(p.started)
            p.on_reply(decoded, pc())

        out = {
            "build call (id, deadline, encode)": per_call(build, n),
            "breaker + start": per_call(lambda: plan.start(plan.started), n),
            "decode reply": per_call(lambda: decode_reply(reply), n),
        }
        whole = per_call(finish, n)
        out["reply bookkeeping + latency record"] = max(
            0.0, whole - out["build call (id, deadline, encode)"] - out["breaker + start"])
        out["sum of steps"] = sum(out.values())
        return out

    def close(self) -> None:
        self.dealer.close(0)
        self.ctx.term()
        self.actor.rpc.close(0)


SEND_PROBE = r"""
import os, sys, time, zmq
from moorage.protocol.wire import recv_frames, send_frames
ctx = zmq.Context()
if sys.argv[2] == "batch":
    ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH); ctx.set(zmq.THREAD_PRIORITY, 0)
r = ctx.socket(zmq.ROUTER); r.bind(sys.argv[1])
pc = time.perf_counter; took = []
while True:
    f = recv_frames(r)
    if f[-1] == b"stop":
        break
    t0 = pc(); send_frames(r, f); took.append(pc() - t0)
took.sort()
print(f"{took[len(took) // 2] * 1e6:.2f} {took[int(len(took) * 0.9)] * 1e6:.2f}")
"""


def send_cost(work: Path, policy: str, n: int) -> tuple[float, float]:
    """p50 and p90 µs of a ROUTER's send of a reply, in a process of its own, as a client in
    this process pings it."""
    endpoint = f"ipc://{work}/send-{policy}.sock"
    proc = subprocess.Popen([sys.executable, "-c", SEND_PROBE, endpoint, policy],
                            stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(endpoint)
    for _ in range(n):
        d.send_multipart([b"MOOR1", b"x" * 56, b"\xc0"])
        d.recv_multipart()
    d.send_multipart([b"stop"])
    out, _ = proc.communicate(timeout=60)
    d.close(0)
    ctx.term()
    p50, p90 = (float(x) for x in out.split())
    return p50, p90


Shares = dict[str, Share]


def sched_shares(server: int, call: Callable[[], Any], n: int) -> tuple[Shares, float]:
    """`n` calls of `call`, one after another, with every thread of the `server` process and
    of this one read before and after (perf/_sched.py); and the wall µs per call."""
    def calls(count: int) -> None:
        for _ in range(count):
            call()

    calls(200)
    return _sched.stretch({server: "server", os.getpid(): "client"}, lambda: calls(n), n)


def add_sched_rows(report: Report, op: str, ours: tuple[Shares, float],
                   raw: tuple[Shares, float]) -> None:
    """Ours beside the bare echo's (the limit column) for each side's threads."""
    none = Share(0, 0, 0, 0)

    def side(shares: Shares, prefix: str) -> float:
        return sum(v.cpu_us for k, v in shares.items() if k.startswith(prefix))

    (mine, wall), (bare, bare_wall) = ours, raw
    main, io = mine.get("server main", none), mine.get("server zmq-io", none)
    report.add(Row("sched", f"{op}: actor main thread CPU per call", "µs", "(breakdown)",
                   main.cpu_us, bare.get("server main", none).cpu_us, True,
                   note=f"limit: the bare echo's; preempted in {main.preempted:.0%} of "
                        f"calls, run delay {main.wait_us:.1f} µs a call"))
    report.add(Row("sched", f"{op}: actor ZeroMQ I/O thread CPU per call", "µs", "(breakdown)",
                   io.cpu_us, bare.get("server zmq-io", none).cpu_us, True,
                   note=f"run delay {io.wait_us:.1f} µs a call"))
    report.add(Row("sched", f"{op}: client CPU per call (all its threads)", "µs", "(breakdown)",
                   side(mine, "client "), side(bare, "client "), True))
    cpu = side(mine, "")
    report.add(Row("sched", f"{op}: wall per call, one after another", "µs", "(breakdown)",
                   wall, bare_wall, True,
                   note=f"CPU of both processes {cpu:.0f} µs ({cpu / wall:.2f} cores busy on "
                        f"average; the echo's {side(bare, ''):.0f} µs); runnable but waiting "
                        f"{sum(v.wait_us for v in mine.values()):.1f} µs"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    args = ap.parse_args(argv)
    report = Report("request_path")
    work = Path(tempfile.mkdtemp(prefix="mrp-", dir="/tmp"))
    try:
        data = work / "f.txt"
        data.write_bytes(os.urandom(4096))
        bench = ActorBench(work)
        breakdown: dict[str, dict[str, float]] = {}
        try:
            bench.actor.files.read(str(data))  # a miss, answered later: fills the cache
            deadline = pc() + 10
            while bench.actor.files.read_cached(str(data), 0, None) is None and pc() < deadline:
                bench.actor.loop.run_once(10)
            for op, op_args in (("sys.ping", None), ("fs.read", {"path": str(data)})):
                frames = bench.frames(op, op_args)
                steps = bench.steps(frames, args.n)
                breakdown[f"actor {op}"] = steps
                bench.actor.handle_request(frames)
                reply = recv_frames(bench.dealer)
                breakdown[f"client {op}"] = bench.client_steps(op, op_args, reply, args.n)
        finally:
            bench.close()
        for side, steps in breakdown.items():
            for step, us in steps.items():
                report.add(Row("path", f"{side}: {step}", "µs", "(breakdown)", us, None, True))
        # The wire: the client's round trip to a real tree's watcher, beside a bare echo.
        tree = BenchTree()
        tree.start()
        raw = RawEcho(tree.dir)
        client = tree.client(timeout=10.0)
        try:
            client.call("watcher", "fs.read", {"path": str(data)})
            ours: list[float] = []
            ping: list[float] = []
            limit: list[float] = []
            for _ in range(args.n // 2):
                limit += raw.latencies(1)
                t0 = pc()
                client.call("watcher", "sys.ping")
                t1 = pc()
                client.call("watcher", "fs.read", {"path": str(data)})
                ours.append((pc() - t1) * 1e6)
                ping.append((t1 - t0) * 1e6)
            # Where each side's CPU goes, ours and the bare echo's, in blocks of their own.
            watcher = client.call("watcher", "sys.info")["pid"]
            assert raw.proc.pid is not None
            sched = {op: (sched_shares(watcher, partial(client.call, "watcher", op, op_args),
                                       args.n // 2),
                          sched_shares(raw.proc.pid, raw.round_trip, args.n // 2))
                     for op, op_args in (("sys.ping", None), ("fs.read", {"path": str(data)}))}
        finally:
            client.close()
            raw.close()
            tree.stop()
        pr, pp, pl = percentiles(ours), percentiles(ping), percentiles(limit)
        report.add(Row("wire", "bare DEALER -> ROUTER echo round trip p50", "µs", "(limit)",
                       pl[50], None, True))
        report.add(Row("wire", "client sys.ping round trip p50 (watcher)", "µs", "(P1 shape)",
                       pp[50], pl[50], True))
        report.add(Row("wire", "client fs.read hit round trip p50", "µs", "(P6 shape)",
                       pr[50], pl[50], True))
        for op, (ours_sched, raw_sched) in sched.items():
            add_sched_rows(report, op, ours_sched, raw_sched)
        sends = {"normal": [], "batch": []}
        for _ in range(3):
            for policy in sends:
                sends[policy].append(send_cost(work, policy, max(2000, args.n // 4)))
        for policy, runs in sends.items():
            p50 = statistics.median(r[0] for r in runs)
            p90 = statistics.median(r[1] for r in runs)
            report.add(Row("send", f"a ROUTER's send of a reply, I/O threads {policy}", "µs",
                           "(breakdown)", p50, None, True, note=f"p90 {p90:.1f} µs, 3 runs"))
        report.extra = {"breakdown_us": breakdown, "sends": sends,
                        "sched_per_call_us": {
                            op: {name: ({k: vars(v) for k, v in sh.items()}, w)
                                 for name, (sh, w) in zip(("ours", "raw"), pair, strict=True)}
                            for op, pair in sched.items()},
                        "round_trip_us": {"fs.read": pr, "sys.ping": pp, "raw": pl}}
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
