"""The SLO windows: 1 h, 24 h and 30 d of per-op counts and latencies, data-loss
counts, downtime and observed time, in buckets that survive a restart of the metrics actor.

Pure: time is passed in (wall-clock seconds, because the windows outlive the process), and
persistence is `to_state` / `from_state` here plus `save_state` / `load_state` of one msgpack
file, written atomically (temp file, fsync, rename, fsync of the directory) so a kill at any
moment leaves the previous file or the new one, never half of one.

Every figure lands in its minute bucket (the last MINUTES_KEPT: the 1 h window and the
current minute) and in its hour bucket (the last HOURS_KEPT: 30 d and the current hour). The
1 h window reads minutes; 24 h and 30 d read hours, so their far edges fall on whole hours.
Latencies are kept in log bins 2^(1/16) wide (4.4%) and a percentile is reported as its bin's
highest integer: never below the true value, at most 4.4% above it.

The record holds the tree's own actors' figures only (`of_the_tree`), and at most `max_keys`
(actor, op) keys over all its buckets: a key is taken while the buckets kept hold fewer, and
its room comes back when the last bucket holding it is dropped. Its own bound, not the metrics
table's: the table forgets its keys at every reset and restart, the record keeps them for
30 days. A key refused for want of room is counted (`dropped_keys`); a saved record holding
more keys, or a client's, loads without them. So its size is at most max_keys times the
buckets kept (a bucket holds only the keys that saw traffic in it), and what reading it costs
is bounded too; folding and reporting it also beat (`progress`) key by key, so a window of
many busy keys never looks like a hung loop.

Every count here saturates at MAX_ID (2^53 - 1, what the protocol carries exactly): a window sums
buckets over hours, keys over actors, and outlives both the metrics table's reset and this
actor's restarts, so no check on one push could bound it, and an unbounded sum would make the
report and the saved record unencodable. These sums are only ever added to (a window is folded
afresh, never kept by subtracting), so a figure at MAX_ID reads "at least that many" and every
figure below it is exact.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.actors.metrics.push import CLIENT_PREFIX
from moorage.actors.runtime.beat import progress
from moorage.actors.runtime.statefile import write_atomic
from moorage.protocol.envelope import DecodeError, packb, unpackb
from moorage.protocol.limits import MAX_ID

BINS_PER_OCTAVE = 16
MINUTE, HOUR = 60, 3600
MINUTES_KEPT = 61
HOURS_KEPT = 721
WINDOWS = {"1h": HOUR, "24h": 24 * HOUR, "30d": 30 * 24 * HOUR}
STATE_VERSION = 2  # 2: buckets packed one by one
MAX_STATE_BYTES = 256 * 1024 * 1024
OBSERVE_MAX_GAP_S = 60.0  # a longer gap between two ticks is not counted as observed time
MAX_KEYS = 2000  # (actor, op) keys in the whole record (the metrics actor passes its max_keys)
Key = tuple[str, str]  # (actor, op)


def of_the_tree(actor: str) -> bool:
    """Do `actor`'s figures belong in the record? A client (`client.<name>`) times its calls
    end to end, the tree's service time and the waits around it together, under `<actor>/<op>`
    names: metrics.query shows them beside the service time, but counted here each call would
    count twice and its time would escape `p99_exclude` (PROTOCOL.md section 2)."""
    return not actor.startswith(CLIENT_PREFIX)


def latency_bin(us: int) -> int:
    """The log bin of a latency in microseconds (values below 1 share bin 0 with 1)."""
    if us <= 1:
        return 0
    b = int(math.log2(us) * BINS_PER_OCTAVE)
    while bin_top(b) < us:  # float rounding at a bin's edge
        b += 1
    return b


def bin_top(b: int) -> int:
    """The highest integer in bin `b` (what a percentile in that bin is reported as)."""
    return max(1, math.ceil(2 ** ((b + 1) / BINS_PER_OCTAVE)) - 1)


def bins_of(counts: Mapping[int, int]) -> Counter[int]:
    """Counts of microsecond values as counts of their bins. What a push brings are the values
    of HDR buckets, a few thousand in all, so their bins are remembered (up to a bound): working
    each out again made a push of many buckets cost a microsecond a bucket here."""
    out: dict[int, int] = {}  # (a dict's item assignment is half the cost of a Counter's)
    get, known = out.get, _BIN_OF
    for us, n in counts.items():
        b = known.get(us)
        if b is None:
            b = latency_bin(us)
            if len(known) < _BIN_OF_MAX:
                known[us] = b
        out[b] = get(b, 0) + n
    if out and max(out.values()) > MAX_ID:  # (not per value: this runs for every bucket pushed)
        return Counter({b: capped(n) for b, n in out.items()})
    return Counter(out)


_BIN_OF: dict[int, int] = {}  # microsecond value -> latency_bin, for the values seen first
_BIN_OF_MAX = 8192  # the values of our HDR buckets are 3,328


def capped(n: int) -> int:
    """`n`, or MAX_ID past it (see the module's docstring)."""
    return n if n <= MAX_ID else MAX_ID


def add_capped(into: Counter[Any], other: Mapping[Any, int]) -> None:
    """`into.update(other)`, each count saturating at MAX_ID."""
    get = into.get
    for k, n in other.items():
        into[k] = capped(get(k, 0) + n)


def percentile(bins: Mapping[int, int], p: float) -> int:
    """HDR's rule (the first bin whose cumulative count reaches round(p% x total)); 0 if empty."""
    total = sum(bins.values())
    if not total:
        return 0
    target = max(1, int(p * total / 100 + 0.5))
    seen = 0
    for b, n in sorted(bins.items()):
        seen += n
        if seen >= target:
            return bin_top(b)
    return bin_top(max(bins))


class OpFigures:
    """ok, error and latency bins of one (actor, op) in one bucket or window; `caller` is how
    many of the errors were the caller's (protocol.errors.Fault), `service_errors` the rest."""

    __slots__ = ("bins", "caller", "error", "ok")

    def __init__(self, ok: int = 0, error: int = 0, bins: Counter[int] | None = None,
                 caller: int = 0) -> None:
        self.ok = ok
        self.error = error
        self.caller = caller
        self.bins: Counter[int] = bins if bins is not None else Counter()

    def add(self, other: OpFigures, latencies: bool = True) -> None:
        """`other` added to these; without `latencies`, its counts only (for a total whose
        percentiles are never read: its bins are most of what adding costs)."""
        self.ok = capped(self.ok + other.ok)
        self.error = capped(self.error + other.error)
        self.caller = capped(self.caller + other.caller)
        if latencies:
            add_capped(self.bins, other.bins)

    @property
    def requests(self) -> int:
        return capped(self.ok + self.error)

    @property
    def service_errors(self) -> int:
        return self.error - self.caller


@dataclass(slots=True)
class Figures:
    """What one bucket, or a window folded from buckets, holds."""

    ops: dict[tuple[str, str], OpFigures] = field(default_factory=dict)
    loss: Counter[tuple[str, str]] = field(default_factory=Counter)  # (actor, counter) -> n
    down: Counter[str] = field(default_factory=Counter)  # child -> seconds down
    observed: float = 0.0  # seconds the metrics actor was watching

    def add(self, other: Figures) -> None:
        for key, f in other.ops.items():
            mine = self.ops.get(key)
            if mine is None:
                mine = self.ops[key] = OpFigures()
            mine.add(f)
            progress()  # a key's bins at a time: max_keys busy keys outlast one loop turn
        add_capped(self.loss, other.loss)
        self.down.update(other.down)
        self.observed += other.observed


class Ring:
    """The last `keep` buckets of `width` seconds, by bucket index (time // width)."""

    def __init__(self, width: int, keep: int) -> None:
        self.width = width
        self.keep = keep
        self.buckets: dict[int, Figures] = {}
        self.keys: Counter[Key] = Counter()  # key -> the buckets holding it
        self.newest = -1
        self._dirty: set[int] = set()  # buckets written since they were last packed
        self._packed: dict[int, bytes] = {}
        self._past_writes = 0  # writes to buckets older than the newest (they unseal folds)
        self._sealed_key: tuple[int, int] = (-1, -1)
        self._sealed: dict[int, Figures] = {}  # first bucket -> sum of closed buckets from it

    def packed_rows(self) -> list[bytes]:
        """Every bucket as msgpack bytes, re-packing only the buckets written since the last
        call: a save of 30 days costs the hour that changed, not all 720 of them."""
        for idx in self._dirty:
            b = self.buckets.get(idx)
            if b is not None:
                self._packed[idx] = packb(_bucket_state(idx, b))
        self._dirty.clear()
        for idx in [i for i in self._packed if i not in self.buckets]:
            del self._packed[idx]
        return [self._packed[i] for i in sorted(self._packed)]

    def at(self, t: float) -> Figures | None:
        """The bucket of time `t`; None when `t` is older than what is kept (a clock that went
        back a long way: dropped rather than growing the ring)."""
        idx = int(t // self.width)
        if idx <= self.newest - self.keep:
            return None
        self._dirty.add(idx)  # every caller of `at` writes to the bucket
        if idx < self.newest:
            self._past_writes += 1
        b = self.buckets.get(idx)
        if b is None:
            b = self.buckets[idx] = Figures()
            if idx > self.newest:
                self.newest = idx
                self.drop_older()
        return b

    def entry(self, b: Figures, key: Key) -> OpFigures:
        """`key`'s figures in `b`, one of this ring's buckets (made empty when new)."""
        f = b.ops.get(key)
        if f is None:
            f = b.ops[key] = OpFigures()
            self.keys[key] += 1
        return f

    def put(self, idx: int, b: Figures, packed: bytes | None) -> None:
        """Bucket `idx` as loaded, and its saved bytes if they still say what it holds (else
        it is packed again at the next save). The caller drops the buckets past `keep` once
        all are in (`drop_older`)."""
        self.buckets[idx] = b
        self.keys.update(b.ops.keys())
        self.newest = max(self.newest, idx)
        if packed is None:
            self._dirty.add(idx)
        else:
            self._packed[idx] = packed

    def drop_older(self) -> None:
        """Forget the buckets the ring has moved past, and the keys only they held."""
        for old in [i for i in self.buckets if i <= self.newest - self.keep]:
            for key in self.buckets.pop(old).ops:
                left = self.keys[key] - 1
                if left:
                    self.keys[key] = left
                else:
                    del self.keys[key]

    def fold(self, since: float) -> Figures:
        """The buckets from `since` on. The closed buckets' sum is kept until the ring moves
        on or one of them is written, so a report over 30 days folds 720 hours once an hour,
        not on every call."""
        first = int(since // self.width)
        key = (self.newest, self._past_writes)
        if self._sealed_key != key:
            self._sealed_key, self._sealed = key, {}
        sealed = self._sealed.get(first)
        if sealed is None:
            sealed = self._sealed[first] = Figures()
            for idx, b in self.buckets.items():
                if first <= idx < self.newest:
                    sealed.add(b)
                    progress()  # 720 busy hours can take longer than one loop turn may
        out = Figures()
        out.add(sealed)
        current = self.buckets.get(self.newest)
        if current is not None and self.newest >= first:
            out.add(current)
        return out


class SloStore:
    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.minutes = Ring(MINUTE, MINUTES_KEPT)
        self.hours = Ring(HOUR, HOURS_KEPT)
        self.max_keys = max_keys
        self.dropped_keys = 0  # op entries refused (at load: keys) for want of room
        self.unloaded_keys = 0  # keys of the saved record left out when it was loaded
        self.first: float | None = None  # when the first figure came in
        self.last_observed: float | None = None

    def _buckets(self, t: float) -> list[tuple[Ring, Figures]]:
        if self.first is None or t < self.first:
            self.first = t
        return [(ring, b) for ring in (self.minutes, self.hours)
                if (b := ring.at(t)) is not None]

    def add_ops(self, actor: str, op: str, ok: int, error: int, counts: Mapping[int, int],
                now: float, caller: int = 0) -> bool:
        """Add one push's figures of (actor, op); False when they are not the record's (a
        client's: `of_the_tree`) or the key is new and the record holds max_keys keys (an
        hour bucket holds every key of its minutes, so the hours' keys are all of them)."""
        key = (actor, op)
        if not of_the_tree(actor):
            return False
        buckets = self._buckets(now)  # (first: the rings move on, dropping old keys)
        if key not in self.hours.keys and len(self.hours.keys) >= self.max_keys:
            self.dropped_keys += 1
            return False
        bins = bins_of(counts)
        for ring, b in buckets:
            ring.entry(b, key).add(OpFigures(ok, error, bins, caller))
        return True

    def add_loss(self, actor: str, counts: Mapping[str, int], now: float) -> None:
        if not any(counts.values()):
            return
        for _, b in self._buckets(now):
            for name, n in counts.items():
                b.loss[(actor, name)] = capped(b.loss[(actor, name)] + n)

    def add_down(self, child: str, start: float, end: float) -> None:
        """`child` was down from `start` to `end`: each bucket gets its own share."""
        for ring in (self.minutes, self.hours):
            t = start
            while t < end:
                edge = min(end, (int(t // ring.width) + 1) * ring.width)
                b = ring.at(t)
                if b is not None:
                    b.down[child] += edge - t
                t = edge
        if self.first is None or start < self.first:
            self.first = start

    def observe(self, now: float) -> None:
        """Called on every tick: the time since the last tick was watched."""
        last, self.last_observed = self.last_observed, now
        if last is None or not 0 < now - last <= OBSERVE_MAX_GAP_S:
            return
        for _, b in self._buckets(now):
            b.observed += now - last

    def window(self, name: str, now: float) -> Figures:
        """One of WINDOWS, ending now."""
        seconds = WINDOWS[name]
        ring = self.minutes if seconds <= HOUR else self.hours
        return ring.fold(now - seconds + ring.width)

    def loss_in(self, actor: str, counter: str, now: float) -> int:
        return self.window("1h", now).loss.get((actor, counter), 0)

    # --- persistence ---------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"first": self.first, "minutes": self.minutes.packed_rows(),
                "hours": self.hours.packed_rows()}

    @classmethod
    def from_state(cls, d: Any, max_keys: int | None = None) -> SloStore:
        """Raises ValueError on anything not of the shape `to_state` writes. A record saved
        with more than `max_keys` keys (None: every key, as a reader of any record wants; the
        store then takes new ones up to MAX_KEYS), or with a client's (saved before they were
        kept out), loads without them, newest bucket first (the keys seen last are kept);
        `unloaded_keys` says how many, and the buckets that lost some are packed again at
        the next save."""
        _want(isinstance(d, dict), "slo state must be a map")
        s = cls(MAX_KEYS if max_keys is None else max_keys)
        room = math.inf if max_keys is None else max_keys
        first = d.get("first")
        _want(first is None or isinstance(first, (int, float)), "first must be a time")
        s.first = first
        kept: set[Key] = set()
        left_out: set[Key] = set()

        def admit(key: Key) -> bool:
            if key in kept:
                return True
            if of_the_tree(key[0]) and len(kept) < room:
                kept.add(key)
                return True
            if key not in left_out:
                left_out.add(key)
                s.dropped_keys += of_the_tree(key[0])  # (a client's was never the record's)
            return False

        for ring, name in ((s.minutes, "minutes"), (s.hours, "hours")):
            rows = d.get(name)
            _want(isinstance(rows, list), f"{name} must be a list")
            for row in reversed(rows):  # (`to_state` writes them oldest first)
                _want(isinstance(row, bytes), "a bucket is packed msgpack")
                try:
                    idx, fig, whole = _bucket_from(unpackb(row, MAX_STATE_BYTES), admit)
                except DecodeError as exc:
                    raise ValueError(exc.error.message) from exc
                ring.put(idx, fig, row if whole else None)
                progress()  # a record of many busy keys takes more than one loop turn to read
            ring.drop_older()
        s.unloaded_keys = len(left_out)
        return s


def _want(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def _count(v: Any) -> int:
    _want(type(v) is int and v >= 0, f"not a count: {v!r:.40}")
    return v


def _figure(v: Any) -> int:
    """A count as kept (a record saved before counts saturated may hold more)."""
    return capped(_count(v))


def _bucket_state(idx: int, b: Figures) -> list[Any]:
    ops = [[a, o, f.ok, f.error, [[k, n] for k, n in sorted(f.bins.items())], f.caller]
           for (a, o), f in sorted(b.ops.items())]
    return [idx, b.observed, ops, [[a, c, n] for (a, c), n in sorted(b.loss.items())],
            [[c, s] for c, s in sorted(b.down.items())]]


def _bucket_from(row: Any, admit: Callable[[Key], bool]) -> tuple[int, Figures, bool]:
    """A bucket as `_bucket_state` packs it, with the ops whose key `admit` takes (the others
    are not read further); the bool says whether it holds all of them."""
    _want(isinstance(row, list) and len(row) == 5, "a bucket is [idx, observed, ops, loss, down]")
    idx, observed, ops, loss, down = row
    _want(type(idx) is int and isinstance(observed, (int, float)) and observed >= 0,
          "bucket idx and observed")
    _want(isinstance(ops, list) and isinstance(loss, list) and isinstance(down, list),
          "bucket lists")
    f = Figures(observed=float(observed))
    whole = True
    for op_row in ops:
        # (a record written before caller errors were counted apart has five fields)
        _want(isinstance(op_row, list) and len(op_row) in (5, 6),
              "an op is [actor, op, ok, error, bins, caller?]")
        actor, op, ok, error, bins = op_row[:5]
        _want(isinstance(actor, str) and isinstance(op, str) and isinstance(bins, list),
              "op names and bins")
        if not admit((actor, op)):
            whole = False
            continue
        caller = _figure(op_row[5]) if len(op_row) == 6 else 0
        _want(caller <= _count(error), "more caller errors than errors")
        counts: Counter[int] = Counter()
        for pair in bins:
            _want(isinstance(pair, list) and len(pair) == 2, "a bin is [bin, count]")
            b, n = _count(pair[0]), _count(pair[1])
            counts[b] = capped(counts[b] + n)
        f.ops[(actor, op)] = OpFigures(_figure(ok), _figure(error), counts, caller)
    for loss_row in loss:
        _want(isinstance(loss_row, list) and len(loss_row) == 3
              and all(isinstance(x, str) for x in loss_row[:2]), "a loss is [actor, counter, n]")
        key = (loss_row[0], loss_row[1])
        f.loss[key] = capped(f.loss[key] + _count(loss_row[2]))
    for down_row in down:
        _want(isinstance(down_row, list) and len(down_row) == 2 and isinstance(down_row[0], str)
              and isinstance(down_row[1], (int, float)) and down_row[1] >= 0,
              "a downtime is [child, seconds]")
        f.down[down_row[0]] += float(down_row[1])
    return idx, f, whole


# --- the file ----------------------------------------------------------------------------------


def save_state(path: Path, state: Mapping[str, Any]) -> int:
    """Write `state` to `path` atomically and durably; returns the bytes written."""
    return write_state(path, packb(dict(state)))


def write_state(path: Path, data: bytes) -> int:
    """Write packed state to `path` atomically and durably (temp, fsync, rename, fsync dir)."""
    return write_atomic(path, data, durable=True)


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state; None when there is none; ValueError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    try:
        state = unpackb(data, MAX_STATE_BYTES)
    except DecodeError as exc:
        raise ValueError(exc.error.message) from exc
    _want(isinstance(state, dict) and state.get("v") == STATE_VERSION,
          f"not a version {STATE_VERSION} state file")
    return state


def set_aside(path: Path, now: float) -> Path:
    """Move an unreadable state file out of the way (kept for a post-mortem)."""
    dest = path.with_name(f"{path.name}.corrupt-{int(now)}")
    os.replace(path, dest)
    return dest


def loss_totals(loss: Iterable[tuple[tuple[str, str], int]]) -> dict[str, int]:
    """Loss counts by counter name, summed over actors."""
    out: Counter[str] = Counter()
    for (_, name), n in loss:
        out[name] = capped(out[name] + n)
    return dict(out)
