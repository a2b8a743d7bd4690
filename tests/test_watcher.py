"""The watcher actor in a real process: real files, real inotify, real signals.

Nothing waits on a sleep: a test makes its changes, calls `fs.sync` (which answers once every
earlier change has been published) and reads the stream up to the clock it returned.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.watcher import driving as driving_mod
from moorage.actors.watcher import files as files_mod
from moorage.actors.watcher import guarded as guarded_mod
from moorage.actors.watcher.coalesce import Coalescer
from moorage.protocol.client import Loss
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.conftest import wait_pid_exit
from tests.pressure_support import told
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

ENTRY = "moorage.actors.watcher.actor:WatcherActor"


class Watcher:
    """One watcher actor, its client, and its fs.event stream read up to a clock."""

    def __init__(self, proc: Any, client: Any, data: Path) -> None:
        self.proc = proc
        self.client = client
        self.data = data
        self.sub = client.subscribe("watcher", ["fs.event"], from_seq=1)
        self.seen: list[dict] = []
        self.instance: str | None = None
        self.losses: list[Loss] = []

    def call(self, op: str, args: Any = None, **kw: Any) -> Any:
        return self.client.call("watcher", op, args, **kw)

    def sync(self) -> list[dict]:
        """Events up to everything changed before now (fs.sync's clock)."""
        clock = self.call("fs.sync", timeout=60)["clock"]
        return self.until(clock)

    def until(self, clock: list) -> list[dict]:
        out = []
        while not (self.seen and self.seen[-1]["clock"][0] == clock[0]
                   and self.seen[-1]["clock"][2] >= clock[2]):
            m = self.sub.next(timeout=60)
            assert m is not None, f"no event up to {clock}; last {self.seen[-1:]}"
            if isinstance(m, Loss):
                self.losses.append(m)
            elif isinstance(m, StreamMessage):
                self.seen.extend(m.body["events"])
                out.extend(m.body["events"])
        return out

    def wait_for(self, pred: Any) -> dict:
        while True:
            for ev in self.seen:
                if pred(ev):
                    return ev
            m = self.sub.next(timeout=60)
            assert m is not None, "no matching event"
            if isinstance(m, StreamMessage):
                self.seen.extend(m.body["events"])

    def resync(self, kind: str, reason: str) -> dict:
        """The first resync_begin or resync_end that `reason` asked for: resyncs asked for
        while one is scheduled run as one, their reasons joined ("root_back+root_moved")."""
        return self.wait_for(lambda e: e["kind"] == kind and reason in e["reason"].split("+"))

    def watch(self, path: Path | None = None, **kw: Any) -> dict:
        return self.call("fs.watch", {"path": str(path or self.data), **kw})


@pytest.fixture
def start(spawn_actor, client, data):
    def go(**config: Any) -> Watcher:
        config.setdefault("roots", [str(data)])
        config.setdefault("settle_ms", 10)
        proc = spawn_actor(ENTRY, "watcher", **config)
        client.hello("watcher")
        return Watcher(proc, client, data)

    return go


def kinds(events: list[dict], base: Path) -> list[tuple[str, str]]:
    """Net (kind, relative path) per path, folded with the watcher's own coalescing rules:
    under load a file's create and its first write may land in two settle windows."""
    net: dict[str, list] = {}
    for e in events:
        if "path" in e:
            net_add(net, e["path"], e["kind"])
    return [(k, os.path.relpath(p, base)) for p, (k, *_rest) in net.items()]


def net_add(net: dict[str, list], path: str, kind: str) -> None:
    c = Coalescer()
    c.pending = net
    c.add(path, kind, False)


def reported(events: list[dict]) -> set[str]:
    """Paths a consumer now believes exist (created or modified, not deleted after). A
    directory's deletion takes what is under it too, as PROTOCOL.md has it: a path gone with
    its directory before its own event went out has none."""
    alive: set[str] = set()
    for e in events:
        if e["kind"] in ("created", "modified"):
            alive.add(e["path"])
        elif e["kind"] == "deleted":
            alive.discard(e["path"])
            if e.get("type") == "dir":
                below = e["path"] + "/"
                alive = {p for p in alive if not p.startswith(below)}
    return alive


# --- events ------------------------------------------------------------------------------


def test_creates_modifies_deletes_and_moves_within_and_across_directories(start, data):
    w = start()
    w.watch()
    (data / "a.txt").write_text("one")
    assert kinds(w.sync(), data) == [("created", "a.txt")]
    with open(data / "a.txt", "a") as f:
        f.write("two")
    assert kinds(w.sync(), data) == [("modified", "a.txt")]
    (data / "d1").mkdir()
    (data / "d2").mkdir()
    assert sorted(kinds(w.sync(), data)) == [("created", "d1"), ("created", "d2")]
    os.rename(data / "a.txt", data / "d1" / "a.txt")  # across directories
    assert sorted(kinds(w.sync(), data)) == [("created", "d1/a.txt"), ("deleted", "a.txt")]
    os.rename(data / "d1" / "a.txt", data / "d1" / "b.txt")  # within one
    evs = w.sync()
    assert sorted(kinds(evs, data)) == [("created", "d1/b.txt"), ("deleted", "d1/a.txt")]
    assert {e.get("moved_from") for e in evs if e["kind"] == "created"} == {
        str(data / "d1/a.txt")}
    os.rename(data / "d1", data / "d2" / "d1")  # a directory with its contents
    assert set(kinds(w.sync(), data)) >= {("deleted", "d1"), ("created", "d2/d1"),
                                          ("created", "d2/d1/b.txt")}
    os.unlink(data / "d2" / "d1" / "b.txt")
    assert kinds(w.sync(), data) == [("deleted", "d2/d1/b.txt")]
    seqs = [e["clock"][2] for e in w.seen]
    assert seqs == list(range(1, len(seqs) + 1))  # consecutive: nothing missing in between
    assert not w.losses
    observer = w.call("fs.stats")["observer"]
    # the creates, the unlink and the files' renames (both halves in one read) taken by the
    # loop; the directory's move (its watches move with it) by the lane
    assert observer["inotify_on_loop"] >= 8 and observer["inotify_on_lane"] >= 2


def test_random_churn_leaves_the_index_and_the_stream_as_the_disk(start, data):
    """A seeded mix of 1,500 operations, as fast as they go: files made, rewritten, renamed
    across the tree and unlinked; directories made, two deep at once, moved with what they
    hold into one another, and removed with it. Once synced, the watcher's index (a full
    fs.query) and what its events said (applied in order) are both the disk, path for
    path."""
    rnd = random.Random(17)
    w = start()
    w.watch()
    dirs: list[Path] = [data]
    files: list[Path] = []
    for i in range(1500):
        r = rnd.random()
        if r < 0.25:
            d = rnd.choice(dirs) / f"d{i}"
            if rnd.random() < 0.3:
                (d / "n" / "m").mkdir(parents=True)
                dirs += [d, d / "n", d / "n" / "m"]
                (d / "n" / f"f{i}").write_text("x")
                files.append(d / "n" / f"f{i}")
            else:
                d.mkdir()
                dirs.append(d)
        elif r < 0.55:
            f = rnd.choice(dirs) / f"f{i}"
            f.write_text("y")
            files.append(f)
        elif r < 0.7 and files:
            f = files.pop(rnd.randrange(len(files)))
            g = rnd.choice(dirs) / f"r{i}"
            os.rename(f, g)
            files.append(g)
        elif r < 0.8 and files:
            files.pop(rnd.randrange(len(files))).unlink()
        elif r < 0.88 and len(dirs) > 1:
            d = rnd.choice(dirs[1:])
            shutil.rmtree(d)
            dirs = [x for x in dirs if x != d and d not in x.parents]
            files = [x for x in files if d not in x.parents]
        elif r < 0.94 and len(dirs) > 1:
            d = rnd.choice(dirs[1:])
            t = rnd.choice([x for x in dirs if x != d and d not in x.parents]) / f"m{i}"
            os.rename(d, t)

            def moved(x: Path, d: Path = d, t: Path = t) -> Path:
                return t / x.relative_to(d) if x == d or d in x.parents else x

            dirs = [moved(x) for x in dirs]
            files = [moved(x) for x in files]
        elif files:
            rnd.choice(files).write_text("zz")
    w.sync()
    disk = {os.path.join(top, n) for top, ds, fs in os.walk(data) for n in ds + fs}
    got = w.call("fs.query", {"path": str(data), "fields": ["name"], "max": 100_000})
    assert not got["more"]
    index = {os.path.join(data, name) for name in got["files"]}  # (names alone: strings)
    assert sorted(index - disk) == [] and sorted(disk - index) == []
    assert sorted(reported(w.seen) - disk) == [] and sorted(disk - reported(w.seen)) == []
    assert not w.losses


def test_a_burst_of_renames_in_out_and_within_is_delivered_with_every_move_paired(
        start, data, tmp_path):
    """Thousands of moves at once: files renamed in with nothing to pair with go out as
    created (guarded.plain_kind); with moves out and within, through watchdog's move
    grouper (movequeue.py pairs them by cookie): renamed in from outside (created), out
    (deleted once its half second unpaired is over) and within (created with moved_from,
    and the source deleted)."""
    n = 1500
    outside = tmp_path / "outside"
    outside.mkdir()
    for d in ("in", "src", "leaving"):
        (data / d).mkdir()
    for i in range(n):
        (outside / f"o{i}").touch()
        (data / "src" / f"s{i}").touch()
        (data / "leaving" / f"l{i}").touch()
        (outside / f"p{i}").touch()
    w = start()
    w.watch()
    w.sync()
    # first only renamed in: nothing waits to pair, each goes out as the loop reads it
    for i in range(n):
        os.rename(outside / f"p{i}", data / "in" / f"p{i}")
    evs = w.sync()
    assert sorted(kinds(evs, data)) == sorted(("created", f"in/p{i}") for i in range(n))
    assert not any(e.get("moved_from") for e in evs)
    # then all three at once
    for i in range(n):
        os.rename(outside / f"o{i}", data / "in" / f"o{i}")
        os.rename(data / "src" / f"s{i}", data / "in" / f"s{i}")
        os.rename(data / "leaving" / f"l{i}", outside / f"l{i}")
    evs = w.sync()
    net = dict((p, k) for k, p in kinds(evs, data))
    for i in range(n):
        assert net[f"in/o{i}"] == "created" and net[f"in/s{i}"] == "created"
        assert net[f"src/s{i}"] == "deleted" and net[f"leaving/l{i}"] == "deleted"
    hints = {e["path"]: e.get("moved_from") for e in evs if e["kind"] == "created"}
    assert all(hints[str(data / "in" / f"s{i}")] == str(data / "src" / f"s{i}")
               for i in range(n))
    assert not any(hints[str(data / "in" / f"o{i}")] for i in range(n))  # (from outside)
    seqs = [e["clock"][2] for e in w.seen]
    assert seqs == list(range(1, len(seqs) + 1)) and not w.losses


def test_what_the_loop_reads_while_a_window_is_open_is_taken_and_stat_ed_at_once(start, data):
    """A 30 s window: the two creations are fed (and their stats made on the stat-ahead
    thread) long before it would close; the sync's cookie closes it, and the flush uses
    those stats."""
    w = start(settle_ms=30_000)
    w.watch()
    published = w.call("fs.stats")["pipeline"]["published"]  # (the watch's markers)
    (data / "a").write_bytes(b"12")
    (data / "b").write_bytes(b"1234")

    def taken() -> dict | None:  # (each file's created and modified fed, every stat made)
        pipe = w.call("fs.stats")["pipeline"]
        ahead = pipe["stat_ahead"]
        return pipe if pipe["fed"] >= 4 and ahead["stats"] >= 2 and not ahead["queued"] else None

    pipe = wait_for(taken, "feed and stats while the window is open")
    assert pipe["published"] == published and pipe["pending"] == 2  # (the window is open)
    evs = w.sync()
    assert {(e["path"], e["size"]) for e in evs if "path" in e} == {
        (str(data / "a"), 2), (str(data / "b"), 4)}
    assert w.call("fs.stats")["pipeline"]["statted_ahead"] == 2


def test_a_burst_of_ten_thousand_creations_is_delivered_in_seq_order_with_none_lost(start, data):
    w = start()
    w.watch()
    burst = data / "burst"
    burst.mkdir()
    names = {str(burst / f"f{i:05d}") for i in range(10_000)}
    for p in names:
        with open(p, "wb") as f:
            f.write(b"x")
    evs = w.sync()
    assert names <= reported(evs)
    seqs = [e["clock"][2] for e in w.seen]
    assert seqs == list(range(1, len(seqs) + 1))
    assert not w.losses
    stats = w.call("fs.stats")
    assert stats["observer"]["dropped_to_resync"] == 0 or stats["resyncs"]["count"] > 1


def test_events_name_their_watches_and_excluded_paths_are_not_published(start, data):
    w = start()
    (data / "node_modules").mkdir()
    (data / "src").mkdir()
    wid = w.watch(exclude=["node_modules", "*.log"])["watch"]
    (data / "node_modules" / "x.js").write_text("1")
    (data / "src" / "debug.log").write_text("1")
    (data / "src" / "main.py").write_text("1")
    evs = w.sync()
    assert kinds(evs, data) == [("created", "src/main.py")]
    assert [e["watches"] for e in evs if "path" in e] == [[wid]]
    w.call("fs.unwatch", {"watch": wid})
    with pytest.raises(MoorageError) as e:
        w.call("fs.unwatch", {"watch": wid})
    assert e.value.name == "watch_not_found"


def test_excluded_subtrees_get_no_inotify_watch_until_a_watch_needs_them(start, data):
    for d in ("node_modules/a/b", "node_modules/c", "src/deep"):
        (data / d).mkdir(parents=True)
    w = start()
    w.watch(exclude=["node_modules"])
    # data, src, src/deep: nothing inside node_modules is watched (nor walked for it).
    assert w.call("fs.stats")["observer"]["inotify_watches"] == 3
    (data / "node_modules" / "d").mkdir()  # a new excluded directory stays unwatched too
    (data / "src" / "new").mkdir()
    w.sync()
    assert w.call("fs.stats")["observer"]["inotify_watches"] == 4
    # A second watch without the exclude needs them: they are watched before fs.watch answers.
    all_of_it = w.watch(path=data / "node_modules")["watch"]
    assert w.call("fs.stats")["observer"]["inotify_watches"] == 9
    (data / "node_modules" / "a" / "b" / "x.js").write_text("1")
    evs = [e for e in w.sync() if e.get("path", "").endswith("x.js")]
    assert [(e["kind"], e["watches"]) for e in evs] == [("created", [all_of_it])]


def test_a_watch_above_another_excluding_it_keeps_the_inner_watch_observed(start, data):
    # The outer watch's root replaces the inner one's, and its walk (which places the inotify
    # watches as it reads the tree) must still watch what its exclude prunes from its base:
    # the inner watch needs it.
    for d in ("node_modules/a/b", "node_modules/c", "src/deep"):
        (data / d).mkdir(parents=True)
    w = start()
    inner = w.watch(path=data / "node_modules")["watch"]
    outer = w.watch(exclude=["node_modules"])["watch"]
    stats = w.call("fs.stats")["observer"]
    assert list(stats["roots"]) == [str(data)]
    assert stats["inotify_watches"] == 7  # every directory, node_modules' four included
    (data / "node_modules" / "a" / "b" / "x.js").write_text("1")
    (data / "src" / "deep" / "y.py").write_text("1")
    evs = {os.path.relpath(e["path"], data): e["watches"] for e in w.sync()
           if e.get("kind") == "created"}
    assert evs == {"node_modules/a/b/x.js": [inner], "src/deep/y.py": [outer]}


def test_own_writes_are_tagged_origin_self_and_external_ones_external(start, data):
    w = start()
    w.watch()
    w.call("fs.write", {"path": "mine.txt", "data": b"by the actor"})
    (data / "theirs.txt").write_text("by someone else")
    evs = [e for e in w.sync() if "path" in e and not os.path.basename(e["path"]).startswith(".")]
    assert {(os.path.basename(e["path"]), e["origin"]) for e in evs} == {
        ("mine.txt", "self"), ("theirs.txt", "external")}


def test_since_answers_what_changed_after_a_clock_and_fresh_instance_for_another(start, data):
    w = start()
    clock = w.watch()["clock"]
    (data / "a").write_text("1")
    (data / "b").write_text("2")
    w.sync()
    got = w.call("fs.since", {"clock": clock})
    assert not got["fresh_instance"]
    assert kinds(got["events"], data) == [("created", "a"), ("created", "b")]
    assert w.call("fs.since", {"clock": ["someone-else", 0, 3]})["fresh_instance"]
    with pytest.raises(MoorageError) as e:
        w.call("fs.since", {"clock": "c:1:2"})
    assert e.value.name == "bad_args"


def test_the_stream_retains_what_the_journal_does_and_no_more(start, data):
    """A batch the journal lets go leaves fs.event's retention too: a subscriber catches up
    from the same window by `replay` or by `fs.since`, and the process holds it once."""
    w = start(journal_max=4, chunk=1)
    clock = w.watch()["clock"]
    for i in range(10):
        (data / f"f{i}").write_text("x")
        w.sync()
    replay = w.call("replay", {"topic": "fs.event", "from_seq": 1, "max": 100})
    journal = w.call("fs.stats")["journal"]
    kept = [ev["clock"][2] for _, body, _ in replay["messages"] for ev in body["events"]]
    assert kept == list(range(journal["first_seq"], journal["seq"] + 1)) and len(kept) == 4
    assert replay["lost"] == [1, replay["first_seq"] - 1]
    assert w.call("fs.since", {"clock": clock})["fresh_instance"]


# --- losses that must turn into resyncs -------------------------------------------------------


def test_a_kernel_queue_overflow_ends_in_a_resync_with_the_full_diff(start, data):
    w = start()
    w.watch()
    os.kill(w.proc.pid, signal.SIGSTOP)  # nobody reads the inotify queue (16384 events)
    try:
        names = {str(data / f"g{i:05d}") for i in range(20_000)}
        for p in names:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
    finally:
        os.kill(w.proc.pid, signal.SIGCONT)
    evs = w.sync()
    begins = [e for e in evs if e["kind"] == "resync_begin"]
    assert any("overflow" in e["reason"] for e in begins), begins
    assert names <= reported(evs)
    assert w.call("fs.stats")["resyncs"]["by_reason"].get("overflow", 0) >= 1


def test_a_full_hand_off_buffer_ends_in_a_resync_with_the_full_diff(start, data, monkeypatch):
    hold = data.parent / "hold"
    real_drain = driving_mod.Driving.drain

    def stalled_drain(self):  # type: ignore[no-untyped-def]
        # Injected stall of the actor's loop (set before the fork): while `hold` exists the
        # loop does not drain, so watchdog's threads fill the 16-event buffer.
        while hold.exists():
            time.sleep(0.005)  # sleep-ok: the injected stall itself, in the actor
        real_drain(self)

    monkeypatch.setattr(driving_mod.Driving, "drain", stalled_drain)
    w = start(buffer_max=16)
    w.watch()
    hold.touch()
    names = {str(data / f"h{i:04d}") for i in range(2000)}
    for p in names:
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
    hold.unlink()
    evs = w.sync()
    assert any(e["kind"] == "resync_begin" and "overflow" in e["reason"] for e in evs)
    assert names <= reported(evs)
    assert w.call("fs.stats")["observer"]["dropped_to_resync"] > 0


def test_enospc_on_a_subdirectory_polls_that_subtree_only_with_a_warning(
        start, data, monkeypatch):
    (data / "deep" / "er").mkdir(parents=True)
    (data / "beside").mkdir()

    def no_watches_left(path: bytes) -> None:
        if b"/deep" in path:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", no_watches_left)  # inherited by fork
    w = start(poll_interval_s=0.1)
    w.watch()
    warning = w.wait_for(lambda e: e["kind"] == "warning")
    assert warning["reason"] == "enospc" and warning["mode"] == "polling"
    assert warning["root"] == str(data) and warning["scope"] == "subtree"
    assert warning["polled"] == str(data / "deep")
    # fs.sync also waits for a cookie in the polled subtree: its change is in by then.
    (data / "deep" / "er" / "new.txt").write_text("seen by polling")
    (data / "beside" / "b.txt").write_text("seen by inotify")
    got = kinds(w.sync(), data)
    assert ("created", "deep/er/new.txt") in got and ("created", "beside/b.txt") in got
    stats = w.call("fs.stats")
    assert stats["observer"]["roots"][str(data)]["via"] == "inotify"
    assert stats["observer"]["polled_subtrees"] == [str(data / "deep")]
    assert stats["mode"] == "mixed" and stats["resyncs"]["by_reason"].get("enospc", 0) >= 1


def test_enospc_in_more_subtrees_than_the_cap_polls_the_whole_root(start, data, monkeypatch):
    for name in ("a", "b", "c"):
        (data / name).mkdir()

    def no_watches_left(path: bytes) -> None:
        if path != os.fsencode(data):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", no_watches_left)
    w = start(poll_interval_s=0.1, max_polled_subtrees=2)
    w.watch()
    whole = w.wait_for(lambda e: e["kind"] == "warning" and e.get("scope") == "root")
    assert whole["polled"] == str(data)
    (data / "c" / "late.txt").write_text("1")
    assert ("created", "c/late.txt") in kinds(w.sync(), data)
    stats = w.call("fs.stats")
    assert stats["mode"] == "polling" and stats["observer"]["polled_subtrees"] == []


def test_a_dead_observer_thread_is_found_within_a_second_recreated_and_resynced(
        start, data, monkeypatch):
    fired = []

    def boom(path: bytes) -> None:
        if path.endswith(b"/boom") and not fired:
            fired.append(path)
            raise RuntimeError("injected: kills the inotify lane thread")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", boom)
    w = start(liveness_s=0.2)
    w.watch()
    # A directory moved in takes watchdog's path, on the lane thread: its watch placed
    # there meets the fault (one made in place is taken by the loop, which hands an event
    # it cannot take to the lane).
    (data.parent / "stage" / "boom").mkdir(parents=True)
    os.rename(data.parent / "stage" / "boom", data / "boom")
    begin = w.wait_for(lambda e: e["kind"] == "resync_begin" and e["epoch"] > 1)
    assert "observer_dead" in begin["reason"]
    (data / "boom" / "after.txt").write_text("1")
    evs = w.seen + w.sync()
    assert {str(data / "boom"), str(data / "boom" / "after.txt")} <= reported(evs)
    assert w.call("fs.stats")["observer"]["recreated"] == 1


def test_a_health_cookie_that_does_not_come_back_recreates_the_observer(
        start, data, monkeypatch):
    fired = []

    def boom(path: bytes) -> None:
        if path.endswith(b"/mute") and not fired:
            fired.append(path)
            raise RuntimeError("injected: the inotify lane thread dies")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", boom)
    # The liveness check is kept out of the way, so only the health cookie can notice.
    w = start(liveness_s=3600, health_interval_s=0.2, health_timeout_s=0.5)
    w.watch()
    (data.parent / "stage" / "mute").mkdir(parents=True)
    os.rename(data.parent / "stage" / "mute", data / "mute")  # the lane's path (above)
    begin = w.wait_for(lambda e: e["kind"] == "resync_begin" and e["epoch"] > 1)
    assert begin["reason"] == "health_cookie"
    (data / "mute" / "heard").write_text("1")
    assert str(data / "mute" / "heard") in reported(w.seen + w.sync())
    stats = w.call("fs.stats")
    assert stats["health"]["failed"] >= 1 and stats["observer"]["recreated"] >= 1


def test_watching_the_state_directory_does_not_feed_back_into_itself(start, data):
    w = start(state_dir=str(data / ".watcher-state"))
    w.watch()
    (data / "f").write_text("x")
    w.sync()
    published = w.call("fs.stats")["pipeline"]["published"]
    for _ in range(3):
        w.sync()
    assert w.call("fs.stats")["pipeline"]["published"] == published
    assert not [e for e in w.seen if ".watcher-state" in e.get("path", "")]


def test_a_state_directory_that_goes_away_costs_the_state_never_an_event(start, data,
                                                                         tmp_path):
    """The state directory removed under a running watcher (a cleaner of the temp dir):
    the next checkpoint cannot start the log's next generation. The state is given up, the
    log's descriptor kept until then (closed first, its number went to the next file
    opened, and every event after it failed to be logged and was never published), and
    every event still comes."""
    state = tmp_path / "state"
    w = start(state_dir=str(state), checkpoint_s=0.05)
    w.watch()
    (data / "a").write_text("1")
    w.sync()
    shutil.rmtree(state)
    (data / "b").write_text("2")
    wait_for(lambda: w.call("fs.stats")["checkpoints"]["lost"], "the state given up")
    for i in range(3):
        (data / f"c{i}").write_text("3")
    got = {os.path.basename(e["path"]) for e in w.sync() if "path" in e}
    assert {"c0", "c1", "c2"} <= got
    assert not state.exists()


def test_a_directory_moved_out_and_made_again_is_told_gone_then_new(start, data, tmp_path):
    """`mv build elsewhere && mkdir build`: the move out (unpaired, held for its pair) and
    the new directory meet in one window. Told as one `modified`, what was under the old
    one stayed in the index (fs.query listed it) and no subscriber learnt it was gone."""
    build = data / "build"
    build.mkdir()
    (build / "a.o").write_text("1")
    w = start()
    w.watch()
    w.sync()
    build.rename(tmp_path / "moved")
    build.mkdir()
    (build / "b.o").write_text("2")
    evs = [(e["kind"], os.path.relpath(e["path"], data)) for e in w.seen + w.sync()
           if "path" in e]
    assert evs.index(("deleted", "build")) < evs.index(("created", "build")), evs
    names = w.call("fs.query", {"path": str(data), "fields": ["name"]})["files"]
    assert "build/a.o" not in names and "build/b.o" in names, names


def test_a_deleted_root_is_announced_and_watched_again_when_it_is_back(start, data):
    w = start(liveness_s=0.1)
    root = data / "project"
    root.mkdir()
    (root / "a").write_text("1")
    w.watch(root)
    shutil.rmtree(root)
    warning = w.wait_for(lambda e: e["kind"] == "warning")
    assert warning["reason"] == "root_missing" and warning["path"] == str(root)
    root.mkdir()
    (root / "b").write_text("2")
    begin = w.resync("resync_begin", "root_back")
    assert begin["epoch"] == 2
    evs = w.seen + w.sync()
    assert reported(evs) == {str(root / "b")}


def test_a_health_cookie_round_trip_keeps_the_observer(start, data):
    w = start(health_interval_s=0.1, health_timeout_s=5)
    w.watch()
    stats = w.call("fs.stats")
    end = time.monotonic() + 30
    while stats["health"]["ok"] < 2:  # no event marks a healthy cookie: poll, bounded
        assert time.monotonic() < end, stats
        w.sync()
        stats = w.call("fs.stats")
    assert stats["health"]["failed"] == 0 and stats["observer"]["recreated"] == 0


def test_a_restarted_watcher_reports_what_changed_while_it_was_dead(start, data, runtime_dir):
    w = start()
    w.watch()
    for name in "abc":
        (data / name).write_text(name)
    w.sync()
    w.proc.proc.kill()
    assert wait_pid_exit(w.proc.pid, 10)
    os.unlink(data / "a")  # published as created, then deleted while nobody watched
    (data / "b").write_text("bb")
    (data / "new").write_text("n")
    w2 = start()
    evs = w2.sync()
    begin = evs[0]
    assert begin["kind"] == "resync_begin" and begin["reason"] == "restart"
    assert ("deleted", "a") in kinds(evs, data)
    assert {str(data / "b"), str(data / "new")} <= reported(evs)
    assert reported(evs) | {str(data / "c")} >= {str(data / n) for n in ("b", "c", "new")}
    assert w2.call("fs.stats")["watches"][0]["path"] == str(data)  # restored, not re-asked


def test_a_configured_watch_led_out_of_the_roots_is_not_placed_and_the_rest_served(
        start, data, tmp_path):
    """`moorage up` refuses such a watch; a symbolic link on its way can lead out of the
    roots after that (here: before a restart). The watcher starts all the same, places the
    other watches, and says which it could not place."""
    (data / "src").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (data / "out").symlink_to(outside)
    w = start(watch=[str(data / "src"), {"path": "out", "recursive": False}, str(outside)])
    info = w.call("sys.info")
    assert [u["path"] for u in info["unplaced"]] == ["out", str(outside)]
    assert all("resolves outside the configured roots" in u["error"] for u in info["unplaced"])
    assert [x["path"] for x in w.call("fs.stats")["watches"]] == [str(data / "src")]
    w.sync()  # (the start's walk done: what comes after it is an event)
    (data / "src" / "f").write_text("x")
    assert ("created", "src/f") in kinds(w.sync(), data)


# --- the file service ----------------------------------------------------------------------


def test_an_external_write_invalidates_the_cache(start, data):
    w = start()
    w.watch()
    (data / "f").write_text("old!")
    assert w.client.request("watcher", "fs.read", {"path": "f"}).attachments == [b"old!"]
    assert w.client.request("watcher", "fs.read", {"path": "f"}).attachments == [b"old!"]
    (data / "f").write_text("new!")  # same size
    assert w.client.request("watcher", "fs.read", {"path": "f"}).attachments == [b"new!"]
    cache = w.call("fs.stats")["cache"]
    assert cache["hits"] == 1 and cache["misses"] == 2


def test_a_cp_p_replacement_with_the_same_mtime_is_detected(start, data):
    w = start()
    a, b = data / "a", data / "b"
    a.write_bytes(b"AAAA")
    b.write_bytes(b"BBBB")
    st = a.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.client.request("watcher", "fs.read", {"path": "a"}).attachments == [b"AAAA"]
    subprocess.run(["cp", "-p", str(b), str(a)], check=True)
    assert a.stat().st_mtime_ns == st.st_mtime_ns
    r = w.client.request("watcher", "fs.read", {"path": "a"})
    assert r.attachments == [b"BBBB"] and r.body["stat"]["ctime_ns"] != st.st_ctime_ns


def test_a_read_that_keeps_failing_answers_the_cached_copy_marked_stale(
        start, data, monkeypatch):
    # The failure is injected (EIO from the reader seam, set before the fork): a real EIO
    # needs a failing device, which this machine cannot give a test.
    real = files_mod.FileService.read_file
    switch = data.parent / "fail-now"

    def flaky(self, path, offset, length, wait=True):  # type: ignore[no-untyped-def]
        if switch.exists():
            raise OSError(errno.EIO, "Input/output error")
        return real(self, path, offset, length, wait)

    monkeypatch.setattr(files_mod.FileService, "read_file", flaky)
    w = start(retry={"retries": 3, "initial_ms": 1, "max_ms": 5})
    (data / "f").write_text("v1")
    w.client.request("watcher", "fs.read", {"path": "f"})
    (data / "f").write_text("v2")
    switch.touch()
    r = w.client.request("watcher", "fs.read", {"path": "f"})
    assert r.body["stale"] is True and r.attachments == [b"v1"]
    (data / "g").write_text("never read")
    with pytest.raises(MoorageError) as e:
        w.call("fs.read", {"path": "g"})
    assert e.value.name == "io_error" and e.value.error.detail["attempts"] == 4
    assert not e.value.retryable  # (the watcher spent the budget: no resend by the client)
    switch.unlink()
    r = w.client.request("watcher", "fs.read", {"path": "f"})
    assert r.body["stale"] is False and r.attachments == [b"v2"]


def test_confinement_refuses_dotdot_and_symlink_escapes(start, data):
    w = start()
    outside = data.parent / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink(outside / "secret", data / "link-file")
    os.symlink(outside, data / "link-dir")
    (data / "sub").mkdir()
    for op, args in [("fs.read", {"path": "../outside/secret"}),
                     ("fs.read", {"path": str(data / "sub/../../outside/secret")}),
                     ("fs.read", {"path": "link-file"}),
                     ("fs.read", {"path": "link-dir/secret"}),
                     ("fs.stat", {"path": "/etc/passwd"}),
                     ("fs.list", {"path": "link-dir"}),
                     ("fs.write", {"path": "link-dir/new", "data": b"x"}),
                     ("fs.watch", {"path": str(outside)})]:
        with pytest.raises(MoorageError) as e:
            w.call(op, args)
        assert e.value.name == "forbidden", (op, args)
    assert not (outside / "new").exists()
    assert w.call("fs.stat", {"path": "sub/../sub"})["type"] == "dir"


def test_big_files_are_paged_by_offset_and_length(start, data):
    w = start(max_read_bytes=1 << 20, cache_max_file_bytes=1 << 20)
    blob = os.urandom(3 << 20)
    (data / "big").write_bytes(blob)
    with pytest.raises(MoorageError) as e:
        w.call("fs.read", {"path": "big"})
    assert e.value.name == "file_too_large" and e.value.error.detail["size"] == len(blob)
    got = b"".join(w.client.request("watcher", "fs.read",
                                    {"path": "big", "offset": off, "length": 1 << 20}
                                    ).attachments[0] for off in range(0, len(blob), 1 << 20))
    assert got == blob


def test_writes_are_atomic_and_conflicts_are_refused(start, data):
    w = start()
    out = w.client.request("watcher", "fs.write", {"path": "f"}, attachments=[b"one"]).body
    assert (data / "f").read_bytes() == b"one" and out["atomic"]
    tag = w.call("fs.stat", {"path": "f"})["etag"]
    assert tag == out["stat"]["etag"]
    (data / "f").write_bytes(b"someone else")
    with pytest.raises(MoorageError) as e:
        w.call("fs.write", {"path": "f", "data": b"two", "if_match": tag})
    assert e.value.name == "conflict"
    assert (data / "f").read_bytes() == b"someone else"
    with pytest.raises(MoorageError) as e:
        w.call("fs.write", {"path": "nodir/f", "data": b"x"})
    assert e.value.name == "not_found"
    with pytest.raises(MoorageError) as e:
        w.call("fs.write", {"path": "f"})
    assert e.value.name == "bad_args"
    assert sorted(os.listdir(data)) == ["f"]


def test_a_write_given_its_contents_twice_is_refused_and_nothing_is_written(start, data):
    """The declaration says 0 or 1 attachment, and `data` or an attachment: a request that
    gives more is refused whole, not written with part of what it sent."""
    w = start()
    for args, atts in [({"path": "f"}, [b"first", b"SECOND"]),
                       ({"path": "f", "data": b"DATA"}, [b"ATT"])]:
        with pytest.raises(MoorageError) as e:
            w.client.request("watcher", "fs.write", args, attachments=atts)
        assert e.value.name == "bad_args"
    assert os.listdir(data) == []
    # An op that takes no attachment refuses one too; the actor serves on.
    with pytest.raises(MoorageError) as e:
        w.client.request("watcher", "fs.stat", {"path": "."}, attachments=[b"x"])
    assert e.value.name == "bad_args" and "1 attachments; it takes 0" in str(e.value)
    assert w.call("fs.stat", {"path": "."})["type"] == "dir"


def test_bad_inputs_get_classified_errors_and_the_actor_serves_on(start, data):
    w = start()
    for op, args, name in [("fs.read", {"path": 3}, "bad_args"),
                           ("fs.read", {"path": "x", "offset": -1}, "bad_args"),
                           ("fs.read", {"path": "missing"}, "not_found"),
                           ("fs.read", {"path": "a\0b"}, "bad_args"),
                           ("fs.read", {"path": "."}, "is_directory"),
                           ("fs.watch", {"path": "missing"}, "not_found"),
                           ("fs.list", {"path": "missing"}, "not_found"),
                           ("fs.sync", {"timeout_ms": 0}, "bad_args")]:
        with pytest.raises(MoorageError) as e:
            w.call(op, args)
        assert e.value.name == name, (op, args, e.value)
    assert w.call("fs.stats")["mode"] == "inotify"


# --- fallbacks and pressure ------------------------------------------------------------------


def test_the_cache_only_fallback_serves_files_and_refuses_watches(start, data):
    w = start(fallback="cache_only")
    (data / "f").write_text("x")
    assert w.client.request("watcher", "fs.read", {"path": "f"}).attachments == [b"x"]
    for op, args in [("fs.watch", {"path": str(data)}), ("fs.sync", None),
                     ("fs.since", {"clock": ["i", 0, 0]})]:
        with pytest.raises(MoorageError) as e:
            w.call(op, args)
        assert e.value.name == "resource_exhausted"
        assert e.value.error.detail == {"fallback": "cache_only"}
    assert w.call("fs.stats")["mode"] == "cache_only"


def test_the_polling_fallback_still_delivers_every_change(start, data):
    w = start(fallback="polling", poll_interval_s=0.1)
    assert w.watch()["via"] == "polling"
    (data / "p").write_text("x")
    (data / "q").mkdir()
    assert sorted(kinds(w.sync(), data)) == [("created", "p"), ("created", "q")]


def test_quality_zero_pauses_watching_and_its_return_resyncs(start, data):
    w = start()
    w.watch()
    done = w.call("sys.pressure", told("normal", 0))["done"]
    assert done["watching"] == "paused"
    with pytest.raises(MoorageError) as e:
        # (a call shorter than the refusal's retry_after_ms, 5 s: the client hands the busy
        # on at once, instead of asking again every 5 s within the op's own timeout)
        w.call("fs.watch", {"path": str(data), "recursive": False}, timeout=4.0)
    assert e.value.name == "busy"
    (data / "while-paused").write_text("x")
    done = w.call("sys.pressure", told("normal", 3))["done"]
    assert done["watching"] == "resumed" and done["resync"]["reason"] == "resumed"
    evs = w.sync()
    assert ("created", "while-paused") in kinds(evs, data)
    assert any(e["kind"] == "resync_begin" and e["reason"] == "resumed" for e in evs)
    end = next(e for e in evs if e["kind"] == "resync_end" and e["reason"] == "resumed")
    assert end["changes"] == 1 and w.call("fs.stats")["resyncs"]["last"]["changes"] == 1


def test_pressure_halves_then_clears_the_cache(start, data):
    w = start()
    for i in range(8):
        (data / f"f{i}").write_bytes(b"x" * 1000)
        w.call("fs.read", {"path": f"f{i}"})
    done = w.call("sys.pressure", told("moderate", 3))["done"]
    assert done["cache"]["entries_dropped"] == 4
    done = w.call("sys.pressure", told("high", 3))["done"]
    assert done["cache"]["entries_dropped"] == 4
    assert w.call("fs.stats")["cache"]["bytes"] == 0
