"""Stream bookkeeping shared by both clients: order, gaps, replay, loss (no I/O here).

Each topic is tracked by (epoch, last seq delivered). The publisher answers every
subscription (a new one, or one renewed after a reconnection) with a round of welcomes: one
per topic under the subscribed prefix with its current seq, then one for the prefix itself,
which makes the subscription *live* (PROTOCOL.md section 12). A welcome of a topic not seen
yet, before the subscription is live, is where that topic starts for a subscriber "from now";
any topic first seen after it is live appeared while subscribed, so all of it is wanted (from
seq 1). A message with the next seq is delivered; one past a gap asks for a replay from the
first missing seq (the adapter calls the actor's `replay` op and feeds the answer back);
duplicates (seq already delivered) are dropped. What the publisher no longer retains comes back
as a `Loss` event, and a new epoch (the publisher restarted; its seqs begin again at 1) as a
`Reset`. Nothing is skipped without an event saying so.

Terminal output (`term.out.<session>`) is also de-duplicated by byte offset, across epochs: a
restarted terminal actor republishes bytes its predecessor may have published (`replay: true`),
and a subscriber must show each byte once. A message whose offset is past the next byte not
yet delivered (bytes no seq told missing: the tail of a publisher's life, dropped before it
died) comes after a `ByteGap`, which the adapter fills from the terminal's scrollback
(`GapFill`: the bytes as messages, what is no longer held as `BytesLost`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from moorage.protocol.envelope import StreamMessage


@dataclass(frozen=True, slots=True)
class Loss:
    """Messages `first`..`last` of `topic` were published but can no longer be had."""

    topic: str
    first: int
    last: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The publisher restarted: `topic` continues in `new_epoch` from seq 1."""

    topic: str
    old_epoch: str
    new_epoch: str


@dataclass(frozen=True, slots=True)
class BytesLost:
    """Bytes [`from_offset`, `to_offset`) of the terminal output `topic` were never delivered
    and can no longer be had (the terminal's scrollback no longer held them when asked)."""

    topic: str
    from_offset: int
    to_offset: int


@dataclass(frozen=True, slots=True)
class ByteGap:
    """Bytes [`from_offset`, `to_offset`) of `topic` were skipped by the message that follows:
    a subscription's adapter replaces this with what `GapFill` gets (never delivered as is)."""

    topic: str
    from_offset: int
    to_offset: int
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class NeedReplay:
    topic: str
    from_seq: int


StreamEvent = StreamMessage | Loss | Reset | BytesLost | ByteGap

# Topics whose messages carry `{offset}` and the bytes as attachment 0, de-duplicated by offset.
OFFSET_TOPIC_PREFIX = "term.out."
# A recreated session's output starts at a multiple of this (PROTOCOL.md section 12): a jump
# of the offset there is a new shell, not a gap.
NEW_SHELL_OFFSET = 1 << 40
# What one `term.scrollback` asked by a GapFill returns at most (the op's own default).
FILL_PAGE = 1 << 20
# Frames that give no event (duplicates, welcomes, undecodable ones) a subscription's `next()`
# reads on past its timeout: as many as a topic retains, the duplicates a repaired gap can
# leave queued behind its replay.
IDLE_FRAMES_PAST_DEADLINE = 10_000


@dataclass
class _TopicState:
    epoch: str | None  # None until the first message or replay tells it
    last: int
    # Epochs a Reset moved past: their messages still queued in the socket are dropped (the
    # Reset said they may be gone), never a Reset back to them.
    superseded: set[str] = field(default_factory=set)
    # A newer epoch a replay answer revealed (the publisher restarted) while this one's
    # messages may still be queued in our socket, ahead of the newer ones: those are
    # delivered first (their gaps cannot be replayed any more: Loss), and the Reset comes
    # with the first message of the newer epoch.
    successor: str | None = None
    # The last replay page moved `last` on by nothing (the publisher had nothing new, or a
    # held message came after it): one more such page for this gap is a failed replay.
    stalled: bool = False


class StreamTracker:
    def __init__(self, from_seq: int | None = None,
                 prefixes: Sequence[str] | None = None) -> None:
        # from_seq: for a topic seen first, replay from here (1: everything retained).
        self.from_seq = from_seq
        # The subscribed prefixes: the welcome of one ends its round (None: not told, so no
        # subscription ever counts as live and unseen topics start where first seen).
        self.prefixes = frozenset(prefixes) if prefixes is not None else frozenset()
        self.live: set[str] = set()
        self.topics: dict[str, _TopicState] = {}
        self.replaying: set[str] = set()
        self.held: dict[str, list[StreamMessage]] = {}
        self.next_offset: dict[str, int] = {}  # term.out.*: the next byte not yet delivered
        self.replays_asked = 0  # gaps and welcomes past what was seen: a subscription's record
        self.duplicate_bytes = 0  # term.out.*: bytes dropped as already delivered (by offset)
        self.byte_gaps = 0  # term.out.*: ByteGaps given (bytes skipped that no seq told)

    def on_message(self, msg: StreamMessage) -> tuple[list[StreamEvent], NeedReplay | None]:
        events, need = self._on_message(msg)
        if need is not None:
            self.replays_asked += 1
        return self._dedup(events), need

    def _is_live(self, topic: str) -> bool:
        return any(topic.startswith(p) for p in self.live)

    def _on_message(self, msg: StreamMessage) -> tuple[list[StreamEvent], NeedReplay | None]:
        if msg.welcome:
            out = self._on_welcome(msg)
            if msg.topic in self.prefixes:
                self.live.add(msg.topic)
            return out
        if msg.topic in self.replaying:
            self.held.setdefault(msg.topic, []).append(msg)
            return [], None
        st = self.topics.get(msg.topic)
        out: list[StreamEvent] = []
        if st is None:
            # Appeared while the subscription was live: all of it is wanted.
            start = 1 if self._is_live(msg.topic) else self.from_seq
            if start is not None and msg.seq > start:
                self.topics[msg.topic] = _TopicState(msg.epoch, start - 1)
                return self._ask(msg)
            self.topics[msg.topic] = _TopicState(msg.epoch, msg.seq)
            return [msg], None
        if not self._adopt_epoch(st, msg, out):
            return [], None
        if msg.seq <= st.last:
            return out, None  # duplicate
        if msg.seq == st.last + 1:
            st.last = msg.seq
            out.append(msg)
            return out, None
        if st.successor is not None:  # its publisher is gone: the gap cannot be replayed
            out += [Loss(msg.topic, st.last + 1, msg.seq - 1, msg.epoch), msg]
            st.last = msg.seq
            return out, None
        events, need = self._ask(msg)
        return out + events, need

    def _on_welcome(self, msg: StreamMessage) -> tuple[list[StreamEvent], NeedReplay | None]:
        # Our subscription is live. Anything published before it is in retention: replay
        # what we have not seen (a new epoch: from its first seq).
        if msg.topic in self.replaying:
            return [], None
        st = self.topics.get(msg.topic)
        if st is None:
            if self._is_live(msg.topic):
                start = 1  # appeared while subscribed (we were away): all of it is wanted
            elif self.from_seq is not None:
                start = self.from_seq
            else:
                # A subscriber "from now": the stream starts after this welcome.
                self.topics[msg.topic] = _TopicState(msg.epoch, msg.seq)
                return [], None
            st = self.topics[msg.topic] = _TopicState(msg.epoch, max(start - 1, 0))
            if msg.seq < start:
                st.last = start - 1
                return [], None
        out: list[StreamEvent] = []
        if not self._adopt_epoch(st, msg, out):
            return [], None
        if msg.seq <= st.last:
            return out, None
        self.replaying.add(msg.topic)
        self.held.setdefault(msg.topic, [])
        return out, NeedReplay(msg.topic, st.last + 1)

    @staticmethod
    def _adopt_epoch(st: _TopicState, msg: StreamMessage, out: list[StreamEvent]) -> bool:
        """Take the message's epoch: a new one is a Reset (seqs restart). False for an epoch
        a Reset already moved past: the message is dropped."""
        if msg.epoch in st.superseded:
            return False
        if st.epoch is None:
            st.epoch = msg.epoch
        elif msg.epoch != st.epoch:
            out.append(Reset(msg.topic, st.epoch, msg.epoch))
            st.superseded.add(st.epoch)
            st.epoch, st.last, st.successor = msg.epoch, 0, None
        return True

    def _ask(self, msg: StreamMessage) -> tuple[list[StreamEvent], NeedReplay]:
        st = self.topics[msg.topic]
        self.replaying.add(msg.topic)
        self.held[msg.topic] = [msg]
        return [], NeedReplay(msg.topic, st.last + 1)

    def on_replay(
        self, topic: str, answer: dict[str, Any], attachments: list[bytes]
    ) -> tuple[list[StreamEvent], NeedReplay | None]:
        """Feed the `replay` op's answer; returns events and maybe the next page to ask for.
        An answer this tracker cannot follow (not of the op's shape, or a page that does not
        move the topic on) is a failed replay: the gap is reported lost."""
        events, need = self._on_replay(topic, answer, attachments)
        if need is not None:
            self.replays_asked += 1
        return self._dedup(events), need

    def _on_replay(
        self, topic: str, answer: dict[str, Any], attachments: list[bytes]
    ) -> tuple[list[StreamEvent], NeedReplay | None]:
        st = self.topics[topic]
        if not _well_formed(answer, len(attachments)):
            return self._on_replay_failed(topic)
        out: list[StreamEvent] = []
        epoch = answer.get("epoch", st.epoch)
        if st.epoch is None:
            st.epoch = epoch
        elif epoch != st.epoch:
            # The publisher restarted: what this epoch missed cannot be replayed any more,
            # but its messages still queued in our socket come first; the newer epoch starts
            # (with a Reset) at its first message or welcome.
            st.successor = epoch
            return self._on_replay_failed(topic)
        before = st.last
        lost = answer.get("lost")
        if lost and lost[1] > st.last:
            out.append(Loss(topic, max(lost[0], st.last + 1), lost[1], epoch))
            st.last = lost[1]
        i = 0
        for seq, body, n_att in answer.get("messages", ()):
            atts = attachments[i : i + n_att]
            i += n_att
            if seq == st.last + 1:
                st.last = seq
                out.append(StreamMessage(topic, seq, epoch, body, atts))
        more = answer.get("more")
        if st.last == before and (more or st.stalled):
            # A page cut with nothing in it, or a second answer in a row that leaves the gap
            # where it was: asking again would loop for as long as the publisher answers so.
            # (One answer with nothing new is honest when the held message that still shows
            # a gap was published after it: that one is asked again.)
            st.stalled = False
            return self._on_replay_failed(topic)
        if more:
            st.stalled = False
            return out, NeedReplay(topic, st.last + 1)
        st.stalled = st.last == before
        self.replaying.discard(topic)
        # Messages that arrived during the replay: deliver those past it, in order.
        events, need = self._deliver_held(topic)
        if need is None:
            st.stalled = False
        return out + events, need

    def replay_failed(self, topic: str) -> tuple[list[StreamEvent], NeedReplay | None]:
        """The replay itself failed (publisher gone): report the gap as lost, go on with the
        held messages; returns events and maybe the replay a later gap among them needs."""
        events, need = self._on_replay_failed(topic)
        if need is not None:
            self.replays_asked += 1
        return self._dedup(events), need

    def on_replay_failed(self, topic: str) -> list[StreamEvent]:
        """As `replay_failed`, for a caller that asks no further replay (it is giving up,
        or cannot): a later gap among the held messages is reported lost too, so the topic
        is never left waiting for a replay nobody sends."""
        events, need = self._on_replay_failed(topic)
        while need is not None:
            more, need = self._on_replay_failed(need.topic)
            events += more
        return self._dedup(events)

    def _on_replay_failed(self, topic: str) -> tuple[list[StreamEvent], NeedReplay | None]:
        st = self.topics[topic]
        st.stalled = False  # (a later gap's replay starts afresh)
        held = self.held.get(topic)
        self.replaying.discard(topic)
        out: list[StreamEvent] = []
        if held:
            first = min(held, key=lambda m: m.seq)
            if first.epoch in (st.epoch, None) and first.seq > st.last + 1:
                out.append(Loss(topic, st.last + 1, first.seq - 1, st.epoch))
                st.last = first.seq - 1
        events, need = self._deliver_held(topic)
        return out + events, need

    def _deliver_held(self, topic: str) -> tuple[list[StreamEvent], NeedReplay | None]:
        """The messages held during a replay, in seq order, as if they came now; one that
        shows a gap holds itself and the rest again, and returns the replay it needs."""
        held = sorted(self.held.pop(topic, []), key=lambda m: m.seq)
        out: list[StreamEvent] = []
        for i, m in enumerate(held):
            events, need = self._on_message(m)
            out.extend(events)
            if need is not None:
                self.held.setdefault(topic, []).extend(held[i + 1 :])
                return out, need
        return out, None

    def catch_up(self) -> list[NeedReplay]:
        """Replays that would reveal a lost tail: for every topic seen (and not being replayed
        already), from the seq after the last delivered. A message dropped at the end of a
        burst shows as a gap only when a later one comes; a subscriber that must know sooner
        (its stream went quiet) asks this way (PROTOCOL.md section 12, "Tail loss")."""
        needs = []
        for topic, st in self.topics.items():
            if topic in self.replaying or st.epoch is None or st.successor is not None:
                continue
            self.replaying.add(topic)
            self.held.setdefault(topic, [])
            needs.append(NeedReplay(topic, st.last + 1))
        self.replays_asked += len(needs)
        return needs

    def _dedup(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """Terminal output by byte offset: drop bytes already delivered, trim a message that
        straddles the next expected offset, put a `ByteGap` before one past it (PROTOCOL.md
        section 12, `term.out`). The common case (no message changed) returns `events`."""
        out: list[StreamEvent] | None = None
        for i, ev in enumerate(events):
            keep: list[StreamEvent] | None = None  # (None: `ev` as it is)
            if isinstance(ev, StreamMessage) and ev.topic.startswith(OFFSET_TOPIC_PREFIX) \
                    and isinstance(ev.body, dict) and type(ev.body.get("offset")) is int \
                    and ev.attachments:
                body = ev.body
                off, data = body["offset"], ev.attachments[0]
                end = off + len(data)
                expected = self.next_offset.get(ev.topic)
                if expected is not None and off > expected and off % NEW_SHELL_OFFSET:
                    keep = [ByteGap(ev.topic, expected, off, ev.epoch, ev.seq), ev]
                    self.byte_gaps += 1
                elif expected is not None and off < expected:
                    self.duplicate_bytes += min(end, expected) - off
                    cut = expected - off
                    keep = [] if end <= expected else [ev._replace(
                        body={**body, "offset": expected},
                        attachments=[data[cut:], *ev.attachments[1:]])]
                self.next_offset[ev.topic] = max(end, expected or 0)
            if out is None and keep is not None:
                out = list(events[:i])
            if out is not None:
                out.extend([ev] if keep is None else keep)
        return events if out is None else out


class GapFill:
    """The bytes of a `ByteGap`, asked of the terminal (`term.scrollback`, a page at a time)
    by a subscription's adapter, which does the I/O: `ask()` gives the next request's args
    (None: done), `take()` its answer, `failed()` a request that failed. `events`: the bytes
    as `term.out` messages of the gap's epoch and seq (`replay: true`, as a successor's
    republished ones), and a `BytesLost` for what the scrollback no longer held or could
    not be had, in offset order."""

    def __init__(self, gap: ByteGap) -> None:
        self.gap = gap
        self.at = gap.from_offset
        self.events: list[StreamEvent] = []

    def ask(self) -> dict[str, Any] | None:
        if self.at >= self.gap.to_offset:
            return None
        return {"session": self.gap.topic[len(OFFSET_TOPIC_PREFIX):], "from_offset": self.at,
                "max_bytes": min(FILL_PAGE, self.gap.to_offset - self.at)}

    def take(self, answer: Any, attachments: list[bytes]) -> None:
        g, at = self.gap, self.at
        frm, to = (answer.get("from"), answer.get("to")) if type(answer) is dict else (0, 0)
        if not (type(frm) is int and type(to) is int and at <= frm <= to and attachments
                and len(attachments[0]) == to - frm):
            self.failed()  # (not the op's answer: what is left is not to be had from it)
            return
        if frm > at:  # (no longer held: its `lost`)
            self._lost(min(frm, g.to_offset))
        if to > self.at < g.to_offset:  # (bytes of the gap's: not past its end)
            data = attachments[0][: g.to_offset - self.at]
            self.events.append(StreamMessage(g.topic, g.seq, g.epoch,
                                             {"offset": self.at, "replay": True}, [data]))
            self.at += len(data)
        elif frm == at:  # (nothing: the session's end is before the gap's)
            self.failed()

    def failed(self) -> None:
        self._lost(self.gap.to_offset)

    def _lost(self, upto: int) -> None:
        if upto > self.at:
            self.events.append(BytesLost(self.gap.topic, self.at, upto))
            self.at = upto


def _well_formed(answer: Any, n_attachments: int) -> bool:
    """Is `answer` of the `replay` op's shape (PROTOCOL.md section 12), with no more
    attachments claimed than came? Anything else (a publisher's bug, or a hostile one) is a
    failed replay, never an exception that leaves the topic held."""
    if type(answer) is not dict:
        return False
    epoch = answer.get("epoch")
    if epoch is not None and type(epoch) is not str:
        return False
    lost = answer.get("lost")
    if lost is not None and not (type(lost) in (list, tuple) and len(lost) == 2
                                 and type(lost[0]) is int and type(lost[1]) is int
                                 and lost[0] <= lost[1]):
        return False
    messages = answer.get("messages", ())
    if type(messages) not in (list, tuple):
        return False
    claimed = 0
    for m in messages:
        if not (type(m) in (list, tuple) and len(m) == 3 and type(m[0]) is int
                and type(m[2]) is int and m[2] >= 0):
            return False
        claimed += m[2]
    return claimed <= n_attachments
