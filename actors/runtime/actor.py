"""The actor: one process serving ops on `<name>.rpc` and streams on `<name>.pub`.

Request path, in order (each step answers and stops when it applies):
  undecodable frame            -> bad_request / unsupported_version (id echoed when readable)
  pinned (`ep`) to another life -> outcome_unknown, not run (an earlier attempt may have
                                  run in that life: only its reply cache could tell)
  (sid, id) in the reply cache -> the cached reply, not run again
  same (sid, id) still running -> attached to the running call, answered with it
  (sid, id) hung a predecessor -> internal (not idempotent: outcome_unknown), not run (its
                                  last words, runtime/last_words.py: the request under way
                                  is kept in `current` for them)
  pinned, and its reply may    -> outcome_unknown, not run (deadline passed, or the reply
    have been let go              cache let an entry go that a resend could still need)
  deadline passed              -> deadline_expired, not run
  inbound batch over the limit -> busy (with retry_after_ms), not run
  unknown op / bad arguments   -> unknown_op / bad_args
  handler returns              -> the reply; raises MoorageError -> that error;
                                  raises anything else -> internal (logged), actor serves on
  handler returns DEFERRED     -> the call is answered later by `call.reply` / `call.fail`,
                                  or `timeout` by the runtime once its deadline passed
Every request gets exactly one reply. Service time and outcome go to the op's histogram after
the reply is sent, and to the metrics actor about once a second.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import zmq
from loguru import logger

from moorage.actors.runtime import last_words, signals, trust
from moorage.actors.runtime.heap import NOTE_MIN, HeapTrim
from moorage.actors.runtime.loop import Loop, Timer
from moorage.actors.runtime.registry import OpSpec, collect, op
from moorage.actors.runtime.remote import HANDSHAKE_FAILURES, TcpSide, open_tcp_side
from moorage.actors.runtime.reply_cache import ReplyCache
from moorage.actors.runtime.shapes import Named
from moorage.actors.runtime.stats import LossCounters, OpStats
from moorage.actors.runtime.streams import Publisher, pack_replay
from moorage.protocol import endpoints, limits
from moorage.protocol.envelope import (
    ENVELOPE_CORE,
    PROTO_VERSION,
    SCALAR_TYPES,
    SHAPE_CORE,
    TAG,
    DecodeError,
    Request,
    decode_request,
    encode_error,
    encode_reply,
    packb,
    shape_problem,
)
from moorage.protocol.errors import Category, Fault, MoorageError, WireError, fail, fault_of
from moorage.protocol.histogram import push_bodies
from moorage.protocol.limits import MAX_MESSAGE_SIZE
from moorage.protocol.monitor import recv_event
from moorage.protocol.wire import NOBLOCK, WIRE_CORE, send_frames

VERSION = "0.1.0"
_perf_counter = time.perf_counter
_time = time.time
DEFERRED = object()  # a handler's return value: "I will answer through call.reply later"
# Error replies never kept in the reply cache: nothing ran. The runtime's own `timeout` of a
# deferred call (a non-answer: a retry gets a fresh chance) is left out where it is made, not
# by its name: an op's own `timeout` (term.exec's command, still running, sent SIGINT) tells
# of an effect, and a resend of it must get that answer, not a second run.
UNCACHED = frozenset({"unknown_op", "bad_args"})
PRESSURE_LEVELS = ("normal", "moderate", "high", "critical")
# `sys.pressure` is taken only with `tok: trust.token(PRESSURE_TOKEN_NAME)`, which only a
# process of the tree can make (the resource actor tells it): a level or quality told by
# anyone else would hold an actor degraded (watching paused, sessions refused and closed)
# while the tree stands at normal.
PRESSURE_TOKEN_NAME = "resource.pressure"
PUB_LINGER_MS = 500
SUBSCRIBE_COMMAND = len(b"\x09SUBSCRIBE")  # ZMTP 3.1's form of a subscription, before it
RPC_LINGER_MS = 200
# A deadline further away than this is refused (bad_request): kept in the reply cache, it
# would make the cache answer outcome_unknown to every pinned resend until then.
MAX_DEADLINE_AHEAD_MS = 24 * 3600 * 1000
TURN_BUDGET_S = 0.02  # requests handled per loop turn, in time (see `handle_batch`)
# Frames a subscriber sent that one drain of the publisher socket reads (`_drain_subscriptions`),
# within TURN_BUDGET_S too: a whole connection's allowed subscriptions (a SUB resends them all
# when it reconnects) in one turn. A flood waits for later turns, so the loop still beats and
# serves requests between them.
SUBSCRIPTION_FRAMES_PER_TURN = 256
MAX_ROUTES = 16  # copies of one call under way that wait for its answer (the first, resends)
CORK_S = 0.001  # the longest a batch's reply waits for the others to leave with it


class Cork:
    """Replies held while a batch of requests is served, sent together. Each send that
    finds ZeroMQ's I/O thread asleep wakes it (a syscall, and on a VM an interrupt to another
    core), and replies spaced by their requests' work find it asleep every time; sent back
    to back they cost one wake-up, and the client's side reads them in one go. None waits
    more than CORK_S for the others; a lone request is not corked (`handle_batch`)."""

    __slots__ = ("flush_at", "msgs", "send")

    def __init__(self, send: Callable[[list[bytes]], None]) -> None:
        self.msgs: list[list[bytes]] = []
        self.flush_at = 0.0
        self.send = send

    def tick(self, now: float) -> None:
        """After each request: the held replies go once the first has waited CORK_S."""
        if self.msgs:
            if not self.flush_at:
                self.flush_at = now + CORK_S
            elif now > self.flush_at:
                self.flush()

    def flush(self) -> None:
        msgs, send = self.msgs, self.send
        for msg in msgs:
            send(msg)
        msgs.clear()
        self.flush_at = 0.0


class Attached:
    """A result with raw attachment frames (file contents, terminal bytes) beside the body."""

    __slots__ = ("attachments", "body")

    def __init__(self, body: Any, attachments: list[bytes]) -> None:
        self.body = body
        self.attachments = attachments


class Call:
    """One request being served: its identity, deadline, and the way to answer it."""

    __slots__ = ("_actor", "_timer", "answered", "attachments", "deadline_ms", "id", "op",
                 "routes", "sid", "spec", "started")

    def __init__(self, actor: Actor, routes: list[list[bytes]], req: Request, started: float,
                 spec: OpSpec | None = None):
        self._actor = actor
        self.routes = routes
        self.id, self.sid, self.op, self.deadline_ms, _, self.attachments, _ = req
        self.spec = spec  # None: an op this actor does not have
        self.started = started
        self.answered = False
        self._timer: Timer | None = None

    def remaining_ms(self) -> int | None:
        """Milliseconds left before the caller's deadline (for calls this one makes)."""
        if self.deadline_ms is None:
            return None
        return self.deadline_ms - int(time.time() * 1000)

    def reply(self, result: Any = None) -> None:
        self._actor._finish(self, result, None)

    def fail(self, error: WireError | MoorageError, cache: bool = True) -> None:
        """`cache=False`: the answer says nothing ran (the op's own way of saying so, beside
        UNCACHED's names), so a resend runs the call rather than hear it again."""
        if isinstance(error, MoorageError):
            error = error.error
        self._actor._finish(self, None, error, cache)


def now_ms() -> int:
    return int(time.time() * 1000)


def _new_request(rid: int, sid: str, op: str, deadline_ms: int | None, args: Any) -> Request:
    return Request(rid, sid, op, deadline_ms, args, [])


# sys.info's answer: an op's entry (OpSpec.describe), and the fields every actor gives; each
# actor adds its own (`info()`), which are not declared here.
_ARG_ENTRY = {"type": str, "required": bool}  # "int|float": the names of section 4
OP_ENTRY = Named("op_entry", {
    "args": dict[str, _ARG_ENTRY], "idempotent": bool, "resumable": bool,
    "timeout_ms": int, "essential": bool, "doc": str,
    "result?": Any, "errors?": list[str],
    "attachments?": {"request": {"min": int, "max": int | None},
                     "reply": {"min": int, "max": int | None}}})
# A root supervisor's life-cycle (supervisor/lifecycle.py), in sys.hello {adopt} and sup.status.
LIFECYCLE = Named("lifecycle", {
    "state": Literal["standalone", "attached", "orphaned"], "parent": int | None,
    "grace_s": float, "stops_in_s?": float,
    # every pid holding the tree, in the order each took it, when more than one does
    "holders?": list[int]})
INFO = {
    "actor": str, "pid": int, "ep": str, "uptime_s": float, "version": str,
    "ops": dict[str, OP_ENTRY], "received": int, "rejected_busy": int,
    "refused": dict[str, int], "shed": int,
    "pressure": {"level": Literal["normal", "moderate", "high", "critical"], "quality": int},
    "undecodable": int, "pending": int,
    # replies whose caller's connection was gone (it gave up, or died): not lost data (a
    # resend finds the reply cache, or runs an idempotent op again)
    "replies_to_gone": int,
    "reply_cache": {"entries": int, "bytes": int, "hits": int},
    "heap": {"trims": int, "released_bytes": int, "last_trim_ms": float, "noted_bytes": int},
    "topics": dict[str, int],
    "subscriptions": {"connections": int, "applied": int, "refused": int, "deferred": int,
                      "largest_drain": int},
    "shape_core": Literal["compiled", "python"],
    "wire_core": Literal["compiled", "python"],
    "envelope_core": Literal["compiled", "python"],
    ...: Any,
}


class Actor:
    """Base class; subclasses declare ops with `@op` and may override the hooks."""

    name = "actor"
    category = Category.NETWORK  # the category of this actor's internal errors
    nodrop = False  # streams: backpressure (True) or visible gaps (False) for slow subscribers
    # Classes of the components whose `@op` methods this actor serves too (add_ops): named on
    # the class so that its whole op table can be read without starting it (ops.json).
    op_providers: tuple[type, ...] = ()

    def __init__(self, name: str | None, runtime_dir: Path | str, config: dict | None = None):
        self.name = name or type(self).name
        self.runtime_dir = Path(runtime_dir)
        self.config = config or {}
        self.epoch = secrets.token_hex(8)
        self.started_at = time.monotonic()
        self.loop = Loop()
        self.ops: dict[str, OpSpec] = collect(self)
        # Tree config `[timeouts]` (op -> ms) overrides the @op declarations (seed 9.1).
        self.set_timeouts(self.config.get("timeouts") or {})
        self.cache = ReplyCache(
            self.config.get("reply_cache_entries", 4096),
            self.config.get("reply_cache_bytes", 32 * 1024 * 1024),
        )
        self.stats = OpStats()
        # big replies and requests leave free heap pages resident: given back once quiet
        self.heap = HeapTrim(self.loop.call_later)
        self.losses = LossCounters()  # data the tree saw lost (stats.LOSS_COUNTERS)
        self.queue_limit = int(self.config.get("queue_limit", 1000))
        self.busy_retry_ms = int(self.config.get("busy_retry_ms", 50))
        self.pending: dict[tuple[str, int], Call] = {}
        # The request whose handler runs on the loop now (None between handlers): what a
        # hung actor names in its last words (runtime/last_words.py).
        self.current: Call | None = None
        # Requests a predecessor was killed as hung running: a resend of one is refused, not
        # run again (read before the socket is bound: no request comes before it).
        self.poisoned = last_words.take(self.runtime_dir, self.name, self.loop)
        self._held: dict[bytes, deque[list[bytes]]] = {}  # requests past a turn's budget
        self._held_count = 0
        self._serving_held = False
        # While a batch is served, its replies wait in `_cork` to leave together (`Cork`).
        self._cork = Cork(self._send)
        self._corking = False
        self.received = 0
        self.rejected_busy = 0
        self.refused: Counter[str] = Counter()  # requests answered without running, by error
        self.undecodable = 0
        self.replies_to_gone = 0
        self._stopping = False
        self.stop_cause = ""  # what asked it to stop first: a signal's name, or sys.stop
        self.ready_hook: Callable[[], None] | None = None  # set by the launcher
        self.pressure_level = "normal"  # as last told by the resource actor (sys.pressure)
        self.quality = 3
        # Below this quality, non-essential ops are answered busy (seed 9.2, Resource
        # Recoverable: throttle) with a retry in about one sampling interval.
        self.shed_below_quality = int(self.config.get("shed_below_quality", 2))
        self.shed_retry_ms = int(self.config.get("shed_retry_ms", 1000))
        self.shed = 0
        self.ctx = zmq.Context()
        if self.config.get("io_threads_sched", "normal") == "batch":
            # ZeroMQ's I/O threads as SCHED_BATCH: woken by our send, one does not preempt
            # the loop that woke it (CFS's wake-up preemption) but runs when the loop next
            # waits or on the other core. A reply's send then takes 3.5-6 µs at p50 instead
            # of 16-19 (perf/request_path.py), but the reply leaves only after the rest of
            # the loop's turn: the round trip was the same on a quiet machine and 5-15%
            # slower on a loaded one (perf/p1_p2_ipc.py measures both in the same blocks:
            # P1 p50 1.29-1.33x its limit by default, 1.43-1.56x with this), while pipelined
            # calls ran 10-20% faster with it (P2 0.77-0.96 of its limit, 0.66-0.73 without).
            # A single call's latency is what an editor waits on, so it is not the default.
            # Unprivileged, and set before the first socket starts the threads.
            self.ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_BATCH)
            self.ctx.set(zmq.THREAD_PRIORITY, 0)
        self.rpc = self._bind_rpc()
        self.pub_socket = self.ctx.socket(zmq.XPUB)
        self.pub_socket.setsockopt(zmq.LINGER, 0)
        self.pub_socket.setsockopt(zmq.SNDHWM, int(self.config.get("pub_hwm", 10_000)))
        # Subscriptions are applied here, one by one (XPUB_MANUAL): each gets a welcome, and
        # a connection gets at most `max_subscriptions`. A subscription message longer than
        # a topic may be closes its connection inside libzmq, before any of it is stored; a
        # ZMTP 3.1 peer sends it as a SUBSCRIBE command, whose name takes 10 bytes.
        self.pub_socket.setsockopt(zmq.XPUB_MANUAL, 1)
        self.pub_socket.setsockopt(zmq.MAXMSGSIZE, SUBSCRIBE_COMMAND + limits.MAX_TOPIC_LEN)
        if self.nodrop:
            self.pub_socket.setsockopt(zmq.XPUB_NODROP, 1)
        # (watched before the bind: a subscriber waiting to connect is accepted at once)
        self._pub_monitor = self.pub_socket.get_monitor_socket(
            zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | HANDSHAKE_FAILURES)
        self.bind_socket(self.pub_socket, endpoints.pub(self.runtime_dir, self.name))
        self.max_subscriptions = int(self.config.get("max_subscriptions",
                                                     limits.MAX_SUBSCRIPTIONS))
        # The topics applied, per connection (fd): libzmq holds a connection's subscriptions
        # as a set (a second subscribe of a topic adds nothing, one unsubscribe removes it),
        # and so does this, so that what is counted is what libzmq holds.
        self._subs_by_fd: dict[int, set[bytes]] = {}
        self._fds_gone: set[int] = set()  # connections the monitor told ended, by fd
        self.subscriptions_refused = 0
        self.subscriptions_deferred = 0  # drains cut short, the rest read on a later turn
        self.largest_drain = 0  # the most frames one drain read
        self._drain_queued = False  # a drain cut short has the next turn's drain queued
        self._frame_continues = False  # the last frame read had more parts after it
        # (the monitor also tells TcpSide the stream's tcp connections, and the handshakes
        # that fail there before ZAP)
        # Remote mode: the same two sockets on tcp too, CURVE only (runtime/remote.py).
        self.tcp: TcpSide | None = open_tcp_side(
            self.name, self.runtime_dir, self.ctx, self.loop,
            {"rpc": self.rpc, "pub": self.pub_socket})
        self.publisher = Publisher(
            self.pub_socket, self.epoch, nodrop=self.nodrop,
            max_messages=int(self.config.get("retention_messages", 10_000)),
            max_bytes=int(self.config.get("retention_bytes", 16 * 1024 * 1024)),
            on_writable_needed=self._want_pub_writable,
        )
        self.metrics_push: zmq.Socket | None = None
        self._push_token = trust.token(self.name)  # metrics accepts our name only with it
        if self.name != "metrics" and self.config.get("push_metrics", True):
            self.metrics_push = self.ctx.socket(zmq.PUSH)
            self.metrics_push.setsockopt(zmq.LINGER, 0)
            self.metrics_push.setsockopt(zmq.SNDHWM, 100)
            self.metrics_push.connect(endpoints.metrics_in(self.runtime_dir))

    # --- sockets ------------------------------------------------------------------------------

    def bind_socket(self, sock: zmq.Socket, endpoint: str) -> None:
        """Bind one of this actor's sockets at its fixed path, over a dead predecessor's."""
        path = endpoint.removeprefix("ipc://")
        # A predecessor killed with SIGKILL leaves its socket file; binding over it is safe
        # because the supervisor only starts us once the predecessor is dead.
        if os.path.exists(path):
            os.unlink(path)
        sock.bind(endpoint)

    def _bind_rpc(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)
        s.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_SIZE)
        s.setsockopt(zmq.RCVHWM, limits.HWM)
        s.setsockopt(zmq.SNDHWM, limits.HWM)
        s.setsockopt(zmq.SNDTIMEO, 0)
        self.bind_socket(s, endpoints.rpc(self.runtime_dir, self.name))
        return s

    def _want_pub_writable(self, on: bool) -> None:
        if on:
            self.loop.add_writer(self.pub_socket, self.publisher.flush)
        else:
            self.loop.remove_writer(self.pub_socket)
            self.on_backlog_drained()

    def _on_pub_readable(self) -> None:
        # As requests held past a turn's budget (`_hold`): while a drain is queued for the
        # next turn, what arrived waits for it, so one turn reads at most one drain's worth.
        if not self._drain_queued:
            self._drain_subscriptions()

    def _drain_queued_subscriptions(self) -> None:
        self._drain_queued = False
        self._drain_subscriptions()

    def _drain_subscriptions(self) -> None:
        """Read what subscribers sent, SUBSCRIPTION_FRAMES_PER_TURN frames and TURN_BUDGET_S at
        most; the rest is read on the next turn. With XPUB_MANUAL every frame a peer sends
        comes here (subscriptions, unsubscriptions, anything else): a peer that keeps sending
        them would otherwise hold the loop for as long as it likes."""
        # Connections come and go on the monitor, subscriptions on the socket: both are fed by
        # libzmq's I/O thread, a connection's events before its messages, so the monitor goes
        # first (a new connection may have the fd of one just gone).
        self._on_pub_monitor()
        pub = self.pub_socket
        stop = _perf_counter() + TURN_BUDGET_S
        read = 0
        while read < SUBSCRIPTION_FRAMES_PER_TURN and _perf_counter() <= stop:
            try:
                frame = pub.recv(NOBLOCK, copy=False)
            except zmq.Again:
                break
            read += 1
            self._apply_subscription_frame(frame)
        else:
            if pub.get(zmq.EVENTS) & zmq.POLLIN:
                self.subscriptions_deferred += 1
                self._drain_queued = True
                self.loop.defer(self._drain_queued_subscriptions)
        self.largest_drain = max(self.largest_drain, read)

    def _apply_subscription_frame(self, frame: zmq.Frame) -> None:
        """A subscription is applied (for its connection only) and welcomed when its topic
        is new to that connection and the connection holds fewer than `max_subscriptions`,
        or is one it holds (applied and welcomed again, counted once); an unsubscription
        when the connection holds the topic. A subscription past the bound, too long, or
        from a connection gone, and a frame that is neither, are refused (counted); an
        unsubscription of a topic never held changes nothing."""
        data = frame.bytes
        kind, topic = data[:1], data[1:]
        # Only a message's first part can be a subscription (libzmq passes later parts up
        # as they are, whatever their first byte, having recorded no subscription for them).
        continued, self._frame_continues = self._frame_continues, frame.more
        if continued:
            kind = b""
        if kind == b"\x00":
            held = self._topics_of(frame)
            if held is not None and topic in held:
                self.pub_socket.setsockopt(zmq.UNSUBSCRIBE, topic)
                held.discard(topic)
            return
        if kind != b"\x01":
            self.subscriptions_refused += 1
            return
        # A connection accepted since the drain began has its event read before its first
        # subscription is counted: so every connection is counted under its own fd.
        self._on_pub_monitor()
        held = self._topics_of(frame, new=True)
        # A topic the fd holds already is applied and welcomed again, not counted again: the
        # fd may be a new connection's, taken over from one that closed after its frame was
        # queued (libzmq applies that one's to nothing), and its own must not be dropped as
        # a repeat; on the same connection libzmq ignores the repeat.
        again = held is not None and topic in held
        # (over tcp libzmq's own limit has room for CURVE: the topic's is held here)
        if held is None or (not again and len(held) >= self.max_subscriptions) \
                or len(topic) > limits.MAX_TOPIC_LEN:
            self.subscriptions_refused += 1
            return
        self.pub_socket.setsockopt(zmq.SUBSCRIBE, topic)
        held.add(topic)
        name = topic.decode(errors="replace")
        self.publisher.welcome(name)
        self.on_subscribed(name)

    def subscribed_to(self, topic: str) -> bool:
        """Whether a subscriber connected now holds a prefix of `topic` (the topics of each
        connection end with it: section 12 of PROTOCOL.md)."""
        name = topic.encode()
        return any(name.startswith(t) for held in self._subs_by_fd.values() for t in held)

    def _topics_of(self, frame: zmq.Frame, new: bool = False) -> set[bytes] | None:
        """The topics applied for the connection that sent `frame`; None when it is gone
        (libzmq's own unsubscriptions of a closed connection carry no fd) or the monitor told
        it ended (its frames read after that). `new`: a connection the monitor never told of
        (its event lost) starts with none."""
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return None
        if new and fd not in self._fds_gone:
            return self._subs_by_fd.setdefault(fd, set())
        return self._subs_by_fd.get(fd)

    def _on_pub_monitor(self) -> None:
        # A connection's topics start and end with it (libzmq drops its subscriptions then).
        while True:
            try:
                event = recv_event(self._pub_monitor, NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self._subs_by_fd[event["value"]] = set()
                self._fds_gone.discard(event["value"])
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self._subs_by_fd.pop(event["value"], None)
                self._fds_gone.add(event["value"])
            if self.tcp is not None:  # (it counts tcp connections, and refusals)
                self.tcp.stream_event(event)

    # --- hooks for subclasses -----------------------------------------------------------------

    def on_start(self) -> None:
        """Runs once the sockets are bound, before the first request."""

    def on_stop(self) -> None:
        """Runs when the actor stops gracefully (SIGTERM or sys.stop)."""

    def info(self) -> dict[str, Any]:
        """Extra fields for sys.info."""
        return {}

    def on_subscribed(self, topic: str) -> None:
        """A subscriber arrived for `topic` (a prefix: "" is everything); it has had its
        welcome. For an actor whose streams depend on who listens (the terminal holds a
        restored session's output until its subscriber is back)."""

    def on_backlog_drained(self) -> None:
        """The publisher's backlog has gone out (nodrop streams only: a slow subscriber had
        held it). What was held back for it (the terminal's acks to its keeper) may go."""

    def add_ops(self, provider: object) -> None:
        """Serve the `@op` methods of `provider` (a component the actor owns) as this actor's
        ops, with the tree's `[timeouts]` applied; an op name may be declared only once, and
        the provider's class must be one of `op_providers`."""
        if type(provider) not in type(self).op_providers:
            raise ValueError(f"{self.name}: {type(provider).__name__} is not in "
                             f"{type(self).__name__}.op_providers")
        table = collect(provider)
        taken = sorted(set(table) & set(self.ops))
        if taken:
            raise ValueError(f"{self.name}: ops declared twice: {taken}")
        self.ops.update(table)
        self.set_timeouts({k: v for k, v in (self.config.get("timeouts") or {}).items()
                           if k in table})

    @property
    def stopping(self) -> bool:
        """True once the actor refuses new requests (`stopping`) on its way out."""
        return self._stopping

    def refuse_requests(self) -> None:
        """Answer every new request `stopping` from now on, while the loop still runs (a
        supervisor stopping its children before itself)."""
        self._stopping = True

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        """React to the tree's pressure level (normal, moderate, high, critical) and quality
        level (3 = everything on .. 0 = minimum). Returns what was done, for the record.
        The runtime's own reaction (its reply cache) happens before this is called."""
        return {}

    def set_timeouts(self, timeouts: dict[str, Any]) -> dict[str, int]:
        """Override ops' timeout_ms (the DEFERRED guard, sys.info); returns those applied here.
        Names of other actors' ops are ignored: the table is tree-wide."""
        bad = {k: v for k, v in timeouts.items()
               if not isinstance(k, str) or type(v) is not int or v <= 0}
        if bad:
            raise fail("bad_args", f"timeouts must map op names to ms > 0, got {bad!r}")
        applied = {k: v for k, v in timeouts.items() if k in self.ops}
        for k, v in applied.items():
            self.ops[k].timeout_ms = v
        return applied

    # --- built-in ops ---------------------------------------------------------------------------
    # (what they answer: the shapes below and in their declarations; PROTOCOL.md section 13)

    @op("sys.config", args={"timeouts": (dict, None)}, idempotent=True, timeout_ms=1000,
        result={"actor": str, "timeouts": dict[str, int]})
    def _op_config(self, call: Call, timeouts: dict | None) -> dict[str, Any]:
        """Run-time overrides ({timeouts: {op: ms}}), kept until this process exits."""
        applied = self.set_timeouts(timeouts or {})
        return {"actor": self.name, "timeouts": applied}

    @op("sys.ping", idempotent=True, timeout_ms=1000, checked=False, result={"ep": str})
    def _op_ping(self, call: Call) -> dict[str, Any]:
        """Liveness, answered by the actor's own loop."""
        return {"ep": self.epoch}

    @op("sys.heartbeat", idempotent=True, timeout_ms=1000, recorded=False, checked=False,
        result={"ep": str})
    def _op_heartbeat(self, call: Call) -> dict[str, Any]:
        """The supervisor's liveness probe: like sys.ping, but not counted in the metrics, so
        an idle actor has nothing to push (five probes a second would keep it busy)."""
        return {"ep": self.epoch}

    @op("sys.hello", args={"client": (str, ""), "adopt": (bool, False), "parent": (int, None)},
        idempotent=True, timeout_ms=1000, checked=False,
        result={"actor": str, "ep": str, "proto": int, "version": str, "pid": int,
                "max_msg": int, "lifecycle?": LIFECYCLE})
    def _op_hello(self, call: Call, client: str, adopt: bool,
                  parent: int | None) -> dict[str, Any]:
        """Who answers here: a new epoch means the actor restarted since the last hello. With
        adopt, the caller holds the tree beside whoever holds it already, an orphaned one's
        shutdown cancelled (said to the root supervisor)."""
        out = {
            "actor": self.name,
            "ep": self.epoch,
            "proto": PROTO_VERSION,
            "version": VERSION,
            "pid": os.getpid(),
            "max_msg": limits.MAX_MESSAGE_SIZE,
        }
        if adopt:
            out["lifecycle"] = self.on_adopt(parent)
        return out

    def on_adopt(self, parent: int | None) -> dict[str, Any]:
        """`sys.hello {adopt: true, parent}`: a new editor (pid `parent`, None: no one) takes
        the tree over. Only the root supervisor can be adopted; it answers its lifecycle."""
        raise fail("bad_args", f"{self.name} cannot be adopted; say it to the root supervisor")

    @op("sys.info", idempotent=True, timeout_ms=1000, result=INFO)
    def _op_info(self, call: Call) -> dict[str, Any]:
        """pid, epoch, uptime, version, the op table, and the runtime's own counters."""
        return {
            "actor": self.name,
            "pid": os.getpid(),
            "ep": self.epoch,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "version": VERSION,
            "ops": {name: spec.describe() for name, spec in sorted(self.ops.items())},
            "received": self.received,
            "rejected_busy": self.rejected_busy,
            "refused": dict(self.refused),
            "shed": self.shed,
            "pressure": {"level": self.pressure_level, "quality": self.quality},
            "undecodable": self.undecodable,
            "pending": len(self.pending),
            "replies_to_gone": self.replies_to_gone,
            "reply_cache": {"entries": len(self.cache), "bytes": self.cache.nbytes,
                            "hits": self.cache.hits},
            "heap": self.heap.info(),
            "topics": {t.name: t.seq for t in self.publisher.topics.values()},
            "subscriptions": {"connections": len(self._subs_by_fd),
                              "applied": sum(map(len, self._subs_by_fd.values())),
                              "refused": self.subscriptions_refused,
                              "deferred": self.subscriptions_deferred,
                              "largest_drain": self.largest_drain},
            # the protocol-value check this process runs (envelope.SHAPE_CORE): the optional
            # extension, or the Python walk without it; both give the same answers
            "shape_core": SHAPE_CORE,
            # how its frames move (wire.WIRE_CORE): the optional extension, or pyzmq's calls
            "wire_core": WIRE_CORE,
            # how it decodes messages (envelope.ENVELOPE_CORE): the optional extension, or
            # msgpack and the Python checks
            "envelope_core": ENVELOPE_CORE,
            **({"remote": self.tcp.info()} if self.tcp is not None else {}),
            **self.info(),
        }

    @op("sys.pressure", args={"level": str, "quality": int, "tok": (str, None)},
        idempotent=True, timeout_ms=2000, errors=("forbidden",),
        result={"actor": str, "level": Literal["normal", "moderate", "high", "critical"],
                "quality": int, "done": dict[str, Any]})
    def _op_pressure(self, call: Call, level: str, quality: int,
                     tok: str | None) -> dict[str, Any]:
        """Told by the resource actor, with the tree's token (anyone else: forbidden): shed
        memory and features as the level asks."""
        if not trust.verify(PRESSURE_TOKEN_NAME, tok):
            raise fail("forbidden", "sys.pressure is told by the tree's resource actor "
                       "(resource.quality.set holds a quality)")
        if level not in PRESSURE_LEVELS or not 0 <= quality <= 3:
            raise fail("bad_args", f"level must be one of {PRESSURE_LEVELS}, quality 0..3")
        done: dict[str, Any] = {}
        if level in ("moderate", "high", "critical"):
            done["reply_cache_dropped"] = self.cache.trim(0.5 if level == "moderate" else 1.0)
        self.pressure_level, self.quality = level, quality
        done.update(self.on_pressure(level, quality))
        return {"actor": self.name, "level": level, "quality": quality, "done": done}

    @op("sys.stop", timeout_ms=1000, checked=False, result={"stopping": bool})
    def _op_stop(self, call: Call) -> dict[str, Any]:
        """Stop gracefully after answering."""
        self.stop_cause = self.stop_cause or "sys.stop"
        self.loop.call_later(0, self.stop)
        return {"stopping": True}

    @op("replay", args={"topic": str, "from_seq": int, "max": (int, 1000)}, idempotent=True,
        result={"epoch": str, "first_seq": int, "last_seq": int,
                "messages": list[tuple[int, Any, int]], "lost": tuple[int, int] | None,
                "more": bool},
        reply_attachments=(0, None), checked=False)
    def _op_replay(self, call: Call, topic: str, from_seq: int, max: int) -> Attached:
        """Messages of `topic` from `from_seq` on, from retention; `lost` is what it dropped."""
        if max < 1 or from_seq < 1:
            raise fail("bad_args", "replay: from_seq and max must be >= 1")
        r = self.publisher.replay(topic, from_seq, min(max, 10_000))
        if r["lost"] and from_seq > 1:
            # A subscriber that had seen part of the stream cannot have the rest: a gap. (From
            # seq 1 is "whatever you still have", not a claim to history that was dropped.)
            self.losses.add("replay_beyond_retention", r["lost"][1] - r["lost"][0] + 1)
        return Attached(*pack_replay(r))  # (its bodies are the bytes that went out live)

    # --- request path -------------------------------------------------------------------------

    def handle_batch(self, batch: list[list[bytes]]) -> None:
        """Requests as the loop takes them off the ROUTER in one go (route first each)."""
        # A turn of the loop handles requests for at most TURN_BUDGET_S; what is left waits
        # in `_held`, per peer, and is served round-robin on the next turns (after the loop
        # has beaten and read what arrived meanwhile), so a flood of costly requests from one
        # peer holds neither the loop nor another peer's `sys.ping`. Past `queue_limit`
        # waiting, a request is refused `busy` at once rather than left behind the others.
        if self._held:
            self._hold(batch, 0)
            return
        if len(batch) == 1:
            try:  # (_handle_isolated's guard, without its call on the hot path)
                self.handle_request(batch[0])
            except Exception:
                logger.exception("a request's handling raised")
            return
        self._serve_batch(batch)

    def _serve_batch(self, batch: list[list[bytes]]) -> None:
        handle, cork = self._handle_isolated, self._cork
        stop = _perf_counter() + TURN_BUDGET_S
        limit = self.queue_limit
        self._corking = True
        try:
            for i, frames in enumerate(batch):
                handle(frames, i >= limit)
                now = _perf_counter()
                cork.tick(now)
                if now > stop and i + 1 < len(batch):
                    self._hold(batch, i + 1)
                    return
        finally:
            self._corking = False
            cork.flush()

    def _hold(self, batch: list[list[bytes]], start: int) -> None:
        held = self._held
        for frames in batch[start:]:
            if self._held_count >= self.queue_limit:
                self.handle_request(frames, True)
                continue
            q = held.get(frames[0])
            if q is None:
                q = held[frames[0]] = deque()
            q.append(frames)
            self._held_count += 1
        if not self._serving_held:
            self._serving_held = True
            self.loop.defer(self._serve_held)

    def _serve_held(self) -> None:
        held, cork = self._held, self._cork
        stop = _perf_counter() + TURN_BUDGET_S
        self._corking = True
        try:
            while held and _perf_counter() <= stop:
                for route in list(held):  # one request of each waiting peer per round
                    q = held[route]
                    frames = q.popleft()
                    self._held_count -= 1
                    if not q:
                        del held[route]
                    self._handle_isolated(frames)
                    cork.tick(_perf_counter())
        finally:
            self._corking = False
            cork.flush()
            # (in the finally: were this turn cut short, what is held would never be served)
            if held:
                self.loop.defer(self._serve_held)
            else:
                self._serving_held = False

    def _handle_isolated(self, frames: list[bytes], over_limit: bool = False) -> None:
        """handle_request for one request of many: a fault of the runtime's own on one
        (every handler's is answered `internal` already) must not cost the requests after it
        their turn, nor leave the held ones unserved."""
        try:
            self.handle_request(frames, over_limit)
        except Exception:
            logger.exception("a request's handling raised")

    def send_reply(self, route: list[bytes], frames: list[bytes]) -> None:
        """Never blocks and never raises: a reply that cannot leave is counted as lost."""
        if self._corking:
            self._cork.msgs.append(route + frames)
            return
        self._send(route + frames)

    def _send(self, msg: list[bytes]) -> None:
        try:
            send_frames(self.rpc, msg, NOBLOCK)
        except zmq.ZMQError as exc:
            # Neither may stop the actor, and neither goes unrecorded. EHOSTUNREACH: the
            # caller's connection is gone (it gave up at its deadline, or died): nothing it
            # could still take is lost, and a resend finds the reply cache (or runs an
            # idempotent op again). EAGAIN: a caller still there has a full queue; a reply
            # it waits for never left: the tree's loss.
            if exc.errno == zmq.EHOSTUNREACH:
                self.replies_to_gone += 1
            else:
                self.losses.add("replies_undelivered")
            logger.debug("reply to a gone or full peer dropped: {}", exc)

    def handle_request(self, frames: list[bytes], over_limit: bool = False) -> None:
        """One request as the ROUTER gave it (route first): the path every request takes,
        open to a benchmark that drives an actor without its loop."""
        t0 = _perf_counter()
        self.received += 1
        route = frames[:1]
        try:
            req = decode_request(frames[1:])
        except DecodeError as exc:
            self.undecodable += 1
            self.send_reply(route, encode_error(exc.request_id, self.epoch, exc.error))
            return
        if len(frames) > 4 or len(frames[3]) >= NOTE_MIN:  # attachments, or a big body
            size = sum(map(len, frames))
            if size >= NOTE_MIN:
                self.heap.note(size)
        pinned = req.epoch
        if pinned is not None and pinned != self.epoch:
            self._refuse(route, req, WireError.of(
                "outcome_unknown", f"{self.name} restarted since the first attempt of "
                f"{req.op}; it may or may not have run in its predecessor",
                detail=self._unknown_detail(req, pinned)))
            return
        key = (req.sid, req.id)
        cached = self.cache.get(req.sid, req.id)
        if cached is not None:
            self.send_reply(route, cached)
            return
        running = self.pending.get(key)
        if running is not None:
            # A resend joins the call under way, and is answered with it; past MAX_ROUTES
            # copies waiting, `busy` at once (a peer resending the same id without end would
            # otherwise grow the call's list, and its answer, without bound).
            if len(running.routes) < MAX_ROUTES:
                running.routes.append(route)
            else:
                self._refuse(route, req, WireError.of(
                    "busy", f"{req.op}: {MAX_ROUTES} copies of this call wait for it already",
                    retry_after_ms=self.busy_retry_ms))
            return
        if self.poisoned and key in self.poisoned:  # it hung a predecessor: not run again
            spec = self.ops.get(req.op)
            self._refuse(route, req, last_words.refusal(
                self.poisoned[key], self.name, self.category, spec is None or spec.idempotent))
            return
        if pinned is not None and self._reply_may_be_gone(req):
            self._refuse(route, req, WireError.of(
                "outcome_unknown", f"{req.op} may have run in this life of {self.name}, "
                "and its reply is no longer kept", detail=self._unknown_detail(req, pinned)))
            return
        if req.deadline_ms is not None:
            now_ms = int(_time() * 1000)
            if req.deadline_ms < now_ms:
                self._refuse(route, req, WireError.of("deadline_expired", f"{req.op}: not run"))
                return
            if req.deadline_ms > now_ms + MAX_DEADLINE_AHEAD_MS:
                self._refuse(route, req, WireError.of(
                    "bad_request", f"{req.op}: deadline more than 24 h away; not run"))
                return
        if over_limit or self._stopping:
            self.rejected_busy += 1
            name = "stopping" if self._stopping else "busy"
            self._refuse(route, req, WireError.of(
                name, f"{self.name}: inbound queue over {self.queue_limit}",
                retry_after_ms=self.busy_retry_ms))
            return
        spec = self.ops.get(req.op)
        if spec is not None and not spec.essential and self.quality < self.shed_below_quality:
            self.shed += 1
            self._refuse(route, req, WireError.of(
                "busy", f"{self.name}: {req.op} shed at quality {self.quality} "
                f"({self.pressure_level})", retry_after_ms=self.shed_retry_ms))
            return
        call = Call(self, [route], req, t0, spec)
        if spec is None:
            err = WireError.of("unknown_op", f"{self.name} has no op {req.op!r}")
            self._finish(call, None, err)
            return
        self.current = call
        try:
            kwargs = spec.bind(req.args)
            if req.attachments or spec.request_attachments[0]:
                spec.check_attachments(len(req.attachments))
            result = spec.handler(call, **kwargs)
        except MoorageError as exc:
            self.current = None
            self._finish(call, None, exc.error)
            return
        except Exception as exc:
            self.current = None
            logger.exception("{} raised", req.op)
            self._finish(call, None, WireError.of(
                "internal", f"{type(exc).__name__}: {exc}", category=self.category))
            return
        self.current = None
        if result is DEFERRED:
            if not call.answered:
                self.pending[key] = call
                limit_ms = call.remaining_ms()
                if limit_ms is None:
                    limit_ms = spec.timeout_ms
                # The handler owns the answer; this timer only guarantees there is one.
                call._timer = self.loop.call_later(
                    max(0, limit_ms) / 1000 + 0.05,
                    lambda: call.answered or self._finish(
                        call, None, WireError.of("timeout", f"{req.op}: no result in time"),
                        cache=False),
                )
            return
        self._finish(call, result, None)

    # --- calls that outlive a process (resumable ops) ---------------------------------------

    def resume_call(self, sid: str, rid: int, op: str, deadline_ms: int | None,
                    args: Any = None) -> Call:
        """A call of a predecessor's, from a record that outlived it: answered when its work
        completes, to whoever sent (sid, rid) to us (a resend joins it; one that came before
        this is it) and to the reply cache for any later resend."""
        key = (sid, rid)
        running = self.pending.get(key)
        if running is not None:
            return running
        spec = self.ops.get(op)
        req = _new_request(rid, sid, op, deadline_ms, args)
        call = Call(self, [], req, _perf_counter(), spec)
        self.pending[key] = call
        limit_ms = call.remaining_ms()
        if limit_ms is None:
            limit_ms = spec.timeout_ms if spec is not None else 60_000
        call._timer = self.loop.call_later(
            max(0, limit_ms) / 1000 + 0.05,
            lambda: call.answered or self._finish(
                call, None, WireError.of("timeout", f"{op}: no result in time"), cache=False))
        return call

    def _reply_may_be_gone(self, req: Request) -> bool:
        """A resend pinned to this life, neither cached nor running: did its first attempt
        perhaps run here, its reply since let go? Then running it would run it twice. Past
        its deadline a reply may have been let go unrecorded; before it, the cache says.
        An op whose replies are not kept (idempotent) may simply run again."""
        spec = self.ops.get(req.op)
        if spec is None or spec.idempotent:
            return False
        if req.deadline_ms is not None and req.deadline_ms < int(_time() * 1000):
            return True
        return self.cache.dropped_before(req.deadline_ms)

    def _unknown_detail(self, req: Request, pinned: str) -> dict[str, Any]:
        """outcome_unknown's detail (PROTOCOL.md section 10): the life the call was pinned
        to, the one answering, the id, and the session a terminal call names."""
        detail: dict[str, Any] = {"old_epoch": pinned, "new_epoch": self.epoch,
                                  "request_id": req.id}
        session = req.args.get("session") if type(req.args) is dict else None
        if type(session) is str:
            detail["session"] = session
        return detail

    def _refuse(self, route: list[bytes], req: Request, error: WireError) -> None:
        # Not run, so not cached: a retry may run it.
        self.refused[error.name] += 1
        self.send_reply(route, encode_error(req.id, self.epoch, error))
        self.stats.record(req.op if req.op in self.ops else "(unknown)", 0, False,
                          fault_of(error.name) is Fault.CALLER)

    def _finish(self, call: Call, result: Any, error: WireError | None,
                cache: bool = True) -> None:
        if call.answered:
            return
        call.answered = True
        if call._timer is not None:
            call._timer.cancel()
        if self.pending:  # only deferred calls are kept there
            self.pending.pop((call.sid, call.id), None)
        spec = call.spec
        if error is None:
            body, atts = (result.body, result.attachments) if isinstance(result, Attached) \
                else (result, ())
            # A scalar needs no check; a result the runtime built (spec.checked off) neither.
            problem = shape_problem(body) if type(body) not in SCALAR_TYPES and (
                spec is None or spec.checked) else None
            try:
                if problem:
                    raise ValueError(problem)
                frames = encode_reply(call.id, self.epoch, body, atts)
            except Exception as exc:  # (msgpack: TypeError, ValueError, OverflowError, ...)
                # The client could not decode it: answer with what went wrong instead.
                logger.error("{}: result not sendable: {}", call.op, exc)
                error = WireError.of("internal", f"result not sendable: {exc}",
                                     category=self.category)
        if error is not None:
            try:
                frames = encode_error(call.id, self.epoch, error)
            except Exception as exc:  # (a detail msgpack refuses: a path's surrogates, say)
                logger.error("{}: error {} not sendable: {}", call.op, error.name, exc)
                frames = encode_error(call.id, self.epoch, WireError.of(
                    "internal", f"{call.op} failed with {error.name}, whose detail could "
                    f"not be sent ({type(exc).__name__})", category=self.category))
        size = len(frames[0]) if len(frames) == 1 else sum(map(len, frames))
        if size > MAX_MESSAGE_SIZE and max(map(len, frames)) > MAX_MESSAGE_SIZE:
            # Every client's socket drops the connection on a frame over MAXMSGSIZE, and
            # libzmq does not connect it again: the caller would wait in vain, and so would
            # every later call of its to this actor.
            big = max(map(len, frames))
            logger.error("{}: reply not sent: a frame of {} bytes, over {}", call.op, big,
                         MAX_MESSAGE_SIZE)
            error = WireError.of("message_too_large", f"{call.op}: its reply has a frame of "
                                 f"{big} bytes, over the {MAX_MESSAGE_SIZE} a client takes",
                                 detail={"bytes": big, "limit": MAX_MESSAGE_SIZE},
                                 category=self.category)
            frames = encode_error(call.id, self.epoch, error)
            size = len(frames[0])
        # The service time ends here, with the reply made: the send hands it to ZeroMQ's I/O
        # thread, which on a busy machine often runs in this thread's stead as soon as it is
        # woken (P6's cache hit read 53-104 µs with the send in it, for a few µs of work);
        # that wait is the transport's, and the client's end-to-end time has it.
        done = _perf_counter()
        for route in call.routes:
            self.send_reply(route, frames)
        if size >= NOTE_MIN:
            self.heap.note(size)
        # Only a non-idempotent op's reply must survive for a retry; an idempotent one may
        # run again (its retry while it still runs joins it through `pending`).
        if spec is not None and not spec.idempotent and cache and (
                error is None or error.name not in UNCACHED):
            # A resend may come until the caller's deadline (without one, the op's own limit
            # from now): the cache remembers letting the entry go before then.
            keep = call.deadline_ms if call.deadline_ms is not None \
                else int(_time() * 1000) + spec.timeout_ms
            self.cache.put(call.sid, call.id, frames, keep, size)
        # Unknown op names are the caller's text: one key for all, or junk fills the metrics.
        if spec is None:
            self.stats.record("(unknown)", 0, False, True)  # unknown_op: the caller's
        elif spec.recorded:
            self.stats.record(call.op, int((done - call.started) * 1e6),
                              error is None,
                              error is not None and fault_of(error.name) is Fault.CALLER)

    # --- metrics ------------------------------------------------------------------------------

    def _push_later(self) -> None:
        if self._push_timer is None:
            self._push_timer = self.loop.call_later(self._push_interval, self._push_due)

    def _push_due(self) -> None:
        self._push_timer = None
        self._push_metrics()
        if self.stats.pending() or self.losses.pending():  # not delivered: try again later
            self._push_later()

    def _push_metrics(self) -> None:
        if self.metrics_push is None or not (self.stats.pending() or self.losses.pending()):
            return
        bodies = list(push_bodies(self.stats.drain_entries())) or [{}]
        lost = self.losses.drain()
        header: dict[str, Any] = {"actor": self.name, "pid": os.getpid(), "ep": self.epoch,
                                  "tok": self._push_token}
        for i, body in enumerate(bodies):
            if lost and i == 0:
                header["loss"] = lost
            try:
                self.metrics_push.send_multipart([TAG, packb(header), packb(body)], zmq.NOBLOCK)
            except zmq.Again:  # metrics actor away: keep counting, send later
                for rest in bodies[i:]:
                    self.stats.restore(rest)
                if i == 0:
                    self.losses.restore(lost)
                return
            header.pop("loss", None)

    # --- life ---------------------------------------------------------------------------------

    def stop(self) -> None:
        if self._stopping:
            return
        self.refuse_requests()
        self.loop.stop()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_cause = self.stop_cause or signal.Signals(signum).name
        self.loop.call_soon_from_signal(self.stop)

    def serve(self) -> None:
        """Run until stopped; then answer what is pending and close."""
        # A hang-up (the terminal `moorage up` ran in closed, or a launcher signalled its
        # group) is a stop like the others: its default action would end the process at
        # once, the root's ordered stop and the keeper's kill of its sessions' jobs undone.
        ignored = signals.ignored_at_start()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # One ignored when `moorage up` started stays so in every process of the tree
            # (`nohup moorage up &`: a hang-up of its terminal reaches the whole group): the
            # root keeps its SIG_IGN; a child, started from the defaults by the zygote's fork,
            # gets a handler that does nothing (not SIG_IGN: the shells a keeper starts must
            # not inherit it)
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue
            signal.signal(sig, signals.ignore if sig.name in ignored else self._on_signal)
        last_words.install(self)
        self.loop.set_primary(self.rpc, self.handle_batch, self.ctx, self.queue_limit * 2)
        self.loop.add_reader(self.pub_socket, self._on_pub_readable)
        self.loop.add_reader(self._pub_monitor, self._on_pub_monitor)
        # A push goes out one interval after the first thing recorded since the last one:
        # an idle actor has no timer for it.
        self._push_interval = float(self.config.get("metrics_interval_s", 1.0))
        self._push_timer: Timer | None = None
        if self.metrics_push is not None:  # (the metrics actor takes its own figures itself)
            self.stats.wake = self.losses.wake = self._push_later
            if self.stats.pending() or self.losses.pending():
                self._push_later()
        self.on_start()
        if self.ready_hook is not None:
            self.ready_hook()
        logger.info("{} serving (pid {}, epoch {})", self.name, os.getpid(), self.epoch)
        try:
            self.loop.run()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.answer_remaining()
        self.close()

    def answer_remaining(self) -> None:
        """Once the loop has ended: every request this life took in or that waits in its
        socket gets its one reply before the socket closes."""
        try:
            self.on_stop()
        except Exception:
            logger.exception("{}: on_stop raised", self.name)
        self._stopping = True
        held, self._held = self._held, {}
        for q in held.values():
            for frames in q:  # never run: answered `stopping` (safe to resend)
                self._handle_isolated(frames)
        # What reached the socket while the loop was ending was never read: `stopping` too,
        # rather than closed away with no answer for its callers to wait out their
        # deadlines on (bounded by what the inbound queue may hold).
        for _ in range(2 * self.queue_limit):
            try:
                frames = self.rpc.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            self._handle_isolated(frames)
        for call in list(self.pending.values()):
            # These had started: their effects may have happened, so not "stopping" (which
            # tells a client it is safe to resend), unless the op is idempotent: running it
            # again is safe whatever ran, and `outcome_unknown` would end a read that its
            # client may send again to the successor.
            if call.spec is not None and call.spec.idempotent:
                err = WireError.of("stopping", f"{self.name} stopped while {call.op} was "
                                   "running; an idempotent op: safe to send again")
            else:
                err = WireError.of("outcome_unknown",
                                   f"{self.name} stopped while {call.op} was running")
            self._finish(call, None, err)
        self._push_metrics()
        logger.info("{} stopped", self.name)

    def close(self) -> None:
        """The sockets and the loop closed: what `serve` does last, and what an actor built
        but never served (one embedded in another program, or a test's) is closed with."""
        # Let subscribers have the last messages (the final events of a stopping supervisor)
        # for a moment; nothing else may delay the exit.
        if self.tcp is not None:
            self.tcp.close()
        self.pub_socket.disable_monitor()
        self._pub_monitor.close(0)
        self.pub_socket.close(linger=PUB_LINGER_MS)
        # the last replies (`stopping` to held requests, `outcome_unknown` to those under
        # way, sys.stop's own) leave before the socket goes, unless their peer is stuck
        self.rpc.close(linger=RPC_LINGER_MS)
        self.ctx.destroy(linger=0)
        self.loop.close()
