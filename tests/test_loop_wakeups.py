"""Wake-ups from other threads (the watcher's inotify lane and workers): with a primary
socket the wake-up is one message on it, which must end the poller's wait as it ends the
fast path's recv; a loop without one is woken through its pipe. A wait a wake-up did not end
outlasts the test's timeout."""

from __future__ import annotations

import threading

import pytest
import zmq

from moorage.actors.runtime.loop import Loop
from moorage.protocol.wire import try_recv

pytestmark = pytest.mark.timeout(30)

NEVER_MS = 600_000  # a wait that only a wake-up ends within the test's timeout


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def _in_poll(tid: int) -> bool:
    """Is thread `tid` of this process in poll(2) or ppoll(2) now (x86-64 and arm64)?"""
    with open(f"/proc/self/task/{tid}/syscall") as f:
        return f.read().split()[0] in ("7", "271", "73")


def _from_another_thread(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def test_a_wake_up_on_the_primary_socket_ends_the_pollers_wait_and_runs_the_call(ctx):
    loop = Loop()
    rpc = ctx.socket(zmq.ROUTER)
    try:
        loop.set_primary(rpc, lambda batch: None, ctx, 8)
        ran: list[int] = []
        for i in range(3):
            _from_another_thread(lambda i=i: loop.call_soon_threadsafe(lambda: ran.append(i)))
            loop.run_once(NEVER_MS)  # the poller's path (a timeout is given)
            assert ran == list(range(i + 1))
    finally:
        loop.close()
        rpc.close(0)


def test_a_loop_without_a_primary_socket_is_woken_through_its_pipe():
    loop = Loop()
    try:
        ran: list[str] = []
        _from_another_thread(lambda: loop.call_soon_threadsafe(lambda: ran.append("x")))
        loop.run_once(NEVER_MS)
        assert ran == ["x"]
    finally:
        loop.close()


@pytest.mark.parametrize("primary", [True, False])
def test_a_call_from_another_thread_while_the_loop_works_runs_in_its_turn_unwoken(ctx, primary):
    """A loop that is not waiting takes another thread's call at the end of its turn: no
    wake-up is sent (none would be read until the next wait, and a burst of workers'
    results sent one each). One sent while it waits still ends the wait."""
    loop = Loop()
    rpc = ctx.socket(zmq.ROUTER)
    try:
        if primary:
            loop.set_primary(rpc, lambda batch: None, ctx, 8)
        ran: list[str] = []

        def in_the_turn() -> None:
            _from_another_thread(lambda: loop.call_soon_threadsafe(lambda: ran.append("x")))

        loop.call_soon(in_the_turn)
        loop.run_once(0)
        assert ran == ["x"] and loop.wakeups == 0
        if primary:
            assert try_recv(rpc) is None  # no wake-up message queued
        loop_thread = threading.get_native_id()

        def once_it_waits() -> None:
            while not _in_poll(loop_thread):  # (the loop's thread blocked in its wait)
                pass
            loop.call_soon_threadsafe(lambda: ran.append("y"))

        waker = threading.Thread(target=once_it_waits)
        waker.start()
        loop.run_once(NEVER_MS)
        waker.join()
        assert ran == ["x", "y"] and loop.wakeups == 1
    finally:
        loop.close()
        rpc.close(0)
