"""A file name that is not UTF-8 (Linux allows any bytes but "/" and NUL: b"\\xff.txt", a
Latin-1 "résumé.txt" from an old archive) under a watch costs nothing else.

Python holds such a name with its stray bytes as lone surrogates. The state files keep it
exactly (the write-ahead log, the snapshot, and their readers); the wire carries it readable
in its str field and exactly in a bin field beside it (`path_bytes`, `name_bytes`...). Every
other event of its window is published, checkpoints go on, a restart diffs against a state
that has it, and fs.list, fs.query, fs.stat and fs.write answer. A log or a checkpoint that
fails anyway gives the state up, visibly; a publish that fails uses up no seq and leaves no
path taken for told.

In memory where the mechanism is the point, in a real watcher process (real files, real
inotify, real signals) where the user's case is; nothing waits on a sleep.
"""

from __future__ import annotations

import os
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import msgpack
import pytest

from moorage.actors.watcher import pipeline as pipeline_mod
from moorage.actors.watcher import snapshot
from moorage.actors.watcher.journal import Clock, Journal
from moorage.actors.watcher.pipeline import Pipeline
from moorage.actors.watcher.snapshot import UNKNOWN, Index, Wal, make_stat
from moorage.actors.watcher.state import State
from moorage.actors.watcher.watches import Watches
from moorage.actors.watcher.workers import Workers
from moorage.protocol.envelope import Packed
from tests.test_watcher_resync_early import (
    EXACT,
    die_behind_its_back,
    old_files,
    restart_diff,
    stateful,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

BAD = "\udcff.txt"  # b"\xff.txt" as os.fsdecode gives it
LATIN1 = "r\udce9sum\udce9.txt"  # b"r\xe9sum\xe9.txt"


def stat_of(i: int) -> bytes:
    return make_stat(0o100644, 1, i, 1, 1, 1)


def strict(body: bytes) -> Any:
    """What a client decodes: a str that is not valid UTF-8 would fail here."""
    return msgpack.unpackb(body, raw=False, use_list=False)


# --- the state files --------------------------------------------------------------------------


def test_the_write_ahead_log_and_the_snapshot_keep_a_name_that_is_not_utf8_exactly(tmp_path):
    wal = Wal(str(tmp_path))
    wal.append([f"/w/{BAD}", "/w/plain"])
    wal.append([f"/w/{LATIN1}"])
    assert wal.touched(0) == {f"/w/{BAD}", "/w/plain", f"/w/{LATIN1}"}
    wal.close()
    entries = {f"/w/{BAD}": stat_of(1), f"/w/{LATIN1}": stat_of(2), "/w/plain": stat_of(3)}
    snapshot.save(str(tmp_path / "snap"), {"entries": entries, "seq": 1, "gen": 1})
    assert snapshot.load(str(tmp_path / "snap"))["entries"] == entries
    snapshot.save(str(tmp_path / "watches"), {"watches": [{"path": f"/w/{BAD}"}]})
    assert snapshot.load(str(tmp_path / "watches"))["watches"] == ({"path": f"/w/{BAD}"},)


def streamed(st: State, index: Index) -> tuple[Workers, SimpleQueue, list]:
    """A capture of `index` waiting, the io worker that writes it, its hand-backs
    (`handed`) and the loop's turns (`turns`), both run by the test."""
    st.checkpoint(1, lambda: {"entries": index})  # captured: written by the next call
    handed: SimpleQueue = SimpleQueue()
    return Workers("io", handed.put, threads=1), handed, []


def test_a_checkpoint_streamed_by_the_loop_keeps_a_name_that_is_not_utf8(tmp_path):
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    index = Index({f"/w/f{i:05d}": stat_of(i) for i in range(snapshot.SAVE_CHUNK * 2)})
    index.set(f"/w/{LATIN1}", stat_of(99999))
    workers, handed, turns = streamed(st, index)
    try:
        st.checkpoint(2, lambda: {"entries": index}, workers.submit, turns.append)
        while turns:
            turns.pop(0)()
        handed.get(timeout=10)()
        assert st.lost is None and st.written == 1 and not st.writing
        _, saved = st.load()
        assert saved is not None and saved["entries"] == index.entries
    finally:
        workers.shutdown()
        st.close()


def test_a_checkpoint_that_cannot_be_packed_gives_the_state_up_and_frees_its_worker(
        tmp_path):
    """A path that even surrogateescape cannot pack (a lone high surrogate: no file name
    makes one) stands for any part that cannot be packed: the state is given up, the
    worker's write ends unwritten (it waited for that part for good, and every later
    checkpoint, and every fs.watch waiting for one, waited behind it)."""
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    index = Index({f"/w/f{i:05d}": stat_of(i) for i in range(snapshot.SAVE_CHUNK * 2)})
    index.set("/w/\ud800", stat_of(99999))
    workers, handed, turns = streamed(st, index)
    answered: list[str] = []
    try:
        st.checkpoint(2, lambda: {"entries": index}, workers.submit, turns.append)
        st.now(2, lambda: {"entries": index}, lambda: answered.append("watch"),
               workers.submit, turns.append)
        while turns:
            turns.pop(0)()
        handed.get(timeout=10)()  # the worker's write ended, and is handed back
        while turns:
            turns.pop(0)()
        assert st.lost is not None and "packed" in st.lost
        assert not st.writing and workers.stats()["in_flight"] == 0
        assert answered == ["watch"]  # (whoever waited for a checkpoint is not held)
        assert not (tmp_path / "state" / "snapshot.msgpack").exists()
        assert not (tmp_path / "state" / "snapshot.msgpack.tmp").exists()
    finally:
        workers.shutdown()
        st.close()


def test_a_log_that_cannot_be_written_gives_the_state_up_and_the_events_still_go_out(
        tmp_path):
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    out: list = []
    p = pipeline(out)
    p.before_publish = st.log
    p.feed([("created", "/w/\ud800", "", False), ("created", "/w/a", "", False)])
    assert st.lost is not None and "write-ahead log" in st.lost
    events = [e for m in out for e in m["events"]]
    assert [e["path"] for e in events][1:] == ["/w/a"] and "path_bytes" in events[0]
    st.close()


# --- the pipeline, in memory ------------------------------------------------------------------


def stats(_path: str) -> tuple[bytes, int, int, int]:
    return make_stat(0o100644, 1, 2, 3, 4, 4), 0o100644, 3, 4


def pipeline(published: list, publish: Any = None, chunk: int = 1000) -> Pipeline:
    ws = Watches()
    ws.add("/w", True, [])
    return Pipeline(Journal("i"), ws, Index(), publish or (
        lambda body: published.append(strict(body.data))), lambda _d, fn: fn(),
        settle_s=0.0, lstat=stats, chunk=chunk)


def test_a_window_with_a_name_that_is_not_utf8_publishes_every_event_the_odd_one_with_its_bytes(
        tmp_path):
    out: list = []
    p = pipeline(out)
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    p.before_publish = st.log
    p.feed([("created", f"/w/src{i}.py", "", False) for i in range(5)]
           + [("created", f"/w/{BAD}", "", False), ("moved", f"/w/{LATIN1}", "/w/cv.txt", False)]
           + [("created", f"/w/src{i}.py", "", False) for i in range(5, 10)])
    events = [e for m in out for e in m["events"]]
    assert len(events) == 13 and [e["clock"][2] for e in events] == list(range(1, 14))
    odd = next(e for e in events if "path_bytes" in e)
    assert odd["path"] == "/w/\ufffd.txt" and odd["path_bytes"] == b"/w/\xff.txt"
    moved = next(e for e in events if e["path"] == "/w/cv.txt")
    assert moved["moved_from_bytes"] == b"/w/r\xe9sum\xe9.txt"
    assert sum("path_bytes" in e for e in events) == 2  # (the move's deletion half too)
    assert p.stats()["undecodable"] == 3
    # the journal answers what went out; it keeps, the index holds, the log has, the path
    since = p.journal.since(Clock("i", 0, 0))["events"]
    assert [e["path"] for e in since] == [e["path"] for e in events]
    assert f"/w/{BAD}" in p.journal.paths_since(0) and f"/w/{BAD}" in p.index.entries
    assert st.lost is None and f"/w/{BAD}" in st.wal.touched(0)
    st.close()


def test_a_publish_that_fails_uses_no_seq_keeps_no_batch_and_leaves_its_paths_unknown():
    """Two events a message; the second message's publish fails: the journal keeps the
    first (its seqs used), not the second, whose paths hold UNKNOWN in the index (a resync,
    asked for, reports them again). The next flush goes on from the last seq that went out."""
    out: list = []
    lost: list[str] = []
    sends = [0]

    def publish(body: Packed) -> None:
        sends[0] += 1
        if sends[0] == 2:
            raise RuntimeError("the socket is gone")
        out.append(strict(body.data))

    p = pipeline(out, publish, chunk=2)
    p.on_lost = lost.append
    p.feed([("created", f"/w/f{i}", "", False) for i in range(4)])
    assert lost == ["publish_failed"] and p.stats()["send_failures"] == 1
    assert p.journal.seq == 2 and len(p.journal.batches) == 1
    assert [e["path"] for m in out for e in m["events"]] == ["/w/f0", "/w/f1"]
    assert p.index.entries["/w/f1"] != UNKNOWN
    assert p.index.entries["/w/f2"] == UNKNOWN and p.index.entries["/w/f3"] == UNKNOWN
    p.feed([("created", "/w/g", "", False)])
    assert out[-1]["events"][0]["clock"][2] == 3


def test_a_resync_whose_publish_fails_leaves_the_told_state_and_the_clock_as_they_were():
    out: list = []

    def publish(body: Packed) -> None:
        raise RuntimeError("the socket is gone")

    p = pipeline(out, publish)
    p.index.set("/w/old", stat_of(1))
    before = dict(p.index.entries)
    with pytest.raises(pipeline_mod.SendFailed):
        p.resync("restart", {"/w/new": stat_of(2)}, before)
    assert p.index.entries == before
    assert (p.journal.epoch, p.journal.seq, len(p.journal.batches)) == (0, 0, 0)


# --- a real watcher -----------------------------------------------------------------------------


@pytest.fixture
def start(spawn_actor, client, data, tmp_path):
    return stateful(spawn_actor, client, data, tmp_path, checkpoint_s=0.2)


def make(path: Path, name: bytes, data: bytes = b"x") -> bytes:
    """A file named by raw bytes in `path`; its whole path, as bytes."""
    full = os.fsencode(path) + b"/" + name
    with open(full, "wb") as f:
        f.write(data)
    return full


def test_a_name_that_is_not_utf8_costs_no_event_of_its_window_and_checkpoints_go_on(
        start, data):
    w = start()
    clock = w.watch()["clock"]
    w.sync()
    written = w.call("fs.stats")["checkpoints"]["written"]
    for i in range(5):
        (data / f"src{i}.py").write_text("x")
    bad = make(data, b"\xff.txt")
    for i in range(5, 10):
        (data / f"src{i}.py").write_text("x")
    evs = [e for e in w.sync() if "path" in e]
    names = {os.path.basename(e["path"]) for e in evs}
    assert {f"src{i}.py" for i in range(10)} <= names
    odd = [e for e in evs if "path_bytes" in e]
    assert odd and {e["path_bytes"] for e in odd} == {bad}
    assert odd[0]["path"] == str(data) + "/\ufffd.txt"
    since = w.call("fs.since", {"clock": clock})["events"]
    assert bad in {e.get("path_bytes") for e in since}
    # the state is kept, and checkpoints go on (a stranded worker stopped them for good)
    wait_for(lambda: w.call("fs.stats")["checkpoints"]["written"] > written,
             "checkpoints after the name's")
    s = w.call("fs.stats")
    assert s["checkpoints"]["lost"] is None and s["workers"]["io"]["in_flight"] == 0


def test_list_query_stat_and_write_answer_a_name_that_is_not_utf8_with_its_bytes(start, data):
    bad = make(data, b"caf\xe9.txt", b"old\n")
    os.symlink(b"caf\xe9.txt", data / "link.txt")
    (data / "plain.txt").write_text("p")
    w = start()
    w.watch()
    w.sync()
    readable = "caf\ufffd.txt"
    listed = w.call("fs.list", {"path": str(data)})["entries"]
    assert {e["name"] for e in listed} == {readable, "link.txt", "plain.txt"}
    assert [e["name_bytes"] for e in listed if "name_bytes" in e] == [b"caf\xe9.txt"]
    files = w.call("fs.query", {"path": str(data)})["files"]
    assert [f["name_bytes"] for f in files if "name_bytes" in f] == [b"caf\xe9.txt"]
    names = w.call("fs.query", {"path": str(data), "fields": ["name"]})["files"]
    assert sorted(n for n in names if isinstance(n, str)) == ["link.txt", "plain.txt"]
    assert [n for n in names if not isinstance(n, str)] == [
        {"name": readable, "name_bytes": b"caf\xe9.txt"}]
    st = w.call("fs.stat", {"path": str(data / "link.txt")})
    assert st["path_bytes"] == bad and st["path"] == str(data / readable)
    wrote = w.call("fs.write", {"path": str(data / "link.txt"), "data": b"NEW\n"})
    assert wrote["path_bytes"] == bad and wrote["bytes"] == 4
    with open(bad, "rb") as f:
        assert f.read() == b"NEW\n"


def test_a_restart_beside_a_name_that_is_not_utf8_reports_what_changed_while_it_was_down(
        start, data):
    """Two watches, a Latin-1 name in one: the watcher stopped, the other changed where it
    cannot see, killed. The successor's restart diff tells those changes, and nothing of
    the odd name, which the saved state kept as it is."""
    a, b = data / "a", data / "b"
    old_files(a)
    b.mkdir()
    make(b, b"r\xe9sum\xe9.txt")
    w = start()
    w.watch(b)
    w.watch(a)
    die_behind_its_back(w, a)
    w2 = start()
    assert restart_diff(w2, a) == EXACT
    assert not [e for e in w2.seen if e.get("path", "").startswith(str(b) + "/")]
