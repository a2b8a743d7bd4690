"""A fake actor on real sockets, for tests of the Python clients against what a real one rarely
does (answer late, restart between a refusal and its resend, answer a replay wrongly): a ROUTER
and an XPUB bound where the tree's actor `bare` would be, in the test's runtime dir, and
driven from the test's own thread, one request at a time."""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq

from moorage.protocol import endpoints
from moorage.protocol.envelope import (
    Request,
    decode_request,
    encode_error,
    encode_reply,
    encode_stream,
)
from moorage.protocol.errors import WireError

ACTOR = "bare"
EPOCH = "e1e1e1e1e1e1e1e1"
SUCCESSOR = "e2e2e2e2e2e2e2e2"


class Router:
    """The actor's rpc socket: requests in, replies out (each to the peer it came from)."""

    def __init__(self, ctx: zmq.Context, runtime_dir: Path, epoch: str = EPOCH) -> None:
        self.epoch = epoch
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_ACCEPTED)
        self.sock.bind(endpoints.rpc(runtime_dir, ACTOR))

    def accepted(self, timeout: float = 20.0) -> bool:
        """Wait for a client's connection. A client that connects to a successor has been
        told first that its connection to the predecessor dropped (its monitor's events are
        in that order)."""
        if not self.monitor.poll(int(timeout * 1000)):
            return False
        self.monitor.recv_multipart()
        return True

    def recv(self, timeout: float = 20.0) -> tuple[bytes, Request] | None:
        """The next request and who sent it, or None after `timeout` seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        peer, *frames = self.sock.recv_multipart()
        return peer, decode_request(frames)

    def reply(self, peer: bytes, req: Request, result: Any = None,
              attachments: Sequence[bytes] = ()) -> None:
        self.sock.send_multipart([peer, *encode_reply(req.id, self.epoch, result, attachments)])

    def error(self, peer: bytes, req: Request, err: WireError) -> None:
        self.sock.send_multipart([peer, *encode_error(req.id, self.epoch, err)])

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        # What was just sent goes out first, as an actor's own close lets it (a reply then a
        # close with no linger could lose the reply in our I/O thread, on a loaded machine:
        # the client saw the drop alone)
        self.sock.close(linger=2000)


class Publisher:
    """The actor's pub socket (an XPUB, to see the subscription arrive)."""

    def __init__(self, ctx: zmq.Context, runtime_dir: Path, epoch: str = EPOCH) -> None:
        self.epoch = epoch
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoints.pub(runtime_dir, ACTOR))

    def subscribed(self, timeout: float = 20.0) -> bool:
        """Wait for a subscriber's subscription: published from then on, it gets them."""
        if not self.sock.poll(int(timeout * 1000)):
            return False
        self.sock.recv()
        return True

    def publish(self, topic: str, seq: int, body: Any = None) -> None:
        self.sock.send_multipart(encode_stream(topic, seq, self.epoch, body))

    def close(self) -> None:
        self.sock.close(0)


def replay_answer(messages: Sequence[int], *, lost: list[int] | None = None, more: bool = False,
                  epoch: str = EPOCH) -> dict[str, Any]:
    """A well-formed `replay` answer holding `messages` (their seqs; body {"n": seq})."""
    return {"epoch": epoch, "first_seq": 1, "last_seq": max([0, *messages]),
            "messages": [[s, {"n": s}, 0] for s in messages], "lost": lost, "more": more}


@contextmanager
def running(target: Callable[[], None]) -> Iterator[threading.Thread]:
    """`target` (the actor's side of a test) in a thread, joined when the test is done with
    it; what it raised fails the test."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # (reported by the test's thread)
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(30)
    assert not thread.is_alive(), "the fake actor's thread did not end"
    if failed:
        raise failed[0]


FLOOD_S = 20.0  # a flood's bound: a client it holds is let go only when it ends
# A body slower to decode than to send again: the client reads the flood slower than it comes.
HEAVY = {"n": 1, "pad": list(range(2000))}


def keep_queued(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send `frames` (encoded once) over and over while the socket takes them: faster than the
    client reads them, so a backlog of them is queued ahead of it for as long as this runs,
    and no pause of this process (another's turn on the CPU) lets the client's queue empty.
    (The high-water mark bounds the backlog.)"""
    for _ in range(200):
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            sock.poll(10, zmq.POLLOUT)
            return


def flood(kind: str, runtime_dir: str) -> None:
    """A server that never stops sending, until its stdin closes (the client is done with it)
    or FLOOD_S pass: "replies" takes one request and answers other ids, "duplicates" publishes
    `t` 1, then 1 again and frames that do not decode. Says which ended it: "stopped" or
    "ran out". Run as a process of its own (`flooding`): a thread would share the test's GIL,
    and so leave the client pauses."""
    ctx = zmq.Context()
    end = time.monotonic() + FLOOD_S

    def go_on() -> bool:
        return not select.select([sys.stdin], [], [], 0)[0]

    if kind == "replies":
        router = Router(ctx, Path(runtime_dir))
        print("ready", flush=True)
        got = router.recv(FLOOD_S)
        assert got is not None
        peer, req = got
        stray = [peer, *encode_reply(req.id + 1000, router.epoch, HEAVY)]
        router.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # (at the high-water mark: EAGAIN)
        sock, sends, close = router.sock, [stray], router.close
    else:
        pub = Publisher(ctx, Path(runtime_dir))
        print("ready", flush=True)
        assert pub.subscribed(FLOOD_S)
        pub.publish("t", 1, {"n": 1})
        pub.sock.setsockopt(zmq.XPUB_NODROP, 1)  # (at the high-water mark: EAGAIN)
        sock, close = pub.sock, pub.close
        sends = [encode_stream("t", 1, pub.epoch, HEAVY), [b"t", b"not a stream message"]]
    while (going := go_on()) and time.monotonic() < end:
        for frames in sends:
            keep_queued(sock, frames)
    print("ran out" if going else "stopped", flush=True)
    close()
    ctx.term()


@contextmanager
def flooding(kind: str, runtime_dir: Path) -> Iterator[Callable[[], str]]:
    """`flood` in a process bound where the actor would be; yields what stops the flood and
    says whether it was still going ("stopped") or had run out."""
    with subprocess.Popen(
            [sys.executable, "-c", f"from tests.bare_actor import flood; flood({kind!r}, "
             f"{str(runtime_dir)!r})"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout

        def stop() -> str:
            proc.stdin.close()  # type: ignore[union-attr]
            return stdout.readline().strip()

        try:
            assert stdout.readline() == "ready\n"
            yield stop
        finally:
            if not proc.stdin.closed:
                proc.stdin.close()
            try:
                proc.wait(30)
            finally:
                proc.kill()
