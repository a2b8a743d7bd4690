"""Published streams: a seq per topic, a bounded retention per topic, and replay from it.

A PUB socket drops at its high-water mark without a word, so every message is kept in its
topic's retention (by count and bytes) before it is sent, and `replay` serves what a
subscriber missed. What fell out of retention is reported as lost, with the range, never
skipped silently. A publisher made with `nodrop` turns a full subscriber into backpressure
instead: messages wait in `backlog` (the owner can stop producing while it is non-empty) and
go out in order once the socket is writable. A send that fails outright (the socket closed,
the context terminated) publishes nothing: `publish` takes the message back out of retention
and gives its seq to the next one, so a replay never serves what its caller was told failed.

Retention keeps a message as it went out, its body packed: the bytes it counts are the bytes
it holds (a watcher's events kept as Python objects took about four times their packed size),
and a body its publisher changes afterwards is replayed as it was sent.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from moorage.protocol import limits
from moorage.protocol.envelope import Packed, encode_stream, encode_welcome, unpackb
from moorage.protocol.wire import NOBLOCK, send_frames

# Welcomes one subscription gets at most (PROTOCOL.md section 12): a subscription to "" on a
# publisher with many topics (a terminal with many sessions) must not cost without bound.
MAX_WELCOMES = 1000
MAX_RELEASED = 4096  # ended topics whose last seq is kept (two a closed terminal session)
# A replay page holds at most this many bytes of messages (but always one message): a page
# of a whole 16 MiB retention would hold the publisher's loop for its copies, and the
# subscriber asks again for the rest (`more`).
REPLAY_PAGE_BYTES = 1 << 20


@dataclass(slots=True)
class Retained:
    seq: int
    packed: bytes  # the body as sent
    attachments: list[bytes]
    size: int

    @property
    def body(self) -> Any:
        return unpackb(self.packed, limits.MAX_MESSAGE_SIZE)


class Topic:
    def __init__(self, name: str, max_messages: int, max_bytes: int) -> None:
        self.name = name
        self.seq = 0
        self.kept: deque[Retained] = deque()
        self.bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes

    def keep(self, packed: bytes, attachments: list[bytes], size: int) -> int:
        self.seq += 1
        self.kept.append(Retained(self.seq, packed, attachments, size))
        self.bytes += size
        while self.kept and (
            len(self.kept) > self.max_messages or self.bytes > self.max_bytes
        ):
            self.bytes -= self.kept.popleft().size
        return self.seq

    def forget_oldest(self, bodies: list[bytes]) -> None:
        """Drop the oldest retained messages whose bodies are `bodies` (the very objects,
        oldest first): for a publisher that keeps what it sends elsewhere too (the watcher's
        journal), so that retention holds no more of it than that does. Those retention
        dropped already, or a message kept here alone, stop nothing: a body not at the head
        is passed over."""
        kept = self.kept
        for body in bodies:
            if kept and kept[0].packed is body:
                self.bytes -= kept.popleft().size

    def take_back(self, seq: int) -> None:
        """Undo `keep` of message `seq`, the newest, whose send failed: no subscriber got
        it, so neither retention nor the seq may say it was published (a replay would
        serve it, and the publisher's owner, told it failed, sends something else next).
        The next message is `seq` again; retention stays consecutive. What `keep` let go
        to make room for it stays gone: a replay reports it lost."""
        if self.kept and self.kept[-1].seq == seq:
            self.bytes -= self.kept.pop().size
        if self.seq == seq:
            self.seq -= 1

    @property
    def first_seq(self) -> int:
        """Oldest seq still retained (seq + 1 when nothing is)."""
        return self.kept[0].seq if self.kept else self.seq + 1


class Publisher:
    def __init__(
        self,
        socket: zmq.Socket,
        epoch: str,
        *,
        nodrop: bool = False,
        max_messages: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        on_writable_needed: Callable[[bool], None] | None = None,
    ) -> None:
        self.socket = socket
        self.epoch = epoch
        self.nodrop = nodrop
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.topics: dict[str, Topic] = {}
        # Topics whose stream has ended (release): only their last seq, the newest
        # MAX_RELEASED of them; a closed session's Topic kept whole made every welcome scan
        # and sys.info grow with every session ever closed.
        self.released: OrderedDict[str, int] = OrderedDict()
        self.backlog: deque[list[bytes]] = deque()
        self._want_writable = on_writable_needed or (lambda _on: None)
        self.sent = 0

    def topic(self, name: str) -> Topic:
        t = self.topics.get(name)
        if t is None:
            t = self.topics[name] = Topic(name, self.max_messages, self.max_bytes)
            t.seq = self.released.pop(name, 0)  # (a stream that ended goes on from there)
        return t

    def release(self, topic: str) -> None:
        """Let `topic`'s retention go (a stream that has ended: a closed session's output):
        its seq stays (the newest MAX_RELEASED), so a later replay of it is told what is
        lost, and a new message on it goes on from there."""
        t = self.topics.pop(topic, None)
        if t is not None:
            self.released[topic] = t.seq
            self.released.move_to_end(topic)
            while len(self.released) > MAX_RELEASED:
                self.released.popitem(last=False)

    def publish(self, topic: str, body: Any, attachments: list[bytes] | None = None) -> int:
        """Retain, then send (or queue behind the backlog). Returns the message's seq.
        A send that raises (the socket closed, the context terminated: not EAGAIN, which
        is PUB's drop or the backlog) published nothing: the message is taken back out of
        retention, its seq is the next one's, and the error goes to the caller."""
        atts = attachments or []
        t = self.topic(topic)
        frames = encode_stream(topic, t.seq + 1, self.epoch, body, atts)
        seq = t.keep(frames[3], atts, sum(map(len, frames)))
        if self.backlog:
            self.backlog.append(frames)
            return seq
        try:  # (free unless it raises: the common path costs what it did)
            self._send(frames)
        except Exception:
            t.take_back(seq)
            raise
        return seq

    def _send(self, frames: list[bytes]) -> bool:
        try:
            send_frames(self.socket, frames, NOBLOCK)
        except zmq.Again:
            if not self.nodrop:
                return True  # PUB semantics: dropped for the slow peer; its seq gap shows it
            self.backlog.appendleft(frames) if self.backlog else self.backlog.append(frames)
            self._want_writable(True)
            return False
        self.sent += 1
        return True

    def welcome(self, prefix: str) -> None:
        """Answer a subscription to `prefix`: one welcome per topic under it that this epoch
        published (the newest MAX_WELCOMES), each with its current seq, then one for `prefix`
        itself (its seq, 0 if it is no topic), which ends the round. A subscriber then knows
        that its subscription is live and, topic by topic, what to replay (no slow-joiner loss,
        and a prefix subscriber that reconnected learns which topics it missed). Best effort:
        a welcome that cannot be sent is only a missed hint, the next message shows the gap."""
        topics = self.topics
        # (ended topics first, as the older: a subscriber that reconnected learns what it
        # missed of a stream that ended meanwhile too)
        under = [(name, seq) for name, seq in self.released.items()
                 if name.startswith(prefix) and name != prefix]
        under += [(name, t.seq) for name, t in topics.items()
                  if name.startswith(prefix) and name != prefix]
        for name, seq in under[-MAX_WELCOMES:]:
            self._send_welcome(name, seq)
        own = topics.get(prefix)
        self._send_welcome(prefix, own.seq if own else self.released.get(prefix, 0))

    def _send_welcome(self, topic: str, seq: int) -> None:
        try:
            send_frames(self.socket, encode_welcome(topic, seq, self.epoch), NOBLOCK)
        except zmq.Again:
            pass

    def flush(self) -> None:
        """Send the backlog while the socket takes it (called when it becomes writable)."""
        while self.backlog:
            frames = self.backlog.popleft()
            if not self._send(frames):
                return
        self._want_writable(False)

    def replay(self, topic: str, from_seq: int, max_messages: int = 1000,
               max_bytes: int = REPLAY_PAGE_BYTES) -> dict[str, Any]:
        """What a subscriber missed from `from_seq` on, a page of at most `max_messages`
        and `max_bytes` (one message whatever its size); `lost` names what retention
        dropped."""
        t = self.topics.get(topic)
        if t is None:
            last = self.released.get(topic, 0)  # (0: never published in this epoch)
            lost = [max(1, from_seq), last] if from_seq <= last else None
            return {"epoch": self.epoch, "last_seq": last, "first_seq": last + 1,
                    "messages": [], "lost": lost, "more": False}
        lost = None
        if from_seq < t.first_seq:
            lost = [max(1, from_seq), t.first_seq - 1] if t.first_seq > 1 else None
        start = max(from_seq, t.first_seq)
        msgs: list[Retained] = []
        if t.kept and start <= t.seq:
            offset = start - t.kept[0].seq
            size = 0
            for i in range(offset, min(len(t.kept), offset + max_messages)):
                r = t.kept[i]
                size += r.size
                if msgs and size > max_bytes:
                    break
                msgs.append(r)
        more = bool(msgs) and msgs[-1].seq < t.seq
        return {
            "epoch": self.epoch,
            "first_seq": t.first_seq,
            "last_seq": t.seq,
            "messages": msgs,
            "lost": lost,
            "more": more,
        }


def pack_replay(page: dict[str, Any]) -> tuple[Packed, list[bytes]]:
    """`replay`'s answer for a page of Publisher.replay, with each message's body as it
    was packed when it went out (not decoded and packed again: a watcher's page of events
    cost that twice over), and the messages' attachments in order after it."""
    msgs: list[Retained] = page["messages"]
    parts = [_MAP6, _EPOCH, _pack(page["epoch"]), _FIRST, _pack(page["first_seq"]),
             _LAST, _pack(page["last_seq"]), _MESSAGES, _array_header(len(msgs))]
    atts: list[bytes] = []
    for m in msgs:
        parts += (_TRIPLE, _pack(m.seq), m.packed, _pack(len(m.attachments)))
        atts += m.attachments
    parts += (_LOST, _pack(page["lost"]), _MORE, _pack(page["more"]))
    return Packed(b"".join(parts)), atts


_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_MAP6, _TRIPLE = b"\x86", b"\x93"
_EPOCH, _FIRST, _LAST, _MESSAGES, _LOST, _MORE = map(
    _pack, ("epoch", "first_seq", "last_seq", "messages", "lost", "more"))


_array_header: Callable[[int], bytes] = msgpack.Packer(autoreset=True).pack_array_header
