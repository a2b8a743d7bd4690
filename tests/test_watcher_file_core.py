"""The watcher's file service, compiled (actors/watcher/_cfile.c) and in Python.

`read_cached` does in one call what `FileService.read_file` does with `wait` false for the
common file, and `write_plain` what `_write` does for a write in place with no
if_match; each leaves everything else to Python (None): both must give the same bytes and
the same stat, refuse the same paths the same way, and stay confined to the roots whichever
runs. Real files, FIFOs and symlinks; reads and writes go through `FileService` with an
offload, as the watcher's loop makes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moorage.actors.watcher import files
from moorage.actors.watcher.cache import FileCache, stat_info
from moorage.actors.watcher.confine import Roots
from moorage.actors.watcher.files import FileService
from moorage.protocol.errors import MoorageError
from tests.interpreter import printed
from tests.test_watcher_parts import POLICY, Later, evicted

CORES = ["python", "compiled"] if files.FILE_CORE == "compiled" else ["python"]
compiled = pytest.mark.skipif(files.FILE_CORE != "compiled",
                              reason="the compiled core was not built here (no compiler)")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "d" / "page.bin").write_bytes(os.urandom(10_000))
    (root / "empty").write_bytes(b"")
    os.mkfifo(root / "fifo")
    os.symlink("a.txt", root / "link")
    os.symlink("d", root / "link-dir")
    (tmp_path / "outside.txt").write_bytes(b"secret")
    return root


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(files, "_read_cached", None)
        monkeypatch.setattr(files, "_write_plain", None)
    return str(request.param)


def on_loop(root: Path, **kw: object) -> FileService:
    """A service whose reads run as on the watcher's loop: from the page cache, with an
    offload for the rest (run at once here)."""
    return FileService(Roots([str(root)]), FileCache(max_bytes=0), POLICY, Later(),
                       offload=lambda work, done: done(work()), **kw)  # type: ignore[arg-type]


@compiled
@pytest.mark.parametrize(("offset", "length"), [
    (0, None), (0, 1), (100, 4096), (9_990, 100), (10_000, None), (20_000, 5), (0, 0)])
def test_the_compiled_read_gives_the_bytes_and_stat_read_file_gives(
        tree: Path, offset: int, length: int | None) -> None:
    path = str(tree / "d" / "page.bin")
    got = files._read_cached(path, offset, -1 if length is None else length, 1 << 20)
    assert got is not None
    data, st = got
    fs = on_loop(tree)
    want, want_st = fs.read_file(path, offset, length, wait=True)
    assert data == want
    assert tuple(st) == tuple(want_st) == tuple(os.stat(path))
    names = [n for n in dir(want_st) if n.startswith("st_")]
    assert len(names) == 16
    assert {n: getattr(st, n) for n in names} == {n: getattr(want_st, n) for n in names}


@compiled
@pytest.mark.parametrize("name", ["d", "fifo", "empty", "link", "link-dir/page.bin"])
def test_the_compiled_read_leaves_the_rest_to_python(tree: Path, name: str) -> None:
    """A directory, a FIFO (opened without blocking: no writer needed), an empty file (a
    pseudo file that tells no size), a final symlink, a symlink on the way."""
    assert files._read_cached(str(tree / name), 0, -1, 1 << 20) is None


@compiled
def test_the_compiled_read_leaves_a_read_over_the_limit_and_a_cold_file_to_python(
        tree: Path) -> None:
    assert files._read_cached(str(tree / "d" / "page.bin"), 0, -1, 9_999) is None
    assert files._read_cached(str(tree / "d" / "page.bin"), 0, 9_999, 9_999) is not None
    cold = tree / "cold.bin"
    cold.write_bytes(os.urandom(8 << 20))
    if not evicted(cold):
        pytest.skip("this file system keeps a file's pages in memory: nothing to read cold")
    assert files._read_cached(str(cold), 0, -1, 16 << 20) is None


@compiled
def test_the_compiled_read_raises_what_the_open_raises(tree: Path) -> None:
    for path, kind in ((tree / "missing", FileNotFoundError),
                       (tree / "a.txt" / "x", NotADirectoryError)):
        with pytest.raises(kind) as e:
            files._read_cached(str(path), 0, -1, 1 << 20)
        assert e.value.filename == str(path)
    with pytest.raises(ValueError):
        files._read_cached(str(tree / "a.txt"), -1, -1, 1 << 20)


def test_every_read_on_the_loop_answers_alike(tree: Path, core: str) -> None:
    fs = on_loop(tree)
    assert fs.read(str(tree / "a.txt")).unwrap().attachments == [b"alpha"]
    page = (tree / "d" / "page.bin").read_bytes()
    assert fs.read("d/page.bin", 100, 50).unwrap().attachments == [page[100:150]]
    assert fs.read(str(tree / "empty")).unwrap().attachments == [b""]
    assert fs.read(str(tree / "link")).unwrap().attachments == [b"alpha"]  # (resolved)
    for name, error in (("d", "is_directory"), ("fifo", "bad_args"), ("missing", "not_found")):
        with pytest.raises(MoorageError) as e:
            fs.read(str(tree / name)).unwrap()
        assert e.value.name == error, (name, e.value)
    big = on_loop(tree, max_read=100)
    with pytest.raises(MoorageError) as e:
        big.read("d/page.bin").unwrap()
    assert e.value.name == "file_too_large"


@pytest.mark.parametrize("target", ["inside", "outside"])
def test_a_file_swapped_for_a_symlink_after_its_resolution_is_resolved_again(
        tree: Path, core: str, target: str) -> None:
    """The remembered resolution of a path with no symlink on it is checked by the lstat
    alone: a symlink there now is resolved again (to the file it leads to, inside), and one
    leading outside is refused."""
    fs = on_loop(tree)
    path = str(tree / "x.txt")
    (tree / "x.txt").write_bytes(b"first")
    assert fs.read(path).unwrap().attachments == [b"first"]
    os.remove(path)
    os.symlink(tree / "a.txt" if target == "inside" else tree.parent / "outside.txt", path)
    if target == "inside":
        assert fs.read(path).unwrap().attachments == [b"alpha"]
        assert fs.roots.resolve_lstat(path)[0] == str(tree / "a.txt")
    else:
        with pytest.raises(MoorageError) as e:
            fs.read(path).unwrap()
        assert e.value.name == "forbidden"


def fields(st: os.stat_result) -> dict[str, object]:
    return {n: getattr(st, n) for n in dir(st) if n.startswith("st_")}


@compiled
@pytest.mark.parametrize(("before", "data"), [
    (None, b"new file"), (b"short", b"longer than before"), (b"a longer file", b"cut"),
    (b"same", b"SAME"), (b"gone", b"")])
def test_the_compiled_write_leaves_the_file_and_stat_the_python_write_leaves(
        tree: Path, before: bytes | None, data: bytes) -> None:
    """A new file (0644 under the umask, as os.open makes it), one grown, one cut short
    (overwritten, then truncated), one rewritten, one emptied; a file's mode is kept."""
    for name in ("c", "p"):
        if before is not None:
            (tree / name).write_bytes(before)
            os.chmod(tree / name, 0o600)
    st = files._write_plain(str(tree), "c", data)
    assert st is not None
    now = os.stat(tree / "c")  # (before a read changes its atime)
    assert tuple(st) == tuple(now)
    assert fields(st) == fields(now)
    assert (tree / "c").read_bytes() == data
    want = on_loop(tree)._write("p", str(tree), "p", data, None, None, None).st  # (as Python)
    assert (tree / "p").read_bytes() == data
    assert (st.st_mode, st.st_size) == (want.st_mode, want.st_size)


@compiled
@pytest.mark.parametrize("name", ["d", "fifo", "link", "link-dir/x"])
def test_the_compiled_write_leaves_the_rest_to_python(tree: Path, name: str) -> None:
    """A directory, a FIFO (never opened: no reader needed), a final symlink, a symlink on
    the way to the directory: nothing written, nothing made."""
    parent, base = os.path.split(str(tree / name))
    before = sorted(os.listdir(tree)), (tree / "a.txt").read_bytes()
    assert files._write_plain(parent, base, b"x") is None
    assert (sorted(os.listdir(tree)), (tree / "a.txt").read_bytes()) == before
    assert not (tree / "d" / "x").exists()


@compiled
def test_the_compiled_write_raises_what_the_open_raises(tree: Path) -> None:
    for parent, kind, where in (
            (tree / "missing", FileNotFoundError, tree / "missing"),
            (tree / "a.txt", NotADirectoryError, tree / "a.txt")):
        with pytest.raises(kind) as e:
            files._write_plain(str(parent), "x", b"data")
        assert e.value.filename == str(where)
    os.chmod(tree / "d", 0o500)
    try:
        if os.access(tree / "d", os.W_OK):  # (root writes anywhere)
            return
        with pytest.raises(PermissionError) as e:
            files._write_plain(str(tree / "d"), "new", b"data")
        assert e.value.filename == str(tree / "d" / "new")
    finally:
        os.chmod(tree / "d", 0o700)


def test_every_write_answers_alike(tree: Path, core: str) -> None:
    fs = on_loop(tree)
    got = fs.write(str(tree / "w.txt"), b"hello", atomic=False).unwrap()
    assert (tree / "w.txt").read_bytes() == b"hello"
    assert got["bytes"] == 5 and got["stat"]["size"] == 5 and got["path"] == str(tree / "w.txt")
    assert got["stat"]["etag"] == fs.stat_path(str(tree / "w.txt")).unwrap()["etag"]
    fs.write("w.txt", b"hi", atomic=False).unwrap()
    assert (tree / "w.txt").read_bytes() == b"hi"
    assert fs.read("w.txt").unwrap().attachments == [b"hi"]  # (the cache has the write)
    for name, error in (("d", "is_directory"), ("fifo", "bad_args"), ("missing/x", "not_found"),
                        ("../outside.txt", "forbidden")):
        with pytest.raises(MoorageError) as e:
            fs.write(str(tree / name), b"x", atomic=False).unwrap()
        assert e.value.name == error, (name, e.value)
    assert (tree.parent / "outside.txt").read_bytes() == b"secret"
    # a final symlink inside is written through (resolved first), as before
    fs.write(str(tree / "link"), b"through", atomic=False).unwrap()
    assert (tree / "a.txt").read_bytes() == b"through"


def test_the_python_core_runs_where_it_is_asked_for() -> None:
    code = "from moorage.actors.watcher import files; print(files.FILE_CORE)"
    assert printed(code, MOORAGE_WATCHER_CORE="python") == ["python"]


def test_a_stat_says_what_os_stat_says_of_the_file_behind_the_path(tree: Path) -> None:
    """Taken from the resolution's lstat where the real path's last name is no symlink (one
    syscall), by a stat otherwise: the same answer either way, symlinks followed."""
    fs = on_loop(tree)
    for name, behind in (("a.txt", "a.txt"), ("d", "d"), ("fifo", "fifo"), ("link", "a.txt"),
                         ("link-dir/page.bin", "d/page.bin")):
        for _ in range(2):  # (the second through the remembered resolution)
            got = fs.stat_path(str(tree / name)).unwrap()
            assert got == {"path": str(tree / behind), **stat_info(os.stat(tree / behind))}
    with pytest.raises(MoorageError) as e:
        fs.stat_path(str(tree / "missing")).unwrap()
    assert e.value.name == "not_found"
