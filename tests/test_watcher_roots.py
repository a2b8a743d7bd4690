"""A watch's root is the directory its path named when it was placed.

A root renamed away (`mv proj proj.bak`, maybe `mkdir proj` again), one whose parent is
renamed, and one replaced by a symlink while the watcher was down are missing: a
`root_missing` warning, what the told state had under them reported deleted, nothing that
the tree does at its new place reported under the root's path, fs.sync answering with the
root unsynced instead of timing out; a directory back at the path is watched again. And a
watch placed while inotify runs out of room asks for its resync once per reason.

Real watcher processes on real directories and real inotify; no sleeps (fs.sync, events,
fs.stats, and FIFO gates for the injected faults).
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.watcher import guarded as guarded_mod
from moorage.protocol.client import Client
from tests.conftest import wait_pid_exit
from tests.test_watcher import Watcher, kinds, reported, start  # noqa: F401  (the fixture)
from tests.waiting import open_gate, wait_for

pytestmark = pytest.mark.timeout(180)

NEVER = 3600  # seconds: a check kept out of the way


def root_missing(w: Watcher, root: Path) -> dict:
    return w.wait_for(lambda e: e["kind"] == "warning" and e["reason"] == "root_missing"
                      and e.get("path") == str(root))


def enospc_warnings(w: Watcher) -> int:
    return sum(e["kind"] == "warning" and e["reason"] == "enospc" for e in w.seen)


def seen_until(w: Watcher, clock: list | None = None) -> list[dict]:
    """Every event seen, up to `clock` (default: fs.sync's, everything changed before)."""
    if clock is None:
        w.sync()
    else:
        w.until(clock)
    return w.seen


def paths(events: list[dict]) -> set[str]:
    return {e["path"] for e in events if "path" in e}


def watched_and_moved(w: Watcher, data: Path) -> tuple[Path, Path]:
    """`proj` (src/main.c) watched and synced, then renamed to `proj.bak`: both paths."""
    root = data / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("1")
    w.watch(root)
    w.sync()
    away = data / "proj.bak"
    root.rename(away)
    return root, away


def test_a_root_renamed_away_is_missing_at_once_and_its_tree_no_longer_reported(
        start, data):  # noqa: F811
    """Its own watch's IN_MOVE_SELF, not the liveness check (kept out of the way here) nor
    the health cookie: the root is missing at once, its entries are told deleted, and a file
    written into the tree at its new path is not published under the root's."""
    w = start(liveness_s=NEVER, health_interval_s=NEVER)
    root, away = watched_and_moved(w, data)
    warning = root_missing(w, root)
    assert warning["reason"] == "root_missing"
    (away / "src" / "old.c").write_text("written where the tree went")
    # (with no root left to write a cookie in, fs.sync does not wait for that resync)
    w.resync("resync_end", "root_moved")
    synced = w.call("fs.sync", {"timeout_ms": 10_000}, timeout=60)
    assert synced["unsynced"] == [str(root)]
    evs = seen_until(w, synced["clock"])
    assert not [p for p in paths(evs) if p.endswith("old.c")], evs
    got = kinds(evs, data)
    assert ("deleted", "proj/src/main.c") in got and ("deleted", "proj/src") in got, got
    assert w.call("fs.query", {"path": str(root), "fields": ["name"]})["files"] == []
    assert w.call("fs.stats")["observer"]["roots"][str(root)]["via"] == "missing"


def test_a_root_renamed_away_and_made_again_reports_the_new_tree_not_the_old_one(
        start, data):  # noqa: F811
    """`mv proj proj.bak && mkdir proj` (a fresh clone in its place): the new directory is
    watched again, what is made in it is published, what is made in the old one is not."""
    w = start(liveness_s=0.1, health_interval_s=NEVER)
    root, away = watched_and_moved(w, data)
    (root / "src").mkdir(parents=True)
    (root / "src" / "new.c").write_text("2")
    root_missing(w, root)
    (away / "src" / "old.c").write_text("3")
    w.resync("resync_begin", "root_back")
    (root / "src" / "later.c").write_text("4")
    synced = w.call("fs.sync", {"timeout_ms": 10_000}, timeout=60)
    assert synced["unsynced"] == []
    evs = seen_until(w, synced["clock"])
    assert not [p for p in paths(evs) if p.endswith("old.c")], evs
    now = reported(evs)
    assert {str(root / "src" / "new.c"), str(root / "src" / "later.c")} <= now, now
    assert str(root / "src" / "main.c") not in now
    names = w.call("fs.query", {"path": str(root), "fields": ["name"]})["files"]
    assert sorted(names) == ["src", "src/later.c", "src/new.c"], names


def test_a_root_whose_parent_is_renamed_is_found_missing_by_the_liveness_check(
        start, data):  # noqa: F811
    """No event of the root's own says so when a directory above it is renamed: the
    liveness check finds the directory at the root's path is not the one placed (none
    there), and the root is watched again once one is."""
    w = start(liveness_s=0.1, health_interval_s=NEVER)
    parent = data / "ws"
    root = parent / "proj"
    root.mkdir(parents=True)
    (root / "a").write_text("1")
    w.watch(root)
    w.sync()
    moved = data / "ws.old"
    parent.rename(moved)
    root_missing(w, root)
    (moved / "proj" / "phantom").write_text("written where the tree went")
    root.mkdir(parents=True)
    (root / "b").write_text("2")
    w.resync("resync_begin", "root_back")
    evs = seen_until(w)
    assert not [p for p in paths(evs) if p.endswith("phantom")], evs
    assert ("deleted", "ws/proj/a") in kinds(evs, data)
    assert str(root / "b") in reported(evs) and str(root / "a") not in reported(evs)


def test_a_root_replaced_by_a_symlink_while_the_watcher_was_down_is_missing_not_half_seen(
        start, data):  # noqa: F811
    """fs.watch resolved the root's path once; a symlink made at it since names another
    directory, which a watch of the link would name. After a restart the root is missing
    (its inotify watch would be on the link, the walk below it through the link: files
    directly in it never seen, and every fs.sync timing out): fs.sync answers with it
    unsynced, and a directory back at the path is watched again."""
    w = start()
    root = data / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("1")
    target = data / "proj-v2"
    (target / "src").mkdir(parents=True)
    w.watch(root)
    w.sync()
    w.proc.proc.kill()
    assert wait_pid_exit(w.proc.pid, 10)
    root.rename(data / "proj.old")
    root.symlink_to(target)
    w2 = start(liveness_s=0.1)
    root_missing(w2, root)
    (target / "package.json").write_text("{}")
    synced = w2.call("fs.sync", {"timeout_ms": 10_000}, timeout=60)
    assert synced["unsynced"] == [str(root)]
    evs = seen_until(w2, synced["clock"])
    assert ("deleted", "proj/src/main.c") in kinds(evs, data)
    assert not [p for p in paths(evs) if p.endswith("package.json")], evs
    assert w2.call("fs.stats")["observer"]["roots"][str(root)]["via"] == "missing"
    root.unlink()
    root.mkdir()
    (root / "b").write_text("2")
    w2.resync("resync_begin", "root_back")
    (root / "c").write_text("3")  # directly in the root: its own watch is the directory's
    evs = seen_until(w2)
    assert {str(root / "b"), str(root / "c")} <= reported(evs)


def test_resyncs_asked_for_while_a_watch_is_placed_run_once_per_reason(
        start, data, tmp_path, runtime_dir, monkeypatch):  # noqa: F811
    """inotify out of room at two directories, each reported while the watch is still
    being placed: the resync that follows the placement is asked for with each reason once
    (not `enospc+enospc`), and `by_reason` counts it once. The placement is held at FIFO
    gates until the first report's resync has been asked for (and deferred), then the
    second's."""
    root = data / "tree"
    for name in ("p", "q", "r"):
        (root / name).mkdir(parents=True)
    gates = [tmp_path / "gate1", tmp_path / "gate2"]
    for gate in gates:
        os.mkfifo(gate)
    below = os.fsencode(root) + b"/"
    calls: list[bytes] = []

    def no_room_twice(path: bytes) -> None:
        """In the actor: the first directory below the root fails at once; the second
        waits at gate1, then fails; the third waits at gate2."""
        if not path.startswith(below):
            return
        calls.append(path)
        if len(calls) in (2, 3):
            with open(gates[len(calls) - 2], "rb"):
                pass
        if len(calls) <= 2:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", no_room_twice)  # inherited by fork
    w = start(poll_interval_s=0.1)
    answer: list[Any] = []

    def watch() -> None:
        with Client(runtime_dir, timeout=120.0) as c:
            try:
                answer.append(c.call("watcher", "fs.watch", {"path": str(root)}, timeout=120))
            except BaseException as exc:
                answer.append(exc)

    placing = threading.Thread(target=watch)
    placing.start()
    try:
        for n in (1, 2):
            w.wait_for(lambda e, n=n: e["kind"] == "warning" and enospc_warnings(w) >= n)
            # the resync it asked for has fired (and, the watch still placing, waits)
            wait_for(lambda: not w.call("fs.stats")["resyncs"]["pending"], "the resync asked")
            open_gate(gates[n - 1])
    finally:
        placing.join(120)
    assert answer and not isinstance(answer[0], BaseException), answer
    evs = seen_until(w)
    reasons = [e["reason"] for e in evs if e["kind"] == "resync_begin" and e["epoch"] > 1]
    assert reasons and all(len(r.split("+")) == len(set(r.split("+"))) for r in reasons), \
        reasons
    enospc = sum("enospc" in r.split("+") for r in reasons)
    assert w.call("fs.stats")["resyncs"]["by_reason"]["enospc"] == enospc, reasons


def test_a_root_that_is_a_mount_point_unmounted_and_mounted_again_is_watched_anew(
        start, data):  # noqa: F811
    """A tmpfs mounted at the root, unmounted and another mounted there: the new one has the
    same device and inode numbers, so only the root watch's IN_UNMOUNT says its tree left.
    The root is missing at once and watched again: a file made in the new mount is seen (it
    was not until the 30 s health check)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    root = data / "mnt"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)], check=True)
    try:
        (root / "old").write_text("x")
        w = start(health_interval_s=3600)
        w.watch(root)
        subprocess.run(["umount", str(root)], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)],
                       check=True)
        root_missing(w, root)  # (at once: it was blind until the health check)
        (root / "new").write_text("y")
        seen: set = set()

        def reported() -> bool:
            seen.update(kinds(w.sync(), root))
            return ("created", "new") in seen

        wait_for(reported, "the new mount's file reported")
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
