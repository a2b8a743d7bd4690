"""The gatekeeper of an actor's tcp side (actors/runtime/remote.py) on its own: the allow-list
read again whatever changed in it, a ZAP request it cannot answer refused without the
thread going, and `keys revoke` taking every file that allows the key."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from moorage.actors.runtime.remote import ZAP_ENDPOINT, AllowList, Gatekeeper
from moorage.protocol import curve, remote
from tests.remote_support import keys_cli, make_keys

pytestmark = pytest.mark.timeout(60)


def rewrite_in_place(path: Path, pair: curve.KeyPair, scratch: Path) -> None:
    """`path` given `pair`'s public key as an editor saves a file: the same file, new bytes
    (neither the directory's mtime nor its inode change)."""
    curve.write_certificate(scratch, pair, "a replacement")
    data = scratch.read_bytes()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


def test_a_key_file_rewritten_in_place_or_opened_to_others_is_read_again(tmp_path):
    """(The list was read again only when its directory's mtime or inode changed: the key a
    file held before it was rewritten stayed allowed, and one made writable by others was
    still trusted.)"""
    server_dir, _, client = make_keys(tmp_path)
    listed = AllowList(server_dir)
    old = z85.decode(client.public)
    assert set(listed.keys) == {old} and listed.reload() == set()
    new = curve.new_pair()
    rewrite_in_place(server_dir / curve.ALLOWED / "editor.key", new, tmp_path / "x.key")
    assert listed.reload() == {old}
    assert listed.keys == {z85.decode(new.public): "editor"}
    os.chmod(server_dir / curve.ALLOWED / "editor.key", 0o666)
    assert listed.reload() == {z85.decode(new.public)} and listed.keys == {}


def zap_request(key: bytes, rid: bytes) -> list[bytes]:
    return [b"", b"1.0", rid, remote.ZAP_DOMAIN.encode(), b"127.0.0.1", b"", b"CURVE", key]


def test_a_zap_request_that_cannot_be_answered_costs_no_other_and_the_stop_does_not_hang(
        tmp_path):
    """An allowed file whose name is not UTF-8 (only `keys allow` checks names): its key's
    handshake is answered, the next one too, and the gatekeeper stops at once. (Encoding
    the name raised, the thread died: every handshake after it went unanswered, and the
    actor's stop waited for ever on its wake-up.)"""
    server_dir, _, client = make_keys(tmp_path)
    other = curve.new_pair()
    allowed = os.fsencode(server_dir / curve.ALLOWED)
    shutil.copy(server_dir / curve.ALLOWED / "editor.key", tmp_path / "copy.key")
    rewrite_in_place(tmp_path / "copy.key", other, tmp_path / "x.key")
    os.rename(tmp_path / "copy.key", allowed + b"/caf\xe9.key")
    ctx = zmq.Context()
    gate = Gatekeeper(ctx, server_dir, [], lambda: None)
    gate.start()
    asker = ctx.socket(zmq.DEALER)
    asker.setsockopt(zmq.LINGER, 0)
    asker.setsockopt(zmq.RCVTIMEO, 10_000)
    asker.connect(ZAP_ENDPOINT)
    try:
        for rid, key in ((b"1", z85.decode(other.public)), (b"2", z85.decode(client.public))):
            asker.send_multipart(zap_request(key, rid))
            reply = asker.recv_multipart()
            assert reply[2] == rid and reply[3] == b"200", reply
        assert gate.is_alive()
    finally:
        asker.close(0)
        stopper = threading.Thread(target=gate.close, daemon=True)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "the gatekeeper's stop hangs"
        ctx.term()


def test_revoking_a_key_takes_every_file_that_allows_it(tmp_path):
    """(Two files held the key: the revoke took one, said so, and the key stayed allowed.)"""
    server_dir, _, _ = make_keys(tmp_path)
    shutil.copy(server_dir / curve.ALLOWED / "editor.key",
                server_dir / curve.ALLOWED / "laptop.key")
    out = keys_cli(server_dir, "revoke", "laptop")
    assert out.returncode == 0, out.stderr
    assert "editor" in out.stdout and "laptop" in out.stdout, out.stdout
    assert curve.read_allowed(server_dir) == {}


@pytest.mark.parametrize("host, taken", [
    ("devbox", "devbox"), ("dev-box.example.org", "dev-box.example.org"),
    ("my_host.lan.", "my_host.lan."),
    ("10.0.0.7", "10.0.0.7"), ("[::1]", "[::1]"), ("::1", "[::1]"),
    ("me@devbox", None), ("dev box", None), ("devbox:22", None), ("", None),
    ("-devbox", None), ("[devbox]", None), ("a" * 300, None)])
def test_a_host_given_for_a_tree_elsewhere_is_one_zeromq_can_reach(host, taken):
    """(--host me@devbox made a client connect to an endpoint ZeroMQ refused; its socket
    was left open and the command hung at exit.)"""
    if taken is None:
        with pytest.raises(ValueError):
            remote.check_host(host, "--host")
    else:
        assert remote.check_host(host, "--host") == taken


def test_a_curve_server_on_an_ipv6_address_answers_a_client(tmp_path):
    """(An IPv6 listen address passed the checks and then could not be bound: libzmq's
    sockets are IPv4 only unless told otherwise, on both ends.)"""
    server_dir, client_dir, _ = make_keys(tmp_path)
    host, _ = remote.parse_listen("tcp://[::1]:1")
    ctx = zmq.Context()
    gate = Gatekeeper(ctx, server_dir, [], lambda: None)
    gate.start()
    server = ctx.socket(zmq.ROUTER)
    asker = ctx.socket(zmq.DEALER)
    try:
        remote.secure_server(server, curve.load_pair(server_dir, curve.SERVER),
                             f"tcp://{host}:0")
        port = server.bind_to_random_port(f"tcp://{host}")
        remote.secure_client(asker, curve.load_pair(server_dir, curve.SERVER).public,
                             curve.load_pair(client_dir, curve.CLIENT), f"tcp://{host}:{port}")
        asker.connect(f"tcp://{host}:{port}")
        asker.send(b"hello")
        assert server.poll(10_000), "nothing came over IPv6"
        assert server.recv_multipart()[1] == b"hello"
    finally:
        for sock in (server, asker):
            sock.close(0)
        gate.close()
        ctx.term()


def test_a_remote_client_tries_a_tree_that_is_down_ten_times_a_second(tmp_path):
    """A port that accepts and closes each connection (forwarded to a tree that is down):
    the client tries it every 100 ms. (At ipc's 5 ms each socket made some 140 connections a
    second for as long as it lived.)"""
    import socket as so
    import time

    from moorage.protocol.client import Client
    from moorage.protocol.errors import MoorageError

    listener = so.socket(so.AF_INET, so.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    accepted = 0
    stop = threading.Event()

    def accept_and_close() -> None:
        nonlocal accepted
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted += 1
            conn.close()

    acceptor = threading.Thread(target=accept_and_close, daemon=True)
    acceptor.start()
    server = curve.new_pair()
    target = remote.RemoteTarget(
        {"alpha": {"rpc": f"tcp://127.0.0.1:{port}", "pub": f"tcp://127.0.0.1:{port}"}},
        server.public, curve.new_pair())
    try:
        with Client(remote=target, learn_ops=False, timeout=2.0) as c:
            started = time.monotonic()
            with pytest.raises(MoorageError):
                c.call("alpha", "sys.ping", idempotent=True)
            took = time.monotonic() - started
    finally:
        stop.set()
        acceptor.join(10)
        listener.close()
    # one each 100 ms: about 20 in the call's 2 s, fewer on a slow machine
    assert 1 <= accepted <= 30, (accepted, took)


def test_a_client_socket_is_made_ipv6_only_for_an_ipv6_address():
    """(With ZMQ_IPV6 on, libzmq tries a name's IPv6 address first: localhost's is ::1 on
    most systems, where a tree bound on 127.0.0.1 is not.)"""
    ctx = zmq.Context()
    try:
        for endpoint, want in (("tcp://127.0.0.1:9", 0), ("tcp://localhost:9", 0),
                               ("tcp://[::1]:9", 1)):
            sock = ctx.socket(zmq.DEALER)
            remote.secure_client(sock, curve.new_pair().public, curve.new_pair(), endpoint)
            assert sock.getsockopt(zmq.IPV6) == want, endpoint
            sock.close(0)
    finally:
        ctx.term()
