"""Following another actor's stream from inside an actor's loop, with nothing lost unseen.

The same bookkeeping as a client subscription (moorage.protocol.client._streams.StreamTracker: seq
order, welcome, gap -> replay, loss and reset reported), but non-blocking: replays go out
through `Outbound` and their answers come back as callbacks on the loop. A supervisor uses it
to republish its nested supervisors' events and the metrics actor's alerts.

Every loss it reports is counted once in the tree (PROTOCOL.md section 12, "What a
replay's `lost` means, and who counts it inside the tree"). The publisher counts the `lost` of
a replay asked from a seq past 1 (its `replay_beyond_retention`: the request itself shows the
subscriber's claim); a replay from seq 1 shows none, so its `lost` is ours to judge: counted
here in `stream_lost` when all of the topic was wanted (a reset, a topic this follower knew
before its first message, a new topic under a live prefix), not at all when the replay only
asked for whatever the publisher still had of a topic first seen at our own start (history
we never had a claim to). Any other loss (a failed replay, a restarted publisher's lost tail)
counts in `stream_lost` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from moorage.protocol import endpoints
from moorage.protocol.client._streams import Loss, NeedReplay, StreamEvent, StreamTracker
from moorage.protocol.envelope import DecodeError, decode_stream
from moorage.protocol.errors import WireError
from moorage.protocol.wire import try_recv

if TYPE_CHECKING:
    from moorage.actors.runtime.actor import Actor
    from moorage.actors.runtime.outbound import Outbound


class Follow:
    def __init__(
        self,
        actor: Actor,
        outbound: Outbound,
        source: str,
        topic: str,
        on_event: Callable[[StreamEvent], None],
    ) -> None:
        self.source = source
        self.actor = actor
        self.outbound = outbound
        self.on_event = on_event
        self.tracker = StreamTracker(from_seq=1)
        self.sock = actor.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 5)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.sock.connect(endpoints.pub(actor.runtime_dir, source))
        self._loop = actor.loop
        self._loop.add_reader(self.sock, self._on_readable)

    def _on_readable(self) -> None:
        while (frames := try_recv(self.sock)) is not None:
            try:
                msg = decode_stream(frames)
            except DecodeError:
                continue
            # Seen before (its epoch and seq known), or born under a live prefix: all of the
            # topic is wanted, so a replay from 1 it asks now claims the whole of the epoch.
            # A topic first seen here otherwise asks from 1 for "whatever is still retained".
            wanted_whole = msg.topic in self.tracker.topics or any(
                msg.topic.startswith(p) for p in self.tracker.live)
            events, need = self.tracker.on_message(msg)
            self._deliver(events)
            self._replay(need, wanted_whole)

    def _deliver(self, events: list[StreamEvent], not_ours: Loss | None = None) -> None:
        """`not_ours`: the loss a replay answer reported that is not to be counted here (the
        publisher counted it, or it is history this follower never had a claim to)."""
        for ev in events:
            if isinstance(ev, Loss):
                if ev is not_ours:
                    not_ours = None
                else:
                    self.actor.losses.add("stream_lost", ev.last - ev.first + 1)
            self.on_event(ev)

    def _replay(self, need: NeedReplay | None, wanted_whole: bool = True) -> None:
        """Ask `need`'s replay. `wanted_whole`: all of the topic's epoch is wanted (false only
        for a topic first seen at this follower's start, where from 1 claims no history).
        A replay a replay answer leads to is always of a topic already known."""
        if need is None:
            return
        from_seq = need.from_seq

        def done(reply: Any, err: WireError | None, topic: str = need.topic) -> None:
            if err is not None:
                self._deliver(self.tracker.on_replay_failed(topic))
                return
            events, more = self.tracker.on_replay(topic, reply.body, reply.attachments)
            reported = _reported_loss(events, reply.body)
            counted_elsewhere = from_seq > 1  # the publisher's replay_beyond_retention
            self._deliver(events, reported if counted_elsewhere or not wanted_whole else None)
            self._replay(more)

        self.outbound.call(self.source, "replay", {"topic": need.topic, "from_seq": from_seq},
                           timeout=2.0, on_done=done)

    def close(self) -> None:
        self._loop.remove_reader(self.sock)
        self.sock.close(0)


def _reported_loss(events: list[StreamEvent], answer: Any) -> Loss | None:
    """The event that reports the replay answer's own `lost` range (the tracker puts it
    first, and only for an answer of the topic's epoch), or None: a loss the tracker reports
    for any other reason (a failed or stalled replay, a restarted publisher) is no range the
    publisher was asked about, so never one it counted."""
    if not events or not isinstance(answer, dict):
        return None
    ev, lost = events[0], answer.get("lost")
    if (isinstance(ev, Loss) and isinstance(lost, list | tuple) and len(lost) == 2
            and ev.epoch == answer.get("epoch") and (ev.first, ev.last) == tuple(lost)):
        return ev
    return None
