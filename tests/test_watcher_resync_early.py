"""A watch placed just before the watcher died: the restart's resync is exact.

The files a new watch finds (its crawl: in the index, `fs.query` answers them) are what its
subscribers were told. The review's case: old0..old2 in a directory, `fs.watch` it, SIGSTOP
the watcher, make new0..new2 and unlink old0 while it cannot see them, SIGKILL it. The
successor's resync must say `deleted old0` and `created new0..2`, and nothing of old1 and
old2. The checkpoint that held the crawl used to be written up to two `checkpoint_s` after
the watch was answered: a death before it had the restart report old1/old2 as created and
never tell old0's deletion.

Real watcher processes, real inotify, real signals; nothing waits on a sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pytest

from moorage.actors.watcher import snapshot
from moorage.actors.watcher.snapshot import Index, make_stat
from moorage.actors.watcher.state import State
from moorage.actors.watcher.workers import Workers
from tests.conftest import wait_pid_exit
from tests.test_watcher import ENTRY, Watcher
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def stateful(spawn_actor: Any, client: Any, data: Path, tmp_path: Path,
             checkpoint_s: float) -> Any:
    """A starter of watchers on `data` whose state lives in tmp_path/state (the same for each
    successor)."""
    state = tmp_path / "state"

    def go(**config: Any) -> Watcher:
        config.setdefault("roots", [str(data)])
        config.setdefault("settle_ms", 10)
        config.setdefault("checkpoint_s", checkpoint_s)
        config.setdefault("state_dir", str(state))
        proc = spawn_actor(ENTRY, "watcher", **config)
        client.hello("watcher")
        return Watcher(proc, client, data)

    go.state = state  # type: ignore[attr-defined]
    return go


@pytest.fixture
def start(spawn_actor, client, data, tmp_path):
    return stateful(spawn_actor, client, data, tmp_path, checkpoint_s=1.0)


def old_files(d: Path) -> None:
    d.mkdir()
    for i in range(3):
        (d / f"old{i}").write_text(f"old {i}")


def die_behind_its_back(w: Watcher, d: Path) -> None:
    """The review's death: stopped, the directory changed where it cannot see, killed."""
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        for i in range(3):
            (d / f"new{i}").write_text(f"new {i}")
        os.unlink(d / "old0")
    finally:
        os.kill(w.proc.pid, signal.SIGKILL)
    assert wait_pid_exit(w.proc.pid, 10)


def restart_diff(w2: Watcher, d: Path) -> list[tuple[str, str]]:
    """The successor's restart resync: (kind, name) of its diff events under `d`, between
    its resync_begin and its resync_end."""
    evs = w2.sync()
    begin = next(i for i, e in enumerate(evs) if e["kind"] == "resync_begin")
    assert evs[begin]["reason"] == "restart"
    end = next(i for i, e in enumerate(evs) if i > begin and e["kind"] == "resync_end")
    return sorted((e["kind"], os.path.relpath(e["path"], d)) for e in evs[begin + 1:end]
                  if e.get("path", "").startswith(str(d) + "/"))


EXACT = [("created", "new0"), ("created", "new1"), ("created", "new2"), ("deleted", "old0")]


@pytest.mark.parametrize("beside", [False, True], ids=["first_watch", "beside_another"])
def test_a_watch_answered_just_before_the_death_is_resynced_exactly(start, data, beside):
    """Killed right after the watch was answered, no wait: the crawl it was placed with is
    the restart's base. `beside`: the watcher had another watch already (the crawl is merged
    into the index a slice a turn, not taken whole)."""
    d = data / "dir"
    old_files(d)
    w = start()
    if beside:
        (data / "other").mkdir()
        (data / "other" / "x").write_text("x")
        w.watch(data / "other")
    w.watch(d)
    die_behind_its_back(w, d)
    w2 = start()
    assert restart_diff(w2, d) == EXACT


def test_a_watch_placed_while_a_capture_waited_is_not_lost_by_that_capture_s_write(
        start, data):
    """The watch is placed after a checkpoint's capture and before its write (the first
    life: the capture is the start resync's empty index), and the death comes after that
    write: the write must not put back a told state without the watch's crawl."""
    d = data / "dir"
    old_files(d)
    w = start(checkpoint_s=2.0)
    state = start.state
    # (a capture starts a wal generation: the first life's first is wal.1, its first
    # capture wal.2, and that capture's write, a checkpoint_s later, drops wal.1)
    wait_for(lambda: (state / "wal.2.msgpack").exists(), "the first capture")
    w.watch(d)
    assert (state / "wal.1.msgpack").exists(), "placed after the capture's write: too late"
    # the capture's write drops the generations before its own
    wait_for(lambda: not (state / "wal.1.msgpack").exists(), "the capture's write")
    die_behind_its_back(w, d)
    w2 = start()
    assert restart_diff(w2, d) == EXACT


# --- the mechanism, in memory: State.now -----------------------------------------------------


def stat_of(i: int, size: int = 1) -> bytes:
    return make_stat(0o100644, 1, i, size, 1, 1)


def test_a_checkpoint_written_at_once_keeps_the_last_interval_s_events_unknown(tmp_path):
    """Written at once, the told state is labelled with the snapshot on disk's generation: a
    crawl no event told becomes known, an event of the last interval (maybe never out of the
    process) stays unknown, and no wal generation goes; the capture's write, next, packs
    the index as it then is (a crawl that replaced its dict included)."""
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    index = Index({"/w/a": stat_of(1)})
    st.checkpoint(1, lambda: {"entries": index})  # captured (gen 2)
    st.checkpoint(2, lambda: {"entries": index})  # written (gen 2), captured again (gen 3)
    st.log(["/w/a"])  # an event of the last interval, in gen 3
    index.set("/w/a", stat_of(1, 2))
    index.take(Index({**index.entries, "/w/crawl": stat_of(7)}))  # a crawl: no event
    answered: list[str] = []
    st.now(3, lambda: {"entries": index}, lambda: answered.append("done"))
    assert answered == ["done"] and st.at_once == 1
    assert st.wal is not None and st.wal.generations() == [2, 3]
    _, saved = st.load()
    assert saved is not None and saved["gen"] == 2
    base = st.restart_base(saved, lambda p: True)
    assert base == {"/w/a": snapshot.UNKNOWN, "/w/crawl": stat_of(7)}
    st.checkpoint(4, lambda: {"entries": index})  # the gen-3 capture, taken before the crawl
    _, saved = st.load()
    assert saved is not None and saved["gen"] == 3 and st.wal.generations() == [3, 4]
    assert st.restart_base(saved, lambda p: True) == {"/w/a": snapshot.UNKNOWN,
                                                       "/w/crawl": stat_of(7)}
    st.close()


def test_a_checkpoint_asked_for_at_once_during_a_write_follows_it_and_answers_all(tmp_path):
    """Asked for while a capture's write is under way (one temporary file: not two at
    once): written after it, once for every ask made meanwhile, each answered after its own
    write ended, packed a part a loop turn as the interval's."""
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    index = Index({f"/w/f{i:05d}": stat_of(i) for i in range(snapshot.SAVE_CHUNK * 3)})
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("io", handed.put, threads=1)
    turns: list = []
    try:
        st.checkpoint(1, lambda: {"entries": index})  # captured
        st.checkpoint(2, lambda: {"entries": index}, workers.submit, turns.append)
        assert st.writing
        answered: list[int] = []
        index.set("/w/crawl", stat_of(99999))
        for n in range(3):
            st.now(2, lambda: {"entries": index}, lambda n=n: answered.append(n),
                   workers.submit, turns.append)
        assert st.writing and not answered and st.stats()["asked"] == 3
        while len(answered) < 3:  # the loop: its turns, and what the worker hands back
            while turns:
                turns.pop(0)()
            handed.get(timeout=10)()
        assert answered == [0, 1, 2] and st.at_once == 1 and st.written == 2
        assert not st.writing and not turns
        _, saved = st.load()
        assert saved is not None and saved["entries"] == index.entries
    finally:
        workers.shutdown()
        st.close()


def test_a_lost_state_answers_at_once_and_writes_nothing(tmp_path):
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    st.lose("a test")
    answered: list[str] = []
    st.now(1, lambda: {"entries": Index()}, lambda: answered.append("done"))
    assert answered == ["done"] and st.written == 0
    assert not (tmp_path / "state" / "snapshot.msgpack").exists()


def test_a_watch_is_answered_though_the_state_directory_does_not_take_its_save(
        start, data, client):
    """A state dir that stalls (here a FIFO where the snapshot is written: the io worker's
    open waits for a reader, as on a hung mount) does not hold fs.watch: the watch, placed
    and serving, is answered after PERSIST_WAIT_S instead of at its 120 s guard."""
    w = start()
    (data / "d1").mkdir()
    (data / "d2").mkdir()
    w.watch(data / "d1")
    fifo = start.state / "snapshot.msgpack.tmp"
    os.mkfifo(fifo)
    try:
        answer = client.call("watcher", "fs.watch", {"path": str(data / "d2")}, timeout=15)
        assert answer["path"] == str(data / "d2")
    finally:  # (a reader lets the stalled write go on; the FIFO goes, or is renamed by it)
        with contextlib.suppress(FileNotFoundError):
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        fifo.unlink(missing_ok=True)
