"""Terminal output a subscriber never got, with no seq to say so: its queue dropped the tail of
a terminal actor's life, then the actor was SIGKILLed and its successor republished less than
that. The subscription sees the offset skip ahead and fills the gap from the terminal's
scrollback; what the scrollback no longer holds comes as a `BytesLost`, never as silence."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.protocol.client import BytesLost, Client, Reset, Subscription
from moorage.protocol.client.aio import AsyncClient
from moorage.protocol.envelope import StreamMessage
from tests.conftest import Tree
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

LINES = 1_000_000  # about 6.9 MB: far more than the subscriber's queue and socket buffers
DONE = b"seq-done\r\n"


def tree_config(scrollback_bytes: int) -> str:
    # A successor republishes only the last KiB, and a subscriber 4 messages behind loses the
    # rest at the terminal's publisher and at its own queue.
    return terminal_tree(terminal=f"republish_bytes = 1024\npub_hwm = 4\n"
                                  f"scrollback_bytes = {scrollback_bytes}\n")


@pytest.fixture
def small_queue(runtime_dir: Path) -> Iterator[Client]:
    c = Client(runtime_dir, timeout=10.0, stream_hwm=4)
    yield c
    c.close()


class Collected:
    """What a subscription delivered, by offset; the byte ranges it reported lost; every
    other event."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.pieces: dict[int, bytes] = {}
        self.lost: list[BytesLost] = []
        self.others: list[object] = []
        self.tail = b""
        self.seen = b""  # the last message's bytes, after the tail of the ones before

    def more(self) -> StreamMessage | None:
        ev = self.sub.next(timeout=1)
        if isinstance(ev, StreamMessage):
            off, data = ev.body["offset"], ev.attachments[0]
            assert off not in self.pieces, f"offset {off} delivered twice"
            self.pieces[off] = data
            self.seen = self.tail + data  # (a marker across two messages is found too)
            self.tail = self.seen[-64:]
            return ev
        if isinstance(ev, BytesLost):
            self.lost.append(ev)
        elif ev is not None:
            self.others.append(ev)
        return None

    def until(self, marker: bytes, timeout: float = 90) -> None:
        wait_for(lambda: self.more() is not None and marker in self.seen,
                 f"{marker!r} in the output", timeout=timeout)


def tiled(pieces: dict[int, bytes], lost: list[BytesLost]) -> tuple[bytes, int]:
    """The bytes delivered in offset order, checked to tile [0, end) with the lost ranges
    (no byte twice, no hole nobody reported), and `end`."""
    spans = sorted([(off, off + len(d), d) for off, d in pieces.items()]
                   + [(x.from_offset, x.to_offset, None) for x in lost])
    at, out = 0, bytearray()
    for start, end, data in spans:
        assert start == at, f"a hole or an overlap at {at}: the next span starts at {start}"
        if data is not None:
            out += data
        at = end
    return bytes(out), at


def run_past_the_subscriber(tree: Tree, c: Client, tmp_path: Path) -> tuple[str, Collected]:
    """A session whose `seq 1 LINES` ran while its subscriber read nothing, then whose
    terminal actor was SIGKILLed: the session id, and what its subscription delivered so far
    (the first output)."""
    sid = c.call("terminal", "term.create",
                 {"shell": "bash", "env": env_for(make_home(tmp_path))}, timeout=30)["session"]
    got = Collected(c.subscribe("terminal", [f"term.out.{sid}"], from_seq=1))
    wait_for(lambda: got.more() is not None, "the first output")
    run_and_kill(tree, c, sid)
    return sid, got


def run_and_kill(tree: Tree, c: Client, sid: str) -> None:
    """`seq 1 LINES` run in `sid` to its end, then its terminal actor SIGKILLed and
    restarted."""
    c.call("terminal", "term.write", {"session": sid,
                                      "data": f"seq 1 {LINES}; echo seq-''done\r"})

    def ran() -> bool:
        (s,) = c.call("terminal", "term.list")["sessions"]
        return s["state"] == "prompt" and s["offset"] > 6_000_000

    wait_for(ran, "the command run (nobody reading its output)", timeout=90)
    os.kill(tree.child("terminal")["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "terminal")


def expected_seq(n: int) -> bytes:
    return b"".join(b"%d\r\n" % i for i in range(1, n + 1))


def test_bytes_a_subscriber_missed_across_a_terminal_restart_are_filled_from_the_scrollback(
        make_tree, small_queue, tmp_path):
    tree = make_tree(tree_config(scrollback_bytes=16 << 20)).start()
    _sid, got = run_past_the_subscriber(tree, small_queue, tmp_path)
    got.until(DONE)
    data, _end = tiled(got.pieces, got.lost)
    assert got.lost == []
    assert data.count(expected_seq(LINES)) == 1  # whole, in order, once
    assert got.sub.tracker.byte_gaps >= 1  # (the gap was there: the queue did drop the tail)
    assert any(isinstance(e, Reset) for e in got.others)
    got.sub.close()


def test_what_the_scrollback_no_longer_holds_is_reported_lost_and_the_rest_delivered(
        make_tree, small_queue, tmp_path):
    tree = make_tree(tree_config(scrollback_bytes=256 << 10)).start()
    sid, got = run_past_the_subscriber(tree, small_queue, tmp_path)
    got.until(DONE)
    data, _end = tiled(got.pieces, got.lost)  # every byte delivered or reported lost, once
    assert got.lost and got.sub.tracker.byte_gaps >= 1
    assert {x.topic for x in got.lost} == {f"term.out.{sid}"}
    assert b"\r\n%d\r\n" % LINES + DONE in data[-(1 << 16):]  # the true end, after the loss
    got.sub.close()


def test_the_asyncio_client_fills_the_gap_too(make_tree, tmp_path):
    tree = make_tree(tree_config(scrollback_bytes=16 << 20)).start()
    sid = tree.client.call("terminal", "term.create",
                           {"shell": "bash", "env": env_for(make_home(tmp_path))},
                           timeout=30)["session"]

    async def read() -> tuple[dict[int, bytes], list[object], int]:
        pieces: dict[int, bytes] = {}
        others: list[object] = []
        async with AsyncClient(tree.runtime_dir, timeout=10.0, stream_hwm=4) as ac:
            sub = ac.subscribe("terminal", [f"term.out.{sid}"], from_seq=1)
            started = False
            seen = tail = b""
            while not started or DONE not in seen:
                ev = await asyncio.wait_for(sub.next(), 60)
                if isinstance(ev, StreamMessage):
                    pieces[ev.body["offset"]] = ev.attachments[0]
                    seen = tail + ev.attachments[0]
                    tail = seen[-64:]
                    if not started:  # (the subscriber, live, now stops reading)
                        started = True
                        run_and_kill(tree, tree.client, sid)
                else:
                    others.append(ev)
            return pieces, others, sub.tracker.byte_gaps

    pieces, others, gaps = asyncio.run(read())
    data, _end = tiled(pieces, [])
    assert data.count(expected_seq(LINES)) == 1 and gaps >= 1
    assert not any(isinstance(e, BytesLost) for e in others)
