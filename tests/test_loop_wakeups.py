"""Wake-ups from other threads (the watcher's inotify lane and workers): with a primary
socket the wake-up is one message on it, which must end the poller's wait as it ends the
fast path's recv; a loop without one is woken through its pipe. A wait a wake-up did not end
outlasts the test's timeout."""

from __future__ import annotations

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
