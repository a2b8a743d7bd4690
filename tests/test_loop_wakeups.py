"""Wake-ups from other threads (the watcher's inotify reader and workers): with a primary
socket the wake-up is one message on it, which ends the poller's wait as it ends the fast
path's recv; the pipe is left for a loop without one."""

from __future__ import annotations

import os
import threading

import pytest
import zmq

from moorage.actors.runtime.loop import Loop

pytestmark = pytest.mark.timeout(30)

NEVER_MS = 600_000  # a wait that only a wake-up ends within the test's timeout


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def _from_another_thread(fn) -> None:
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def _pipe_is_empty(loop: Loop) -> bool:
    try:
        os.read(loop._wake_r, 4096)
    except BlockingIOError:
        return True
    return False


def test_a_wake_up_on_the_primary_socket_ends_the_pollers_wait_and_writes_no_pipe(ctx):
    loop = Loop()
    rpc = ctx.socket(zmq.ROUTER)
    try:
        loop.set_primary(rpc, lambda batch: None, ctx, 8)
        ran: list[int] = []
        for i in range(3):
            _from_another_thread(lambda i=i: loop.call_soon_threadsafe(lambda: ran.append(i)))
            assert _pipe_is_empty(loop)  # (read here: the loop could not have drained it)
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
        assert ran == ["x"] and _pipe_is_empty(loop)  # (drained by the loop)
    finally:
        loop.close()
