"""A server that never stops sending holds no client past its timeout: a call that receives only
replies to other ids, a subscription that receives only duplicates or undecodable frames, each
returns when its time is up (a subscription reads on a bounded number of such frames first:
a round of welcomes queued is read, a stream that never ends is not)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.errors import MoorageError
from tests.bare_actor import ACTOR, flooding

pytestmark = pytest.mark.timeout(120)


def test_replies_to_other_ids_do_not_hold_a_call_past_its_timeout(runtime_dir):
    with Client(runtime_dir, learn_ops=False) as c, \
            flooding("replies", runtime_dir) as stop:
        try:
            with pytest.raises(MoorageError) as e:
                c.call(ACTOR, "bare.ping", timeout=0.3, idempotent=True)
            assert e.value.name == "timeout"
        finally:
            ended = stop()
    assert ended == "stopped"  # (the call ended while the flood went on)


def test_a_stream_of_duplicates_does_not_hold_next_past_its_timeout(runtime_dir):
    with Client(runtime_dir, learn_ops=False) as c, \
            flooding("duplicates", runtime_dir) as stop:
        sub = c.subscribe(ACTOR, ["t"])
        try:
            first = sub.next(20)
            assert first is not None and first.seq == 1
            assert sub.next(timeout=0.3) is None
        finally:
            ended = stop()
    assert ended == "stopped"  # (next() returned while the flood went on)


def test_an_asyncio_stream_of_duplicates_does_not_hold_next_past_its_timeout(runtime_dir):
    async def main() -> tuple[Any, str]:
        async with AsyncClient(runtime_dir, learn_ops=False) as c:
            with flooding("duplicates", runtime_dir) as stop:
                sub = c.subscribe(ACTOR, ["t"])
                try:
                    first = await sub.next(20)
                    assert first is not None and first.seq == 1
                    got = await sub.next(timeout=0.3)
                finally:
                    ended = stop()
                return got, ended

    assert asyncio.run(main()) == (None, "stopped")
