"""What a caller reads in a call the breaker refused (PROTOCOL.md section 11). `circuit_open`
means "not sent": only a call refused before its first send ends with it, and always with a
`retry_after_ms` above 0 (the cooldown left; while half-open, the breaker's current cooldown),
so that a caller honouring it does not retry in a tight loop. A call that was sent and whose
resend the breaker refuses ends with its own outcome: `timeout` for an idempotent call whose
attempts got no reply, the error its last attempt was answered with otherwise (an attempt
with no reply counts as one failure each, so one call can open the breaker under itself)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest
import zmq

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.client._core import CallPlan, ClientCore, Done, Resend, Wait
from moorage.protocol.envelope import Request, decode_reply, encode_error
from moorage.protocol.errors import MoorageError, WireError
from moorage.protocol.recovery import BreakerState
from tests.bare_actor import ACTOR, EPOCH, Router, running
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ATTEMPT = 0.1  # an attempt's wait: the silent actor's calls fail fast
COOLDOWN = 0.3  # the half-open test waits this out


def test_a_sent_call_refused_its_resend_ends_timeout_and_a_call_refused_was_never_sent(
        runtime_dir):
    """Two failures open the breaker: both attempts of the first call, which then ends
    `timeout` (it was sent twice), not `circuit_open`. The next call is refused before its
    send: `circuit_open` with the cooldown left, and nothing of it reaches the actor (a marker
    sent once the breaker is closed again is the next request the actor gets)."""
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    got: list[Request] = []

    def actor() -> None:
        for _ in range(2):  # the first call's two attempts, never answered
            req = router.recv()
            assert req is not None, "an attempt of the first call never came"
            got.append(req[1])
        marker = router.recv()
        assert marker is not None, "the marker never came"
        got.append(marker[1])
        router.reply(*marker, {"marker": True})

    try:
        with Client(runtime_dir, learn_ops=False, timeout=30.0, attempt_timeout=ATTEMPT,
                    breaker_threshold=2, breaker_cooldown=60.0) as c, running(actor):
            t0 = time.monotonic()
            with pytest.raises(MoorageError) as sent:
                c.call(ACTOR, "bare.sync", idempotent=True)
            took = time.monotonic() - t0
            state = c.breaker_state(ACTOR)
            with pytest.raises(MoorageError) as refused:
                c.call(ACTOR, "bare.never", idempotent=True)
            # (standing in for an answer: the breaker closed, the connection the same one)
            c.core.breaker(ACTOR).record_success(time.monotonic())
            assert c.call(ACTOR, "bare.marker", idempotent=True) == {"marker": True}
    finally:
        router.close()
        ctx.term()
    assert (sent.value.name, sent.value.attempts, state) == ("timeout", 2, BreakerState.OPEN), \
        sent.value
    assert took < 10.0  # ended at the refusal, not at its 30 s deadline
    assert refused.value.name == "circuit_open", refused.value
    assert refused.value.attempts == 0
    assert 50_000 < (refused.value.error.retry_after_ms or 0) <= 60_000, refused.value.error
    assert [r.op for r in got] == ["bare.sync", "bare.sync", "bare.marker"]


def test_a_call_refused_while_the_probe_is_out_is_told_when_to_come_back(runtime_dir):
    """Half-open, the probe is out at the actor: another call is refused `circuit_open` with
    the breaker's current cooldown as its `retry_after_ms`, not 0. (The call that opened the
    breaker, refused its resend, ends `timeout`: asyncio client.)"""
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    probe_in = threading.Event()
    answer_probe = threading.Event()
    got: list[Request] = []

    def actor() -> None:
        first = router.recv()  # the call that opens the breaker, never answered
        assert first is not None
        got.append(first[1])
        probe = router.recv()
        assert probe is not None, "the probe never came"
        got.append(probe[1])
        probe_in.set()
        assert answer_probe.wait(20), "the test never let the probe be answered"
        router.reply(*probe, {"probed": True})

    async def main() -> tuple[Any, ...]:
        async with AsyncClient(runtime_dir, learn_ops=False, attempt_timeout=ATTEMPT,
                               breaker_threshold=1, breaker_cooldown=COOLDOWN) as c:
            try:
                await c.call(ACTOR, "bare.sync", timeout=30.0, idempotent=True)
            except MoorageError as exc:
                sent = exc
            await asyncio.to_thread(wait_for, lambda: c.breaker_state(ACTOR)
                                    is BreakerState.HALF_OPEN, "the breaker half-open")
            # (not idempotent, no epoch known: one attempt, to its deadline)
            probe = asyncio.create_task(c.call(ACTOR, "bare.probe", timeout=30.0,
                                               idempotent=False))
            await asyncio.to_thread(wait_for, probe_in.is_set, "the probe at the actor")
            try:
                await c.call(ACTOR, "bare.other", idempotent=True)
            except MoorageError as exc:
                refused = exc
            finally:
                answer_probe.set()
            return sent, refused, await probe, c.breaker_state(ACTOR)

    try:
        with running(actor):
            sent, refused, probed, state = asyncio.run(main())
    finally:
        router.close()
        ctx.term()
    assert (sent.name, sent.attempts, refused.name, refused.error.retry_after_ms) == \
        ("timeout", 1, "circuit_open", math.ceil(COOLDOWN * 1000)), (sent, refused)
    assert (probed, state) == ({"probed": True}, BreakerState.CLOSED)
    assert [r.op for r in got] == ["bare.sync", "bare.probe"]


def _open(core: ClientCore, now: float) -> None:
    br = core.breaker(ACTOR)
    for _ in range(br.threshold):
        br.record_failure(now)
    assert br.current(now) is BreakerState.OPEN


def test_a_refused_resend_ends_with_the_outcome_of_the_call_s_last_attempt():
    """The plan alone: an idempotent call answered `busy` ends with that answer; one whose
    connection dropped under it (no reply) `timeout`; a resumable call that may have run,
    its connection dropped, `outcome_unknown`. Never `circuit_open`: each was sent."""
    core = ClientCore("/tmp/moorage-nowhere")
    core.resumable[ACTOR] = frozenset({"bare.exec"})
    busy = CallPlan(core, ACTOR, "bare.sync", {}, 30.0, True)
    assert isinstance(busy.start(0.0), Wait)
    refusal = decode_reply(encode_error(busy.id, EPOCH, WireError.of(
        "busy", "later", retry_after_ms=50)))
    assert isinstance(busy.on_reply(refusal, 0.01), Resend)
    _open(core, 0.02)
    ended = busy.resend(0.07)
    assert isinstance(ended, Done) and ended.error is not None
    assert (ended.error.name, ended.error.error.retry_after_ms) == ("busy", 50)

    core = ClientCore("/tmp/moorage-nowhere")
    core.resumable[ACTOR] = frozenset({"bare.exec"})
    dropped = CallPlan(core, ACTOR, "bare.sync", {}, 30.0, True)
    resumable = CallPlan(core, ACTOR, "bare.exec", {"session": "s1"}, 30.0, False)
    for plan in (dropped, resumable):
        assert isinstance(plan.start(0.0), Wait)
    _open(core, 0.1)
    names = []
    for plan in (dropped, resumable):
        assert isinstance(plan.on_disconnect(0.2), Resend)
        ended = plan.resend(0.2)
        assert isinstance(ended, Done) and ended.error is not None
        names.append((ended.error.name, ended.error.attempts))
    assert names == [("timeout", 1), ("outcome_unknown", 1)]
