"""R9 through a TCP relay under our control (this kernel has no netem qdisc): every byte
between a remote client and the tree is held for --latency-ms in each direction, and every
--drop-every-s seconds the relay resets every connection (SO_LINGER 0), for --duration-s. A
mixed load (idempotent `fake.count`, non-idempotent `fake.effect`, a stream) runs through
it over tcp with CURVE, as R1's load does; R1's bar: every request answered (a result or a
classified error), >= 99.9% succeed within the deadline with the client's retries, no client
hangs. Non-idempotent calls in flight when a connection is reset end `outcome_unknown` by
design (they may have run), so they are counted apart; the actor's own count says none ran
twice.

    python -m perf.r9_relay [--duration-s 60] [--latency-ms 200] [--drop-every-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository root is what `-m` would have put first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moorage.protocol import curve
from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.protocol.remote import target_from_file
from perf._report import Report, Row
from perf._tree import BenchTree
from perf.p1_p2_tcp import free_ports, make_keys
from perf.tcp_relay import TcpRelay

TREE = """
[listen]
endpoint = "tcp://127.0.0.1:{port}"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "beta"
start = "tests.fakes:FakeActor"
"""


class Relay(TcpRelay):
    """127.0.0.1:listen_port -> target for each pair, `latency` each way."""

    def __init__(self, pairs: list[tuple[int, int]], latency_s: float) -> None:
        self.latency = latency_s
        super().__init__(pairs)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each chunk delivered `latency` after it arrived, in order, without holding the
        next chunk's reading back (a delay line, not a slower link)."""
        line: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                if data is None:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        task = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                line.put_nowait((time.monotonic() + self.latency, data))
        finally:
            line.put_nowait((0.0, None))
            await asyncio.gather(task, return_exceptions=True)
            writer.close()


def load(target: Any, op: str, stop: threading.Event, out: Counter, overrun: list) -> None:
    with Client(remote=target, timeout=5.0) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                c.call("alpha", op)
                out["ok"] += 1
            except MoorageError as exc:
                out[exc.error.name] += 1
            overrun[0] = max(overrun[0], time.monotonic() - t0 - 5.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration-s", type=float, default=60.0)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--drop-every-s", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2, help="callers per kind")
    args = ap.parse_args(argv)
    report = Report("r9_relay")
    keys = Path(tempfile.mkdtemp(prefix="mk-", dir="/tmp")) / "keys"
    client_pair = make_keys(keys)
    os.environ[curve.KEYS_ENV] = str(keys)
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # tests.fakes
    port = free_ports(6)
    tree = BenchTree(TREE.format(port=port), ("--allow-external-actors",))
    tree.start()
    relay_base = free_ports(6)
    relay = Relay([(relay_base + i, port + i) for i in range(6)], args.latency_ms / 1000)
    info = json.loads((tree.dir / "tree.json").read_text())
    for eps in info["remote"]["endpoints"].values():
        for k, ep in eps.items():
            eps[k] = f"tcp://127.0.0.1:{int(ep.rpartition(':')[2]) - port + relay_base}"
    relayed = tree.dir / "relayed.json"
    relayed.write_text(json.dumps(info))
    target = target_from_file(relayed, client_pair)
    stop = threading.Event()
    idem: Counter = Counter()
    effect: Counter = Counter()
    overrun = [0.0]
    with Client(tree.dir, timeout=10.0) as local:
        effects0 = local.call("alpha", "fake.count")["effects"]
        threads = [threading.Thread(target=load, args=(target, op, stop, out, overrun))
                   for op, out in (("fake.count", idem), ("fake.effect", effect))
                   for _ in range(args.threads)]
        for t in threads:
            t.start()
        with Client(remote=target, timeout=10.0) as sub_client:
            sub = sub_client.subscribe("beta", ["relay"])
            seqs: list[int] = []
            end = time.monotonic() + args.duration_s
            next_drop = time.monotonic() + args.drop_every_s
            last_pub = 0
            while time.monotonic() < end:
                last_pub = local.call("beta", "fake.publish", {"topic": "relay", "n": 1})[
                    "last_seq"]
                if time.monotonic() >= next_drop:
                    relay.reset()
                    next_drop += args.drop_every_s
                ev = sub.next(timeout=0.05)
                while ev is not None:
                    if isinstance(ev, StreamMessage) and not ev.welcome:
                        seqs.append(ev.seq)
                    ev = sub.next(timeout=0)
            stop.set()
            deadline = time.monotonic() + 30
            while (not seqs or max(seqs) < last_pub) and time.monotonic() < deadline:
                ev = sub.next(timeout=0.5)
                if ev is None:
                    sub.catch_up()
                elif isinstance(ev, StreamMessage) and not ev.welcome:
                    seqs.append(ev.seq)
        for t in threads:
            t.join(20)
        effects = local.call("alpha", "fake.count")["effects"] - effects0
    relay.close()
    tree.stop()
    shutil.rmtree(keys.parent, ignore_errors=True)
    n_idem = sum(idem.values())
    ok_idem = idem["ok"] / n_idem if n_idem else 0.0
    n_eff = sum(effect.values())
    dup = max(0, effects - effect["ok"] - effect["outcome_unknown"])
    first = min(seqs) if seqs else 0
    missing = len(set(range(first, last_pub + 1)) - set(seqs)) if seqs else last_pub
    report.add(Row("R9", "idempotent calls ok within deadline", "%", ">= 99.9%",
                   100 * ok_idem, 99.9, ok_idem >= 0.999, note=f"{dict(idem)}"))
    report.add(Row("R9", "non-idempotent: ok / outcome_unknown", "%", "(informative)",
                   100 * effect["ok"] / max(1, n_eff), 100.0, True,
                   note=f"{dict(effect)}; performed {effects}"))
    report.add(Row("R9", "non-idempotent run twice", "calls", "0", dup, 0, dup == 0))
    report.add(Row("R9", "stream messages missing after replay", "msgs", "0", missing, 0,
                   missing == 0, note=f"{last_pub - first + 1} published, "
                                      f"{len(seqs)} delivered, "
                                      f"{len(seqs) - len(set(seqs))} duplicates"))
    report.add(Row("R9", "longest call past its deadline", "s", "<= 0.5 s", overrun[0], 0.5,
                   overrun[0] <= 0.5, note=f"{relay.resets} resets, "
                                           f"{args.latency_ms:.0f} ms each way"))
    report.extra = {"idempotent": dict(idem), "non_idempotent": dict(effect),
                    "effects": effects, "resets": relay.resets, "args": vars(args)}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
