"""The watcher's loop never waits on a syscall that can block (issue 12, R12 local abuse).

Each test shows the loop turning while the slow thing happens, with a fact the old code
could not produce (a reply that overtakes a write still in flight, an fs.stats answered
during a watch's placement), and under a supervisor with a strict hang budget, that the
watcher keeps its pid with no restart. Latencies are measured and printed as facts, never
asserted: a loaded machine may be slow, it may not be wrong.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.watcher import guarded, mounts
from moorage.actors.watcher.query import MAX_WAITING
from moorage.protocol.client import Client
from moorage.protocol.client.aio import AsyncClient
from moorage.protocol.errors import MoorageError
from tests import fuse_mount
from tests.pressure_support import TELLER, tell
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(240)

ENTRY = "moorage.actors.watcher.actor:WatcherActor"

# A strict hang budget: 5 missed 100 ms beats. A loop that waits on an fsync behind a big
# write, or places 50,000 inotify watches in one turn, misses it.
STRICT_TREE = """
[supervisor]
heartbeat = {{ interval_ms = 100, misses = 5 }}
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[actor.watcher]
roots = ["{data}"]
settle_ms = 10
push_metrics = false
"""


@pytest.fixture
def watcher(spawn_actor, client, data):
    def go(**config: Any) -> Client:
        config.setdefault("roots", [str(data)])
        spawn_actor(ENTRY, "watcher", **config)
        client.hello("watcher")
        return client

    return go


class DiskHog:
    """`dd ... conv=fsync` in a loop: dirty pages and fsyncs that make everyone's fsync wait
    (bounded: 32 MiB a round, until stopped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stop = threading.Event()
        self.rounds = 0
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.proc = subprocess.Popen(
                ["dd", "if=/dev/zero", f"of={self.path}", "bs=1M", "count=32", "conv=fsync",
                 "status=none"], stdin=subprocess.DEVNULL)
            self.proc.wait()
            self.rounds += 1

    def __enter__(self) -> DiskHog:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(30)
        if self.proc is not None:
            self.proc.wait(10)
        self.path.unlink(missing_ok=True)


def synced_events(c: Client, sub: Any) -> list[dict]:
    """fs.sync, then the events `sub` gets up to the sync's clock."""
    clock = c.call("watcher", "fs.sync", timeout=60)["clock"]
    seen: list[dict] = []
    while not (seen and seen[-1]["clock"][2] >= clock[2]):
        m = sub.next(timeout=30)
        assert m is not None
        seen.extend(getattr(m, "body", {}).get("events", []))
    return seen


def timed_ping(c: Client) -> float:
    t0 = time.perf_counter()
    c.call("watcher", "sys.ping")
    return (time.perf_counter() - t0) * 1000


# --- fs.write: fsync on a worker ------------------------------------------------------------


def test_a_write_waiting_on_fsync_behind_a_big_fsyncing_writer_does_not_stop_the_loop(
        make_tree, tmp_path):
    data = Path(os.path.realpath(tmp_path)) / "data"
    data.mkdir()
    tree = make_tree(STRICT_TREE.format(data=data)).start()
    pid = tree.child("watcher")["pid"]
    done = threading.Event()
    errors: list[BaseException] = []
    writes = [0]

    def write_loop() -> None:  # its own client: clients are single-threaded
        with Client(tree.runtime_dir, timeout=60.0) as c:
            try:
                while not done.is_set():
                    c.call("watcher", "fs.write", {"path": "target", "data": b"w" * (4 << 20)},
                           timeout=60)
                    writes[0] += 1
            except BaseException as exc:
                errors.append(exc)

    pings: list[float] = []
    overtaken = 0  # pings answered while the write they were sent during was in flight
    writer = threading.Thread(target=write_loop)
    with DiskHog(tmp_path / "hog") as hog, Client(tree.runtime_dir, timeout=10.0) as pinger:
        writer.start()
        try:
            deadline = time.monotonic() + 90
            while (overtaken < 3 or writes[0] < 5) and time.monotonic() < deadline \
                    and not errors:
                # A write is in flight from the moment its temporary file exists until it is
                # renamed over the target (after its fsync). On a loop that runs the write
                # itself, a ping sent in that window is read only after the rename.
                tmp = next((n for n in os.listdir(data) if ".moorage-" in n), None)
                pings.append(timed_ping(pinger))
                if tmp is not None and os.path.exists(data / tmp):
                    overtaken += 1
        finally:
            done.set()
            writer.join(90)
        rounds = hog.rounds
    assert not errors, errors
    pings.sort()
    print(f"\n{len(pings)} pings during {writes[0]} writes of 4 MiB and {rounds} dd rounds: "
          f"p50 {pings[len(pings) // 2]:.2f} ms, max {pings[-1]:.2f} ms; "
          f"{overtaken} answered while a write was in flight")
    assert overtaken >= 3, f"no ping answered while a write was in flight ({writes[0]} writes)"
    assert (data / "target").stat().st_size == 4 << 20
    child = tree.child("watcher")
    assert (child["pid"], child["restarts"]) == (pid, 0), tree.output()


def test_writes_past_the_worker_queue_are_refused_busy_and_the_rest_complete(watcher, data):
    c = watcher(io_threads=1, io_queue=1)
    sent = [("fs.write", {"path": f"f{i}", "data": b"x" * (1 << 20)}) for i in range(40)]
    results = c.pipeline("watcher", sent, window=40)
    busy = [r for r in results if isinstance(r, MoorageError)]
    ok = [r for r in results if not isinstance(r, Exception)]
    assert busy and all(e.name == "busy" and e.error.retry_after_ms for e in busy), busy[:3]
    assert ok and all((data / f"f{i}").stat().st_size == 1 << 20
                      for i, r in enumerate(results) if not isinstance(r, Exception))
    stats = c.call("watcher", "fs.stats")["workers"]["io"]
    assert stats["refused"] == len(busy) and stats["in_flight"] == 0


def test_writes_to_one_file_run_one_at_a_time_so_one_etag_admits_one_writer(watcher, data):
    c = watcher(io_threads=2)
    (data / "f").write_bytes(b"v0")
    tag = c.call("watcher", "fs.stat", {"path": "f"})["etag"]
    sent = [("fs.write", {"path": "f", "data": b"x" * (256 << 10) + bytes([i]), "if_match": tag})
            for i in range(12)]
    results = c.pipeline("watcher", sent, window=12)
    won = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, MoorageError)]
    assert len(won) == 1 and all(e.name == "conflict" for e in lost), results
    assert (data / "f").read_bytes()[-1] == won[0]


# --- special files: refused before anything can block ---------------------------------------


def test_writes_to_a_fifo_are_refused_at_once_and_the_watcher_serves_on(watcher, data):
    c = watcher()
    pid = c.call("watcher", "sys.hello")["pid"]
    os.mkfifo(data / "pipe")
    for atomic in (False, True):
        with pytest.raises(MoorageError) as e:
            c.call("watcher", "fs.write", {"path": "pipe", "data": b"x", "atomic": atomic},
                   timeout=5)
        assert e.value.name == "bad_args" and e.value.error.detail["type"] == "fifo", e.value
    assert stat.S_ISFIFO(os.lstat(data / "pipe").st_mode)  # left as it was
    assert c.call("watcher", "sys.hello")["pid"] == pid


def test_reads_of_fifos_sockets_and_devices_are_refused_naming_the_type(watcher, data):
    c = watcher()
    os.mkfifo(data / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(data / "sock"))
    specials = {"pipe": "fifo", "sock": "socket"}
    try:
        os.mknod(data / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        specials["null"] = "character device"
    except PermissionError:
        pass  # no CAP_MKNOD here: the FIFO and the socket still tell
    try:
        for name, kind in specials.items():
            for op in ("fs.read", "fs.write"):
                with pytest.raises(MoorageError) as e:
                    c.call("watcher", op, {"path": name, "data": b"x"} if op == "fs.write"
                           else {"path": name}, timeout=5)
                assert (e.value.name, e.value.error.detail["type"]) == ("bad_args", kind), (
                    name, op, e.value)
    finally:
        sock.close()
    assert c.call("watcher", "sys.ping")


def test_a_procfs_file_that_reports_no_size_is_read_to_its_end_and_not_cached(watcher, data):
    c = watcher(roots=[str(data), "/proc"])
    pid = c.call("watcher", "sys.hello")["pid"]
    assert os.stat(f"/proc/{pid}/status").st_size == 0
    r = c.request("watcher", "fs.read", {"path": f"/proc/{pid}/status"})
    text = r.attachments[0].decode()
    assert f"Pid:\t{pid}\n" in text and r.body["length"] == len(r.attachments[0])
    part = c.request("watcher", "fs.read", {"path": f"/proc/{pid}/status", "offset": 5,
                                            "length": 10}).attachments[0]
    assert part == r.attachments[0][5:15]
    assert c.call("watcher", "fs.stats")["cache"]["entries"] == 0


def test_a_procfs_file_over_max_read_is_refused_not_cut(watcher, data):
    c = watcher(roots=[str(data), "/proc"], max_read_bytes=64)
    pid = c.call("watcher", "sys.hello")["pid"]
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.read", {"path": f"/proc/{pid}/status"})
    assert e.value.name == "file_too_large"


def test_watching_a_pseudo_file_system_is_refused_naming_it(watcher, data):
    c = watcher(roots=[str(data), "/proc"])
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.watch", {"path": "/proc"})
    assert e.value.name == "bad_args"
    assert e.value.error.detail["fs_type"] == "proc", e.value
    assert c.call("watcher", "fs.stats")["watches"] == []


# --- fs.watch of a big tree: placed and walked off the loop ---------------------------------


# --- slow file systems ----------------------------------------------------------------------


def test_ops_on_a_file_system_configured_slow_run_on_the_remote_workers(watcher, data):
    """No NFS or FUSE mount can be made here: the test's own file system is named slow in
    the config, which the watcher takes from the mount table like any other type."""
    held = mounts.mount_of(str(data))
    assert held is not None
    c = watcher(slow_fs_types=[held[1]])
    (data / "f").write_bytes(b"remote bytes")
    r = c.request("watcher", "fs.read", {"path": "f"})
    assert r.attachments == [b"remote bytes"]
    assert c.call("watcher", "fs.stat", {"path": "f"})["size"] == 12
    assert [e["name"] for e in c.call("watcher", "fs.list", {"path": "."})["entries"]] == ["f"]
    c.call("watcher", "fs.write", {"path": "g", "data": b"written"})
    assert (data / "g").read_bytes() == b"written"
    c.request("watcher", "fs.read", {"path": "f"})  # again: not from the cache
    stats = c.call("watcher", "fs.stats")
    assert stats["files"]["remote_ops"] == 5 and stats["workers"]["remote"]["done"] == 5
    assert stats["cache"]["entries"] == 0 and stats["cache"]["hits"] == 0


@pytest.fixture
def stalling_mount(data: Path):
    """A FUSE mount at data/mnt whose server can stop answering (tests.fuse_mount). Asked
    for after `make_tree`, so it is torn down (its server answering again) before the tree:
    a process of the tree waiting on it gets its answer and stops as it should."""
    why = fuse_mount.available()
    if why is not None:
        pytest.skip(f"no FUSE mount can be made here: {why}")
    mnt = data / "mnt"
    mnt.mkdir()
    fuse = fuse_mount.StallingFuse(mnt)
    try:
        yield fuse
    finally:
        fuse.close()


def test_a_stalled_mount_holds_no_loop_of_the_watcher(make_tree, data, stalling_mount):
    """A watched FUSE mount whose server stops answering (an NFS server gone): the event of a
    file created there just before goes out without its stat, a local change still goes
    out, fs.sync waits for its cookie there off the loop (and says so by its timeout), a
    watch of another path there is checked off the loop, so is a read through a local
    symlink onto the mount, and the supervisor's strict hang budget (5 x 100 ms) never finds
    the watcher stuck. When the server answers again, fs.sync completes."""
    tree = make_tree(STRICT_TREE.format(data=data)).start()
    pid = tree.child("watcher")["pid"]
    mnt = stalling_mount.mountpoint
    c = tree.client
    local = data / "local"
    local.mkdir()
    for path in (mnt, local):
        assert c.call("watcher", "fs.watch", {"path": str(path)}, timeout=60)["via"] == "inotify"
    (local / "link").symlink_to(mnt)  # a local path that leads onto the mount
    events = c.subscribe("watcher", ["fs.event"], from_seq=1)

    def event_for(path: Path) -> dict:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = events.next(timeout=1)
            for ev in m.body.get("events", []) if m is not None else []:
                if ev.get("path") == str(path):
                    return ev
        pytest.fail(f"no event for {path}")

    stalling_mount.stall_after_flush()
    os.close(os.open(mnt / "made", os.O_WRONLY | os.O_CREAT, 0o644))
    made = event_for(mnt / "made")
    assert made["kind"] == "created" and "size" not in made and "mtime_ns" not in made
    wait_for(stalling_mount.waiting.is_set, "a call waiting on the stalled server")
    (local / "f").write_bytes(b"x")
    assert event_for(local / "f")["size"] == 1
    with pytest.raises(MoorageError) as sync:
        c.call("watcher", "fs.sync", {"timeout_ms": 1000}, timeout=30)
    assert sync.value.name == "timeout"  # its cookie in the mount could not be written
    with pytest.raises(MoorageError):  # checked on a remote worker, which waits there
        c.call("watcher", "fs.watch", {"path": str(mnt / "made")}, timeout=1)
    with pytest.raises(MoorageError):  # through the symlink: resolved there too
        c.call("watcher", "fs.read", {"path": str(local / "link" / "made")}, timeout=1)
    for path in (mnt, local / "link"):  # a query's scope too
        with pytest.raises(MoorageError):
            c.call("watcher", "fs.query", {"path": str(path)}, timeout=1)
    stats = c.call("watcher", "fs.stats")
    assert stats["pipeline"]["unstatted"] >= 1 and stats["files"]["remote_ops"] >= 1
    assert stats["workers"]["remote"]["in_flight"] >= 3
    assert c.call("watcher", "sys.ping")
    after = tree.child("watcher")
    assert (after["pid"], after["restarts"]) == (pid, 0)
    stalling_mount.resume()
    synced = c.call("watcher", "fs.sync", {"timeout_ms": 20_000}, timeout=30)
    assert synced["unsynced"] == []
    assert tree.child("watcher")["pid"] == pid
    assert "made" in c.call("watcher", "fs.query", {"path": str(mnt), "fields": ["name"]},
                            timeout=30)["files"]
    # the cookie of the sync that timed out was removed after its write: none is left
    wait_for(lambda: not [n for n in os.listdir(mnt) if n.startswith(".moorage-cookie-")],
             "no cookie left in the mount", timeout=30)
    events.close()


def test_a_watcher_restarted_while_a_watched_mount_is_stalled_starts_and_serves(
        make_tree, data, stalling_mount):
    """Killed while a watched mount does not answer, the watcher starts again at once: its
    roots are placed with its first walk, on the walker thread, which waits for the mount
    there, not on the loop (placed at the start, it never became ready, and each restart
    after would have hung the same way). It serves meanwhile, and once the mount answers
    the walk completes and fs.sync with it."""
    tree = make_tree(STRICT_TREE.format(data=data)).start()
    mnt = stalling_mount.mountpoint
    local = data / "local"
    local.mkdir()
    (local / "f").write_bytes(b"local bytes")
    c = tree.client
    for path in (mnt, local):
        c.call("watcher", "fs.watch", {"path": str(path)}, timeout=60)
    stalling_mount.stall()
    os.kill(tree.child("watcher")["pid"], signal.SIGKILL)
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "watcher")
    again = tree.child("watcher")

    def serving() -> bool:
        try:
            return c.call("watcher", "sys.ping", timeout=2) is not None
        except MoorageError:
            return False

    wait_for(serving, "the restarted watcher answering", timeout=30)
    assert c.request("watcher", "fs.read", {"path": str(local / "f")}).attachments == [
        b"local bytes"]
    # A query meanwhile waits for the walk (it answered the index still empty: no files,
    # and a clock after which nothing changed)
    box: dict[str, Any] = {}

    def query() -> None:
        with Client(tree.runtime_dir, timeout=60.0) as mine:
            box["files"] = mine.call("watcher", "fs.query", {"path": str(local),
                                                             "fields": ["name"]})["files"]

    def more() -> None:  # as many again as may wait: the one past them is told busy
        async def asked() -> list[Any]:
            async with AsyncClient(tree.runtime_dir, timeout=60.0) as ac:
                return await asyncio.gather(*(ac.call("watcher", "fs.query", {
                    "path": str(local), "fields": ["name"]}) for _ in range(MAX_WAITING - 1)),
                    return_exceptions=True)

        box["more"] = asyncio.run(asked())

    waiting = [threading.Thread(target=query), threading.Thread(target=more)]
    for t in waiting:
        t.start()
    wait_for(lambda: c.call("watcher", "fs.stats")["query"]["awaiting_walk"] == MAX_WAITING,
             "the queries waiting for the walk", timeout=30)
    with pytest.raises(MoorageError) as past:
        c.call("watcher", "fs.query", {"path": str(local)}, timeout=5)
    assert past.value.name == "busy"
    stalling_mount.resume()
    for t in waiting:
        t.join(60)
    assert box.get("files") == ["f"], box.get("files")
    assert all(isinstance(r, dict) and r["files"] == ["f"] for r in box["more"]), box["more"]
    synced = c.call("watcher", "fs.sync", {"timeout_ms": 30_000}, timeout=60)
    assert synced["unsynced"] == []
    after = tree.child("watcher")
    assert (after["pid"], after["restarts"]) == (again["pid"], again["restarts"])


def test_a_stalled_mount_fails_no_health_check(make_tree, data, stalling_mount):
    """The health check (a cookie through the observer every health_interval_s) writes its
    cookies in the local roots only: one in a stalled mount would not come back, and the
    recreate a failed check asks for would hold every root's walk behind that mount. So
    during the stall the checks pass and nothing is recreated."""
    tree = make_tree(STRICT_TREE.format(data=data)
                     + "health_interval_s = 0.2\nhealth_timeout_s = 1\n").start()
    c = tree.client
    mnt = stalling_mount.mountpoint
    local = data / "local"
    local.mkdir()
    for path in (mnt, local):
        c.call("watcher", "fs.watch", {"path": str(path)}, timeout=60)
    stalling_mount.stall()
    before = c.call("watcher", "fs.stats")["health"]["ok"]
    wait_for(lambda: c.call("watcher", "fs.stats")["health"]["ok"] >= before + 3,
             "three health checks passed during the stall", timeout=30)
    stats = c.call("watcher", "fs.stats")
    assert stats["health"]["failed"] == 0 and stats["observer"]["recreated"] == 0


def test_a_configured_watch_on_a_stalled_mount_does_not_hold_the_start(
        make_tree, data, stalling_mount):
    """A watch in the config on a mount that does not answer: the watcher is ready at once
    (the path is resolved on a remote worker, where the mount may wait), and is observed
    once the mount answers."""
    mnt = stalling_mount.mountpoint
    stalling_mount.stall()
    tree = make_tree(STRICT_TREE.format(data=data) + f'watch = ["{mnt}"]\n').start()
    c = tree.client
    assert c.call("watcher", "fs.stats")["watches"] == []  # not resolved yet
    stalling_mount.resume()

    def watched() -> bool:
        stats = c.call("watcher", "fs.stats")
        return [w["path"] for w in stats["watches"]] == [str(mnt)] \
            and c.call("watcher", "fs.sync", timeout=30)["unsynced"] == []

    wait_for(watched, "the configured watch placed and synced", timeout=60)
    assert tree.child("watcher")["restarts"] == 0


def test_unwatching_an_outer_watch_places_the_inner_one_off_the_loop(
        make_tree, data, stalling_mount):
    """Two watches, one inside the other (the inner one a mount): the inner tree is observed
    through the outer root. Unwatching the outer makes the inner a root of its own, placed
    anew (watchdog looks at it and walks it): with its mount stalled, that waits on the
    walker thread, not on the loop, and once the mount answers the inner watch is synced."""
    tree = make_tree(STRICT_TREE.format(data=data)).start()
    pid = tree.child("watcher")["pid"]
    c = tree.client
    mnt = stalling_mount.mountpoint
    c.call("watcher", "fs.watch", {"path": str(mnt)}, timeout=60)
    outer = c.call("watcher", "fs.watch", {"path": str(data)}, timeout=60)
    stalling_mount.stall()
    c.call("watcher", "fs.unwatch", {"watch": outer["watch"]})
    stats = c.call("watcher", "fs.stats")
    assert stats["observer"]["roots"][str(mnt)]["via"] == "placing"
    assert stats["workers"]["walker"]["in_flight"] == 1
    assert c.call("watcher", "sys.ping") is not None
    stalling_mount.resume()
    wait_for(lambda: c.call("watcher", "fs.sync", timeout=30)["unsynced"] == [],
             "the inner root placed and synced", timeout=60)
    after = tree.child("watcher")
    assert (after["pid"], after["restarts"]) == (pid, 0)


# Big enough that a walk or a placement lasts many fs.stats round trips (each test sees the
# work in progress while the loop answers, which a loop held by it could not show); each
# entry costs 60-180 µs of the kernel's to make on this kind of VM.
BIG_DIRS = 6_000


def make_big_tree(root: Path, dirs: int, files: int) -> int:
    """`dirs` directories of `files` empty files each (a tree whose inotify watches alone
    take a long loop turn to place); returns the number of entries."""
    for d in range(dirs):
        sub = root / f"d{d // 100:03d}" / f"e{d % 100:02d}"
        sub.mkdir(parents=True)
        for i in range(files):
            os.close(os.open(sub / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
    return dirs * (files + 1) + (dirs + 99) // 100


def test_watching_a_big_tree_keeps_the_loop_answering_and_a_repeat_joins_the_placement(
        make_tree, tmpfs_path):
    data = tmpfs_path / "data"
    big = data / "big"
    big.mkdir(parents=True)
    entries = make_big_tree(big, BIG_DIRS, 4)
    tree = make_tree(STRICT_TREE.format(data=data)).start()
    pid = tree.child("watcher")["pid"]
    first: list[Any] = []
    again: list[Any] = []

    def watch_once(into: list[Any]) -> None:
        with Client(tree.runtime_dir, timeout=120.0) as c:
            try:
                into.append(c.call("watcher", "fs.watch", {"path": str(big)}, timeout=120))
            except BaseException as exc:
                into.append(exc)

    threads = [threading.Thread(target=watch_once, args=(first,))]
    threads[0].start()
    pings: list[float] = []
    during: dict | None = None
    with Client(tree.runtime_dir, timeout=10.0) as c:
        try:
            deadline = time.monotonic() + 120
            while not first and time.monotonic() < deadline:
                pings.append(timed_ping(c))
                stats = c.call("watcher", "fs.stats")
                if stats.get("watches_placing") == 1:
                    during = stats
                    break
            assert during is not None, f"no fs.stats answered during the placement: {first}"
            # The same watch asked again while it is placed: it joins the placement.
            threads.append(threading.Thread(target=watch_once, args=(again,)))
            threads[1].start()
            while not (first and again) and time.monotonic() < deadline:
                pings.append(timed_ping(c))
        finally:
            for t in threads:
                t.join(120)
        assert first and not isinstance(first[0], BaseException), first
        assert again and not isinstance(again[0], BaseException), again
        assert again[0]["watch"] == first[0]["watch"] and again[0]["via"] == "inotify"
        stats = c.call("watcher", "fs.stats")
        assert stats["watch_joins"] == 1 and len(stats["watches"]) == 1
        assert stats["index_entries"] == entries
        pings.sort()
        print(f"\n{len(pings)} pings while {entries} entries were watched and walked: "
              f"p50 {pings[len(pings) // 2]:.2f} ms, max {pings[-1]:.2f} ms")
        # Watching works: a change after the answer is published.
        sub = c.subscribe("watcher", ["fs.event"], from_seq=1)
        (big / "d000" / "e00" / "late").write_bytes(b"x")
        seen = synced_events(c, sub)
        assert any(e.get("path", "").endswith("/e00/late") for e in seen)
        sub.close()
    child = tree.child("watcher")
    assert (child["pid"], child["restarts"]) == (pid, 0), tree.output()


def test_a_big_subtree_inotify_has_no_room_for_is_placed_for_polling_off_the_loop(
        watcher, tmpfs_path, monkeypatch):
    """inotify out of room at a directory (ENOSPC) has that subtree polled; a polling
    observer's first snapshot walks the whole subtree, which held the loop for as long (a
    big one got the watcher killed as hung). It is placed on the walker: fs.stats answers
    while it is placed, and a file created there after is reported."""
    data = tmpfs_path
    big = data / "big"
    big.mkdir()
    make_big_tree(big, BIG_DIRS, 4)

    def no_room_at_big(path: bytes) -> None:
        if path.endswith(b"/big"):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(guarded, "add_watch_fault", no_room_at_big)  # (inherited by fork)
    c = watcher(roots=[str(data)], poll_interval_s=0.1)
    sub = c.subscribe("watcher", ["fs.event"], from_seq=1)
    c.call("watcher", "fs.watch", {"path": str(data)}, timeout=120)
    pings: list[float] = []

    def placing() -> list[str]:
        pings.append(timed_ping(c))
        return c.call("watcher", "fs.stats")["observer"]["polled_placing"]  # type: ignore

    assert wait_for(placing, "fs.stats answered while the subtree is placed", 60) == [str(big)]
    wait_for(lambda: not placing(), "the subtree placed for polling", 120)
    pings.sort()
    print(f"\n{len(pings)} pings while {big} was placed for polling: "
          f"p50 {pings[len(pings) // 2]:.2f} ms, max {pings[-1]:.2f} ms")
    assert c.call("watcher", "fs.stats")["observer"]["polled_subtrees"] == [str(big)]
    (big / "late.txt").write_bytes(b"x")  # big itself has no inotify watch: polled
    seen = synced_events(c, sub)
    # Only the new file: the resync ENOSPC asked for during the watch's placement diffed
    # against a told state with the watch's base in it (not its whole tree as created).
    created = [e["path"] for e in seen if e["kind"] == "created"]
    assert created == [str(big / "late.txt")], (len(created), created[:3])
    assert any(e.get("reason") == "enospc" and e.get("polled") == str(big) for e in seen)
    sub.close()


def test_a_listing_of_a_big_tree_walks_on_a_worker_while_the_loop_answers(make_tree, tmpfs_path):
    """A recursive fs.list with a glob that matches little looks at every entry of the tree;
    on the loop, a big enough tree got the watcher killed as hung (and again at each resend).
    The walk past the first entries runs on an `io` worker: fs.stats is answered while it
    runs, and the answer is whole."""
    data = tmpfs_path / "data"
    big = data / "big"
    big.mkdir(parents=True)
    make_big_tree(big, BIG_DIRS, 4)
    tree = make_tree(STRICT_TREE.format(data=data)).start()
    pid = tree.child("watcher")["pid"]
    got: list[Any] = []

    def list_once() -> None:
        with Client(tree.runtime_dir, timeout=120.0) as c:
            try:
                got.append(c.call("watcher", "fs.list", {"path": str(big), "recursive": True,
                                                         "glob": "f3"}, timeout=120))
            except BaseException as exc:
                got.append(exc)

    with Client(tree.runtime_dir, timeout=10.0) as c:
        before = c.call("watcher", "fs.stats")["workers"]["io"]["done"]
        lister = threading.Thread(target=list_once)
        lister.start()
        during = None
        try:
            deadline = time.monotonic() + 120
            while not got and time.monotonic() < deadline:
                io = c.call("watcher", "fs.stats")["workers"]["io"]
                if io["in_flight"] == 1:
                    during = io
        finally:
            lister.join(120)
        assert got and not isinstance(got[0], BaseException), got
        assert during is not None, "no fs.stats answered while the listing walked"
        # (at least: a checkpoint of the root's index written meanwhile is an io job too)
        assert c.call("watcher", "fs.stats")["workers"]["io"]["done"] >= before + 1
    names = [e["name"] for e in got[0]["entries"]]
    assert len(names) == BIG_DIRS and all(n.endswith("/f3") for n in names)
    assert got[0]["truncated"] is False
    child = tree.child("watcher")
    assert (child["pid"], child["restarts"]) == (pid, 0), tree.output()


def test_a_resync_of_a_big_tree_walks_while_the_loop_answers(make_tree, tmpfs_path):
    data = tmpfs_path / "data"
    big = data / "big"
    big.mkdir(parents=True)
    entries = make_big_tree(big, BIG_DIRS, 4)
    tree = make_tree(STRICT_TREE.format(data=data) + TELLER).start()
    pid = tree.child("watcher")["pid"]
    with Client(tree.runtime_dir, timeout=60.0) as c:
        c.call("watcher", "fs.watch", {"path": str(big)}, timeout=120)
        # the first life's walk of the root (the big tree in it) may still run: a resync
        # asked for meanwhile would run after it, not be the one this test follows
        wait_for(lambda: not c.call("watcher", "fs.stats")["resyncs"]["walking"],
                 "the first walk of the tree", 120)
        tell(tree, "watcher", "normal", 0)
        (big / "d000" / "e00" / "while-paused").write_bytes(b"x")
        before = c.call("watcher", "fs.stats")["resyncs"]["count"]
        done = tell(tree, "watcher", "normal", 3)["done"]
        assert done.get("resync") == {"reason": "resumed", "walking": True}, (
            done, tree.output())
        seen_walking = 0
        pings: list[float] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pings.append(timed_ping(c))
            resyncs = c.call("watcher", "fs.stats")["resyncs"]
            if resyncs["count"] > before:
                break
            seen_walking += resyncs["walking"]
        assert seen_walking, "no fs.stats answered while the resync walked"
        last = c.call("watcher", "fs.stats")["resyncs"]["last"]
        assert (last["reason"], last["changes"], last["entries"]) == (
            "resumed", 1, entries + 1), (last, tree.output())
        pings.sort()
        print(f"\n{len(pings)} pings while a resync walked {entries} entries: "
              f"p50 {pings[len(pings) // 2]:.2f} ms, max {pings[-1]:.2f} ms")
    child = tree.child("watcher")
    assert (child["pid"], child["restarts"]) == (pid, 0), tree.output()


def test_every_watcher_setting_its_docstring_names_passes_the_config_check(tmp_path):
    """The workers', walker's and stat-ahead's settings are configurable in a file (they
    were refused as unknown keys while the actor read them)."""
    from moorage.supervisor import config

    cfg = tmp_path / "w.toml"
    cfg.write_text("[actor.watcher]\nio_threads = 3\nio_queue = 64\nwalk_queue = 4\n"
                   "write_bytes_in_flight = 1048576\nswitch_interval_s = 0.002\n"
                   "stat_ahead = false\n")
    doc, _ = config.load(cfg)
    assert doc["actor"]["watcher"]["io_threads"] == 3
    assert doc["actor"]["watcher"]["stat_ahead"] is False

