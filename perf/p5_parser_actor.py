"""P5 through the parser actor: `parse.feed` via the client, beside limits from the same run.

    python -m perf.p5_parser_actor [--mb 4] [--n 3000] [--repeat 5]

A real tree (`moorage up`: metrics and the parser, as the default tree's parser block has it).
Input: p5_parser's coloured compiler-like output (SGR-heavy, a shell-integration cycle every 40
lines, with the session nonce). Each run opens a fresh stream with the nonce, markers only.

  P5  parse.feed of 64 KiB chunks, one after the other, MB/s. Limit: the serial sum of what
      the actor cannot avoid, each measured here on the same chunks: a bare round trip
      of the same request frames (an echo that answers with the small frames only) plus the
      library (`Parser.feed`) in this process. The markers found must equal those generated.
      The seed's 100 MB/s is the library's target (perf/p5_parser.py); through the actor the
      target is a ratio, as P2's is.
  P1  parse.feed of 4 KiB chunks, round trip p50 and p99 (µs). Limit: the same bare
      round trip of the same frames: P1's limit at this size. Printed beside it, from the
      same blocks: the library's own time for these chunks, and sys.ping through the client
      (what the runtime costs without parsing).

Information only: the same 64 KiB feeds pipelined (window 16, bytes in the body's `data`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import zmq

from moorage.protocol.client import Client
from moorage.protocol.envelope import encode_request
from moorage.protocol.wire import recv_frames, send_frames
from perf._raw import forked
from perf._report import Report, Row, percentiles, plot_percentiles
from perf._tree import BenchTree
from perf.p5_parser import NONCE, chunks_of, coloured

TREE = """
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
restart = "permanent"

[[children]]
id = "parser"
start = "moorage.actors.parser.actor:ParserActor"
restart = "permanent"
shutdown_ms = 2000
fallbacks = ["raw_passthrough"]
"""


def _echo_small(endpoint: str) -> None:
    """A ROUTER that answers each request with its routing id, tag, header and body: the
    request's bytes travel one way, a small reply the other, as with parse.feed."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    s.bind(endpoint)
    while True:
        frames = recv_frames(s)
        send_frames(s, frames[:4])
        if len(frames) == 2:
            break
    s.close(0)
    ctx.term()


class RawFeed:
    """The transport limit: a bare DEALER -> ROUTER (the tree's frame mover, as perf/_raw.py)
    with parse.feed's request frames."""

    def __init__(self, directory: Path) -> None:
        endpoint = f"ipc://{directory}/raw-feed.sock"
        self.proc = forked(_echo_small, endpoint)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def seconds(self, chunks: list[bytes]) -> list[float]:
        """One round trip per chunk, each timed."""
        deadline = int(time.time() * 1000) + 60_000
        out = []
        pc = time.perf_counter
        offset = 0
        for i, chunk in enumerate(chunks):
            frames = encode_request(i + 1, "raw-feed-0123456789", "parse.feed",
                                    {"stream": "s", "offset": offset}, deadline, [chunk])
            t0 = pc()
            send_frames(self.sock, frames)
            recv_frames(self.sock)
            out.append(pc() - t0)
            offset += len(chunk)
        return out

    def close(self) -> None:
        send_frames(self.sock, [b"stop"])
        self.proc.join(5)
        self.sock.close(0)
        self.ctx.term()


def library_seconds(chunks: list[bytes]) -> list[float]:
    from moorage.actors.vtparse import Parser

    feed = Parser(NONCE).feed
    pc = time.perf_counter
    out = []
    for c in chunks:
        t0 = pc()
        feed(c)
        out.append(pc() - t0)
    return out


def actor_seconds(client: Client, stream: str, chunks: list[bytes]) -> tuple[list[float], int]:
    """One parse.feed per chunk on a fresh stream; the times and the markers answered."""
    client.call("parser", "parse.open", {"stream": stream, "nonce": NONCE})
    pc = time.perf_counter
    out, markers, offset = [], 0, 0
    for c in chunks:
        t0 = pc()
        reply = client.request("parser", "parse.feed", {"stream": stream, "offset": offset},
                               attachments=[c], idempotent=True)
        out.append(pc() - t0)
        markers += len(reply.body["events"])
        offset = reply.body["offset"]
    client.call("parser", "parse.close", {"stream": stream}, idempotent=True)
    return out, markers


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=4.0, help="size of the input, MB")
    ap.add_argument("--n", type=int, default=3000, help="4 KiB round trips per side")
    ap.add_argument("--repeat", type=int, default=5, help="runs per throughput figure")
    args = ap.parse_args(argv)
    data, expected = coloured(int(args.mb * 1_000_000), random.Random(5))
    big = chunks_of(data, 64 * 1024)
    small = chunks_of(data, 4096)[: args.n]
    report = Report("p5_parser_actor")
    tree = BenchTree(TREE)
    tree.start()
    raw = RawFeed(tree.dir)
    client = tree.client(timeout=30.0)
    try:
        actor_seconds(client, "warm", small[:500])
        raw.seconds(small[:500])
        ours_rates, limit_rates, found = [], [], []
        for r in range(args.repeat):
            t_ours, markers = actor_seconds(client, f"big{r}", big)
            t_limit = [a + b for a, b in zip(raw.seconds(big), library_seconds(big), strict=True)]
            ours_rates.append(len(data) / sum(t_ours) / 1e6)
            limit_rates.append(len(data) / sum(t_limit) / 1e6)
            found.append(markers)
        mo, ml = statistics.median(ours_rates), statistics.median(limit_rates)
        ok_markers = all(f == expected for f in found)
        report.add(Row("P5", "parse.feed 64 KiB coloured via client", "MB/s",
                       ">= 50% of limit", mo, ml, mo >= 0.5 * ml and ok_markers,
                       note=f"median of {args.repeat}; limit = bare round trip of the "
                            f"same frames + the library, serially; markers {found[0]} of "
                            f"{expected}"))

        ours_us: list[float] = []
        limit_us: list[float] = []
        ping_us: list[float] = []
        blocks = 5
        per = len(small) // blocks
        pc = time.perf_counter
        for b in range(blocks):
            part = small[b * per : (b + 1) * per]
            limit_us += [s * 1e6 for s in raw.seconds(part)]
            ours_us += [s * 1e6 for s in actor_seconds(client, f"small{b}", part)[0]]
            for _ in part:
                t0 = pc()
                client.call("parser", "sys.ping")
                ping_us.append((pc() - t0) * 1e6)
        lib_us = [s * 1e6 for s in library_seconds(small)]
        po, pl, pb = percentiles(ours_us), percentiles(limit_us), percentiles(lib_us)
        pp = percentiles(ping_us)
        report.add(Row("P1", "parse.feed 4 KiB p50 via client", "µs",
                       "<= 1.3x limit + library", po[50], pl[50],
                       po[50] <= 1.3 * pl[50] + pb[50],
                       note=f"same run: library alone on these chunks p50 {pb[50]:.1f} µs; "
                            f"sys.ping via client p50 {pp[50]:.1f} µs"))
        report.add(Row("P1", "parse.feed 4 KiB p99 via client", "µs", "<= 500 µs",
                       po[99], pl[99], po[99] <= 500))
        plot_percentiles("p5_parser_actor_feed_4k", {
            "parse.feed 4 KiB via client": ours_us,
            "bare round trip, same frames": limit_us,
            "sys.ping via client": ping_us,
        })

        client.call("parser", "parse.open", {"stream": "piped", "nonce": NONCE})
        calls, offset = [], 0
        for c in big:
            calls.append(("parse.feed", {"stream": "piped", "offset": offset, "data": c}))
            offset += len(c)
        t0 = time.perf_counter()
        client.pipeline("parser", calls, window=16, idempotent=True)
        piped = len(data) / (time.perf_counter() - t0) / 1e6
        report.extra = {"p5_mb_s": {"ours": ours_rates, "limit": limit_rates},
                        "p1_4k_us": {"ours": po, "limit": pl, "library": pb, "ping": pp},
                        "info_pipelined_mb_s": piped}
        print(f"\ninformation only: 64 KiB feeds pipelined (window 16): {piped:.1f} MB/s")
    finally:
        client.close()
        raw.close()
        tree.stop()
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
