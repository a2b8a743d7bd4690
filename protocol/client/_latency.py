"""End-to-end latency as a client sees it, kept per (actor, op), optionally pushed to metrics.

A call's client time runs from the moment its plan is made to the moment it is over: the
actor's service time plus both hops, the client's own encoding and decoding, waits in a queue
while the actor restarted, and every retry. `LatencyBook` records one value per finished call
(ok or error) on the calling thread, into a per-op `Recorder` (a counter increment: protocol/
histogram.py explains why not an HDR histogram on the hot path). Of the errors it also counts
those that were the caller's (protocol.errors.Fault: a missing file, an unknown op), as every
actor does for its own pushes, so the metrics actor's failure rate for the client's row counts
only the service's.

Pushing is opt-in (`ClientOptions.metrics_name`): a client that opts in also counts each call
into a pending table, and a `LatencyPusher` takes that table once an interval and sends it to
`metrics.in` in the same frames every actor pushes, under the actor name
`client.<metrics_name>` and with op names `<actor>/<op>`, so the metrics actor keeps the client
view of watcher's fs.read apart from its service view. The call that ends once a push is due
makes it, on its own thread (folding and encoding the histograms, tens of µs, and a send that
does not block); a thread of the pusher's covers a client that stopped calling, waking when
the push is due but never more often than IDLE_PUSH_S. A thread that woke a hundred times a second
took a fifth of a busy client's calls from it (each wake-up takes Python's lock from the
calling thread), where the same pushes made by the calls cost them nothing measurable. A push
that cannot be sent (metrics away, its queue full) goes back into the table and leaves with
the next one. Opt-in because every name becomes keys in the metrics actor's bounded table: a short-
lived client (a CLI command) would only add noise to it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from moorage.protocol import limits
from moorage.protocol.envelope import TAG, packb
from moorage.protocol.histogram import Recorder, decode, push_bodies, summary

MAX_NAME = 100  # `client.<name>` must fit the push header's 128 characters
SNDHWM = 100  # as actors' PUSH sockets: past this a push is kept and merged into the next
CLOSE_LINGER_MS = 250  # how long closing may wait for the last push when metrics is away
# The pusher's thread wakes at most this often: with calls going on, the calls push (module
# docstring); the thread only sends what a client that stopped calling left, this late at most.
IDLE_PUSH_S = 0.25
_monotonic = time.monotonic


def pushed_op(actor: str, op: str) -> str:
    """The op name a client's row carries in the metrics actor: `<actor>/<op>`, cut to the
    wire's op-name limit (a longer one would get the whole push refused)."""
    return f"{actor}/{op}"[: limits.MAX_OP_LEN]


def check_metrics_name(name: Any) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable():
        raise ValueError(f"metrics_name must be a printable string of 1 to {MAX_NAME} "
                         f"characters, not {name!r:.60}")
    return name


class _Pending:
    __slots__ = ("caller", "error", "ok", "times")

    def __init__(self) -> None:
        self.ok = 0
        self.error = 0
        self.caller = 0  # of `error`, those that were the caller's fault
        self.times = Recorder()

    def add(self, other: _Pending) -> None:
        self.ok += other.ok
        self.error += other.error
        self.caller += other.caller
        self.times.counts.update(other.times.counts)


def _merge(into: dict[tuple[str, str], _Pending], src: dict[tuple[str, str], _Pending]) -> None:
    for key, c in src.items():
        mine = into.get(key)
        if mine is None:
            mine = into[key] = _Pending()
        mine.add(c)


class LatencyBook:
    """Per (actor, op): every finished call's client time since the client was made.

    A call is counted once, into `_recent`. Not pushing, that table is the whole record (its
    recorders bounded as they grow). Pushing, the pusher's thread takes `_recent` each
    interval, folds it into `_older` and sends it, so the call pays for one table and one
    uncontended lock, and the thread for the rest; `report` adds the two up.
    """

    def __init__(self, pushing: bool = False) -> None:
        self.pushing = pushing
        self._recent: dict[tuple[str, str], _Pending] = {}
        self._older: dict[tuple[str, str], _Pending] = {}  # taken by the pusher, pushing only
        self._unsent: dict[tuple[str, str], _Pending] = {}  # taken, not sent: goes next time
        self._lock = threading.Lock()
        # When the next push is due (monotonic) and what makes it: set by the pusher; the
        # call that ends past it pushes.
        self.due_at = math.inf
        self.push_due: Callable[[], object] | None = None

    def record(self, actor: str, op: str, micros: int, ok: bool, caller: bool = False) -> None:
        """One finished call; `caller`: it failed with an error that is the caller's (only
        looked at for an error, so an ok call pays nothing for it)."""
        pushing = self.pushing
        if pushing:
            self._lock.acquire()
        c = self._recent.get((actor, op))
        if c is None:
            c = self._recent[(actor, op)] = _Pending()
        if ok:
            c.ok += 1
        else:
            c.error += 1
            if caller:
                c.caller += 1
        c.times.record(micros)
        if pushing:
            self._lock.release()
            if _monotonic() >= self.due_at and self.push_due is not None:
                self.push_due()
        elif len(c.times.counts) > c.times.limit:
            c.times.bound()

    def report(self) -> list[dict[str, Any]]:
        """One row per (actor, op): {actor, op, ok, error, count, p50, p90, p99, p999, max},
        latencies in microseconds, over the client's life."""
        with self._lock:
            total: dict[tuple[str, str], _Pending] = {}
            _merge(total, self._older)
            _merge(total, self._recent)
        return [{"actor": actor, "op": op, "ok": c.ok, "error": c.error,
                 **summary(c.times.histogram())} for (actor, op), c in sorted(total.items())]

    def take(self) -> dict[tuple[str, str], _Pending]:
        """What to push now: the calls since the last take, and what could not be sent
        before. Only the pusher calls this; not pushing, there is nothing to take."""
        if not self.pushing:
            return {}
        with self._lock:
            recent, self._recent = self._recent, {}
            _merge(self._older, recent)
            for c in self._older.values():
                if len(c.times.counts) > c.times.limit:
                    c.times.bound()
            unsent, self._unsent = self._unsent, {}
        _merge(unsent, recent)
        return unsent

    def put_back(self, drained: dict[str, dict[str, Any]]) -> None:
        """A push that could not be sent, kept (merged, so its size stays bounded by the
        number of ops) for the next push; it is already in the lifetime record."""
        with self._lock:
            for name, d in drained.items():
                actor, _, op = name.partition("/")  # pushed_op of (actor, op) is name again
                p = self._unsent.get((actor, op))
                if p is None:
                    p = self._unsent[(actor, op)] = _Pending()
                p.ok += d["ok"]
                p.error += d["error"]
                p.caller += d.get("caller", 0)
                p.times.add_histogram(decode(d["hist"]))


def encode_pending(taken: dict[tuple[str, str], _Pending]) -> Iterator[dict[str, dict]]:
    """Push bodies `{<actor>/<op>: {ok, error, caller?, hist}}`, each within what the metrics
    actor takes (histogram.push_bodies); `caller` only when some errors were the caller's, as
    an actor's own push (actors/runtime/stats.py). Two keys cut to the same name are merged
    rather than sent twice."""
    merged: dict[str, _Pending] = {}
    for (actor, op), c in taken.items():
        name = pushed_op(actor, op)
        m = merged.get(name)
        if m is None:
            merged[name] = c
            continue
        m.add(c)
    yield from push_bodies((name, _entry(c), len(c.times.counts)) for name, c in merged.items())


def _entry(c: _Pending) -> dict[str, Any]:
    d: dict[str, Any] = {"ok": c.ok, "error": c.error, "hist": c.times.encode()}
    if c.caller:
        d["caller"] = c.caller
    return d


class LatencyPusher:
    """Pushes the book's pending table every `interval` seconds: from the call that ends once
    a push is due, or from its daemon thread (a client not calling), and once more when
    closed. It owns its PUSH socket; the calls, `push_now` and the thread share it under a
    lock, so it is used by one thread at a time."""

    def __init__(self, book: LatencyBook, ctx: zmq.Context,
                 endpoint_for: Callable[[zmq.Socket], str], name: str, sid: str,
                 interval: float) -> None:
        """`endpoint_for(sock)`: where `sock` connects (metrics.in over ipc, or its tcp
        endpoint with `sock` made a CURVE client first)."""
        if not interval > 0:
            raise ValueError(f"metrics_interval must be > 0 seconds, not {interval!r}")
        self.book = book
        self.header = packb({"actor": f"client.{check_metrics_name(name)}", "pid": os.getpid(),
                             "ep": sid})
        self.interval = interval
        self.sent = 0  # pushes handed to ZeroMQ
        self.deferred = 0  # pushes kept for later because the queue was full
        self.failure: Exception | None = None  # what stopped a call's push, if one raised
        self._send_lock = threading.Lock()
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self.sock.connect(endpoint_for(self.sock))
        self._stop = threading.Event()
        book.due_at = _monotonic() + interval
        book.push_due = self._push_due
        self._thread = threading.Thread(target=self._run, name="moorage-latency-push",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # It wakes when the push is due, never sooner than IDLE_PUSH_S after its last look:
        # the calls move `due_at` on as they push (it is infinite once the socket is gone).
        while True:
            left = self.book.due_at - _monotonic()
            if self._stop.wait(max(IDLE_PUSH_S, left) if left < math.inf else None):
                return
            if _monotonic() >= self.book.due_at:
                self.push_now()

    def _push_due(self) -> None:
        """A call ended past the push's time: it pushes, unless a push is under way (the
        thread's, or another thread's call's), which takes its latency too. Nothing of the
        push's may fail the call: a push that raises (its socket gone as the client closes,
        or a fault of ours) stops the pushes, and `failure` says why."""
        if not self._send_lock.acquire(blocking=False):
            return
        try:
            self._push()
        except Exception as exc:
            self.failure = exc
            self.book.due_at = math.inf
        finally:
            self._send_lock.release()

    def push_now(self) -> int:
        """Send what is pending now; returns the number of messages sent (0: nothing pending,
        or kept for the next push because the metrics actor is not taking them)."""
        with self._send_lock:
            return self._push()

    def _push(self) -> int:
        self.book.due_at = _monotonic() + self.interval
        if self.sock.closed:
            self.book.due_at = math.inf
            return 0
        sent = 0
        for body in encode_pending(self.book.take()):
            try:
                self.sock.send_multipart([TAG, self.header, packb(body)], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                self.deferred += 1
                self.book.put_back(body)
        self.sent += sent
        return sent

    def close(self) -> None:
        """Stop the thread, push the rest, close: the context's term waits up to
        CLOSE_LINGER_MS for that last push to leave, and drops it after that."""
        self._stop.set()
        self._thread.join()
        self.push_now()
        with self._send_lock:
            self.book.push_due = None
            self.book.due_at = math.inf
            self.sock.close(CLOSE_LINGER_MS)
