"""A socket the client could not set up (an endpoint it cannot connect to: an ipc path longer
than a Unix socket's, an actor a remote tree's connection file does not name) is closed as the
error is raised: the client then closes, where a socket left open held its context's term()
for good."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.errors import MoorageError

pytestmark = pytest.mark.timeout(60)

TOO_LONG = "x" * 200  # its ipc path is past sun_path's 108 bytes


def assert_bad_args(e: MoorageError, role: str) -> None:
    """ZeroMQ's refusal of the endpoint, classified: the caller named what cannot be reached."""
    assert e.name == "bad_args" and f"no {role} socket to connect to" in str(e), e
    assert "File name too long" in str(e), e


def returns(close: Callable[[], None]) -> bool:
    """Does `close` return (in a thread of its own: where it blocks, the test must not)?"""
    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    thread.join(20)
    return not thread.is_alive()


def test_a_failed_call_or_subscription_leaves_no_socket_open(runtime_dir):
    c = Client(runtime_dir, learn_ops=False)
    with pytest.raises(MoorageError) as call_failed:
        c.call(TOO_LONG, "sys.ping")
    with pytest.raises(MoorageError) as subscribe_failed:
        c.subscribe(TOO_LONG)
    assert_bad_args(call_failed.value, "rpc")
    assert_bad_args(subscribe_failed.value, "pub")
    assert returns(c.close)
    del call_failed, subscribe_failed  # (kept till now: their tracebacks hold what raised)


def test_an_asyncio_client_s_failed_call_or_subscription_leaves_no_socket_open(runtime_dir):
    async def main() -> None:
        c = AsyncClient(runtime_dir, learn_ops=False)
        with pytest.raises(MoorageError) as call_failed:
            await c.call(TOO_LONG, "sys.ping")
        with pytest.raises(MoorageError) as subscribe_failed:
            c.subscribe(TOO_LONG)
        assert_bad_args(call_failed.value, "rpc")
        assert_bad_args(subscribe_failed.value, "pub")
        await c.close()
        del call_failed, subscribe_failed

    assert returns(lambda: asyncio.run(main()))
