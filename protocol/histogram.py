"""HDR histograms for latency, recorded cheaply on hot paths.

Recording into an HDR histogram costs about a microsecond in Python; incrementing a counter
costs a tenth of that, and latencies cluster on few distinct microsecond values. So hot paths
count values (`Recorder.record`) and fold the counts into a histogram when one is needed.
Every moorage histogram has the same shape, so encoded histograms from any process merge.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

from hdrh.histogram import HdrHistogram

from moorage.protocol import limits

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # an hour, in microseconds
DIGITS = 2


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def decode(encoded: bytes | str) -> HdrHistogram:
    h = new_histogram()
    h.decode_and_add(encoded)
    return h


# Values below this are exact at 2 significant digits; above, a bucket spans 2**k of them.
_SUB_BUCKET_BITS = 8
_EXACT_BELOW = 1 << _SUB_BUCKET_BITS

# A recorder that lives long (a client's lifetime view) folds its counts to HDR precision
# when it holds more distinct values than this, so its memory stays bounded.
MAX_DISTINCT = 4096


def _fold(counts: Mapping[int, int], h: HdrHistogram) -> list[int]:
    """Add `counts` (µs value -> count) into `h` as its record_value would, one value at a
    time, and return the indices of `h.counts` they went to. The index is hdrh's
    (_counts_index_for) written out: a push folds up to thousands of values, and hdrh's
    method calls cost a microsecond and a half each, the whole push's time."""
    unit = h.unit_magnitude
    half_mag = h.sub_bucket_half_count_magnitude
    mask, half, width = h.sub_bucket_mask, h.sub_bucket_half_count, unit + half_mag + 1
    cells, touched = h.counts, []
    total, lo, hi = 0, h.min_value, h.max_value
    for v, n in counts.items():
        if v > HIGHEST_US:
            v = HIGHEST_US
        elif v < 0:
            continue
        bucket = (v | mask).bit_length() - width
        i = ((bucket + 1) << half_mag) + (v >> (bucket + unit)) - half
        cells[i] += n
        touched.append(i)
        total += n
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    h.total_count += total
    h.min_value, h.max_value = lo, hi
    return touched


# One histogram per thread to encode counts through, emptied after each use: making one
# (its counts array and encoder) costs more than folding a push's values into it.
_scratch = threading.local()


def encode_counts(counts: Mapping[int, int]) -> bytes:
    """`counts` as an encoded histogram, what `new_histogram()` with them recorded gives."""
    h: HdrHistogram | None = getattr(_scratch, "h", None)
    if h is None:
        h = _scratch.h = new_histogram()
    touched = _fold(counts, h)
    try:
        return h.encode()  # type: ignore[no-any-return]
    finally:
        cells = h.counts
        for i in touched:
            cells[i] = 0
        h.total_count, h.min_value, h.max_value = 0, sys.maxsize, 0


def equivalent_counts(h: HdrHistogram) -> Counter[int]:
    """A histogram as counts of its buckets' highest equivalent values (what `add_histogram`
    gives, walking only the counts array instead of hdrh's Python iterator)."""
    counts: Counter[int] = Counter()
    for i, n in enumerate(h.counts[: h.counts_len]):
        if n:
            counts[h.get_highest_equivalent_value(h.get_value_from_index(i))] += n
    return counts


class Recorder:
    """Counts of microsecond values, folded into an HDR histogram on demand."""

    __slots__ = ("counts", "limit")

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.limit = MAX_DISTINCT

    def record(self, micros: int) -> None:
        counts = self.counts
        v = micros if micros > 0 else 1
        if v >= _EXACT_BELOW:
            # The lowest value of its HDR bucket (2 significant digits: 128 sub-buckets per
            # power of two above 256), which the fold puts in the same bucket: the same
            # histogram, from at most ~3,300 distinct values however wide the spread. A
            # pipelined client's latencies spread over thousands of µs values, and folding
            # them to bound the memory cost it 7% of its time.
            shift = v.bit_length() - _SUB_BUCKET_BITS
            v = v >> shift << shift
        counts[v] = counts.get(v, 0) + 1  # dict.get: half the cost of Counter's `+= 1`

    def bound(self) -> None:
        """Fold to HDR precision (2 significant digits, as every histogram here) once more
        than `limit` distinct values are held; percentiles do not change, memory stops
        growing. The next fold waits until the count has doubled again."""
        if len(self.counts) > self.limit:
            self.counts = equivalent_counts(self.histogram())
            self.limit = max(MAX_DISTINCT, 2 * len(self.counts))

    def fold_into(self, h: HdrHistogram) -> HdrHistogram:
        _fold(self.counts, h)
        return h

    def histogram(self) -> HdrHistogram:
        return self.fold_into(new_histogram())

    def encode(self) -> bytes:
        """`histogram().encode()`, without making the histogram."""
        return encode_counts(self.counts)

    def add_histogram(self, h: HdrHistogram) -> None:
        for item in h.get_recorded_iterator():
            self.counts[item.value_iterated_to] += item.count_at_value_iterated_to


def summary(h: HdrHistogram) -> dict[str, float]:
    """count, p50, p90, p99, p99.9, max (microseconds)."""
    n = h.get_total_count()
    if n == 0:
        return {"count": 0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0}
    return {
        "count": n,
        "p50": h.get_value_at_percentile(50),
        "p90": h.get_value_at_percentile(90),
        "p99": h.get_value_at_percentile(99),
        "p999": h.get_value_at_percentile(99.9),
        "max": h.get_max_value(),
    }


def push_bodies(entries: Iterable[tuple[str, dict, int]]) -> Iterator[dict[str, dict]]:
    """Metric push bodies from `(op, {ok, error, ..., hist}, non-zero counts of hist)`, in
    order, each within what the metrics actor takes (limits.MAX_OPS_PER_PUSH ops,
    MAX_PUSH_HIST_BYTES of encoded histograms, MAX_PUSH_BUCKETS non-zero counts): it refuses
    a bigger push whole. One op past a bound alone goes in a body of its own."""
    body: dict[str, dict] = {}
    hist_bytes = buckets = 0
    for name, entry, nonzero in entries:
        size = len(entry["hist"])
        if body and (len(body) == limits.MAX_OPS_PER_PUSH
                     or hist_bytes + size > limits.MAX_PUSH_HIST_BYTES
                     or buckets + nonzero > limits.MAX_PUSH_BUCKETS):
            yield body
            body, hist_bytes, buckets = {}, 0, 0
        body[name] = entry
        hist_bytes += size
        buckets += nonzero
    if body:
        yield body
