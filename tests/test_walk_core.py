"""The watcher's tree walk, compiled and in Python, on real trees: the same entries and stats.

`snapshot.walk_python` is the contract; `snapshot.walk` runs the compiled core on a worker
when `pip install` could build it (`WALK_CORE`). Both must give exactly the same map, honour
`keep` and `on_dir` the same way, and call `on_dir` for a directory before anything in it is
read (the watch is placed before the directory is read).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moorage.actors.watcher import snapshot
from tests.interpreter import printed

CORES = ["python", "compiled"] if snapshot.WALK_CORE == "compiled" else ["python"]


def run(core: str, root: str, **kw: object) -> dict[str, bytes]:
    if core == "python":
        return snapshot.walk_python(root, on_loop=False, **kw)  # type: ignore[arg-type]
    return snapshot.walk(root, on_loop=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Files, directories nested three deep, one of 600 entries (more than one of the
    compiled walk's batches), symlinks to a file, to a directory and to nothing, a FIFO, an
    empty directory and a name that is not UTF-8."""
    root = tmp_path / "t"
    for d in ("a/b/c", "node_modules/x/y", "empty", "big"):
        (root / d).mkdir(parents=True)
    (root / "a" / "f.txt").write_text("hello")
    (root / "a" / "b" / "c" / "deep.py").write_bytes(b"x" * 5000)
    (root / "node_modules" / "x" / "y" / "m.js").write_text("1")
    for i in range(600):
        (root / "big" / f"n{i:03d}").write_text(str(i))
    os.symlink("a/f.txt", root / "link-file")
    os.symlink("a", root / "link-dir")
    os.symlink("nowhere", root / "dangling")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"caf\xe9")).write_text("latin-1 name")
    return root


def test_a_worker_runs_the_core_this_process_has() -> None:
    assert snapshot.WALK_CORE in ("compiled", "python")
    if snapshot.WALK_CORE == "python":
        pytest.skip("the compiled walk was not built here (no compiler): Python only")


def test_without_the_compiled_core_the_python_walk_runs() -> None:
    code = ("from moorage.actors.watcher import snapshot; import tempfile, os; "
            "d = tempfile.mkdtemp(); open(os.path.join(d, 'f'), 'w').close(); "
            "print(snapshot.WALK_CORE, list(snapshot.walk(d, on_loop=False)) == "
            "[os.path.join(d, 'f')]); os.unlink(os.path.join(d, 'f')); os.rmdir(d)")
    assert printed(code, MOORAGE_WATCHER_CORE="python") == ["python", "True"]


@pytest.mark.parametrize("core", CORES)
def test_every_entry_with_its_lstat_and_symlinks_not_followed(core: str, tree: Path) -> None:
    got = run(core, str(tree))
    expected = {}
    for top, dirs, files in os.walk(tree):
        for name in dirs + files:
            p = os.path.join(top, name)
            expected[p] = snapshot.as_stat(os.lstat(p))
    assert got == expected
    assert len(got) == 8 + 604 + 3 + 1  # directories, files, symlinks, the FIFO
    assert snapshot.is_dir(got[str(tree / "a")])
    assert not snapshot.is_dir(got[str(tree / "link-dir")])
    assert snapshot.stat_fields(got[str(tree / "a" / "b" / "c" / "deep.py")])[3] == 5000
    assert str(tree / "link-dir" / "f.txt") not in got


@pytest.mark.parametrize("core", CORES)
def test_not_recursive_a_trailing_slash_and_a_missing_root(core: str, tree: Path) -> None:
    top = run(core, str(tree), recursive=False)
    assert sorted(top) == sorted(str(p) for p in tree.iterdir())
    assert run(core, str(tree) + "/", recursive=False) == top
    assert run(core, str(tree / "gone")) == {}
    assert run(core, str(tree / "a" / "f.txt")) == {}  # not a directory: nothing below it


@pytest.mark.parametrize("core", CORES)
def test_keep_prunes_and_on_dir_sees_each_directory_before_it_is_read(core: str,
                                                                      tree: Path) -> None:
    out: dict[str, bytes] = {}
    seen: list[str] = []
    early: list[str] = []

    def keep(p: str) -> bool:
        return "/node_modules" not in p and not p.endswith(".txt")

    def on_dir(d: str) -> bool:
        seen.append(d)
        if any(q.startswith(d + "/") for q in out):
            early.append(d)  # something of it was read before it was announced
        return not d.endswith("/empty")

    run(core, str(tree), keep=keep, on_dir=on_dir, into=out)
    assert out == {p: s for p, s in run("python", str(tree)).items() if keep(p)}
    assert early == []
    # every directory once, the pruned ones too (another watch may need their watches),
    # whatever on_dir answers; nothing under a pruned directory it refuses
    assert sorted(seen) == sorted(str(tree / d) for d in (
        "a", "a/b", "a/b/c", "node_modules", "node_modules/x", "node_modules/x/y", "empty",
        "big"))


@pytest.mark.parametrize("core", CORES)
def test_a_pruned_directory_on_dir_refuses_is_not_walked(core: str, tree: Path) -> None:
    seen: list[str] = []

    def on_dir(d: str) -> bool:
        seen.append(d)
        return False

    out = run(core, str(tree), keep=lambda p: "/node_modules" not in p, on_dir=on_dir)
    assert str(tree / "node_modules") in seen and str(tree / "node_modules" / "x") not in seen
    assert str(tree / "a" / "b") in seen  # kept: walked whatever on_dir says
    assert str(tree / "a" / "b" / "c" / "deep.py") in out


@pytest.mark.parametrize("core", CORES)
def test_an_error_in_a_callback_ends_the_walk_with_it(core: str, tree: Path) -> None:
    def keep(p: str) -> bool:
        if p.endswith("deep.py"):
            raise RuntimeError("from keep")
        return True

    with pytest.raises(RuntimeError, match="from keep"):
        run(core, str(tree), keep=keep)


def test_the_pipelines_lstat_gives_what_the_python_one_gives_for_every_kind_of_entry(
        tree: Path) -> None:
    """`snapshot.lstat_fields` (compiled where built) against `lstat_fields_python`: the
    packed stat, mode, size and mtime of each entry the walk finds, a symlink's own (not
    followed), None for a path that is not there, and for a name that is not UTF-8."""
    paths = [str(tree / p) for p in snapshot.walk_python(str(tree), on_loop=False)]
    assert len(paths) > 600
    for p in [*paths, str(tree / "not-there"), str(tree / "a" / "f.txt" / "below-a-file")]:
        assert snapshot.lstat_fields(p) == snapshot.lstat_fields_python(p), p
    assert snapshot.lstat_fields(str(tree / "not-there")) is None
    link = next(p for p in paths if os.path.islink(p))
    assert snapshot.lstat_fields(link)[1] == os.lstat(link).st_mode  # type: ignore[index]
