"""The asyncio client: the same plans as the blocking client, awaited instead of polled.

Any number of calls may be in flight at once from one task or many; a reader task per actor
hands each reply to the call that owns its id.

No call waits on its send: a request the socket has no room for (its SNDHWM reached, toward
an actor that reads nothing) is sent when room comes while its attempt waits for a reply,
and when that wait ends its send is cancelled, never made after (as the blocking client's,
sync.py).

Every wait a caller's task makes in here (for a reply, a back-off, learning, a stream message)
is bounded by `asyncio.timeout`, never `asyncio.wait_for`: in Python 3.11, wait_for returns
what it waited for when that came in the same turn as a cancel of the caller's, and drops
the cancel (a task looping on calls ran on past `task.cancel()` and `asyncio.timeout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from moorage.protocol.client._core import (
    NO_REPLY_SENT,
    UNDELIVERED_CHECK,
    CallPlan,
    ClientCore,
    ClientOptions,
    Done,
    LinkLog,
    Resend,
    Wait,
    closed_client,
    monitor_events,
    stream_refused,
    stream_socket,
    undelivered,
    watched,
)
from moorage.protocol.client._streams import (
    IDLE_FRAMES_PAST_DEADLINE,
    ByteGap,
    GapFill,
    NeedReplay,
    StreamEvent,
    StreamTracker,
)
from moorage.protocol.client.constructors import FromConnectionFile
from moorage.protocol.envelope import DecodeError, Reply, decode_reply, decode_stream
from moorage.protocol.errors import MoorageError, WireError
from moorage.protocol.monitor import parse
from moorage.protocol.recovery import BreakerState
from moorage.protocol.remote import RemoteTarget

_REFUSED = object()  # the tree refused our key at a handshake while the call waited
_CLOSED = object()  # the client was closed while the call waited


class _Dropped:
    """The connection dropped, starting `generation`: a call last sent in an earlier one
    acts on it; one sent since (it waited out a `busy` meanwhile) went to the new connection."""

    __slots__ = ("generation",)

    def __init__(self, generation: int) -> None:
        self.generation = generation


class _Queued:
    """A send that waited for room is over (`sending`: sent, or failed)."""

    __slots__ = ("sending",)

    def __init__(self, sending: asyncio.Future) -> None:
        self.sending = sending


def _send(sock: zmq.asyncio.Socket, frames: list[bytes], inbox: asyncio.Queue
          ) -> asyncio.Future | None:
    """Queue a request: None once it is queued, else its send, waiting for room in the
    socket (its SNDHWM reached), which tells `inbox` (_Queued) when it is over. The call does
    not wait on it, only for its reply (or room) until its attempt's wait ends, and then
    cancels it: pyzmq drops a cancelled send from the socket's queue, so it is never made
    after. A message goes whole or not at all (libzmq takes the later frames of one whose
    first it took)."""
    sending = sock.send_multipart(frames)
    if sending.done():
        _raise_failure(sending)
        return None
    sending.add_done_callback(lambda f: f.cancelled() or inbox.put_nowait(_Queued(f)))
    return sending


def _raise_failure(sending: asyncio.Future) -> None:
    """Raise what a send ended with, but Again: a remote (tcp) socket has SNDTIMEO 0 and
    fails it when the tree refused its key (libzmq then keeps no queue for it); the attempt
    then times out and ends as its plan says (sync._send)."""
    error = sending.exception()
    if error is not None and not isinstance(error, zmq.Again):
        raise error


def _cancel(sending: asyncio.Future | None) -> None:
    """The attempt's wait is over: a send still waiting for room is never made."""
    if sending is not None:
        sending.cancel()


class _AConn:
    def __init__(self, core: ClientCore, ctx: zmq.asyncio.Context, actor: str, op: str) -> None:
        sock = ctx.socket(zmq.DEALER)
        self.sock, self.monitor = watched(sock, monitor_events(),
                                          lambda: core.configure_dealer(sock, actor),
                                          actor, "rpc", op)
        self.waiters: dict[int, asyncio.Queue] = {}
        self.key_refused = False  # the last handshake over tcp: the tree refused our key
        self.log = LinkLog()  # (whether anything given to the socket may have left it)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.closing = False  # never_delivered closed the socket: only the monitor is read
        self.stopped = asyncio.Event()  # the monitor's last event (MONITOR_STOPPED) was read
        self.core, self.actor = core, actor
        self.generation = 0  # drops told so far
        self.tasks = [
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._watch()),
        ]

    async def _read(self) -> None:
        while True:
            self._deliver(await self.sock.recv_multipart())

    def _deliver(self, frames: list[bytes]) -> None:
        try:
            reply: Reply | DecodeError = decode_reply(frames)
            rid = reply.id
        except DecodeError as exc:
            reply, rid = exc, exc.request_id
        else:
            # Its epoch is known from now, not from when its call's task runs: a drop told in
            # between forgets it (ClientCore.dropped), as it forgets any it came before.
            if reply.epoch != self.core.epochs.get(self.actor):
                self.core.note_epoch(self.actor, reply.epoch)
        q = self.waiters.get(rid)  # type: ignore[arg-type]
        if q is not None:
            q.put_nowait(reply)
        elif isinstance(reply, Reply):
            self.core.late_reply(self.actor, time.monotonic())

    async def _deliver_queued(self) -> None:
        """Hand out the replies already in the socket's queue. The actor's I/O thread queues
        a reply before it ends the connection, so one sent before a drop is here when the
        drop is told; its call must take it, not act on the drop (a resumable op resent to
        a successor would run a second time)."""
        while True:
            try:
                frames = await self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._deliver(frames)

    async def _watch(self) -> None:
        while True:
            ev = parse(await self.monitor.recv_multipart())
            self.log.note(ev["event"])
            if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
                self.stopped.set()
                return
            if self.closing:
                continue
            if ev["event"] in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self.key_refused = ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                if self.key_refused:  # the calls waiting now end on it
                    for q in self.waiters.values():
                        q.put_nowait(_REFUSED)
            if ev["event"] == zmq.EVENT_DISCONNECTED:
                self.generation += 1
                await self._deliver_queued()
                self.core.dropped(self.actor)  # (after the epochs of those replies: _deliver)
                dropped = _Dropped(self.generation)
                for q in self.waiters.values():
                    q.put_nowait(dropped)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)

    async def never_delivered(self) -> bool:
        """Close the socket (whatever it holds is dropped unsent) and read its monitor to the
        last event: True if no handshake ever completed on it, so nothing it was given left
        it (sync._Conn.never_delivered)."""
        self.closing = True
        reader, watcher = self.tasks[0], self.tasks[1]
        reader.cancel()
        try:
            # (the reader's end awaited without taking a cancel of our caller's for its own)
            await asyncio.wait([reader])
            self.sock.close(0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(UNDELIVERED_CHECK):
                    await self.stopped.wait()
        finally:
            # (however this ends, a caller's cancel included: this connection is out of the
            # client's table, and a socket or monitor left open would hold ctx.term for ever)
            self.sock.close(0)
            watcher.cancel()
            self.monitor.close(0)
        await asyncio.wait([watcher])
        return self.stopped.is_set() and not self.log.succeeded


class AsyncClient(FromConnectionFile):
    """A client for one event loop: its reader tasks run there, and a reply is handed to
    its call there (not thread-safe). It is bound to the loop of its first call or
    subscription; from any other (a later `asyncio.run`, a worker thread's own loop) a call
    or subscription is refused `bad_args` before anything is sent, where it went out and
    its reply, handed to a loop that was not waiting for it, came late or never. Hand such
    a coroutine to the client's loop with `asyncio.run_coroutine_threadsafe`, or make a
    client per loop."""

    def __init__(
        self,
        runtime_dir: Path | str | None = None,
        *,
        instance: str | None = None,
        sid: str | None = None,
        options: ClientOptions | None = None,
        remote: RemoteTarget | None = None,
        **option_overrides: Any,
    ) -> None:
        # (a copy: the caller's options are not changed, and each override is checked as
        # a field: a misspelt one is a TypeError, not an attribute nobody reads)
        opts = dataclasses.replace(options or ClientOptions(), **option_overrides)
        self.core = ClientCore(runtime_dir, instance=instance, sid=sid, options=opts,
                               remote=remote)
        self.ctx = zmq.asyncio.Context()
        self._closed = asyncio.Event()  # (set by close: calls waiting out a back-off end)
        self._conns: dict[str, _AConn] = {}
        self._subs: set[AsyncSubscription] = set()
        # actor -> its sys.info in flight, asked by a first call (_learned), and by when it ends
        self._learning: dict[str, tuple[asyncio.Future, float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # (the loop of its first use)
        self.core.start_pusher(self.ctx)

    @property
    def sid(self) -> str:
        return self.core.sid

    def _conn(self, actor: str, op: str) -> _AConn:
        c = self._conns.get(actor)
        if c is None:
            if self._closed.is_set():
                raise closed_client(actor, op)
            c = self._conns[actor] = _AConn(self.core, self.ctx, actor, op)
        return c

    def _on_own_loop(self, actor: str, op: str) -> None:
        """Bind the client to the running loop on its first use; refuse any other. Made
        with no loop running (a subscription made before its loop starts) it binds nothing."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise MoorageError(WireError.of(
                "bad_args", "this AsyncClient is bound to the event loop of its first use, "
                "not the one running here: hand the coroutine to that loop with "
                "asyncio.run_coroutine_threadsafe, or make a client per loop: "
                f"{op} to {actor} not sent"), op=op, actor=actor, attempts=0)

    def breaker_state(self, actor: str) -> BreakerState:
        return self.core.breaker(actor).current(time.monotonic())

    async def request(
        self,
        actor: str,
        op: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        attachments: Sequence[bytes] = (),
    ) -> Reply:
        self._on_own_loop(actor, op)
        if self.core.should_learn(actor, op, idempotent):
            started = time.monotonic()
            share = self.core.learning_share(timeout)
            await self._learned(actor, share)
            timeout = self.core.left_after_learning(actor, op, timeout, started, share)
        plan = CallPlan(self.core, actor, op, args, timeout, idempotent, attachments)
        conn = self._conn(actor, op)
        inbox: asyncio.Queue = asyncio.Queue()
        rid = plan.id  # the id its replies come under
        conn.waiters[rid] = inbox
        sent_in = conn.generation  # the connection the last send went out on
        sending: asyncio.Future | None = None  # the attempt's send, while it waits for room
        try:
            verdict: Done | Wait | Resend = plan.start(time.monotonic())
            if isinstance(verdict, Wait):
                sending = _send(conn.sock, plan.frames, inbox)
            while True:
                if isinstance(verdict, Done):
                    if verdict.error is not None:
                        raise await self._failed(actor, conn, rid, verdict.error)
                    assert verdict.reply is not None
                    return verdict.reply
                if isinstance(verdict, Resend):
                    _cancel(sending)  # (that attempt is over)
                    sending = None
                    if verdict.delay > 0:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(verdict.delay):
                                await self._closed.wait()
                    if self._closed.is_set():
                        verdict = plan.on_closed(time.monotonic())
                        continue
                    verdict = plan.resend(time.monotonic())
                    if isinstance(verdict, Wait):
                        sent_in = conn.generation
                        if plan.id != rid:  # resent as a new request (_core.RENEWED)
                            conn.waiters.pop(rid, None)
                            rid = plan.id
                            conn.waiters[rid] = inbox
                        sending = _send(conn.sock, plan.frames, inbox)
                    continue
                if conn.key_refused:  # (the tree does not take this key: no reply can come)
                    verdict = plan.on_refused(time.monotonic())
                    continue
                if inbox.empty():
                    left = verdict.until - time.monotonic()
                    try:
                        async with asyncio.timeout(max(0.0, left)):
                            item = await inbox.get()
                    except TimeoutError:
                        if inbox.empty():
                            _cancel(sending)
                            sending = None
                            verdict = plan.on_timeout(time.monotonic())
                            continue
                        item = inbox.get_nowait()  # (it came as the wait ran out: taken)
                else:
                    item = inbox.get_nowait()
                if type(item) is _Queued:
                    if item.sending is not sending:  # an earlier attempt's: of no use now
                        item.sending.exception()  # (its failure, if any, is not raised)
                        continue
                    sending = None
                    _raise_failure(item.sending)
                    continue
                if type(item) is _Dropped:
                    if item.generation <= sent_in or sending is not None:
                        # Dropped before the last send (or before a send that waits for
                        # room yet): not under it. The epoch it was pinned to (if any) may be
                        # the life that drop ended.
                        verdict = plan.unpin(verdict, time.monotonic())
                        continue
                    verdict = plan.on_disconnect(time.monotonic())
                    continue
                if item is _REFUSED:
                    verdict = plan.on_refused(time.monotonic())
                    continue
                if item is _CLOSED:
                    verdict = plan.on_closed(time.monotonic())
                    continue
                if isinstance(item, DecodeError):  # ours, but unreadable
                    verdict = plan.done(time.monotonic(), error=item.error)
                    continue
                verdict = plan.on_reply(item, time.monotonic())
        finally:
            _cancel(sending)
            conn.waiters.pop(rid, None)

    async def _failed(self, actor: str, conn: _AConn, rid: int,
                      exc: MoorageError) -> MoorageError:
        """What a call that ended with `exc` raises: `unauthorized` for a refused key; for a
        call with no reply on a connection that never completed a handshake, once the socket
        is closed, the error that says nothing was delivered (sync.Client._failed). While
        other calls still wait on that socket, it is left open for them (closing it would
        drop their requests): the call keeps its error, and the last of them to end closes
        it. So does a call while a handshake is under way (LinkLog.may_get_in), the socket
        kept for it."""
        if conn.key_refused or exc.error.name not in NO_REPLY_SENT or conn.log.succeeded \
                or conn.log.may_get_in():
            return self.core.failed(exc, conn.key_refused)
        if self._conns.get(actor) is not conn or any(w != rid for w in conn.waiters):
            return exc
        del self._conns[actor]
        if not await conn.never_delivered():
            return exc
        return undelivered(exc, conn.endpoint, conn.log, self.core.remote is not None)

    async def call(self, actor: str, op: str, args: Any = None, **kw: Any) -> Any:
        return (await self.request(actor, op, args, **kw)).body

    def latency_report(self) -> list[dict[str, Any]]:
        """This client's end-to-end latency per (actor, op): see ClientCore.latency_report."""
        return self.core.latency_report()

    def push_latency(self) -> int:
        """Push the latencies recorded since the last push now (with `metrics_name` set);
        it does not wait on the metrics actor, so it is safe on the event loop."""
        return self.core.push_latency()

    async def _learned(self, actor: str, share: float) -> None:
        """Wait, `share` seconds at most, for `actor`'s ops to be learned. One sys.info per
        actor is in flight at a time, with the share of the call that asked first; each
        first call made meanwhile waits for its answer (a burst of first calls each asking
        for itself would double what the actor receives, and fill its queue). On its
        failure each goes on as a call to an actor whose ops are not known, and the next
        first call asks again. A call whose share ends sooner goes on then, and the learning
        goes on for the others; a caller that cancels its call does not cancel the
        learning."""
        learning = self._learning.get(actor)
        if learning is None:
            task = asyncio.ensure_future(self.learn_ops(actor, share))
            learning = self._learning[actor] = (task, time.monotonic() + share)
            task.add_done_callback(lambda t: self._learning_over(actor, t))
        task, until = learning
        if time.monotonic() + share >= until:  # (it ends within this call's share)
            await asyncio.shield(task)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(share):
                await asyncio.shield(task)

    def _learning_over(self, actor: str, task: asyncio.Future) -> None:
        if self._learning.get(actor, (None,))[0] is task:
            del self._learning[actor]
        if not task.cancelled():
            task.exception()  # (raised to the calls that waited for it, if any did)

    async def learn_ops(self, actor: str, timeout: float | None = None) -> frozenset[str]:
        """Ask `actor` which of its ops are idempotent: see Client.learn_ops."""
        t = timeout if timeout is not None else self.core.options.timeout
        try:
            return self.core.learn(actor, await self.call(actor, "sys.info", timeout=t))
        except MoorageError:
            return frozenset()

    async def hello(self, actor: str) -> dict[str, Any]:
        return await self.call(actor, "sys.hello", {"client": f"python-asyncio {self.sid}"})

    def subscribe(
        self, actor: str, topics: Sequence[str] = ("",), *, from_seq: int | None = None,
        rcvhwm: int | None = None,
    ) -> AsyncSubscription:
        """A subscription to `topics` (prefixes) of `actor`'s stream, from `from_seq` (None:
        from now); `rcvhwm`: its queue in this process, in messages (None: the client's
        `stream_hwm`, STREAM_HWM by default; PROTOCOL.md sections 12 and 15)."""
        if self._closed.is_set():
            raise closed_client(actor, "subscribe")
        self._on_own_loop(actor, "subscribe")
        sub = AsyncSubscription(self, actor, topics, from_seq, rcvhwm)
        self._subs.add(sub)
        return sub

    async def close(self) -> None:
        """Close every socket; calls still waiting end (CallPlan.on_closed), and calls and
        subscriptions from now on are refused `cancelled`."""
        self._closed.set()
        for s in list(self._subs):
            s.close()
        for c in list(self._conns.values()):  # (a call's _failed may drop one meanwhile)
            for q in c.waiters.values():
                q.put_nowait(_CLOSED)
            await c.close()
        self._conns.clear()
        self.core.close()
        self.ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSubscription:
    def __init__(
        self, client: AsyncClient, actor: str, topics: Sequence[str], from_seq: int | None,
        rcvhwm: int | None = None,
    ) -> None:
        self.client = client
        self.actor = actor
        # (over tcp with its monitor: a task reads it and wakes next() on a refused key)
        self.sock, self.monitor, self.endpoint = stream_socket(client.core, client.ctx, actor,
                                                               topics, rcvhwm)
        self._log = LinkLog()
        self._changes: list[str] = []
        self._refused = asyncio.Event()
        self._watcher: asyncio.Future | None = None
        if self.monitor is not None:
            self._watcher = asyncio.ensure_future(self._watch(self.monitor))
        self.tracker = StreamTracker(from_seq, list(topics) or [""])
        self._ready: list[StreamEvent] = []
        self._closed = False  # (close() ran: next() returns None)
        self._held: list[bytes] | None = None  # a message read as a next() was cancelled

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            change = self._log.note(parse(await monitor.recv_multipart())["event"])
            if change in ("dropped", "back"):
                self._changes.append(change)
            elif change == "refused":
                self._refused.set()

    def _check(self) -> None:
        if self._log.refused:
            remote = self.client.core.remote
            assert remote is not None
            raise stream_refused(self.actor, self.endpoint, remote.client.public)

    def link_changes(self) -> list[str]:
        """What became of the link since the last ask: see Subscription.link_changes."""
        changes, self._changes = self._changes, []
        return changes

    async def _frames(self, left: float | None) -> list[bytes] | None:
        """The next frames, or None when `left` seconds pass, the key is refused (with a
        monitor) or the subscription is closed first. A receive is waited for with
        asyncio.wait, which takes neither its end (pyzmq cancels it at close) for a cancel of
        ours nor a cancel of ours for its end; one that completed in the turn our task was
        cancelled keeps its frames for the next call (pyzmq has taken them off the socket).
        A receive not completed is cancelled: pyzmq then reads nothing for it."""
        if self._held is not None:
            frames, self._held = self._held, None
            return frames
        recv = self.sock.recv_multipart()
        waits = [recv]
        if self._watcher is not None:
            waits.append(asyncio.ensure_future(self._refused.wait()))
        try:
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if recv.done() and not recv.cancelled() and recv.exception() is None:
                self._held = recv.result()
            raise
        finally:
            for w in waits:
                if not w.done():
                    w.cancel()
        if not recv.done() or recv.cancelled():
            return None
        if self._closed:  # (what a receive on a socket closed under it ended with)
            recv.exception()
            return None
        return recv.result()

    async def _replay(self, need: NeedReplay | None, end: float | None = None) -> None:
        """See Subscription._replay; a cancellation (a caller's wait_for around next()) ends
        the replay as a failed one before it goes on."""
        while need is not None:
            topic = need.topic
            try:
                reply = await self.client.request(
                    self.actor, "replay", {"topic": topic, "from_seq": need.from_seq},
                    timeout=self.client.core.replay_timeout(end))
                events, need = self.tracker.on_replay(topic, reply.body, reply.attachments)
            except MoorageError:
                events, need = self.tracker.replay_failed(topic)
            except BaseException:
                self._ready.extend(self.tracker.on_replay_failed(topic))
                raise
            self._ready.extend(events)

    async def next(self, timeout: float | None = None) -> StreamEvent | None:
        """The next event, or None when `timeout` seconds pass with none, or once the
        subscription (or its client) is closed, a next() waiting then included. A cancel of
        the caller's task is raised, whenever it comes; a message read in that instant is
        the next call's."""
        end = None if timeout is None else time.monotonic() + timeout
        idle = 0  # frames read past `end` that gave no event (see Subscription.next)
        while not self._ready:
            if self._closed:
                return None
            left = None if end is None else max(0.0, end - time.monotonic())
            self._check()
            frames = await self._frames(left)
            if frames is None:
                if not self._closed:
                    self._check()
                return None
            try:
                msg = decode_stream(frames)
            except DecodeError:
                msg = None
            if msg is not None:
                events, need = self.tracker.on_message(msg)
                self._ready.extend(events)
                if need is not None:
                    await self._replay(need, end)
            if not self._ready and end is not None and time.monotonic() >= end:
                idle += 1
                if idle > IDLE_FRAMES_PAST_DEADLINE:
                    return None
        if self._closed:
            return None
        ev = self._ready.pop(0)
        while isinstance(ev, ByteGap):
            self._ready[:0] = await self._fill(ev, end)
            ev = self._ready.pop(0)
        return ev

    async def _fill(self, gap: ByteGap, end: float | None) -> list[StreamEvent]:
        """See Subscription._fill."""
        fill = GapFill(gap)
        try:
            while (args := fill.ask()) is not None:
                try:
                    reply = await self.client.request(
                        self.actor, "term.scrollback", args,
                        timeout=self.client.core.replay_timeout(end))
                except MoorageError:
                    fill.failed()
                    break
                fill.take(reply.body, reply.attachments)
        except BaseException:
            fill.failed()
            self._ready[:0] = fill.events
            raise
        return fill.events

    async def catch_up(self) -> None:
        """Ask for what may have been lost at the end of a burst: see Subscription.catch_up."""
        needs = self.tracker.catch_up()
        for i, need in enumerate(needs):
            try:
                await self._replay(need)
            except BaseException:
                for rest in needs[i + 1 :]:  # (marked as replaying, not asked yet)
                    self._ready.extend(self.tracker.on_replay_failed(rest.topic))
                raise

    def close(self) -> None:
        """Close the socket; a next() waiting returns None, as every later one does."""
        self._closed = True
        self._held = None
        if self.sock.closed:
            return
        if self.monitor is not None:
            assert self._watcher is not None
            self._watcher.cancel()
            self.sock.disable_monitor()
            self.monitor.close(0)
        self.sock.close(0)
        self.client._subs.discard(self)
