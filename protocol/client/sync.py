"""The blocking client: one DEALER per actor, one call at a time (plus `pipeline`).

Not thread-safe: give each thread its own `Client` (ZeroMQ sockets belong to one thread).

No send blocks. A DEALER at its SNDHWM (an actor that reads nothing: stopped, or far behind a
pipeline) would hold a blocking send for as long as the actor does, past any deadline: a
request the socket has no room for is kept, and sent when room comes (POLLOUT) while its
attempt waits for a reply; when that wait ends it is dropped unsent, and the call ends as an
attempt with no reply does (PROTOCOL.md section 10), as in the TypeScript and Rust clients.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import zmq

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
from moorage.protocol.errors import MoorageError
from moorage.protocol.monitor import recv_event
from moorage.protocol.recovery import BreakerState
from moorage.protocol.remote import RemoteTarget
from moorage.protocol.wire import readable, try_recv, try_send

# A waiting call blocks in recv for at most this long before it looks at the connection's
# monitor: a blocking recv is the cheapest way to wait for a reply (no poll call), and the
# slice bounds how late a disconnect (the actor died) is noticed.
WAIT_SLICE_MS = 10
_POLL_BOTH = zmq.POLLIN | zmq.POLLOUT
_monotonic = time.monotonic


def _send(sock: zmq.Socket, frames: list[bytes]) -> list[bytes] | None:
    """Queue a request without waiting: None once it is queued, else `frames`, which the
    socket has no room for now (its SNDHWM reached; or, over tcp, a peer that refused our key,
    for which libzmq keeps no queue). The caller sends them when the socket has room, until
    its attempt's wait ends (module docstring). A message goes whole or not at all: libzmq
    takes the later frames of one whose first it took, so nothing is ever sent in part."""
    return None if try_send(sock, frames) else frames


def _answer(frames: list[bytes], plan: CallPlan) -> Done | Resend | None:
    """What a message received while `plan` waits means for it: None if it is not its reply
    (a late reply to an earlier call)."""
    try:
        reply = decode_reply(frames)
    except DecodeError as exc:
        if exc.request_id == plan.id:  # ours, but unreadable: say so now
            return plan.done(time.monotonic(), error=exc.error)
        return None
    if reply.id != plan.id:
        plan.core.late_reply(plan.actor, _monotonic())
        return None
    return plan.on_reply(reply, _monotonic())


def _dropped_at_send(plan: CallPlan, verdict: Wait, unsent: bool) -> Wait | Resend | Done:
    """A drop told right after `plan` was sent: it may be older than the send, or may have
    taken it along (see Client.request). A request the socket had no room for (`unsent`) is
    not on its way yet: the drop is older than its send, whenever that is."""
    if (plan.idempotent or plan.resumable) and not unsent:
        return plan.on_disconnect(_monotonic())
    return plan.unpin(verdict, _monotonic())


class _Conn:
    def __init__(self, core: ClientCore, ctx: zmq.Context, actor: str, op: str) -> None:
        sock = ctx.socket(zmq.DEALER)
        self.sock, self.monitor = watched(sock, monitor_events(),
                                          lambda: core.configure_dealer(sock, actor),
                                          actor, "rpc", op)
        self.sock.setsockopt(zmq.RCVTIMEO, WAIT_SLICE_MS)
        self.key_refused = False  # the last handshake over tcp: the tree refused our key
        self.log = LinkLog()  # (whether anything given to the socket may have left it)
        self.endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        # The request of the attempt waiting now, while the socket has no room for it (_send)
        self.unsent: list[bytes] | None = None

    def disconnected(self) -> bool:
        """Did the actor's connection drop since we last looked? (The caller tells the core,
        ClientCore.dropped, once it has read the replies sent before the drop.)"""
        dropped = False
        while readable(self.monitor):  # (asked before every call: no Poller per look)
            ev = recv_event(self.monitor)["event"]
            dropped = dropped or ev == zmq.EVENT_DISCONNECTED
            if ev in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                self.key_refused = ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            self.log.note(ev)
        return dropped

    def never_delivered(self) -> bool:
        """Close the socket (with it, whatever it holds is dropped unsent) and read its
        monitor to the last event (MONITOR_STOPPED, once libzmq has let the socket go): True
        if no handshake ever completed on it, so nothing it was given ever left it (LinkLog).
        False if one did, or if the last event is not read within UNDELIVERED_CHECK."""
        self.sock.close(0)
        stopped = False
        end = _monotonic() + UNDELIVERED_CHECK
        while not stopped and self.monitor.poll(max(1, int((end - _monotonic()) * 1000))):
            ev = recv_event(self.monitor)["event"]
            stopped = ev == zmq.EVENT_MONITOR_STOPPED
            self.log.note(ev)
            if _monotonic() >= end:
                break
        self.monitor.close(0)
        return stopped and not self.log.succeeded

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


class Client(FromConnectionFile):
    """`Client(instance="default").call("metrics", "metrics.query", {"op": "sys.ping"})`."""

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
        self.ctx = zmq.Context()
        self._conns: dict[str, _Conn] = {}
        self._subs: set[Subscription] = set()
        self.core.start_pusher(self.ctx)

    @property
    def sid(self) -> str:
        return self.core.sid

    @property
    def runtime_dir(self) -> Path:
        return self.core.runtime_dir

    def _conn(self, actor: str, op: str) -> _Conn:
        c = self._conns.get(actor)
        if c is None:
            if self.ctx.closed:
                raise closed_client(actor, op)
            c = self._conns[actor] = _Conn(self.core, self.ctx, actor, op)
        return c

    def breaker_state(self, actor: str) -> BreakerState:
        return self.core.breaker(actor).current(time.monotonic())

    # --- calls ---------------------------------------------------------------------------

    def request(
        self,
        actor: str,
        op: str,
        args: Any = None,
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        attachments: Sequence[bytes] = (),
    ) -> Reply:
        """One call; returns the whole reply (body and attachments) or raises MoorageError."""
        if self.core.should_learn(actor, op, idempotent):
            timeout = self.core.after_learning(actor, op, timeout,
                                               lambda t: self.learn_ops(actor, t))
        plan = CallPlan(self.core, actor, op, args, timeout, idempotent, attachments)
        verdict: Done | Wait | Resend = plan.start(plan.started)
        conn = self._conns.get(actor) or self._conn(actor, op)
        if isinstance(verdict, Wait):
            conn.unsent = _send(conn.sock, plan.frames)
            # Drops told before now. Looked at once the request is on its way, not before:
            # the look (a system call in libzmq) then overlaps the actor's work instead of
            # delaying the send (P1's p50: 3.5-6 µs less). A drop told here may be older than
            # the call (the request then waits for the reconnection) or may have taken it
            # with the connection (the actor died with it unread, as it often does right
            # after a restart began): an idempotent or resumable call is sent again at once,
            # which costs at worst a second copy its actor joins to the first, where taking
            # the drop for an old one cost the attempt's whole timeout. Any other call may
            # not be sent twice: it takes the drop for an old one, and a lost request ends by
            # its attempt timeout or deadline, as a call to a hung actor does; and its pin,
            # taken before the send, may name a life the drop ended: it is not pinned.
            if conn.disconnected():
                self.core.dropped(actor)
                verdict = _dropped_at_send(plan, verdict, conn.unsent is not None)
        while True:
            if isinstance(verdict, Wait):
                verdict = self._wait(conn, plan, verdict.until)
            elif isinstance(verdict, Done):
                # (what it could not send is dropped: each attempt sets its own, _wait sends)
                conn.unsent = None
                if verdict.error is not None:
                    raise self._failed(actor, conn, verdict.error)
                assert verdict.reply is not None
                return verdict.reply
            else:
                if verdict.delay > 0:
                    time.sleep(verdict.delay)
                conn.unsent = None  # (that attempt is over)
                verdict = plan.resend(_monotonic())
                if isinstance(verdict, Wait):
                    conn.unsent = _send(conn.sock, plan.frames)
                    # As at the first send: a drop told now may be older than the resend
                    # (the actor was replaced while the call waited out a `busy`), and the
                    # resend then runs on the successor.
                    if conn.disconnected():
                        self.core.dropped(actor)
                        verdict = _dropped_at_send(plan, verdict, conn.unsent is not None)

    def _wait(self, conn: _Conn, plan: CallPlan, until: float) -> Done | Wait | Resend:
        sock = conn.sock
        while True:
            if conn.unsent is None:
                frames = try_recv(sock, 0)  # (blocks for WAIT_SLICE_MS at most)
            else:
                # No room for the request yet: room or a reply (to an earlier attempt) is
                # waited for, a slice at a time, as a reply is.
                slice_ms = max(1, min(WAIT_SLICE_MS, int((until - _monotonic()) * 1000)))
                events = sock.poll(slice_ms, _POLL_BOTH)
                if events & zmq.POLLOUT:
                    conn.unsent = _send(sock, conn.unsent)
                frames = try_recv(sock) if events & zmq.POLLIN else None
            if frames is not None:
                verdict = _answer(frames, plan)
                if verdict is not None:
                    return verdict
                # (not its reply: the clock is read all the same, or replies to other ids
                # that never stop coming would hold the call past its deadline)
            now = time.monotonic()
            if now >= until:
                return plan.on_timeout(now)
            if conn.disconnected():
                # What the actor sent before the drop is read before the drop is told (its
                # I/O thread queues the message, then ends the connection): a reply that came
                # in since the last look is taken, not resent for (a resend of a command that
                # ran would reach a successor that may not know it did).
                while (frames := try_recv(sock)) is not None:
                    verdict = _answer(frames, plan)
                    if verdict is not None:
                        self.core.dropped(plan.actor)
                        return verdict
                self.core.dropped(plan.actor)
                if conn.unsent is not None:  # not on its way: the drop is older than its send
                    return plan.unpin(Wait(until), now)
                return plan.on_disconnect(now)
            if conn.key_refused:  # (the tree does not take this key: no reply can come)
                return plan.on_refused(now)

    def _failed(self, actor: str, conn: _Conn, exc: MoorageError) -> MoorageError:
        """What a call that ended with `exc` raises: `unauthorized` for a refused key
        (ClientCore.failed); for a call with no reply on a connection that never completed a
        handshake (a wrong server key, a tree down or unreachable), once the socket is closed
        and nothing it held can leave any more, the error that says nothing was delivered
        (_core.undelivered: `unavailable`, or `timeout` for an idempotent call): the next
        call connects anew. Not while a handshake is under way (LinkLog.may_get_in: a slow
        link): the socket is kept for the next call, and the call keeps its error."""
        if conn.key_refused or exc.error.name not in NO_REPLY_SENT or conn.log.succeeded \
                or conn.log.may_get_in():
            return self.core.failed(exc, conn.key_refused)
        if self._conns.get(actor) is conn:
            del self._conns[actor]
        if not conn.never_delivered():
            return exc
        return undelivered(exc, conn.endpoint, conn.log, self.core.remote is not None)

    def call(self, actor: str, op: str, args: Any = None, **kw: Any) -> Any:
        """One call; returns the reply body or raises MoorageError."""
        return self.request(actor, op, args, **kw).body

    def latency_report(self) -> list[dict[str, Any]]:
        """This client's end-to-end latency per (actor, op): see ClientCore.latency_report."""
        return self.core.latency_report()

    def push_latency(self) -> int:
        """Push the latencies recorded since the last push now (with `metrics_name` set)."""
        return self.core.push_latency()

    def learn_ops(self, actor: str, timeout: float | None = None) -> frozenset[str]:
        """Ask `actor` which of its ops are idempotent (done once, before the first call that
        needs it). An actor that cannot say now is asked again next time; meanwhile the ops
        the schema declares idempotent count as such (ClientCore.known_idempotent)."""
        t = timeout if timeout is not None else self.core.options.timeout
        try:
            return self.core.learn(actor, self.call(actor, "sys.info", timeout=t))
        except MoorageError:
            return frozenset()

    def hello(self, actor: str) -> dict[str, Any]:
        return self.call(actor, "sys.hello", {"client": f"python-sync {self.sid}"})

    def pipeline(
        self,
        actor: str,
        calls: Iterable[tuple[str, Any]],
        *,
        window: int = 256,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> list[Any]:
        """Many calls with up to `window` in flight; results (or MoorageError instances) in
        call order. No send blocks: what the socket has no room for is sent as room comes,
        in order, until its call's deadline (module docstring)."""
        if self.core.should_learn(actor, "", idempotent):
            self.learn_ops(actor, timeout)
        conn = self._conn(actor, "pipeline")
        if conn.disconnected():  # a drop before these calls is not theirs
            self.core.dropped(actor)
        it = iter(calls)
        plans: dict[int, tuple[int, CallPlan]] = {}
        # Calls refused `busy` or `stopping`: when each is sent again (its back-off, or the
        # actor's retry_after_ms, as for a single call). Not in flight meanwhile.
        due: dict[int, float] = {}
        # Requests the socket had no room for yet (its SNDHWM reached), in the order they were
        # made: not in flight, so a drop is not theirs; dropped unsent when their call ends.
        unsent: dict[int, CallPlan] = {}
        results: list[Any] = []
        index = 0
        exhausted = False

        sock = conn.sock

        def send(p: CallPlan) -> None:
            # (behind those waiting already: the calls go out in the order they were made)
            if unsent or not try_send(sock, p.frames):
                unsent[p.id] = p

        def send_unsent() -> None:
            for rid, p in list(unsent.items()):
                if not try_send(sock, p.frames):
                    return
                del unsent[rid]

        def take_replies() -> None:
            while (frames := try_recv(sock)) is not None:
                try:
                    reply = decode_reply(frames)
                except DecodeError:
                    continue
                now = time.monotonic()  # (each reply's own: a drain of 256 takes a while)
                entry = plans.get(reply.id)  # type: ignore[arg-type]
                if entry is None or (due and reply.id in due):
                    self.core.late_reply(actor, now)
                    continue
                i, p = entry
                if unsent:
                    unsent.pop(reply.id, None)  # (answered: an earlier copy of it was sent)
                v = p.on_reply(reply, now)
                if isinstance(v, Resend):
                    if p.id != reply.id:  # resent as a new request (_core.RENEWED)
                        plans[p.id] = plans.pop(reply.id)  # type: ignore[arg-type]
                    due[p.id] = now + v.delay
                    continue
                del plans[reply.id]  # type: ignore[arg-type]
                results[i] = v.error if v.error is not None else v.reply.body

        def resend_due() -> None:
            now = time.monotonic()
            for rid, at in list(due.items()):
                if at > now:
                    continue
                del due[rid]
                i, p = plans[rid]
                v = p.resend(now)
                if isinstance(v, Wait):
                    send(p)
                else:
                    results[i] = v.error
                    del plans[rid]

        core = self.core
        while True:
            while not exhausted and len(plans) < window:
                try:
                    op, args = next(it)
                except StopIteration:
                    exhausted = True
                    break
                plan = CallPlan(core, actor, op, args, timeout, idempotent)
                v = plan.start(plan.started)
                if isinstance(v, Done):
                    results.append(v.error)
                else:
                    results.append(None)
                    plans[plan.id] = (index, plan)
                    send(plan)
                index += 1
            if not plans:
                return self._pipeline_failed(actor, conn, results)
            if due:
                resend_due()  # (looked at every WAIT_SLICE_MS at most: the poll below)
            # Plans given one timeout are due in creation order; given none, each has its op's.
            deadline = next(iter(plans.values()))[1].deadline if timeout is not None \
                else min(p.deadline for _, p in plans.values())
            left = deadline - time.monotonic()
            if conn.disconnected():
                take_replies()  # (sent before the drop: read before it is told, as in _wait)
                self.core.dropped(actor)
                now = time.monotonic()
                for rid, (i, p) in list(plans.items()):
                    if rid in due or rid in unsent:  # not in flight: sent to whoever is there
                        continue
                    v = p.on_disconnect(now)
                    if isinstance(v, Resend):
                        v = p.resend(now)
                    if isinstance(v, Done):
                        results[i] = v.error
                        del plans[rid]
                    else:
                        send(p)
                continue
            events = 0 if left <= 0 else conn.sock.poll(
                max(1, min(int(left * 1000), WAIT_SLICE_MS)),
                _POLL_BOTH if unsent else zmq.POLLIN)
            if events & zmq.POLLOUT:
                send_unsent()
            if not events & zmq.POLLIN:
                now = time.monotonic()
                for rid, (i, p) in list(plans.items()):
                    if p.deadline <= now:
                        v = p.on_timeout(now)
                        if isinstance(v, Done):
                            results[i] = v.error
                            del plans[rid]
                            due.pop(rid, None)
                            unsent.pop(rid, None)
                continue
            take_replies()

    def _pipeline_failed(self, actor: str, conn: _Conn, results: list[Any]) -> list[Any]:
        """A pipeline's results, those of its calls that got no reply on a connection that
        never completed a handshake told that nothing was delivered, as a single call is
        (_failed)."""
        if conn.key_refused or conn.log.succeeded or conn.log.may_get_in() or not any(
                isinstance(r, MoorageError) and r.error.name in NO_REPLY_SENT for r in results):
            return results
        if self._conns.get(actor) is conn:
            del self._conns[actor]
        if not conn.never_delivered():
            return results
        remote = self.core.remote is not None
        return [undelivered(r, conn.endpoint, conn.log, remote)
                if isinstance(r, MoorageError) and r.error.name in NO_REPLY_SENT else r
                for r in results]

    # --- streams -------------------------------------------------------------------------

    def subscribe(
        self, actor: str, topics: Sequence[str] = ("",), *, from_seq: int | None = None,
        rcvhwm: int | None = None,
    ) -> Subscription:
        """A subscription to `topics` (prefixes) of `actor`'s stream, from `from_seq` (None:
        from now); `rcvhwm`: its queue in this process, in messages (None: the client's
        `stream_hwm`, STREAM_HWM by default; PROTOCOL.md sections 12 and 15)."""
        if self.ctx.closed:
            raise closed_client(actor, "subscribe")
        sub = Subscription(self, actor, topics, from_seq, rcvhwm)
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        """Close every socket, subscriptions included (a context with an open socket would
        never terminate)."""
        for s in list(self._subs):
            s.close()
        for c in self._conns.values():
            c.close()
        self._conns.clear()
        self.core.close()
        self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscription:
    """Ordered, gap-repaired stream events from one actor: `StreamMessage`, `Loss`, `Reset`,
    `BytesLost` (terminal output only)."""

    def __init__(
        self, client: Client, actor: str, topics: Sequence[str], from_seq: int | None,
        rcvhwm: int | None = None,
    ) -> None:
        self.client = client
        self.actor = actor
        # (over tcp with its monitor: a refused key makes next() raise `unauthorized`, and
        # the link's drops and returns are told by link_changes)
        self.sock, self.monitor, self.endpoint = stream_socket(client.core, client.ctx, actor,
                                                               topics, rcvhwm)
        self._log = LinkLog()
        self._changes: list[str] = []
        self._poller: zmq.Poller | None = None
        if self.monitor is not None:
            self._poller = zmq.Poller()
            self._poller.register(self.sock, zmq.POLLIN)
            self._poller.register(self.monitor, zmq.POLLIN)
        self.tracker = StreamTracker(from_seq, list(topics) or [""])
        self._ready: list[StreamEvent] = []

    def _replay(self, need: NeedReplay | None, end: float | None = None) -> None:
        """Replay until the gap is filled or reported lost, by `end` (ClientCore.replay_timeout).
        Whatever ends it early (an interrupt) ends it as a failed replay first: the topic is
        never left held, waiting for an answer nobody will read."""
        while need is not None:
            topic = need.topic
            try:
                reply = self.client.request(
                    self.actor, "replay", {"topic": topic, "from_seq": need.from_seq},
                    timeout=self.client.core.replay_timeout(end))
                events, need = self.tracker.on_replay(topic, reply.body, reply.attachments)
            except MoorageError:
                events, need = self.tracker.replay_failed(topic)
            except BaseException:
                self._ready.extend(self.tracker.on_replay_failed(topic))
                raise
            self._ready.extend(events)

    def next(self, timeout: float | None = None) -> StreamEvent | None:
        """The next event, or None when `timeout` seconds pass with none, or once the
        subscription (or its client) is closed."""
        if self.sock.closed:
            return None
        end = None if timeout is None else time.monotonic() + timeout
        idle = 0  # frames read past `end` that gave no event
        while not self._ready:
            frames = try_recv(self.sock)  # (a burst is read without a poll per message)
            if frames is None:
                left = None if end is None else max(0, int((end - time.monotonic()) * 1000))
                if self._poller is None:
                    if not self.sock.poll(left):
                        return None
                    continue
                self._look()
                if not self._poller.poll(left):
                    return None
                continue
            try:
                msg = decode_stream(frames)
            except DecodeError:
                msg = None
            if msg is not None:
                events, need = self.tracker.on_message(msg)
                self._ready.extend(events)
                if need is not None:
                    self._replay(need, end)
            # Duplicates, welcomes, undecodable frames: what is queued is read on past `end`
            # (a round of welcomes is no reason to return None), but not without bound, or a
            # stream of them would hold the call for ever.
            if not self._ready and end is not None and time.monotonic() >= end:
                idle += 1
                if idle > IDLE_FRAMES_PAST_DEADLINE:
                    return None
        ev = self._ready.pop(0)
        while isinstance(ev, ByteGap):
            self._ready[:0] = self._fill(ev, end)
            ev = self._ready.pop(0)
        return ev

    def _fill(self, gap: ByteGap, end: float | None) -> list[StreamEvent]:
        """Terminal output skipped with no seq missing (PROTOCOL.md section 12, "Byte
        streams"): asked of the terminal's scrollback, by `end` as a replay is; what it no
        longer holds, or could not give, is a `BytesLost`. Whatever ends it early reports
        the rest lost first: the gap is never left undelivered."""
        fill = GapFill(gap)
        try:
            while (args := fill.ask()) is not None:
                try:
                    reply = self.client.request(self.actor, "term.scrollback", args,
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

    def _look(self) -> None:
        """Read the stream socket's monitor (remote only); raise `unauthorized` once the
        tree has refused this client's key there: no message can come any more."""
        assert self.monitor is not None
        while readable(self.monitor):
            change = self._log.note(recv_event(self.monitor)["event"])
            if change in ("dropped", "back"):
                self._changes.append(change)
        if self._log.refused:
            remote = self.client.core.remote
            assert remote is not None
            raise stream_refused(self.actor, self.endpoint, remote.client.public)

    def link_changes(self) -> list[str]:
        """What became of the link to a tree elsewhere since the last ask, as `next` saw it:
        "dropped" (it went down; the socket reconnects by itself, and what was published
        meanwhile is replayed or reported lost once it is back), "back". Always empty on
        ipc."""
        changes, self._changes = self._changes, []
        return changes

    def catch_up(self) -> None:
        """Ask for what may have been lost at the end of a burst (the stream went quiet): the
        events, if any, come from `next`."""
        needs = self.tracker.catch_up()
        for i, need in enumerate(needs):
            try:
                self._replay(need)
            except BaseException:
                for rest in needs[i + 1 :]:  # (marked as replaying, not asked yet)
                    self._ready.extend(self.tracker.on_replay_failed(rest.topic))
                raise

    def close(self) -> None:
        if self.sock.closed:
            return
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(0)
        self.sock.close(0)
        self.client._subs.discard(self)
