"""How frames move, compiled (protocol/_cwire.c) and through pyzmq's calls (wire.py's
fallback): the same messages either way, over real sockets, in any pairing of the two; the
same answers to a socket with nothing waiting, a send that would block, a closed socket and
a signal during a blocking receive; and the compiled one is what this process runs when it
was built, says so in sys.info, and without it pyzmq's calls serve."""

from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from moorage.protocol import wire
from moorage.protocol.wire import NOBLOCK, WIRE_CORE
from tests.interpreter import printed

pytestmark = pytest.mark.timeout(60)

Send = Callable[[zmq.Socket, Any, int], None]
Recv = Callable[[zmq.Socket, int], list[bytes]]
BIG = wire.COPY_THRESHOLD + 1  # sent zero-copy: by pyzmq's call, whichever core


def compiled() -> tuple[Send, Recv, Callable[..., Any]]:
    if WIRE_CORE != "compiled":
        pytest.skip("the compiled frame mover was not built here (no compiler): Python only")
    return wire.send_frames, wire.recv_frames, wire.try_recv


def core(name: str) -> tuple[Send, Recv, Callable[..., Any]]:
    """`name`'s (send, recv, try_recv); a test of the compiled one skips where it was not
    built."""
    if name == "python":
        return wire._send_frames_py, wire._recv_frames_py, wire._try_recv_py
    return compiled()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """A DEALER connected to a ROUTER over ipc, as a client to an actor."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    dealer = ctx.socket(zmq.DEALER)
    for s in (router, dealer):
        s.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/w.sock"
    router.bind(endpoint)
    dealer.connect(endpoint)
    try:
        yield dealer, router
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()


MESSAGES = [
    [b""],
    [b"tag", b"", b"header", b"body"],
    [b"x" * 1000, b"", b"y"],
    [b"head", b"z" * BIG, b"tail"],  # one frame zero-copy, the others copied
    [b"a", bytearray(b"mutable"), memoryview(b"view")],  # not bytes: pyzmq's calls send them
]


@pytest.mark.parametrize("sender", ["python", "compiled"])
@pytest.mark.parametrize("receiver", ["python", "compiled"])
def test_either_core_receives_what_either_sent_frame_for_frame(pair, sender, receiver):
    send, _, _ = core(sender)
    _, recv, try_recv = core(receiver)
    dealer, router = pair
    for msg in MESSAGES:
        send(dealer, msg, 0)
        got = recv(router, 0)
        assert got[1:] == [bytes(f) for f in msg]
        assert all(type(f) is bytes for f in got)
        send(router, got, 0)  # back, routed by the identity frame
        assert recv(dealer, 0) == [bytes(f) for f in msg]
    assert try_recv(router, NOBLOCK) is None and try_recv(dealer, NOBLOCK) is None


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_nothing_waiting_is_none_or_again_and_a_timeout_is_the_same(pair, name):
    send, recv, try_recv = core(name)
    dealer, router = pair
    assert try_recv(router, NOBLOCK) is None
    with pytest.raises(zmq.Again):
        recv(router, NOBLOCK)
    router.setsockopt(zmq.RCVTIMEO, 20)  # a blocking receive that times out
    assert try_recv(router, 0) is None
    with pytest.raises(zmq.Again):
        recv(router, 0)
    router.setsockopt(zmq.RCVTIMEO, -1)  # and the socket serves on, however late the frame
    send(dealer, [b"after"], 0)
    assert recv(router, 0)[1:] == [b"after"]


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_a_send_that_would_block_raises_again(name):
    send, _, _ = core(name)
    ctx = zmq.Context()
    lone = ctx.socket(zmq.DEALER)  # connected to no one: no pipe to queue in
    lone.setsockopt(zmq.LINGER, 0)
    try:
        with pytest.raises(zmq.Again):
            send(lone, [b"a", b"b"], NOBLOCK)
    finally:
        lone.close(0)
        ctx.term()


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_a_closed_socket_is_an_error_not_a_crash(pair, name):
    send, recv, try_recv = core(name)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.close(0)
    try:
        for call in (lambda: send(s, [b"x"], NOBLOCK), lambda: recv(s, NOBLOCK),
                     lambda: try_recv(s, NOBLOCK), lambda: wire.readable(s)):
            with pytest.raises(zmq.ZMQError) as exc:
                call()
            assert exc.value.errno == errno.ENOTSOCK
    finally:
        ctx.term()


class Interrupted(Exception):
    pass


def _blocked_in_a_wait(tid: int) -> bool:
    with open(f"/proc/self/task/{tid}/syscall") as f:
        fields = f.read().split()
    # "running", or the number of the call it is blocked in (x86-64: 7 poll, 271 ppoll,
    # 232 epoll_wait; aarch64: 73 ppoll, 22 epoll_pwait)
    return bool(fields) and fields[0] not in ("running", "-1") and int(fields[0]) in (
        7, 271, 232, 73, 22)


def _signal_when_blocked(handled: threading.Event, then: Callable[[], None]
                         ) -> threading.Thread:
    """A thread that signals this (the calling) thread with SIGUSR1 once it is blocked in a
    system call (libzmq's receive waits in poll), again each time it is seen blocked until
    the handler says it ran (`handled`), then runs `then`. Once is not enough: libzmq's
    receive starts with a poll that does not wait, and a signal that lands there is handled
    in C only, its Python handler left for the blocking poll after it, which no signal ends."""
    target, tid = threading.get_ident(), threading.get_native_id()

    def run() -> None:
        deadline = time.monotonic() + 30
        while not handled.is_set() and time.monotonic() < deadline:
            if _blocked_in_a_wait(tid):
                signal.pthread_kill(target, signal.SIGUSR1)
                handled.wait(0.05)  # (its handler runs when the receive is interrupted)
        then()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_a_signal_during_a_blocking_receive_runs_its_handler_and_the_receive_goes_on(
        pair, name):
    _, recv, _ = core(name)
    dealer, router = pair
    handled = threading.Event()
    ctx = dealer.context

    def send_later() -> None:
        handled.wait(10)
        other = ctx.socket(zmq.DEALER)  # (sockets are not shared across threads)
        other.setsockopt(zmq.LINGER, 1000)
        other.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
        other.send(b"late")
        other.close()

    old = signal.signal(signal.SIGUSR1, lambda *_: handled.set())
    try:
        t = _signal_when_blocked(handled, send_later)
        got = recv(router, 0)
        t.join(30)  # (no signal comes after it: the old handler may be the default)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert handled.is_set() and got[1:] == [b"late"]


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_a_handler_that_raises_ends_the_blocking_receive_with_its_exception(pair, name):
    _, _, try_recv = core(name)
    _, router = pair

    handled = threading.Event()

    def interrupt(*_: object) -> None:
        if not handled.is_set():  # (a signal sent again meanwhile changes nothing)
            handled.set()
            raise Interrupted

    old = signal.signal(signal.SIGUSR1, interrupt)
    try:
        t = _signal_when_blocked(handled, lambda: None)
        with pytest.raises(Interrupted):
            try_recv(router, 0)
        t.join(30)  # (no signal comes after it: the old handler may be the default)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert try_recv(router, NOBLOCK) is None  # and the socket serves on


def test_without_the_extension_pyzmqs_calls_serve():
    code = ("from moorage.protocol import wire as w\n"
            "print(w.WIRE_CORE, w.recv_frames is w._recv_frames_py, "
            "w.send_frames is w._send_frames_py, w.try_recv is w._try_recv_py)")
    assert printed(code, MOORAGE_PROTOCOL_CORE="python") == ["python", "True", "True", "True"]


def test_a_real_actor_says_how_its_frames_move(spawn_actor, client):
    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    assert client.call("parser", "sys.info")["wire_core"] == WIRE_CORE
    assert client.call("parser", "sys.ping") is not None
