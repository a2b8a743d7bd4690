"""The grouper's queue (movequeue.py): watchdog's order and delays, a move paired by cookie."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import pytest

from moorage.actors.watcher.movequeue import MoveQueue
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


class Ev(NamedTuple):
    name: str
    cookie: int = 0
    moved_from: bool = False


def keys_of(e: object) -> tuple:
    return (("cookie", e.cookie),) if isinstance(e, Ev) and e.moved_from else ()


def test_elements_come_out_in_order_and_a_pair_goes_to_the_back():
    q = MoveQueue(60.0, keys_of)  # (a delay no test waits for: the pair is taken first)
    q.put(Ev("a"))
    q.put(Ev("from", 7, True), delay=True)
    q.put(Ev("b"))
    assert q.first(("cookie", 7)) == Ev("from", 7, True) and len(q) == 3  # found, left in place
    assert q.first(("cookie", 8)) is None and q.take(("cookie", 8)) is None
    src = q.take(("cookie", 7))
    assert src == Ev("from", 7, True) and q.first(("cookie", 7)) is None
    q.put((src, Ev("to")))  # the grouper queues the pair behind what came before it
    assert [q.get(), q.get(), q.get()] == [Ev("a"), Ev("b"), (src, Ev("to"))]
    assert len(q) == 0


def test_an_unpaired_moved_from_is_held_for_the_delay_and_then_leaves_the_index():
    q = MoveQueue(0.2, keys_of)
    t0 = time.monotonic()
    q.put(Ev("from", 3, True), delay=True)
    q.put(Ev("after"))
    assert q.get() == Ev("from", 3, True)
    assert time.monotonic() - t0 >= 0.2  # (nothing overtakes it meanwhile)
    assert q.first(("cookie", 3)) is None and q.take(("cookie", 3)) is None
    assert q.get() == Ev("after")


def test_a_moved_from_paired_while_get_waits_out_its_delay_wakes_it():
    q = MoveQueue(30.0, keys_of)
    q.put(Ev("from", 5, True), delay=True)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend([q.get()]))
    t0 = time.monotonic()
    reader.start()
    wait_for(lambda: q._not_empty._waiters, "the reader waiting out the delay")  # type: ignore[attr-defined]
    src = q.take(("cookie", 5))
    q.put((src, Ev("to")))
    reader.join(20)
    assert got == [(Ev("from", 5, True), Ev("to"))]
    assert time.monotonic() - t0 < 30  # (not the delay: the pairing woke it)


def test_find_and_remove_by_predicate_skip_what_was_taken_and_keep_the_index():
    q = MoveQueue(60.0, keys_of)
    for i in range(5):
        q.put(Ev(f"from{i}", i, True), delay=True)
    q.take(("cookie", 1))
    assert q.find(lambda e: e.name in ("from1", "from2")) == Ev("from2", 2, True)
    assert q.remove(lambda e: e.name == "from3") == Ev("from3", 3, True)
    assert q.first(("cookie", 3)) is None and q.take(("cookie", 3)) is None  # gone from the index
    assert q.remove(lambda e: e.name == "nothing") is None
    assert len(q) == 3
    q.clear()
    assert len(q) == 0 and q.first(("cookie", 0)) is None


def test_close_ends_a_get_that_waits():
    q = MoveQueue(0.5, keys_of)
    got: list[object] = ["unset"]
    reader = threading.Thread(target=lambda: got.__setitem__(0, q.get()))
    reader.start()
    q.close()
    reader.join(10)
    assert not reader.is_alive() and got == [None]


def test_a_key_finds_the_earliest_of_its_elements_and_several_keys_index_one():
    def two(e: object) -> tuple:
        return (("name", e.name[0]), ("cookie", e.cookie)) if isinstance(e, Ev) else ()

    q = MoveQueue(60.0, two)
    q.put(Ev("a1", 1))
    q.put(Ev("a2", 2))
    q.put(Ev("b1", 3))
    assert q.first(("name", "a")) == Ev("a1", 1) and q.first(("cookie", 2)) == Ev("a2", 2)
    assert q.take(("cookie", 1)) == Ev("a1", 1)  # gone under both of its keys
    assert q.first(("name", "a")) == Ev("a2", 2)
    assert q.remove(lambda e: e.name == "a2") == Ev("a2", 2)
    assert q.first(("name", "a")) is None and q.first(("cookie", 2)) is None
    assert q.get() == Ev("b1", 3) and q.first(("name", "b")) is None


def test_many_moves_pair_in_one_lookup_each():
    # 20,000 queued moves, each paired: by walks this is 200 million tests; indexed, one
    # lookup each. (Counted, not timed: the predicate is never called.)
    calls = 0

    def counting(e: object) -> int | None:
        nonlocal calls
        calls += 1
        return keys_of(e)

    q = MoveQueue(60.0, counting)
    n = 20_000
    for i in range(n):
        q.put(Ev(f"f{i}", i + 1, True), delay=True)
    for i in range(n):
        src = q.take(("cookie", i + 1))
        assert src is not None and src.name == f"f{i}"
        q.put((src, Ev(f"t{i}")))
    assert calls == 2 * n  # one look at each element put, no walk
    out = [q.get() for _ in range(n)]
    assert [e[1].name for e in out] == [f"t{i}" for i in range(n)]
