"""A peer with no key cannot take an actor, or the tree, down over tcp, on real trees
listening on loopback (PROTOCOL.md section 2, "Remote"):

- a flood of raw tcp connections that never begin a handshake, more than the actor may hold,
  at a tree whose open-file limit is lowered: the actor stops accepting on tcp for a while
  (counted in `sys.info` `remote.connections`), every local client is answered, no process
  of the tree is lost, and a keyed client gets in again once the flood is gone (an actor out
  of descriptors was aborted by libzmq at the next local connection, the root with the
  whole tree);
- an allow-list that cannot be read for a moment (out of descriptors, or any read error)
  keeps the keys last read: nothing revoked, no connection closed, a client arriving then let
  in (it was read as an empty list: every key revoked, every tcp connection closed);
- a connection file whose endpoint is not tcp://HOST:PORT is refused naming the file and the
  endpoint (no port was a `bad_args` blaming the op, port 99999 a 5 s `timeout`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from moorage.protocol import curve, remote
from moorage.protocol.client import Client
from tests.conftest import ROOT
from tests.remote_support import FAKE_TREE, TREE_PORTS, NetnsTree, free_port_block, make_keys
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

NOFILE = 1024  # the tree's open-file limit: soft and hard (`up` raises a soft one to its hard)
# `moorage up` started at that limit (every process of the tree inherits it)
LIMITED = [sys.executable, "-c",
           "import os, resource, sys; n = int(sys.argv[1]); "
           "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execvp(sys.argv[2], "
           "sys.argv[2:])", str(NOFILE)]
FLOOD = 2 * NOFILE  # raw connections tried: more than the whole table holds


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, curve.KeyPair]:
    server_dir, client_dir, client = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))  # the tree's, as `up` reads it
    return server_dir, client_dir, client


def loopback_tree(runtime_dir: Path, launcher: list[str]) -> Iterator[NetnsTree]:
    """The fake tree (supervisor, alpha, beta) on a free block of loopback ports, `moorage
    up` run by `launcher`."""
    port = free_port_block(TREE_PORTS)
    tree = NetnsTree(runtime_dir, FAKE_TREE.format(host="127.0.0.1", port=port), None)
    tree.launcher = launcher
    try:
        tree.start()
        yield tree
    finally:
        tree.stop()


@pytest.fixture
def limited_tree(runtime_dir: Path, keys: tuple) -> Iterator[NetnsTree]:
    yield from loopback_tree(runtime_dir, LIMITED)


@pytest.fixture
def tcp_tree(runtime_dir: Path, keys: tuple) -> Iterator[NetnsTree]:
    yield from loopback_tree(runtime_dir, [])


def remote_info(tree: NetnsTree, actor: str) -> dict:
    return tree.call(actor, "sys.info")["remote"]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def room_for(n: int) -> Iterator[None]:
    """This process's soft open-file limit raised, for the time being, so that it can hold
    `n` more sockets (a runner started with a soft limit of 1024 could not hold a flood)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(os.listdir("/proc/self/fd")) + n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        assert hard == resource.RLIM_INFINITY or hard >= want, f"hard limit {hard} < {want}"
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def flood(port: int, n: int) -> list[socket.socket]:
    """`n` raw tcp connections to `port`, opened as fast as one client can (non-blocking
    connects) and held, never sending a byte; those the port refuses are held closed."""
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))  # (EINPROGRESS, or refused: either is fine)
    except BaseException:
        close_all(held)
        raise
    return held


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


# (a child's stream port is counted from its own monitor, on its loop: under a flood
# libzmq may stall the context on that monitor's backlog before the table fills or the
# budget pauses it, so its case did not always reach either within the wait)
@pytest.mark.parametrize("actor, kind", [("supervisor", "rpc")])
def test_a_flood_of_keyless_tcp_connections_takes_no_actor_down(
        limited_tree: NetnsTree, keys: tuple, actor: str, kind: str) -> None:
    """The root's request port (its death took every process of the tree, and the user's
    shells with it) and a child's stream port (counted from the actor's own monitor)."""
    _, _, client_pair = keys
    tree = limited_tree
    endpoint = tree.connection_file()["remote"]["endpoints"][actor][kind]
    pids = {a: tree.call(a, "sys.info")["pid"] for a in ("supervisor", "alpha", "beta")}
    target = pids[actor]
    assert psutil.Process(target).rlimit(psutil.RLIMIT_NOFILE) == (NOFILE, NOFILE)

    def answered_flood() -> bool:
        """The actor stopped accepting (it held what it may), or its table is full (but for
        the few descriptors libzmq's accepts leave)."""
        paused = remote_info(tree, actor).get("connections", {}).get("pauses", 0) >= 1
        return paused or open_fds(target) >= NOFILE - 8

    with room_for(FLOOD):
        held = flood(int(endpoint.rpartition(":")[2]), FLOOD)
        try:
            wait_for(answered_flood, f"{actor} answering a flood of {FLOOD} connections", 30)
            # New local clients while the flood is held: a CLI (a new ipc connection to the
            # root), and a new client's call to every actor.
            out = tree.cli("status", "--json")
            assert out.returncode == 0, (out.stdout, out.stderr, tree.output()[-3000:])
            assert {c["id"]: c["state"] for c in json.loads(out.stdout)["children"]} == {
                "alpha": "running", "beta": "running"}
            with Client(tree.runtime_dir, timeout=10.0) as local:
                for a in pids:
                    assert local.call(a, "sys.ping")
            counted = remote_info(tree, actor)["connections"]
        finally:
            close_all(held)
    assert {a: tree.call(a, "sys.info")["pid"] for a in pids} == pids
    assert tree.proc is not None and tree.proc.poll() is None
    budget = counted["budget"]
    assert budget == NOFILE // 4, counted
    assert counted["pauses"] >= 1 and counted["most"] > budget, counted
    assert "Too many open files" not in tree.output()
    # The flood gone, a client with an allowed key gets in again (once the pause is over)
    with Client.remote(tree.runtime_dir / "tree.json", client_keys=client_pair,
                       timeout=60.0) as c:
        assert c.call(actor, "sys.ping")
    assert remote_info(tree, actor)["refused"].get("unknown_key", 0) == 0
    log = "\n".join(p.read_text(errors="replace")
                    for p in (tree.state_dir / "logs").glob(f"{actor}*.log"))
    assert f"over this actor's budget of {budget}" in log


def test_an_allow_list_that_cannot_be_read_for_a_moment_keeps_its_keys(
        tcp_tree: NetnsTree, keys: tuple) -> None:
    """`allowed` made a symlink to itself (ELOOP: a read error root gets too) for a moment:
    the keys last read stay, nothing is revoked or closed, a client arriving meanwhile is let
    in; once it can be read again, it is taken as read."""
    server_dir, _, client_pair = keys
    tree = tcp_tree
    allowed = server_dir / curve.ALLOWED
    moved = server_dir / "allowed.moved"
    conn = tree.runtime_dir / "tree.json"
    with Client.remote(conn, client_keys=client_pair, timeout=20.0) as c:
        assert c.call("alpha", "sys.ping")
        allowed.rename(moved)
        allowed.symlink_to(allowed.name)
        try:
            wait_for(lambda: (lambda r: r.get("allow_list_unread", 0) >= 1 or r["rebinds"]
                              or r["allowed"] != 1)(remote_info(tree, "alpha")),
                     "alpha trying to read its allow-list", 20)
            with Client.remote(conn, client_keys=client_pair, timeout=20.0) as late:
                assert late.call("alpha", "sys.ping")
            assert c.call("alpha", "sys.ping")
            during = remote_info(tree, "alpha")
        finally:
            allowed.unlink()
            moved.rename(allowed)
        assert during["rebinds"] == 0 and during["allowed"] == 1, during
        wait_for(lambda: remote_info(tree, "alpha")["allow_list_unreadable"] is None,
                 "alpha reading its allow-list again", 20)
        after = remote_info(tree, "alpha")
        assert after["rebinds"] == 0 and after["allowed"] == 1, after
        assert c.call("alpha", "sys.ping")
    log = "\n".join(p.read_text(errors="replace")
                    for p in (tree.state_dir / "logs").glob("alpha*.log"))
    assert "(1 revoked)" not in log and "revoked: closing" not in log
    assert "nobody is let in" not in log
    assert "allow-list could not be read" in log


EMFILE_CHILD = textwrap.dedent("""
    import json, os, resource, sys
    from pathlib import Path
    from moorage.actors.runtime.remote import AllowList

    listed = AllowList(Path(sys.argv[1]))
    before = len(listed.keys)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    filler = []
    while True:  # every free slot below the limit taken: the next open is EMFILE
        try:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    gone = listed.reload()
    during = len(listed.keys)
    for fd in filler:
        os.close(fd)
    again = listed.reload()
    print(json.dumps({"before": before, "gone": len(gone), "during": during,
                      "again": len(again), "after": len(listed.keys)}))
""")


def test_an_allow_list_read_out_of_descriptors_revokes_nothing(tmp_path: Path) -> None:
    """EMFILE itself, in a process whose table is full (as an actor's was in a flood): the
    list read before stays, and is read again once descriptors are free."""
    server_dir, _, _ = make_keys(tmp_path)
    out = subprocess.run([sys.executable, "-c", EMFILE_CHILD, str(server_dir)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"before": 1, "gone": 0, "during": 1, "again": 0,
                                      "after": 1}, out.stderr
    assert os.strerror(errno.EMFILE) in out.stderr  # (logged once, with its reason)


def connection_file(path: Path, endpoint: str, actor: str = "alpha",
                    kind: str = "pub") -> Path:
    """A connection file of a tree elsewhere (supervisor, alpha) whose `actor` has
    `endpoint` as its `kind`."""
    endpoints = {"supervisor": {"rpc": "tcp://127.0.0.1:47000", "pub": "tcp://127.0.0.1:47001"},
                 "alpha": {"rpc": "tcp://127.0.0.1:47002", "pub": "tcp://127.0.0.1:47003"}}
    endpoints[actor][kind] = endpoint
    path.write_text(json.dumps({
        "runtime_dir": "/nowhere", "endpoints": {},
        "remote": {"transport": "tcp", "curve": True, "endpoints": endpoints,
                   "server_key": curve.new_pair().public.decode()}}))
    return path


BAD_ENDPOINTS = ["tcp://127.0.0.1", "tcp://127.0.0.1:99999", "tcp://127.0.0.1:0",
                 "tcp://:47003", "tcp://me@devbox:47003", "tcp://127.0.0.1:47x"]


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_a_connection_file_endpoint_that_is_not_host_and_port_is_refused_naming_it(
        tmp_path: Path, endpoint: str) -> None:
    path = connection_file(tmp_path / "tree.json", endpoint)
    with pytest.raises(ValueError) as err:
        remote.target_from_file(path, curve.new_pair())
    message = str(err.value)
    assert str(path) in message and repr(endpoint) in message and "alpha" in message, message
    # the same file with a good endpoint, a host named by name, is taken
    good = remote.target_from_file(connection_file(tmp_path / "good.json",
                                                   "tcp://devbox.lan:47003"), curve.new_pair())
    assert good.endpoint("alpha", "pub") == "tcp://devbox.lan:47003"


def test_the_cli_refuses_a_connection_file_whose_endpoint_has_no_port_or_a_bad_one(
        tmp_path: Path) -> None:
    """`status` with the root's request endpoint broken: exit 2 naming the file and the
    endpoint. (`tcp://127.0.0.1` was a `bad_args` blaming sup.status, `:99999` a
    `timeout`.)"""
    keys_dir = tmp_path / "keys"
    made = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "keys", "init"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, curve.KEYS_ENV: str(keys_dir)})
    assert made.returncode == 0, made.stderr
    here = tmp_path / "no-tree-here"
    for endpoint in ("tcp://127.0.0.1", "tcp://127.0.0.1:99999"):
        path = connection_file(tmp_path / "tree.json", endpoint, "supervisor", "rpc")
        out = subprocess.run(
            [sys.executable, "-m", "moorage.supervisor.cli", "--connection", str(path),
             "--keys", str(keys_dir), "--timeout", "3", "status"],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
            env={**os.environ, "MOORAGE_RUNTIME_DIR": str(here)})
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert f"--connection: {path}" in out.stderr and repr(endpoint) in out.stderr, \
            out.stderr
        assert "timeout" not in out.stderr and "bad_args" not in out.stderr, out.stderr
