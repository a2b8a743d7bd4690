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
