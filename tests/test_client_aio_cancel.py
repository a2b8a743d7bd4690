"""The asyncio client keeps its callers' cancellations, ends subscriptions cleanly, and
refuses an event loop other than its own.

- A task cancelled while its call or its subscription's `next()` waits ends cancelled, at
  whatever point the cancel lands: also in the turns between its reply (or message) coming
  and the task taking it, where Python 3.11's `asyncio.wait_for` returned the result and
  dropped the cancel (a task looping on calls ran on; a handler under `asyncio.timeout` ran
  past it). A message read in that instant is not lost: the next `next()` returns it.
- A closed subscription's `next()` returns None (PROTOCOL.md section 10, "A client
  closed"), one waiting when it is closed included, in the asyncio and the blocking client
  (it raised CancelledError in a task nobody cancelled, and a raw ZMQError after).
- A call or subscription from another event loop (a later `asyncio.run`, a worker thread's
  own loop) is refused `bad_args` before anything is sent; it was sent, and its reply,
  handed to a loop that does not wait for it, came a second late or never.

The actor is a real one (tests.fakes:FakeActor) in a real tree. Each cancel is made at a
point counted in turns of the event loop from a fact the reply or message makes true, not
after a time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import zmq

from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.client.aio import AsyncSubscription
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError

pytestmark = pytest.mark.timeout(240)

ONE = """
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""

CANCELS = 500  # calls (and next()s) cancelled, each at one of TURNS points from its reply
TURNS = 6  # turns of the loop after the reply is in: the cancel lands in each of them
TOPIC = "t"


async def turn() -> None:
    """Let the event loop run one turn: every callback ready now runs before we go on."""
    await asyncio.sleep(0)  # sleep-ok: a yield of one turn (the cancel's point), not a wait


def reply_queued(c: AsyncClient) -> bool:
    """A reply is in a call's inbox, not yet taken by its task (the call's task is woken
    by it, but has not run since)."""
    conn = c._conns.get("a")
    return conn is not None and any(not q.empty() for q in conn.waiters.values())


def received(tree: Any) -> int:
    """Requests the actor has received so far, this look included."""
    return tree.call("a", "sys.info")["received"]


# --- 1. cancellations ------------------------------------------------------------------------


async def loop_on_calls(c: AsyncClient, cancel_made: asyncio.Event) -> None:
    """Call until cancelled; return if a call returns after the cancel was made while it
    waited (the cancel was lost: with it kept, the task never gets here)."""
    while True:
        await c.call("a", "fake.count")
        if cancel_made.is_set():
            return


def test_a_call_cancelled_at_any_point_from_its_reply_ends_cancelled(make_tree):
    """A task loops on calls; another, woken each turn, sees a reply come into the call's
    inbox and cancels the task `k` turns later (k = 0..TURNS-1, round after round): before
    the task took the reply, as it takes it, or once its next call is under way. Every
    cancel must end the task cancelled; a call that returns after its task was cancelled
    lost the cancel."""
    tree = make_tree(ONE).start()

    async def main() -> list[tuple[int, int]]:
        lost: list[tuple[int, int]] = []  # (round, k) of each cancel a call returned past
        async with AsyncClient(tree.runtime_dir, timeout=30.0) as c:
            await c.call("a", "fake.count")  # (its ops learned: no sys.info in the rounds)
            for i in range(CANCELS):
                k = i % TURNS
                cancel_made = asyncio.Event()
                task = asyncio.create_task(loop_on_calls(c, cancel_made))
                while not reply_queued(c):
                    assert not task.done(), task
                    await turn()
                for _ in range(k):
                    await turn()
                task.cancel()
                cancel_made.set()
                await asyncio.wait([task])
                if not task.cancelled():
                    assert task.result() is None
                    lost.append((i, k))
            assert not c._conns["a"].waiters  # (every cancelled call let go of its id)
        return lost

    lost = asyncio.run(main())
    assert not lost, f"{len(lost)} of {CANCELS} cancels lost (round, turns): {lost[:10]}"


def test_a_next_cancelled_at_any_point_from_its_message_ends_cancelled_and_keeps_it(
        make_tree):
    """Each round one message is published and, once it is in the subscription's socket, a
    task is started on `next(timeout=...)` and cancelled `k` turns of the loop later (k =
    0..TURNS-1): before it ran, as it reads the message, or once it has it. A task still
    running when cancelled must end cancelled (one that returned the message lost the
    cancel); the message, read or not when the cancel came, must come from the next `next()`,
    in order, with no replay asked (a message dropped at a cancel would leave a gap that the
    next message's replay fills, or none to tell of it until another comes)."""
    tree = make_tree(ONE).start()

    async def main() -> tuple[list[tuple[int, int]], list[int], int]:
        lost: list[tuple[int, int]] = []
        seqs: list[int] = []
        async with AsyncClient(tree.runtime_dir, timeout=30.0) as c:
            await c.call("a", "fake.count")
            sub = c.subscribe("a", [TOPIC])
            await live(sub)
            for i in range(CANCELS):
                k = i % TURNS
                await c.call("a", "fake.publish", {"topic": TOPIC, "n": 1})
                while not sub.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    await turn()  # (until the message is in the socket: nobody reads it yet)
                reader = asyncio.create_task(sub.next(timeout=60.0))
                for _ in range(k):
                    await turn()
                if reader.done():  # (it had the message before the cancel: none made)
                    ev = reader.result()
                else:
                    reader.cancel()
                    await asyncio.wait([reader])
                    if not reader.cancelled():
                        lost.append((i, k))
                        ev = reader.result()
                    else:
                        ev = await sub.next(timeout=30.0)
                assert isinstance(ev, StreamMessage), (i, k, ev)
                seqs.append(ev.seq)
            replays = sub.tracker.replays_asked
        return lost, seqs, replays

    lost, seqs, replays = asyncio.run(main())
    assert not lost, f"{len(lost)} of {CANCELS} cancels lost (round, turns): {lost[:10]}"
    assert seqs == list(range(1, CANCELS + 1))
    assert replays == 0


async def live(sub: AsyncSubscription) -> None:
    """Until the publisher's round of welcomes made the subscription live (nothing is
    published before: each next() waits its short timeout for a welcome, and returns None)."""
    for _ in range(400):
        assert await sub.next(timeout=0.05) is None
        if TOPIC in sub.tracker.live:
            return
    pytest.fail("the subscription never became live")


# --- 3. subscriptions at close ---------------------------------------------------------------


@pytest.mark.parametrize("closing", ["subscription", "client"])
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_next_waiting_when_its_subscription_closes_returns_none(make_tree, closing, timeout):
    """The reader has had one message and waits in next() for the next one; the subscription
    (or its whole client) is closed: that next() returns None, and so does every later one.
    Nobody cancelled the reader: it must not end cancelled (it did, and took asyncio.run's
    main task with it), nor raise a ZMQError on the closed socket."""
    tree = make_tree(ONE).start()

    async def main() -> tuple[list[Any], Any, Any]:
        c = AsyncClient(tree.runtime_dir, timeout=30.0)
        try:
            sub = c.subscribe("a", [TOPIC])
            await live(sub)
            got: list[Any] = []
            first = asyncio.Event()

            async def read() -> None:
                while True:
                    ev = await sub.next(timeout=timeout)
                    got.append(ev)
                    if ev is None:
                        return
                    first.set()

            reader = asyncio.create_task(read())
            await c.call("a", "fake.publish", {"topic": TOPIC, "n": 1})
            await first.wait()  # (woken by it: the reader waits in its next next() by now)
            assert not reader.done()
            if closing == "client":
                await c.close()
            else:
                sub.close()
            await asyncio.wait([reader])
            assert not reader.cancelled(), "a reader nobody cancelled ended cancelled"
            assert reader.exception() is None, reader.exception()
            return got, await sub.next(), await sub.next(timeout=1.0)
        finally:
            await c.close()

    got, later, later_timed = asyncio.run(main())
    assert [type(e) for e in got] == [StreamMessage, type(None)]
    assert (later, later_timed) == (None, None)


@pytest.mark.parametrize("closing", ["subscription", "client"])
def test_next_on_a_closed_subscription_returns_none_in_both_clients(make_tree, closing):
    tree = make_tree(ONE).start()
    sub = tree.client.subscribe("a", [TOPIC])
    try:
        sub.close()
        assert sub.next() is None and sub.next(timeout=1.0) is None
    finally:
        sub.close()
    if closing == "client":
        c = Client(tree.runtime_dir, timeout=10.0)
        sub = c.subscribe("a", [TOPIC])
        c.close()
        assert sub.next() is None and sub.next(timeout=1.0) is None

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(tree.runtime_dir, timeout=10.0) as c:
            asub = c.subscribe("a", [TOPIC])
            if closing == "client":
                await c.close()
            else:
                asub.close()
            return await asub.next(), await asub.next(timeout=1.0)

    assert asyncio.run(main()) == (None, None)


# --- 4. another event loop -------------------------------------------------------------------


def refused_other_loop(e: pytest.ExceptionInfo[MoorageError], op: str) -> None:
    assert (e.value.name, e.value.attempts) == ("bad_args", 0), e.value
    assert "run_coroutine_threadsafe" in str(e.value) and f"{op} to a not sent" in str(e.value)


def test_a_client_used_from_a_second_asyncio_run_is_refused_before_sending(make_tree):
    """A client made at module level, used in one asyncio.run and then in another: in the
    second, a call and a subscription are refused at once, and nothing reaches the actor
    (a write ran there but was answered `outcome_unknown` 5.5 s later)."""
    tree = make_tree(ONE).start()
    c = AsyncClient(tree.runtime_dir, timeout=10.0)
    try:
        assert asyncio.run(c.call("a", "fake.effect"))["effects"] == 1
        before = received(tree)

        async def second() -> None:
            with pytest.raises(MoorageError) as e:
                await c.call("a", "fake.effect")
            refused_other_loop(e, "fake.effect")
            with pytest.raises(MoorageError) as e:
                c.subscribe("a", [TOPIC])
            refused_other_loop(e, "subscribe")

        asyncio.run(second())
        assert received(tree) - before == 1  # (this look's own: the refused call never left)
        assert tree.call("a", "fake.count")["effects"] == 1
    finally:
        asyncio.run(c.close())


def test_a_call_from_another_threads_loop_is_refused_and_threadsafe_handover_works(make_tree):
    """The client's loop runs; a worker thread with a loop of its own calls it directly
    (refused `bad_args`, nothing sent: each such call took a whole attempt timeout, its reply
    handed to the loop that does not wait for it), then hands the call to the client's loop
    with run_coroutine_threadsafe, as the refusal says (answered)."""
    tree = make_tree(ONE).start()

    async def main() -> tuple[Any, Any]:
        async with AsyncClient(tree.runtime_dir, timeout=10.0) as c:
            assert (await c.call("a", "fake.effect"))["effects"] == 1
            loop = asyncio.get_running_loop()
            refused: list[MoorageError] = []

            def worker() -> Any:
                async def own_loop() -> None:
                    try:
                        await c.call("a", "fake.effect")
                    except MoorageError as exc:
                        refused.append(exc)

                asyncio.run(own_loop())
                handed = asyncio.run_coroutine_threadsafe(c.call("a", "fake.effect"), loop)
                return handed.result(timeout=30)

            done = await asyncio.to_thread(worker)
            assert threading.current_thread() is threading.main_thread()
            return refused, done

    refused, done = asyncio.run(main())
    assert [(e.name, e.attempts) for e in refused] == [("bad_args", 0)], refused
    assert "run_coroutine_threadsafe" in str(refused[0])
    assert done["effects"] == 2  # (the refused call never ran)
