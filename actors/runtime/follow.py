"""Following another actor's stream from inside an actor's loop, with nothing lost unseen.

The same bookkeeping as a client subscription (moorage.protocol.client._streams.StreamTracker: seq
order, welcome, gap -> replay, loss and reset reported), but non-blocking: replays go out
through `Outbound` and their answers come back as callbacks on the loop. A supervisor uses it
to republish its nested supervisors' events and the metrics actor's alerts.

Losses it could not repair count in the actor's `stream_lost` counter (pushed to the metrics
actor), except those a replay answer reported: the publisher counted those already.
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
            events, need = self.tracker.on_message(msg)
            self._deliver(events)
            self._replay(need)

    def _deliver(self, events: list[StreamEvent], counted_by: str | None = None) -> None:
        """`counted_by`: the epoch of a publisher whose replay answer reported its losses."""
        for ev in events:
            if isinstance(ev, Loss) and ev.epoch != counted_by:
                self.actor.losses.add("stream_lost", ev.last - ev.first + 1)
            self.on_event(ev)

    def _replay(self, need: NeedReplay | None) -> None:
        if need is None:
            return

        def done(reply: Any, err: WireError | None, topic: str = need.topic) -> None:
            if err is not None:
                self._deliver(self.tracker.on_replay_failed(topic))
                return
            events, more = self.tracker.on_replay(topic, reply.body, reply.attachments)
            answer = reply.body if isinstance(reply.body, dict) else {}
            self._deliver(events, counted_by=answer.get("epoch"))
            self._replay(more)

        self.outbound.call(self.source, "replay", {"topic": need.topic, "from_seq": need.from_seq},
                           timeout=2.0, on_done=done)

    def close(self) -> None:
        self._loop.remove_reader(self.sock)
        self.sock.close(0)
