"""The subscriber's bookkeeping (pure): order, gaps, welcomes, replays, loss and resets."""

from __future__ import annotations

import pytest

from moorage.protocol.client._streams import (
    FILL_PAGE,
    ByteGap,
    BytesLost,
    GapFill,
    Loss,
    NeedReplay,
    Reset,
    StreamTracker,
)
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


# --- terminal output: bytes by offset ----------------------------------------------------------


def out(seq: int, offset: int, data: bytes, epoch: str = "e1") -> StreamMessage:
    return StreamMessage("term.out.s1", seq, epoch, {"offset": offset}, [data])


def test_bytes_skipped_across_a_reset_come_after_a_byte_gap_and_a_new_shell_is_none():
    t = StreamTracker()
    assert t.on_message(out(1, 0, b"abc"))[0] == [out(1, 0, b"abc")]
    # the old life's tail (offsets 3..9) was dropped before it died: no seq says so
    events, _ = t.on_message(out(1, 10, b"xyz", epoch="e2"))
    assert events == [Reset("term.out.s1", "e1", "e2"), ByteGap("term.out.s1", 3, 10, "e2", 1),
                      out(1, 10, b"xyz", epoch="e2")]
    assert t.byte_gaps == 1
    # a recreated session's shell starts at a multiple of 2^40: a new stream, not a gap
    events, _ = t.on_message(out(2, 1 << 40, b"new", epoch="e2"))
    assert events == [out(2, 1 << 40, b"new", epoch="e2")]
    # bytes republished after a gap are still dropped by offset
    assert t.on_message(out(3, (1 << 40) + 1, b"ew!", epoch="e2"))[0] == [
        out(3, (1 << 40) + 3, b"!", epoch="e2")._replace(
            body={"offset": (1 << 40) + 3})]


def scrollback(frm: int, data: bytes, lost: list[int] | None = None) -> tuple[dict, list]:
    body = {"session": "s1", "from": frm, "to": frm + len(data), "first": frm, "end": 99}
    if lost is not None:
        body["lost"] = lost
    return body, [data]


def test_a_gap_is_filled_from_the_scrollback_and_what_it_no_longer_holds_is_lost():
    gap = ByteGap("term.out.s1", 3, 10, "e2", 1)
    fill = GapFill(gap)
    assert fill.ask() == {"session": "s1", "from_offset": 3, "max_bytes": 7}
    fill.take(*scrollback(5, b"fghij", lost=[3, 5]))
    assert fill.ask() is None
    assert fill.events == [
        BytesLost("term.out.s1", 3, 5),
        StreamMessage("term.out.s1", 1, "e2", {"offset": 5, "replay": True}, [b"fghij"])]


def test_a_gap_filled_in_pages_and_a_failed_or_malformed_answer_reports_the_rest_lost():
    fill = GapFill(ByteGap("term.out.s1", 0, 3 * FILL_PAGE, "e1", 7))
    fill.take(*scrollback(0, b"a" * FILL_PAGE))
    assert fill.ask() == {"session": "s1", "from_offset": FILL_PAGE, "max_bytes": FILL_PAGE}
    fill.take({"from": FILL_PAGE, "to": FILL_PAGE + 5}, [b"abc"])  # says 5, carries 3
    assert fill.ask() is None
    assert fill.events[1] == BytesLost("term.out.s1", FILL_PAGE, 3 * FILL_PAGE)
    failed = GapFill(ByteGap("term.out.s1", 4, 6, "e1", 2))
    failed.failed()
    assert failed.events == [BytesLost("term.out.s1", 4, 6)] and failed.ask() is None
    # a scrollback that begins past the gap's end: all of it lost, no empty message
    past = GapFill(ByteGap("term.out.s1", 4, 6, "e1", 2))
    past.take(*scrollback(8, b"zz", lost=[4, 8]))
    assert past.events == [BytesLost("term.out.s1", 4, 6)] and past.ask() is None
    # a session whose end is before the gap's answers no bytes: lost, not asked for ever
    short = GapFill(ByteGap("term.out.s1", 4, 6, "e1", 2))
    short.take(*scrollback(4, b""))
    assert short.events == [BytesLost("term.out.s1", 4, 6)] and short.ask() is None
