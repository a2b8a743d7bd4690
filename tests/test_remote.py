"""Remote mode on real trees listening on loopback tcp (R11): the keys CLI and its file modes,
a tree that refuses to start on unsafe keys or a bad address, an allowed client calling and
following a stream from a copied connection file and finding a restarted actor again, and
every way in without the right key (plain ZMTP, an unknown key, the wrong server key, a
revoked key) refused before any request reaches an actor, 1,000 times over without the
actor's memory growing."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq

from moorage.protocol import curve
from moorage.protocol.client import Client
from moorage.protocol.client.aio import AsyncClient
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.conftest import ROOT, kill_instance
from tests.remote_support import (
    FAKE_TREE,
    TREE_PORTS,
    NetnsTree,
    free_port_block,
    keys_cli,
    make_keys,
    refused_handshake,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, curve.KeyPair]:
    server_dir, client_dir, client = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))  # the tree's, as `up` reads it
    return server_dir, client_dir, client


def loopback_tree(runtime_dir: Path, config: str, ports: int) -> Iterator[NetnsTree]:
    """`config` (a TOML with {host} and {port}) started on a free block of `ports` ports."""
    port = free_port_block(ports)
    tree = NetnsTree(runtime_dir, config.format(host="127.0.0.1", port=port), None)
    try:
        tree.start()
        yield tree
    finally:
        tree.stop()


@pytest.fixture
def tcp_tree(runtime_dir: Path, keys: tuple) -> Iterator[NetnsTree]:
    yield from loopback_tree(runtime_dir, FAKE_TREE, TREE_PORTS)


def info(tree: NetnsTree, actor: str) -> dict:
    return tree.call(actor, "sys.info")


METRICS_TREE = FAKE_TREE + """
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
"""


@pytest.fixture
def metrics_tcp_tree(runtime_dir: Path, keys: tuple) -> Iterator[NetnsTree]:
    """The fake tree with a metrics actor on loopback tcp: metrics' `in` after every pair."""
    yield from loopback_tree(runtime_dir, METRICS_TREE, TREE_PORTS + 3)


def pushed_row(tree: NetnsTree, client: str, what: str, count: int) -> dict:
    """The metrics actor's row of `client.<client>` for `what` (actor/op), once pushes have
    brought it `count` calls (a timed push may come between a client's calls: an earlier
    row holds fewer)."""
    def row() -> dict | None:
        got = {r["op"]: r for r in tree.call(
            "metrics", "metrics.query", {"actor": f"client.{client}"})["ops"]}.get(what)
        return got if got is not None and got["lifetime"]["count"] >= count else None
    return wait_for(row, f"client.{client}'s pushed row {what} with {count} calls", 30)


def test_keys_init_allow_revoke_and_list_keep_every_file_private(tmp_path: Path) -> None:
    server_dir, _, client = make_keys(tmp_path)
    assert stat.S_IMODE(server_dir.stat().st_mode) == 0o700
    for p in [*server_dir.iterdir(), *(server_dir / "allowed").iterdir()]:
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    listed = json.loads(keys_cli(server_dir, "list", "--json").stdout)
    assert listed["allowed"] == {"editor": client.public.decode()}
    assert listed["server"] == curve.load_pair(server_dir, curve.SERVER).public.decode()
    # init again makes nothing new; a malformed key is refused with the reason
    again = json.loads(keys_cli(server_dir, "init").stdout)
    assert again["made"] == [] and again["server"] == listed["server"]
    bad = keys_cli(server_dir, "allow", "not-a-key")
    assert bad.returncode == 2 and "40 Z85 characters" in bad.stderr
    out = keys_cli(server_dir, "revoke", "editor")
    assert out.returncode == 0, out.stderr
    assert json.loads(keys_cli(server_dir, "list", "--json").stdout)["allowed"] == {}
    assert keys_cli(server_dir, "revoke", "editor").returncode == 2  # (none there: bad input)


def test_keys_allow_and_revoke_in_a_keys_dir_open_to_others_say_so(tmp_path: Path) -> None:
    server_dir, _, client = make_keys(tmp_path)
    os.chmod(server_dir / "allowed", 0o755)
    for args in (("revoke", "editor"), ("allow", client.public.decode())):
        out = keys_cli(server_dir, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert "chmod 700" in out.stderr and "this is a bug" not in out.stderr, out.stderr
    assert (server_dir / "allowed" / "editor.key").exists()


def test_a_key_that_starts_with_a_dash_is_allowed_and_revoked_like_any_other(
        tmp_path: Path) -> None:
    """'-' is a Z85 character: a key starting with it must not be read as an option."""
    server_dir, _, _ = make_keys(tmp_path)
    key = next(pub.decode() for pub, _ in iter(zmq.curve_keypair, None)
               if pub.startswith(b"-"))
    out = keys_cli(server_dir, "allow", key, "--name", "dash")
    assert out.returncode == 0, out.stderr
    assert json.loads(keys_cli(server_dir, "list", "--json").stdout)["allowed"]["dash"] == key
    out = keys_cli(server_dir, "revoke", key)
    assert out.returncode == 0, out.stderr
    assert "dash" not in json.loads(keys_cli(server_dir, "list", "--json").stdout)["allowed"]


def _up_fails(runtime_dir: Path, keys_dir: Path, listen: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(runtime_dir),
         "up", "--listen", listen], capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, curve.KEYS_ENV: str(keys_dir)})
    assert out.returncode == 2, out
    line = json.loads(out.stdout)
    assert line["moorage"] == "failed" and line["error"]["name"] == "bad_config", line
    assert not (runtime_dir / "tree.json").exists()
    return line


def test_up_refuses_to_listen_on_keys_others_can_read_or_on_a_bad_address(
        runtime_dir: Path, tmp_path: Path) -> None:
    server_dir, _, _ = make_keys(tmp_path)
    port = free_port_block(TREE_PORTS)
    secret = server_dir / "server.key_secret"
    os.chmod(secret, 0o640)
    msg = _up_fails(runtime_dir, server_dir, f"tcp://127.0.0.1:{port}")["error"]["message"]
    assert str(secret) in msg and "chmod 600" in msg
    os.chmod(secret, 0o600)
    os.chmod(server_dir, 0o755)
    assert "chmod 700" in _up_fails(runtime_dir, server_dir,
                                    f"tcp://127.0.0.1:{port}")["error"]["message"]
    os.chmod(server_dir, 0o700)
    assert "tcp://HOST:PORT" in _up_fails(runtime_dir, server_dir,
                                          "ipc:///tmp/x")["error"]["message"]
    shutil.rmtree(server_dir)
    assert "moorage keys init" in _up_fails(runtime_dir, server_dir,
                                            f"tcp://127.0.0.1:{port}")["error"]["message"]


def test_up_refuses_at_once_a_port_of_its_plan_another_process_listens_on(
        runtime_dir: Path, tmp_path: Path, keys: tuple) -> None:
    """Not after beta's restarts run out (exit 3, "the tree gave up"): the endpoint, whose
    it is and why, exit 1, nothing started and no plan or connection file left."""
    port = free_port_block(TREE_PORTS)
    cfg = tmp_path / "tree.toml"
    cfg.write_text(FAKE_TREE.format(host="127.0.0.1", port=port))
    with socket.socket() as other:
        other.bind(("127.0.0.1", port + 4))  # (beta's rpc: supervisor, alpha, beta)
        other.listen()
        try:
            out = subprocess.run(
                [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                 str(runtime_dir), "up", "--allow-external-actors", "--config", str(cfg)],
                capture_output=True, text=True, cwd=ROOT, timeout=90)
        finally:
            kill_instance(runtime_dir)
    error = json.loads(out.stdout)["error"]
    assert out.returncode == 1 and error["name"] == "start_failed", (out.returncode, error)
    assert f"tcp://127.0.0.1:{port + 4} (beta's rpc)" in error["message"], error
    assert "in use" in error["message"] and "gave up" not in error["message"], error
    assert not (runtime_dir / "tree.json").exists() and not (runtime_dir / "listen.json").exists()


IN_NAMESPACE = """
import json, socket, subprocess, sys
subprocess.run(["mount", "--bind", sys.argv[1], "/etc/hosts"], check=True)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
other = socket.socket()
other.bind(("127.0.0.1", int(sys.argv[2])))
other.listen()
out = subprocess.run(sys.argv[3:], capture_output=True, text=True, timeout=90)
print(json.dumps([out.returncode, out.stdout]))
"""


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs unshare and ip (util-linux, iproute2)")
def test_the_port_probe_binds_a_name_in_the_family_zeromq_binds_it_in(
        runtime_dir: Path, tmp_path: Path, keys: tuple) -> None:
    """`localhost` with its ::1 record first (Debian's /etc/hosts): ZeroMQ binds a name by
    its IPv4 address, so beta's port held there by another process is the refusal, not a
    probe of ::1 that finds it free and a tree that gives up (a network and mount namespace
    of the test's own, with that /etc/hosts)."""
    port = free_port_block(TREE_PORTS)
    cfg = tmp_path / "tree.toml"
    cfg.write_text(FAKE_TREE.format(host="localhost", port=port))
    hosts = tmp_path / "hosts"
    hosts.write_text("::1\tlocalhost ip6-localhost\n127.0.0.1\tlocalhost\n")
    up = [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(runtime_dir),
          "up", "--allow-external-actors", "--config", str(cfg)]
    try:
        out = subprocess.run(["unshare", "-rmn", sys.executable, "-c", IN_NAMESPACE,
                              str(hosts), str(port + 4), *up],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    finally:
        kill_instance(runtime_dir)
    assert out.returncode == 0, out.stderr
    code, line = json.loads(out.stdout)
    error = json.loads(line)["error"]
    assert code == 1 and error["name"] == "start_failed", (code, error)
    assert f"tcp://localhost:{port + 4} (beta's rpc)" in error["message"], error


def test_an_allowed_client_calls_and_follows_a_stream_from_a_copied_connection_file(
        tcp_tree: NetnsTree, keys: tuple, tmp_path: Path) -> None:
    server_dir, _, client_pair = keys
    text = (tcp_tree.runtime_dir / "tree.json").read_text()
    table = json.loads(text)["remote"]
    assert table["transport"] == "tcp" and table["curve"] is True
    assert table["server_key"] == curve.load_pair(server_dir, curve.SERVER).public.decode()
    assert curve.load_pair(server_dir, curve.SERVER).secret.decode() not in text
    # the editor's machine: a copy of the file, no lock, no runtime dir
    copied = tmp_path / "elsewhere" / "tree.json"
    copied.parent.mkdir()
    copied.write_text(text)
    with Client.remote(copied, client_keys=client_pair, timeout=10.0) as c:
        assert c.call("alpha", "fake.work")["done"] == 1
        sub = c.subscribe("beta", ["t"])
        wait_for(lambda: c.call("beta", "sys.info")["subscriptions"]["applied"] >= 1,
                 "beta's subscription over tcp", 10)
        c.call("beta", "fake.publish", {"topic": "t", "n": 5, "size": 3})
        got = []
        while len(got) < 5:
            ev = sub.next(timeout=10)
            assert ev is not None, f"stream stopped after {got}"
            if isinstance(ev, StreamMessage):
                got.append(ev.body["i"])
        assert got == [0, 1, 2, 3, 4]
        remote = c.call("alpha", "sys.info")["remote"]
        assert remote["accepted"] >= 1 and remote["refused"] == {}

    async def async_calls(keys: curve.KeyPair) -> int | str:
        async with AsyncClient.remote(copied, client_keys=keys, timeout=60.0) as ac:
            try:
                return (await ac.call("alpha", "fake.work"))["done"]
            except MoorageError as exc:
                assert f"moorage keys allow '{keys.public.decode()}'" in exc.error.message, exc
                assert not exc.error.retryable
                # ended on the refusal, not at its 60 s deadline
                assert "no reply: the tree refused this client's key" in exc.error.message
                assert "no reply in" not in exc.error.message
                return exc.error.name

    assert asyncio.run(async_calls(client_pair)) == 2  # the asyncio client, the same way
    assert asyncio.run(async_calls(curve.new_pair())) == "unauthorized"

    # A restarted actor binds the same ports: a remote client finds its successor
    with Client.remote(copied, client_keys=client_pair, timeout=10.0) as c:
        pid = c.call("alpha", "sys.info")["pid"]
        assert tcp_tree.cli("kill", "alpha").returncode == 0
        wait_for(lambda: c.call("alpha", "sys.info")["pid"] != pid,
                 "alpha's successor answering over tcp", 20)
        assert c.call("alpha", "fake.work")["done"] == 1


def test_the_cli_drives_a_tree_elsewhere_from_a_copied_connection_file_and_a_key_pair(
        tcp_tree: NetnsTree, keys: tuple, tmp_path: Path) -> None:
    """`moorage --connection FILE --keys DIR` gets status and a call answered over tcp and
    CURVE (no tree runs in this host's instance dir); a key the tree never allowed exits
    non-zero with `unauthorized` and the command that allows it; a command that needs the
    tree's host (down) refuses --connection and leaves the tree running."""
    _, client_dir, _ = keys
    copied = tmp_path / "elsewhere" / "tree.json"
    copied.parent.mkdir()
    copied.write_text((tcp_tree.runtime_dir / "tree.json").read_text())
    here = tmp_path / "no-tree-here"  # this host's instance: nothing runs there

    def moorage(keys_dir: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "moorage.supervisor.cli", *args, "--connection",
             str(copied), "--keys", str(keys_dir)], capture_output=True, text=True,
            cwd=ROOT, timeout=60, env={**os.environ, "MOORAGE_RUNTIME_DIR": str(here)})

    out = moorage(client_dir, "status", "--json")
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["runtime_dir"] == str(tcp_tree.runtime_dir)
    assert {c["id"]: c["state"] for c in status["children"]} == {
        "alpha": "running", "beta": "running"}
    out = moorage(client_dir, "call", "alpha", "fake.work")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["done"] == 1

    stranger = tmp_path / "stranger-keys"
    assert keys_cli(stranger, "init").returncode == 0
    key = curve.load_pair(stranger, curve.CLIENT).public.decode()
    # (the CLI finds alpha in the connection file, and asks it alone: the refused call)
    refused = info(tcp_tree, "alpha")["remote"]["refused"].get("unknown_key", 0)
    out = moorage(stranger, "--timeout", "2", "call", "alpha", "sys.ping")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "unauthorized (118)" in out.stderr and f"moorage keys allow '{key}'" in out.stderr
    assert "Traceback" not in out.stderr
    assert info(tcp_tree, "alpha")["remote"]["refused"]["unknown_key"] > refused

    out = moorage(client_dir, "down")
    assert out.returncode == 2 and "this host's trees only" in out.stderr, out.stderr
    assert info(tcp_tree, "alpha")["remote"]["accepted"] >= 1  # still up


def test_no_key_unknown_key_wrong_server_key_and_revoked_key_never_reach_an_actor(
        tcp_tree: NetnsTree, keys: tuple) -> None:
    server_dir, _, client_pair = keys
    table = tcp_tree.connection_file()["remote"]
    endpoint = table["endpoints"]["alpha"]["rpc"]
    server_key = table["server_key"].encode()
    ctx = zmq.Context()
    try:
        base = info(tcp_tree, "alpha")["received"]
        per_info = info(tcp_tree, "alpha")["received"] - base  # what a sys.info adds
        assert refused_handshake(ctx, endpoint, None, None) in ("protocol", "nothing")
        stranger = curve.new_pair()
        assert refused_handshake(ctx, endpoint, server_key, stranger) == "auth"
        assert refused_handshake(ctx, endpoint, curve.new_pair().public,
                                 client_pair) == "protocol"
        after = info(tcp_tree, "alpha")
        assert after["received"] == base + 2 * per_info, "a refused peer's frame got in"
        refused = after["remote"]["refused"]
        assert refused.get("unknown_key") == 1, refused
        # The two handshakes that fail before a key is looked at (plain ZMTP, a wrong server
        # key) count as "protocol", or as "handshake" (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        # where the client, done, closed before the server's verdict; the server counts them
        # as its monitor reads them.
        wait_for(lambda: sum(info(tcp_tree, "alpha")["remote"]["refused"].get(k, 0)
                             for k in ("protocol", "handshake")) >= 1,
                 "the failed handshakes counted", 10)

        # Revoked: the allowed client is in, then its key goes; its connection is closed
        # and it cannot come back.
        with Client.remote(tcp_tree.runtime_dir / "tree.json", client_keys=client_pair,
                           timeout=10.0) as c:
            assert c.call("alpha", "sys.ping")
            out = keys_cli(server_dir, "revoke", "editor")
            assert out.returncode == 0, out.stderr
            wait_for(lambda: info(tcp_tree, "alpha")["remote"]["rebinds"] >= 1,
                     "alpha closing the revoked key's connections", 10)
            before = info(tcp_tree, "alpha")["received"]
            with pytest.raises(MoorageError) as err:
                c.call("alpha", "fake.work", timeout=60.0)
            assert err.value.error.name == "unauthorized"
            # ended on the refusal, not at its 60 s deadline
            assert "no reply: the tree refused this client's key" in err.value.error.message
            assert f"moorage keys allow '{client_pair.public.decode()}'" \
                in err.value.error.message
            assert info(tcp_tree, "alpha")["received"] == before + per_info
            assert info(tcp_tree, "alpha")["remote"]["refused"]["unknown_key"] >= 2
        log = "\n".join(p.read_text(errors="replace")
                        for p in (tcp_tree.state_dir / "logs").glob("*.log"))
        assert "refused a tcp client from 127.0.0.1" in log
        assert "revoked: closing their connections" in log
    finally:
        ctx.destroy(linger=0)


def before_zap(tree: NetnsTree, actor: str) -> int:
    """Handshakes `actor` refused before ZAP was asked (libzmq says `protocol` or, for
    some, `handshake`)."""
    r = info(tree, actor)["remote"]["refused"]
    return r.get("protocol", 0) + r.get("handshake", 0)


def refused_before_zap(ctx: zmq.Context, tree: NetnsTree, actor: str, endpoint: str,
                       client_pair: curve.KeyPair, kind: int) -> int:
    """Plain ZMTP, then a wrong server key, at `endpoint` (one of `actor`'s tcp sockets):
    each refused and counted by `actor` before ZAP is asked; returns the count after."""
    base = before_zap(tree, actor)
    assert refused_handshake(ctx, endpoint, None, None, kind=kind) in ("protocol", "nothing")
    wait_for(lambda: before_zap(tree, actor) == base + 1,
             f"{actor} counting a plain ZMTP peer of {endpoint}", 10)
    assert refused_handshake(ctx, endpoint, curve.new_pair().public, client_pair,
                             kind=kind) == "protocol"
    wait_for(lambda: before_zap(tree, actor) == base + 2,
             f"{actor} counting a wrong server key at {endpoint}", 10)
    return base + 2


def test_a_failed_handshake_on_the_stream_socket_is_counted_as_on_the_request_socket(
        tcp_tree: NetnsTree, keys: tuple) -> None:
    """Plain ZMTP and a wrong server key at an actor's tcp stream endpoint (its XPUB) are
    refused before ZAP is asked, and counted in sys.info's remote.refused like the request
    socket's; a ZAP refusal there is counted once, as unknown_key."""
    _, _, client_pair = keys
    table = tcp_tree.connection_file()["remote"]
    endpoint = table["endpoints"]["beta"]["pub"]
    server_key = table["server_key"].encode()

    ctx = zmq.Context()
    try:
        unknown = info(tcp_tree, "beta")["remote"]["refused"].get("unknown_key", 0)
        counted = refused_before_zap(ctx, tcp_tree, "beta", endpoint, client_pair, zmq.SUB)
        assert refused_handshake(ctx, endpoint, server_key, curve.new_pair(),
                                 kind=zmq.SUB) == "auth"
        wait_for(lambda: info(tcp_tree, "beta")["remote"]["refused"].get(
            "unknown_key", 0) == unknown + 1, "beta counting a refused key at its stream socket",
            10)
        assert before_zap(tcp_tree, "beta") == counted  # the ZAP refusal: counted by ZAP
    finally:
        ctx.destroy(linger=0)
    log = "\n".join(p.read_text(errors="replace")
                    for p in (tcp_tree.state_dir / "logs").glob("beta*.log"))
    assert f"refused a tcp client at {endpoint} (whose: libzmq does not say)" in log


def test_a_thousand_refused_handshakes_do_not_grow_the_actors_memory(
        tcp_tree: NetnsTree, capsys: pytest.CaptureFixture) -> None:
    table = tcp_tree.connection_file()["remote"]
    endpoint = table["endpoints"]["alpha"]["rpc"]
    server_key = table["server_key"].encode()
    proc = psutil.Process(info(tcp_tree, "alpha")["pid"])
    ctx = zmq.Context()
    try:
        # Warm-up: libzmq's and the allocator's pools fill over the first thousand or so
        # (measured: +0.5 MiB over the first 1,000, +12 KiB over each 1,000 after it).
        for _ in range(1000):
            assert refused_handshake(ctx, endpoint, server_key, curve.new_pair()) == "auth"
        rss0 = proc.memory_info().rss
        for _ in range(1000):
            assert refused_handshake(ctx, endpoint, server_key, curve.new_pair()) == "auth"
        rss1 = proc.memory_info().rss
    finally:
        ctx.destroy(linger=0)
    refused = info(tcp_tree, "alpha")["remote"]["refused"]["unknown_key"]
    with capsys.disabled():
        print(f"\n1,000 refused handshakes: alpha RSS {rss0 / 2**20:.2f} -> "
              f"{rss1 / 2**20:.2f} MiB ({(rss1 - rss0) / 1024:+.0f} KiB); refused {refused}")
    assert refused == 2000
    assert rss1 - rss0 < 512 * 1024, (rss0, rss1)


def test_a_remote_client_pushes_its_latency_over_tcp_and_a_strangers_push_is_refused(
        metrics_tcp_tree: NetnsTree, keys: tuple, tmp_path: Path) -> None:
    _, _, client_pair = keys
    tree = metrics_tcp_tree
    copied = tmp_path / "elsewhere" / "tree.json"
    copied.parent.mkdir()
    copied.write_text((tree.runtime_dir / "tree.json").read_text())
    endpoints = json.loads(copied.read_text())["remote"]["endpoints"]
    base = int(endpoints["supervisor"]["rpc"].rpartition(":")[2])
    assert endpoints["metrics"]["in"] == f"tcp://127.0.0.1:{base + TREE_PORTS + 2}"
    with Client.remote(copied, client_keys=client_pair, timeout=10.0,
                       metrics_name="editor", metrics_interval=0.1) as c:
        for _ in range(20):
            c.call("alpha", "fake.work")
        # no explicit push: the pusher's thread sends within an interval, over tcp
        assert pushed_row(tree, "editor", "alpha/fake.work", 20)["lifetime"]["count"] == 20
    refused = info(tree, "metrics")["remote"]["refused"].get("unknown_key", 0)
    # (a long deadline: the call ends on the refusal, which a loaded machine may take
    # more than a second to make)
    with Client.remote(copied, client_keys=curve.new_pair(), timeout=30.0,
                       metrics_name="stranger", metrics_interval=60) as s:
        with pytest.raises(MoorageError) as caught:
            s.call("alpha", "sys.ping")
        assert caught.value.error.name == "unauthorized"
        # handed to ZeroMQ, or kept when the refusal already left the socket no peer
        s.push_latency()
        assert s.core.pusher is not None and s.core.pusher.sent + s.core.pusher.deferred == 1
        wait_for(lambda: info(tree, "metrics")["remote"]["refused"].get(
            "unknown_key", 0) > refused, "the stranger's push refused", 20)
    assert tree.call("metrics", "metrics.query", {"actor": "client.stranger"})["ops"] == []


def test_a_failed_handshake_on_the_metrics_actors_tcp_in_is_counted(
        metrics_tcp_tree: NetnsTree, keys: tuple) -> None:
    """Plain ZMTP and a wrong server key at metrics' tcp `in` (its PULL, bound after the
    gatekeeper started) are refused before ZAP is asked and counted as the request socket's
    are; a push through it never reaches the table."""
    _, _, client_pair = keys
    tree = metrics_tcp_tree
    endpoint = tree.connection_file()["remote"]["endpoints"]["metrics"]["in"]
    received = info(tree, "metrics")["received_pushes"]
    ctx = zmq.Context()
    try:
        refused_before_zap(ctx, tree, "metrics", endpoint, client_pair, zmq.PUSH)
    finally:
        ctx.destroy(linger=0)
    assert info(tree, "metrics")["received_pushes"] == received
