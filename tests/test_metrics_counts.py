"""The loops a push costs the metrics actor (actors/metrics/counts.py): a histogram's counts
array read, and counts merged. The compiled loops (_ccounts.c) give what the Python ones give,
the same counts, totals and sums, and the same error for the same malformed array, on hand-made
arrays at every edge and on random ones; the merge is Counter.update's."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from moorage.actors.metrics import counts
from moorage.actors.metrics.counts import (
    CUT_OFF,
    PAST_END,
    TOO_LONG,
    add_counts_python,
    read_counts_python,
)
from tests.interpreter import printed
from tests.test_metrics_actor import varint

VALUES = tuple(range(0, 3000, 3))  # an array of 1,000 buckets, their values increasing
HEADER = b"\x01\x02\x03"  # what comes before the counts: skipped by `start`


def array(entries: list[int]) -> bytes:
    """n >= 0 a count, -n a run of n zero counts, after HEADER."""
    return HEADER + b"".join(varint(n) for n in entries)


@pytest.fixture(params=["python", "compiled"])
def loops(request: pytest.FixtureRequest) -> tuple[Any, Any]:
    """(read_counts, add_counts) of the Python loops, or of the compiled ones."""
    if request.param == "python":
        return read_counts_python, add_counts_python
    if counts.COUNTS_CORE != "compiled":
        pytest.skip("the optional extension actors/metrics/_ccounts.c was not built")
    return counts.read_counts, counts.add_counts


@pytest.fixture
def read(loops: tuple[Any, Any]) -> Any:
    return loops[0]


@pytest.fixture
def add(loops: tuple[Any, Any]) -> Any:
    return loops[1]


def test_counts_runs_and_single_zeros_land_on_their_values(read) -> None:  # type: ignore[no-untyped-def]
    got = read(array([0, 0, 4, -5, 2**40, 0, 1, -988, 7]), len(HEADER), VALUES)
    # indices: 0, 1 zero; 2 -> 4; 3..7 zero; 8 -> 2^40; 9 zero; 10 -> 1; 11..998 zero; 999 -> 7
    assert got == ({6: 4, 24: 2**40, 30: 1, VALUES[-1]: 7}, 9, 2**40 + 12,
                   6 * 4 + 24 * 2**40 + 30 + VALUES[-1] * 7)


def test_an_empty_array_and_one_of_zeros_to_its_end_hold_nothing(read) -> None:  # type: ignore[no-untyped-def]
    assert read(array([]), len(HEADER), VALUES) == ({}, 0, 0, 0)
    assert read(array([-1000]), len(HEADER), VALUES) == ({}, 1, 0, 0)


def test_a_sum_past_64_bits_is_exact(read) -> None:  # type: ignore[no-untyped-def]
    big = 2**55 - 1  # the largest count an 8-byte varint holds (56 bits, zigzagged)
    values = (1, 3_600_000_000)
    got = read(array([big, big]), len(HEADER), values)
    assert got == ({1: big, 3_600_000_000: big}, 2, 2 * big, big + 3_600_000_000 * big)
    assert got[3] > 2**64


@pytest.mark.parametrize(("entries", "tail", "error"), [
    ([7, -999, 1], b"", PAST_END),  # a count at the index past the last
    ([-1000, 0], b"", PAST_END),  # one zero past the end
    ([-1001], b"", PAST_END),  # a run past the end
    ([3], b"\x80", CUT_OFF),  # the array ends inside a varint
    ([3], b"\xff" * 8, TOO_LONG),  # a varint of more than 8 bytes
])
def test_a_malformed_array_is_refused_with_its_reason(read, entries, tail, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=error):
        read(array(entries) + tail, len(HEADER), VALUES)


def test_an_eight_byte_varint_is_read_whole(read) -> None:  # type: ignore[no-untyped-def]
    n = 2**55 - 1
    assert len(varint(n)) == 8
    assert read(array([n]), len(HEADER), VALUES)[0] == {0: n}


def test_both_readers_agree_on_random_arrays_valid_or_not() -> None:
    if counts.COUNTS_CORE != "compiled":
        pytest.skip("the optional extension actors/metrics/_ccounts.c was not built")
    rng = random.Random(17)

    def outcome(f, data: bytes):  # type: ignore[no-untyped-def]
        try:
            return f(data, len(HEADER), VALUES)
        except ValueError as exc:
            return str(exc)

    errors = 0
    for i in range(3000):
        if i % 3:  # well-formed entries, some past the end
            entries = [rng.choice((rng.randrange(0, 2**20), -rng.randrange(1, 40), 0))
                       for _ in range(rng.randrange(0, 60))]
            data = array(entries)
        else:  # any bytes
            data = HEADER + rng.randbytes(rng.randrange(0, 80))
        python, compiled = outcome(read_counts_python, data), outcome(counts.read_counts, data)
        assert compiled == python, data
        errors += isinstance(python, str)
    assert 0 < errors < 3000  # both kinds were met


def test_adding_counts_is_counter_update(add) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    for _ in range(200):
        target = Counter({rng.randrange(50): rng.randrange(1, 2**70)
                          for _ in range(rng.randrange(0, 20))})
        source = {rng.randrange(50): rng.randrange(1, 2**70) for _ in range(rng.randrange(0, 20))}
        expected = Counter(target)
        expected.update(source)
        add(target, source)
        assert target == expected and type(target) is Counter


def test_the_python_loops_run_where_they_are_asked_for() -> None:
    code = "from moorage.actors.metrics import counts; print(counts.COUNTS_CORE)"
    assert printed(code, MOORAGE_METRICS_CORE="python") == ["python"]
