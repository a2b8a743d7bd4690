"""A signal handler that wakes the loop: it runs on the loop's own thread, between two
bytecodes, so it can interrupt a wake-up half sent (a SIGCHLD storm interrupts its own
handler). It must never wait for what the code it interrupted holds."""

from __future__ import annotations

import os
import signal

import pytest
import zmq

from moorage.actors.runtime.loop import Loop

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def loop_with_primary():
    ctx = zmq.Context()
    loop = Loop()
    rpc = ctx.socket(zmq.ROUTER)
    loop.set_primary(rpc, lambda batch: None, ctx, 8)
    try:
        yield loop
    finally:
        loop.close()
        rpc.close(0)
        ctx.term()


def test_a_handler_that_interrupts_a_wake_up_half_sent_returns_and_its_call_runs(
        loop_with_primary: Loop) -> None:
    loop = loop_with_primary
    ran: list[str] = []
    old = signal.signal(signal.SIGUSR1,
                        lambda *_: loop.call_soon_from_signal(lambda: ran.append("reaped")))
    try:
        # the state a second SIGCHLD finds: the first one's handler inside its wake-up
        with loop.wake_lock:
            os.kill(os.getpid(), signal.SIGUSR1)  # its handler runs here, on this thread
            handled_inside = ran == []
        assert handled_inside
        loop.run_once(5_000)  # the pipe was written: the wait ends at once
        assert ran == ["reaped"]
    finally:
        signal.signal(signal.SIGUSR1, old)



def test_a_signal_handled_while_the_context_is_destroyed_is_not_an_error() -> None:
    """A second ^C (the terminal signals the whole group) can land while the actor's
    context closes its sockets, the loop done: the wake-up it sends has no socket left, and
    the process went on to exit 1 with a traceback."""
    ctx = zmq.Context()
    loop = Loop()
    rpc = ctx.socket(zmq.ROUTER)
    loop.set_primary(rpc, lambda batch: None, ctx, 8)
    ctx.destroy(linger=0)  # (every socket of it closed, the wake-up's too)
    ran: list[str] = []
    try:
        loop.call_soon_from_signal(lambda: ran.append("stop"))
        assert ran == []  # queued for a loop that will not run again; nothing raised
    finally:
        loop.close()
