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

Where the optional extension was built (protocol/_cwire.c), a whole message goes in or out in
one call into libzmq instead: a received message 1.5-2 µs instead of 6-9 (each frame a
`Frame` object here), and a would-block is a None (`try_recv`), not an exception. The Python
functions below are the fallback and the reference; `WIRE_CORE` says which this process runs.

For sockets of a plain `zmq.Context` only: an asyncio socket's `send` returns a future, and
these bypass it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from errno import EAGAIN
from typing import Any

import zmq
from zmq.backend import Socket as _CSocket
from zmq.error import _check_rc

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


def _send_frames_py(sock: zmq.Socket, frames: Sequence[bytes], flags: int = 0) -> None:
    more = flags | SNDMORE
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _send(sock, f, more if i < last else flags, len(f) < COPY_THRESHOLD)


def _recv_frames_py(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    # A Frame knows whether more follow (zmq_msg_more), which costs less than the getsockopt;
    # `.bytes` copies it out as a plain bytes object, as a copying recv would.
    f = _recv(sock, flags, False)
    out = [f.bytes]
    while f.more:
        f = _recv(sock, flags, False)
        out.append(f.bytes)
    return out


def _try_recv_py(sock: zmq.Socket, flags: int = NOBLOCK) -> list[bytes] | None:
    """`recv_frames` that says "nothing waits" with None instead of an exception: a loop
    that receives until its socket is empty ends on one None, where a `readable` look before
    each message costs two system calls in libzmq (ZMQ_EVENTS processes the socket's
    commands: a `poll` and a `getpid`) and a successful receive costs none."""
    try:
        return _recv_frames_py(sock, flags)
    except zmq.Again:
        return None


def _try_send_py(sock: zmq.Socket, frames: Sequence[bytes]) -> bool:
    """Queue one whole message without waiting: False when the socket has no room for it
    (its SNDHWM reached), which a sender that queues many (a pipeline) meets in the normal
    course, so it is an answer rather than an exception."""
    try:
        _send_frames_py(sock, frames, NOBLOCK)
    except zmq.Again:
        return False
    return True


def _readable_py(sock: zmq.Socket) -> bool:
    """Does a whole message wait in `sock`? Read from ZMQ_EVENTS (a `poll` and a `getpid` in
    libzmq): for a look without receiving; a loop that receives until its socket is empty
    uses `try_recv`."""
    return bool(_get(sock, _EVENTS) & _POLLIN)


def _raise_for(errno: int) -> None:
    """pyzmq's own exception for `errno` (the compiled core raises through this)."""
    _check_rc(-1, errno)


def _libzmq_functions() -> dict[str, int] | None:
    """The addresses of the libzmq functions the compiled core calls, taken from the very
    library pyzmq loaded (bundled in its wheel, or the system's): found in this process's
    memory map and opened with RTLD_NOLOAD, so no second copy is ever loaded."""
    try:
        with open("/proc/self/maps") as f:  # (only lines that name a libzmq are split)
            paths = {line.split(None, 5)[-1].strip() for line in f if "/libzmq" in line}
    except OSError:
        return None
    found = [p for p in paths if os.path.basename(p).startswith("libzmq") and ".so" in p]
    if len(found) != 1:
        return None
    try:
        lib = ctypes.CDLL(found[0], mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
        return {name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
                for name in _FUNCTIONS}
    except (OSError, AttributeError):
        return None


_FUNCTIONS = ("zmq_msg_init", "zmq_msg_recv", "zmq_msg_data", "zmq_msg_size", "zmq_msg_more",
              "zmq_msg_close", "zmq_send", "zmq_errno", "zmq_getsockopt")


def _compiled() -> Any:
    """protocol/_cwire.c bound to pyzmq's libzmq, when the optional extension was built, the
    library is found and MOORAGE_PROTOCOL_CORE is not "python"; else None."""
    if os.environ.get("MOORAGE_PROTOCOL_CORE") == "python":
        return None
    try:
        from moorage.protocol import _cwire
    except ImportError:
        return None
    addresses = _libzmq_functions()
    if addresses is None or not all(addresses.values()):
        return None
    _cwire.bind(addresses, _raise_for, COPY_THRESHOLD)
    return _cwire


_cw = _compiled()
WIRE_CORE: str = "python" if _cw is None else "compiled"
"""How this process moves frames ("compiled": protocol/_cwire.c; "python": pyzmq's calls, one
per frame): sys.info's `wire_core`."""

if _cw is None:
    send_frames = _send_frames_py
    recv_frames = _recv_frames_py
    try_recv = _try_recv_py
    try_send = _try_send_py
    readable = _readable_py
else:
    _csend, _crecv = _cw.send, _cw.recv
    readable = _cw.readable  # (as `_readable_py`)

    def send_frames(sock: zmq.Socket, frames: Sequence[bytes], flags: int = 0) -> None:
        """Send one multipart message (frames of COPY_THRESHOLD or more go zero-copy);
        raises zmq.Again when it would block and `flags` has NOBLOCK."""
        sent = _csend(sock, frames, flags)
        if sent is True:
            return
        if sent is False:
            raise zmq.Again(EAGAIN)
        _send_frames_py(sock, frames, flags)  # a frame to send zero-copy, or not bytes

    def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
        """Receive one multipart message; raises zmq.Again when none waits (NOBLOCK, or
        the socket's receive timeout passed)."""
        frames = _crecv(sock, flags)
        if frames is None:
            raise zmq.Again(EAGAIN)
        return frames  # type: ignore[no-any-return]

    def try_recv(sock: zmq.Socket, flags: int = NOBLOCK) -> list[bytes] | None:
        """As `_try_recv_py`."""
        return _crecv(sock, flags)  # type: ignore[no-any-return]

    def try_send(sock: zmq.Socket, frames: Sequence[bytes]) -> bool:
        """As `_try_send_py`."""
        sent = _csend(sock, frames, NOBLOCK)
        if sent is True or sent is False:
            return sent
        return _try_send_py(sock, frames)  # a frame to send zero-copy, or not bytes
