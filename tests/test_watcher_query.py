"""fs.query: the files of a watched tree from the watcher's memory (issue 17).

Against a real watcher on real files: the answer is compared with what is on disk (os.walk),
changes are made and fs.sync'ed before the query that should see them.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.watcher.query import (
    CHUNK,
    CHUNK_BARE,
    CHUNK_FILTERED,
    MAX_CURSORS_PER_CLIENT,
    MAX_GLOB_CHARS,
    MAX_RUNNING,
    Filter,
    Query,
    glob_regex,
    page,
)
from moorage.actors.watcher.snapshot import make_stat
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError

pytestmark = pytest.mark.timeout(120)

ENTRY = "moorage.actors.watcher.actor:WatcherActor"


@pytest.fixture
def data(tmpfs_path: Path) -> Path:
    d = tmpfs_path / "data"  # (queries answer from the index: a tmpfs makes big trees fast)
    d.mkdir()
    return d


@pytest.fixture
def watcher(spawn_actor, client, data):
    def go(**config: Any) -> Client:
        config.setdefault("roots", [str(data)])
        config.setdefault("settle_ms", 5)
        spawn_actor(ENTRY, "watcher", **config)
        client.hello("watcher")
        return client

    return go


def on_disk(root: Path) -> dict[str, str]:
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(top, name), root)] = "dir"
        for name in files:
            out[os.path.relpath(os.path.join(top, name), root)] = "file"
    return out


def everything(c: Client, **args: Any) -> list[Any]:
    """Every page of a query, following its cursor."""
    got = c.call("watcher", "fs.query", args)
    files = list(got["files"])
    while got["more"]:
        got = c.call("watcher", "fs.query", {"cursor": got["cursor"],
                                            **({"max": args["max"]} if "max" in args else {})})
        files += got["files"]
    return files


def empty_files(root: Path, dirs: int, each: int = 1000) -> None:
    """`dirs` directories of `each` empty files under `root` (d00/f0000...)."""
    for d in range(dirs):
        sub = root / f"d{d:02d}"
        sub.mkdir()
        for i in range(each):
            os.close(os.open(sub / f"f{i:04d}", os.O_WRONLY | os.O_CREAT, 0o644))


def populate(root: Path) -> None:
    for d in ("src", "src/pkg", "docs", "build"):
        (root / d).mkdir(parents=True)
    for name in ("src/a.py", "src/b.PY", "src/pkg/c.py", "src/pkg/c.pyc", "docs/index.md",
                 "build/out.o", "README", "setup.py"):
        (root / name).write_bytes(name.encode())


def test_a_fresh_query_answers_every_file_from_memory_with_its_stat(watcher, data):
    populate(data)
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)})
    got = c.call("watcher", "fs.query", {"path": str(data)})
    assert got["fresh_instance"] and not got["more"] and got["cursor"] is None
    assert {f["name"]: f["type"] for f in got["files"]} == on_disk(data)
    one = next(f for f in got["files"] if f["name"] == "src/pkg/c.py")
    st = (data / "src/pkg/c.py").stat()
    assert one == {"name": "src/pkg/c.py", "exists": True, "type": "file",
                   "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    # Served from the index: a new file is in the answer once its event has been published.
    (data / "late.txt").write_text("x")
    c.call("watcher", "fs.sync")
    names = c.call("watcher", "fs.query", {"path": str(data), "fields": ["name"]})["files"]
    assert "late.txt" in names and set(names) == set(on_disk(data))


def test_glob_suffix_and_type_narrow_the_answer(watcher, data):
    populate(data)
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)})

    def names(**args: Any) -> set[str]:
        return set(c.call("watcher", "fs.query", {"path": str(data), "fields": ["name"],
                                                  **args})["files"])

    assert names(glob="**/*.py") == {"src/a.py", "src/pkg/c.py", "setup.py"}
    assert names(glob="*.py") == {"setup.py"}
    assert names(glob="src/*") == {"src/a.py", "src/b.PY", "src/pkg"}
    assert names(glob=["docs/**", "README"]) == {"docs/index.md", "README"}
    assert names(suffix="py") == {"src/a.py", "src/b.PY", "src/pkg/c.py", "setup.py"}
    assert names(suffix=["md", "o"]) == {"docs/index.md", "build/out.o"}
    assert names(type="dir") == {"src", "src/pkg", "docs", "build"}
    assert names(path=str(data / "src"), glob="**/*.py") == {"a.py", "pkg/c.py"}
    for bad in ({"glob": ""}, {"type": "pipe"}, {"fields": ["name", "colour"]},
                {"max": 0}, {"since": "c:1"}):
        with pytest.raises(MoorageError) as e:
            c.call("watcher", "fs.query", {"path": str(data), **bad})
        assert e.value.name == "bad_args", bad


def test_since_a_clock_answers_what_changed_and_another_instance_every_file(watcher, data):
    populate(data)
    c = watcher()
    clock = c.call("watcher", "fs.watch", {"path": str(data)})["clock"]
    (data / "new.py").write_text("n")
    (data / "README").write_text("changed")
    (data / "setup.py").unlink()
    c.call("watcher", "fs.sync")
    got = c.call("watcher", "fs.query", {"path": str(data), "since": clock,
                                         "fields": ["name", "exists"]})
    assert not got["fresh_instance"]
    assert {(f["name"], f["exists"]) for f in got["files"]} == {
        ("new.py", True), ("README", True), ("setup.py", False)}
    # Nothing changed since the answer's own clock.
    again = c.call("watcher", "fs.query", {"path": str(data), "since": got["clock"]})
    assert again["files"] == [] and not again["fresh_instance"]
    other = c.call("watcher", "fs.query", {"path": str(data), "since": ["elsewhere", 0, 5],
                                           "fields": ["name"]})
    assert other["fresh_instance"] and set(other["files"]) == set(on_disk(data))


def test_a_big_answer_comes_in_pages_that_add_up_to_every_file_once(watcher, data):
    empty_files(data, 25)
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)}, timeout=60)
    first = c.call("watcher", "fs.query", {"path": str(data), "fields": ["name"],
                                           "max": 10_000})
    assert len(first["files"]) == 10_000 and first["more"]
    files = everything(c, path=str(data), fields=["name"], max=10_000)
    assert len(files) == len(set(files)) == 25_025
    assert set(files) == set(on_disk(data))
    assert c.call("watcher", "fs.stats")["query"]["open_cursors"] == 1  # `first`'s, unused
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.query", {"cursor": "no-such-cursor"})
    assert e.value.name == "bad_args"
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.query", {"cursor": first["cursor"], "glob": "*"})
    assert e.value.name == "bad_args"


def test_a_query_outside_every_watch_or_without_watching_is_refused(watcher, data):
    (data / "a").mkdir()
    (data / "b").mkdir()
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data / "a")})
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.query", {"path": str(data / "b")})
    assert e.value.name == "watch_not_found"
    # A directory above a watch is fine: it answers what the watch covers.
    assert c.call("watcher", "fs.query", {"path": str(data)})["files"] == []


def test_a_query_of_a_file_or_of_nothing_inside_a_watch_says_so(watcher, data):
    (data / "d").mkdir()
    (data / "f").write_text("x")
    (data / "loop").symlink_to(data / "loop")
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)})
    assert c.call("watcher", "fs.query", {"path": str(data / "d")})["files"] == []
    for path, name in (("f", "not_a_directory"), ("missing", "not_found"),
                       ("loop", "not_a_directory")):  # (a symlink to itself)
        with pytest.raises(MoorageError) as e:
            c.call("watcher", "fs.query", {"path": str(data / path)})
        assert e.value.name == name, path


def test_unwatching_one_watch_forgets_only_what_no_other_watch_covers(watcher, data):
    (data / "sub" / "deep").mkdir(parents=True)
    for name in ("top.txt", "sub/y", "sub/deep/x"):
        (data / name).write_text(name)
    c = watcher()
    top = c.call("watcher", "fs.watch", {"path": str(data), "recursive": False})["watch"]
    c.call("watcher", "fs.watch", {"path": str(data / "sub")})
    c.call("watcher", "fs.unwatch", {"watch": top})
    names = set(c.call("watcher", "fs.query", {"path": str(data), "fields": ["name"]})["files"])
    assert names == {"sub/y", "sub/deep", "sub/deep/x"}
    assert c.call("watcher", "fs.stats")["index_entries"] == 3


def test_watches_beside_and_inside_others_index_each_path_once_and_unwatch_cleanly(
        watcher, data):
    """A new watch's base is merged without what overlapping watches already hold, and an
    unwatch forgets what no remaining watch covers; watches beside it are not touched."""
    for d in ("a/inner", "b", "c"):
        (data / d).mkdir(parents=True)
    for name in ("a/1", "a/inner/2", "b/3", "c/4"):
        (data / name).write_text(name)
    c = watcher()
    ids = {d: c.call("watcher", "fs.watch", {"path": str(data / d)})["watch"]
           for d in ("a", "b", "c", "a/inner")}
    assert c.call("watcher", "fs.stats")["index_entries"] == 5  # 1, inner, inner/2, 3, 4
    c.call("watcher", "fs.unwatch", {"watch": ids["a"]})  # inner's stay, and b's and c's
    names = {p for d in ("a/inner", "b", "c") for p in
             c.call("watcher", "fs.query", {"path": str(data / d), "fields": ["name"]})["files"]}
    assert names == {"2", "3", "4"}
    assert c.call("watcher", "fs.stats")["index_entries"] == 3


def test_a_query_of_the_cache_only_fallback_says_watching_is_off(watcher, data):
    c = watcher(fallback="cache_only")
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.query", {"path": str(data)})
    assert e.value.name == "resource_exhausted"


# --- the parts, in process ---------------------------------------------------------------------


@pytest.mark.parametrize("glob, yes, no", [
    ("*.py", ["a.py"], ["d/a.py", "a.pyc"]),
    ("**/*.py", ["a.py", "d/a.py", "d/e/a.py"], ["a.pyc"]),
    ("src/**", ["src/a", "src/d/a"], ["src", "lib/a"]),
    ("?.c", ["a.c"], ["ab.c", "/.c"]),
    ("[ab].c", ["a.c", "b.c"], ["c.c"]),
    ("[!ab].c", ["c.c"], ["a.c"]),
    ("a+b(c).txt", ["a+b(c).txt"], ["aab(c).txt"]),
    ("**/x/**/y", ["x/y", "a/x/b/y", "a/x/x/b/c/y"], ["ax/y", "x/b", "y", "a/x/yy"]),
    ("a**b", ["ab", "axxb"], ["a/b", "a/x/b"]),  # (within a component, ** is *)
    ("[!]a].c", ["b.c"], ["].c", "a.c", "/.c"]),
    ("*a*b*c", ["abc", "xaybzc", "aabbcc"], ["acb", "a/b/c", "abcx"]),
    ("a\\*b\\[c].\\?", ["a*b[c].?"], ["axb[c].?", "a*bc.?", "a*b[c].x"]),  # escapes
    ("a[.-0]b", ["a.b", "a0b"], ["a/b"]),  # (a range across `/` never matches it)
])
def test_globs_keep_star_within_a_component_and_double_star_across(glob, yes, no):
    rx = re.compile(glob_regex(glob))
    assert all(rx.match(p) for p in yes), [p for p in yes if not rx.match(p)]
    assert not any(rx.match(p) for p in no), [p for p in no if rx.match(p)]


@pytest.mark.timeout(30)
def test_a_glob_costs_about_the_length_of_the_name_whatever_its_stars():
    """Stars that a plain translation would try every split of (a number of ways that
    grows as the name's length to the power of the stars: hours here, on the loop)."""
    for glob, name in [("*a*a*a*a*a*a*a*a*b", "a" * 4000),
                       ("**/a*a*a*b/**/*a*a*c", "/".join(["aaaa"] * 1000)),
                       ("**/x/**/x/**/x/**/y", "/".join(["x"] * 2000))]:
        assert re.compile(glob_regex(glob)).match(name) is None


def test_a_page_looks_at_no_more_candidates_than_its_budget():
    entries = {f"/r/f{i}": make_stat(0o100644, 1, i, 1, 1, 1) for i in range(100)}
    q = Query("/r", Filter.build(None, None, None), ("name",), ["i", 0, 0], True,
              list(entries), 1000)
    got, full = page(q, entries, budget=30, want=1000)
    assert (len(got), full, q.pos) == (30, False, 30)
    rest, full = page(q, entries, budget=1000, want=1000)
    assert full and q.done and len(got + rest) == 100


def test_a_page_past_its_time_looks_at_one_chunk_more():
    """A slice stops at SLICE_S on the loop whatever its budget: here its time is up before
    it starts, and it still moves on by one chunk (described, or names only)."""
    entries = {f"/r/f{i}": make_stat(0o100644, 1, i, 1, 1, 1) for i in range(40_000)}
    for fields, glob, step in [(("name",), None, CHUNK_BARE), (("name", "size"), None, CHUNK),
                               (("name",), "f*", CHUNK_FILTERED)]:
        q = Query("/r", Filter.build(glob, None, None), fields, ["i", 0, 0], True,
                  list(entries), 100_000)
        got, full = page(q, entries, budget=100_000, want=100_000, until=0.0)
        assert (len(got), full, q.pos) == (step, False, step), (fields, glob)


def test_globs_past_their_length_are_refused_and_the_watcher_serves_on(watcher, data):
    """Compiled on the loop: a glob of 400 KB took it for seconds, and every resend of the
    query again. fs.list's glob too (its translation is quadratic in `[`)."""
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)})
    for glob in ("x" * (MAX_GLOB_CHARS + 1), ["*.py"] * 4 + ["x" * (MAX_GLOB_CHARS - 15)]):
        with pytest.raises(MoorageError) as e:
            c.call("watcher", "fs.query", {"path": str(data), "glob": glob})
        assert e.value.name == "bad_args" and "characters in all" in str(e.value)
    assert c.call("watcher", "fs.query", {"path": str(data), "glob": "[" * MAX_GLOB_CHARS})
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.list", {"path": str(data), "glob": "[" * 8000})
    assert e.value.name == "bad_args"
    assert c.call("watcher", "sys.ping")


def test_a_query_while_the_start_walks_the_tree_waits_for_the_whole_index(watcher, data):
    """Its configured watch walked as the watcher starts: a query asked meanwhile answered
    an index still empty (with a clock after which nothing changed, for good)."""
    empty_files(data, 20)
    c = watcher(watch=[str(data)])
    files = everything(c, path=str(data), fields=["name"], max=100_000)
    assert len(files) == 20_020


def test_a_clients_cursor_is_not_ended_by_other_clients_queries(watcher, data, runtime_dir):
    populate(data)
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)})
    first = c.call("watcher", "fs.query", {"path": str(data), "fields": ["name"], "max": 1})
    others = [Client(runtime_dir, timeout=10.0) for _ in range(MAX_CURSORS_PER_CLIENT + 4)]
    try:
        for o in others:  # (each a quick-open of its own, leaving a cursor)
            assert o.call("watcher", "fs.query", {"path": str(data), "max": 1})["more"]
    finally:
        for o in others:
            o.close()
    rest = c.call("watcher", "fs.query", {"cursor": first["cursor"], "max": 100})
    assert len(first["files"] + rest["files"]) == len(on_disk(data))
    # One client's own are at most MAX_CURSORS_PER_CLIENT: its oldest goes.
    mine = [c.call("watcher", "fs.query", {"path": str(data), "max": 1})["cursor"]
            for _ in range(MAX_CURSORS_PER_CLIENT + 1)]
    with pytest.raises(MoorageError) as e:
        c.call("watcher", "fs.query", {"cursor": mine[0]})
    assert e.value.name == "bad_args"
    assert c.call("watcher", "fs.query", {"cursor": mine[-1]})["files"]


def test_queries_past_those_under_way_wait_in_line_and_each_is_answered(watcher, data,
                                                                           runtime_dir):
    """At most MAX_RUNNING are made at once (each holds its page); the others wait for a
    place rather than being refused, and every one gets the whole tree."""
    empty_files(data, 10)
    c = watcher()
    c.call("watcher", "fs.watch", {"path": str(data)}, timeout=60)
    got: list[Any] = []

    def one() -> None:
        with Client(runtime_dir, timeout=60.0) as mine:
            try:
                got.append(len(mine.call("watcher", "fs.query", {"path": str(data),
                                                                  "max": 100_000})["files"]))
            except MoorageError as exc:
                got.append(exc.name)

    threads = [threading.Thread(target=one) for _ in range(4 * MAX_RUNNING)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == [10_010] * len(threads)
    stats = c.call("watcher", "fs.stats")["query"]
    assert stats["busy"] == 0 and stats["running"] == stats["waiting"] == 0
