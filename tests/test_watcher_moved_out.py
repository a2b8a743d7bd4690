"""A directory that leaves the watch without an event for what is in it, and a directory
swapped by a rename, in a real watcher on real directories.

A directory moved out of every watch (an editor's delete-to-trash, `mv node_modules /tmp/x`,
a move into an excluded directory) gets one inotify event; watchdog adds one for each
subdirectory and none for a file. Every path the watcher had told below it must still be
told deleted, once, on the stream, by `fs.since` and by `fs.query` with `since`, as after an
`rm -rf` of the same tree.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest

from moorage.actors.watcher import pipeline as pipeline_mod
from moorage.actors.watcher.journal import Clock, Journal
from moorage.actors.watcher.pipeline import Pipeline
from moorage.actors.watcher.snapshot import Index, walk
from moorage.actors.watcher.watches import Watches
from tests.test_watcher import Watcher, start  # noqa: F401  (the fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def make_tree(top: Path, dirs: int, subdirs: int, files: int) -> set[str]:
    """`top`/p{i}/m{j}/f{k}.js; returns every path made, `top` included."""
    made = {str(top)}
    for i in range(dirs):
        for j in range(subdirs):
            d = top / f"p{i}" / f"m{j}"
            d.mkdir(parents=True)
            made |= {str(d.parent), str(d)}
            for k in range(files):
                (d / f"f{k}.js").write_text("x")
                made.add(str(d / f"f{k}.js"))
    return made


def deletions(events: list[dict]) -> list[str]:
    return [e["path"] for e in events if e.get("kind") == "deleted"]


def assert_told_gone_once_deepest_first(events: list[dict], gone: set[str]) -> None:
    told = deletions(events)
    counts = Counter(p for p in told if p in gone)
    assert set(counts) == gone, sorted(gone - set(counts))[:5]
    assert max(counts.values()) == 1, [p for p, n in counts.items() if n > 1][:5]
    at = {p: i for i, p in enumerate(told) if p in gone}
    early = [p for p in gone if os.path.dirname(p) in at and at[os.path.dirname(p)] < at[p]]
    assert not early, early[:5]


def since_answers(w: Watcher, root: Path, clock: list) -> tuple[set[str], dict[str, Any]]:
    """What fs.since and fs.query with `since` say changed after `clock`, every page: the
    paths fs.since names deleted, and fs.query's files by full path."""
    told: set[str] = set()
    since = {"more": True, "clock": clock}
    while since["more"]:
        since = w.call("fs.since", {"clock": since["clock"]})
        assert not since["fresh_instance"]
        told |= set(deletions(since["events"]))
    query = w.call("fs.query", {"path": str(root), "since": clock,
                                "fields": ["name", "exists"]})
    assert not query["fresh_instance"]
    files = query["files"]
    while query["more"]:
        query = w.call("fs.query", {"cursor": query["cursor"]})
        files += query["files"]
    return told, {str(root / f["name"]): f for f in files}


def test_a_directory_moved_out_of_the_watch_is_told_deleted_with_every_path_below_it(
        start, data, tmp_path):  # noqa: F811
    gone = make_tree(data / "node_modules", dirs=4, subdirs=5, files=5)
    w = start()
    w.watch()
    clock = w.call("fs.sync", timeout=60)["clock"]
    w.until(clock)
    trash = tmp_path / "Trash"
    trash.mkdir()
    (data / "node_modules").rename(trash / "node_modules")
    assert_told_gone_once_deepest_first(w.sync(), gone)
    told, files = since_answers(w, data, clock)
    assert told == gone
    assert set(files) == gone and not any(f["exists"] for f in files.values())
    left = w.call("fs.query", {"path": str(data), "fields": ["name"]})["files"]
    assert not [n for n in left if n.startswith("node_modules")], left


def test_a_directory_moved_into_an_excluded_one_is_told_deleted_with_its_files(
        start, data):  # noqa: F811
    gone = make_tree(data / "pkg", dirs=1, subdirs=2, files=4)
    (data / "build").mkdir()
    w = start()
    w.watch(exclude=["build"])
    clock = w.call("fs.sync", timeout=60)["clock"]
    w.until(clock)
    (data / "pkg").rename(data / "build" / "pkg")
    assert_told_gone_once_deepest_first(w.sync(), gone)
    told, files = since_answers(w, data, clock)
    assert told == gone and set(files) == gone


def test_a_directory_renamed_within_the_watch_and_made_again_keeps_each_move_paired(
        start, data):  # noqa: F811
    """`mv build build.old && mkdir build`: what was below the old one is told by its own
    moves (a deletion with `moved_to` each), not again as gone with the directory."""
    gone = make_tree(data / "build", dirs=1, subdirs=2, files=3) - {str(data / "build")}
    w = start()
    w.watch()
    w.sync()
    (data / "build").rename(data / "build.old")
    (data / "build").mkdir()
    events = w.sync()
    told = [e for e in events if e["kind"] == "deleted" and e["path"] in gone]
    assert Counter(e["path"] for e in told) == Counter(gone)
    assert all(e["moved_to"] == e["path"].replace("/build/", "/build.old/") for e in told)


def test_a_tree_larger_than_a_turn_s_telling_is_told_in_full_before_the_sync_answers(
        start, tmpfs_path):  # noqa: F811
    """12,000 paths: more than one turn tells (pipeline.TELL_SLICE). The sync made right
    after the move answers only once every deletion is out."""
    root, trash = tmpfs_path / "root", tmpfs_path / "trash"
    root.mkdir()
    trash.mkdir()
    gone = make_tree(root / "node_modules", dirs=40, subdirs=10, files=29)  # 12,041 paths
    w = start(roots=[str(root)])
    w.watch(root)
    clock = w.call("fs.sync", timeout=60)["clock"]
    w.until(clock)
    (root / "node_modules").rename(trash / "node_modules")
    assert_told_gone_once_deepest_first(w.sync(), gone)
    assert w.call("fs.stats")["pipeline"]["telling"] == 0
    told, files = since_answers(w, root, clock)
    assert told == gone and set(files) == gone


def test_a_telling_goes_a_slice_a_turn_and_what_came_after_it_waits_for_it(
        tmp_path, monkeypatch):
    """The pipeline in memory on a real tree, its loop turns run by hand: a directory moved
    out publishes TELL_SLICE deletions a turn; a change and a cookie that came meanwhile go
    out after the last of them, the directory's own deletion last of the move's."""
    monkeypatch.setattr(pipeline_mod, "TELL_SLICE", 10)
    top = tmp_path / "w"
    gone = make_tree(top / "nm", dirs=2, subdirs=3, files=4)  # 33 paths
    (top / "keep").write_text("1")
    ws = Watches()
    ws.add(str(top), True, [])
    turns: list[Any] = []
    published: list[list[dict]] = []
    cookies: list[tuple[str, int]] = []
    p = Pipeline(Journal("i"), ws, Index(walk(str(top))),
                 lambda body: published.append(msgpack.unpackb(body.data)["events"]),
                 lambda _delay, fn: turns.append(fn), settle_s=0.0,
                 on_cookie=lambda path, _kind: cookies.append(
                     (path, sum(len(m) for m in published))))
    shutil.move(str(top / "nm"), str(tmp_path / "nm"))
    (top / "keep").write_text("22")
    p.feed([("deleted", str(top / "nm"), "", True)])
    p.feed([("modified", str(top / "keep"), "", False),
            ("created", str(top / ".moorage-cookie-1"), "", False)])
    sizes = [len(published[-1])]
    assert sizes == [10] and not cookies
    while turns:
        n = len(published)
        turns.pop(0)()
        sizes.append(sum(len(m) for m in published[n:]))
    events = [e for m in published for e in m]
    paths = [e["path"] for e in events]
    assert_told_gone_once_deepest_first(events, gone)
    assert paths[-2:] == [str(top / "nm"), str(top / "keep")], paths[-3:]
    assert cookies == [(str(top / ".moorage-cookie-1"), len(events))]
    assert max(sizes[:-1]) <= 10
    assert set(p.index.entries) == {str(top / "keep")}
    kept = p.journal.since(Clock("i", 0, 0))["events"]
    assert {e["path"] for e in kept if e["kind"] == "deleted"} == gone


def test_a_directory_made_then_replaced_by_a_rename_in_one_window_is_indexed_as_the_new_one(
        start, data):  # noqa: F811
    """`mkdir cfg && ... && mv cfg.new cfg` within one settle window (an atomic directory
    swap). The first directory's stat was taken ahead while the window was open; the
    sync's cookie came with the renames and flushed the window before their paths were
    handed to the stat-ahead, so that stat passed for current: fs.query showed the old
    directory's inode, or `unknown` (it was gone when stat'ed), and `type: dir` missed it."""
    w = start(settle_ms=5_000)  # (the cookie of a sync waits behind the renames: up to 5 s)
    w.watch()
    w.sync()
    cfg, new, old = data / "cfg", data / "cfg.new", data / "cfg.old"
    cfg.mkdir()
    (cfg / "a").write_text("a")

    def stat_ed() -> bool:  # (the window stays open: nothing flushes it before the sync)
        ahead = w.call("fs.stats")["pipeline"]["stat_ahead"]
        return ahead["stats"] >= 2 and not ahead["queued"]

    wait_for(stat_ed, "the first directory stat'ed ahead")
    new.mkdir()
    (new / "b").write_text("b")
    cfg.rename(old)
    new.rename(cfg)
    shutil.rmtree(old)
    w.sync()
    dirs = w.call("fs.query", {"path": str(data), "type": "dir",
                               "fields": ["name", "type", "ino"]})["files"]
    assert dirs == [{"name": "cfg", "type": "dir", "ino": os.lstat(cfg).st_ino}], dirs
