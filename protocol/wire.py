"""Sending and receiving multipart messages, several times cheaper than pyzmq's helpers.

pyzmq's `send_multipart`/`recv_multipart` combine its flag enums on every frame, pass keyword
arguments through a Python-level `send`, and ask for ZMQ_RCVMORE after each frame (`get`
builds a SocketOption enum each time, about a microsecond): a visible share of a ~100 µs round
trip and the largest single cost of a pipelined client. These use plain ints, call the
compiled socket's `send` directly, and read "more frames follow" from the received frame
itself. Frames of 128 KiB or more go zero-copy; below that a copy costs less than pyzmq's
zero-copy bookkeeping: each such frame is handed to its garbage-collector thread, which wakes
and takes the GIL to release it (64 KiB parse.feed via the client: 0.48-0.49 of its limit with
zero-copy, 0.50-0.52 copied; a cat streamed through the terminal: less CPU in the terminal and
the parser actor).

For sockets of a plain `zmq.Context` only: an asyncio socket's `send` returns a future, and
these bypass it.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq
from zmq.backend import Socket as _CSocket

SNDMORE = int(zmq.SNDMORE)
RCVMORE = int(zmq.RCVMORE)
NOBLOCK = int(zmq.NOBLOCK)
COPY_THRESHOLD = 131072
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

# The compiled methods under pyzmq's Python `Socket` class: its `send` only adds the draft
# routing_id/group options, which nothing here uses.
_send = _CSocket.send
_recv = _CSocket.recv
_get = _CSocket.get


def send_frames(sock: zmq.Socket, frames: Sequence[bytes], flags: int = 0) -> None:
    more = flags | SNDMORE
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _send(sock, f, more if i < last else flags, len(f) < COPY_THRESHOLD)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    # A Frame knows whether more follow (zmq_msg_more), which costs less than the getsockopt;
    # `.bytes` copies it out as a plain bytes object, as a copying recv would.
    f = _recv(sock, flags, False)
    out = [f.bytes]
    while f.more:
        f = _recv(sock, flags, False)
        out.append(f.bytes)
    return out


def readable(sock: zmq.Socket) -> bool:
    """Does a whole message wait in `sock`? Read from ZMQ_EVENTS: a loop that receives until
    there is nothing left looks first, because a failed non-blocking recv says so with a
    zmq.Again, built in Python, which costs about three times the look."""
    return bool(_get(sock, _EVENTS) & _POLLIN)
