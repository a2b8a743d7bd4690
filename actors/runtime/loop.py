"""One event loop per actor: ZeroMQ sockets, plain fds (PTYs, pipes), timers, and wake-ups
from other threads, all on one poller so handlers never need locks.

Callbacks run to completion; a callback that raises is logged and the loop goes on (a bug in
one handler must not take the actor's other sessions down with it).

The fast path: an actor's request socket can be made the loop's *primary* socket. While
every other reader is a ZeroMQ socket (no plain fds, no writers), the loop then waits in a
blocking `recv` on it instead of `zmq_poll` (measured here: ~17 µs less per round trip, a
tenth of it; a plain fd registered *eager*, read only and read the moment it is readable,
is waited on with it in one zmq_poll of the two, which measured no slower), checks the
other sockets' ZMQ_EVENTS after a wake-up (at most once every
OTHERS_EVERY_S), and wakes at least every HOUSEKEEPING_MS for them. It looks for requests
queued behind the one it received (to serve them as a batch) only in a burst, so a lone
request's turn makes no receive that finds nothing (libzmq then processes its commands: two
syscalls) and no walk of the registrations: that
saved 4-5 µs of an actor's CPU per sys.ping here. Wake-ups from other threads then arrive on
the primary socket itself, as messages from WAKE_ID over an inproc connection. An actor
whose other sockets must be served as promptly as its requests (the metrics actor times
recoveries by the replies and events that arrive on them) sets `fast_path = False`. Once a
whole HOUSEKEEPING_MS passed with no request, the loop is idle: it waits in `zmq_poll` on
everything instead, so an idle actor wakes only for its timers and what arrives (a wake-up
costs ~0.1 ms of CPU here), and the first request takes it back to the fast path. While a
reply is awaited on another socket (`awaited`: an Outbound call in flight, as a request
deferred on another actor's answer), the loop polls everything too: the reply is what the
caller waits for, and no request may come to end the fast path's recv sooner.

A supervised process's loop also beats (actors.runtime.beat): before each wait it writes when
the wait will end at the latest, after it that it turned, so its supervisor sees it alive
without sending it anything or waking it; a loop stuck in a handler stops turning.

A loop keeps its stalls (`stalls`): a turn that reaches its timers more than STALL_S after the
earliest was due. Its process was stopped (SIGSTOP, Ctrl-Z, a cgroup freezer), went without a
CPU, or one turn's work held it: in each case nothing it waits for was heard meanwhile, and a
timeout that gives up on a peer must not count that time against it (`call_later_awake`; the
terminal's consumer sweep). Only a turn that runs a timer looks: a subtraction and a
comparison, no clock read of its own.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from loguru import logger

from moorage.actors.runtime import beat
from moorage.protocol.wire import NOBLOCK, readable, send_frames, try_recv

Callback = Callable[[], Any]
# pyzmq's constants are enums; arithmetic on them builds enum objects (a microsecond each).
POLLIN, POLLOUT, POLLERR = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.POLLERR)
RCVTIMEO = int(zmq.RCVTIMEO)
HOUSEKEEPING_MS = 250
MAX_WAIT_MS = 3_600_000  # the longest one wait (zmq_poll takes an int: a timer a month away
#                          would raise OverflowError there); the loop then looks again
OTHERS_EVERY_S = 0.001  # the fast path looks at its other sockets at most this often
# A turn that runs its timers this long after the earliest was due is a stall (the process
# was stopped, or had no CPU): far above a loaded machine's scheduling delays, far below the
# timeouts that must not count one (a start's 10 s, a consumer's 5 s).
STALL_S = 1.0
STALLS_KEPT = 16  # the last stalls, for timers armed before them (call_later_awake)
LOOK_EVERY = 16  # outside a burst, the fast path looks for more requests every 16th turn
WAKE_ID = b"\xffmoorage-wake"
_WAKE_FRAMES = [b"w"]  # what a wake-up sends on the primary socket


def _noop() -> None:
    pass


COMPACT_MIN = 512  # cancelled timers tolerated in the heap before it may be rebuilt


class Timer:
    __slots__ = ("cancelled", "fn", "loop", "when")

    def __init__(self, when: float, fn: Callback, loop: Loop | None = None) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False
        self.loop = loop  # while it is in that loop's heap

    def cancel(self) -> None:
        # Drop the callback now: a cancelled timer stays in the heap until its time (or the
        # heap's next compaction), and must not keep what it closed over (a deferred call and
        # its request) alive until then.
        if self.cancelled:
            return
        self.cancelled = True
        self.fn = _noop
        loop, self.loop = self.loop, None
        if loop is not None:
            loop._timer_cancelled()


class _AwakeTimer(Timer):
    """`call_later_awake`'s handle: cancelling it cancels the timer now in the heap for it."""

    __slots__ = ("inner",)

    def __init__(self, when: float, fn: Callback) -> None:
        super().__init__(when, fn)
        self.inner: Timer | None = None

    def cancel(self) -> None:
        super().cancel()
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.cancel()


class Loop:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # timers' time (injected by tests)
        self.poller = zmq.Poller()
        self._handlers: dict[Any, tuple[Callback | None, Callback | None]] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._seq = itertools.count()
        self._soon: deque[Callback] = deque()
        self._next_turn: list[Callback] = []  # defer(): run after the next wait (0 ms)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sockets_only = True
        # Plain fds the fast path waits on beside the primary socket (`add_reader(eager=
        # True)`): one zmq_poll of them all instead of the blocking recv.
        self._eager: set[int] = set()
        self._fast_poller: zmq.Poller | None = None
        # Keys unregistered while a poll's events are being dispatched: an event of theirs
        # still to come in that batch is stale (a closed fd's number may be a new fd's by
        # then, whose handler must not run on the old one's readiness).
        self._dropped: set[Any] = set()
        self._dispatching = False  # between a poll's return and the end of its dispatch
        self.add_reader(self._wake_r, self._drain_wakeups)
        self.running = False
        self._primary: zmq.Socket | None = None
        self._on_batch: Callable[[list[list[bytes]]], Any] | None = None
        self._batch_cap = 1
        self._wake_sock: zmq.Socket | None = None
        self._lone = 0  # fast-path turns (see _drain_primary)
        self._burst = False  # the last look for more requests found some
        # Held while a wake-up is sent on the primary socket: by any thread, and by a signal
        # handler only when free (call_soon_from_signal).
        self.wake_lock = threading.Lock()
        # From before a turn looks at `_soon` to decide how long to wait until the wait is
        # over: only then does another thread's callback need a wake-up (call_soon_threadsafe).
        self._sleeping = True
        self.wakeups = 0  # wake-ups sent by other threads and signal handlers
        self._rcvtimeo = -1
        self.fast_path = True
        # Replies this loop waits for on other sockets (Outbound's calls in flight): while any
        # is, the loop polls everything, or a reply would wait out the fast path's recv (up
        # to HOUSEKEEPING_MS) whenever no request comes meanwhile.
        self.awaited: list[dict] = []
        self._idle = False  # no request for HOUSEKEEPING_MS: wait in zmq_poll, not the fast path
        self._others_due = 0.0  # the fast path's next look at its other sockets (clock)
        self._beat = beat.installed()
        # The loop's last stalls, oldest first: (when its earliest timer was due, when the
        # turn that ran it began its timers), in `clock` time. stalls[-1] is the last.
        self.stalls: deque[tuple[float, float]] = deque(maxlen=STALLS_KEPT)

    def set_primary(
        self,
        sock: zmq.Socket,
        on_batch: Callable[[list[list[bytes]]], Any],
        ctx: zmq.Context,
        batch_cap: int,
    ) -> None:
        """Make `sock` (a ROUTER) the socket the loop blocks on; `on_batch` gets what it
        receives, up to `batch_cap` messages at a time, wake-up messages removed."""
        endpoint = f"inproc://moorage-wake-{id(self)}"
        sock.bind(endpoint)
        wake = ctx.socket(zmq.DEALER)
        wake.setsockopt(zmq.ROUTING_ID, WAKE_ID)
        wake.setsockopt(zmq.LINGER, 0)
        wake.setsockopt(zmq.SNDHWM, 16)
        wake.connect(endpoint)
        self._wake_sock = wake
        self._primary, self._on_batch, self._batch_cap = sock, on_batch, batch_cap
        self.add_reader(sock, self._drain_primary)

    def _drain_primary(self, first: list[bytes] | None = None) -> None:
        assert self._primary is not None and self._on_batch is not None
        sock, cap = self._primary, self._batch_cap
        if first is not None:
            if first[0] != WAKE_ID:
                # Served before looking for more, which a lone request's reply need not
                # wait for. What came with it is served next, as a batch.
                self._on_batch([first])
                cap -= 1
            # The look is a receive, which costs no syscall when it finds a request but two
            # when it finds none (libzmq processes its commands: a `poll` and a `getpid`), as
            # a lone request's would every time: so only in a burst (the last look found
            # more) and every LOOK_EVERY-th turn to see one start. What is not looked for
            # waits in the socket, where the next turn's recv takes it.
            self._lone += 1
            if not self._burst and self._lone % LOOK_EVERY:
                return
        batch: list[list[bytes]] = []
        while len(batch) < cap:  # (on most turns there is none)
            frames = try_recv(sock)  # (no look first: a receive that finds one costs none)
            if frames is None:
                break
            if frames[0] != WAKE_ID:
                batch.append(frames)
        self._burst = bool(batch)
        if batch:
            self._on_batch(batch)

    # --- registration ---------------------------------------------------------------------

    def _update(self, key: Any) -> None:
        on_read, on_write = self._handlers.get(key, (None, None))
        flags = (POLLIN if on_read else 0) | (POLLOUT if on_write else 0)
        if flags:
            self.poller.register(key, flags)
        else:
            self._handlers.pop(key, None)
            if self._dispatching:
                self._dropped.add(key)
            with contextlib.suppress(KeyError):
                self.poller.unregister(key)
        if on_read is None:
            self._eager.discard(key)
        self._sockets_only = self._only_sockets_read()
        self._fast_poller = None
        if self._eager and self._primary is not None:
            self._fast_poller = zmq.Poller()
            self._fast_poller.register(self._primary, POLLIN)
            for fd in self._eager:
                self._fast_poller.register(fd, POLLIN)

    def _only_sockets_read(self) -> bool:
        """No writer and no plain fd but the wake pipe and the eager ones: what the fast
        path needs of the registrations (kept up to date by `_update`, not walked on every
        turn)."""
        for key, (_, on_write) in self._handlers.items():
            if on_write is not None:
                return False
            if not isinstance(key, zmq.Socket) and key != self._wake_r \
                    and key not in self._eager:
                return False
        return True

    def add_reader(self, key: Any, fn: Callback, eager: bool = False) -> None:
        """`key` is a zmq socket or an fd; `fn` runs when it is readable. An `eager` fd
        (read only, never written through the loop) keeps the fast path: it is waited on
        with the request socket, and its reader runs as soon as it is readable (an event
        source whose latency counts, read by the loop itself rather than by a thread that
        would wake it: a thread wake-up less per event)."""
        self._handlers[key] = (fn, self._handlers.get(key, (None, None))[1])
        if eager and not isinstance(key, zmq.Socket):
            self._eager.add(key)
        self._update(key)

    def remove_reader(self, key: Any) -> None:
        if key in self._handlers:
            self._handlers[key] = (None, self._handlers[key][1])
            self._update(key)

    def add_writer(self, key: Any, fn: Callback) -> None:
        self._handlers[key] = (self._handlers.get(key, (None, None))[0], fn)
        self._update(key)

    def remove_writer(self, key: Any) -> None:
        if key in self._handlers:
            self._handlers[key] = (self._handlers[key][0], None)
            self._update(key)

    def call_later(self, delay: float, fn: Callback) -> Timer:
        t = Timer(self.clock() + delay, fn, self)
        heapq.heappush(self._timers, (t.when, next(self._seq), t))
        return t

    def call_later_awake(self, delay: float, fn: Callback,
                         lost: Callable[[], float] | None = None) -> Timer:
        """`call_later` for a timeout that gives up on another process (a child's start, its
        exit): only time this loop was awake counts. When it comes due, the loop's stalls
        since it was armed (`stalls`: the process was stopped, as the whole tree is by Ctrl-Z
        or a freezer, and the other process with it) and what `lost()` says the other process
        lost besides (its waits for a CPU, in seconds since it was armed) push it out by as
        much, and it waits again for the rest: a pause is not taken for the other's failure,
        and a real one is still seen, that much later."""
        armed = self.clock()
        due = armed + delay
        handle = _AwakeTimer(due, fn)

        def check() -> None:
            if handle.cancelled:
                return
            now = self.clock()
            later = due + self.stalled_since(armed) + (lost() if lost is not None else 0.0)
            if later > now:
                handle.when = later
                handle.inner = self.call_later(later - now, check)
                return
            handle.inner = None
            handle.fn()

        handle.inner = self.call_later(delay, check)
        return handle

    def stalled_since(self, t: float) -> float:
        """Seconds of the loop's stalls after `t` (`clock` time; only the last STALLS_KEPT
        are kept)."""
        return sum(seen - max(began, t) for began, seen in self.stalls if seen > t)

    def _stalled(self, began: float, seen: float) -> None:
        self.stalls.append((began, seen))
        logger.info("the loop ran its timers {:.1f} s late (its process was stopped, or had "
                    "no CPU, or a turn held it): timeouts on others do not count that time",
                    seen - began)

    def _timer_cancelled(self) -> None:
        """Rebuild the heap once most of it is cancelled timers: every deferred call has a
        guard timer due at its deadline (often a minute on), cancelled when it is answered,
        and thousands of them would otherwise sit in the heap until then."""
        self._cancelled += 1
        if self._cancelled > COMPACT_MIN and 2 * self._cancelled > len(self._timers):
            self._timers = [e for e in self._timers if not e[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def call_every(self, interval: float, fn: Callback) -> Timer:
        """Run `fn` every `interval` seconds (first run after one interval)."""
        handle = Timer(0.0, fn)

        def tick() -> None:
            if handle.cancelled:
                return
            try:
                fn()
            finally:
                if not handle.cancelled:
                    self.call_later(interval, tick)

        self.call_later(interval, tick)
        return handle

    def defer(self, fn: Callback) -> None:
        """Run `fn` on the next turn, after the loop has beaten and looked at its sockets:
        work cut into slices this way never holds the loop (a hostile flood, a long walk),
        and what arrived meanwhile (a `sys.ping`) is served in between."""
        self._next_turn.append(fn)

    def call_soon(self, fn: Callback) -> None:
        """On the loop's own thread only: run `fn` at the end of this turn (no wake-up)."""
        self._soon.append(fn)

    def call_soon_threadsafe(self, fn: Callback) -> None:
        """From any thread: run `fn` on the loop's thread, soon. A loop that is not waiting
        runs it at the end of its turn (every turn ends with `_soon`) and is not woken:
        a wake-up is a message the loop receives and a turn it takes, and workers finishing
        while it serves a burst sent one each. The order is what makes it safe (and the GIL
        keeps each step whole): the loop marks itself sleeping before it looks at `_soon`,
        this appends before it looks at the mark; so either the loop's look finds `fn`, or
        this finds the mark and wakes it."""
        self._soon.append(fn)
        if self._sleeping:
            self._wake(blocking=True)

    def call_soon_from_signal(self, fn: Callback) -> None:
        """From a signal handler: run `fn` on the loop, soon. A handler runs on the loop's
        own thread between two bytecodes, possibly inside `call_soon_threadsafe` with the
        wake lock held (a SIGCHLD storm interrupts its own handler's send): waiting for the
        lock there would wait for ever. So the lock is only tried: whoever holds it is
        sending a wake-up that wakes the loop after `fn` is queued (at worst the loop wakes
        for its housekeeping, HOUSEKEEPING_MS on)."""
        self._soon.append(fn)
        self._wake(blocking=False)

    def _wake(self, blocking: bool) -> None:
        self.wakeups += 1
        sock = self._wake_sock
        if sock is not None and self.wake_lock.acquire(blocking):
            # The message on the primary socket ends the fast path's recv and the poller's
            # wait alike: the pipe (a write here, two reads on the loop) is not needed too.
            try:
                send_frames(sock, _WAKE_FRAMES, NOBLOCK)
            except zmq.Again:
                pass  # wake-ups are queued already; the loop will run `fn` with them
            except zmq.ZMQError:
                # The context is being destroyed under us: a signal (a second ^C) handled
                # while the process closes its sockets, its loop done. Nothing to wake.
                pass
            finally:
                self.wake_lock.release()
            return
        # No primary socket, or a signal handler that interrupted a wake-up half sent: the
        # pipe, which the poller watches.
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already; the loop is awake

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._run_soon()

    def _run_soon(self) -> None:
        while self._soon:
            self._run(self._soon.popleft())

    # --- running ----------------------------------------------------------------------------

    def _run(self, fn: Callback) -> None:
        try:
            fn()
        except Exception:
            logger.exception("loop callback {} raised", getattr(fn, "__qualname__", fn))

    def _timeout_ms(self) -> int | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
            self._cancelled = max(0, self._cancelled - 1)
        if self._soon or self._next_turn:
            return 0
        if not self._timers:
            return None
        return min(MAX_WAIT_MS, max(0, int((self._timers[0][0] - self.clock()) * 1000 + 0.999)))

    def fast_path_ready(self) -> bool:
        """Whether the next turn waits in a blocking recv on the request socket (the module's
        doc: the fast path) rather than polling every socket."""
        if self._primary is None or not self.fast_path or not self._sockets_only:
            return False
        return not any(self.awaited)

    def _run_fast(self) -> None:
        """Block in recv on the primary socket; see the module docstring."""
        sock = self._primary
        assert sock is not None
        self._sleeping = True
        due = self._timeout_ms()
        deferred = self._take_deferred()
        t = HOUSEKEEPING_MS if due is None else min(due, HOUSEKEEPING_MS)
        if t != self._rcvtimeo:
            sock.setsockopt(RCVTIMEO, t)
            self._rcvtimeo = t
        b = self._beat
        if b is not None:
            b.waiting(t)
        fast_poller = self._fast_poller
        if fast_poller is None:
            first = try_recv(sock, 0)  # (None: RCVTIMEO passed)
            ready: list[tuple[Any, int]] = []
        else:
            ready = fast_poller.poll(t)
            first = None
            for key, _ in ready:
                if key is sock:
                    first = try_recv(sock)
        self._sleeping = False
        if b is not None:
            b.woke()
        if deferred:
            self._run_deferred(deferred)
        for key, _ in ready:
            if key is not sock:
                handlers = self._handlers.get(key)
                if handlers is not None and handlers[0] is not None:
                    self._run(handlers[0])
        if first is None:
            self._idle = t == HOUSEKEEPING_MS and not deferred and not ready
        else:
            try:
                self._drain_primary(first)
            except Exception:
                logger.exception("primary socket handler raised")
        now = time.monotonic()  # (not `clock`, which tests may hold still)
        if now >= self._others_due:
            # At most once a millisecond (a ZMQ_EVENTS read is a few µs, and a request
            # arriving every 100 µs would pay it for each socket every time): what waits
            # there is no later for it than it is while the loop sleeps in recv.
            self._others_due = now + OTHERS_EVERY_S
            for key, (on_read, _) in list(self._handlers.items()):
                if key is sock or on_read is None or not isinstance(key, zmq.Socket):
                    continue  # plain fds registered by a handler just now: the next poll
                if readable(key):
                    self._run(on_read)
        if self._soon:
            self._run_soon()
        self._run_timers()

    @property
    def timers_queued(self) -> int:
        """Timers in the heap, cancelled ones not yet dropped included (what it costs)."""
        return len(self._timers)

    def _run_timers(self) -> None:
        now = self.clock()
        if not self._timers or self._timers[0][0] > now:
            self._run_soon()  # (what a wake-up queued: every turn ends here)
            return
        first = self._timers[0][0]
        if now - first > STALL_S:  # (the turn's one cost of it, only when a timer is due)
            self._stalled(first, now)
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                self._cancelled = max(0, self._cancelled - 1)
            else:
                timer.loop = None  # out of the heap: a cancel from now on is not counted
                self._run(timer.fn)
        self._run_soon()  # (what a wake-up queued: every turn ends here)

    def _take_deferred(self) -> list[Callback]:
        deferred = self._next_turn
        if deferred:
            self._next_turn = []
        return deferred

    def _run_deferred(self, deferred: list[Callback]) -> None:
        for fn in deferred:
            self._run(fn)

    def run_once(self, timeout_ms: int | None = None) -> None:
        if timeout_ms is None and not self._idle and self.fast_path_ready():
            self._run_fast()
            return
        self._sleeping = True
        t = self._timeout_ms()
        if timeout_ms is not None:
            t = timeout_ms if t is None else min(t, timeout_ms)
        deferred = self._take_deferred()
        b = self._beat
        if b is not None:
            b.waiting(t)
        dropped = self._dropped
        dropped.clear()
        events = self.poller.poll(t)
        self._sleeping = False
        self._dispatching = True
        if b is not None:
            b.woke()
        if deferred:
            self._run_deferred(deferred)
        for key, flags in events:
            if key is self._primary:
                self._idle = False  # requests again: back to the fast path
            handlers = self._handlers.get(key)
            if handlers is None or key in dropped:
                continue
            # A plain fd's hang-up (a PTY or pipe at EOF) comes as POLLERR alone: its reader
            # must run to see the EOF, or the loop would spin on it.
            if flags & (POLLIN | POLLERR) and handlers[0]:
                self._run(handlers[0])
            if flags & POLLOUT and key not in dropped:
                handlers = self._handlers.get(key)
                if handlers and handlers[1]:
                    self._run(handlers[1])
        self._dispatching = False
        self._run_timers()

    def run(self) -> None:
        self.running = True
        if self._beat is not None:
            self._beat.woke()
        while self.running:
            self.run_once()

    def stop(self) -> None:
        self.running = False

    def close(self) -> None:
        if self._wake_sock is not None:
            self._wake_sock.close(0)
        os.close(self._wake_r)
        os.close(self._wake_w)
