"""What a client names costs the watcher at most its length, and answers what POSIX would.

A path of 128,000 names held the watcher's loop past the hung threshold while it was resolved
(os.path.realpath's time grows with the square of the names), and one `[`-laden exclude
pattern of 8,000 characters took fnmatch seconds on the loop: the supervisor killed the
watcher as hung, and the client's resends killed its successors. Now a path of PATH_MAX bytes
or more, and exclude patterns past their bounds, are `bad_args` before any of that work, and
a resolution costs time linear in the path. The resolutions remembered were bounded by count
alone (65,536 of 4 KB paths, misses included: hundreds of MB), now by bytes, misses not
remembered. An atomic save of a writable file in a directory the user cannot write was
`forbidden`; it is written in place (`atomic: false`). A read at an offset past 2^63 answered
`internal`; offsets and lengths outside [0, 2^53) are `bad_args`. A write to `f.txt/` wrote
`f.txt`; it writes nothing, and a read or stat of it is `not_a_directory` (they answered
`f.txt`). `f.txt/..` is `not_a_directory` too (read, stat and write answered the directory
holding `f.txt`, and a write of `f.txt/../g.txt` wrote `g.txt`).

Real trees under a supervisor with a strict hang budget (5 missed 100 ms beats), real files:
a case that held the loop shows the call answered `bad_args` with the watcher's pid and
restart count unchanged after it; nothing here is timed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.errors import MoorageError
from tests.conftest import Tree

pytestmark = pytest.mark.timeout(300)

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

PATH_MAX = 4096  # Linux's, its NUL counted: 4,095 bytes is the longest path a syscall takes
MAX_ID = 2**53 - 1
CALL_S = 20.0  # a call's budget: the old code's hang took it all, resend after resend


def strict_tree(make_tree: Any, data: Path) -> Tree:
    return make_tree(STRICT_TREE.format(data=data)).start()


def watcher_life(tree: Tree) -> tuple[int, int]:
    """(pid, restarts) of the watcher: the same before and after means it was never killed."""
    child = tree.child("watcher")
    return child["pid"], child["restarts"]


def refused(tree: Tree, op: str, args: dict[str, Any], name: str = "bad_args"
            ) -> MoorageError:
    with pytest.raises(MoorageError) as got:
        tree.call("watcher", op, args, timeout=CALL_S)
    assert got.value.error.name == name, (op, str(got.value)[:300])
    return got.value


def path_of(top: Path, size: int, char: str = "b") -> str:
    """A path below `top` of exactly `size` bytes, names of at most 200 bytes of `char` (one
    or two bytes in UTF-8; the last name ends in a `b` where that makes the size)."""
    path = str(top)
    width = len(char.encode())
    while True:
        left = size - len(path.encode()) - 1  # (its "/")
        if left <= 200:
            return f"{path}/{char * (left // width)}{'b' * (left % width)}"
        path = f"{path}/{char * (200 // width)}"


# --- 1: a path of PATH_MAX bytes or more ---------------------------------------------------


def test_a_path_of_path_max_bytes_or_more_is_refused_by_every_op_before_it_is_resolved(
        make_tree, data):
    tree = strict_tree(make_tree, data)
    life = watcher_life(tree)
    huge = str(data) + "/a" * 128_000  # 256 KB: resolving it held the old loop for seconds
    for op, extra in (("fs.stat", {}), ("fs.read", {}), ("fs.write", {"data": b"x"}),
                      ("fs.list", {}), ("fs.watch", {}), ("fs.query", {})):
        err = refused(tree, op, {"path": huge, **extra})
        assert err.error.detail["errno"] == "ENAMETOOLONG", (op, err.error.detail)
    refused(tree, "fs.stat", {"path": "a/" * 3000})  # relative: made absolute, then measured
    # The bound is the kernel's, in bytes: 4,095 is taken (nothing there), 4,096 is not,
    # nor 2,048 two-byte characters.
    refused(tree, "fs.stat", {"path": path_of(data, PATH_MAX - 1)}, "not_found")
    refused(tree, "fs.stat", {"path": path_of(data, PATH_MAX)})
    two_bytes = path_of(data, PATH_MAX, "é")
    assert len(two_bytes) < PATH_MAX <= len(two_bytes.encode())
    refused(tree, "fs.stat", {"path": two_bytes})
    refused(tree, "fs.stat", {"path": path_of(data, PATH_MAX - 1, "é")}, "not_found")
    assert watcher_life(tree) == life, tree.output()[-3000:]


# --- 2: fs.watch exclude patterns ----------------------------------------------------------


def test_exclude_patterns_are_bounded_in_length_before_they_are_compiled(make_tree, data):
    tree = strict_tree(make_tree, data)
    life = watcher_life(tree)
    for exclude in (["[" * 8000],  # fnmatch took seconds of the old loop on this one
                    ["x" * 257],  # one pattern past 256 characters
                    ["x" * 256] * 16 + ["y"],  # 4,097 characters in all
                    ["x"] * 65, [""]):
        err = refused(tree, "fs.watch", {"path": str(data), "exclude": exclude})
        assert "exclude" in err.error.message
    w = tree.call("watcher", "fs.watch", {"path": str(data), "exclude": ["x" * 256] * 16},
                  timeout=60)
    assert w["exclude"] == ["x" * 256] * 16  # 256 each, 4,096 in all: taken
    assert watcher_life(tree) == life, tree.output()[-3000:]


# --- 3: the resolutions remembered, in bytes ------------------------------------------------


def spelled(top: Path, i: int, size: int, name: str) -> str:
    """A path of `size` bytes to `top/name`, spelled differently for each `i` (a pattern of
    `./` and `//` by the bits of i)."""
    head = str(top) + "/"
    body = "".join("./" if b == "1" else "//" for b in format(i, "016b"))
    pad = size - len(head) - len(body) - len(name)
    assert pad >= 0
    return head + "/" * (pad % 2) + body + "./" * (pad // 2) + name


def test_the_resolutions_remembered_stay_within_their_bytes_and_misses_are_not_kept(
        make_tree, data):
    (data / "f").write_bytes(b"x")
    tree = strict_tree(make_tree, data)
    count = 3000
    paths = [spelled(data, i, 4000, "f") for i in range(count)]
    assert len(set(paths)) == count
    for got in tree.client.pipeline("watcher", [("fs.stat", {"path": p}) for p in paths],
                                    timeout=120):
        assert not isinstance(got, BaseException), got
        assert got["path"] == str(data / "f")
    memo = tree.call("watcher", "sys.info")["resolve_memo"]
    # 3,000 paths of 4,000 bytes are over 11 MB: more than the bound, so it was reached
    assert count * 4000 > memo["max_bytes"]
    assert 0 < memo["bytes"] <= memo["max_bytes"], memo
    assert 0 < memo["entries"] < count, memo  # the oldest forgotten
    misses = [spelled(data, i, 4000, "missing") for i in range(count)]
    for got in tree.client.pipeline("watcher", [("fs.stat", {"path": p}) for p in misses],
                                    timeout=120):
        assert isinstance(got, MoorageError) and got.error.name == "not_found", got
    after = tree.call("watcher", "sys.info")["resolve_memo"]
    assert after == memo  # nothing there: nothing remembered


# --- 5: an atomic save in a directory the user cannot write ----------------------------------


DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
CAP_DAC_OVERRIDE = 1


@pytest.fixture
def read_only_dir(data: Path) -> Iterator[Path]:
    """`data/rodir` at mode 0555, holding `shared.txt` at 0666 (its mode put back after)."""
    d = data / "rodir"
    d.mkdir()
    (d / "shared.txt").write_bytes(b"old contents\n")
    os.chmod(d / "shared.txt", 0o666)
    os.chmod(d, 0o555)
    try:
        yield d
    finally:
        os.chmod(d, 0o755)


def test_a_default_save_of_a_writable_file_in_a_read_only_directory_writes_it_in_place(
        make_tree, data, read_only_dir):
    tree = make_tree(STRICT_TREE.format(data=data))
    if os.geteuid() == 0:  # root makes a file anywhere: the tree runs without that power
        if shutil.which("setpriv") is None:
            pytest.skip("needs setpriv to run the tree as root without CAP_DAC_OVERRIDE")
        tree.launcher = DROP_DAC
    tree.start()
    pid = tree.child("watcher")["pid"]
    caps = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("CapEff:"))
    assert not int(caps.split()[1], 16) & (1 << CAP_DAC_OVERRIDE), caps
    shared = read_only_dir / "shared.txt"
    ino = shared.stat().st_ino
    got = tree.call("watcher", "fs.write", {"path": str(shared), "data": b"new\n"})
    assert got["atomic"] is False and shared.read_bytes() == b"new\n"
    assert shared.stat().st_ino == ino == got["stat"]["ino"]  # the same file, in place
    assert stat.S_IMODE(shared.stat().st_mode) == 0o666
    assert os.listdir(read_only_dir) == ["shared.txt"]  # no temporary left
    # A new file there is still refused: nothing to write in place.
    err = refused(tree, "fs.write", {"path": str(read_only_dir / "new.txt"), "data": b"x"},
                  "forbidden")
    assert err.error.detail["errno"] == "EACCES"
    assert not (read_only_dir / "new.txt").exists()


# --- 6: offsets and lengths ------------------------------------------------------------------


def test_a_read_offset_or_length_outside_what_the_protocol_carries_is_bad_args(
        make_tree, data):
    (data / "empty").write_bytes(b"")
    (data / "f.txt").write_bytes(b"hello\n")
    tree = strict_tree(make_tree, data)
    life = watcher_life(tree)
    for name in ("empty", "f.txt"):
        path = str(data / name)
        for extra in ({"offset": MAX_ID + 1}, {"offset": 2**63 - 1}, {"offset": 2**63},
                      {"offset": 2**64 - 1}, {"length": MAX_ID + 1}, {"length": 2**64 - 1},
                      {"offset": -1}, {"length": -1}):
            err = refused(tree, "fs.read", {"path": path, **extra})
            assert err.error.detail["max"] == MAX_ID, err.error.detail
        got = tree.client.request("watcher", "fs.read", {"path": path, "offset": MAX_ID,
                                                         "length": MAX_ID})
        assert (got.body["offset"], got.body["length"], got.attachments[0]) == (MAX_ID, 0, b"")
    assert watcher_life(tree) == life, tree.output()[-3000:]


# --- minor: a path that names a directory ------------------------------------------------------


def test_a_write_to_a_path_ending_in_a_slash_writes_nothing(make_tree, data):
    f = data / "f.txt"
    f.write_bytes(b"old\n")
    (data / "d").mkdir()
    tree = strict_tree(make_tree, data)
    for path in (f"{f}/", f"{f}/.", "f.txt/"):
        for atomic in (True, False):
            err = refused(tree, "fs.write", {"path": path, "data": b"new\n", "atomic": atomic},
                          "not_a_directory")
            assert err.error.detail["errno"] == "ENOTDIR"
    assert f.read_bytes() == b"old\n"
    for path in (f"{data}/new.txt/", f"{data}/d/"):
        err = refused(tree, "fs.write", {"path": path, "data": b"new\n"}, "is_directory")
        assert err.error.detail["errno"] == "EISDIR"
    assert sorted(os.listdir(data)) == ["d", "f.txt"]
    assert os.listdir(data / "d") == []


def test_a_read_or_stat_of_a_file_named_as_a_directory_is_not_a_directory(make_tree, data):
    """`f.txt/` names a directory: the kernel answers ENOTDIR, where the resolution (which
    drops the slash) read and stat'ed `f.txt`. Read first whole, so that a cached entry of
    `f.txt` is there to be wrongly answered; a symlink to the file named with a slash too."""
    f = data / "f.txt"
    f.write_bytes(b"old\n")
    (data / "d").mkdir()
    (data / "link").symlink_to("f.txt")
    tree = strict_tree(make_tree, data)
    assert tree.client.request("watcher", "fs.read", {"path": str(f)}).attachments[0] == \
        b"old\n"
    for path in (f"{f}/", f"{f}/.", "f.txt/", f"{data}/link/"):
        for op in ("fs.read", "fs.stat"):
            err = refused(tree, op, {"path": path}, "not_a_directory")
            assert err.error.detail["errno"] == "ENOTDIR", (op, path)
    assert tree.call("watcher", "fs.stat", {"path": f"{data}/d/"})["type"] == "dir"
    refused(tree, "fs.read", {"path": f"{data}/d/"}, "is_directory")
    refused(tree, "fs.read", {"path": f"{data}/none.txt/"}, "not_found")
    assert tree.call("watcher", "fs.stat", {"path": str(f)})["size"] == 4


def test_a_name_followed_by_dotdot_must_be_a_directory(make_tree, data):
    """`f.txt/..` and `f.txt/../g.txt`: the kernel walks `..` from `f.txt` and answers
    ENOTDIR, `none/..` ENOENT; realpath takes the name before `..` away whatever it is, so
    a read or stat answered the directory holding `f.txt`, a write of `f.txt/../g.txt`
    wrote `g.txt`, and a list, a watch or a query of `f.txt/..` took the directory holding
    it. `sub/..` is the directory it names: a stat of it is that directory's, a read or
    write of it is_directory, a list of it lists it."""
    d = data / "d"
    (d / "sub").mkdir(parents=True)
    f = d / "f.txt"
    f.write_bytes(b"old\n")
    (d / "g.txt").write_bytes(b"g\n")
    (data / "link").symlink_to("d/f.txt")
    tree = strict_tree(make_tree, data)
    for path in (f"{f}/..", f"{f}/../g.txt", "d/f.txt/..", f"{f}/../..", f"{data}/link/..",
                 f"{f}/../sub/."):
        for op in ("fs.read", "fs.stat"):
            err = refused(tree, op, {"path": path}, "not_a_directory")
            assert err.error.detail["errno"] == "ENOTDIR", (op, path)
        for atomic in (True, False):
            err = refused(tree, "fs.write", {"path": path, "data": b"new\n",
                                             "atomic": atomic}, "not_a_directory")
            assert err.error.detail["errno"] == "ENOTDIR", (path, atomic)
    tree.call("watcher", "fs.watch", {"path": str(data)})  # (a query needs a watch)
    for path in (f"{f}/..", "d/f.txt/..", f"{data}/link/.."):
        for op in ("fs.list", "fs.watch", "fs.query"):
            err = refused(tree, op, {"path": path}, "not_a_directory")
            assert err.error.detail["errno"] == "ENOTDIR", (op, path)
    for op, args in (("fs.read", {}), ("fs.stat", {}), ("fs.write", {"data": b"new\n"})):
        err = refused(tree, op, {"path": f"{d}/none/../g.txt", **args}, "not_found")
        assert err.error.detail["errno"] == "ENOENT", op
    for op in ("fs.list", "fs.watch", "fs.query"):
        err = refused(tree, op, {"path": f"{d}/none/.."}, "not_found")
        assert err.error.detail["errno"] == "ENOENT", op
    listed = tree.call("watcher", "fs.list", {"path": f"{d}/sub/.."})["entries"]
    assert sorted(e["name"] for e in listed) == ["f.txt", "g.txt", "sub"]
    assert tree.call("watcher", "fs.stat", {"path": f"{d}/sub/.."})["type"] == "dir"
    assert tree.call("watcher", "fs.stat", {"path": f"{d}/sub/../g.txt"})["size"] == 2
    refused(tree, "fs.read", {"path": f"{d}/sub/.."}, "is_directory")
    refused(tree, "fs.write", {"path": f"{d}/sub/..", "data": b"new\n"}, "is_directory")
    assert (f.read_bytes(), (d / "g.txt").read_bytes()) == (b"old\n", b"g\n")
    assert sorted(os.listdir(d)) == ["f.txt", "g.txt", "sub"]
    assert os.listdir(d / "sub") == []


# --- the resolution: what realpath makes of a path, at a cost linear in it ------------------


def test_the_resolution_makes_of_every_path_what_realpath_makes(tmp_path):
    """Real directories, files and symlinks (relative, absolute, chained, dangling, loops,
    `..` in targets) and paths through them deeper than the directories the resolution
    holds open at a time: the same answer as os.path.realpath, which walks each prefix."""
    from moorage.actors.watcher.confine import MAXSYMLINKS, realpath

    top = Path(os.path.realpath(tmp_path))
    deep = top.joinpath(*["d"] * 60)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    mid = top.joinpath(*["d"] * 30)
    links = {
        mid / "up": "../../..", mid / "abs": str(deep), mid / "rel": "d/d/d/d/f",
        mid / "chain": "rel", mid / "loop": "loop", mid / "a": "b", mid / "b": "a",
        mid / "dangling": "nowhere/x", top / "to_mid": os.path.relpath(mid, top),
        top / "dots": "./d/../d/./d//d",
    }
    for link, target in links.items():
        os.symlink(target, link)
    tails = ["", "/", "/.", "/..", "/../..", "/x", "/x/..", "/x/../..", "/f", "/f/..",
             "/up/d", "/abs/f", "/rel", "/chain/..", "/loop/x", "/a/b", "/dangling/..",
             "/up/up/up/d/d/abs/../../..", "//d/./d/"]
    heads = [str(top), str(mid), str(deep), str(top / "to_mid"), str(top / "dots"),
             str(top / "to_mid" / "up" / "to_mid")]
    checked = 0
    for head in heads:
        for tail in tails:
            path = head + tail
            assert realpath(path) == os.path.realpath(path), path
            checked += 1
    assert checked == len(heads) * len(tails)
    # Past MAXSYMLINKS symlinks (the kernel's ELOOP) the walk stops, as at a loop.
    hops = top / "hops"
    hops.mkdir()
    for i in range(MAXSYMLINKS + 1):
        os.symlink(f"h{i + 1}" if i < MAXSYMLINKS else ".", hops / f"h{i}")
    assert realpath(str(hops / "h1")) == str(hops)  # 40 symlinks: followed
    assert realpath(str(hops / "h0")) == str(hops / f"h{MAXSYMLINKS}")  # the 41st: not
    with pytest.raises(OSError) as kernel:
        os.stat(hops / "h0")
    assert kernel.value.errno == errno.ELOOP
