"""An actor's tcp side (remote mode, PROTOCOL.md section 2): its request and stream sockets
bound once more on the tree's tcp plan as CURVE servers, and the ZAP handler that lets in
only the allow-listed client keys.

The handler (the gatekeeper) is a thread of the actor's process, not a handler on its loop:
a handshake is answered at once whatever the loop is doing (a loop on its fast path looks
at other sockets only every quarter second), and the loop never spends a turn on a stranger.
Its work is a dict lookup per handshake. It also reads the request socket's monitor (and any
other socket's bound on tcp: the metrics actor's `in`) to count handshakes that fail before
ZAP is asked (plain ZMTP, a client with no key or the wrong server key); the stream socket's
monitor is the actor's own (a socket has one), whose loop hands such failures to
`TcpSide.stream_event`. It notices a changed allow-list (one stat
per handshake, and one per second) and reloads it; a key that left the list gets its
connections closed: the loop unbinds the tcp endpoints (which closes every connection accepted
on them) and binds them again, and the clients still allowed reconnect by themselves within
milliseconds.

An actor holds at most its budget of open tcp connections (`connection_budget`: a quarter
of its open-file limit, at most 1,024), counted from its tcp sockets' monitors. A peer that
opens tcp and never begins a handshake holds a descriptor until the handshake interval ends
(2 s), and a flood of them fills an actor's table: libzmq then aborts the process at the
next local connection (its ipc listener asserts on EMFILE), the root with the whole tree.
Past its budget the actor stops accepting on tcp (it unbinds its tcp endpoints, which closes
every connection accepted there) for a second, longer when it comes again soon after, and
binds them again; its ipc endpoints are not touched.

A list that cannot be read (out of descriptors in such a flood, or any read error) is not a
list that changed: the keys last read are kept, nothing is revoked, and it is read again
until it can be.

Refusals are counted by reason and logged with the peer's address and the key's
fingerprint (a handshake that fails before ZAP is asked is logged with the endpoint it came
to: libzmq's monitor does not say whose it was), the first from an address (or of a reason
at an endpoint) and then at most once per LOG_EVERY_S, so a peer
hammering with refused keys (new ones each time or not) cannot fill the log. Every table
here is bounded.
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from loguru import logger
from zmq.utils import z85

from moorage.actors.runtime.loop import Loop
from moorage.protocol import curve, remote
from moorage.protocol.monitor import MonitorEvent, recv_event

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # RFC 27: the one address libzmq asks
RECHECK_S = 1.0  # the allow-list is looked at this often even with no handshake
LOG_EVERY_S = 10.0
MAX_LOG_KEYS = 1024  # peer addresses remembered for rate-limited logging
REBIND_RETRY_S = 0.01  # an unbound tcp port is free again after libzmq's I/O thread closes it
REBIND_RETRY_MAX_S = 1.0  # ... and while it is not, tried again at most this far apart
REBIND_SAY_AFTER = 8  # tries (about 2.5 s) before it is logged
# Handshake failures a monitor reports, by why the peer was refused.
HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",  # plain ZMTP, a wrong server key
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",  # refused by our own ZAP answer (counted there)
}
HANDSHAKE_FAILURES = sum(HANDSHAKE_EVENTS)  # the monitor mask of those events
# A tcp connection's life as a monitor tells it. An unbound endpoint's connections are closed
# with it and no DISCONNECTED is told of them: its CLOSED ends them all.
CONNECTION_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
MONITOR_EVENTS = HANDSHAKE_FAILURES | CONNECTION_EVENTS
MONITOR_HWM = 100_000  # events a tcp socket's monitor holds unread (libzmq's own: 2,000)
MAX_TCP_CONNECTIONS = 1024  # an actor's budget of open tcp connections, at most ...
MIN_TCP_CONNECTIONS = 16  # ... and at least, whatever its open-file limit
PAUSE_FIRST_S = 1.0  # an actor past its budget stops accepting on tcp this long ...
PAUSE_MAX_S = 16.0  # ... twice as long each time it is past it again soon after, up to this
PAUSE_CALM_S = 60.0  # accepting this long since the last pause: the next is short again
RESUME_RETRY_S = 0.05  # the end of a pause waits this long for closed connections' events ...
RESUME_WAIT_MAX_S = 1.0  # ... at most this long in all


def connection_budget() -> int:
    """The open tcp connections an actor holds at most: a quarter of its open-file limit,
    between MIN_TCP_CONNECTIONS and MAX_TCP_CONNECTIONS, so that a flood leaves the rest of
    its table to its local clients, its own files and its children."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_TCP_CONNECTIONS
    return max(MIN_TCP_CONNECTIONS, min(MAX_TCP_CONNECTIONS, soft // 4))


def tcp_monitor(sock: zmq.Socket) -> zmq.Socket:
    """A monitor of `sock`'s MONITOR_EVENTS whose reading end holds MONITOR_HWM events: an
    event dropped at libzmq's 2,000 (a flood's, read late) would be a connection's end
    missed, counted open until its descriptor number is used again."""
    address = f"inproc://moorage-tcp-monitor-{id(sock)}"
    sock.monitor(address, MONITOR_EVENTS)
    mon = sock.context.socket(zmq.PAIR)
    mon.setsockopt(zmq.LINGER, 0)
    mon.setsockopt(zmq.RCVHWM, MONITOR_HWM)
    mon.connect(address)
    return mon


class TcpConnections:
    """The tcp connections open on an actor's sockets, by socket and descriptor, as their
    monitors tell them (ACCEPTED, DISCONNECTED; CLOSED: an unbound endpoint's all). Any
    thread."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.most = 0  # the most open at once
        self._allowed_lock = threading.Lock()
        self._open: dict[object, set[int]] = {}
        self._over = False

    def count(self, sock: object, event: MonitorEvent) -> bool:
        """One monitor event of `sock` (a key: one for each socket, whose one tcp endpoint
        it is); an ipc endpoint's, and any other event, counts for nothing. True the first
        time more than the budget are open (and again only after `rearm`): the counter
        stops accepting at once, not after the rest of a flood's events are read."""
        kind = event["event"]
        if not kind & CONNECTION_EVENTS or not event["endpoint"].startswith(b"tcp://"):
            return False
        with self._allowed_lock:
            fds = self._open.setdefault(sock, set())
            if kind == zmq.EVENT_ACCEPTED:
                fds.add(event["value"])
            elif kind == zmq.EVENT_DISCONNECTED:
                fds.discard(event["value"])
            else:
                fds.clear()
            now = sum(map(len, self._open.values()))
            self.most = max(self.most, now)
            over = now > self.budget and not self._over
            self._over = self._over or over
        return over

    @property
    def open(self) -> int:
        with self._allowed_lock:
            return sum(map(len, self._open.values()))

    def rearm(self, forget: bool = False) -> None:
        """`count` may say True again; with `forget`, nothing is counted open (every tcp
        endpoint is unbound, so every connection accepted there is closed)."""
        with self._allowed_lock:
            self._over = False
            if forget:
                self._open.clear()


class AllowList:
    """The allow-list as last read, reloaded when it changes: its directory or any file in
    it (a key file rewritten in place, as an editor saves it, leaves the directory as it
    was), their modes and owners included."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir / curve.ALLOWED
        self.keys: dict[bytes, str] = {}
        self._stamp: tuple[Any, ...] | None = None
        self._refused = ""  # why the list was last refused, if it was
        self.unread = 0  # reads that failed (the keys read before were kept)
        self.unreadable: str | None = None  # why it cannot be read now, while it cannot
        self.reload()

    def _stamp_now(self) -> tuple[Any, ...] | None:
        try:
            st = self.dir.stat()
            entries = []
            with os.scandir(self.dir) as it:
                for e in it:  # (more than the list may hold is refused when it is read)
                    if not e.name.endswith(curve.PUBLIC_SUFFIX) or e.name.startswith("."):
                        continue  # (not read as keys either: an editor's backup, say)
                    if len(entries) > curve.MAX_ALLOWED:
                        break
                    with contextlib.suppress(OSError):
                        f = e.stat(follow_symlinks=False)
                        entries.append((e.name, f.st_ino, f.st_mtime_ns, f.st_ctime_ns,
                                        f.st_size, f.st_mode, f.st_uid))
        except FileNotFoundError:
            return None
        except OSError:
            return ("unreadable", time.monotonic())  # (never equal: read again, refused)
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode, st.st_uid,
                tuple(sorted(entries)))

    def reload(self) -> set[bytes]:
        """Read the list if it changed; the keys that left it (their connections must go).
        A list that cannot be trusted any more (opened to others) is read as empty. One that
        cannot be read (any OSError: out of descriptors, as in a flood of connections) has
        not changed: the keys last read are kept and nothing is revoked, said once, and it
        is read again at the next look (each handshake, each second) until it can be."""
        stamp = self._stamp_now()
        if stamp == self._stamp and stamp is not None:
            return set()
        try:
            keys, problems = curve.read_allowed_with_problems(self.dir.parent)
        except curve.KeyFileError as exc:
            if str(exc) != self._refused:  # (once, not at every handshake while it lasts)
                logger.error("allow-list refused, nobody is let in: {}", exc)
            self._refused = str(exc)
            keys, problems = {}, []
        except OSError as exc:
            self.unread += 1
            if self.unreadable is None:  # (once, not at every handshake while it lasts)
                logger.error("allow-list could not be read ({}): the {} key(s) read before "
                             "are kept, and it is read again until it can be", exc,
                             len(self.keys))
            self.unreadable = str(exc)
            self._stamp = None  # (read again at the next look, whatever its stamp)
            return set()
        else:
            self._refused = ""
        self._stamp = stamp
        if self.unreadable is not None:
            logger.info("allow-list read again after {} failed read(s)", self.unread)
            self.unreadable = None
        for p in problems:
            logger.warning("allow-list entry skipped: {}", p)
        gone = set(self.keys) - set(keys)
        if keys != self.keys:
            logger.info("allow-list: {} key(s) ({} revoked)", len(keys), len(gone))
        self.keys = keys
        return gone


class Gatekeeper(threading.Thread):
    """The ZAP handler and the handshake counters of one actor process."""

    def __init__(self, ctx: zmq.Context, keys_dir: Path, monitors: list[zmq.Socket],
                 on_revoked: Any, connections: TcpConnections | None = None,
                 on_over_budget: Callable[[], None] | None = None) -> None:
        super().__init__(name="zap", daemon=True)
        self.allowed = AllowList(keys_dir)
        # Connections counted from `monitors` too, when given; `on_over_budget` is called
        # (on this thread) when they pass the budget.
        self.connections = connections
        self._on_over_budget = on_over_budget
        self.zap = ctx.socket(zmq.ROUTER)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self.monitors = monitors
        self._wake_in = ctx.socket(zmq.PAIR)
        self._wake_out = ctx.socket(zmq.PAIR)
        addr = f"inproc://moorage-zap-wake-{id(self)}"
        self._wake_in.bind(addr)
        self._wake_out.connect(addr)
        self._on_revoked = on_revoked
        self._closing = False
        self.accepted = 0
        # Counted (and logged) from this thread and from the actor's loop (the stream
        # socket's handshakes): one lock for both tables, taken only for a refusal.
        self._refusals_lock = threading.Lock()
        self.refused: Counter[str] = Counter()
        self._added: list[zmq.Socket] = []  # monitors handed over by `watch`, not yet polled
        self._logged: dict[bytes, float] = {}  # peer address -> when last logged

    # --- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        for s in (self.zap, self._wake_in, *self.monitors):
            poller.register(s, zmq.POLLIN)
        next_check = time.monotonic() + RECHECK_S
        try:
            while not self._closing:
                ready = dict(poller.poll(int(RECHECK_S * 1000)))
                if self._wake_in in ready:
                    while self._wake_in.poll(0):
                        self._wake_in.recv()
                    with self._refusals_lock:
                        added, self._added = self._added, []
                    for m in added:
                        self.monitors.append(m)
                        poller.register(m, zmq.POLLIN)
                # (whatever fails in one of these is logged and the thread goes on: a dead
                # gatekeeper would refuse every handshake, and hang the actor's stop)
                if self.zap in ready:
                    self._guarded(self._drain_zap)
                for m in self.monitors:
                    if m in ready:
                        self._guarded(lambda m=m: self._drain_monitor(m))
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + RECHECK_S
                    self._guarded(self._check_list)
        finally:
            for s in (self.zap, self._wake_in, *self.monitors, *self._added):
                s.close(0)

    @staticmethod
    def _guarded(fn: Any) -> None:
        try:
            fn()
        except Exception:
            logger.exception("gatekeeper: {} failed", getattr(fn, "__name__", fn))

    def _check_list(self) -> None:
        gone = self.allowed.reload()
        if gone:
            logger.warning("{} key(s) revoked: closing their connections",
                           len(gone))
            self._on_revoked()

    def _drain_zap(self) -> None:
        self._check_list()  # judge every handshake against the list as it is now
        while True:
            try:
                msg = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                reply = self.answer(msg)
            except Exception:  # (refused, with a reason, and the next is answered)
                logger.exception("gatekeeper: a ZAP request could not be answered")
                reply = [*msg[:1], b"", b"1.0", msg[3] if len(msg) > 3 else b"", b"500",
                         b"internal error", b"", b""]
            self.zap.send_multipart(reply)

    def answer(self, msg: list[bytes]) -> list[bytes]:
        """One ZAP reply (RFC 27): 200 with the key's name as User-Id, or 400."""
        if len(msg) < 8:
            return [*msg[:1], b"", b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        route, _, version, request_id, domain, address, _identity, mechanism = msg[:8]
        creds = msg[8:]
        name = None
        if version == b"1.0" and domain == remote.ZAP_DOMAIN.encode() \
                and mechanism == b"CURVE" and creds:
            name = self.allowed.keys.get(creds[0])
        if name is not None:
            self.accepted += 1
            return [route, b"", b"1.0", request_id, b"200", b"OK",
                    name.encode(errors="replace"), b""]  # (a file name need not be UTF-8)
        key = creds[0] if mechanism == b"CURVE" and creds and len(creds[0]) == 32 else b""
        reason = "unknown_key" if key else f"mechanism_{mechanism.decode(errors='replace')}"
        self.count_refusal(reason, address, key)
        return [route, b"", b"1.0", request_id, b"400", b"key not allowed", b"", b""]

    def count_refusal(self, reason: str, address: bytes, key: bytes = b"",
                      endpoint: bytes = b"") -> None:
        """Count one refused peer and log it, the first from an address and then at most
        once per LOG_EVERY_S; a refusal before ZAP knows no peer, only the `endpoint` it
        came to (logged so, and at most once per LOG_EVERY_S for its reason there). Any
        thread."""
        now = time.monotonic()
        seen = address or reason.encode() + b" " + endpoint
        with self._refusals_lock:
            self.refused[reason] += 1
            last = self._logged.get(seen)
            if last is not None and now - last < LOG_EVERY_S:
                return
            if len(self._logged) >= MAX_LOG_KEYS:
                self._logged.clear()
            self._logged[seen] = now
            total = sum(self.refused.values())
        fp = z85.encode(key)[:8].decode() if key else "-"
        where = (f"from {address.decode(errors='replace')}" if address else
                 f"at {endpoint.decode(errors='replace')} (whose: libzmq does not say)")
        logger.warning("refused a tcp client {} (key {}: {}); {} refused so far", where, fp,
                       reason, total)

    def refusals(self) -> dict[str, int]:
        with self._refusals_lock:
            return dict(self.refused)

    def _drain_monitor(self, mon: zmq.Socket) -> None:
        while True:
            try:
                ev = recv_event(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.connections is not None and self.connections.count(mon, ev) \
                    and self._on_over_budget is not None:
                self._on_over_budget()
            reason = HANDSHAKE_EVENTS.get(ev["event"])
            if reason is None or reason == "auth":
                continue  # (a ZAP refusal was counted and logged when it was answered)
            self.count_refusal(reason, b"", endpoint=ev["endpoint"])

    # --- from the actor's thread --------------------------------------------------------------

    def watch(self, monitor: zmq.Socket) -> None:
        """Count the failed handshakes and the connections `monitor` reports too (a socket
        bound on tcp after this thread started): handed over under the lock, the thread
        woken to poll it."""
        with self._refusals_lock:
            self._added.append(monitor)
        self._wake()

    def _wake(self) -> None:
        # Never waits: a thread that is gone (or busy) has its end closed (or full), and a
        # blocking send to it would hold the actor for good (its stop included).
        with contextlib.suppress(zmq.Again):
            self._wake_out.send(b"w", zmq.NOBLOCK)

    def close(self) -> None:
        self._closing = True
        self._wake()
        self.join(timeout=2.0)
        self._wake_out.close(0)


class TcpSide:
    """The tcp endpoints of one actor, bound as CURVE servers under a gatekeeper, and held
    to its budget of open connections."""

    def __init__(self, name: str, ctx: zmq.Context, loop: Loop, plan: remote.ListenPlan,
                 sockets: dict[str, zmq.Socket]) -> None:
        self.loop = loop
        keys_dir = Path(plan.keys_dir)
        server = curve.load_pair(keys_dir, curve.SERVER)
        self.plan = plan
        self.server_public = server.public
        self.endpoints = plan.endpoints[name]
        self.server = server
        self.bound: list[tuple[zmq.Socket, str]] = []
        self.rebinds = 0
        self.pauses = 0  # times it stopped accepting on tcp, past its budget
        self.paused = False
        self._pause_s = PAUSE_FIRST_S
        self._last_resume: float | None = None
        self._unbound: list[tuple[zmq.Socket, str]] = []
        self._binding = 0  # which retries of a bind again may still run (older ones stop)
        self.connections = TcpConnections(connection_budget())
        # The request socket's monitor is ours; the stream socket's is the actor's own
        # (a socket has one): its loop hands us that socket's events.
        self._monitored = [sockets["rpc"]]
        self.gatekeeper = Gatekeeper(ctx, keys_dir, [tcp_monitor(sockets["rpc"])],
                                     lambda: loop.call_soon_threadsafe(self.rebind),
                                     self.connections,
                                     lambda: loop.call_soon_threadsafe(self._over_budget))
        self.gatekeeper.start()
        for kind, sock in sockets.items():
            self.bind(kind, sock)

    def bind(self, kind: str, sock: zmq.Socket) -> None:
        """Bind `sock` on this actor's tcp endpoint of `kind` as a CURVE server (an actor's
        own socket beyond the two every actor has: the metrics actor's `in`)."""
        endpoint = self.endpoints[kind]
        remote.secure_server(sock, self.server, endpoint)
        if kind not in ("rpc", "pub"):  # (those two are monitored as __init__ says)
            self._monitored.append(sock)
            self.gatekeeper.watch(tcp_monitor(sock))
        sock.bind(endpoint)
        self.bound.append((sock, endpoint))

    def stream_event(self, event: MonitorEvent) -> None:
        """A monitor event of the stream socket (the actor's loop reads that monitor): its
        tcp connections are counted as the other sockets' are, and a handshake that failed
        before ZAP was asked on a tcp endpoint is counted as the request socket's are;
        anything else is not a refusal (a ZAP refusal was counted when it was answered; an
        ipc peer is not a remote one)."""
        if self.connections.count("pub", event):
            self._over_budget()  # (this is the loop's thread: at once)
        reason = HANDSHAKE_EVENTS.get(event["event"])
        if reason is None or reason == "auth" or not event["endpoint"].startswith(b"tcp://"):
            return
        self.gatekeeper.count_refusal(reason, b"", endpoint=event["endpoint"])

    def rebind(self) -> None:
        """Close every tcp connection (a key was revoked); bind again once the ports are free."""
        if self._unbound:
            return  # a rebind or a pause is under way: it closes the same connections
        self._unbind_all()
        self.rebinds += 1
        self._schedule_bind(REBIND_RETRY_S, 1)

    def _unbind_all(self) -> None:
        for sock, endpoint in self.bound:
            if (sock, endpoint) in self._unbound:
                continue
            try:
                sock.unbind(endpoint)
            except zmq.ZMQError as exc:  # (then it is not bound: bound again with the rest)
                logger.warning("unbinding {}: {}", endpoint, exc)
            self._unbound.append((sock, endpoint))

    def _over_budget(self) -> None:
        """More tcp connections are open than the budget (a flood of peers that never finish
        a handshake, each holding a descriptor): stop accepting on tcp for a while. The
        unbind closes every connection accepted there, the flood's and an allowed client's
        (which reconnects once the actor listens again); ipc endpoints are not touched. A
        pause that comes within PAUSE_CALM_S of the last one's end is twice as long, up to
        PAUSE_MAX_S."""
        if self.paused:
            return
        calm = self._last_resume is None or \
            time.monotonic() - self._last_resume >= PAUSE_CALM_S
        self._pause_s = PAUSE_FIRST_S if calm else min(PAUSE_MAX_S, self._pause_s * 2)
        self.paused = True
        self.pauses += 1
        self._binding += 1  # (a rebind's retries stop: the pause's end binds everything)
        self._unbind_all()
        logger.error("{} tcp connections open, over this actor's budget of {} (a quarter of "
                     "its open-file limit, at most {}): not accepting on tcp for {:g} s, its "
                     "tcp connections closed (allowed clients reconnect after it; local "
                     "clients are not affected); {} pause(s) so far",
                     self.connections.open, self.connections.budget, MAX_TCP_CONNECTIONS,
                     self._pause_s, self.pauses)
        self.loop.call_later(self._pause_s, self._resume)

    def _resume(self, waited: float = 0.0) -> None:
        """The pause is over: accept on tcp again, once the connections the unbind closed
        are counted closed (at most half the budget open: their endpoints' CLOSED events
        read), or RESUME_WAIT_MAX_S later in any case (nothing can be open on an endpoint
        that is not bound)."""
        if self.connections.open > self.connections.budget // 2 \
                and waited < RESUME_WAIT_MAX_S:
            self.loop.call_later(RESUME_RETRY_S, lambda: self._resume(waited + RESUME_RETRY_S))
            return
        self.connections.rearm(forget=True)
        self.paused = False
        self._last_resume = time.monotonic()
        logger.info("accepting on tcp again after a pause of {:g} s", self._pause_s)
        self._bind_again(1, self._binding)

    def _schedule_bind(self, delay: float, tries: int) -> None:
        binding = self._binding
        self.loop.call_later(delay, lambda: self._bind_again(tries, binding))

    def _bind_again(self, tries: int, binding: int) -> None:
        """Bind what a revoke or a pause unbound again; while the port is not free (libzmq's
        I/O thread closes it a moment later, or another process took it), tried again
        further apart, up to REBIND_RETRY_MAX_S, and said once it has lasted
        REBIND_SAY_AFTER tries. Retries of a bind that a pause cut short stop."""
        if binding != self._binding or self.paused:
            return
        still: list[tuple[zmq.Socket, str]] = []
        for sock, endpoint in self._unbound:
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                if (exc.errno != zmq.EADDRINUSE and tries == 1) or tries == REBIND_SAY_AFTER:
                    logger.error("cannot bind {} again ({}): this actor is not reachable "
                                 "over tcp until it can; trying on", endpoint, exc)
                still.append((sock, endpoint))
            else:
                if tries >= REBIND_SAY_AFTER:
                    logger.info("bound {} again", endpoint)
        self._unbound = still
        if still:
            self._schedule_bind(min(REBIND_RETRY_MAX_S, REBIND_RETRY_S * 2 ** tries), tries + 1)

    def info(self) -> dict[str, Any]:
        g = self.gatekeeper
        c = self.connections
        return {"endpoints": [ep for _, ep in self.bound],
                "accepted": g.accepted, "refused": g.refusals(),
                "allowed": len(g.allowed.keys), "rebinds": self.rebinds,
                "allow_list_unread": g.allowed.unread,
                "allow_list_unreadable": g.allowed.unreadable,
                "connections": {"open": c.open, "most": c.most, "budget": c.budget,
                                "pauses": self.pauses, "paused": self.paused}}

    def connection_table(self) -> dict[str, Any]:
        """The connection file's `remote` table (the root's)."""
        return self.plan.connection_table(self.server_public)

    def close(self) -> None:
        for sock in self._monitored:
            sock.disable_monitor()
        self.gatekeeper.close()


def open_tcp_side(name: str, runtime_dir: Path, ctx: zmq.Context, loop: Loop,
                  sockets: dict[str, zmq.Socket]) -> TcpSide | None:
    """The actor's tcp side when its tree listens on tcp and names it; else None."""
    plan = remote.read_plan(runtime_dir)
    if plan is None or name not in plan.endpoints:
        return None
    return TcpSide(name, ctx, loop, plan, sockets)
