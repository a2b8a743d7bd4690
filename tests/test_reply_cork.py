"""A batch's replies leave together (actor.Cork): none before the batch is served, unless the
first has waited CORK_S; then all of them, in order, one each. A lone request's reply is not
held. The actor runs in this process with its real sockets; the batch is handed to it as its
loop hands one over (`handle_batch`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from moorage.actors.runtime.actor import CORK_S, Cork
from moorage.actors.watcher.actor import WatcherActor
from moorage.protocol.client._core import CallPlan, ClientCore
from moorage.protocol.envelope import decode_reply
from moorage.protocol.wire import recv_frames, send_frames

pytestmark = pytest.mark.timeout(60)


def test_held_replies_go_together_once_the_first_has_waited_cork_s() -> None:
    sent: list[list[bytes]] = []
    cork = Cork(sent.append)
    cork.tick(5.0)  # nothing held: nothing to time
    assert cork.flush_at == 0.0
    cork.msgs.append([b"a"])
    cork.tick(10.0)
    cork.msgs.append([b"b"])
    cork.tick(10.0 + CORK_S / 2)
    assert sent == []
    cork.tick(10.0 + CORK_S * 1.5)
    assert sent == [[b"a"], [b"b"]] and cork.msgs == [] and cork.flush_at == 0.0
    cork.msgs.append([b"c"])
    cork.tick(20.0)  # a new first reply: its own wait
    assert sent == [[b"a"], [b"b"]]
    cork.flush()
    assert sent == [[b"a"], [b"b"], [b"c"]]


@pytest.fixture
def actor(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    a = WatcherActor("watcher", run, {"push_metrics": False})
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{run}/watcher.rpc")
    yield a, dealer, ClientCore(run)
    dealer.close(0)
    ctx.term()
    a.close()


def requests(a: WatcherActor, dealer: zmq.Socket, core: ClientCore, n: int
             ) -> tuple[list[int], list[list[bytes]]]:
    ids, got = [], []
    for _ in range(n):
        plan = CallPlan(core, "watcher", "sys.ping", None, 60.0, True)
        ids.append(plan.id)
        send_frames(dealer, plan.frames)
    for _ in range(n):
        got.append(recv_frames(a.rpc))  # (route first, as the ROUTER gives them)
    return ids, got


def test_a_batchs_replies_leave_after_it_in_order_and_a_lone_reply_at_once(actor) -> None:
    a, dealer, core = actor
    ids, batch = requests(a, dealer, core, 5)
    serve = a.handle_request
    seen_during: list[int] = []

    def handle(frames: list[bytes], over_limit: bool = False) -> None:
        serve(frames, over_limit)
        seen_during.append(dealer.poll(0))

    a.handle_request = handle  # type: ignore[method-assign]
    a.handle_batch(batch)
    assert seen_during == [0] * 5  # (a reply not sent cannot have arrived)
    replies = [decode_reply(recv_frames(dealer)) for _ in range(5)]
    assert [r.id for r in replies] == ids and all(r.ok for r in replies)
    a.handle_request = serve  # type: ignore[method-assign]
    (one,), (frames,) = requests(a, dealer, core, 1)
    a.handle_batch([frames])
    assert dealer.poll(10_000)  # sent when it was made: nothing holds it
    assert decode_reply(recv_frames(dealer)).id == one
