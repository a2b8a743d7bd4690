"""Remote mode: where a tree listens on tcp, and how either end secures a tcp socket
(PROTOCOL.md section 2, "Remote").

One decision lives here for both ends: actor number i of the tree (the root first, then the
tree's children depth first, the order of `tree.json`'s endpoints) serves its requests on
PORT + 2i and its stream on PORT + 2i + 1. Each actor binds its own tcp endpoints beside its
ipc ones, so a remote call takes the same single hop as a local one and a restarted actor
is found again at the same port, as it is at the same ipc path.

Every tcp socket is CURVE (RFC 26): the actor's sockets are CURVE servers with the tree's
key pair and ZAP (RFC 27) domain `moorage`, a client's are CURVE clients with its own pair
and the tree's public key. Both ends send ZMTP heartbeats, so a cut link is noticed within
HEARTBEAT_TIMEOUT_MS whether or not a call is in flight.

The root writes the plan to `<runtime_dir>/listen.json` (0600) before it starts a child;
each actor reads it when it starts. The connection file carries the `remote` table a client
elsewhere needs: transport, endpoints and the server's public key (never a secret).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from moorage.protocol import curve

LISTEN_FILE = "listen.json"
ZAP_DOMAIN = "moorage"
HEARTBEAT_IVL_MS = 1000  # a ZMTP PING each second on an idle connection ...
HEARTBEAT_TIMEOUT_MS = 3000  # ... and a connection with no traffic for 3 s is closed
HEARTBEAT_TTL_MS = 3000  # asks the peer to close it after 3 s of nothing from us
# A peer that opens tcp and does not finish the handshake within this is dropped. An actor's
# is short, as each such peer holds one of its descriptors meanwhile, and long enough for a
# CURVE handshake (about 2.5 round trips after the accept) over a link with 200 ms each way
# (perf.r9_relay's; 1 s let none through); a client's is how long it waits for a tree's.
SERVER_HANDSHAKE_IVL_MS = 2000
CLIENT_HANDSHAKE_IVL_MS = 5000
MAX_PLAN_BYTES = 1 << 20
# libzmq holds a tcp frame to ZMQ_MAXMSGSIZE as it is on the wire: CURVE wraps each message
# in a MESSAGE command (33 bytes more) and its handshake's INITIATE is some 300 bytes, more
# than a stream socket's limit (a subscription topic). A CURVE endpoint's limit is raised by
# this much; what gets through is held to the real limit by the code that reads it.
CURVE_ROOM = 512


class ListenError(ValueError):
    """A listen address that cannot be served: not tcp://HOST:PORT, or ports out of range."""


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # (_: names that are in use)
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def check_host(host: str, what: str) -> str:
    """`host` as ZeroMQ's tcp transport takes it: a name, an IPv4 address, or an IPv6
    address in brackets (one without them gets them). ValueError for anything else (a user
    name, a port, a space: ZeroMQ would fail to connect, or keep trying for ever)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare)}]"
        except ValueError:
            pass
    elif bare == host and len(host.rstrip(".")) <= 253 and _HOST_NAME.fullmatch(host):
        return host
    raise ValueError(f"{what}: {host!r} is not a host name, an IPv4 address or an IPv6 "
                     "address")


def parse_listen(text: str) -> tuple[str, int]:
    """`tcp://HOST:PORT` -> (host, port); HOST is an address or a name, [v6] in brackets."""
    if not isinstance(text, str) or not text.startswith("tcp://"):
        raise ListenError(f"{text!r}: a listen address is tcp://HOST:PORT (only tcp is "
                          "served remotely, always with CURVE)")
    rest = text[len("tcp://"):]
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ListenError(f"{text!r}: expected tcp://HOST:PORT")
    if host == "*":
        raise ListenError(f"{text!r}: name the interface's address (0.0.0.0 for all)")
    if ":" in host and not host.startswith("["):  # (before a port, IPv6 takes brackets)
        raise ListenError(f"{text!r}: an IPv6 address goes in brackets: tcp://[ADDR]:PORT")
    try:
        host = check_host(host, text)
    except ValueError as exc:
        raise ListenError(str(exc)) from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ListenError(f"{text!r}: port {port} is out of range")
    return host, port


def tcp_endpoints(host: str, port: int, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """{actor: {rpc, pub}}: actor i on PORT + 2i (requests) and PORT + 2i + 1 (stream); the
    metrics actor's `in` (where clients push their latency) on the port after the last pair,
    so that the pairs keep their places whether or not the tree has a metrics actor."""
    last = port + 2 * len(names) - 1 + ("metrics" in names)
    if last > 65535:
        raise ListenError(f"{len(names)} actors need ports {port}-{last}: past 65535")
    out = {n: {"rpc": f"tcp://{host}:{port + 2 * i}", "pub": f"tcp://{host}:{port + 2 * i + 1}"}
           for i, n in enumerate(names)}
    if "metrics" in out:
        out["metrics"]["in"] = f"tcp://{host}:{last}"
    return out


@dataclass(frozen=True)
class ListenPlan:
    """What the root decided and every actor of the tree follows."""

    listen: str
    endpoints: dict[str, dict[str, str]]
    keys_dir: str

    def to_json(self) -> dict[str, Any]:
        return {"listen": self.listen, "endpoints": self.endpoints, "keys_dir": self.keys_dir}

    def connection_table(self, server_public: bytes) -> dict[str, Any]:
        """The connection file's `remote` table."""
        return {"transport": "tcp", "curve": True, "endpoints": self.endpoints,
                "server_key": server_public.decode(), "zap_domain": ZAP_DOMAIN,
                "heartbeat_ms": {"ivl": HEARTBEAT_IVL_MS, "timeout": HEARTBEAT_TIMEOUT_MS,
                                 "ttl": HEARTBEAT_TTL_MS}}


def make_plan(listen: str, names: Sequence[str], keys_dir: Path) -> ListenPlan:
    host, port = parse_listen(listen)
    return ListenPlan(listen, tcp_endpoints(host, port, names), str(keys_dir))


def unbindable(plan: ListenPlan) -> list[str]:
    """The plan's endpoints that cannot be bound now ("tcp://H:P (alpha's rpc): Address
    already in use"), found by binding each as ZeroMQ will (SO_REUSEADDR, so a port left
    in TIME_WAIT is free) and letting it go: a port another process listens on, or an
    address not this host's, refuses the start at once rather than after an actor's
    restarts run out."""
    out = []
    for actor, table in plan.endpoints.items():
        for role, endpoint in table.items():
            host, _, port = endpoint[len("tcp://"):].rpartition(":")
            # (the family ZeroMQ binds in: IPv6 only for an address in brackets, bind_ipv6;
            # a name, `localhost` with an ::1 record first, is bound by its IPv4 address)
            v6 = host.startswith("[")
            try:
                family, kind, proto, _, address = socket.getaddrinfo(
                    host.strip("[]"), int(port), socket.AF_INET6 if v6 else socket.AF_INET,
                    socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
                with socket.socket(family, kind, proto) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(address)
            except OSError as exc:
                out.append(f"{endpoint} ({actor}'s {role}): {exc.strerror or exc}")
    return out


def write_plan(runtime_dir: Path, plan: ListenPlan) -> None:
    path = runtime_dir / LISTEN_FILE
    tmp = path.with_name(f".{LISTEN_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(plan.to_json(), f)
    os.replace(tmp, path)


def remove_plan(runtime_dir: Path) -> None:
    (runtime_dir / LISTEN_FILE).unlink(missing_ok=True)


def read_plan(runtime_dir: Path) -> ListenPlan | None:
    """The tree's plan, or None when the tree does not listen on tcp."""
    try:
        with open(runtime_dir / LISTEN_FILE, "rb") as f:
            data = json.loads(f.read(MAX_PLAN_BYTES))
    except FileNotFoundError:
        return None
    return ListenPlan(data["listen"], data["endpoints"], data["keys_dir"])


# --- sockets ------------------------------------------------------------------------------


def _heartbeats(sock: zmq.Socket, handshake_ivl_ms: int) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
    sock.setsockopt(zmq.HANDSHAKE_IVL, handshake_ivl_ms)


def _room(sock: zmq.Socket) -> None:
    limit = sock.getsockopt(zmq.MAXMSGSIZE)
    if limit >= 0:
        sock.setsockopt(zmq.MAXMSGSIZE, limit + CURVE_ROOM)


REMOTE_RECONNECT_IVL_MS = 100  # a restarted actor is found within this over tcp ...
REMOTE_RECONNECT_IVL_MAX_MS = 2000  # ... and a port that refuses is tried this far apart


def secure_server(sock: zmq.Socket, server: curve.KeyPair, endpoint: str = "") -> None:
    """Make the next bind of `sock` (on `endpoint`) a CURVE server judged by the ZAP
    handler. libzmq takes a socket's options when it binds, so an ipc endpoint bound before
    keeps the NULL mechanism and its limits. Called once per socket."""
    assert server.secret is not None
    _room(sock)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler answering: nobody gets in
    if endpoint.startswith("tcp://["):  # (libzmq's sockets are IPv4 only unless told; a
        sock.setsockopt(zmq.IPV6, 1)    # dual one would name IPv4 peers ::ffff:a.b.c.d)
    _heartbeats(sock, SERVER_HANDSHAKE_IVL_MS)


def secure_client(sock: zmq.Socket, server_key: bytes, client: curve.KeyPair,
                  endpoint: str = "") -> None:
    """Make `sock` a CURVE client of the tree whose `server_key` is given, for its next
    connect (to `endpoint`). Over tcp a tree that is down is tried every
    REMOTE_RECONNECT_IVL_MS (a port forwarded to it accepts and closes each attempt, which
    libzmq counts as a connection made: ipc's 5 ms made some 140 connections a second of
    each socket), and a port that refuses further apart, up to REMOTE_RECONNECT_IVL_MAX_MS."""
    assert client.secret is not None
    _room(sock)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, client.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, client.secret)
    if endpoint.startswith("tcp://["):  # (IPv6 only for an IPv6 address: with it on, a name
        sock.setsockopt(zmq.IPV6, 1)    # with an IPv6 record, localhost's, is tried only so)
    sock.setsockopt(zmq.RECONNECT_IVL, REMOTE_RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, REMOTE_RECONNECT_IVL_MAX_MS)
    _heartbeats(sock, CLIENT_HANDSHAKE_IVL_MS)


@dataclass(frozen=True)
class RemoteTarget:
    """A tree elsewhere, as a client sees it: its tcp endpoints, its public key, and the key
    pair this client proves itself with."""

    endpoints: dict[str, dict[str, str]]
    server_key: bytes
    client: curve.KeyPair
    runtime_dir: str = ""
    epoch: str | None = None

    def endpoint(self, actor: str, kind: str) -> str:
        try:
            return self.endpoints[actor][kind]
        except KeyError:
            raise LookupError(f"the tree's connection file names no actor {actor!r} "
                              f"(it has {', '.join(sorted(self.endpoints))})") from None


def target_from_file(path: str | Path, client: curve.KeyPair | None = None,
                     host: str | None = None) -> RemoteTarget:
    """The tree a connection file (copied from the tree's host) describes, reached over tcp
    with `client` (default: this user's client pair, `moorage keys init`). `host` replaces
    the address the tree bound, for a tree bound to 0.0.0.0 or reached through a forwarded
    port. ValueError or curve.KeyFileError when the file or the key cannot be used: an
    endpoint is taken only as `moorage up --listen` takes an address (tcp://HOST:PORT, a port
    from 1 to 65535), and one that is not is named with the file (else ZeroMQ refuses it
    at the first call, blaming the op, or connects to nothing until the call times out)."""
    from moorage.protocol.client.connection import read_connection_file

    info = read_connection_file(Path(path))
    table = info.get("remote")
    if not isinstance(table, dict) or table.get("transport") != "tcp":
        raise ValueError(f"{path}: this tree does not listen on tcp (start it with "
                         "`moorage up --listen tcp://HOST:PORT`)")
    server_key = curve.decode_public(str(table.get("server_key", "")))
    eps = table.get("endpoints")
    if not isinstance(eps, dict) or not all(
            isinstance(v, dict) and str(v.get("rpc", "")).startswith("tcp://")
            and str(v.get("pub", "")).startswith("tcp://") for v in eps.values()):
        raise ValueError(f"{path}: its remote endpoints are not tcp endpoints")
    for actor, kinds in eps.items():
        for kind, endpoint in kinds.items():
            try:
                parse_listen(endpoint)
            except ListenError as exc:
                why = str(exc).removeprefix(f"{endpoint!r}: ").removeprefix(f"{endpoint}: ")
                raise ValueError(f"{path}: {actor}'s {kind} endpoint {endpoint!r}: {why}") \
                    from None
    if host is not None:
        eps = {n: {k: _with_host(v, host) for k, v in e.items()} for n, e in eps.items()}
    if client is None:
        client = curve.load_pair(curve.keys_dir(), curve.CLIENT)
    return RemoteTarget(eps, server_key, client, str(info.get("runtime_dir", "")),
                        info.get("epoch"))


def _with_host(endpoint: str, host: str) -> str:
    port = endpoint.rpartition(":")[2]
    return f"tcp://{check_host(host, '--host')}:{port}"
