"""The keeper link's framing (actors/terminal/link.py's FrameReader): messages come out whole
and in order however the stream is cut into reads, a frame is decoded once it is whole, and
a length over the limit is refused as soon as it is read, buffered or not."""

from __future__ import annotations

import pytest

from moorage.actors.terminal.link import FrameReader, LinkError, encode

MESSAGES = [{"t": "out", "s": "a", "end": 7}, {"t": "write", "s": "b", "data": b"x" * 5000},
            {"t": "ok", "r": 3}]
STREAM = b"".join(encode(m) for m in MESSAGES)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 4096, len(STREAM)])
def test_messages_come_out_whole_and_in_order_whatever_the_reads(size):
    reader = FrameReader()
    out = []
    for i in range(0, len(STREAM), size):
        out += reader.feed(memoryview(STREAM)[i : i + size])
    assert out == MESSAGES


def test_every_cut_of_the_stream_gives_the_same_messages():
    for cut in range(1, len(STREAM)):
        reader = FrameReader()
        assert reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:]) == MESSAGES, cut


def test_a_length_over_the_limit_is_refused_when_read_even_from_a_partial_frame():
    frame = encode({"t": "write", "data": b"y" * 200})
    reader = FrameReader(max_frame=100)
    assert reader.feed(frame[:2]) == []
    with pytest.raises(LinkError):
        reader.feed(frame[2:4])  # (the length's last bytes: the frame is judged by them)


def test_a_message_whose_handler_fails_does_not_cost_the_ones_after_it(tmp_path):
    """Two messages in one read, the first one's handler raising: the second is handled,
    and the link stays open. (The exception left the read, and every frame after it in
    that read was lost: a reply among them left its request waiting for good.)"""
    import socket

    from moorage.actors.runtime.loop import Loop
    from moorage.actors.terminal.link import Link

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = Loop()
    handled: list[str] = []

    def on_message(msg: dict) -> None:
        if msg["t"] == "out":
            raise AttributeError("'NoneType' object has no attribute 'ack_off'")
        handled.append(msg["t"])

    link = Link(loop, ours, on_message, lambda reason: handled.append(f"closed: {reason}"))
    try:
        theirs.sendall(encode({"t": "out", "s": "a", "end": 1}) + encode({"t": "ok", "r": 7}))
        for _ in range(100):
            loop.run_once(100)
            if handled:
                break
        assert handled == ["ok"] and not link.closed
    finally:
        link.close("test over")
        theirs.close()
        loop.close()
