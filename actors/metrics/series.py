"""Per (actor, op) series: lifetime figures and a recent window of coarse slots.

The window keeps a running total and subtracts slots as they expire, so a query never sums
slots, and the number of series is capped so junk op names cannot grow memory.

What the table holds is bounded in values, not only in keys. A series' latencies are counts
of HDR values, up to 3,328 distinct ones per counter, and a series holds one counter for its
lifetime, one for its window's total and one per slot of its window: a push of every bucket
into a series of one-second intervals made that 62 x 3,328 values (about 2 MiB of heap for a
1 KB push). So a window folds its intervals into at most SLOTS slots (their width,
`slot_width`, is one interval for a window of at most SLOTS intervals, so a short window
expires exactly interval by interval), and the table counts the values it holds (`held`:
the distinct values of every counter of every series) against a budget (`max_held`), of
which the clients' series (`client.<name>`: anyone who can reach metrics.in) may hold at most
`client_budget`. When a share is over its budget after a merge (`bound`), its largest series
are folded first, to the SLO record's precision (slo.py: 16 bins an octave, a value read as
its bin's highest integer, at most 4.4% above it), and if that is not enough the latencies of
its least recently merged series are dropped. No series is dropped for the budget, and its
counts (ok, error, caller errors, summed microseconds) stay exact whatever happens to its
latencies: its percentiles are then those of the latencies it still holds (the ones merged
since). Each fold, drop and push that went past a budget is counted.

Every figure stays within MAX_ID (2^53 - 1, what the protocol carries exactly) by refusal, not
saturation: `MetricsTable.check` refuses samples that would carry a series' lifetime requests or
summed microseconds past it, and every other figure of a series (ok, error, a value's count,
the window's) is part of those. A saturated lifetime would stop agreeing with its own
percentiles and error rate, and a window that subtracts what expires cannot saturate honestly;
refused, every figure shown is exact, and the refusal is counted and logged as a bad push. No
real pusher comes near: 2^53 requests is 2,800 years at 100,000 a second, 2^53 µs is 285
years of service time.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

from moorage.actors.metrics.counts import add_counts
from moorage.actors.metrics.push import CLIENT_PREFIX, BadPush, OpSample
from moorage.actors.metrics.slo import bin_top, latency_bin
from moorage.protocol.limits import MAX_ID

MAX_SPAN = 86_400  # intervals in one window
SLOTS = 12  # a window's intervals are folded into at most this many slots
# Values held by the whole table (about 80 bytes of heap each: 20 MB), and by the clients'
# series among them (2 MB). An op's real latencies take a few hundred values a counter; an
# idle default tree's own series hold about a hundred in all.
MAX_HELD = 250_000
CLIENT_BUDGET = 25_000
HELD_VALUE_BYTES = 80  # heap a held value costs, about (a dict entry and its count)
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def summarize(ok: int, error: int, counts: Counter[int], caller: int = 0) -> dict[str, Any]:
    """Counts and percentiles; the percentiles equal protocol.histogram.summary's on the same
    values (HDR's rule: the first value whose cumulative count reaches round(p% x total)).
    `error_rate` is of all errors; `caller_errors` says how many of them were the caller's."""
    n = ok + error
    out: dict[str, Any] = {"count": n, "ok": ok, "error": error, "caller_errors": caller,
                           "error_rate": error / n if n else 0.0}
    total = sum(counts.values())
    if not total:
        out.update({name: 0 for name, _ in PERCENTILES}, max=0)
        return out
    values = sorted(counts.items())
    seen, i = 0, 0
    for name, p in PERCENTILES:
        target = max(1, int(p * total / 100 + 0.5))
        while seen + values[i][1] < target:
            seen += values[i][1]
            i += 1
        out[name] = values[i][0]
    out["max"] = values[-1][0]
    return out


def percentile(counts: Mapping[int, int], p: float) -> int:
    """`summarize`'s percentile `p` alone (0 for no values), walked down from the largest
    value: a high one (the p99 the alerts read after each push) is a few steps from the top,
    where `summarize` walks up through every value to its p99.9."""
    total = sum(counts.values())
    if not total:
        return 0
    # The first value (going up) whose cumulative count reaches `target` is the first
    # (going down) past which more than `total - target` values lie at or above it.
    above = total - max(1, int(p * total / 100 + 0.5))
    seen = 0
    for v in sorted(counts, reverse=True):  # (ints sort four times faster than pairs)
        seen += counts[v]
        if seen > above:
            return v
    raise AssertionError("unreachable: the walk sums to total")


_COARSE: dict[int, int] = {}  # microsecond value -> its coarse value, for the values seen first
_COARSE_MAX = 8192  # the values of our HDR buckets are 3,328


def coarse_value(us: int) -> int:
    """The value `us` is held as once its series is folded: the highest integer of its
    latency bin (slo.py), never below it, at most 4.4% above. Folding it again changes
    nothing."""
    c = _COARSE.get(us)
    if c is None:
        c = bin_top(latency_bin(us))
        if len(_COARSE) < _COARSE_MAX:
            _COARSE[us] = c
    return c


def coarsen(counts: Mapping[int, int]) -> Counter[int]:
    """`counts` with each value as its coarse value (at most 508 distinct ones)."""
    out: dict[int, int] = {}  # (a dict's item assignment is half the cost of a Counter's)
    get = out.get
    for us, n in counts.items():
        c = coarse_value(us)
        out[c] = get(c, 0) + n
    return Counter(out)


class _Slot:
    """The figures of the intervals [n x width, (n + 1) x width) of one window."""

    __slots__ = ("caller", "counts", "error", "n", "ok", "sum_us")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ok = self.error = self.sum_us = self.caller = 0
        self.counts: Counter[int] = Counter()


class Window:
    """The last `span` intervals of one series, in slots of `width` intervals, and their
    running total (read in O(1)). A slot leaves once its last interval has: the window holds
    at least `span` intervals and fewer than `span + width`."""

    __slots__ = ("caller", "counts", "error", "held", "ok", "slots", "span", "sum_us", "width")

    def __init__(self, span: int, width: int = 1) -> None:
        self.span = span
        self.width = width
        self.slots: deque[_Slot] = deque()
        self.ok = self.error = self.sum_us = self.caller = 0
        self.counts: Counter[int] = Counter()
        self.held = 0  # distinct values of `counts` and of every slot's

    def add(self, idx: int, s: OpSample, counts: dict[int, int]) -> None:
        """`s`'s counts, its latencies as `counts` (the series' own precision), at `idx`."""
        self.expire(idx)
        n = idx // self.width
        if not self.slots or self.slots[-1].n < n:
            self.slots.append(_Slot(n))
        b = self.slots[-1]  # a clock that went back (it cannot: monotonic) lands here too
        before = len(b.counts) + len(self.counts)
        for target in (b, self):
            target.ok += s.ok
            target.error += s.error
            target.caller += s.caller
            target.sum_us += s.sum_us
            add_counts(target.counts, counts)
        self.held += len(b.counts) + len(self.counts) - before

    def leaves_at(self) -> int | None:
        """The interval at which the oldest slot leaves (`expire` drops it there), if any."""
        return (self.slots[0].n + 1) * self.width + self.span - 1 if self.slots else None

    def expire(self, idx: int) -> bool:
        """Drop slots that left the window ending at interval `idx`; True if any did."""
        gone = False
        last = idx - self.span + 1  # slots whose last interval is before this have left
        while self.slots and (self.slots[0].n + 1) * self.width <= last:
            b = self.slots.popleft()
            self.ok -= b.ok
            self.error -= b.error
            self.caller -= b.caller
            self.sum_us -= b.sum_us
            before = len(self.counts)
            for v, n in b.counts.items():
                left = self.counts[v] - n
                if left:
                    self.counts[v] = left
                else:
                    del self.counts[v]
            self.held -= len(b.counts) + before - len(self.counts)
            gone = True
        return gone

    def fold(self) -> None:
        """Every counter at the coarse precision (the total stays the slots' sum: both are
        folded the same way)."""
        self.counts = coarsen(self.counts)
        held = len(self.counts)
        for b in self.slots:
            b.counts = coarsen(b.counts)
            held += len(b.counts)
        self.held = held

    def drop_latencies(self) -> None:
        self.counts = Counter()
        for b in self.slots:
            b.counts = Counter()
        self.held = 0

    @property
    def requests(self) -> int:
        return self.ok + self.error


class Series:
    """One (actor, op): lifetime totals and the recent window. `coarse` once folded: what
    comes in after is folded too. `last`: the interval of the latest merge."""

    __slots__ = ("actor", "caller", "client", "coarse", "counts", "error", "last", "ok", "op",
                 "sum_us", "window")

    def __init__(self, actor: str, op: str, span: int, width: int = 1) -> None:
        self.actor = actor
        self.op = op
        self.client = actor.startswith(CLIENT_PREFIX)
        self.ok = self.error = self.sum_us = self.caller = 0
        self.counts: Counter[int] = Counter()
        self.window = Window(span, width)
        self.coarse = False
        self.last = 0

    @property
    def held(self) -> int:
        """Distinct values held: the lifetime's and the window's."""
        return len(self.counts) + self.window.held

    def add(self, idx: int, s: OpSample, latencies: bool = True) -> None:
        """`s` at interval `idx`; without `latencies`, its counts only."""
        counts: dict[int, int] = {}
        if latencies:
            counts = coarsen(s.counts) if self.coarse else s.counts
        self.ok += s.ok
        self.error += s.error
        self.caller += s.caller
        self.sum_us += s.sum_us
        add_counts(self.counts, counts)
        self.window.add(idx, s, counts)
        self.last = max(self.last, idx)

    def fold(self) -> None:
        self.counts = coarsen(self.counts)
        self.window.fold()
        self.coarse = True

    def drop_latencies(self) -> None:
        """Forget every latency held (the counts stay); what comes in after is held again."""
        self.counts = Counter()
        self.window.drop_latencies()


class MetricsTable:
    """Every series, keyed (actor, op): at most `max_keys` of the tree's actors and at most
    `max_client_keys` of clients' (pushers named `client.<name>`, which anyone who can reach
    metrics.in may be), so that no client, however many names it pushes, costs the tree's
    own actors a key; and at most `max_held` values, `client_budget` of them the clients'
    (the module's docstring), so that no client, however wide its histograms, costs the tree
    its memory. Time is an interval number the caller computes (`interval(now)`), so tests
    need no clock."""

    def __init__(self, window_s: float, bucket_s: float, max_keys: int,
                 max_client_keys: int = 0, max_held: int = MAX_HELD,
                 client_budget: int = CLIENT_BUDGET) -> None:
        self.bucket_s = bucket_s
        self.span = max(1, math.ceil(window_s / bucket_s))
        self.slot_width = max(1, math.ceil(self.span / SLOTS))
        self.max_keys = max_keys
        self.max_client_keys = max_client_keys
        self.max_held = max_held
        self.client_budget = min(client_budget, max_held)
        self.series: dict[tuple[str, str], Series] = {}
        self.client_keys = 0  # of self.series, those of clients
        self.dropped_keys = 0  # op entries not kept because their share of the table was full
        self.held = 0  # values held by every series (Series.held)
        self.client_held = 0  # of them, by the clients' series
        self.folded_series = 0  # series folded to the coarse precision to stay in budget
        self.dropped_series = 0  # drops of a series' latencies to stay in budget
        self.dropped_values = 0  # the values they held
        self.over_budget = {False: 0, True: 0}  # bounds that found a share past its budget
        self.pressed = {False: -1, True: -1}  # the interval a share was last past its budget
        self.next_expiry: int | None = None  # set by `expire`

    def interval(self, now: float) -> int:
        return int(now // self.bucket_s)

    def budget(self, client: bool) -> int:
        return self.client_budget if client else self.max_held - self.client_budget

    def held_by(self, client: bool) -> int:
        return self.client_held if client else self.held - self.client_held

    def check(self, actor: str, samples: Iterable[OpSample]) -> None:
        """BadPush if merging `samples` (one push's) would carry a series' lifetime requests
        or summed microseconds past MAX_ID (see the module's docstring)."""
        for s in samples:
            series = self.series.get((actor, s.op))
            requests, sum_us = (series.ok + series.error, series.sum_us) if series else (0, 0)
            if requests + s.ok + s.error > MAX_ID or sum_us + s.sum_us > MAX_ID:
                raise BadPush(f"{actor}/{s.op}: the push would carry its lifetime "
                              "requests or microseconds past 2^53 - 1")

    def merge(self, actor: str, s: OpSample, idx: int,
              latencies: bool = True) -> Series | None:
        """Merge `s` (without `latencies`, its counts only); the series, or None when its
        share of the keys is full. What the share holds may then be past its budget until
        `bound` is called (once a push: a push's own values, at most
        limits.MAX_PUSH_BUCKETS a counter, are the most it goes past)."""
        key = (actor, s.op)
        series = self.series.get(key)
        if series is None:
            client = actor.startswith(CLIENT_PREFIX)
            if (self.client_keys >= self.max_client_keys if client
                    else len(self.series) - self.client_keys >= self.max_keys):
                self.dropped_keys += 1
                return None
            series = self.series[key] = Series(actor, s.op, self.span, self.slot_width)
            self.client_keys += client
        before = series.held
        series.add(idx, s, latencies)
        self._held(series, series.held - before)
        return series

    def _held(self, series: Series, delta: int) -> None:
        self.held += delta
        if series.client:
            self.client_held += delta

    def bound(self, idx: int, client: bool) -> bool:
        """Bring the share of the clients (or of the tree's actors) back within its budget:
        its largest series folded first, then the latencies of its least recently merged
        (the largest first among those) dropped. False when it was within it already."""
        budget = self.budget(client)
        if self.held_by(client) <= budget:
            return False
        self.over_budget[client] += 1
        self.pressed[client] = idx
        mine = [s for s in self.series.values() if s.client == client]
        for s in sorted((s for s in mine if not s.coarse), key=lambda s: s.held,
                        reverse=True):
            if self.held_by(client) <= budget:
                return True
            before = s.held
            s.fold()
            self._held(s, s.held - before)
            self.folded_series += 1
        for s in sorted((s for s in mine if s.held), key=lambda s: (s.last, -s.held)):
            if self.held_by(client) <= budget:
                break
            self.dropped_values += s.held
            self._held(s, -s.held)
            s.drop_latencies()
            self.dropped_series += 1
        return True

    def expire(self, idx: int) -> list[Series]:
        """Series whose window lost a slot (their alerts need a new look). Sets
        `next_expiry`: the first interval at which another slot leaves, None if no window
        holds one (a slot merged later leaves at least a whole window after its interval)."""
        out = []
        soonest: int | None = None
        for s in self.series.values():
            before = s.window.held
            if s.window.expire(idx):
                self._held(s, s.window.held - before)
                out.append(s)
            at = s.window.leaves_at()
            if at is not None and (soonest is None or at < soonest):
                soonest = at
        self.next_expiry = soonest
        return out

    def select(self, actor: str | None = None, op: str | None = None) -> list[Series]:
        return [s for (a, o), s in sorted(self.series.items())
                if (actor is None or a == actor) and (op is None or o == op)]

    def info(self) -> dict[str, int]:
        """What the table holds against its budgets, and what staying in them took."""
        return {"held_values": self.held, "held_budget": self.max_held,
                "client_held_values": self.client_held, "client_budget": self.client_budget,
                "over_budget_pushes": sum(self.over_budget.values()),
                "client_over_budget_pushes": self.over_budget[True],
                "folded_series": self.folded_series,
                "latencies_dropped_series": self.dropped_series,
                "latencies_dropped_values": self.dropped_values}

    def clear(self) -> None:
        self.series.clear()
        self.client_keys = self.dropped_keys = 0
        self.held = self.client_held = 0
        self.folded_series = self.dropped_series = self.dropped_values = 0
        self.over_budget = {False: 0, True: 0}
        self.pressed = {False: -1, True: -1}
