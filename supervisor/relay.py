"""A supervisor's events, and the streams of its children it republishes as its own.

Events go out on `<id>.pub`, topic `sup.event` (the kinds are listed in supervisor.supervisor).
A supervisor follows each nested supervisor's `sup.event` and republishes it, and follows some
children's alert topics (ALERT_TOPICS) and republishes each alert as an `alert` event, so the
root's `supervisor.pub` carries the whole tree's, for an editor to show. A gap the follower
could not repair is said, as a `relay_loss` event, never dropped in silence.
"""

from __future__ import annotations

import time
from typing import Any

from loguru import logger

from moorage.actors.runtime.follow import Follow
from moorage.actors.runtime.outbound import Outbound
from moorage.actors.runtime.streams import Publisher
from moorage.protocol.client._streams import Loss, StreamEvent
from moorage.protocol.envelope import StreamMessage
from moorage.supervisor.children import Child

EVENT_TOPIC = "sup.event"
# Children whose alerts a supervisor republishes as `alert` events, for an editor to show.
ALERT_TOPICS = {"metrics": "metrics.alert", "resource": "resource.alert",
                "terminal": "term.alert"}


class EventRelay:
    """`event()` and `_follow()`; mixed into Supervisor."""

    name: str
    publisher: Publisher
    outbound: Outbound
    _follows: dict[str, Follow]

    def event(self, name: str, child: Child | None = None, **fields: Any) -> None:
        body = {"event": name, "supervisor": self.name, "time": time.time(), **fields}
        if child is not None:
            body.setdefault("child", child.id)
            body.setdefault("pid", child.pid)
        logger.info("event {}", body)
        self.publisher.publish(EVENT_TOPIC, body)

    def _follow(self, actor: str, topic: str) -> None:
        """Republish `actor`'s `topic` as our own events (nested trees' events, metrics
        alerts), in order and gap-repaired: the root's stream is the whole tree's."""
        if actor in self._follows:
            return

        def republish(ev: StreamEvent) -> None:
            if isinstance(ev, StreamMessage):
                if not isinstance(ev.body, dict):
                    return
                if ev.topic == EVENT_TOPIC:
                    self.publisher.publish(EVENT_TOPIC, ev.body)
                else:
                    self.event("alert", source=actor, alert=ev.body)
            elif isinstance(ev, Loss):
                self.event("relay_loss", source=actor, topic=ev.topic, first=ev.first,
                           last=ev.last)

        self._follows[actor] = Follow(self, self.outbound, actor, topic, republish)
