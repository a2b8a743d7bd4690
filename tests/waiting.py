"""Waiting for a fact: ask again until the answer is truthy, bounded (never a bare sleep)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Repeat `probe` (each a round trip to an actor, or a read of a fact) until it answers
    something truthy, and return that; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")


def turn_until(loop: Any, fact: Callable[[], Any], turns: int = 2000) -> Any:
    """Run `loop` (an actors.runtime.loop.Loop this test drives) a turn at a time, each
    waiting at most 10 ms for its sockets, until `fact()` holds; return it."""
    for _ in range(turns):
        value = fact()
        if value:
            return value
        loop.run_once(10)
    raise AssertionError("the fact never came true")


def gate_opened(gate: Path) -> bool:
    """The FIFO `gate`'s writing end opened and closed, if a reader waits there (its read
    ends); False if none does yet (a non-blocking open fails ENXIO until then), or if the
    FIFO is gone (a reader let go a moment before removes it: a test's clean-up may look
    just then)."""
    try:
        os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno not in (errno.ENXIO, errno.ENOENT):
            raise
        return False
    return True


def open_gate(gate: Path) -> None:
    """Let the child held at the FIFO `gate` go, once it waits there, within wait_for's
    time, so that a child that never comes fails the test instead of hanging it."""
    wait_for(lambda: gate_opened(gate), "the child waiting at its gate")


def waiting_at_gate(pid: int) -> bool:
    """Process `pid` is blocked opening a FIFO until a writer comes (the kernel's
    wait_for_partner): held at its gate, not on its way there, without opening the gate as
    `gate_opened` would."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner"
    except OSError:
        return False
