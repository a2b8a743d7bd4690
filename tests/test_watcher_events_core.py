"""A flush's events packed without a dict each (actors/watcher/_cevents.c `pack_events`)
and in Python (pipeline.pack_events_python, the reference): the same bytes for every row,
every int and str width msgpack chooses between, dict rows among them, and the same error
where msgpack refuses a value. Then a real flush publishes the same messages either way."""

from __future__ import annotations

import msgpack
import pytest

from moorage.actors.watcher import pipeline
from moorage.actors.watcher.journal import Journal
from moorage.actors.watcher.pipeline import Pipeline, pack_events_python
from moorage.actors.watcher.snapshot import Index, make_stat
from moorage.actors.watcher.watches import Watches
from tests.interpreter import printed

packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack
compiled = pytest.mark.skipif(pipeline.EVENTS_CORE != "compiled",
                              reason="the compiled packing was not built here (no compiler)")

INTS = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
        -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63]
STRS = ["", "a", "x" * 31, "x" * 32, "é" * 127, "x" * 255, "x" * 256, "x" * 65535,
        "x" * 65536, "/w/日本語/ファイル"]


def row(**kw: object) -> tuple:
    base = {"kind": "created", "path": "/w/a", "type": "file", "origin": "external",
            "watches": ("w1",), "size": 12, "mtime_ns": 1_796_490_892_326_791_200, "seq": 5,
            "key": None, "value": None}
    base.update(kw)
    return tuple(base.values())


def rows() -> list:
    out: list = [row(), row(size=None, mtime_ns=None), row(kind="deleted", key="moved_to",
                                                           value="/w/b")]
    out += [row(size=n, mtime_ns=n, seq=abs(n)) for n in INTS]
    out += [row(path=s, kind=s[:40], origin=s[:10], key="moved_from", value=s) for s in STRS]
    out += [row(watches=tuple(f"w{i}" for i in range(k))) for k in (0, 15, 16, 70_000)]
    out += [row(watches=["w1", ("nested", [1, None, True, False])]),
            row(value=1.5, key="ratio"), row(value=b"\x00bytes", key="raw"),
            row(value={"a": 1}, key="map"),
            {"kind": "warning", "clock": ("i", 1, 7), "detail": {"x": [1, 2]}},
            ("a", "tuple", "of", "three")]
    return out


@compiled
@pytest.mark.parametrize("instance", ["inst-1", "é" * 40])
def test_the_compiled_packing_makes_the_bytes_of_the_reference(instance: str) -> None:
    rs = rows()
    for start, stop in ((0, len(rs)), (0, 0), (3, 9), (len(rs) - 2, len(rs))):
        for epoch in (0, 3, 2**40):
            want = pack_events_python(rs, start, stop, instance, epoch, packb)
            assert pipeline.pack_events(rs, start, stop, instance, epoch, packb) == want
    assert msgpack.unpackb(pipeline.pack_events(rs[:1], 0, 1, instance, 3, packb)) == {
        "events": [{"kind": "created", "path": "/w/a", "type": "file", "origin": "external",
                    "watches": ["w1"], "size": 12, "mtime_ns": 1_796_490_892_326_791_200,
                    "clock": [instance, 3, 5]}]}


@compiled
@pytest.mark.parametrize("bad", [row(path="/w/\udcff"), row(size=2**64, mtime_ns=1),
                                 row(size=-2**63 - 1, mtime_ns=1), row(value=object(), key="k")])
def test_a_value_msgpack_refuses_is_refused_alike(bad: tuple) -> None:
    with pytest.raises(Exception) as want:
        pack_events_python([bad], 0, 1, "i", 1, packb)
    with pytest.raises(type(want.value)):
        pipeline.pack_events([bad], 0, 1, "i", 1, packb)


@compiled
def test_a_range_outside_the_rows_is_refused() -> None:
    for start, stop in ((-1, 1), (0, 2), (1, 0)):
        with pytest.raises(ValueError):
            pipeline.pack_events([row()], start, stop, "i", 1, packb)


def flushed(core: str, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What one pipeline publishes for creations, modifications, deletions and a move,
    some of them the watcher's own writes."""
    if core == "python":
        monkeypatch.setattr(pipeline, "pack_events", pack_events_python)
    ws = Watches()
    ws.add("/w", True, [])
    sent: list[bytes] = []
    stats = {f"/w/d/f{i}": (make_stat(0o100644, 1, 2, i, 4, 5), 0o100644, i, 4)
             for i in range(300)}
    stats["/w/d"] = (make_stat(0o040755, 1, 2, 0, 4, 5), 0o040755, 0, 4)
    p = Pipeline(Journal("bench", max_events=50_000), ws, Index(), lambda b: sent.append(b.data),
                 lambda d, fn: None, settle_s=0, lstat=stats.get)
    p.chunk = 64
    p.note_self_write("/w/d/f3", None)
    p.feed([("created", "/w/d", "", True)] + [("created", f"/w/d/f{i}", "", False)
                                              for i in range(300)])
    p.feed([("modified", f"/w/d/f{i}", "", False) for i in range(0, 300, 7)]
           + [("deleted", "/w/d/f5", "", False), ("moved", "/w/d/f6", "/w/d/f400", False)])
    return sent


@compiled
def test_a_flush_publishes_the_same_messages_from_either_core(monkeypatch) -> None:
    with monkeypatch.context() as m:
        want = flushed("python", m)
    got = flushed("compiled", monkeypatch)
    assert got == want and len(want) > 5
    events = [e for b in got for e in msgpack.unpackb(b)["events"]]
    seqs = [e["clock"][2] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert {e["origin"] for e in events if e["path"] == "/w/d/f3"} == {"self"}
    assert any(e.get("moved_from") == "/w/d/f6" for e in events)


def test_the_python_packing_runs_where_it_is_asked_for() -> None:
    code = "from moorage.actors.watcher import pipeline; print(pipeline.EVENTS_CORE)"
    assert printed(code, MOORAGE_WATCHER_CORE="python") == ["python"]
