"""An actor that serves a request by calling another waits for that reply with the loop
polling every socket: the fast path's blocking recv on the request socket would hold the
reply back until the next request came, or until HOUSEKEEPING_MS passed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import zmq

from moorage.actors.runtime import Actor
from moorage.actors.runtime.outbound import Outbound
from moorage.protocol import endpoints
from moorage.protocol.envelope import decode_request, encode_reply
from moorage.protocol.errors import WireError
from moorage.protocol.wire import recv_frames, send_frames

pytestmark = pytest.mark.timeout(30)


def test_the_loop_leaves_the_fast_path_while_an_outbound_reply_is_awaited(tmp_path: Path):
    actor = Actor("caller", tmp_path)
    peer = actor.ctx.socket(zmq.ROUTER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.bind(endpoints.rpc(tmp_path, "peer"))
    outbound = Outbound(actor)
    loop = actor.loop
    try:
        loop.set_primary(actor.rpc, lambda batch: None, actor.ctx, 16)
        assert loop.fast_path_ready()  # nothing awaited: requests are waited for in recv

        got: list[Any] = []

        def done(reply: Any, err: WireError | None) -> None:
            got.append(reply.body if reply is not None else err)

        outbound.call("peer", "sys.ping", timeout=20.0, on_done=done)
        assert not loop.fast_path_ready()  # a reply is awaited on the outbound socket

        route, *frames = recv_frames(peer)  # the peer gets the call, and answers it
        req = decode_request(frames)
        send_frames(peer, [route, *encode_reply(req.id, "peer-epoch", {"ep": "peer-epoch"})])
        while not got:
            loop.run_once(1000)
        assert got == [{"ep": "peer-epoch"}]
        assert loop.fast_path_ready()  # answered: back to the fast path

        outbound.close()
        assert loop.awaited == []  # a closed Outbound is not looked at any more
    finally:
        outbound.close()
        peer.close(0)
        actor.close()
