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
