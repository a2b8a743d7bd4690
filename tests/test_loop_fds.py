"""Readiness is dispatched only to the fd it was polled for: a handler that closes another
registered fd, whose number the kernel then gives to a new fd registered in the same turn,
must not have the new fd's handler run on the old one's readiness (a pidfd's would read as
a death of the wrong process)."""

from __future__ import annotations

import os

import pytest

from moorage.actors.runtime.loop import Loop

pytestmark = pytest.mark.timeout(30)


def test_a_readiness_polled_for_a_closed_fd_does_not_reach_a_new_fd_with_its_number():
    loop = Loop()
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    opened: list[int] = []
    ran: list[str] = []
    try:
        def on_a() -> None:
            ran.append("a")
            os.read(a_r, 1)
            # b's reader goes, its fd is closed, and a new fd takes its number
            loop.remove_reader(b_r)
            os.close(b_r)
            new_r, new_w = os.pipe()
            if new_r != b_r:  # (the lowest free number is usually b's own)
                os.dup2(new_r, b_r)
                os.close(new_r)
            opened.extend((b_r, new_w))
            loop.add_reader(b_r, lambda: ran.append("new"))

        loop.add_reader(a_r, on_a)
        loop.add_reader(b_r, lambda: ran.append("b"))
        os.write(a_w, b"x")
        os.write(b_w, b"x")  # b is readable when the loop polls: both in one batch
        loop.run_once(0)
        assert ran == ["a"]  # not "new": the new pipe is empty
        loop.run_once(0)
        assert ran == ["a"]  # and it is still watched: nothing to read yet
        os.write(opened[1], b"y")  # the new pipe's write end
        loop.run_once(0)
        assert ran == ["a", "new"]
    finally:
        for fd in {a_r, a_w, b_r, b_w, *opened}:
            os.close(fd)
        loop.close()


def test_an_eager_fd_keeps_the_fast_path_and_is_served_in_its_turn():
    """An event source the loop reads itself (the watcher's inotify instance) is waited on
    with the request socket: its reader runs in the turn it became readable, a request
    beside it is served in the same turn, and the fast path stays on. A plain fd turns the
    fast path off (it is polled with everything)."""
    import zmq

    ctx = zmq.Context()
    loop = Loop()
    rpc = ctx.socket(zmq.ROUTER)
    rpc.bind("inproc://eager-test")
    client = ctx.socket(zmq.DEALER)
    client.connect("inproc://eager-test")
    e_r, e_w = os.pipe()
    p_r, p_w = os.pipe()
    served: list[str] = []
    try:
        loop.set_primary(rpc, lambda batch: served.extend(m[-1].decode() for m in batch),
                         ctx, 8)
        loop.add_reader(e_r, lambda: served.append(os.read(e_r, 16).decode()), eager=True)
        assert loop.fast_path_ready()
        os.write(e_w, b"event")
        loop.run_once()  # the fast path: without the fd in its wait, 250 ms and nothing
        assert served == ["event"]
        client.send(b"request")
        os.write(e_w, b"event2")
        while len(served) < 3:  # (the request crosses ZeroMQ's inproc pipe)
            loop.run_once()
        assert sorted(served[1:]) == ["event2", "request"]
        loop.add_reader(p_r, lambda: served.append(os.read(p_r, 16).decode()))
        assert not loop.fast_path_ready()
        loop.remove_reader(p_r)
        loop.add_writer(e_r, lambda: None)  # while it is written through the loop: polled
        assert not loop.fast_path_ready()
        loop.remove_writer(e_r)  # and eager again after
        assert loop.fast_path_ready()
        loop.remove_reader(e_r)
        assert loop.fast_path_ready()
        os.write(e_w, b"gone")  # no longer watched: nothing runs
        client.send(b"again")
        while len(served) < 4:
            loop.run_once()
        assert served[3] == "again" and len(served) == 4
    finally:
        for fd in (e_r, e_w, p_r, p_w):
            os.close(fd)
        loop.close()
        client.close(0)
        rpc.close(0)
        ctx.term()
