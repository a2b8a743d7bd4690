"""The physical limit the IPC benchmarks are compared against: the fastest bare echo Python and
ZeroMQ make on this machine, same frames.

A ROUTER in its own process echoes every message back; a DEALER in this process sends the
same three frames a `sys.ping` request has (tag, header, body). No decoding, no dispatch:
what remains is libzmq, the ipc transport and the cheapest way Python moves a multipart
message through it, now. That is the tree's own frame mover (moorage.protocol.wire: a whole
message per call through pyzmq's libzmq, `_cwire.c`) on both ends, where it was built: pyzmq's
`send_multipart`/`recv_multipart` cost about 30 µs more a round trip here and a sixth of the
pipelined rate, and an echo the tree's own sockets outrun is no limit. `api="pyzmq"` measures
that echo too (informative rows beside the limit's).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from moorage.protocol.envelope import encode_request
from moorage.protocol.wire import WIRE_CORE, recv_frames, send_frames, try_recv
from moorage.supervisor.zygote import die_with_parent

LIMIT_ECHO = f"bare echo ({'compiled' if WIRE_CORE == 'compiled' else 'pyzmq'} frames)"
"""What the limit is, for a row's note."""


def _dying_with(parent: int, target: Callable[..., None], *args: Any) -> None:
    die_with_parent(parent)
    target(*args)


def forked(target: Callable[..., None], *args: Any) -> multiprocessing.Process:
    """`target(*args)` in a forked daemon process that dies with this one: a benchmark killed
    by a signal skips multiprocessing's cleanup of its daemons, which would otherwise wait in
    their recv for ever."""
    proc = multiprocessing.get_context("fork").Process(
        target=_dying_with, args=(os.getpid(), target, *args), daemon=True)
    proc.start()
    return proc


def _movers(api: str) -> tuple[Callable[..., None], Callable[..., list[bytes]],
                               Callable[[Any], list[bytes] | None]]:
    """(send, recv, try_recv) of a whole multipart message, by the tree's frame mover or
    by pyzmq's own calls."""
    if api == "wire":
        return send_frames, recv_frames, try_recv

    def try_multipart(s: Any) -> list[bytes] | None:
        try:
            return s.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
    return (lambda s, f: s.send_multipart(f)), (lambda s: s.recv_multipart()), try_multipart


def _echo(endpoint: str, server_secret: bytes | None = None, api: str = "wire") -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    if server_secret is not None:  # tcp: a CURVE server, as the tree's sockets are
        s.setsockopt(zmq.CURVE_SERVER, 1)
        s.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
    s.bind(endpoint)
    send, recv, _ = _movers(api)
    while True:
        frames = recv(s)
        send(s, frames)
        if frames[-1] == b"stop":
            break
    s.close(0)
    ctx.term()


class RawEcho:
    def __init__(self, directory: Path, tcp_endpoint: str | None = None,
                 api: str = "wire") -> None:
        """Over ipc in `directory`; or, given `tcp_endpoint`, over tcp with CURVE (fresh keys,
        no ZAP handler: it only costs at the handshake). `api`: "wire" (the limit) or
        "pyzmq" (send_multipart and recv_multipart on both ends)."""
        self.endpoint = tcp_endpoint or f"ipc://{directory}/raw-echo-{api}.sock"
        server_public, server_secret = zmq.curve_keypair() if tcp_endpoint else (None, None)
        self._send, self._recv, self._try_recv = _movers(api)
        self.proc = forked(_echo, self.endpoint, server_secret, api)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_public is not None:
            public, secret = zmq.curve_keypair()
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.sock.connect(self.endpoint)
        self.frames = encode_request(1, "raw-echo-0123456789", "sys.ping", None,
                                     int(time.time() * 1000) + 5000)
        for _ in range(200):
            self.round_trip()

    def round_trip(self) -> None:
        self._send(self.sock, self.frames)
        self._recv(self.sock)

    def latencies(self, n: int) -> list[float]:
        out = []
        pc = time.perf_counter
        s, frames, send, recv = self.sock, self.frames, self._send, self._recv
        for _ in range(n):
            t0 = pc()
            send(s, frames)
            recv(s)
            out.append((pc() - t0) * 1e6)
        return out

    def pipelined(self, n: int, window: int = 256) -> float:
        """Messages per second with up to `window` in flight."""
        s, frames, send, recv, try_next = self.sock, self.frames, self._send, self._recv, \
            self._try_recv
        sent = got = 0
        t0 = time.perf_counter()
        while got < n:
            while sent < n and sent - got < window:
                send(s, frames)
                sent += 1
            recv(s)
            got += 1
            while got < sent and try_next(s) is not None:
                got += 1
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self._send(self.sock, [b"stop"])
        self._recv(self.sock)
        self.proc.join(5)
        self.sock.close(0)
        self.ctx.term()


P2_TARGET = ">= 80% limit; 100k/s where the limit reaches it"


def timed(fn: Callable[[], Any], into: list[float]) -> Callable[[], None]:
    """`fn` as one turn of `in_turn` that adds its wall time (µs) to `into`."""
    pc = time.perf_counter

    def turn() -> None:
        t0 = pc()
        fn()
        into.append((pc() - t0) * 1e6)

    return turn


def in_turn(turns: list[Callable[[], None]], n: int) -> None:
    """Each of `turns` `n` times, one of each in turn, in an order that turns each time: what
    runs just before a sample slows it (an echo back to back is several times faster than
    after other work), so each side is measured after each other side alike (P1's way, and
    the limit of every row judged against P1's)."""
    for i in range(n):
        for k in range(len(turns)):
            turns[(i + k) % len(turns)]()


def p2_passes(ours: float, limit: float) -> bool:
    """shared/targets.md's P2: at least 80% of the raw pipelined echo's rate, and 100k/s
    where the raw echo itself reaches that (on this kind of VM it does 22-43k/s)."""
    need = 0.8 * limit
    if limit >= 100_000:
        need = max(need, 100_000.0)
    return ours >= need


def pipelined_rates(raw: RawEcho, client: Any, actor: str, n: int,
                    rounds: int = 3) -> tuple[list[float], list[float]]:
    """P2: `n` sys.ping in flight through the client (window 256) beside the raw echo's
    pipelined rate, in turn, `rounds` times; (ours, raw) in calls per second."""
    ours, limit = [], []
    for _ in range(rounds):
        limit.append(raw.pipelined(n))
        t0 = time.perf_counter()
        results = client.pipeline(actor, [("sys.ping", None)] * n, window=256)
        ours.append(n / (time.perf_counter() - t0))
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # (an error reply is no call done: a rate of them would flatter us)
            raise RuntimeError(f"{len(failed)} of {n} pipelined sys.ping failed: {failed[0]}")
    return ours, limit
