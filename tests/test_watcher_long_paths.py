"""Paths longer than PATH_MAX (4,096 bytes) in a watched tree: the walk goes past them.

Such paths are easy to make (directories nested by relative mkdirs, a runaway recursive
copy), and the kernel takes none of them in one call: a walk that opened each directory by
its path failed with ENAMETOOLONG, and as a resync walks every root in one go, one such path
in one tree failed the resync of every watched tree after a restart (retried for ever), and
an `fs.watch` of a tree holding one was refused whole. The walk now opens such a directory
a part of its path at a time, so it reads everything; what no inotify watch can follow (a
watch's path is given in one call) is named by `RootWalks.warnings`.

Real directories under a temporary directory, real watcher processes and signals.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.watcher import snapshot
from tests.test_watcher_resync_early import (
    EXACT,
    die_behind_its_back,
    old_files,
    restart_diff,
    stateful,
)

pytestmark = pytest.mark.timeout(120)

CORES = ["python", "compiled"] if snapshot.WALK_CORE == "compiled" else ["python"]
NAME = "d" * 250  # a directory's name: 17 of them make a path longer than PATH_MAX


def chain(top: Path, until: int, files_every: int = 5) -> list[str]:
    """Directories nested in `top` until the path is `until` bytes long, made relative to
    each other (as `mkdir x && cd x` does), a file in every `files_every`th and `leaf.txt`
    in the last; returns their paths, the leaf's last."""
    made: list[str] = []
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = str(top)
    try:
        i = 0
        while len(os.fsencode(path)) < until:
            name = f"{NAME}{i}"
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path, i = nfd, f"{path}/{name}", i + 1
            made.append(path)
            if i % files_every == 0:
                os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
                made.append(f"{path}/f{i}")
        os.close(os.open("leaf.txt", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
        made.append(f"{path}/leaf.txt")
    finally:
        os.close(fd)
    return made


def lstat_by_fd(path: str) -> os.stat_result:
    """An lstat that takes any length: from the parent, a name at a time."""
    parts = path.split("/")
    fd = os.open("/", os.O_PATH)
    try:
        for name in parts[1:-1]:
            nfd = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.lstat(parts[-1], dir_fd=fd)
    finally:
        os.close(fd)


def first_too_long(paths: list[str]) -> str:
    return next(p for p in paths if len(os.fsencode(p)) >= snapshot.PATH_MAX)


def run(core: str, root: str, **kw: Any) -> dict[str, bytes]:
    if core == "python":
        return snapshot.walk_python(root, on_loop=False, **kw)
    return snapshot.walk(root, on_loop=False, **kw)


# --- the walk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("core", CORES)
def test_a_walk_reads_past_a_path_longer_than_path_max_every_entry_with_its_lstat(
        core: str, tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    made = [str(tmp_path / "ok"), *chain(tmp_path, 9000)]
    errors: list[tuple[str, OSError]] = []
    got = run(core, str(tmp_path), on_error=lambda p, e: errors.append((p, e)))
    assert errors == []
    assert sorted(got) == sorted(made)
    assert max(len(p) for p in got) > 2 * snapshot.PATH_MAX
    for p in made:
        assert got[p] == snapshot.as_stat(lstat_by_fd(p)), p


@pytest.mark.parametrize("core", CORES)
def test_the_walk_of_a_directory_past_path_max_and_of_a_trailing_slash_agree(
        core: str, tmp_path: Path) -> None:
    """Walked from a root whose own path is past the limit, with and without a slash."""
    made = chain(tmp_path, 5000)
    top = first_too_long(made)
    below = {p: s for p, s in run(core, str(tmp_path)).items() if p.startswith(top + "/")}
    assert below and run(core, top) == below == run(core, top + "/")
    assert run(core, top, recursive=False) == {
        p: s for p, s in below.items() if p.rpartition("/")[0] == top}


def test_the_pipelines_lstat_of_a_path_past_path_max_is_the_walks(tmp_path: Path) -> None:
    made = chain(tmp_path, 6000)
    walked = snapshot.walk(str(tmp_path), on_loop=False)
    gone = made[-1] + ".gone"
    for p in made:
        assert snapshot.lstat_fields(p) == snapshot.lstat_fields_python(p), p
        assert snapshot.lstat_fields(p)[0] == walked[p]  # type: ignore[index]
    assert snapshot.lstat_fields(gone) is None is snapshot.lstat_fields_python(gone)
    assert snapshot.lstat_many([*made, gone]) == [*map(snapshot.lstat_fields_python, made),
                                                  None]


def test_the_walks_of_two_roots_one_holding_a_path_past_path_max_give_both(
        tmp_path: Path) -> None:
    deep, other = tmp_path / "deep", tmp_path / "other"
    deep.mkdir()
    old_files(other)
    made = chain(deep, 5000)
    walks = snapshot.RootWalks(None)
    got = walks.rest({str(deep): True, str(other): True})
    assert sorted(got) == sorted([*made, *(str(other / f"old{i}") for i in range(3))])
    top = first_too_long(made)
    assert walks.warnings() == [{
        "reason": "path_too_long", "path": top,
        "message": f"{top} is {len(os.fsencode(top))} bytes long, more than a watch's path "
                   "may be (4095): what changes below it is seen by a resync only"}]


def nest(top: Path, length: int) -> str:
    """Directories nested in `top` (relative to each other) until the last one's path is
    exactly `length` bytes; returns it."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = str(top)
    try:
        while len(os.fsencode(path)) < length:
            left = length - len(os.fsencode(path)) - 1  # (the slash)
            name = "n" * (left if left <= 250 else min(250, left - 2))
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = nfd, f"{path}/{name}"
    finally:
        os.close(fd)
    assert len(os.fsencode(path)) == length
    return path


def test_a_walk_names_each_directory_that_first_passes_path_max_and_at_most_sixteen(
        tmp_path: Path) -> None:
    """A tree that branches 100 bytes below the limit: each branch's first directory past
    it, none below that, and past WARN_MAX one count of those left out."""
    fork = nest(tmp_path, snapshot.PATH_MAX - 100)
    fd = os.open(fork, os.O_RDONLY | os.O_DIRECTORY)
    branches = [f"b{i:02d}{'x' * 200}" for i in range(20)]
    try:
        for name in branches:
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.mkdir("below", dir_fd=sub)
            os.close(sub)
    finally:
        os.close(fd)
    walks = snapshot.RootWalks(None)
    walks.rest({str(tmp_path): True})
    got = walks.warnings()
    assert len(got) == snapshot.WARN_MAX == 16
    assert [w["path"] for w in got] == [f"{fork}/{name}" for name in branches[:16]]
    assert {w["reason"] for w in got} == {"path_too_long"}
    assert got[-1]["more"] == 4 and "and 4 more" in got[-1]["message"]
    assert all("more" not in w for w in got[:-1])


# --- the watcher -------------------------------------------------------------------------------


@pytest.fixture
def start(spawn_actor, client, data, tmp_path):
    return stateful(spawn_actor, client, data, tmp_path, checkpoint_s=1.0)


def names(w: Any, root: Path) -> set[str]:
    got = w.call("fs.query", {"path": str(root), "fields": ["name"], "max": 100000})
    assert not got["more"]
    return set(got["files"])


def restarted_with_a_chain(start, deep: Path, other: Path):
    """`deep` (made) and `other` watched, a chain past PATH_MAX made in `deep`; the watcher
    killed and `other` changed behind its back (die_behind_its_back): its successor, and
    the chain."""
    old_files(other)
    w = start()
    w.watch(deep)
    w.watch(other)
    made = chain(deep, 5000)
    w.sync()
    die_behind_its_back(w, other)
    return start(), made


def test_a_restart_resyncs_every_root_when_one_holds_a_path_past_path_max(start, data):
    """Two roots watched; a chain past the limit made in one while watched; the watcher
    killed, the other root changed meanwhile: the restart's resync reports those changes,
    and both trees are answered whole."""
    deep, other = data / "deep", data / "other"
    deep.mkdir()
    (deep / "ok").write_text("ok")
    w2, made = restarted_with_a_chain(start, deep, other)
    assert restart_diff(w2, other) == EXACT
    assert names(w2, other) == {"new0", "new1", "new2", "old1", "old2"}
    assert names(w2, deep) == {"ok", *(os.path.relpath(p, deep) for p in made)}
    assert w2.call("fs.sync", {"timeout_ms": 20000}, timeout=60)["unsynced"] == []


def test_a_watch_of_a_tree_holding_a_path_past_path_max_is_placed_and_answers_it_all(
        start, data):
    deep = data / "deep"
    deep.mkdir()
    (deep / "ok").write_text("ok")
    made = chain(deep, 5000)
    w = start()
    got = w.watch(deep)
    assert got["via"] == "inotify"
    assert names(w, deep) == {"ok", *(os.path.relpath(p, deep) for p in made)}
    # the tree is watched: a change where a watch can be placed is an event
    (deep / "later.txt").write_text("x")
    assert ("created", str(deep / "later.txt")) in [
        (e["kind"], e.get("path")) for e in w.sync()]


# --- the warning (once driving.py and watch_ops.py publish RootWalks.warnings) ---------------


def too_long_warnings(events: list[dict]) -> list[str]:
    return [e["path"] for e in events
            if e["kind"] == "warning" and e.get("reason") == "path_too_long"]


def test_a_watch_of_a_tree_holding_a_path_past_path_max_warns_of_its_first_such_directory(
        start, data):
    deep = data / "deep"
    deep.mkdir()
    made = chain(deep, 5000)
    w = start()
    w.watch(deep)
    assert too_long_warnings(w.sync()) == [first_too_long(made)]


def test_a_restart_warns_of_each_path_past_path_max_once_its_resync_is_out(start, data):
    deep, other = data / "deep", data / "other"
    deep.mkdir()
    w2, made = restarted_with_a_chain(start, deep, other)
    evs = w2.sync()
    end = next(i for i, e in enumerate(evs) if e["kind"] == "resync_end")
    assert too_long_warnings(evs[end:]) == [first_too_long(made)]
