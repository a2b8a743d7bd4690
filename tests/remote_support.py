"""Helpers of the remote-mode tests: key directories made by `moorage keys` as a user makes
them, a block of free tcp ports, a tree listening on tcp (optionally inside a network
namespace), and raw pyzmq peers that try to get in without the right key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import zmq

from moorage.protocol import curve
from moorage.protocol.monitor import recv_event
from perf.tcp_relay import TcpRelay
from tests.conftest import ROOT, Tree

FAKE_TREE = """
[listen]
endpoint = "tcp://{host}:{port}"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "beta"
start = "tests.fakes:FakeActor"
"""
TREE_PORTS = 6  # supervisor, alpha, beta: two ports each
CRATE = ROOT / "protocol" / "rust"


def rust_example(name: str) -> Path:
    """Build protocol/rust's example `name` and give its program. Called before a tree
    starts, so the build's minutes are not the tree's."""
    if shutil.which("cargo") is None:
        pytest.fail("cargo is not installed: the machine's Rust toolchain is needed")
    done = subprocess.run(["cargo", "build", "--locked", "--example", name], cwd=CRATE,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return CRATE / "target" / "debug" / "examples" / name


def keys_cli(keys_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "keys", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, curve.KEYS_ENV: str(keys_dir)})


def make_keys(base: Path) -> tuple[Path, Path, curve.KeyPair]:
    """A tree's keys dir and a client's, each by `moorage keys init`, the client's key
    allowed by the tree's `moorage keys allow`; returns both dirs and the client's pair."""
    server_dir, client_dir = base / "tree-keys", base / "client-keys"
    for d in (server_dir, client_dir):
        out = keys_cli(d, "init")
        assert out.returncode == 0, out.stderr
    client = curve.load_pair(client_dir, curve.CLIENT)
    out = keys_cli(server_dir, "allow", client.public.decode(), "--name", "editor")
    assert out.returncode == 0, out.stderr
    return server_dir, client_dir, client


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """The first of `n` consecutive tcp ports free on `host` right now."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports")


class NetnsTree(Tree):
    """A tree run by `ip netns exec NS moorage up` (the same command otherwise)."""

    def __init__(self, runtime_dir: Path, config: str, netns: str | None) -> None:
        super().__init__(runtime_dir, config)
        self.netns = netns
        self.launcher = ["ip", "netns", "exec", netns] if netns else []

    def connection_file(self) -> dict[str, Any]:
        return json.loads((self.runtime_dir / "tree.json").read_text())


def refused_handshake(ctx: zmq.Context, endpoint: str, server_key: bytes | None,
                      pair: curve.KeyPair | None, timeout_ms: int = 5000,
                      kind: int = zmq.DEALER) -> str:
    """Connect a raw DEALER (CURVE with `pair` when given, plain ZMTP otherwise), send one
    request-sized frame, and say how the tree answered the handshake: "auth" (ZAP refused
    the key), "protocol" (the handshake itself failed), "accepted", or "nothing". With
    `kind` SUB (a stream endpoint), it subscribes to everything instead of sending."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RECONNECT_IVL, 10_000)  # one attempt: a second would count twice
    if pair is not None:
        assert server_key is not None and pair.secret is not None
        s.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        s.setsockopt(zmq.CURVE_PUBLICKEY, pair.public)
        s.setsockopt(zmq.CURVE_SECRETKEY, pair.secret)
    mon = s.get_monitor_socket()
    try:
        s.connect(endpoint)
        if kind == zmq.SUB:
            s.setsockopt(zmq.SUBSCRIBE, b"")
        else:
            # Not blocking: a DEALER with no pipe waits in send, and the tree may refuse the
            # handshake before the send (its pipe then gone until a reconnect 10 s away,
            # refused again): the monitor has said so already.
            with contextlib.suppress(zmq.Again):
                s.send(b"\x00not a request", zmq.NOBLOCK)
        while mon.poll(timeout_ms):
            ev = recv_event(mon)["event"]
            if ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                return "auth"
            if ev in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                return "protocol"
            if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "accepted"
            if ev == zmq.EVENT_DISCONNECTED:
                return "protocol"  # plain ZMTP: the CURVE server drops it mid-greeting
        return "nothing"
    finally:
        s.disable_monitor()
        mon.close(0)
        s.close(0)


class CutRelay(TcpRelay):
    """A tcp relay in front of a tree's ports (port p+i of the relay to port q+i of the
    tree), whose links a test breaks as a network would: `reset()` ends every connection
    with an RST (a middlebox dropping its state), and what the tree sends on the
    connections open at `lose_replies()` is lost on the way (a reply that left the actor and
    never arrived). A new connection after a reset is relayed again."""

    def __init__(self, tree_port: int, n: int) -> None:
        self.base = free_port_block(n)
        self._lossy: set[asyncio.StreamWriter] = set()  # client ends whose replies are lost
        super().__init__([(self.base + i, tree_port + i) for i in range(n)])

    def _lost(self, writer: asyncio.StreamWriter) -> bool:
        return writer in self._lossy

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._lossy.discard(writer)

    def lose_replies(self) -> None:
        """From now on, what the tree sends on the connections open now is lost (until a
        reset ends them); returns once that holds."""
        async def mark() -> None:
            self._lossy |= self.client_ends
        self.run(mark)

    def relayed_file(self, connection_file: Path, tree_port: int, out: Path) -> Path:
        """The tree's connection file with every endpoint moved onto the relay."""
        info = json.loads(connection_file.read_text())
        for eps in info["remote"]["endpoints"].values():
            for kind, ep in eps.items():
                port = int(ep.rpartition(":")[2])
                eps[kind] = f"tcp://127.0.0.1:{port - tree_port + self.base}"
        out.write_text(json.dumps(info))
        return out
