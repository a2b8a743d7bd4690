"""Ways the watcher's told state could drift from the disk without a word, in a real watcher
on real directories: every test ends with what its events said (applied in order), the
index (`fs.query`) and the disk agreeing path for path.

- A watched directory renamed to a name the watch excludes (`mv dist.tmp build`, `build`
  excluded) is a rename within one watched directory, so inotify pairs it: what it held must
  still be told deleted, as for a directory moved into an excluded one (PROTOCOL.md).
- Two files exchanged (`mv --exchange`, renameat2's RENAME_EXCHANGE) are two renames whose
  events cancel out for one of them: both files are still there.
- A directory the watcher may not read (mode 000 to it) gets no inotify watch. It is warned
  of and listed unsynced, and is watched, with what it holds reported created, once a chmod
  lets it be read (its IN_ATTRIB), or at the health check's back-up. It is listed where it
  is (a directory above it renamed takes it along), no more once no path of the watch
  leads to it or a directory renamed over it is watched, and a directory's IN_ATTRIB looks
  up only the ones it may concern.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.actors.watcher import guarded as guarded_mod
from moorage.protocol.errors import MoorageError
from tests.test_fs_list_unreadable import launcher_refused
from tests.test_watcher import Watcher, start  # noqa: F401  (the fixture)
from tests.test_watcher_moved_out import assert_told_gone_once_deepest_first, since_answers
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def on_disk(top: Path, leave_out: tuple[str, ...] = ()) -> set[str]:
    """Every path below `top`, but those under a directory named in `leave_out`."""
    out = set()
    for d, dirs, files in os.walk(top):
        dirs[:] = [n for n in dirs if n not in leave_out]
        out |= {os.path.join(d, n) for n in dirs + files}
    return out


def queried(w: Watcher, root: Path) -> dict[str, dict]:
    """The index below `root`, every page: path -> its fields."""
    got = w.call("fs.query", {"path": str(root), "fields": ["name", "type", "size"],
                              "max": 10_000})
    files = got["files"]
    while got["more"]:
        got = w.call("fs.query", {"cursor": got["cursor"]})
        files += got["files"]
    return {str(root / f["name"]): f for f in files}


def believed(base: set[str], events: list[dict]) -> set[str]:
    """The paths a consumer believes exist: `base` (the new watch's crawl, which no event
    tells), then each event applied in order, a directory's deletion taking what is below
    it too (PROTOCOL.md)."""
    alive = set(base)
    for e in events:
        if e["kind"] in ("created", "modified"):
            alive.add(e["path"])
        elif e["kind"] == "deleted":
            below = e["path"] + "/"
            alive = {p for p in alive if p != e["path"] and not p.startswith(below)}
    return alive


def assert_as_disk(w: Watcher, root: Path, leave_out: tuple[str, ...] = (),
                   base: frozenset[str] | set[str] = frozenset()) -> None:
    """What the events said (after `base`), the index and the disk are the same paths, and
    the index has each file's size."""
    disk = on_disk(root, leave_out)
    told = believed(base, w.seen)
    assert sorted(told - disk) == [] and sorted(disk - told) == []
    index = queried(w, root)
    assert sorted(set(index) - disk) == [] and sorted(disk - set(index)) == []
    for p, f in index.items():
        if f["type"] == "file":
            assert f["size"] == os.lstat(p).st_size, (p, f)
    assert not w.losses


# --- a directory renamed to a name no watch follows -------------------------------------------


def test_a_watched_directory_renamed_to_an_excluded_name_is_told_gone_with_what_it_held(
        start, data):  # noqa: F811
    w = start()
    w.watch(exclude=["build"])
    (data / "dist.tmp" / "a" / "b").mkdir(parents=True)
    (data / "dist.tmp" / "a" / "b" / "f.js").write_text("x")
    (data / "dist.tmp" / "g.js").write_text("y")
    gone = on_disk(data / "dist.tmp") | {str(data / "dist.tmp")}
    clock = w.call("fs.sync", timeout=60)["clock"]
    w.until(clock)
    (data / "dist.tmp").rename(data / "build")  # a build's output, renamed into place
    assert_told_gone_once_deepest_first(w.sync(), gone)
    told, files = since_answers(w, data, clock)
    assert told == gone and set(files) == gone
    assert_as_disk(w, data, leave_out=("build",))
    # Its watches went with it: what is written there now is no one's, under either name.
    (data / "build" / "a" / "b" / "late.js").write_text("z")
    (data / "after.txt").write_text("1")
    assert [e["path"] for e in w.sync() if "path" in e] == [str(data / "after.txt")]
    assert w.call("fs.stats")["observer"]["inotify_watches"] == 1  # the root's own


def test_a_directory_moved_where_a_subdirectory_of_it_is_excluded_tells_that_one_gone(
        start, data):  # noqa: F811
    """`out/build` excluded, `mv x out`: the move is told as moves, but `x/build` lands
    where no watch follows it, and what it held must be told gone with it."""
    w = start()
    w.watch(exclude=["out/build"])
    (data / "x" / "build" / "k").mkdir(parents=True)
    (data / "x" / "build" / "k" / "f.js").write_text("x")
    (data / "x" / "keep.js").write_text("y")
    gone = on_disk(data / "x" / "build") | {str(data / "x" / "build")}
    w.sync()
    (data / "x").rename(data / "out")
    events = w.sync()
    assert_told_gone_once_deepest_first(events, gone)
    moved = {e["path"]: e.get("moved_from") for e in events if e["kind"] == "created"}
    assert moved == {str(data / "out"): str(data / "x"),
                     str(data / "out" / "keep.js"): str(data / "x" / "keep.js")}
    assert_as_disk(w, data, leave_out=("build",))
    (data / "out" / "build" / "k" / "late.js").write_text("z")
    (data / "out" / "keep.js").write_text("yy")
    assert [e["path"] for e in w.sync() if "path" in e] == [str(data / "out" / "keep.js")]


# --- an exchange ------------------------------------------------------------------------------


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """renameat2(a, b, RENAME_EXCHANGE): `mv --exchange a b` (coreutils 9.5)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("the C library has no renameat2")
    if libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b),
                      RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS):
            pytest.skip(f"renameat2's RENAME_EXCHANGE not taken here ({errno.errorcode[err]})")
        raise OSError(err, os.strerror(err), str(a))


def test_two_files_exchanged_are_both_still_there_with_each_other_s_contents(
        start, data):  # noqa: F811
    w = start()
    w.watch()
    (data / "a.txt").write_text("1")
    (data / "b.txt").write_text("22")
    w.sync()
    exchange(data / "a.txt", data / "b.txt")
    events = [e for e in w.sync() if "path" in e]
    assert not [e for e in events if e["kind"] == "deleted"], events
    assert_as_disk(w, data)
    assert {p: f["size"] for p, f in queried(w, data).items()} == {
        str(data / "a.txt"): 2, str(data / "b.txt"): 1}


@pytest.mark.parametrize("shape", ["dirs", "empty_dir", "file_and_dir"])
def test_directories_exchanged_leave_the_told_tree_as_the_disk(start, data, shape):  # noqa: F811
    w = start()
    w.watch()
    (data / "a" / "deep").mkdir(parents=True)
    (data / "a" / "deep" / "x.txt").write_text("x")
    (data / "a" / "y.txt").write_text("yy")
    if shape == "dirs":
        (data / "b").mkdir()
        (data / "b" / "z.txt").write_text("zzz")
    elif shape == "empty_dir":
        (data / "b").mkdir()
    else:
        (data / "b").write_text("a file")
    w.sync()
    exchange(data / "a", data / "b")
    w.sync()
    assert_as_disk(w, data)


# --- a directory it may not read -----------------------------------------------------------------


TREE = """
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[actor.watcher]
roots = ["{data}"]
push_metrics = false
"""


@pytest.fixture
def locked(data: Path) -> Iterator[Path]:
    """`data/vol` at mode 000, holding `vol/data/old.txt` (a volume a container made); every
    mode under `data` given back at the end, so that it can be removed."""
    vol = data / "vol"
    (vol / "data").mkdir(parents=True)
    (vol / "data" / "old.txt").write_text("old")
    os.chmod(vol, 0)
    try:
        yield vol
    finally:
        for d, dirs, _files in os.walk(data):
            for n in dirs:
                os.chmod(os.path.join(d, n), 0o755)


def unreadable_warnings(w: Watcher) -> list[str]:
    return [e["path"] for e in w.seen if e["kind"] == "warning"
            and e["reason"] == "unreadable" and e.get("error") == "EACCES"]


def test_a_directory_it_may_not_read_is_unsynced_and_watched_once_a_chmod_lets_it(
        make_tree, data, locked):
    """Run without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (as root, through setpriv), as a
    user's watcher is. `vol` is unreadable when the watch is placed; `late` is made
    unreadable while watched (mkdir with mode 000: the watcher meets it with its creation)."""
    tree = make_tree(TREE.format(data=data))
    tree.launcher = launcher_refused(locked)
    tree.start()
    w = Watcher(tree.proc, tree.client, data)
    w.watch()
    base = set(queried(w, data))
    assert base == {str(locked)}  # (what is in it is not known)
    synced = w.call("fs.sync", timeout=60)
    w.until(synced["clock"])
    assert synced["unsynced"] == [str(locked)]
    assert unreadable_warnings(w) == [str(locked)]
    os.mkdir(data / "late", 0)
    synced = w.call("fs.sync", timeout=60)
    w.until(synced["clock"])
    assert synced["unsynced"] == [str(data / "late"), str(locked)]
    assert unreadable_warnings(w) == [str(locked), str(data / "late")]

    os.chmod(locked, 0o755)
    (locked / "data" / "new.txt").write_text("n")
    (locked / "top.txt").write_text("t")
    os.chmod(data / "late", 0o755)
    (data / "late" / "in.txt").write_text("i")
    synced = w.call("fs.sync", timeout=60)
    w.until(synced["clock"])
    assert synced["unsynced"] == []
    assert_as_disk(w, data, base=base)
    # watched now: a change below them is an event
    (locked / "data" / "old.txt").write_text("changed")
    (data / "late" / "in.txt").unlink()
    got = {(e["kind"], e["path"]) for e in w.sync() if "path" in e}
    assert got == {("modified", str(locked / "data" / "old.txt")),
                   ("deleted", str(data / "late" / "in.txt"))}
    assert_as_disk(w, data, base=base)
    assert unreadable_warnings(w) == [str(locked), str(data / "late")]  # none again


def test_a_directory_whose_watch_was_refused_is_watched_at_the_health_check(
        start, data, tmp_path, monkeypatch):  # noqa: F811
    """The back-up for a permission given back unseen (its IN_ATTRIB lost). Nothing makes
    the kernel let a directory be read with no event, so the refusal is the placement
    seam's (`add_watch_fault`, as the ENOSPC tests inject theirs): `vol`'s watch is refused
    EACCES until `allowed` exists, a file outside the watch."""
    (data / "vol" / "sub").mkdir(parents=True)
    allowed = tmp_path / "allowed"

    def refused(path: bytes) -> None:
        if path.endswith(b"/vol") and not allowed.exists():
            raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(guarded_mod, "add_watch_fault", refused)  # inherited by fork
    w = start(health_interval_s=0.2)
    w.watch()
    base = set(queried(w, data))
    synced = w.call("fs.sync", timeout=60)
    w.until(synced["clock"])
    assert synced["unsynced"] == [str(data / "vol")]
    assert unreadable_warnings(w) == [str(data / "vol")]
    (data / "vol" / "unseen.txt").write_text("u")  # no watch there: not told yet
    allowed.touch()
    wait_for(lambda: w.call("fs.sync", timeout=60)["unsynced"] == [],
             "vol watched by the health check")
    (data / "vol" / "seen.txt").write_text("s")
    w.sync()
    assert_as_disk(w, data, base=base)


def test_a_directory_it_may_not_read_renamed_or_removed_is_unsynced_where_it_is(
        make_tree, data, locked):
    """Renamed while unreadable, it is unsynced (and warned of) at its new path; removed, it
    is unsynced no more; made readable at its new path, it is watched there."""
    tree = make_tree(TREE.format(data=data))
    tree.launcher = launcher_refused(locked)
    tree.start()
    w = Watcher(tree.proc, tree.client, data)
    w.watch()
    base = set(queried(w, data))
    os.mkdir(data / "scratch", 0)
    assert w.call("fs.sync", timeout=60)["unsynced"] == [str(data / "scratch"), str(locked)]
    locked.rename(data / "volume")
    os.rmdir(data / "scratch")
    synced = w.call("fs.sync", timeout=60)
    w.until(synced["clock"])
    assert synced["unsynced"] == [str(data / "volume")]
    assert unreadable_warnings(w) == [str(locked), str(data / "scratch"),
                                      str(data / "volume")]
    os.chmod(data / "volume", 0o755)
    (data / "volume" / "data" / "new.txt").write_text("n")
    synced = w.call("fs.sync", timeout=60)
    w.until(synced["clock"])
    assert synced["unsynced"] == []
    assert_as_disk(w, data, base=base)


def dirs_back(top: Path) -> None:
    """Every directory under `top` given its modes back, so that it can be removed."""
    for d, dirs, _files in os.walk(top):
        for n in dirs:
            os.chmod(os.path.join(d, n), 0o755)


# (no health check in the test's time: only the events keep what it lists true)
NO_HEALTH = TREE + "health_interval_s = 3600\n"



def test_a_watch_of_a_directory_it_may_not_read_is_forbidden_until_a_chmod_lets_it(
        make_tree, data, locked):
    """fs.watch of `vol` (mode 000) itself answered success, via inotify, and then said
    nothing of it (its inotify watch refused, a query of it empty): it is `forbidden`
    (EACCES), as fs.list of it is. Once a chmod lets it be read, the same call places the
    watch; made unreadable again while watched, the watch goes on and may be held again."""
    tree = make_tree(TREE.format(data=data))
    tree.launcher = launcher_refused(locked)
    tree.start()
    w = Watcher(tree.proc, tree.client, data)
    with pytest.raises(MoorageError) as got:
        w.watch(locked)
    assert (got.value.error.name, got.value.error.detail["errno"]) == ("forbidden", "EACCES")
    assert w.call("fs.stats")["watches"] == []
    os.chmod(locked, 0o755)
    placed = w.watch(locked)
    assert (placed["path"], placed["holders"]) == (str(locked), 1)
    os.chmod(locked, 0)
    again = w.watch(locked)
    assert (again["watch"], again["holders"]) == (placed["watch"], 1)  # (one client: held)
    os.chmod(locked, 0o755)
    (locked / "new.txt").write_text("n")
    got_events = {(e["kind"], e["path"]) for e in w.sync() if "path" in e}
    assert ("created", str(locked / "new.txt")) in got_events

def locked_in(data: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """`data/NAME/vol` for each name, mode 000, holding `d/f.txt`."""
    tops = {name: data / name / "vol" for name in names}
    for vol in tops.values():
        (vol / "d").mkdir(parents=True)
        (vol / "d" / "f.txt").write_text("x")
        os.chmod(vol, 0)
    return tops


def test_one_it_may_not_read_is_unsynced_where_a_rename_above_it_took_it(make_tree, data):
    """What holds one it may not read renamed (`mv outer outer2`): it is unsynced, and
    warned of, at its new path, not at the old one, which names nothing; made readable
    there, it is watched there."""
    try:
        tops = locked_in(data, ("outer", "other"))
        tree = make_tree(NO_HEALTH.format(data=data))
        tree.launcher = launcher_refused(tops["outer"])
        tree.start()
        w = Watcher(tree.proc, tree.client, data)
        w.watch()
        assert w.call("fs.sync", timeout=60)["unsynced"] == sorted(map(str, tops.values()))
        (data / "outer").rename(data / "outer2")
        synced = w.call("fs.sync", timeout=60)
        w.until(synced["clock"])
        now = str(data / "outer2" / "vol")
        assert synced["unsynced"] == [str(tops["other"]), now]
        assert w.call("fs.stats")["observer"]["unreadable"] == synced["unsynced"]
        assert unreadable_warnings(w) == [str(tops["other"]), str(tops["outer"]), now]
        os.chmod(now, 0o755)
        synced = w.call("fs.sync", timeout=60)
        w.until(synced["clock"])
        assert synced["unsynced"] == [str(tops["other"])]
        assert str(data / "outer2" / "vol" / "d" / "f.txt") in queried(w, data)
    finally:
        dirs_back(data)


def test_one_it_may_not_read_is_unsynced_no_more_once_what_holds_it_left_the_watch(
        make_tree, data, tmp_path):
    """What holds one it may not read renamed to an excluded name (`mv side build`) or
    moved out of the watch: no path of the watch leads to it any more, so it is unsynced
    no more, at once (not at the next health check)."""
    try:
        tops = locked_in(data, ("side", "far", "stays"))
        tree = make_tree(NO_HEALTH.format(data=data))
        tree.launcher = launcher_refused(tops["side"])
        tree.start()
        w = Watcher(tree.proc, tree.client, data)
        w.watch(exclude=["build"])
        assert w.call("fs.sync", timeout=60)["unsynced"] == sorted(map(str, tops.values()))
        (data / "side").rename(data / "build")
        (data / "far").rename(tmp_path / "far")
        left = [str(tops["stays"])]
        wait_for(lambda: w.call("fs.sync", timeout=60)["unsynced"] == left,
                 "only stays/vol unsynced")
        assert w.call("fs.stats")["observer"]["unreadable"] == left
    finally:
        dirs_back(data)
        dirs_back(tmp_path)


def test_one_it_may_not_read_renamed_over_is_watched_and_its_contents_told_once(
        make_tree, data):
    """`mv new vol`, `vol` an empty directory it may not read: the directory there now is
    watched (the move's), so it is unsynced no more, and the health check's retry does not
    tell what it holds created a second time."""
    vol = data / "vol"
    vol.mkdir(0)
    try:
        tree = make_tree(TREE.format(data=data) + "health_interval_s = 0.2\n")
        tree.launcher = launcher_refused(vol)
        tree.start()
        w = Watcher(tree.proc, tree.client, data)
        w.watch()
        base = set(queried(w, data))
        assert w.call("fs.sync", timeout=60)["unsynced"] == [str(vol)]
        (data / "new").mkdir()
        (data / "new" / "f.txt").write_text("x")
        w.sync()
        (data / "new").rename(vol)
        synced = w.call("fs.sync", timeout=60)
        w.until(synced["clock"])
        assert synced["unsynced"] == []
        assert w.call("fs.stats")["observer"]["unreadable"] == []
        # Health checks go by (each would retry it, were it still kept); a write there is
        # told, and nothing told it created again.
        checks = w.call("fs.stats")["health"]["ok"]
        wait_for(lambda: w.call("fs.stats")["health"]["ok"] >= checks + 2, "two health checks")
        (vol / "f.txt").write_text("xy")
        w.sync()
        created = [e for e in w.seen if e["kind"] == "created"
                   and e["path"] == str(vol / "f.txt")]
        assert len(created) == 1, created
        assert_as_disk(w, data, base=base)
    finally:
        dirs_back(data)


class LooksCounted(dict):
    """The group's directories kept unreadable, counting each key a scan of them yields."""

    looks = 0

    def __iter__(self) -> Iterator:
        for key in super().__iter__():
            self.looks += 1
            yield key


@pytest.mark.skipif(not guarded_mod.GUARDED, reason="watchdog's inotify classes are not there")
def test_a_directory_s_attributes_changed_look_up_only_the_ones_it_may_concern(
        tmp_path, monkeypatch):
    """With 64 directories kept unreadable, `tar -x` setting the times of 40 directories
    (IN_ATTRIB each) elsewhere: each event looks up the ones its directory holds (none),
    where it scanned all 64, on the loop (and again on the lane for those it hands there).
    The refusal is the placement seam's (as in the health check's test): the group is in
    this process, for its looks to be counted."""
    from tests.test_watcher_parts import LoopRead

    def refused(path: bytes) -> None:
        if os.path.basename(path).startswith(b"locked"):
            raise OSError(errno.EACCES, "Permission denied")

    for i in range(64):
        (tmp_path / "locks" / f"locked{i}").mkdir(parents=True)
    for i in range(40):
        (tmp_path / "unpacked" / f"d{i}").mkdir(parents=True)
    monkeypatch.setattr(guarded_mod, "add_watch_fault", refused)
    r = LoopRead(tmp_path)
    try:
        assert len(r.group._unreadable) == 64
        with r.group._lock:
            counted = r.group._unreadable = LooksCounted(r.group._unreadable)
        for i in range(40):
            os.utime(tmp_path / "unpacked" / f"d{i}")
        (tmp_path / "last").touch()
        seen = r.sources_until(tmp_path / "last")
        assert str(tmp_path / "unpacked" / "d39") in seen
        r.caught_up()
        assert counted.looks < 40, f"{counted.looks} records looked at for 40 directories"
        # still kept, and the IN_ATTRIB of their directory (a chmod) still finds them all
        assert len(r.group._unreadable) == 64
        with r.group._lock:
            root = r.group._find_node_by_path(os.fsencode(tmp_path))
            assert len(r.group._unreadable_keys(root.wd, b"locks")) == 64
    finally:
        r.mgr.stop()
