"""Custody of descriptors by a supervisor (actors.runtime.custody, supervisor.custody): on a
real loop with real SEQPACKET sockets, a real PTY and a real memfd. The tree-level cases (the
keeper and the terminal actor killed at once) are in test_terminal_tree.py."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import msgpack
import pytest

from moorage.actors.runtime.custody import CustodyClient, Datagrams, receive
from moorage.actors.runtime.loop import Loop
from moorage.supervisor.custody import TAKE_DELAY_ENV, Custodian
from tests.waiting import turn_until

pytestmark = pytest.mark.timeout(60)


def test_what_one_process_keeps_the_next_takes_back_with_its_latest_info_and_not_what_it_dropped(
        loop: Loop, tmp_path: Path) -> None:
    custodian = Custodian(loop, tmp_path, "sup")
    first = CustodyClient(loop, tmp_path / "sup.custody.sock", "keeper")
    master, slave = os.openpty()
    ring = os.memfd_create("ring")
    os.write(ring, b"the ring")
    try:
        first.keep("a", {"pid": 1, "meta": {"v": 0}}, [master, ring])
        first.keep("b", {"pid": 2}, [master, ring])
        for v in range(1, 50):
            first.info("a", {"pid": 1, "meta": {"v": v}})
        first.drop("b")
        turn_until(loop, lambda: custodian.describe()["held"] == {"keeper": 1}
                   and custodian.held["keeper"]["a"].info["meta"] == {"v": 49})
        # the first process dies: what it kept stays
        first.close()
        os.close(master)
        os.close(ring)
        second = CustodyClient(loop, tmp_path / "sup.custody.sock", "keeper")
        got: dict[str, tuple[dict[str, Any], list[int]]] = {}
        done: list[int] = []
        second.take(lambda k, info, fds: got.__setitem__(k, (info, fds)), done.append)
        turn_until(loop, lambda: done)
        assert done == [1] and list(got) == ["a"]
        info, (m2, r2) = got["a"]
        assert info == {"pid": 1, "meta": {"v": 49}}
        assert os.pread(r2, 8, 0) == b"the ring"
        os.write(slave, b"still there")  # the PTY did not hang up: its master is back
        assert os.read(m2, 100) == b"still there"
        assert custodian.describe()["handed"] == 1
        second.drop("a")
        os.close(m2)
        os.close(r2)
        turn_until(loop, lambda: custodian.describe()["held"] == {"keeper": 0})
        second.close()
    finally:
        os.close(slave)
        custodian.close()


def test_a_peer_that_does_not_read_costs_one_entry_per_key_however_often_its_info_changes(
        loop: Loop) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    out = Datagrams(loop, ours, lambda why: None)
    try:
        for i in range(20_000):  # far more than the socket buffer holds
            out.send({"t": "info", "k": f"s{i % 3}", "info": {"n": i, "pad": "x" * 200}})
        assert len(out.out) <= 3  # the socket took what it could; then one per key waits
        waiting = len(out.out)
        out.send({"t": "drop", "k": "s0"})
        for i in range(1000):
            out.send({"t": "info", "k": "s1", "info": {"n": i}})
        assert len(out.out) == waiting + 1
        theirs.setblocking(False)
        seen: list[tuple[str, str, int | None]] = []
        while out.out:
            loop.run_once(10)
            while (got := receive(theirs)) is not None:
                msg, _ = got
                assert msg is not None
                seen.append((msg["t"], msg["k"], (msg.get("info") or {}).get("n")))
        last = {k: n for t, k, n in seen if t == "info"}
        assert last["s1"] == 999 and last["s2"] == 19_997  # the latest of each
        dropped = seen.index(("drop", "s0", None))
        assert not [e for e in seen[dropped + 1 :] if e[1] == "s0"]  # nothing of s0 after it
    finally:
        ours.close()
        theirs.close()


def test_a_keep_over_the_datagram_limit_is_kept_without_its_big_values(loop: Loop,
                                                                       tmp_path: Path) -> None:
    custodian = Custodian(loop, tmp_path, "sup")
    client = CustodyClient(loop, tmp_path / "sup.custody.sock", "keeper")
    fd = os.memfd_create("x")
    try:
        client.keep("k", {"pid": 7, "meta": {"env": "y" * 300_000}}, [fd])
        turn_until(loop, lambda: custodian.describe()["held"].get("keeper") == 1)
        assert custodian.held["keeper"]["k"].info == {"pid": 7}
        client.close()
    finally:
        os.close(fd)
        custodian.close()


def test_a_last_keep_sent_before_the_peer_closed_with_our_datagrams_unread_is_received():
    """The child's last `keep` (and the master it carries) then its end closed, while a
    datagram of ours waited unread there: the kernel reports the reset first, once, and
    the `keep` behind it. It is received with its descriptor, then the end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        ours.send(msgpack.packb({"t": "done", "n": 0}))  # never read: the child went
        socket.send_fds(theirs, [msgpack.packb({"t": "keep", "k": "s1", "info": {}})], [r])
        theirs.close()
        ours.setblocking(False)
        got = receive(ours)
        assert got is not None
        msg, fds = got
        assert msg == {"t": "keep", "k": "s1", "info": {}} and len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(r).st_ino  # the same pipe
        os.close(fds[0])
        with pytest.raises(ConnectionError):
            receive(ours)
    finally:
        ours.close()
        os.close(r)
        os.close(w)


def test_a_take_on_a_socket_that_failed_already_is_done_with_nothing_on_the_next_turn(
        loop: Loop, tmp_path: Path) -> None:
    """The supervisor gone between the connect and the `take` (its listener closed with our
    connection unaccepted, and seen so): the take ends, with nothing, rather than never."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(tmp_path / "sup.custody.sock"))
    listener.listen(1)
    client = CustodyClient(loop, tmp_path / "sup.custody.sock", "keeper")
    listener.close()
    turn_until(loop, lambda: client.out.broken)
    done: list[int] = []
    client.take(lambda k, info, fds: None, done.append)
    turn_until(loop, lambda: done)
    assert done == [0] and client.out.broken
    client.close()


def test_a_delayed_take_is_answered_with_what_was_held_when_it_came(
        loop: Loop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests-only delay stands for a busy supervisor, which answers its messages in
    order: the keeps and drops sent after a `take` do not change its answer (a session
    dropped meanwhile is in it; one kept meanwhile is not), and the answer's descriptors
    are good ones."""
    monkeypatch.setenv(TAKE_DELAY_ENV, "50")
    custodian = Custodian(loop, tmp_path, "sup")
    first = CustodyClient(loop, tmp_path / "sup.custody.sock", "keeper")
    master, slave = os.openpty()
    ring = os.memfd_create("ring")
    os.write(ring, b"the ring")
    try:
        first.keep("a", {"pid": 1}, [master, ring])
        turn_until(loop, lambda: custodian.describe()["held"] == {"keeper": 1})
        first.close()
        second = CustodyClient(loop, tmp_path / "sup.custody.sock", "keeper")
        got: dict[str, tuple[dict[str, Any], list[int]]] = {}
        done: list[int] = []
        second.take(lambda k, info, fds: got.__setitem__(k, (info, fds)), done.append)
        second.drop("a")
        second.keep("b", {"pid": 2}, [master, ring])
        os.close(master)
        os.close(ring)
        turn_until(loop, lambda: done)
        assert done == [1] and list(got) == ["a"]
        info, (m2, r2) = got["a"]
        assert info == {"pid": 1} and os.pread(r2, 8, 0) == b"the ring"
        assert set(custodian.held["keeper"]) == {"b"}
        os.close(m2)
        os.close(r2)
        second.close()
    finally:
        os.close(slave)
        custodian.close()
