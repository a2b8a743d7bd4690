"""A pipeline's call refused `busy` (not run) waits out the actor's retry_after_ms, and its own
back-off, before it is sent again, as a single call does (PROTOCOL.md section 10): a refusal
resent at once would only be refused again, and adds to the load that made the actor refuse."""

from __future__ import annotations

import time

import pytest
import zmq

from moorage.protocol.client import Client
from moorage.protocol.errors import WireError
from tests.bare_actor import ACTOR, Router, running

pytestmark = pytest.mark.timeout(60)

RETRY_AFTER = 0.3
CALLS = 3


def test_a_pipeline_waits_out_retry_after_before_it_resends(runtime_dir):
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    refused_at: dict[int, float] = {}
    resent_after: dict[int, float] = {}

    def actor() -> None:
        while len(resent_after) < CALLS:
            got = router.recv()
            assert got is not None
            peer, req = got
            if req.id in refused_at:
                resent_after[req.id] = time.monotonic() - refused_at[req.id]
                router.reply(peer, req, {"n": req.args["n"]})
                continue
            refused_at[req.id] = time.monotonic()  # (before the refusal: never after it)
            router.error(peer, req, WireError.of("busy", "later",
                                                 retry_after_ms=int(RETRY_AFTER * 1000)))

    try:
        with Client(runtime_dir, learn_ops=False) as c, running(actor):
            results = c.pipeline(ACTOR, [("bare.do", {"n": i}) for i in range(CALLS)],
                                 timeout=30.0, idempotent=False)
    finally:
        router.close()
        ctx.term()
    assert results == [{"n": i} for i in range(CALLS)]
    assert min(resent_after.values()) >= RETRY_AFTER  # (sent after the refusal was)
