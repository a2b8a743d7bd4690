"""The watcher's restart state when its runtime disk fills (a tmpfs, like /run/user/UID).

Each test mounts a 1 MiB tmpfs of its own on the runtime dir (sockets, logs and the watcher's
state directory all on it), fills it with a file, and frees it again by removing that file.
A state directory that refuses a write never stops the start or an op, and never leaves a
restart claiming a continuity it has not got: a state that is not whole makes the restart's
resync fresh, and the state is written whole again once the disk takes writes.

Real watcher processes, real inotify, real signals, a real file system; nothing waits on a
sleep. Skipped where mounting is not permitted.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pytest

from moorage.actors.watcher import snapshot
from moorage.actors.watcher.snapshot import Index, make_stat
from moorage.actors.watcher.state import State
from moorage.actors.watcher.workers import Workers
from moorage.protocol.errors import MoorageError
from tests.conftest import wait_pid_exit
from tests.test_watcher import ENTRY, Watcher, kinds
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

# A long name: each event's log record is about 200 bytes, so a few fill the log's page
# (a full tmpfs still takes bytes into the last page a file has).
LONG = "x" * 180


class Disk:
    """The runtime dir's own small tmpfs, filled by one file and freed by removing it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = b"\0" * 65536
        try:
            while True:
                os.write(fd, chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(runtime_dir: Path) -> Iterator[Disk]:
    """`runtime_dir` on a 1 MiB tmpfs; unmounted at teardown however the test went (after
    the watchers on it are killed: fixtures requested after this one end first)."""
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                          str(runtime_dir)], capture_output=True, text=True, check=False)
    if got.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {got.stderr.strip()}")
    try:
        yield Disk(runtime_dir)
    finally:
        if subprocess.run(["umount", str(runtime_dir)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(runtime_dir)], check=True)


@pytest.fixture
def start(disk: Disk, spawn_actor: Any, client: Any, data: Path) -> Callable[..., Watcher]:
    """A starter of watchers on `data` whose state is in the runtime dir (its default
    place), the same for each successor."""
    def go(**config: Any) -> Watcher:
        config.setdefault("roots", [str(data)])
        config.setdefault("settle_ms", 10)
        config.setdefault("checkpoint_s", 0.1)
        proc = spawn_actor(ENTRY, "watcher", **config)
        client.hello("watcher")
        return Watcher(proc, client, data)

    return go


def checkpoints(w: Watcher) -> dict[str, Any]:
    return w.call("fs.stats")["checkpoints"]


def lose_the_state(w: Watcher, d: Path) -> str:
    """Events on the full disk until their log is refused and the state given up."""
    made = 0

    def lost() -> str | None:
        nonlocal made
        made += 1
        (d / f"full{made:03d}{LONG}").write_text("x")
        w.sync()
        return checkpoints(w)["lost"]

    return wait_for(lost, "the state given up on the full disk")


def kill(w: Watcher) -> None:
    os.kill(w.proc.pid, signal.SIGKILL)
    assert wait_pid_exit(w.proc.pid, 10)


def die_behind_its_back(w: Watcher, gone: Path) -> None:
    """Stopped, `gone` deleted where it cannot see, killed."""
    os.kill(w.proc.pid, signal.SIGSTOP)
    try:
        gone.unlink()
    finally:
        kill(w)


def restart_resync(w: Watcher) -> tuple[dict, list[dict]]:
    """The successor's restart resync: its resync_begin, and the events up to its end."""
    evs = w.sync()
    begin = next(i for i, e in enumerate(evs) if e["kind"] == "resync_begin")
    assert evs[begin]["reason"] == "restart"
    end = next(i for i, e in enumerate(evs) if i > begin and e["kind"] == "resync_end")
    return evs[begin], evs[begin + 1:end]


def rebuilt(w: Watcher) -> bool:
    c = checkpoints(w)
    return c["lost"] is None and c.get("rebuilt", 0) >= 1 and not c["watches_unsaved"]


def given_up(w: Watcher) -> bool:
    """The state was given up: it still is, or has been rebuilt since (the snapshot a loss
    removes frees room, which a rebuild may take before the test fills it again)."""
    c = checkpoints(w)
    return c["lost"] is not None or c.get("rebuilt", 0) >= 1


def test_a_restart_after_the_log_was_refused_by_a_full_disk_resyncs_fresh(start, disk, data):
    """The state given up (its snapshot gone), the watcher killed before the disk had room
    again: its successor has no base and says so (`fresh: true`) instead of diffing against
    nothing and missing what was deleted meanwhile under `fresh: false`. (The disk is filled
    again at once: the removed snapshot's room must not let a rebuild through, which takes
    two checkpoints, 5 s apart.)"""
    for n in "abc":
        (data / n).write_text(n)
    w = start(checkpoint_s=5.0)
    w.watch()
    w.sync()
    disk.fill()
    assert "write-ahead log" in lose_the_state(w, data)
    disk.fill()
    assert checkpoints(w)["lost"] is not None
    kill(w)
    disk.free()
    (data / "a").unlink()
    begin, _ = restart_resync(start())
    assert begin["fresh"] is True


def test_a_state_lost_on_a_full_disk_is_rebuilt_once_there_is_room_and_a_restart_diffs_again(
        start, disk, data):
    """Space back, the next checkpoints rebuild the state (a new log, a capture written an
    interval later): a death after that is diffed exactly again, a deletion made while the
    watcher was down included."""
    for n in "abc":
        (data / n).write_text(n)
    w = start()
    w.watch()
    w.sync()
    disk.fill()
    lose_the_state(w, data)
    disk.free()
    wait_for(lambda: rebuilt(w), "the state rebuilt once the disk had room", timeout=10)
    (data / "e").write_text("e")  # logged by the rebuilt log
    w.sync()
    die_behind_its_back(w, data / "a")
    begin, diff = restart_resync(start())
    assert begin["fresh"] is False
    assert ("deleted", "a") in kinds(diff, data)


def test_watch_and_unwatch_on_a_full_runtime_disk_answer_and_are_saved_once_there_is_room(
        start, disk, data):
    """Neither op fails for a save the disk refused (fs.watch answered `no_space` naming the
    workspace, whose disk had room; fs.unwatch `internal` though it took effect): both are
    in force, and the watches file says so once the disk takes writes again."""
    for d in ("p1", "p2"):
        (data / d).mkdir()
    w = start()
    w1 = w.watch(data / "p1")["watch"]
    disk.fill()
    w2 = w.watch(data / "p2")["watch"]
    assert given_up(w)
    disk.fill()  # (what the loss freed: fs.unwatch's save is refused too)
    (data / "p2" / "new").write_text("x")
    assert ("created", "p2/new") in kinds(w.sync(), data)
    assert w.call("fs.unwatch", {"watch": w1}) == {"removed": w1, "holders": 0, "held": True,
                                                   "dropped": 0}
    with pytest.raises(MoorageError) as again:  # (taken effect: a retry finds it gone)
        w.call("fs.unwatch", {"watch": w1})
    assert again.value.name == "watch_not_found"
    (data / "p1" / "unwatched").write_text("x")
    assert not [e for e in w.sync() if "/p1/" in e.get("path", "")]
    disk.free()
    wait_for(lambda: rebuilt(w), "the watches saved once the disk had room", timeout=10)
    saved = snapshot.load(str(disk.root / "watcher.state" / "watches.msgpack"))
    assert saved is not None
    assert [(s["id"], s["path"]) for s in saved["watches"]] == [(w2, str(data / "p2"))]


def test_a_watcher_restarted_on_a_full_runtime_disk_starts_and_serves_and_rebuilds_its_state(
        start, disk, data):
    """A restart whose save of the watches the disk refuses (each start saves them) starts
    all the same (it died during start, restarted until its supervisor fell back to
    cache_only), diffs against its predecessor's whole state, serves events, and keeps a
    state again once the disk has room."""
    for n in "abc":
        (data / n).write_text(n)
    w = start()
    w.watch()
    w.sync()
    kill(w)
    disk.fill()
    (data / "a").unlink()
    w = start()
    begin, diff = restart_resync(w)
    assert begin["fresh"] is False and ("deleted", "a") in kinds(diff, data)
    (data / "d").write_text("d")
    assert ("created", "d") in kinds(w.sync(), data)
    stats = w.call("fs.stats")
    assert stats["mode"] == "inotify" and given_up(w)
    disk.free()
    wait_for(lambda: rebuilt(w), "the state rebuilt once the disk had room", timeout=10)
    assert (disk.root / "watcher.state" / "snapshot.msgpack").exists()


# --- the mechanism, in memory: State.lose and the rebuild --------------------------------------


def test_a_checkpoint_begun_before_a_loss_does_not_stand_and_the_rebuild_writes_a_newer_one(
        tmp_path):
    """A loss while a capture's write is under way: that write is dropped however it ends
    (its capture lacks what no log generation holds) and is not tried again; the next
    checkpoint opens a new log generation and captures, and that capture, written a
    checkpoint later, keeps the state again."""
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    index = Index({f"/w/f{i:05d}": make_stat(0o100644, 1, i, 1, 1, 1)
                   for i in range(snapshot.SAVE_CHUNK * 2)})
    handed: SimpleQueue = SimpleQueue()
    workers = Workers("io", handed.put, threads=1)
    turns: list = []

    def loop_until_written() -> None:  # (the loop: its turns, then the worker's hand-back)
        while turns:
            turns.pop(0)()
        handed.get(timeout=10)()

    try:
        st.checkpoint(1, lambda: {"entries": index})  # captured
        st.checkpoint(2, lambda: {"entries": index}, workers.submit, turns.append)
        assert st.writing
        st.lose("a disk that was full for a moment")
        loop_until_written()
        assert not (tmp_path / "state" / "snapshot.msgpack").exists()
        st.checkpoint(3, lambda: {"entries": index}, workers.submit, turns.append)
        assert st.lost is not None and not st.writing  # (captured, not written yet)
        st.checkpoint(4, lambda: {"entries": index}, workers.submit, turns.append)
        loop_until_written()
        assert st.lost is None and st.stats()["rebuilt"] == 1
        _, saved = st.load()
        assert saved is not None and saved["entries"] == index.entries
        # (labelled with the rebuild's first generation: the lost ones, older, are gone)
        assert st.wal is not None and st.wal.generations() == [saved["gen"], st.wal.gen]
    finally:
        workers.shutdown()
        st.close()


def test_a_loss_whose_cause_is_in_the_state_is_not_rebuilt(tmp_path):
    """A path no packing takes (a lone high surrogate: no file name makes one) would fail
    every rebuild the same way: none is tried, and nothing is written."""
    st = State(tmp_path / "state", "tree-1")
    st.open_wal()
    st.log(["/w/\ud800"])
    assert st.lost is not None
    for seq in (1, 2, 3):
        st.checkpoint(seq, lambda: {"entries": Index()})
    assert st.lost is not None and st.stats()["rebuilt"] == 0
    assert not (tmp_path / "state" / "snapshot.msgpack").exists()
    st.close()


def test_a_log_record_the_full_disk_takes_only_part_of_is_taken_back_and_refused(disk):
    """A full tmpfs still takes bytes into the room left in a file's last page: a record
    longer than that room is written in part. The part is taken back and the append fails
    (the state is then given up, as on any refused write), so the log stays whole: a half
    record would hide every later record of its generation from a restart."""
    state = disk.root / "state"
    state.mkdir()
    wal = snapshot.Wal(str(state))
    try:
        wal.append(["/before"])
        log = Path(wal._path(wal.gen))
        size = log.stat().st_size
        disk.fill()
        big = [f"/p{i:03d}{LONG}" for i in range(40)]  # 7.5 KB: more than a page's room
        with pytest.raises(OSError) as refused:
            wal.append(big)
        assert refused.value.errno == errno.ENOSPC
        assert log.stat().st_size == size
        disk.free()
        wal.append(["/after"])
        assert wal.touched(wal.gen) == {"/before", "/after"}
    finally:
        wal.close()
