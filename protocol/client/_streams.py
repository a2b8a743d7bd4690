"""Stream bookkeeping shared by both clients: order, gaps, replay, loss (no I/O here).

Each topic is tracked by (epoch, last seq delivered). The publisher answers every
subscription (a new one, or one renewed after a reconnection) with a welcome carrying the
topic's current seq, so a subscriber learns at once what it has missed. A message with the
next seq is delivered; one past a gap asks for a replay from the first missing seq (the
adapter calls the actor's `replay` op and feeds the answer back); duplicates (seq already
delivered) are dropped. What the publisher no longer retains comes back as a `Loss` event,
and a new epoch (the publisher restarted; its seqs begin again at 1) as a `Reset`. Nothing
is skipped without an event saying so.
"""

from __future__ import annotations

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
class NeedReplay:
    topic: str
    from_seq: int


StreamEvent = StreamMessage | Loss | Reset


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


class StreamTracker:
    def __init__(self, from_seq: int | None = None) -> None:
        # from_seq: for a topic seen first, replay from here (1: everything retained).
        self.from_seq = from_seq
        self.topics: dict[str, _TopicState] = {}
        self.replaying: set[str] = set()
        self.held: dict[str, list[StreamMessage]] = {}

    def on_message(self, msg: StreamMessage) -> tuple[list[StreamEvent], NeedReplay | None]:
        if msg.welcome:
            return self._on_welcome(msg)
        if msg.topic in self.replaying:
            self.held.setdefault(msg.topic, []).append(msg)
            return [], None
        st = self.topics.get(msg.topic)
        out: list[StreamEvent] = []
        if st is None:
            if self.from_seq is not None and msg.seq > self.from_seq:
                self.topics[msg.topic] = _TopicState(msg.epoch, self.from_seq - 1)
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
            if self.from_seq is None or msg.seq < self.from_seq:
                return [], None
            st = self.topics[msg.topic] = _TopicState(msg.epoch, self.from_seq - 1)
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
        """Feed the `replay` op's answer; returns events and maybe the next page to ask for."""
        st = self.topics[topic]
        out: list[StreamEvent] = []
        epoch = answer.get("epoch", st.epoch)
        if st.epoch is None:
            st.epoch = epoch
        elif epoch != st.epoch:
            # The publisher restarted: what this epoch missed cannot be replayed any more,
            # but its messages still queued in our socket come first; the newer epoch starts
            # (with a Reset) at its first message or welcome.
            st.successor = epoch
            return self.on_replay_failed(topic), None
        lost = answer.get("lost")
        if lost and lost[1] > st.last:
            out.append(Loss(topic, max(lost[0], st.last + 1), lost[1], epoch))
            st.last = lost[1]
        i = 0
        for seq, body, n_att in answer.get("messages", []):
            atts = attachments[i : i + n_att]
            i += n_att
            if seq == st.last + 1:
                st.last = seq
                out.append(StreamMessage(topic, seq, epoch, body, atts))
        if answer.get("more"):
            return out, NeedReplay(topic, st.last + 1)
        self.replaying.discard(topic)
        # Messages that arrived during the replay: deliver those past it, in order.
        held = self.held.pop(topic, [])
        for m in sorted(held, key=lambda m: m.seq):
            events, need = self.on_message(m)
            out.extend(events)
            if need is not None:
                rest = [x for x in held if x.seq > m.seq]
                self.held.setdefault(topic, []).extend(rest)
                return out, need
        return out, None

    def on_replay_failed(self, topic: str) -> list[StreamEvent]:
        """The replay itself failed (publisher gone): report the gap as lost, go on."""
        st = self.topics[topic]
        held = sorted(self.held.pop(topic, []), key=lambda m: m.seq)
        self.replaying.discard(topic)
        out: list[StreamEvent] = []
        if held and held[0].epoch in (st.epoch, None) and held[0].seq > st.last + 1:
            out.append(Loss(topic, st.last + 1, held[0].seq - 1, st.epoch))
            st.last = held[0].seq - 1
        for m in held:
            events, _ = self.on_message(m)
            out.extend(events)
        return out
