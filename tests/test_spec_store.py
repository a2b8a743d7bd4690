"""The terminal's records kept on disk for a successor (actors/terminal/specs.py's SpecStore)
and the closed sessions' tombstones kept the same way (keeper_client.Tombstones): many changes
in one write, drops written together a loop turn later, a failed write tried again until it
lands, and a tombstone file as an earlier terminal wrote it still honoured.

A write is made to fail for real: a directory stands at the records' path, so the rename
over it (and the unlink of it) is refused, as long as the directory is there."""

from __future__ import annotations

from pathlib import Path

import msgpack

from moorage.actors.runtime.loop import Loop
from moorage.actors.terminal.keeper_client import KeeperClient, Tombstones
from moorage.actors.terminal.specs import SpecStore
from tests.waiting import turn_until

SPEC = {"shell": "bash", "args": [], "cwd": None, "env": {}, "cols": 80, "rows": 24}


def on_disk(path: Path) -> dict:
    """The records as a successor reads them (the file's msgpack, nothing of ours)."""
    return msgpack.unpackb(path.read_bytes()) if path.exists() else {}


def test_put_many_is_one_write(tmp_path: Path):
    """Several records go in one write: all of them land together, and a write refused
    counts once, not once a record."""
    path = tmp_path / "terminal.sessions"
    store = SpecStore(path)
    store.put_many({"a": SPEC, "b": SPEC, "c": SPEC})
    assert set(on_disk(path)) == {"a", "b", "c"} and store.unrecorded() == []
    store.put_many({})  # (nothing to write: nothing written, nothing failed)
    assert store.failed == 0

    path.unlink()
    path.mkdir()  # (the file cannot be replaced now)
    try:
        store.put_many({"d": SPEC, "e": SPEC, "f": SPEC})
        assert store.failed == 1 and store.dirty
        assert store.unrecorded() == ["d", "e", "f"]
    finally:
        path.rmdir()


def test_drop_soon_writes_a_turns_drops_once(tmp_path: Path, loop: Loop):
    """drop_soon forgets at once and writes on the next loop turn, every drop of the turn
    in that one write; a write made meanwhile (a put) takes them in, and the deferred one
    then writes nothing more."""
    path = tmp_path / "terminal.sessions"
    store = SpecStore(path, loop.call_later, defer=loop.defer)
    store.put_many({"a": SPEC, "b": SPEC, "c": SPEC, "d": SPEC})
    store.drop_soon("a")
    store.drop_soon("b")
    store.drop_soon("nobody")  # (none such: nothing to write for it)
    assert set(store.specs) == {"c", "d"} and set(on_disk(path)) == {"a", "b", "c", "d"}
    turn_until(loop, lambda: set(on_disk(path)) == {"c", "d"})

    store.drop_soon("c")
    store.put("e", SPEC)  # (written now, without c)
    assert set(on_disk(path)) == {"d", "e"}
    written = path.stat().st_ino
    loop.run_once(0)
    assert path.stat().st_ino == written  # (the deferred write found nothing left to do)

    without_loop = SpecStore(tmp_path / "other.sessions")
    without_loop.put("x", SPEC)
    without_loop.drop_soon("x")  # (no `defer`: written at once)
    assert on_disk(without_loop.path) == {}


def test_tombstones_keep_no_file_when_empty_and_load_only_named_shells(tmp_path: Path,
                                                                       loop: Loop):
    """A tombstone file as an earlier terminal wrote it (msgpack, sid -> pid and start time)
    is honoured; one naming no pid is not taken. Confirmed closes go a turn later, and the
    last takes the file away."""
    path = tmp_path / "terminal.closed"
    path.write_bytes(msgpack.packb({"old": {"pid": 4242, "started": 7},
                                    "nopid": {"pid": None, "started": 3},
                                    "notadict": 5}, use_bin_type=True))
    stones = Tombstones(path, loop.defer)
    assert sorted(stones.closed) == ["old"] and stones.names("old", 4242, 7)
    assert stones.add_many({"a": (100, 1), "b": (None, None), "c": (102, None)}) == {"a", "c"}
    assert on_disk(path) == {"old": {"pid": 4242, "started": 7},
                             "a": {"pid": 100, "started": 1},
                             "c": {"pid": 102, "started": None}}
    for sid in ("old", "a", "c"):
        stones.drop_soon(sid)
    assert path.exists() and not stones.closed
    turn_until(loop, lambda: not path.exists())


def test_a_tombstone_refused_by_the_disk_is_written_again_once_it_can_be(tmp_path: Path,
                                                                         loop: Loop):
    """Tombstones made as the terminal makes them (path and `defer` alone) retry on the
    loop of the KeeperClient they are handed to: a tombstone whose write was refused lands
    once the path takes writes again, with no other change."""
    path = tmp_path / "terminal.closed"
    stones = Tombstones(path, loop.defer)
    KeeperClient(loop, tmp_path / "keeper.sock", {}, tombstones=stones, resume_wait_s=1.0,
                 stopping=lambda: True, on_restore=lambda e, master, ring: None,
                 on_welcome=lambda entries, settled: None, on_ready=lambda: None,
                 on_exit=lambda s, info: None)
    path.mkdir()
    try:
        assert stones.add("a", 100, 1) is True
        assert stones.dirty and stones.failed == 1 and "a" in stones
        turn_until(loop, lambda: stones.failed > 1)  # (tried again, still refused)
        assert stones.dirty
    finally:
        path.rmdir()
    turn_until(loop, lambda: not stones.dirty)
    assert on_disk(path) == {"a": {"pid": 100, "started": 1}}
