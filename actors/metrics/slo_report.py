"""The SLO report from the SLO windows and the recovery incidents.

  availability   1 - down child-seconds / observed child-seconds; a child is down from the
                 exit the supervisor saw to its successor's first good reply (open incidents
                 count up to now); judged over 30 d
  error rate     the service's errors / requests of every op; judged over 24 h. An error
                 that is the caller's (protocol.errors.Fault: a missing file, an unknown op,
                 bad arguments) is not the service failing: it is counted apart
                 (`caller_errors`) and shown beside, never in the rate
  p99 latency    of every op's service time together, except the ops whose time is the
                 user's (`p99_exclude`: term.exec runs the user's command, term.create the
                 user's rc files, fs.sync waits for the file system); judged over 1 h (and per
                 op against its 7.1 target from [targets])
  recovery time  per incident, against its RTO (`rto_s`, default 5 s, terminal 1 s); judged
                 on the worst incident of 30 d
  data loss      the loss counters pushed by every actor; judged over 30 d: zero or not met

Pure: everything is passed in. What a report costs grows with the keys of the record (at most
its max_keys, slo.py); it beats (`progress`) op by op, so a long one is not taken for a hung
loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moorage.actors.metrics.recovery import RecoveryTracker
from moorage.actors.metrics.slo import (
    WINDOWS,
    Figures,
    OpFigures,
    SloStore,
    capped,
    loss_totals,
    percentile,
)
from moorage.actors.runtime.beat import progress
from moorage.actors.runtime.stats import LOSS_COUNTERS


@dataclass(frozen=True, slots=True)
class Objectives:
    availability: float = 0.999
    error_rate: float = 0.001
    p99_us: int = 100_000
    recovery_s: float = 5.0
    p99_exclude: tuple[str, ...] = ("term.create", "term.exec", "fs.sync")

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> Objectives:
        o = cls(**{k: c[k] for k in ("availability", "error_rate", "p99_us", "recovery_s")
                   if k in c})
        if "p99_exclude" in c:
            ex = c["p99_exclude"]
            if not (isinstance(ex, list) and all(isinstance(x, str) for x in ex)):
                raise ValueError("slo: p99_exclude must be a list of op names")
            o = cls(o.availability, o.error_rate, o.p99_us, o.recovery_s, tuple(ex))
        if not (0 < o.availability <= 1 and 0 <= o.error_rate < 1 and o.p99_us > 0
                and o.recovery_s > 0):
            raise ValueError("slo: availability in (0, 1], error_rate in [0, 1), "
                             "p99_us and recovery_s > 0")
        return o


def _window(name: str, f: Figures, store_now: float, tracker: RecoveryTracker,
            targets: Mapping[str, float], p99_exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    since = store_now - WINDOWS[name]
    down = dict(f.down)
    for inc in tracker.open.values():  # still down: up to now
        if inc.exited_at < store_now:
            down[inc.child] = down.get(inc.child, 0.0) + store_now - max(inc.exited_at, since)
    children = max(1, len(tracker.children))
    down_s = sum(down.values())
    availability = None
    if f.observed > 0:
        availability = max(0.0, 1 - down_s / (f.observed * children))
    per_op = _by_op(f)
    everything = OpFigures()  # (its counts: only `timed` has a percentile read)
    timed = OpFigures()  # the ops whose latency is ours
    for op, figs in per_op.items():  # (op names, not keys: the sums saturate all the same)
        everything.add(figs, latencies=False)
        if op not in p99_exclude:
            timed.add(figs)
        progress()
    ops = []
    for op, figs in sorted(per_op.items()):
        progress()
        target = targets.get(op)
        p99 = percentile(figs.bins, 99)
        ops.append({"op": op, "requests": figs.requests, "errors": figs.service_errors,
                    "caller_errors": figs.caller,
                    "error_rate": figs.service_errors / figs.requests if figs.requests else 0.0,
                    "p50_us": percentile(figs.bins, 50), "p99_us": p99,
                    "target_p99_us": target,
                    "met": None if target is None or not figs.requests else p99 <= target})
    loss = loss_totals(f.loss.items())
    return {"seconds": WINDOWS[name], "observed_s": round(f.observed, 3),
            "requests": everything.requests, "errors": everything.service_errors,
            "caller_errors": everything.caller,
            "error_rate": (everything.service_errors / everything.requests
                           if everything.requests else 0.0),
            "p99_us": percentile(timed.bins, 99), "p99_excludes": list(p99_exclude),
            "availability": availability,
            "down_s": {c: round(s, 3) for c, s in sorted(down.items())},
            "loss": loss, "loss_total": capped(sum(loss.values())),
            "loss_by_actor": {f"{a}/{c}": n for (a, c), n in sorted(f.loss.items())},
            "recovery": tracker.summary(since), "ops": ops}


def _by_op(f: Figures) -> dict[str, OpFigures]:
    """Each op's figures summed over the actors that serve it; an op that one actor serves
    (most of them) is its figures in `f` as they are, read and never written."""
    keys: dict[str, list[OpFigures]] = {}
    for (_, op), figs in f.ops.items():
        keys.setdefault(op, []).append(figs)
    per_op: dict[str, OpFigures] = {}
    for op, served in keys.items():
        if len(served) == 1:
            per_op[op] = served[0]
            continue
        total = per_op[op] = OpFigures()
        for figs in served:
            total.add(figs)
            progress()  # one key's bins at a time
    return per_op


def build_report(store: SloStore, tracker: RecoveryTracker, now: float,
                 targets: Mapping[str, float], objectives: Objectives) -> dict[str, Any]:
    windows = {name: _window(name, store.window(name, now), now, tracker, targets,
                             objectives.p99_exclude)
               for name in WINDOWS}
    w1, w24, w30 = windows["1h"], windows["24h"], windows["30d"]
    rec = w30["recovery"]
    worst_s = rec["max_ms"] / 1000
    slo = [
        {"name": "availability", "target": objectives.availability, "window": "30d",
         "value": w30["availability"],
         "met": None if w30["availability"] is None
         else w30["availability"] >= objectives.availability},
        {"name": "error_rate", "target": objectives.error_rate, "window": "24h",
         "value": w24["error_rate"],
         "met": None if not w24["requests"] else w24["error_rate"] < objectives.error_rate},
        {"name": "p99_latency_us", "target": objectives.p99_us, "window": "1h",
         "value": w1["p99_us"],
         "met": None if not w1["requests"] else w1["p99_us"] < objectives.p99_us},
        {"name": "recovery_time_s", "target": objectives.recovery_s, "window": "30d",
         "value": worst_s, "over_rto": rec["over_rto"],
         "met": None if not rec["count"] else
         worst_s <= objectives.recovery_s and not rec["over_rto"]},
        {"name": "data_loss", "target": 0, "window": "30d", "value": w30["loss_total"],
         "met": w30["loss_total"] == 0},
    ]
    recent = list(tracker.closed)[-10:]
    counters = {**LOSS_COUNTERS, **{n: "" for n in w30["loss"] if n not in LOSS_COUNTERS}}
    return {"now": now, "since": store.first, "slo": slo, "windows": windows,
            "open_incidents": [i.describe(tracker.rto(i.child)) for i in tracker.open.values()],
            "recent_incidents": [i.describe(tracker.rto(i.child)) for i in reversed(recent)],
            "rto_s": {**tracker.rto_s, "*": tracker.default_rto_s},
            "children": sorted(tracker.children), "incidents_dropped": tracker.dropped,
            "incidents_abandoned": tracker.abandoned, "loss_counters": counters}
