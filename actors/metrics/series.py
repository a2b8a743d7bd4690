"""Per (actor, op) series: lifetime figures and a recent window of per-interval buckets.

The window keeps a running total and subtracts buckets as they expire, so a query never sums
buckets, and the number of series is capped so junk op names cannot grow memory.

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
from collections.abc import Iterable
from typing import Any

from moorage.actors.metrics.push import CLIENT_PREFIX, BadPush, OpSample
from moorage.protocol.limits import MAX_ID

MAX_SPAN = 86_400  # intervals in one window
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


class _Bucket:
    __slots__ = ("caller", "counts", "error", "idx", "ok", "sum_us")

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.ok = self.error = self.sum_us = self.caller = 0
        self.counts: Counter[int] = Counter()


class Window:
    """The last `span` intervals of one series and their running total (read in O(1))."""

    __slots__ = ("buckets", "caller", "counts", "error", "ok", "span", "sum_us")

    def __init__(self, span: int) -> None:
        self.span = span
        self.buckets: deque[_Bucket] = deque()
        self.ok = self.error = self.sum_us = self.caller = 0
        self.counts: Counter[int] = Counter()

    def add(self, idx: int, s: OpSample) -> None:
        self.expire(idx)
        if not self.buckets or self.buckets[-1].idx < idx:
            self.buckets.append(_Bucket(idx))
        b = self.buckets[-1]  # a clock that went back (it cannot: monotonic) lands here too
        for target in (b, self):
            target.ok += s.ok
            target.error += s.error
            target.caller += s.caller
            target.sum_us += s.sum_us
            target.counts.update(s.counts)

    def expire(self, idx: int) -> bool:
        """Drop intervals that left the window ending at interval `idx`; True if any did."""
        gone = False
        while self.buckets and self.buckets[0].idx <= idx - self.span:
            b = self.buckets.popleft()
            self.ok -= b.ok
            self.error -= b.error
            self.caller -= b.caller
            self.sum_us -= b.sum_us
            for v, n in b.counts.items():
                left = self.counts[v] - n
                if left:
                    self.counts[v] = left
                else:
                    del self.counts[v]
            gone = True
        return gone

    @property
    def requests(self) -> int:
        return self.ok + self.error


class Series:
    """One (actor, op): lifetime totals and the recent window."""

    __slots__ = ("actor", "caller", "counts", "error", "ok", "op", "sum_us", "window")

    def __init__(self, actor: str, op: str, span: int) -> None:
        self.actor = actor
        self.op = op
        self.ok = self.error = self.sum_us = self.caller = 0
        self.counts: Counter[int] = Counter()
        self.window = Window(span)

    def add(self, idx: int, s: OpSample) -> None:
        self.ok += s.ok
        self.error += s.error
        self.caller += s.caller
        self.sum_us += s.sum_us
        self.counts.update(s.counts)
        self.window.add(idx, s)


class MetricsTable:
    """Every series, keyed (actor, op): at most `max_keys` of the tree's actors and at most
    `max_client_keys` of clients' (pushers named `client.<name>`, which anyone who can reach
    metrics.in may be), so that no client, however many names it pushes, costs the tree's
    own actors a key. Time is an interval number the caller computes (`interval(now)`), so
    tests need no clock."""

    def __init__(self, window_s: float, bucket_s: float, max_keys: int,
                 max_client_keys: int = 0) -> None:
        self.bucket_s = bucket_s
        self.span = max(1, math.ceil(window_s / bucket_s))
        self.max_keys = max_keys
        self.max_client_keys = max_client_keys
        self.series: dict[tuple[str, str], Series] = {}
        self.client_keys = 0  # of self.series, those of clients
        self.dropped_keys = 0  # op entries not kept because their share of the table was full

    def interval(self, now: float) -> int:
        return int(now // self.bucket_s)

    def check(self, actor: str, samples: Iterable[OpSample]) -> None:
        """BadPush if merging `samples` (one push's) would carry a series' lifetime requests
        or summed microseconds past MAX_ID (see the module's docstring)."""
        for s in samples:
            series = self.series.get((actor, s.op))
            requests, sum_us = (series.ok + series.error, series.sum_us) if series else (0, 0)
            if requests + s.ok + s.error > MAX_ID or sum_us + s.sum_us > MAX_ID:
                raise BadPush(f"{actor}/{s.op}: the push would carry its lifetime "
                              "requests or microseconds past 2^53 - 1")

    def merge(self, actor: str, s: OpSample, idx: int) -> Series | None:
        key = (actor, s.op)
        series = self.series.get(key)
        if series is None:
            client = actor.startswith(CLIENT_PREFIX)
            if (self.client_keys >= self.max_client_keys if client
                    else len(self.series) - self.client_keys >= self.max_keys):
                self.dropped_keys += 1
                return None
            series = self.series[key] = Series(actor, s.op, self.span)
            self.client_keys += client
        series.add(idx, s)
        return series

    def expire(self, idx: int) -> list[Series]:
        """Series whose window lost an interval (their alerts need a new look)."""
        return [s for s in self.series.values() if s.window.expire(idx)]

    def select(self, actor: str | None = None, op: str | None = None) -> list[Series]:
        return [s for (a, o), s in sorted(self.series.items())
                if (actor is None or a == actor) and (op is None or o == op)]

    def clear(self) -> None:
        self.series.clear()
        self.client_keys = self.dropped_keys = 0


