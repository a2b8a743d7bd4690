"""A drop the client learns of right after it sent a request may have taken the request along.

The blocking client looks at its connection's monitor once the request is on its way. When
the actor died with the request unread (it was killed as the client sent), the drop is
already told by then if the client's thread was held up after the send. An idempotent call
is then sent again at once, to the successor; a non-idempotent one is not sent twice and
ends by its deadline, as a call to a hung actor does. Here the interleaving is made, not
waited for: the first ROUTER takes the request and closes without answering before the send
returns, and a second one binds the same endpoint and answers whatever reaches it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client import sync as sync_client
from moorage.protocol.envelope import decode_request, encode_reply
from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ACTOR = "bare"


class Successor:
    """The second ROUTER: binds once the first has gone, answers every request it gets."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.ctx, self.endpoint = ctx, endpoint
        self.got: list[str] = []
        self.bound = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.bind(self.endpoint)
        self.bound.set()
        try:
            while not self.stop.is_set():
                if not sock.poll(50):
                    continue
                frames = sock.recv_multipart()
                req = decode_request(frames[1:])
                self.got.append(req.op)
                sock.send_multipart([frames[0], *encode_reply(req.id, "e2",
                                                              {"answered": req.op})])
        finally:
            sock.close(0)


@pytest.fixture
def lost_at_send(runtime_dir, monkeypatch) -> Iterator[tuple[Client, Successor]]:
    """A client whose first request is taken by an actor that dies with it, the drop told
    before the client looks; then the successor answers."""
    ctx = zmq.Context()
    endpoint = endpoints.rpc(runtime_dir, ACTOR)
    first = ctx.socket(zmq.ROUTER)
    first.bind(endpoint)
    successor = Successor(ctx, endpoint)
    client = Client(runtime_dir, timeout=3.0, attempt_timeout=3.0)
    real_send = sync_client._send
    sent: list[int] = []

    def send(sock: zmq.Socket, frames: list[bytes]) -> None:
        real_send(sock, frames)
        if sent:
            return
        sent.append(1)
        assert first.poll(10_000), "the request never reached the first actor"
        first.recv_multipart()
        first.close(linger=0)  # dies with the request unanswered
        monitor = client._conns[ACTOR].monitor
        wait_for(lambda: monitor.get(zmq.EVENTS) & zmq.POLLIN, "the drop told to the client")
        successor.thread.start()
        assert successor.bound.wait(10)

    monkeypatch.setattr(sync_client, "_send", send)
    try:
        yield client, successor
    finally:
        client.close()
        successor.stop.set()
        if successor.thread.is_alive():
            successor.thread.join(10)
        if not first.closed:
            first.close(0)
        ctx.term()


def test_an_idempotent_call_lost_with_the_connection_is_sent_again_at_once(lost_at_send):
    client, successor = lost_at_send
    assert client.call(ACTOR, "bare.read", idempotent=True) == {"answered": "bare.read"}
    assert successor.got == ["bare.read"]


def test_a_non_idempotent_call_lost_with_the_connection_is_not_sent_twice(lost_at_send):
    client, successor = lost_at_send
    with pytest.raises(MoorageError) as e:
        client.call(ACTOR, "bare.write", idempotent=False)
    assert e.value.name == "outcome_unknown"
    assert successor.got == []
