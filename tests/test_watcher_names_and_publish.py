"""A watched directory whose path is not UTF-8, and a publish that fails.

A watch's root may be a directory named with bytes that are not UTF-8 (reached through a
symlink to it, or by watching its parent's name): every answer that lists it (fs.stats'
watches, roots and polled subtrees, fs.sync's unsynced roots, fs.watch) carries it readable,
with its exact bytes beside it, instead of failing as `internal` until it is unwatched.

A stream message whose send raises was published to nobody: it leaves no retained message
and no used seq behind, so a replay never serves it and the next message is not a second one
under the same seq (the watcher's journal, told the publish failed, reuses its event seqs).

Real watcher processes on real directories; a real Publisher on real ZeroMQ sockets. Nothing
waits on a sleep.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from moorage.actors.runtime.streams import Publisher
from moorage.actors.watcher import guarded as guarded_mod
from moorage.actors.watcher import observer as observer_mod
from moorage.actors.watcher.journal import Clock, Journal
from moorage.actors.watcher.pipeline import Pipeline
from moorage.actors.watcher.snapshot import Index, make_stat
from moorage.actors.watcher.watches import Watches
from moorage.protocol.envelope import Packed
from tests.test_watcher import start  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)

ODD = b"e\xfe"  # a directory's name that is not UTF-8
READABLE = "e\ufffd"  # ... as an answer's str field shows it


def odd_dir(data: Path) -> tuple[bytes, Path]:
    """A directory named ODD in `data`, with a file in it, and a symlink `lnk` to it (a
    request names paths as str only); its exact path, and the symlink."""
    real = os.fsencode(data) + b"/" + ODD
    os.mkdir(real)
    with open(real + b"/child.txt", "wb") as f:
        f.write(b"x")
    os.symlink(ODD, data / "lnk")
    return real, data / "lnk"


def as_wire(real: bytes) -> dict[str, Any]:
    return {"path": real.decode("utf-8", "replace"), "path_bytes": real}


# --- a watch whose root is not UTF-8 ----------------------------------------------------------


def test_stats_and_sync_answer_a_watch_whose_root_is_not_utf8_with_its_bytes(start, data):  # noqa: F811
    real, lnk = odd_dir(data)
    w = start(roots=[str(data), str(lnk)])  # (a configured root resolves there too)
    watched = w.call("fs.watch", {"path": str(lnk)})
    assert watched["path_bytes"] == real and watched["path"] == str(data / READABLE)
    assert w.call("fs.watch", {"path": str(lnk)})["path_bytes"] == real  # (asked again)
    stats = w.call("fs.stats")
    [spec] = stats["watches"]
    assert spec == {"id": watched["watch"], "recursive": True, "exclude": [], "holders": 1,
                    **as_wire(real)}
    assert stats["roots"] == [str(data), as_wire(real)]
    assert stats["observer"]["roots"] == {str(data / READABLE): {
        "recursive": True, "via": "inotify", **as_wire(real)}}
    # the watch serves: a change in it is published, with its bytes
    with open(real + b"/new.txt", "wb") as f:
        f.write(b"y")
    synced = w.call("fs.sync", timeout=60)
    assert synced["unsynced"] == [] and synced["roots"] == 1
    evs = w.until(synced["clock"])
    assert real + b"/new.txt" in {e.get("path_bytes") for e in evs}
    w.call("fs.unwatch", {"watch": watched["watch"]})
    assert w.call("fs.stats")["watches"] == []


def test_a_missing_root_that_is_not_utf8_is_listed_unsynced_with_its_bytes(start, data):  # noqa: F811
    real, lnk = odd_dir(data)
    w = start(liveness_s=0.1)
    w.call("fs.watch", {"path": str(lnk)})
    shutil.rmtree(real)
    warning = w.wait_for(lambda e: e["kind"] == "warning")
    assert warning["reason"] == "root_missing" and warning["path_bytes"] == real
    synced = w.call("fs.sync", timeout=60)
    assert synced["unsynced"] == [as_wire(real)] and synced["roots"] == 0
    stats = w.call("fs.stats")
    assert stats["observer"]["roots"][str(data / READABLE)]["via"] == "missing"
    assert stats["watches"][0]["path_bytes"] == real


def test_a_polled_subtree_whose_name_is_not_utf8_is_listed_with_its_bytes(
        start, data, monkeypatch):  # noqa: F811
    real = os.fsencode(data) + b"/" + ODD
    os.mkdir(real)

    def no_watches_left(path: bytes) -> None:
        if path == real:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", no_watches_left)  # inherited by fork
    w = start(poll_interval_s=0.1)
    w.watch()
    warning = w.wait_for(lambda e: e["kind"] == "warning")
    assert warning["reason"] == "enospc" and warning["polled_bytes"] == real
    with open(real + b"/polled.txt", "wb") as f:
        f.write(b"z")
    synced = w.call("fs.sync", timeout=60)  # (a cookie in the polled subtree too)
    assert synced["unsynced"] == [] and synced["roots"] == 2
    assert real + b"/polled.txt" in {e.get("path_bytes") for e in w.until(synced["clock"])}
    observer = w.call("fs.stats")["observer"]
    assert observer["polled_subtrees"] == [as_wire(real)]
    assert observer["roots"] == {str(data): {"recursive": True, "via": "inotify"}}


def test_roots_whose_readable_forms_are_one_keep_an_entry_each_in_stats():
    """b"/e\\xfe", b"/e\\xff" and a real "/e\\ufffd" all read "/e\\ufffd": the plain one
    keeps that key, the others are keyed by their escaped bytes, each with its bytes."""
    roots = {p: observer_mod.Root(p, True, "inotify") for p in ("/e\udcfe", "/e\ufffd", "/e\udcff")}
    assert observer_mod.wire_roots(roots) == {
        "/e\ufffd": {"recursive": True, "via": "inotify"},
        "/e\\xfe": {"recursive": True, "via": "inotify", **as_wire(b"/e\xfe")},
        "/e\\xff": {"recursive": True, "via": "inotify", **as_wire(b"/e\xff")}}


# --- a publish that fails ---------------------------------------------------------------------


@pytest.fixture
def pub_socket() -> Iterator[Callable[[str], zmq.Socket]]:
    """Makes PUB sockets bound in process; each is closed (linger 0) and the context
    terminated after the test, whatever it asserted."""
    ctx = zmq.Context()
    made: list[zmq.Socket] = []

    def make(name: str) -> zmq.Socket:
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(f"inproc://{name}")
        made.append(s)
        return s

    yield make
    for s in made:
        s.close(linger=0)
    ctx.term()


def replayed(pub: Publisher, topic: str) -> list[tuple[int, Any]]:
    return [(m.seq, m.body) for m in pub.replay(topic, 1)["messages"]]


def test_a_send_that_fails_leaves_no_retained_message_and_no_seq_used(pub_socket):
    sock = pub_socket("a")
    pub = Publisher(sock, "ep1", max_messages=2)
    assert pub.publish("t", {"n": 1}) == 1 and pub.publish("t", {"n": 2}) == 2
    sock.close(linger=0)  # the socket is gone: the send raises (not EAGAIN)
    with pytest.raises(zmq.ZMQError):
        pub.publish("t", {"n": 3})
    # retention made room for it (message 1 went): that loss is reported, not hidden
    page = pub.replay("t", 1)
    assert (page["last_seq"], page["lost"]) == (2, [1, 1])
    assert replayed(pub, "t") == [(2, {"n": 2})]
    pub.socket = pub_socket("b")  # a socket again: the next message is seq 3
    assert pub.publish("t", {"n": 4}) == 3
    assert replayed(pub, "t") == [(2, {"n": 2}), (3, {"n": 4})]
    assert pub.topic("t").bytes == sum(m.size for m in pub.topic("t").kept)


def test_a_watcher_flush_whose_publish_fails_is_neither_replayed_nor_a_second_batch_under_its_seqs(
        pub_socket):
    """A real Pipeline publishing through a real Publisher, two events a message; the
    socket goes away at the second message. The stream's replay and fs.since then hold the
    same events under the same seqs, once each."""
    pub = Publisher(pub_socket("ev"), "ep1")
    sends = [0]

    def publish(body: Packed) -> None:
        sends[0] += 1
        if sends[0] == 2:
            pub.socket.close(linger=0)
        pub.publish("fs.event", body)

    ws = Watches()
    ws.add("/w", True, [])
    p = Pipeline(Journal("i"), ws, Index(), publish, lambda _d, fn: fn(), settle_s=0.0,
                 lstat=lambda _p: (make_stat(0o100644, 1, 2, 3, 4, 4), 0o100644, 3, 4),
                 chunk=2)
    p.retired = pub.topic("fs.event").forget_oldest
    lost: list[str] = []
    p.on_lost = lost.append
    p.feed([("created", f"/w/f{i}", "", False) for i in range(4)])
    assert lost == ["publish_failed"] and p.journal.seq == 2
    pub.socket = pub_socket("ev2")  # the socket is back: the next flush
    p.feed([("created", "/w/g0", "", False), ("created", "/w/g1", "", False)])
    stream = [(seq, [(e["clock"][2], e["path"]) for e in msgpack.unpackb(body)["events"]])
              for seq, body in ((m.seq, m.packed) for m in
                                pub.replay("fs.event", 1)["messages"])]
    assert stream == [(1, [(1, "/w/f0"), (2, "/w/f1")]), (2, [(3, "/w/g0"), (4, "/w/g1")])]
    since = p.journal.since(Clock("i", 0, 0))["events"]
    assert [(e["clock"][2], e["path"]) for e in since] == [ev for _s, evs in stream
                                                         for ev in evs]
