"""However a subscription's replay ends, its topic goes on: an answer of the wrong shape, a page
that does not move the topic on, a cancelled or interrupted `next()`, a failure while later
gaps are held. Each is a failed replay (PROTOCOL.md section 12, step 5): the gap is reported
lost, the held messages are delivered (a later gap among them replayed in turn), and what is
published next is delivered as it comes, never held for a replay nobody reads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from moorage.protocol.client import AsyncClient, Client, Loss, Subscription
from moorage.protocol.client._streams import NeedReplay, StreamTracker
from moorage.protocol.envelope import Reply, Request, StreamMessage
from moorage.protocol.errors import WireError
from tests.bare_actor import ACTOR, EPOCH, Publisher, Router, replay_answer, running
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


class Fake:
    """The actor's two sockets, and the replay requests it got."""

    def __init__(self, runtime_dir: Any) -> None:
        self.ctx = zmq.Context()
        self.router = Router(self.ctx, runtime_dir)
        self.pub = Publisher(self.ctx, runtime_dir)
        self.replays: list[Request] = []
        self.stop = threading.Event()

    def answer_replays(self, answer: Callable[[Request], Any], most: int = 5) -> None:
        """Answer each replay request with `answer(request)` (a result, or a WireError), up to
        `most` of them; those past it are left unanswered."""
        while not self.stop.is_set():
            got = self.router.recv(0.05)
            if got is None:
                continue
            self.replays.append(got[1])
            if len(self.replays) > most:
                continue
            a = answer(got[1])
            if isinstance(a, WireError):
                self.router.error(*got, a)
            else:
                self.router.reply(*got, a)

    def close(self) -> None:
        self.stop.set()
        self.router.close()
        self.pub.close()
        self.ctx.term()


@pytest.fixture
def fake(runtime_dir) -> Iterator[Fake]:
    f = Fake(runtime_dir)
    try:
        yield f
    finally:
        f.close()


def message(seq: int) -> StreamMessage:
    return StreamMessage("t", seq, EPOCH, {"n": seq}, [])


def with_a_gap(c: Client, fake: Fake) -> Subscription:
    """A subscription to `t` that got 1, with 3 published next (2 never was: a gap)."""
    sub = c.subscribe(ACTOR, ["t"])
    assert fake.pub.subscribed()
    fake.pub.publish("t", 1, {"n": 1})
    assert sub.next(20) == message(1)
    fake.pub.publish("t", 3, {"n": 3})
    return sub


def goes_on(sub: Subscription, fake: Fake) -> None:
    """The gap was reported lost, the held message delivered, and the next one is too."""
    assert sub.next(20) == Loss("t", 2, 2, EPOCH)
    assert sub.next(20) == message(3)
    fake.pub.publish("t", 4, {"n": 4})
    assert sub.next(20) == message(4)
    assert sub.tracker.replaying == set()


MALFORMED = {
    "a message not a 3-list": {"epoch": EPOCH, "messages": [[2, None]], "lost": None,
                               "more": False},
    "lost not a 2-list": {"epoch": EPOCH, "messages": [], "lost": [2], "more": False},
    "lost not ints": {"epoch": EPOCH, "messages": [], "lost": ["2", "2"], "more": False},
    "a seq not an int": {"epoch": EPOCH, "messages": [["2", {"n": 2}, 0]], "lost": None,
                         "more": False},
    "not a map": [[2, {"n": 2}, 0]],
    "more attachments than came": {"epoch": EPOCH, "messages": [[2, {"n": 2}, 1]],
                                   "lost": None, "more": False},
}


def goes_on_answered(fake: Fake, runtime_dir: Any, answer: Any,
                     schema_checked: bool = True) -> None:
    """A subscription with a gap whose every replay is answered `answer`: it goes on."""
    with Client(runtime_dir, learn_ops=False) as c, \
            running(lambda: fake.answer_replays(lambda req: answer)):
        if not schema_checked:
            c.core.reply_check = None  # (the answers break the op's schema on purpose)
        try:
            goes_on(with_a_gap(c, fake), fake)
        finally:
            fake.stop.set()


@pytest.mark.parametrize("answer", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_replay_answer_is_a_failed_replay(fake, runtime_dir, answer):
    goes_on_answered(fake, runtime_dir, answer, schema_checked=False)
    assert len(fake.replays) == 1


def test_a_page_cut_with_nothing_in_it_is_a_failed_replay(fake, runtime_dir):
    answer = replay_answer([], more=True)
    goes_on_answered(fake, runtime_dir, answer)
    assert len(fake.replays) == 1


def test_answers_that_leave_the_gap_where_it_was_are_a_failed_replay(fake, runtime_dir):
    # One such answer is asked again (the held message may have been published after it);
    # the second ends the replay.
    answer = replay_answer([])
    goes_on_answered(fake, runtime_dir, answer)
    assert [r.args["from_seq"] for r in fake.replays] == [2, 2]


def test_a_replay_page_has_what_is_left_of_next_s_timeout(fake, runtime_dir):
    with Client(runtime_dir, learn_ops=False, timeout=30.0, attempt_timeout=0.2) as c, \
            running(lambda: fake.answer_replays(lambda req: replay_answer([]), most=0)):
        try:
            sub = with_a_gap(c, fake)
            assert sub.sock.poll(20_000)  # (message 3 is here: its gap's replay is asked now)
            asked = time.time()
            assert sub.next(timeout=0.5) == Loss("t", 2, 2, EPOCH)  # (never answered)
            assert sub.next(20) == message(3)
        finally:
            fake.stop.set()
    assert {r.id for r in fake.replays} == {fake.replays[0].id}  # (one call, its resends)
    deadline_ms = fake.replays[0].deadline_ms
    assert deadline_ms is not None and deadline_ms < (asked + 10) * 1000  # not the 30 s


def test_an_interrupt_during_a_replay_leaves_the_topic_going_on(fake, runtime_dir):
    def interrupt(actor: str, op: str, reply: Reply) -> None:
        if op == "replay":
            raise KeyboardInterrupt

    with Client(runtime_dir, learn_ops=False) as c, \
            running(lambda: fake.answer_replays(lambda req: replay_answer([2]))):
        try:
            sub = with_a_gap(c, fake)
            c.core.reply_check = interrupt  # (the one hook in the reply's path)
            with pytest.raises(KeyboardInterrupt):
                sub.next(20)
            c.core.reply_check = None
            goes_on(sub, fake)
        finally:
            fake.stop.set()


def test_a_next_cancelled_during_its_replay_leaves_the_topic_going_on(fake, runtime_dir):
    async def main() -> None:
        async with AsyncClient(runtime_dir, learn_ops=False) as c:
            sub = c.subscribe(ACTOR, ["t"])
            assert await asyncio.to_thread(fake.pub.subscribed)
            fake.pub.publish("t", 1, {"n": 1})
            assert await sub.next(20) == message(1)
            fake.pub.publish("t", 3, {"n": 3})
            waiting = asyncio.create_task(sub.next())
            await asyncio.to_thread(wait_for, lambda: fake.replays, "the replay request")
            waiting.cancel()  # as a caller's own wait_for around next() does
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await sub.next(20) == Loss("t", 2, 2, EPOCH)
            assert await sub.next(20) == message(3)
            fake.pub.publish("t", 4, {"n": 4})
            assert await sub.next(20) == message(4)
            assert sub.tracker.replaying == set()

    with running(lambda: fake.answer_replays(lambda req: replay_answer([2]), most=0)):
        try:
            asyncio.run(main())
        finally:
            fake.stop.set()


def test_a_failed_replay_returns_the_replay_a_later_held_gap_needs():
    t = StreamTracker(None, [""])
    t.on_message(message(1))
    assert t.catch_up() == [NeedReplay("t", 2)]
    for seq in (5, 6, 9):  # read while the catch-up's replay was out (7 and 8 dropped)
        assert t.on_message(message(seq)) == ([], None)
    events, need = t.replay_failed("t")
    assert events == [Loss("t", 2, 4, EPOCH), message(5), message(6)]
    assert need == NeedReplay("t", 7)
    events, need = t.on_replay("t", replay_answer([7, 8]), [])
    assert events == [message(7), message(8), message(9)] and need is None
    assert t.on_message(message(10)) == ([message(10)], None)


def test_a_caller_that_gives_up_on_a_replay_gets_every_held_gap_as_lost():
    t = StreamTracker(None, [""])
    t.on_message(message(1))
    t.catch_up()
    for seq in (5, 6, 9):
        t.on_message(message(seq))
    assert t.on_replay_failed("t") == [Loss("t", 2, 4, EPOCH), message(5), message(6),
                                       Loss("t", 7, 8, EPOCH), message(9)]
    assert t.replaying == set()
    assert t.on_message(message(10)) == ([message(10)], None)


def test_a_replay_that_fails_while_later_gaps_are_held_replays_those(fake, runtime_dir):
    failed = threading.Event()

    def answer(req: Request) -> Any:
        if req.args["from_seq"] == 2:  # the catch-up's: failed once the others are held
            assert failed.wait(30)
            return WireError.of("bad_args", "no")
        return replay_answer([7, 8])

    async def main() -> None:
        async with AsyncClient(runtime_dir, learn_ops=False) as c:
            sub = c.subscribe(ACTOR, ["t"])
            assert await asyncio.to_thread(fake.pub.subscribed)
            fake.pub.publish("t", 1, {"n": 1})
            assert await sub.next(20) == message(1)
            catching_up = asyncio.create_task(sub.catch_up())
            await asyncio.to_thread(wait_for, lambda: fake.replays, "the catch-up's replay")
            reading = asyncio.create_task(sub.next(30))
            for seq in (5, 6, 9):  # 7, 8 dropped
                fake.pub.publish("t", seq, {"n": seq})
            await asyncio.to_thread(wait_for, lambda: len(sub.tracker.held.get("t", ())) == 3,
                                    "5, 6 and 9 held (read by `reading`)")
            failed.set()
            await catching_up
            fake.pub.publish("t", 10, {"n": 10})
            expected = [Loss("t", 2, 4, EPOCH), *map(message, (5, 6, 7, 8, 9, 10))]
            got = [await reading]
            while len(got) < len(expected) and (ev := await sub.next(10)) is not None:
                got.append(ev)
            assert got == expected
            assert sub.tracker.replaying == set()

    with running(lambda: fake.answer_replays(answer)):
        try:
            asyncio.run(main())
        finally:
            failed.set()
            fake.stop.set()


def test_a_gap_after_a_failed_replay_gets_its_one_honest_empty_answer_again():
    """An answer with nothing new is honest once (the held message that shows the gap was
    published after it): it is asked again. The mark of one such answer stayed set after
    the replay that followed it failed, and the next gap's first empty answer was taken
    for the second: its messages, still retained, reported lost."""
    t = StreamTracker(None, [""])
    t.on_message(message(1))
    t.catch_up()
    t.on_message(message(4))  # read while the catch-up's replay was out
    events, need = t.on_replay("t", replay_answer([]), [])
    assert need == NeedReplay("t", 2)  # (4 shows the gap: asked again)
    events, need = t.replay_failed("t")  # that one timed out
    assert events == [Loss("t", 2, 3, EPOCH), message(4)] and need is None
    t.catch_up()
    t.on_message(message(7))
    events, need = t.on_replay("t", replay_answer([]), [])
    assert need == NeedReplay("t", 5) and not any(isinstance(e, Loss) for e in events)
