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
`TcpSide.stream_refused`. It notices a changed allow-list (one stat
per handshake, and one per second) and reloads it; a key that left the list gets its
connections closed: the loop unbinds the tcp endpoints (which closes every connection accepted
on them) and binds them again, and the clients still allowed reconnect by themselves within
milliseconds.

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
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq
from loguru import logger
from zmq.utils import z85

from moorage.actors.runtime.loop import Loop
from moorage.protocol import curve, remote
from moorage.protocol.monitor import recv_event

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


class AllowList:
    """The allow-list as last read, reloaded when it changes: its directory or any file in
    it (a key file rewritten in place, as an editor saves it, leaves the directory as it
    was), their modes and owners included."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir / curve.ALLOWED
        self.keys: dict[bytes, str] = {}
        self._stamp: tuple[Any, ...] | None = None
        self._refused = ""  # why the list was last refused, if it was
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
        A list that cannot be trusted any more (opened to others) or read is read as
        empty."""
        stamp = self._stamp_now()
        if stamp == self._stamp and stamp is not None:
            return set()
        self._stamp = stamp
        try:
            keys, problems = curve.read_allowed_with_problems(self.dir.parent)
        except (curve.KeyFileError, OSError) as exc:
            if str(exc) != self._refused:  # (once, not at every handshake while it lasts)
                logger.error("allow-list refused, nobody is let in: {}", exc)
            self._refused = str(exc)
            keys, problems = {}, []
        else:
            self._refused = ""
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
                 on_revoked: Any) -> None:
        super().__init__(name="zap", daemon=True)
        self.allowed = AllowList(keys_dir)
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
            reason = HANDSHAKE_EVENTS.get(ev["event"])
            if reason is None or reason == "auth":
                continue  # (a ZAP refusal was counted and logged when it was answered)
            self.count_refusal(reason, b"", endpoint=ev["endpoint"])

    # --- from the actor's thread --------------------------------------------------------------

    def watch(self, monitor: zmq.Socket) -> None:
        """Count the failed handshakes `monitor` reports too (a socket bound on tcp after
        this thread started): handed over under the lock, the thread woken to poll it."""
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
    """The tcp endpoints of one actor, bound as CURVE servers under a gatekeeper."""

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
        # The request socket's monitor is ours; the stream socket's is the actor's own
        # (a socket has one): its loop hands us that socket's failed handshakes.
        self._monitored = [sockets["rpc"]]
        monitors = [sockets["rpc"].get_monitor_socket(HANDSHAKE_FAILURES)]
        self.gatekeeper = Gatekeeper(ctx, keys_dir, monitors,
                                     lambda: loop.call_soon_threadsafe(self.rebind))
        self.gatekeeper.start()
        for kind, sock in sockets.items():
            self.bind(kind, sock)
        self.rebinds = 0
        self._unbound: list[tuple[zmq.Socket, str]] = []

    def bind(self, kind: str, sock: zmq.Socket) -> None:
        """Bind `sock` on this actor's tcp endpoint of `kind` as a CURVE server (an actor's
        own socket beyond the two every actor has: the metrics actor's `in`)."""
        endpoint = self.endpoints[kind]
        remote.secure_server(sock, self.server, endpoint)
        if kind not in ("rpc", "pub"):  # (those two are monitored as __init__ says)
            self._monitored.append(sock)
            self.gatekeeper.watch(sock.get_monitor_socket(HANDSHAKE_FAILURES))
        sock.bind(endpoint)
        self.bound.append((sock, endpoint))

    def stream_refused(self, event: dict[str, Any]) -> None:
        """A monitor event of the stream socket (the actor's loop reads that monitor): a
        handshake that failed before ZAP was asked on a tcp endpoint is counted as the request
        socket's are; anything else is not a refusal (a ZAP refusal was counted when it was
        answered; an ipc peer is not a remote one)."""
        reason = HANDSHAKE_EVENTS.get(event["event"])
        if reason is None or reason == "auth" or not event["endpoint"].startswith(b"tcp://"):
            return
        self.gatekeeper.count_refusal(reason, b"", endpoint=event["endpoint"])

    def rebind(self) -> None:
        """Close every tcp connection (a key was revoked); bind again once the ports are free."""
        if self._unbound:
            return  # a rebind is under way: it closes the same connections
        for sock, endpoint in self.bound:
            sock.unbind(endpoint)
            self._unbound.append((sock, endpoint))
        self.rebinds += 1
        self.loop.call_later(REBIND_RETRY_S, self._bind_again)

    def _bind_again(self, tries: int = 1) -> None:
        """Bind what a revoke unbound again; while the port is not free (libzmq's I/O thread
        closes it a moment later, or another process took it), tried again further apart, up
        to REBIND_RETRY_MAX_S, and said once it has lasted REBIND_SAY_AFTER tries."""
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
            self.loop.call_later(min(REBIND_RETRY_MAX_S, REBIND_RETRY_S * 2 ** tries),
                                 lambda: self._bind_again(tries + 1))

    def info(self) -> dict[str, Any]:
        g = self.gatekeeper
        return {"endpoints": [ep for _, ep in self.bound],
                "accepted": g.accepted, "refused": g.refusals(),
                "allowed": len(g.allowed.keys), "rebinds": self.rebinds}

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
