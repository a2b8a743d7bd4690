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
from moorage.protocol.client._streams import Loss, StreamEvent
from moorage.protocol.envelope import StreamMessage
from moorage.supervisor.children import Child
from moorage.supervisor.host import SupervisorHost

EVENT_TOPIC = "sup.event"
# Children whose alerts a supervisor republishes as `alert` events, for an editor to show.
ALERT_TOPICS = {"metrics": "metrics.alert", "resource": "resource.alert",
                "terminal": "term.alert"}


class EventRelay:
    """`event()` and `follow()` for the supervisor (`SupervisorHost`) that owns it."""

    def __init__(self, sup: SupervisorHost) -> None:
        self.sup = sup
        self.follows: dict[str, Follow] = {}

    def event(self, name: str, child: Child | None = None, **fields: Any) -> None:
        body = {"event": name, "supervisor": self.sup.name, "time": time.time(), **fields}
        if child is not None:
            body.setdefault("child", child.id)
            body.setdefault("pid", child.pid)
        logger.info("event {}", body)
        self.sup.publisher.publish(EVENT_TOPIC, body)

    def follow(self, actor: str, topic: str) -> None:
        """Republish `actor`'s `topic` as our own events (nested trees' events, metrics
        alerts), in order and gap-repaired: the root's stream is the whole tree's."""
        if actor in self.follows:
            return

        def republish(ev: StreamEvent) -> None:
            if isinstance(ev, StreamMessage):
                if not isinstance(ev.body, dict):
                    return
                if ev.topic == EVENT_TOPIC:
                    self.sup.publisher.publish(EVENT_TOPIC, ev.body)
                else:
                    self.event("alert", source=actor, alert=ev.body)
            elif isinstance(ev, Loss):
                self.event("relay_loss", source=actor, topic=ev.topic, first=ev.first,
                           last=ev.last)

        self.follows[actor] = Follow(self.sup, self.sup.outbound, actor, topic, republish)

    def close(self) -> None:
        for f in self.follows.values():
            f.close()
