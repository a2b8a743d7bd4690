"""Calls from inside an actor's loop to other actors, answered by callback, never blocking.

An actor that needs another (the supervisor pinging its children, the terminal asking the
parser) must keep serving while it waits, so a call here registers a callback and returns.
One attempt per call; the caller decides about retries. A deadline given by the caller's own
request is carried on, so the callee refuses work nobody waits for any more. A call that gets
no reply in time is counted in the actor's `calls_unanswered` loss counter only when its
caller says it gives data up then (`loses_data`): most callers keep what they sent and go on
another way (the terminal parses in-process, a supervisor asks again, a probe's silence is
its answer), and counting those would report losses that did not happen.

A `fresh` call goes out on a socket of its own, connected just for it: a probe of an actor
that has just restarted must not wait out the shared socket's reconnect back-off (up to
RECONNECT_IVL_MAX after its peer died), or it would measure that back-off.

A caller that knows a peer died (a supervisor, of its child) says so (`peer_gone`): the calls
still waiting on it are answered `unavailable` then, not at their timeout (a request the dead
process had taken, or that was queued toward it, gets no reply), and its socket is made anew,
so nothing queued toward the dead one reaches its successor after its caller was told it
failed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from moorage.actors.runtime.loop import Timer
from moorage.protocol import endpoints, limits
from moorage.protocol.envelope import DecodeError, Reply, decode_reply, encode_request
from moorage.protocol.errors import WireError
from moorage.protocol.wire import NOBLOCK, send_frames, try_recv

if TYPE_CHECKING:
    from moorage.actors.runtime.actor import Actor

OnDone = Callable[[Reply | None, WireError | None], None]


class Outbound:
    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.sid = f"{actor.name}-{actor.epoch}"
        self._ids = itertools.count(1)
        self._socks: dict[str, zmq.Socket] = {}
        self._waiting: dict[int, tuple[OnDone, Timer, str]] = {}  # rid -> ..., its target
        self._oneshot: dict[int, zmq.Socket] = {}  # rid -> the socket of a `fresh` call
        actor.loop.awaited.append(self._waiting)  # (the loop polls while a call is out)

    def _new_socket(self, target: str) -> zmq.Socket:
        s = self.actor.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 5)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 200)
        s.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_SIZE)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.connect(endpoints.rpc(self.actor.runtime_dir, target))
        self.actor.loop.add_reader(s, lambda: self._on_readable(s))
        return s

    def _sock(self, target: str) -> zmq.Socket:
        s = self._socks.get(target)
        if s is None:
            s = self._socks[target] = self._new_socket(target)
        return s

    def _close_oneshot(self, rid: int) -> None:
        s = self._oneshot.pop(rid, None)
        if s is not None:
            self.actor.loop.remove_reader(s)
            s.close(0)

    def call(
        self,
        target: str,
        op: str,
        args: Any = None,
        *,
        timeout: float,
        on_done: OnDone,
        deadline_ms: int | None = None,
        fresh: bool = False,
        loses_data: bool = False,
        attachments: Sequence[bytes] = (),
    ) -> int:
        """Send one request; `on_done(reply, None)` or `on_done(None, error)` runs exactly once.
        `fresh`: on a socket of its own, connected now (see the module docstring).
        `loses_data`: no reply in time means data is given up (counted as a loss).
        `attachments`: raw frames after the body, as the protocol's attachments (bytes that
        go as they are: not copied into the body by the packer, nor out of it by the
        receiver's unpacker)."""
        rid = next(self._ids)
        own = int((time.time() + timeout) * 1000)
        deadline = own if deadline_ms is None else min(own, deadline_ms)
        frames = encode_request(rid, self.sid, op, args, deadline, attachments)

        def expire() -> None:
            entry = self._waiting.pop(rid, None)
            self._close_oneshot(rid)
            if entry is not None:
                if loses_data:
                    self.actor.losses.add("calls_unanswered")
                entry[0](None, WireError.of("timeout", f"{target}:{op}: no reply in {timeout}s"))

        timer = self.actor.loop.call_later(max(0.0, deadline / 1000 - time.time()), expire)
        self._waiting[rid] = (on_done, timer, target)
        try:
            if fresh:
                sock = self._oneshot[rid] = self._new_socket(target)
            else:
                sock = self._sock(target)
            send_frames(sock, frames, NOBLOCK)
        except zmq.ZMQError as exc:
            timer.cancel()
            del self._waiting[rid]
            self._close_oneshot(rid)
            on_done(None, WireError.of("unavailable", f"{target}: {exc}"))
        return rid

    def _on_readable(self, sock: zmq.Socket) -> None:
        while (frames := try_recv(sock)) is not None:
            try:
                reply = decode_reply(frames)
            except DecodeError:
                continue
            entry = self._waiting.pop(reply.id, None)  # type: ignore[arg-type]
            if entry is None:
                continue  # late: its caller was already told "timeout"
            on_done, timer, _ = entry
            timer.cancel()
            if reply.id in self._oneshot:
                self._close_oneshot(reply.id)  # type: ignore[arg-type]
                self._deliver(reply, on_done)
                return  # that socket is closed: nothing more to read from it
            self._deliver(reply, on_done)

    def peer_gone(self, target: str, why: str) -> int:
        """`target`'s process is gone (`why`: how it ended): each call waiting on it is
        answered `unavailable` now, and its shared socket is closed, to be made anew by the
        next call (to its successor). Returns how many calls were answered."""
        # What it answered before it ended is taken first (its exit may be seen in the same
        # turn as its reply, and before it): only what it did not answer is told it ended.
        s = self._socks.pop(target, None)
        if s is not None:
            self._on_readable(s)
            self.actor.loop.remove_reader(s)
            s.close(0)
        for rid, (_, _, t) in list(self._waiting.items()):
            if t == target and rid in self._oneshot:
                self._on_readable(self._oneshot[rid])
        gone = [rid for rid, (_, _, t) in self._waiting.items() if t == target]
        for rid in gone:
            on_done, timer, _ = self._waiting.pop(rid)
            timer.cancel()
            self._close_oneshot(rid)
            on_done(None, WireError.of("unavailable", f"{target} {why} before it answered"))
        return len(gone)

    @staticmethod
    def _deliver(reply: Reply, on_done: OnDone) -> None:
        if reply.ok:
            on_done(reply, None)
        else:
            on_done(None, WireError.from_wire(reply.body))

    def close(self) -> None:
        loop = self.actor.loop
        loop.awaited = [w for w in loop.awaited if w is not self._waiting]
        for rid in list(self._oneshot):
            self._close_oneshot(rid)
        for s in self._socks.values():
            self.actor.loop.remove_reader(s)
            s.close(0)
        self._socks.clear()
