"""A fresh asyncio client learns an actor's ops once, however many first calls it makes at
once: one sys.info in flight per actor, every other first call waiting for its answer, or its
failure (then going on as a call to an actor whose ops are not known), and no call's own time
cut below what learning may take of it (PROTOCOL.md section 10). A burst of first calls that
each asked for itself doubled what the actor received, and the time each lost to a loop busy
with the others' learning left writes unanswered.

The actor is a real one in a real tree, alone in it: what it received (its sys.info's
`received`, which counts every request) is what this test's client sent it, and the test's
own two looks. What a real actor never does (leave its sys.info unanswered while it answers
other calls) is a bare ROUTER's (tests/bare_actor.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest
import zmq

from moorage.protocol.client import AsyncClient
from moorage.protocol.client._core import LEARN_SHARE, ClientCore
from tests.bare_actor import ACTOR, Router, running
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

# Heartbeats that a process held stopped for a few seconds does not miss (it is not restarted).
ONE = """
[supervisor]
heartbeat = { interval_ms = 1000, misses = 30 }
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""

N = 200  # first calls made at once (under the actor's queue_limit: none is refused busy)


def received(tree: Any) -> int:
    """Requests the actor has received so far, this look included."""
    return tree.call("a", "sys.info")["received"]


async def first_calls(c: AsyncClient, n: int) -> list[Any]:
    """`n` calls of an op the client cannot tell about, made at once: each is a first call
    (all of them start before any reply can be read)."""
    return await asyncio.gather(*(c.call("a", "fake.effect") for _ in range(n)),
                                return_exceptions=True)


def sys_info_calls(c: AsyncClient) -> list[dict[str, Any]]:
    return [r for r in c.latency_report() if r["op"] == "sys.info"]


def test_concurrent_first_calls_ask_the_actor_once_and_all_succeed(make_tree):
    tree = make_tree(ONE).start()
    before = received(tree)

    async def main() -> tuple[list[Any], list[dict[str, Any]]]:
        async with AsyncClient(tree.runtime_dir, timeout=30.0, attempt_timeout=30.0) as c:
            return await first_calls(c, N), sys_info_calls(c)

    results, asked = asyncio.run(main())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {N} failed, the first: {failed[0]!r}"
    assert sorted(r["effects"] for r in results) == list(range(1, N + 1))
    # The N calls, one sys.info, and this look (each sent once: attempts last 30 s).
    assert received(tree) - before == N + 1 + 1
    assert [r["count"] for r in asked] == [1]


def test_first_calls_wait_for_a_learning_that_fails_then_go_on_as_calls_to_an_unknown_actor(
        make_tree):
    """The actor is stopped while the calls are made: the one sys.info goes unanswered for
    its whole share, and each call, once it failed, is sent (as a call to an actor whose ops
    are not known) with the rest of its time, in which the actor, let go, answers it."""
    tree = make_tree(ONE).start()
    pid = tree.child("a")["pid"]
    before = received(tree)
    timeout = 6.0

    async def main() -> tuple[list[Any], list[dict[str, Any]], frozenset[str] | None]:
        async with AsyncClient(tree.runtime_dir, timeout=timeout, attempt_timeout=30.0) as c:
            os.kill(pid, signal.SIGSTOP)
            try:
                calls = asyncio.gather(*(c.call("a", "fake.effect") for _ in range(N)),
                                       return_exceptions=True)
                while not sys_info_calls(c):  # (recorded once the learning failed)
                    await asyncio.sleep(0.01)  # sleep-ok: pacing the look at a fact
            finally:
                os.kill(pid, signal.SIGCONT)
            return await calls, sys_info_calls(c), c.core.learned.get("a")

    results, asked, learned = asyncio.run(main())
    assert [(r["count"], r["ok"]) for r in asked] == [(1, False)], asked
    assert learned is None  # (not learned: the next first call asks again)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, f"{len(failed)} of {N} failed, the first: {failed[0]!r}"
    assert sorted(r["effects"] for r in results) == list(range(1, N + 1))
    # One sys.info (answered late, when the actor was let go), the N calls, and this look.
    assert received(tree) - before == 1 + N + 1


def test_a_call_keeps_all_but_the_share_of_its_time_however_long_learning_took(runtime_dir):
    """Learning that ends past its share (a loop too busy to turn meanwhile) takes no more of
    the call's time than the share; learning that ends at once takes next to none."""
    core = ClientCore(runtime_dir)
    whole = 1.0
    share = LEARN_SHARE * whole

    def overran(t: float) -> None:
        assert t == share
        time.sleep(share + 0.3)  # sleep-ok: a learning that overran its share

    assert core.after_learning("a", "fake.effect", whole, overran) == pytest.approx(whole - share)
    assert core.after_learning("a", "fake.effect", whole, lambda t: None) > whole - 0.1
    started = time.monotonic() - 10 * whole  # (a wait that began long ago)
    assert core.left_after_learning("a", "fake.effect", whole, started, share) \
        == pytest.approx(whole - share)


def test_a_first_call_with_a_shorter_share_goes_on_and_a_cancelled_one_leaves_the_learning(
        runtime_dir):
    """The first call to ask (60 s: a share of 30) holds the learning; one made meanwhile with
    2 s waits its own 1 s share, is sent, and is answered, no second sys.info asked. The first
    call cancelled by its caller, the learning goes on: answered late, the ops are learned, and
    the next call is sent without asking again."""
    ctx = zmq.Context()
    router = Router(ctx, runtime_dir)
    info_taken, info_answer = threading.Event(), threading.Event()
    ops = {"bare.do": {"idempotent": True, "resumable": False, "timeout_ms": 1000}}

    def actor() -> None:
        got = router.recv()
        assert got is not None and got[1].op == "sys.info", got
        info_taken.set()
        for i in range(2):  # the short call, then the next one
            if i == 1:
                assert info_answer.wait(30)
                router.reply(*got, {"ops": ops})
            call = router.recv()
            assert call is not None and call[1].op == "bare.do", call  # (no sys.info again)
            router.reply(*call, {"n": i})

    async def main() -> tuple[Any, Any, frozenset[str] | None]:
        async with AsyncClient(runtime_dir, timeout=60.0, attempt_timeout=60.0) as c:
            c.core.reply_check = None  # (the fake's sys.info holds its op table alone)
            first = asyncio.ensure_future(c.call(ACTOR, "bare.do"))
            await asyncio.to_thread(wait_for, info_taken.is_set, "the sys.info asked")
            short = await c.call(ACTOR, "bare.do", timeout=2.0)
            assert not first.done()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            info_answer.set()
            while ACTOR not in c.core.learned:
                await asyncio.sleep(0.01)  # sleep-ok: pacing the look at a fact
            return short, await c.call(ACTOR, "bare.do"), c.core.learned.get(ACTOR)

    try:
        with running(actor):
            try:
                short, after, learned = asyncio.run(main())
            finally:
                info_answer.set()
    finally:
        router.close()
        ctx.term()
    assert (short, after, learned) == ({"n": 0}, {"n": 1}, frozenset({"bare.do"}))
