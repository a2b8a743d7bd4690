"""A recorder's encoded histogram (`Recorder.encode`, `encode_counts`: its counts folded into
a per-thread scratch histogram by a written-out index, then emptied) is byte for byte what
hdrh gives when every value is recorded into a new histogram with its own `record_value`,
and what decodes from it has the same counts, total, min and max."""

from __future__ import annotations

import random
import threading

from moorage.protocol.histogram import (
    HIGHEST_US,
    Recorder,
    decode,
    encode_counts,
    new_histogram,
)


def by_hdrh(counts: dict[int, int]) -> bytes:
    h = new_histogram()
    for v, n in counts.items():
        h.record_value(min(v, HIGHEST_US), n)
    return h.encode()  # type: ignore[no-any-return]


def cases() -> list[dict[int, int]]:
    rnd = random.Random(7)
    edges = {0: 1, 1: 2, 127: 1, 128: 3, 255: 1, 256: 4, 257: 1, 511: 2, 512: 1,
             2**20 + 12345: 5, HIGHEST_US: 2, HIGHEST_US + 10**9: 1}
    spread = {int(rnd.lognormvariate(5, 1.5)) + 1: rnd.randint(1, 1000) for _ in range(3000)}
    return [{}, {42: 1}, edges, spread, {1: 10**12}]


def test_the_encoding_is_hdrh_own_for_every_value_and_count() -> None:
    for counts in cases():
        assert encode_counts(counts) == by_hdrh(counts), sorted(counts)[:20]


def test_what_decodes_has_the_recorded_counts_and_the_scratch_is_emptied_between_uses(
        ) -> None:
    for counts in cases() + cases()[::-1]:  # (each after another that left its marks)
        h = decode(encode_counts(counts))
        expected = new_histogram()
        for v, n in counts.items():
            expected.record_value(min(v, HIGHEST_US), n)
        assert h.get_total_count() == expected.get_total_count()
        assert list(h.counts[: h.counts_len]) == list(expected.counts[: expected.counts_len])
        if counts:
            assert h.get_max_value() == expected.get_max_value()
            assert h.get_min_value() == expected.get_min_value()


def test_a_recorder_encodes_as_its_histogram_does_and_threads_do_not_share_a_scratch(
        ) -> None:
    rec = Recorder()
    for v in (5, 5, 300, 70_000, 3, 10**8):
        rec.record(v)
    assert rec.encode() == rec.histogram().encode()
    results: dict[int, bytes] = {}
    counts = {i: {v: i + 1 for v in range(1, 2000, 7 + i)} for i in range(4)}

    def encode_many(i: int) -> None:
        out = b""
        for _ in range(200):
            out = encode_counts(counts[i])
        results[i] = out

    threads = [threading.Thread(target=encode_many, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: by_hdrh(counts[i]) for i in range(4)}
