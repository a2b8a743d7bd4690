"""Waiting for a fact: ask again until the answer is truthy, bounded (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
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
