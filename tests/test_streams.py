"""The subscriber's bookkeeping (pure): order, gaps, welcomes, replays, loss and resets."""

from __future__ import annotations

import pytest

from moorage.protocol.client._streams import Loss, NeedReplay, Reset, StreamTracker
from moorage.protocol.envelope import StreamMessage

pytestmark = pytest.mark.timeout(10)


def msg(seq: int, epoch: str = "e1", welcome: bool = False) -> StreamMessage:
    return StreamMessage("t", seq, epoch, None if welcome else {"n": seq}, [], welcome)


def answer(epoch: str, seqs: list[int], lost: list[int] | None = None) -> dict:
    return {"epoch": epoch, "messages": [[s, {"n": s}, 0] for s in seqs], "lost": lost,
            "more": False}


def test_a_gap_is_held_and_filled_by_replay_in_order():
    t = StreamTracker()
    assert t.on_message(msg(1)) == ([msg(1)], None)
    events, need = t.on_message(msg(4))
    assert events == [] and need == NeedReplay("t", 2)
    assert t.on_message(msg(5)) == ([], None)  # held while replaying
    events, need = t.on_replay("t", answer("e1", [2, 3]), [])
    assert [e.seq for e in events] == [2, 3, 4, 5] and need is None


def test_what_retention_dropped_comes_back_as_a_loss():
    t = StreamTracker()
    t.on_message(msg(1))
    t.on_message(msg(9))
    events, _ = t.on_replay("t", answer("e1", [6, 7, 8], lost=[2, 5]), [])
    assert events[0] == Loss("t", 2, 5, "e1")
    assert [e.seq for e in events[1:]] == [6, 7, 8, 9]


def test_a_late_welcome_asks_for_what_was_published_before_the_subscription():
    t = StreamTracker(from_seq=1)
    events, need = t.on_message(msg(3, welcome=True))
    assert events == [] and need == NeedReplay("t", 1)
    events, _ = t.on_replay("t", answer("e1", [1, 2, 3]), [])
    assert [e.seq for e in events] == [1, 2, 3]
    assert t.on_message(msg(3, welcome=True)) == ([], None)  # nothing new: ignored


def test_a_new_epoch_is_a_reset_and_the_old_epochs_stragglers_never_reset_back():
    t = StreamTracker()
    t.on_message(msg(1, "old"))
    events, need = t.on_message(msg(2, "new"))
    assert events == [Reset("t", "old", "new")] and need == NeedReplay("t", 1)
    events, need = t.on_replay("t", answer("new", [1, 2]), [])
    assert [e.seq for e in events] == [1, 2] and need is None
    # A message of the superseded epoch still queued in the socket: dropped, no Reset.
    assert t.on_message(msg(2, "old")) == ([], None)
    assert t.on_message(msg(3, "new")) == ([msg(3, "new")], None)


def test_a_replay_answered_by_a_successor_lets_the_old_epochs_queued_messages_through_first():
    t = StreamTracker()
    t.on_message(msg(1, "old"))
    events, need = t.on_message(msg(3, "old"))  # a gap: replay asked, its publisher dies
    assert need == NeedReplay("t", 2)
    events, need = t.on_replay("t", answer("new", [1]), [])
    assert need is None
    assert events == [Loss("t", 2, 2, "old"), msg(3, "old")]
    # Still queued in the socket, ahead of the new epoch: delivered, gaps reported as loss.
    assert t.on_message(msg(4, "old")) == ([msg(4, "old")], None)
    assert t.on_message(msg(6, "old"))[0] == [Loss("t", 5, 5, "old"), msg(6, "old")]
    # Then the new epoch's welcome: the Reset, and its history from the start.
    events, need = t.on_message(msg(2, "new", welcome=True))
    assert events == [Reset("t", "old", "new")] and need == NeedReplay("t", 1)
