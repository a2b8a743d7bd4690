"""The metrics actor: merges what every actor pushes, answers percentiles, raises alerts,
and keeps the SLO record (seed 11) across its own restarts.

  op                  args                     reply                                   errors
  metrics.query       {op?: str, actor?: str}  {ops: [{actor, op, lifetime, window}],  bad_args
                                                received_pushes, bad_pushes,
                                                dropped_keys, window_s, actors}
  metrics.alerts      {}                       {active: [alert], recent: [alert],      bad_args
                                                raised_total, cleared_total, policy}
  metrics.prometheus  {}                       {text, content_type}                    bad_args
  metrics.reset       {}                       {reset: true}                           bad_args
  metrics.slo         {}                       {slo: [objective], windows: {1h, 24h,   bad_args
                                                30d}, open_incidents, recent_incidents,
                                                rto_s, children, since, now, file}

`lifetime` and `window` are {count, ok, error, error_rate, p50, p90, p99, p999, max}, latencies
in microseconds; `window` adds `seconds`. query's filters match exactly. The ops that walk
every series or every key (query, prometheus, slo) beat (`progress`) as they go: a table or a
record full of busy keys is long to read, not a hung loop. All but reset are
idempotent; reset is not (it also publishes every active alert as cleared). reset forgets the
recent figures, not the SLO record.

Config (all optional): window_s 60, bucket_s 1, max_keys 2000, max_client_keys 500,
alert_history 100,
alert_min_samples 20, alert_failure_rate 0.10, alert_latency_factor 2.0, alert_clear_ratio 0.8,
targets {op: [p50_us, p99_us, p999_us]}, supervisor "supervisor" (whose events are followed),
slo_file "metrics-slo.msgpack" (in the state dir), slo_save_s 5, probe_timeout_s 5,
rto_s {child: s} (default terminal and ptykeeper 1, others `rto_default_s` 5),
slo {availability 0.999, error_rate 0.001, p99_us 100000, recovery_s 5}. A config that cannot
work fails the start.

Input: a PULL on `metrics.in`. Every other actor pushes about once a second
`[TAG, {actor, pid, ep}, {op: {ok, error, hist}}]` (see `Actor._push_metrics`); this actor's
own ops are merged from `self.stats` on the bucket timer. A push is taken whole or not at all:
one that fails bounded decoding (push.py: its bounds keep the cost of any push to a few tens
of milliseconds), or that would carry a series' lifetime figures past 2^53 - 1 (series.py
says why it is refused rather than saturated), is counted in `bad_pushes`, logged, and
dropped. The SLO record's sums saturate there instead (slo.py says why).

Per (actor, op): lifetime counts and latency counts, plus a window of `window_s` seconds made of
`bucket_s` intervals, folded into at most 12 slots (a slot leaves whole once its last interval
has: the window holds `window_s` to `window_s` + a slot), with a running total, so reading the
window sums no slots. Latencies are kept as counts of HDR-equivalent microsecond values
(protocol.histogram's shape), decoded once per push. At most `max_keys` (actor, op) pairs of
the tree's actors and `max_client_keys` of clients' (`client.<name>`) are kept, and as many
pushers of each: entries for more count in `dropped_keys`; a client pushing name after name
fills only the clients' share.

What the series hold is bounded too (series.py): 250,000 distinct latency values over every
lifetime, window and slot, 25,000 of them the clients'. A share past its budget after a push
folds its largest series to the SLO record's precision (at most 4.4% above), then drops the
latencies of its least recently merged; counts stay exact and no row goes. A client's first
push of an interval is taken whole; a further one in the same interval is merged, counts only
once the clients' share went past its budget in that interval. sys.info tells all of it:
`held_values`, `held_budget`, `client_held_values`, `client_budget`, `over_budget_pushes`
(`client_over_budget_pushes` of them the clients'), `folded_series`,
`latencies_dropped_series`, `latencies_dropped_values`, `client_pushes_extra`,
`client_pushes_counts_only`; the first ten of each kind and every thousandth are logged.
Taking pushes costs at most PUSH_SHARE of a core over time (a burst of PUSH_BURST_S): a flood
waits in the socket meanwhile (`push_pauses` counts the waits), its senders keeping their
counts for the next push, rather than take the tree to a CPU pressure level. And pushes that
come less than PUSH_PACE_S apart are taken together, that far apart, until a turn finds none
(`push_paced_turns` counts those turns): a push comes up to that much later into the figures,
and a steady stream of pushes wakes the loop about 1 / PUSH_PACE_S times a second however
many pushers there are (any process woken 100 times a second costs a round trip between two
others on the same two cores 8% of its median: perf.client_latency_overhead's C2 rows).

Alerts (seed 8.1), evaluated over the window after each merge and each interval:
  failure_rate  raised when requests >= alert_min_samples and errors/requests > alert_failure_rate
  latency       raised when requests >= alert_min_samples and p99 > alert_latency_factor x the
                op's p99 target (config `targets`: op -> [p50_us, p99_us, p999_us])
Each is raised once when its condition starts and cleared once when the value falls to
`alert_clear_ratio` (0.8) of the threshold, or the window empties; both edges go out on
`metrics.alert` as {kind, state, actor, op, value, threshold, window_s, time, samples}.
A third kind, data_loss, is raised when an actor's loss counter (`op` names the counter) is
above zero over the last hour and cleared when it is back to zero.

The SLO record (actors/metrics/slo.py, recovery.py, slo_report.py): every push of the tree's
actors and this actor's own figures also go into minute and hour buckets for the 1 h, 24 h and
30 d windows, with the loss counters of each push header. A client's pushes do not: they time
its calls end to end, the service time included, and are shown beside it by metrics.query and
metrics.prometheus, never counted in the tree's SLO. The record keeps at most `max_keys`
(actor, op) keys of its own, whatever the resets and restarts (slo.py); sys.info's
`slo_keys` and `slo_dropped_keys` say how many it holds and how many entries it refused. The
root supervisor's `sup.event` stream is
followed (from seq 1, skipping what the saved cursor says was taken) to time each recovery
from the exit the supervisor saw to the successor's first good reply. It is saved to
`<state_dir>/<slo_file>` (actors/runtime/logs.state_dir) every `slo_save_s` when it changed
and when the actor stops, and
loaded at start; a file that cannot be read is logged and renamed `<slo_file>.corrupt-<time>`,
and the record starts afresh.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import zmq
from loguru import logger

from moorage.actors.metrics.alerts import AlertPolicy, Alerts
from moorage.actors.metrics.counts import COUNTS_CORE
from moorage.actors.metrics.prometheus import CONTENT_TYPE, render_prometheus
from moorage.actors.metrics.push import (
    CLIENT_PREFIX,
    BadPush,
    OpSample,
    Push,
    decode_ops,
    decode_push,
    fold_histogram,
)
from moorage.actors.metrics.record import SloRecord
from moorage.actors.metrics.recovery import Incident
from moorage.actors.metrics.series import (
    HELD_VALUE_BYTES,
    MetricsTable,
    Series,
    percentile,
    summarize,
)
from moorage.actors.metrics.settings import Settings
from moorage.actors.metrics.slo_report import build_report
from moorage.actors.runtime import Actor, Call, op
from moorage.actors.runtime.actor import TURN_BUDGET_S
from moorage.actors.runtime.beat import progress
from moorage.actors.runtime.follow import Follow
from moorage.actors.runtime.logs import state_dir
from moorage.actors.runtime.loop import Timer
from moorage.actors.runtime.outbound import Outbound
from moorage.actors.runtime.shapes import Named
from moorage.protocol import endpoints, limits
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import WireError
from moorage.protocol.wire import try_recv

PUSH_BATCH = 256  # pushes taken per wake-up, so requests are not starved
# Taking pushes costs at most this share of a core over time, with a burst of PUSH_BURST_S:
# a flood (forged latency pushes, every client of a build farm at once) waits in the
# socket, its senders keeping their counts, instead of taking the tree's CPU to a pressure
# level that turns features off (R12).
PUSH_SHARE = 0.4
PUSH_BURST_S = 0.1
# Pushes closer together than this are taken in turns this far apart (none is merged later
# than this after it came): well inside a bucket (bucket_s, 1 s by default).
PUSH_PACE_S = 0.05
IDLE_TICK_S = 30.0  # the longest sleep between two ticks (see `_tick_due`)

__all__ = [
    "AlertPolicy", "Alerts", "BadPush", "MetricsActor", "MetricsTable", "OpSample", "Push",
    "Settings", "decode_ops", "decode_push", "fold_histogram", "render_prometheus", "summarize",
]


# --- the actor ---------------------------------------------------------------------------------


# --- the shapes of the answers ----------------------------------------------------------------
# Counts and latencies in microseconds (series.summarize); a window adds its `seconds`.
_FIGURES = {"count": int, "ok": int, "error": int, "caller_errors": int, "error_rate": float,
            "p50": int, "p90": int, "p99": int, "p999": int, "max": int}
OP_FIGURES = Named("op_figures", {
    "actor": str, "op": str, "lifetime": Named("figures", _FIGURES),
    "window": Named("window_figures", {**_FIGURES, "seconds": float})})
PUSHER = Named("pusher", {"pid": int, "ep": str, "pushes": int, "epochs": int,
                          "last_push": float})  # an actor (or client) whose pushes came in
ALERT = Named("alert", {  # as published on metrics.alert (alerts.Alerts._edge)
    "kind": Literal["failure_rate", "latency", "data_loss"], "state": Literal["raised", "cleared"],
    "actor": str, "op": str, "value": float, "threshold": float, "window_s": float,
    "time": float, "samples": int})
# The SLO report (slo_report.build_report; recovery.py)
_RECOVERY = {"count": int, "p50_ms": float, "max_ms": float, "over_rto": int,
             "children": list[str]}
INCIDENT = Named("incident", {
    "child": str, "type": str, "exited_at": float, "pid": int | None, "deaths": int,
    "new_pid": int | None, "rto_ms": float, "ready_ms?": float, "recovery_ms?": float,
    "how?": Literal["reply", "self", "ready"]})  # recovery.py says which
OP_SLO = Named("op_slo", {
    "op": str, "requests": int, "errors": int, "caller_errors": int, "error_rate": float,
    "p50_us": int, "p99_us": int, "target_p99_us": float | None, "met": bool | None})
WINDOW = Named("slo_window", {
    "seconds": int, "observed_s": float, "requests": int, "errors": int, "caller_errors": int,
    "error_rate": float, "p99_us": int, "p99_excludes": list[str],
    "availability": float | None, "down_s": dict[str, float], "loss": dict[str, int],
    "loss_total": int, "loss_by_actor": dict[str, int],
    "recovery": Named("recovery", {**_RECOVERY, "by_type": dict[str, Named(
        "recovery_figures", _RECOVERY)]}),
    "ops": list[OP_SLO]})
OBJECTIVE = Named("objective", {
    "name": str, "target": float, "window": Literal["1h", "24h", "30d"],
    "value": float | None, "met": bool | None, "over_rto?": int})


class MetricsActor(Actor):
    name = "metrics"
    fallbacks: tuple[str, ...] = ()  # none: `fallbacks =` of its child spec must be empty

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        self.settings = Settings.from_config(config or {})  # a bad config fails before binding
        super().__init__(name, runtime_dir, config)
        st = self.settings
        self.table = MetricsTable(st.window_s, st.bucket_s, st.max_keys, st.max_client_keys)
        self.alerts = Alerts(st.policy, st.window_s, st.history)
        self.received_pushes = 0  # every message on metrics.in, bad ones included
        self.bad_pushes = 0
        self.client_pushes_extra = 0  # a client's further pushes in one interval
        self.client_pushes_counts_only = 0  # of them, merged without their latencies
        self.push_pauses = 0  # times the pushes waited for their CPU share (PUSH_SHARE)
        self._push_allowance = PUSH_BURST_S  # seconds of taking pushes allowed now
        self._push_taken_at = time.perf_counter()
        self.push_paced_turns = 0  # turns that took pushes PUSH_PACE_S after the last
        self._pushes_paced = False  # the pushes are taken on a timer, not as they come
        self._client_interval: dict[str, int] = {}  # client -> interval of its last push
        self.actors: dict[str, dict[str, Any]] = {}
        self.client_pushers = 0  # of self.actors, the clients
        self.record = SloRecord(state_dir(self.runtime_dir) / st.slo_file, st)
        self.record.load(time.time())
        self.slo, self.recovery = self.record.store, self.record.tracker
        self.serving_since = time.time()  # set again at the first loop turn
        self.outbound = Outbound(self)
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.MAXMSGSIZE, limits.MAX_BODY_SIZE)
        self.bind_socket(self.pull, endpoints.metrics_in(self.runtime_dir))
        if self.tcp is not None and "in" in self.tcp.endpoints:
            self.tcp.bind("in", self.pull)  # remote clients push their latency there

    def on_start(self) -> None:
        # Replies to recovery probes and supervisor events are timed as they arrive: they
        # must not wait for the request socket's next wake-up (runtime/loop.py).
        self.loop.fast_path = False
        self.loop.add_reader(self.pull, self._on_pushes)
        self._tick_timer: Timer | None = None
        self._tick_at = float("inf")  # (monotonic) when the armed tick runs
        self._saved_at = time.monotonic()  # the last tick that looked at the record
        self.stats.wake = self.losses.wake = self._tick_soon  # our own ops, as others' pushes
        self._arm_tick(self.settings.bucket_s)
        self.loop.call_later(0, self._first_turn)
        self.loop.call_every(60.0, self._evaluate_losses)  # the 1 h window moves per minute
        self._follow = Follow(self, self.outbound, self.settings.supervisor, "sup.event",
                              self._on_tree_event)

    def on_stop(self) -> None:
        self._follow.close()
        self.outbound.close()
        self.record.report_replayed()  # a replay cut short by the stop is still told
        self.record.dirty = True
        self.record.save(time.time(), force=True)

    def info(self) -> dict[str, Any]:
        return {"received_pushes": self.received_pushes, "bad_pushes": self.bad_pushes,
                "keys": len(self.table.series), "dropped_keys": self.table.dropped_keys,
                **self.table.info(), "client_pushes_extra": self.client_pushes_extra,
                "client_pushes_counts_only": self.client_pushes_counts_only,
                "push_pauses": self.push_pauses,
                "push_paced_turns": self.push_paced_turns, "counts_core": COUNTS_CORE,
                "slo_file": str(self.record.path), "slo_saves": self.record.saves,
                "slo_save_ms": round(self.record.save_cost_s * 1000, 3),
                "slo_keys": len(self.slo.hours.keys), "slo_dropped_keys": self.slo.dropped_keys}

    # --- merging ---------------------------------------------------------------------------

    def _on_pushes(self) -> None:
        """A turn of taking pushes: when the socket is readable, or on the pace's timer."""
        started = time.perf_counter()
        took = 0
        try:
            took = self._take_pushes(started)
        finally:
            since = started - self._push_taken_at
            self._push_allowance = min(
                PUSH_BURST_S, self._push_allowance + since * PUSH_SHARE
            ) - (time.perf_counter() - started)
            self._push_taken_at = started
            if self._pushes_paced:
                self.push_paced_turns += 1
            if self._push_allowance < 0:  # (back once the share has paid it)
                self.push_pauses += 1
                self._await_pushes(-self._push_allowance / PUSH_SHARE, self._read_pushes)
            elif took > 0 and (self._pushes_paced or since < PUSH_PACE_S):
                self._await_pushes(PUSH_PACE_S, self._on_pushes)
            elif self._pushes_paced:  # (none came in the pace, or more wait: read at once)
                self._read_pushes()

    def _await_pushes(self, delay: float, then: Callable[[], None]) -> None:
        """Leave the pushes in the socket for `delay` seconds, then run `then`."""
        if not self._pushes_paced:
            self._pushes_paced = True
            self.loop.remove_reader(self.pull)
        self.loop.call_later(delay, then)

    def _read_pushes(self) -> None:
        """Take each push as it comes again."""
        self._pushes_paced = False
        self.loop.add_reader(self.pull, self._on_pushes)

    def _take_pushes(self, started: float) -> int:
        """The pushes taken, the socket emptied; or PUSH_BATCH or TURN_BUDGET_S's worth
        and -1, the rest left queued for the next turn (which then comes at once)."""
        idx = self.table.interval(time.monotonic())
        stop = started + TURN_BUDGET_S
        took = 0
        for _ in range(PUSH_BATCH):
            if time.perf_counter() > stop:
                return -1
            frames = try_recv(self.pull)  # (the compiled mover: None, not an exception)
            if frames is None:
                return took
            took += 1
            self.received_pushes += 1
            try:
                push = decode_push(frames)
                self.table.check(push.actor, push.ops)
            except BadPush as exc:
                self.bad_pushes += 1
                if self.bad_pushes <= 10 or self.bad_pushes % 1000 == 0:
                    logger.warning("bad metrics push (#{}): {}", self.bad_pushes, exc)
                continue
            latencies = (not push.actor.startswith(CLIENT_PREFIX)
                         or self._client_latencies(push.actor, idx))
            self._note_actor(push, idx)
            self._merge(push.actor, push.ops, idx, latencies)
            self._take_losses(push.actor, push.loss)
        return -1

    def _client_latencies(self, name: str, idx: int) -> bool:
        """Whether a push of client `name` in interval `idx` brings its latencies in
        (PROTOCOL.md section 2: a client pushes at most once an interval). Its first push of
        an interval does; a further one (as every push of a client past the
        `max_client_keys` pushers kept) is merged into that interval's figures, its counts
        always and its latencies only while the clients' share of the table has not gone
        past its budget in that interval. Each is counted."""
        if self._client_interval.get(name, idx) != idx or (
                name not in self.actors and self.client_pushers < self.settings.max_client_keys):
            return True
        self.client_pushes_extra += 1
        if self.table.pressed[True] != idx:
            return True
        self.client_pushes_counts_only += 1
        n = self.client_pushes_counts_only
        if n <= 10 or n % 1000 == 0:
            logger.warning("client push merged without its latencies (#{}): {} pushed again "
                           "in an interval in which the clients' share of the table went "
                           "past its budget", n, name)
        return False

    def _note_actor(self, push: Push, idx: int) -> None:
        seen = self.actors.get(push.actor)
        client = push.actor.startswith(CLIENT_PREFIX)
        if seen is None:
            if client:
                if self.client_pushers >= self.settings.max_client_keys:
                    return
            elif len(self.actors) - self.client_pushers >= self.settings.max_keys:
                return
            self.client_pushers += client
            seen = self.actors[push.actor] = {"pid": push.pid, "ep": push.ep, "pushes": 0,
                                              "epochs": 1}
        elif seen["ep"] != push.ep:
            seen["epochs"] += 1  # the actor restarted
        seen.update(pid=push.pid, ep=push.ep, last_push=time.time())
        seen["pushes"] += 1
        if client:
            self._client_interval[push.actor] = idx

    def _merge(self, actor: str, samples: list[OpSample], idx: int,
               latencies: bool = True) -> None:
        now = time.time()
        for s in samples:
            series = self.table.merge(actor, s, idx, latencies)
            if series is None:
                continue
            # (the record takes the tree's actors' figures only, under its own key bound)
            if self.slo.add_ops(actor, s.op, s.ok, s.error, s.counts, now, s.caller):
                self.record.dirty = True
                self._save_soon()
            self._evaluate(series)
        self._bound(actor.startswith(CLIENT_PREFIX), idx)

    def _bound(self, client: bool, idx: int) -> None:
        """Back within the budget of the clients' (or the actors') share of the table, if
        the merge just made went past it: counted, and logged."""
        table = self.table
        held = table.held
        if not table.bound(idx, client):
            return
        self.heap.note((held - table.held) * HELD_VALUE_BYTES)
        n = table.over_budget[client]
        if n <= 10 or n % 1000 == 0:
            logger.warning("metrics table: the {} share went past its budget of {} values "
                           "(#{}); {} held now; series folded {}, latencies dropped of {} "
                           "({} values) so far", "clients'" if client else "actors'",
                           table.budget(client), n, table.held_by(client),
                           table.folded_series, table.dropped_series, table.dropped_values)

    def _take_losses(self, actor: str, loss: dict[str, int]) -> None:
        # (the actor bound, max_keys, holds here too; this actor's own are always kept: it
        # never pushes to itself, so it is never among the actors seen)
        if not loss or (actor not in self.actors and actor != self.name):
            return
        now = time.time()
        self.slo.add_loss(actor, loss, now)
        self.record.dirty = True
        self._save_soon()
        logger.warning("data loss reported by {}: {}", actor, loss)
        for counter in loss:
            self._publish_alerts(self.alerts.evaluate_loss(
                actor, counter, self.slo.loss_in(actor, counter, now), now))

    def _evaluate_losses(self) -> None:
        """Data-loss alerts clear once their hour has passed without a new loss."""
        now = time.time()
        for kind, actor, counter in list(self.alerts.active):
            if kind == "data_loss":
                self._publish_alerts(self.alerts.evaluate_loss(
                    actor, counter, self.slo.loss_in(actor, counter, now), now))

    def _publish_alerts(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            logger.warning("alert {} {}: {} {} {:.4g} (threshold {:.4g})", event["kind"],
                           event["state"], event["actor"], event["op"], event["value"],
                           event["threshold"])
            self.publisher.publish("metrics.alert", event)

    def _evaluate(self, s: Series) -> None:
        w = s.window
        p99 = None
        if self.alerts.policy.latency_threshold(s.op) is not None:
            p99 = percentile(w.counts, 99.0)
        # A failure rate is the service's: errors that were the caller's (a missing file, a
        # typo in an op) say nothing about its health.
        self._publish_alerts(self.alerts.evaluate(s.actor, s.op, requests=w.requests,
                                                  errors=w.error - w.caller, p99=p99,
                                                  now=time.time()))

    def _advance(self) -> int:
        """Expire old intervals everywhere and re-evaluate the series that changed."""
        idx = self.table.interval(time.monotonic())
        held = self.table.held
        for s in self.table.expire(idx):
            self._evaluate(s)
        if held > self.table.held:  # (the heap is trimmed once such frees add up)
            self.heap.note((held - self.table.held) * HELD_VALUE_BYTES)
        return idx

    def _tick(self) -> None:
        self._tick_timer, self._tick_at = None, float("inf")
        try:
            self._tick_once()
        finally:
            self._arm_tick(self._tick_due())

    def _tick_once(self) -> None:
        idx = self._advance()
        self._report_replay()
        self.slo.observe(time.time())
        if time.monotonic() - self._saved_at >= self.settings.slo_save_s:
            self._saved_at = time.monotonic()
            self.record.save(time.time())
        self._take_losses(self.name, self.losses.drain())
        if self.stats.pending():  # our own ops: no push socket to ourselves
            try:
                samples = decode_ops(self.stats.drain())
                self.table.check(self.name, samples)
            except BadPush:
                logger.exception("own op stats not taken")
                return
            self._merge(self.name, samples, idx)

    # An idle tree's metrics actor sleeps: a tick runs when something is due (a slot leaving
    # a window, the record to save, our own figures to take, a replay going on), at least
    # every IDLE_TICK_S (the SLO record's observed time, counted between two ticks up to
    # slo.OBSERVE_MAX_GAP_S), not every bucket_s: between two slot boundaries a tick changed
    # nothing, and each cost the process a wake-up (P14's idle CPU).

    def _tick_due(self) -> float:
        """Seconds from now to the next tick."""
        st = self.settings
        if self.stats.pending() or self.losses.pending() or self._follow.tracker.replaying:
            return st.bucket_s
        due = min(IDLE_TICK_S, st.window_s)  # (a slot merged from now on leaves after that)
        if self.record.dirty:
            due = min(due, self._saved_at + st.slo_save_s - time.monotonic())
        leaves = self.table.next_expiry
        if leaves is not None:  # (the interval's start, and a millisecond: it is there then)
            due = min(due, leaves * st.bucket_s - time.monotonic() + 0.001)
        return max(due, 0.0)

    def _arm_tick(self, delay: float) -> None:
        """The next tick in `delay` s, unless one is armed sooner."""
        at = time.monotonic() + delay
        if at >= self._tick_at:
            return
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        self._tick_at = at
        self._tick_timer = self.loop.call_later(delay, self._tick)

    def _tick_soon(self) -> None:
        self._arm_tick(self.settings.bucket_s)

    def _save_soon(self) -> None:
        """The record changed: saved by the tick due `slo_save_s` after the last save."""
        self._arm_tick(max(0.0, self._saved_at + self.settings.slo_save_s - time.monotonic()))

    # --- the SLO record ----------------------------------------------------------------------

    def _first_turn(self) -> None:
        self.serving_since = time.time()

    def _on_tree_event(self, ev: object) -> None:
        if not isinstance(ev, StreamMessage) or not isinstance(ev.body, dict):
            return  # a Loss is counted by Follow; a Reset is a new tree, seen in `take`
        if self.recovery.seen(ev.epoch, ev.seq):
            return
        inc = self.recovery.take(ev.epoch, ev.seq, ev.body)
        self.record.dirty = True
        self._save_soon()
        if inc is None:
            return
        assert inc.ready_at is not None
        if inc.child == self.name and inc.new_pid == os.getpid():
            self._close_incident(inc, max(self.serving_since, inc.exited_at), "self")
        elif inc.ready_at >= self.serving_since:
            self._probe(inc)
        else:
            self.record.close_replayed(inc)  # from the retention: history, summed up

    def _report_replay(self) -> None:
        # The retention comes in replay pages of up to 1000 events, a round trip apart: the
        # summary waits until no page is still to come, so that a start writes one line
        # however long the retention is.
        if not self._follow.tracker.replaying:
            self.record.report_replayed()

    def _probe(self, inc: Incident) -> None:
        """Ask the successor for a first good reply, on a socket connected just now."""
        deaths = inc.deaths

        def answered(reply: Any, err: WireError | None) -> None:
            if inc.deaths != deaths:
                return  # the successor died before answering; the incident goes on
            if err is None:
                self._close_incident(inc, time.time(), "reply")
            else:
                logger.warning("recovery probe of {} failed: {}", inc.child, err)
                assert inc.ready_at is not None  # set while its deaths stay the same
                self._close_incident(inc, inc.ready_at, "ready")

        self.outbound.call(inc.child, "sys.hello", {"client": "metrics.recovery"},
                           timeout=self.settings.probe_timeout_s, on_done=answered, fresh=True)

    def _close_incident(self, inc: Incident, answered_at: float, how: str) -> None:
        self.record.close(inc, answered_at, how)

    # --- ops -------------------------------------------------------------------------------

    @op("metrics.query", args={"op": (str, None), "actor": (str, None)}, idempotent=True,
        result={"ops": list[OP_FIGURES], "received_pushes": int, "bad_pushes": int,
                "dropped_keys": int, "window_s": float, "actors": dict[str, PUSHER]})
    def _op_query(self, call: Call, op: str | None, actor: str | None) -> dict[str, Any]:
        """Counts and percentiles per (actor, op), lifetime and over the recent window."""
        self._advance()
        rows = []
        for s in self.table.select(actor, op):
            progress()  # a series at a time: a full table's percentiles outlast a loop turn
            w = s.window
            rows.append({"actor": s.actor, "op": s.op,
                         "lifetime": summarize(s.ok, s.error, s.counts, s.caller),
                         "window": {**summarize(w.ok, w.error, w.counts, w.caller),
                                    "seconds": self.settings.window_s}})
        return {"ops": rows, "received_pushes": self.received_pushes,
                "bad_pushes": self.bad_pushes, "dropped_keys": self.table.dropped_keys,
                "window_s": self.settings.window_s,
                "actors": {a: d for a, d in self.actors.items() if actor in (None, a)}}

    @op("metrics.alerts", idempotent=True, result={
        "active": list[ALERT], "recent": list[ALERT], "raised_total": int, "cleared_total": int,
        "policy": {"min_samples": int, "failure_rate": float, "latency_factor": float,
                   "clear_ratio": float, "p99_targets": dict[str, float],
                   "targets": dict[str, list[float]], "window_s": float}})
    def _op_alerts(self, call: Call) -> dict[str, Any]:
        """Alerts raised now, and the last alert events (raised and cleared)."""
        self._advance()
        a, pol = self.alerts, self.alerts.policy
        return {"active": list(a.active.values()), "recent": list(a.recent),
                "raised_total": a.raised_total, "cleared_total": a.cleared_total,
                "policy": {"min_samples": pol.min_samples, "failure_rate": pol.failure_rate,
                           "latency_factor": pol.latency_factor, "clear_ratio": pol.clear_ratio,
                           "p99_targets": dict(pol.p99_targets),
                           "targets": {k: list(v) for k, v
                                       in dict(self.config.get("targets") or {}).items()},
                           "window_s": self.settings.window_s}}

    @op("metrics.prometheus", idempotent=True, result={"text": str, "content_type": str})
    def _op_prometheus(self, call: Call) -> dict[str, Any]:
        """Everything in Prometheus text exposition format 0.0.4."""
        self._advance()
        text = render_prometheus(
            self.table.select(), pushes_ok=self.received_pushes - self.bad_pushes,
            pushes_bad=self.bad_pushes, dropped_keys=self.table.dropped_keys,
            alerts_active=self.alerts.active_by_kind())
        return {"text": text, "content_type": CONTENT_TYPE}

    @op("metrics.slo", idempotent=True, result={
        "now": float, "since": float | None, "slo": list[OBJECTIVE],
        "windows": {"1h": WINDOW, "24h": WINDOW, "30d": WINDOW},
        "open_incidents": list[INCIDENT], "recent_incidents": list[INCIDENT],
        "rto_s": dict[str, float], "children": list[str], "incidents_dropped": int,
        "incidents_abandoned": int, "loss_counters": dict[str, str], "file": str})
    def _op_slo(self, call: Call) -> dict[str, Any]:
        """The SLO report over 1 h, 24 h and 30 d, recovery incidents and data-loss counts."""
        self._advance()
        self.slo.observe(time.time())  # (the time since the last tick: watched too)
        report = build_report(self.slo, self.recovery, time.time(),
                              self.alerts.policy.p99_targets, self.settings.objectives)
        report["file"] = str(self.record.path)
        return report

    @op("metrics.reset", result={"reset": bool})
    def _op_reset(self, call: Call) -> dict[str, Any]:
        """Forget everything (tests, benchmarks); active alerts are published as cleared."""
        for event in self.alerts.clear_all(time.time()):
            self.publisher.publish("metrics.alert", event)
        self.table.clear()
        self.stats.drain()
        self.actors.clear()
        self._client_interval.clear()
        self.client_pushers = 0
        self.received_pushes = self.bad_pushes = 0
        self.client_pushes_extra = self.client_pushes_counts_only = 0
        logger.info("metrics reset (pid {})", os.getpid())
        return {"reset": True}
