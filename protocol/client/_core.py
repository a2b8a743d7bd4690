"""What the sync and asyncio clients share: every decision, none of the I/O.

A call is a `CallPlan`: it owns the request id (kept across retries, so the actor's reply
cache can answer a retry without running it again), the deadline, and the rules for what to
do on a reply, a timeout or a disconnect. The adapters only move frames and wait.

A call given no timeout gets its op's own (the `timeout_ms` the actor's sys.info declares,
learned with its idempotent ops), plus TRIP_MARGIN for the way there and back, at most
MAX_OP_TIMEOUT, when that is longer than the client's `timeout`; else the client's
(PROTOCOL.md section 9).

Retry rules (see PROTOCOL.md, "Retries"):
  - an error reply is retried only when it says `retryable` and the op is idempotent, or when
    it says the request was not run and may run later (busy, stopping, session_busy);
    `deadline_expired` is final: a retry resends the same frames, so the same deadline, which
    has passed. `session_busy` is an op's own answer, which the actor's reply cache keeps
    under the request's id: its resend is a new request (a fresh id, the same deadline);
  - an attempt that timed out is resent with the attempt timeout doubled, at most
    TIMEOUT_RETRIES times (the seed's Timeout row: increase timeout, then cancel); the last
    resend waits to the call's deadline (an op that is slow, not lost, answers late: any copy's
    reply, under the one id, ends the call), and an idempotent op then fails `timeout`;
  - a non-idempotent op may have run, so it is resent only *pinned* to the actor life it was
    sent to (the header's `ep`): that life's reply cache answers it (done), joins it (still
    running) or runs it (it never arrived), and any other life refuses it `outcome_unknown`.
    So a timed-out attempt, or a dropped tcp connection, resends it pinned when the actor's
    epoch was known at the first send; else, and at the deadline, it fails `outcome_unknown`.
    On ipc a dropped connection means the actor's process ended: it fails at once. A drop
    makes the epoch known no more (the next life has another), and a call whose send saw one
    is not pinned: the life it went to is not known;
  - every wait is capped exponential back-off, or the actor's `retry_after_ms`;
  - the breaker of the actor sees each transport failure (each attempt that got no reply) and
    each reply, a late one that no call waits for any more included (PROTOCOL.md section 11:
    any reply is a success); it gates new calls and resends of calls known not to have run,
    never a pinned resend. `circuit_open` means "not sent": only a call refused before its
    first send ends with it, always with `retry_after_ms` (the cooldown left; while half-open,
    the breaker's current cooldown). A call that was sent and whose resend the breaker refuses
    ends with its own outcome: the error its last attempt was answered with, else (no reply)
    `timeout` when idempotent, `outcome_unknown` when it may have run;
  - a call that got no reply on a DEALER on which no handshake ever completed (a stale or
    wrong server key, a tree down: LinkLog) was never delivered: once the adapter has closed
    the socket (its queue gone) and read its monitor to the end, it says so (`undelivered`:
    `unavailable` where it would have been `outcome_unknown`, `timeout` told the same). Not
    while a connection's handshake is still under way and none has ended before its own
    (LinkLog.may_get_in: a slow link): the socket is kept for it, and the call keeps its error.

Each call's end-to-end time is recorded once, when its plan says it is over (`Done`), with its
outcome: see _latency.py for what is kept and how it can reach the metrics actor.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import zmq

from moorage.protocol import endpoints, limits
from moorage.protocol.client._known_ops import SCHEMA_IDEMPOTENT
from moorage.protocol.client._latency import LatencyBook, LatencyPusher, check_metrics_name
from moorage.protocol.client.connection import Connection, check_runtime_dir, locate, tree_pid
from moorage.protocol.envelope import Reply, encode_request, pin_request
from moorage.protocol.errors import Fault, MoorageError, WireError, fault_of
from moorage.protocol.recovery import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    max_retries_for,
    recovery_for,
)
from moorage.protocol.remote import RemoteTarget, secure_client
from moorage.protocol.schema.live import ReplyCheck
from moorage.protocol.schema.live import from_env as reply_check_from_env

# Ops every actor serves that are safe to repeat, whatever it says (sys.info itself among them:
# learning never waits on learning). The others an actor declares idempotent are known from the
# schema (_known_ops.py) until its sys.info is learned.
BUILTIN_IDEMPOTENT = frozenset({"sys.ping", "sys.hello", "sys.info", "replay"})
# Of a call's time, the share that learning the actor's idempotent ops may take first (an
# actor slow to start answers late, not never; a call still has the rest of its time, however
# long its wait for the learning took: ClientCore.left_after_learning).
LEARN_SHARE = 0.5
# Errors that mean "the actor did not run it, and the same frames may run later": safe to
# resend whatever the op. (`deadline_expired` was not run either, but a resend carries the same
# deadline_ms, which has passed: it would only be refused again.)
NOT_RUN = frozenset({"busy", "stopping", "session_busy"})
# Of those, the refusals an op answers itself (before it ran anything): the actor's reply cache
# keeps an op's answers under the request's id (only the runtime's own refusals are left out),
# so the same frames would only hear the refusal again. Such a call is resent as a new request:
# a fresh id under the same deadline (the refused id ran nothing, so nothing is lost with it).
RENEWED = frozenset({"session_busy"})
# A call given no timeout waits for its op's declared `timeout_ms` plus this, the way there and
# back (queues, a busy loop), and never longer than MAX_OP_TIMEOUT (an op declaring a day, as
# term.exec does, bounds its own work with an argument instead).
TRIP_MARGIN = 0.5
MAX_OP_TIMEOUT = 60.0
_TIMEOUT_ROW = recovery_for("timeout", "recoverable")
TIMEOUT_RETRIES = _TIMEOUT_ROW.max_retries if _TIMEOUT_ROW and _TIMEOUT_ROW.max_retries else 2
_CLOSED = BreakerState.CLOSED
_monotonic = time.monotonic
_time = time.time


@dataclass
class ClientOptions:
    # Whole call, all attempts, seconds, of a call given no `timeout`; an op that declares a
    # longer one (its sys.info `timeout_ms`) gets that instead, at most MAX_OP_TIMEOUT
    # (ClientCore.call_timeout). A call's own `timeout` is kept as given.
    timeout: float = 5.0
    attempt_timeout: float = 1.0  # one attempt of an idempotent call before it is resent
    backoff: Backoff = field(default_factory=lambda: Backoff(0.01, 2.0, 0.5, jitter=0.2))
    breaker_threshold: int = 5
    breaker_cooldown: float = 0.5
    reconnect_ivl_ms: int = 5  # libzmq's default of 100 ms would add 100 ms to each restart
    reconnect_ivl_max_ms: int = 0  # no growth: a restarted actor is found within 5 ms
    idempotent_ops: frozenset[str] = frozenset()
    # Ask each actor once (sys.info) which of its ops are idempotent, before the first call of
    # an op this client cannot tell about: retries then follow the actor's own table.
    learn_ops: bool = True
    # Push this client's latencies to the metrics actor as `client.<metrics_name>` (opt-in).
    metrics_name: str | None = None
    metrics_interval: float = 1.0  # seconds between pushes
    # A subscription's queue in this process, in messages (its SUB's RCVHWM): past it, what
    # comes is dropped, a gap its subscription repairs or reports (PROTOCOL.md section 12).
    stream_hwm: int = limits.STREAM_HWM

    def __post_init__(self) -> None:
        """Each option checked where it is given (ValueError naming it), not where it is
        first used: a timeout of "5" would fail a call's deadline arithmetic, a negative
        queue libzmq's setsockopt in a subscribe, far from the mistake."""
        for name in ("timeout", "attempt_timeout", "metrics_interval"):
            _check_option(name, getattr(self, name), _positive_seconds, "seconds > 0")
        _check_option("breaker_cooldown", self.breaker_cooldown, _seconds, "seconds >= 0")
        _check_option("breaker_threshold", self.breaker_threshold, _count(1), "a count >= 1")
        for name in ("reconnect_ivl_ms", "reconnect_ivl_max_ms"):
            _check_option(name, getattr(self, name), _count(0), "milliseconds, an int >= 0")
        _check_option("stream_hwm", self.stream_hwm, _count(0),
                      "a count of messages (0: no bound)")
        _check_option("backoff", self.backoff, lambda v: isinstance(v, Backoff), "a Backoff")
        _check_option("learn_ops", self.learn_ops, lambda v: type(v) is bool, "a bool")
        ops = self.idempotent_ops
        _check_option("idempotent_ops", ops, lambda v: isinstance(v, (set, frozenset, list, tuple))
                      and all(type(op) is str for op in v), "a set of op names")
        self.idempotent_ops = frozenset(ops)
        if self.metrics_name is not None:
            check_metrics_name(self.metrics_name)


def _check_option(name: str, value: Any, ok: Callable[[Any], bool], want: str) -> None:
    if not ok(value):
        raise ValueError(f"ClientOptions.{name} must be {want}, not {value!r:.60}")


def _seconds(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v) and v >= 0


def _positive_seconds(v: Any) -> bool:
    return _seconds(v) and v > 0


def _count(least: int) -> Callable[[Any], bool]:
    return lambda v: type(v) is int and v >= least


class Done:
    """The plan's verdict: the call is over with `result` or `error`."""

    __slots__ = ("error", "reply")

    def __init__(self, reply: Reply | None = None, error: MoorageError | None = None) -> None:
        self.reply = reply
        self.error = error


class Resend:
    """The plan's verdict: send the same request again after `delay` seconds."""

    __slots__ = ("delay",)

    def __init__(self, delay: float) -> None:
        self.delay = delay


class Wait:
    """The plan's verdict: keep waiting for a reply (until `until`, monotonic)."""

    __slots__ = ("until",)

    def __init__(self, until: float) -> None:
        self.until = until


class CallPlan:
    __slots__ = ("actor", "args", "attachments", "attempts", "core", "deadline", "deadline_ms",
                 "frames", "id", "idempotent", "last_error", "op", "pin", "pinned_by",
                 "resumable", "retries", "session", "started", "timeout", "timeout_retries")

    def __init__(
        self,
        core: ClientCore,
        actor: str,
        op: str,
        args: Any,
        timeout: float | None,
        idempotent: bool | None,
        attachments: Sequence[bytes] = (),
    ) -> None:
        self.core = core
        self.actor = actor
        self.op = op
        self.id = rid = next(core._ids)
        self.started = started = _monotonic()
        if timeout is None:
            timeout = core.call_timeout(actor, op)
        self.timeout = timeout
        self.deadline = started + timeout
        self.deadline_ms = deadline_ms = int((_time() + timeout) * 1000)
        if idempotent is None:
            idempotent = op in BUILTIN_IDEMPOTENT or op in core.options.idempotent_ops \
                or op in core.known_idempotent(actor)
        self.idempotent = idempotent
        self.resumable = resumable = op in core.resumable.get(actor, ())
        self.args = args  # (kept for a resend as a new request: RENEWED)
        self.attachments = attachments
        self.frames = encode_request(rid, core.sid, op, args, deadline_ms, attachments)
        # The actor life a non-idempotent call goes to, as known now, which its resends are
        # pinned to; None: resent never (not known) or freely (safe to repeat, or resumable:
        # any successor answers those). Set from the first send on, never changed.
        self.pin = None if idempotent or resumable else core.epochs.get(actor)
        self.pinned_by: str | None = None  # why the frames carry `ep`: "drop" or "timeout"
        # What a caller told `outcome_unknown` needs to go and look (term.exec, term.create)
        self.session = args.get("session") if type(args) is dict else None
        self.attempts = 0
        self.retries = 0
        self.timeout_retries = 0  # attempts that timed out and were resent (the ladder)
        self.last_error: WireError | None = None

    def _error(self, err: WireError) -> MoorageError:
        return MoorageError(err, op=self.op, actor=self.actor, attempts=self.attempts)

    def done(self, now: float, reply: Reply | None = None,
             error: MoorageError | WireError | None = None) -> Done:
        """The call is over: its client time is recorded once, whatever the outcome, and an
        error as the caller's or the service's by the error table (as the actors count theirs)."""
        if error is None:
            self.core.latency.record(self.actor, self.op, int((now - self.started) * 1e6),
                                     reply is not None and reply.ok)
            return Done(reply, None)
        if isinstance(error, WireError):
            error = self._error(error)
        self.core.latency.record(self.actor, self.op, int((now - self.started) * 1e6), False,
                                 fault_of(error.name) is Fault.CALLER)
        return Done(reply, error)

    def start(self, now: float) -> Done | Wait:
        """Before the first send: the breaker may refuse at once, and so is a frame no actor
        takes (its socket drops the connection on one over MAXMSGSIZE, which would end the
        call outcome_unknown although it cannot have run), and any call once the client saw
        its tree ended (`not_running`, until a tree holds the instance again)."""
        frames = self.frames
        if len(frames) > 3 or len(frames[2]) > limits.MAX_MESSAGE_SIZE:
            big = max(len(f) for f in frames[2:])
            if big > limits.MAX_MESSAGE_SIZE:
                return self.done(now, error=WireError.of(
                    "message_too_large", f"a frame of {big} bytes, over the "
                    f"{limits.MAX_MESSAGE_SIZE} an actor takes (MAXMSGSIZE): not sent"))
        core = self.core
        if core.gone_since is not None and core.tree_gone():
            # (the tree was seen ended, and no other has taken the instance since: nothing
            # can answer, and a call not safe to repeat would wait its whole budget)
            return self.done(now, error=core.not_running())
        br = core.breaker(self.actor)
        # A closed breaker allows without changing (CircuitBreaker.allow): asked only when not.
        if br.state is not _CLOSED and not br.allow(now):
            return self.done(now, error=WireError.of(
                "circuit_open", f"{self.actor}: breaker {br.state.value}",
                retry_after_ms=refusal_retry_after_ms(br, now)))
        self.attempts += 1
        return Wait(self.attempt_deadline(now))

    def attempt_timeout(self) -> float:
        """This attempt's wait: the configured one, doubled per attempt that timed out."""
        return self.core.options.attempt_timeout * (1 << self.timeout_retries)

    def attempt_deadline(self, now: float) -> float:
        """The ladder's attempts are resent when they time out; past them (and for a call
        that may not be resent at all) the attempt lasts to the call's deadline."""
        if (self.idempotent or self.pin is not None) and self.timeout_retries < TIMEOUT_RETRIES:
            return min(self.deadline, now + self.attempt_timeout())
        return self.deadline

    def unpin(self, wait: Wait, now: float) -> Wait | Resend | Done:
        """A drop was told right after this call was sent, and may be older than the send.
        On ipc the life its pin names is gone then, and a resend pinned to it would be
        refused `outcome_unknown` by the successor the call went to, where it may run: not
        pinned, it has one attempt, to its deadline (`wait` the attempt's wait until now).
        A pinned resend, and any pinned call over tcp (where the actor may well live on, and
        a pinned resend is answered once by that life or refused by a successor), takes the
        drop as section 10 says."""
        if self.pinned_by is not None or (self.pin is not None and self.core.remote is not None):
            return self.on_disconnect(now)
        if self.pin is None:
            return wait
        self.pin = None
        return Wait(self.deadline)

    def _pin(self, why: str) -> None:
        """From now on the frames carry `ep`: only the life they may have run in may take
        them (its reply cache knows the id); any other refuses them `outcome_unknown`."""
        if self.pinned_by is None:
            assert self.pin is not None
            self.frames = pin_request(self.frames, self.pin)
            self.pinned_by = why

    def on_reply(self, reply: Reply, now: float) -> Done | Resend:
        core, actor = self.core, self.actor
        br = core.breaker(actor)
        # Any reply proves the actor alive; a closed breaker with no failures counted is
        # already where a success would put it.
        if br.failures or br.state is not _CLOSED:
            br.record_success(now)
        if core.epochs.get(actor) != reply.epoch:
            core.note_epoch(actor, reply.epoch)
        if core.reply_check is not None:  # only where the tests turned it on (live.py)
            core.reply_check(actor, self.op, reply)
        if reply.ok:
            return self.done(now, reply=reply)
        err = WireError.from_wire(reply.body)
        if self.pinned_by == "drop" and err.name == "outcome_unknown":
            # (the life that answered says why; the caller hears first what happened here)
            err = WireError.of(
                "outcome_unknown", f"{self.actor}'s connection dropped while {self.op} was "
                f"in flight; {err.message}", detail=self._detail(err.detail))
        self.last_error = err
        may_retry = err.name in NOT_RUN or (self.idempotent and err.retryable)
        if may_retry and self.retries < max_retries_for(err):
            delay = self.core.options.backoff.delay(self.retries)
            if err.retry_after_ms is not None:
                delay = max(delay, err.retry_after_ms / 1000)
            if now + delay < self.deadline:
                self.retries += 1
                if err.name in RENEWED:
                    self.renew()
                return Resend(delay)
        return self.done(now, error=err)

    def renew(self) -> None:
        """Make the resend a new request: a fresh id, the same deadline, not pinned (the
        refused id ran nothing, so no life holds an effect of it), and pinned from then on
        to the life known now, as a first send is. The adapter waits for the new id."""
        core = self.core
        self.id = rid = next(core._ids)
        self.frames = encode_request(rid, core.sid, self.op, self.args, self.deadline_ms,
                                     self.attachments)
        self.pinned_by = None
        self.pin = None if self.idempotent or self.resumable else core.epochs.get(self.actor)

    def on_tree_gone(self, now: float) -> Done | None:
        """The call's end when the tree it went to has ended (ClientCore.tree_gone), else
        None: `not_running` for a call safe to repeat, or begun after the tree was seen gone
        (no tree received it); one that may have run there before it ended is
        `outcome_unknown`, as it would be at its deadline."""
        core = self.core
        if not core.tree_gone():
            return None
        gone_since = core.gone_since
        if self.idempotent or self.resumable or (gone_since is not None
                                                 and self.started >= gone_since):
            return self.done(now, error=core.not_running())
        return self.done(now, error=WireError.of(
            "outcome_unknown", f"the moorage tree in {core.runtime_dir} ended while {self.op} "
            "was in flight; it may or may not have run", detail=self._detail(None)))

    def on_timeout(self, now: float) -> Done | Resend:
        """The attempt's wait ran out with no reply."""
        if (gone := self.on_tree_gone(now)) is not None:
            # (a half-open breaker's probe given back: it told nothing of the actor, and a
            # tree started again must not find it out, refusing calls circuit_open)
            self.core.breaker(self.actor).give_back()
            return gone
        self.core.breaker(self.actor).record_failure(now)
        self.last_error = None  # (the last attempt was not answered)
        if now >= self.deadline:
            if self.idempotent:
                err = WireError.of("timeout", f"no reply in {self.timeout:.3g}s "
                                   f"({self.attempts} attempts)")
            else:
                err = WireError.of("outcome_unknown", f"no reply in {self.timeout:.3g}s; the "
                                   "request may or may not have run")
            return self.done(now, error=err)
        if not self.idempotent:
            if self.pin is None:
                return self.done(now, error=WireError.of("outcome_unknown", "no reply"))
            # Lost on the way, or still running: either way its life answers the pinned
            # frames once (the reply cache, or the call it joins).
            self._pin("timeout")
            self.retries += 1
            self.timeout_retries += 1
            return Resend(0.0)
        self.retries += 1
        self.timeout_retries += 1
        return Resend(min(self.core.options.backoff.delay(self.retries - 1),
                          max(0.0, self.deadline - now)))

    def on_disconnect(self, now: float) -> Resend | Done:
        """The actor's connection dropped: idempotent calls are resent at once, and wait in
        the socket's queue until the actor is reachable again (a resumable op too: its
        successor answers the same id). A non-idempotent call may have run: over tcp the
        link may have dropped under a live actor, so it is resent pinned to the life it went
        to, when known (that life answers it, a successor refuses it); on ipc a connection
        drops only when the actor's process ends, so it ends now with `outcome_unknown`
        rather than at its deadline. The detail says which epoch it went to and, for a call
        naming a session, which session to look at."""
        self.core.breaker(self.actor).give_back()
        self.last_error = None  # (the last attempt was not answered)
        if (gone := self.on_tree_gone(now)) is not None:
            return gone
        if self.idempotent or self.resumable:
            return Resend(0.0)
        if self.pin is not None and self.core.remote is not None:
            self._pin("drop")
            return Resend(0.0)
        return self.done(now, error=WireError.of(
            "outcome_unknown", f"{self.actor}'s connection dropped while {self.op} was in "
            "flight; it may or may not have run", detail=self._detail(None)))

    def _detail(self, told: dict[str, Any] | None) -> dict[str, Any]:
        """outcome_unknown's detail: the epoch the call went to, the one that answered (None
        if none did), its id and the session it names; what the actor `told` is kept."""
        detail: dict[str, Any] = {"old_epoch": self.pin or self.core.heard.get(self.actor),
                                  "new_epoch": None, "request_id": self.id, **(told or {})}
        if self.session is not None:
            detail["session"] = self.session
        return detail

    def on_refused(self, now: float) -> Done:
        """The tree refused this client's key at the CURVE handshake while the call waited
        (remote mode): no attempt with this key can reach the actor, so the call ends now,
        not at its deadline (the adapter names it `unauthorized`). A non-idempotent one
        may have run on a connection made before the key was revoked: `outcome_unknown`."""
        self.core.breaker(self.actor).give_back()
        name = "timeout" if self.idempotent else "outcome_unknown"
        return self.done(now, error=WireError.of(
            name, f"no reply: the tree refused this client's key ({self.attempts} attempts)"))

    def on_closed(self, now: float) -> Done:
        """The client was closed while the call waited: waiting out a back-off after a
        refusal (nothing of it runs) it is `cancelled`; in flight, `timeout` (idempotent) or
        `outcome_unknown`, as for any attempt left unanswered."""
        last = self.last_error
        if last is not None:
            return self.done(now, error=WireError.of(
                "cancelled", f"the client was closed before {self.op} was sent again "
                f"({self.attempts} attempts; the last was answered {last.name}: "
                f"{last.message})"))
        self.core.breaker(self.actor).give_back()
        why = f"no reply: the client was closed ({self.attempts} attempts)"
        if self.idempotent:
            return self.done(now, error=WireError.of("timeout", why))
        return self.done(now, error=WireError.of("outcome_unknown", why,
                                                 detail=self._detail(None)))

    def resend(self, now: float) -> Done | Wait:
        """Send again, if the breaker lets it (a pinned resend is not asked). This call was
        sent, so a refusal ends it with its own outcome, never `circuit_open` ("not sent"):
        the error its last attempt was answered with (busy, a retryable error), else, its
        last attempt unanswered, `timeout` (idempotent) or `outcome_unknown` (it may have
        run: a resumable call whose connection dropped)."""
        br = self.core.breaker(self.actor)
        if self.pinned_by is None and not br.allow(now):
            if self.last_error is not None:
                return self.done(now, error=self.last_error)
            why = (f"not sent again: {self.actor}'s breaker is {br.state.value} "
                   f"({self.attempts} attempts in {now - self.started:.3g}s)")
            if self.idempotent:
                return self.done(now, error=WireError.of("timeout", f"no reply; {why}"))
            return self.done(now, error=WireError.of(
                "outcome_unknown", f"no reply; the request may or may not have run; {why}",
                detail=self._detail(None)))
        self.attempts += 1
        self.last_error = None  # (sent again: its last attempt is not answered yet)
        return Wait(self.attempt_deadline(now))


def declared_timeouts(ops: Any) -> dict[str, float]:
    """op -> seconds, from sys.info's `ops` (`timeout_ms`, a positive int; anything else is
    left out, and the op's calls get the client's timeout)."""
    if not isinstance(ops, dict):
        return {}
    return {name: d["timeout_ms"] / 1000 for name, d in ops.items()
            if isinstance(name, str) and isinstance(d, dict)
            and type(d.get("timeout_ms")) is int and d["timeout_ms"] > 0}


def refusal_retry_after_ms(br: CircuitBreaker, now: float) -> int:
    """The `retry_after_ms` of a call the breaker refused before its first send (PROTOCOL.md
    section 11): while open, the cooldown left; while half-open (its probe is out), the
    breaker's current cooldown, by when the probe has most likely closed it or opened it
    again. Never 0: a caller that honours it must not retry in a tight loop."""
    left = br.retry_after(now) if br.state is BreakerState.OPEN else br.cooldown
    return max(1, math.ceil(left * 1000))


class ClientCore:
    """Session identity, request ids, breakers, socket options, client-side latency (and its
    pusher, which the adapter starts with its context and stops before terminating it)."""

    def __init__(
        self,
        runtime_dir: Path | str | None = None,
        *,
        instance: str | None = None,
        sid: str | None = None,
        options: ClientOptions | None = None,
        remote: RemoteTarget | None = None,
    ) -> None:
        # Given a tcp target (remote mode), the client connects over tcp with CURVE to the
        # endpoints its connection file names, and never looks for a local tree.
        self.remote = remote
        # When a look at the instance lock first found the tree ended (tree_gone; None while
        # it runs): a call begun after it can have reached no tree.
        self.gone_since: float | None = None
        # Given a directory, the client connects there whatever runs (a tree may come up
        # later), unless it is one this user must not trust (`forbidden`); given an instance
        # (or nothing), it finds the running tree or raises `not_running` now (connection.py).
        self.connection: Connection | None = None
        if remote is not None:
            self.runtime_dir = Path(remote.runtime_dir or ".")  # the tree's, on its host
        elif runtime_dir:
            self.runtime_dir = Path(runtime_dir)
            check_runtime_dir(self.runtime_dir)
        else:
            self.connection = locate(instance)
            self.runtime_dir = self.connection.runtime_dir
        self.sid = sid or f"{os.getpid()}-{secrets.token_hex(6)}"
        self.options = options or ClientOptions()
        if self.options.metrics_name is not None and remote is not None \
                and "in" not in remote.endpoints.get("metrics", {}):
            raise MoorageError(WireError.of("bad_args", "metrics_name: the tree's connection "
                                            "file names no tcp endpoint for metrics.in"))
        if self.options.metrics_name is not None:
            check_metrics_name(self.options.metrics_name)  # fail at construction, not later
        self._ids = itertools.count(1)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.latency = LatencyBook(pushing=self.options.metrics_name is not None)
        self.pusher: LatencyPusher | None = None
        # The epoch each actor last answered with, forgotten when its connection drops (a
        # call made then is not pinned to a life that may be gone); `heard` keeps it.
        self.epochs: dict[str, str] = {}
        self.heard: dict[str, str] = {}
        self.ended: dict[str, str] = {}  # ipc: the life of each actor a drop ended
        self.superseded: dict[str, str] = {}  # ipc: a life a newer one answered after
        self.learned: dict[str, frozenset[str]] = {}  # actor -> its idempotent ops (sys.info)
        self.resumable: dict[str, frozenset[str]] = {}  # ... and its resumable ones
        self.op_timeouts: dict[str, dict[str, float]] = {}  # ... and each op's timeout, s
        self.restarts_seen: dict[str, int] = {}
        # Every reply held against protocol/schema/ops.json, when $MOORAGE_SCHEMA_CHECK says so
        self.reply_check: ReplyCheck | None = reply_check_from_env()

    def next_id(self) -> int:
        return next(self._ids)

    def should_learn(self, actor: str, op: str, idempotent: bool | None) -> bool:
        """Is this the first call to `actor` of an op whose idempotency only it can tell?"""
        return (idempotent is None and self.options.learn_ops and actor not in self.learned
                and op not in BUILTIN_IDEMPOTENT and op not in self.options.idempotent_ops)

    def known_idempotent(self, actor: str) -> frozenset[str]:
        """The ops of `actor` known to be idempotent: what its sys.info said, once learned;
        until then the schema's (ops.json), so that a read-only call to an actor that cannot
        answer sys.info now (restarting, crash-looping, stopped) is still resent and ends
        `timeout`, not `outcome_unknown`. The actor's own table wins: it may be another
        build, or an actor outside the default tree that serves an op of the same name."""
        return self.learned.get(actor, SCHEMA_IDEMPOTENT)

    def learning_share(self, timeout: float | None) -> float:
        """The most a call given `timeout` (None: the client's) waits for its actor's ops to
        be learned before it is sent: LEARN_SHARE of its time."""
        return LEARN_SHARE * (timeout if timeout is not None else self.options.timeout)

    def left_after_learning(self, actor: str, op: str, timeout: float | None, started: float,
                            share: float) -> float:
        """A call's own time once its wait for learning, begun at `started` (monotonic), is
        over: its whole time (given no timeout, its op's own, which learning may just have
        told) less that wait, and never less than its whole time less its `share`. A wait
        longer than the share is not the learning's (which ends within it) but a loop too
        busy to turn (a burst of first calls): charged to the call, it could leave the call
        a millisecond, too little for any reply, and a burst of writes would end unanswered."""
        whole = timeout if timeout is not None else self.call_timeout(actor, op)
        return max(0.001, whole - min(share, _monotonic() - started))

    def after_learning(self, actor: str, op: str, timeout: float | None,
                       learn: Callable[[float], object]) -> float:
        """Run `learn` within a share of the call's time; what is left is the call's
        (left_after_learning)."""
        started = _monotonic()
        share = self.learning_share(timeout)
        learn(share)
        return self.left_after_learning(actor, op, timeout, started, share)

    def call_timeout(self, actor: str, op: str) -> float:
        """The time of a call of `op` given none: the op's declared `timeout_ms` (sys.info,
        run-time overrides included, as learned) plus TRIP_MARGIN, at most MAX_OP_TIMEOUT,
        when that is longer than the client's `timeout`; else the client's (no call ends
        sooner than the client was told: a busy machine's sys.info may take seconds)."""
        declared = self.op_timeouts.get(actor, {}).get(op)
        if declared is None:
            return self.options.timeout
        return max(self.options.timeout, min(declared + TRIP_MARGIN, MAX_OP_TIMEOUT))

    def learn(self, actor: str, info: Any) -> frozenset[str]:
        """Take the idempotent ops from a sys.info reply (PROTOCOL.md section 10)."""
        ops = info.get("ops") if isinstance(info, dict) else None
        known = frozenset(name for name, d in (ops or {}).items()
                          if isinstance(name, str) and isinstance(d, dict) and d.get("idempotent"))
        self.learned[actor] = known
        self.resumable[actor] = frozenset(
            name for name, d in (ops or {}).items()
            if isinstance(name, str) and isinstance(d, dict) and d.get("resumable"))
        self.op_timeouts[actor] = declared_timeouts(ops)
        return known

    def replay_timeout(self, end: float | None) -> float | None:
        """The time of one replay page asked for by a subscription's `next()` that must return
        by `end` (monotonic; None: no bound, the client's timeout): what is left of it, never
        more than a call's timeout, and at least one attempt's, so that a caller polling with
        `next(timeout=0)` still gets a gap repaired rather than reported lost."""
        if end is None:
            return None
        opts = self.options
        return min(opts.timeout, max(opts.attempt_timeout, end - _monotonic()))

    def tree_gone(self) -> bool:
        """Has the tree this client found (by its instance: `locate`) ended, its instance lock
        free? Looked at only when a call's attempt went unanswered or its connection dropped:
        a call then ends `not_running` (the tree will not answer it; an editor polling a
        stopped tree learned it only at each call's whole budget, as `unavailable`). A client
        given a directory, which waits for a tree to come up there, and a remote one never
        take a tree for gone."""
        if self.connection is None or self.remote is not None:
            return False
        try:
            gone = tree_pid(self.runtime_dir) is None
        except MoorageError:  # (a lock not to be trusted: no tree seen ended, from now on)
            self.gone_since = None
            return False
        if not gone:
            self.gone_since = None
        elif self.gone_since is None:
            self.gone_since = _monotonic()
        return gone

    def not_running(self) -> WireError:
        return WireError.of("not_running", f"the moorage tree in {self.runtime_dir} has ended "
                            "(its instance lock is free); start one with `moorage up`")

    def breaker(self, actor: str) -> CircuitBreaker:
        b = self.breakers.get(actor)
        if b is None:
            b = self.breakers[actor] = CircuitBreaker(
                self.options.breaker_threshold, self.options.breaker_cooldown)
        return b

    def note_epoch(self, actor: str, epoch: str) -> None:
        """A new epoch in a reply: the actor restarted since we last heard from it, and what
        was in flight to its predecessor may not have run (PROTOCOL.md, section 8)."""
        if not epoch:
            return
        if self.ended.get(actor) != epoch:
            current = self.epochs.get(actor)
            if current is not None and current != epoch:
                # (a newer life answered before the older one's drop was told: the drop,
                # when it is, ends the older one, not this)
                self.superseded[actor] = current
            self.epochs[actor] = epoch
        old = self.heard.get(actor)
        if old != epoch:
            if old is not None:
                self.restarts_seen[actor] = self.restarts_seen.get(actor, 0) + 1
            self.heard[actor] = epoch

    def dropped(self, actor: str) -> None:
        """`actor`'s connection dropped. On ipc its process ended (a connection drops with
        the process): the life that answered last is gone (unless a newer one answered
        before the drop was told: the drop is the older one's), a call pinned to it would be
        refused by its successor, and a reply of it read after the drop was told was sent
        before it and does not make its epoch known again. Over tcp a drop says nothing of
        the actor's life (a relay, the network): its epoch stays known (section 10)."""
        if self.remote is not None:
            return
        older = self.superseded.pop(actor, None)
        if older is not None:
            self.ended[actor] = older
            return
        epoch = self.epochs.pop(actor, None)
        if epoch is not None:
            self.ended[actor] = epoch

    def late_reply(self, actor: str, now: float) -> None:
        """A reply no call waits for (its call ended before it came): the actor answered,
        which its breaker counts as a success as any reply (PROTOCOL.md section 11)."""
        br = self.breakers.get(actor)
        if br is not None and (br.failures or br.state is not _CLOSED):
            br.record_success(now)

    def record_call(self, actor: str, op: str, seconds: float, ok: bool,
                    caller: bool = False) -> None:
        self.latency.record(actor, op, int(seconds * 1e6), ok, caller)

    def latency_report(self) -> list[dict[str, Any]]:
        """End-to-end latency per (actor, op) as this client saw it, over its life:
        [{actor, op, ok, error, count, p50, p90, p99, p999, max}], microseconds, retries and
        waits for a restarted actor included."""
        return self.latency.report()

    def start_pusher(self, ctx: zmq.Context) -> None:
        """With `metrics_name` set, start pushing on a socket of `ctx` (an asyncio context is
        shadowed: the pusher sends on a plain socket, from its thread and from calls)."""
        name = self.options.metrics_name
        if name is None or self.pusher is not None:
            return
        if type(ctx) is not zmq.Context:
            ctx = zmq.Context.shadow(ctx.underlying)
        self.pusher = LatencyPusher(self.latency, ctx,
                                    lambda sock: self.endpoint(sock, "metrics", "in"), name,
                                    self.sid, self.options.metrics_interval)

    def push_latency(self) -> int:
        """Push what was recorded since the last push now; the number of messages sent
        (0 when pushing is off or nothing is pending)."""
        return 0 if self.pusher is None else self.pusher.push_now()

    def close(self) -> None:
        """Stop the pusher (after one last push); before the context is terminated."""
        if self.pusher is not None:
            self.pusher.close()
            self.pusher = None

    def configure_dealer(self, sock: zmq.Socket, actor: str) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, self.options.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.options.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_SIZE)
        sock.setsockopt(zmq.SNDHWM, limits.HWM)
        sock.setsockopt(zmq.RCVHWM, limits.HWM)
        sock.connect(self.endpoint(sock, actor, "rpc"))

    def configure_sub(self, sock: zmq.Socket, actor: str, topics: Sequence[str],
                      rcvhwm: int | None = None) -> None:
        """`rcvhwm`: the subscription's queue, in messages (None: `stream_hwm`), set before
        the connect: libzmq gives a connection the high-water mark set when it is made."""
        if rcvhwm is not None and (type(rcvhwm) is not int or rcvhwm < 0):
            raise MoorageError(WireError.of(
                "bad_args", f"{actor}: rcvhwm must be a count of messages (0: no bound), "
                f"not {rcvhwm!r:.40}"))
        encoded = [t.encode() for t in topics or [""]]
        for t in encoded:
            # The publisher closes a connection that subscribes a longer topic, and the SUB
            # would resend it at each reconnect: every topic of the socket lost for good.
            if len(t) > limits.MAX_TOPIC_LEN:
                raise MoorageError(WireError.of(
                    "bad_args", f"{actor}: a topic of {len(t)} bytes (at most "
                    f"{limits.MAX_TOPIC_LEN}): {t[:40].decode(errors='replace')!r}..."))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, self.options.reconnect_ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.options.reconnect_ivl_max_ms)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.MAX_MESSAGE_SIZE)
        sock.setsockopt(zmq.RCVHWM, self.options.stream_hwm if rcvhwm is None else rcvhwm)
        for t in encoded:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        sock.connect(self.endpoint(sock, actor, "pub"))

    def endpoint(self, sock: zmq.Socket, actor: str, kind: str) -> str:
        """Where `actor`'s `kind` socket (rpc, pub; the metrics actor's `in` too) is: its ipc
        path in the runtime dir, or in remote mode its tcp endpoint, with `sock` made a CURVE
        client first."""
        if self.remote is None:
            if kind == "in":
                return endpoints.metrics_in(self.runtime_dir)
            return endpoints.rpc(self.runtime_dir, actor) if kind == "rpc" \
                else endpoints.pub(self.runtime_dir, actor)
        try:
            endpoint = self.remote.endpoint(actor, kind)
        except LookupError as exc:
            raise MoorageError(WireError.of("bad_args", str(exc))) from None
        secure_client(sock, self.remote.server_key, self.remote.client, endpoint)
        sock.setsockopt(zmq.SNDTIMEO, 0)  # see aio._raise_failure
        return endpoint

    def failed(self, exc: MoorageError, key_refused: bool) -> MoorageError:
        """What a call that ended with `exc` raises: `unauthorized` when its connection's last
        handshake was refused by the tree (remote mode, the monitor's HANDSHAKE_FAILED_AUTH)
        and the call got no reply, else `exc`."""
        if not key_refused or self.remote is None:
            return exc
        return unauthorized(exc, self.remote.client.public)


SocketT = TypeVar("SocketT", bound=zmq.Socket)


def closed_on_error(sock: SocketT, configure: Callable[[], None], actor: str, role: str,
                    op: str) -> SocketT:
    """`sock` once `configure` ran; closed if it raised (an ipc path too long, an actor the
    connection file does not name): a socket left open would hold the context's term().
    ZeroMQ's refusal of the endpoint is `bad_args`: the caller named what cannot be reached."""
    try:
        configure()
    except zmq.ZMQError as exc:
        sock.close(0)
        raise MoorageError(WireError.of(
            "bad_args", f"{actor}: no {role} socket to connect to: {exc}"),
            op=op, actor=actor, attempts=0) from None
    except BaseException:
        sock.close(0)
        raise
    return sock


_monitor_ids = itertools.count(1)


def watched(sock: SocketT, events: int | None, configure: Callable[[], None], actor: str,
            role: str, op: str) -> tuple[SocketT, Any]:
    """`sock` configured (closed_on_error) with a monitor of `events` (None: none) started
    before its connect, so that no handshake goes untold (LinkLog); each monitor at an inproc
    address of its own (pyzmq's default names it after the socket's descriptor, which a
    socket made while a closed one's monitor is still being let go may reuse: EADDRINUSE)."""
    monitor = None
    if events is not None:
        try:
            monitor = sock.get_monitor_socket(
                events, f"inproc://moorage.monitor-{os.getpid()}-{next(_monitor_ids)}")
        except BaseException:
            sock.close(0)
            raise
    try:
        closed_on_error(sock, configure, actor, role, op)
    except BaseException:
        if monitor is not None:
            monitor.close(0)
        raise
    return sock, monitor


def stream_socket(core: ClientCore, ctx: Any, actor: str, topics: Sequence[str],
                  rcvhwm: int | None = None) -> tuple[Any, Any, str]:
    """A subscription's SUB to `actor`, configured and connected, with, over tcp, its monitor
    (watched from before its connect: a key the tree refused ends the subscription, the
    link's drops and returns are told; on ipc a drop is the publisher's end, which its
    successor's Reset tells), and the endpoint it connected to. For the blocking and the
    asyncio subscriptions alike (`ctx` either's context)."""
    sock = ctx.socket(zmq.SUB)
    sock, monitor = watched(
        sock, stream_monitor_events() if core.remote is not None else None,
        lambda: core.configure_sub(sock, actor, topics, rcvhwm), actor, "pub", "subscribe")
    return sock, monitor, sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def closed_client(actor: str, op: str) -> MoorageError:
    """A call or a subscription on a client already closed: refused, not sent."""
    return MoorageError(WireError.of("cancelled", f"the client is closed: {op} to {actor} not "
                                     "sent"), op=op, actor=actor, attempts=0)


def monitor_events() -> int:
    """A DEALER's monitor: connections made (their handshake then under way: LinkLog); drops;
    handshakes made (ipc's NULL mechanism reports them too); HANDSHAKE_FAILED_AUTH, only over
    tcp, where the tree's ZAP handler judges our key; the other failed handshakes (a
    connection made and ended before it got in: a wrong server key); MONITOR_STOPPED, the
    last event of a closed socket (Undelivered)."""
    return zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED \
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH | _ENDED_EARLY | zmq.EVENT_MONITOR_STOPPED


def stream_monitor_events() -> int:
    """A remote subscription's monitor: its link dropping, coming back, or its key refused."""
    return zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED \
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH


_ENDED_EARLY = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
# How long a client waits for a closed socket's last monitor event (MONITOR_STOPPED, sent
# once libzmq has let the socket go: milliseconds) before it gives up telling whether a call
# was delivered; past it the call keeps the error it ended with.
UNDELIVERED_CHECK = 2.0
# The errors of a call that got no reply, which may have been delivered or not.
NO_REPLY_SENT = frozenset({"timeout", "outcome_unknown"})


class LinkLog:
    """What a socket's monitor told of its connections. libzmq sends nothing on a connection
    before its handshake has completed (the ZMTP greeting and, over tcp, CURVE's), and says
    HANDSHAKE_SUCCEEDED before it sends anything, on ipc as on tcp: while `succeeded` is 0,
    nothing the socket was given has left it. `ended_early` counts the connections made that
    ended before their handshake (a CURVE server that cannot read our HELLO, for a server
    key that is not its own, closes it; so does a port where something else listens).
    `handshaking`: a connection is made (CONNECTED, where the monitor asks for it) and its
    handshake has neither completed nor failed yet."""

    __slots__ = ("ended_early", "handshaking", "refused", "succeeded", "up")

    def __init__(self) -> None:
        self.succeeded = 0
        self.ended_early = 0
        self.handshaking = False
        self.refused = False  # the last handshake: the tree refused our key (tcp only)
        self.up = False  # a connection is made (as the events read so far tell)

    def note(self, event: int) -> str | None:
        """Take one event; say what changed for a reader of a stream: "dropped" (a link that
        was up went down), "back" (up again after a drop), "refused" (the key), or None."""
        if event == zmq.EVENT_CONNECTED:
            self.handshaking = True
            return None
        if event != zmq.EVENT_MONITOR_STOPPED:  # (each other event ends a handshake or a link)
            self.handshaking = False
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.succeeded += 1
            self.refused = False
            self.up = True
            return "back" if self.succeeded > 1 else None
        if event == zmq.EVENT_DISCONNECTED:
            was, self.up = self.up, False
            return "dropped" if was else None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refused = True
            return "refused"
        if event & _ENDED_EARLY:
            self.ended_early += 1
        return None

    def may_get_in(self) -> bool:
        """Is a connection's handshake under way, with none before it ended early? It may
        yet complete (a CURVE handshake is some three round trips: over a link with 200 ms
        each way, longer than a replay page's 1 s), and what the socket holds then leaves
        with it. A call that got no reply meanwhile is not told undelivered: that would
        close the socket and throw the handshake away, and the next call's connection would
        start over, as slow: on such a link no call would ever get through. A connection
        that ended early (a stale server key) or none made (a tree down) is no such hope."""
        return self.handshaking and not self.ended_early


def undelivered(exc: MoorageError, endpoint: str, log: LinkLog, remote: bool) -> MoorageError:
    """The error of a call that got no reply (`exc`: timeout, outcome_unknown) on a socket
    on which no handshake ever completed, now closed (its queue, the request with it, gone)
    and its last monitor event read: nothing of it left this client, so it did not run. A
    call that may not be repeated ends `unavailable` (retryable: "not run"), never
    `outcome_unknown`; an idempotent one keeps `timeout`, told the same. Either names the
    endpoint and what the monitor saw; over tcp, that the connection file's server_key may
    be stale (a CURVE server that cannot read our handshake ends the connection:
    `ended_early`)."""
    stale = ("the connection file's server_key is likely stale (the tree's keys were remade: "
             "compare it with `moorage keys list` on the tree's host), or what listens there "
             "is not this tree")
    if log.ended_early:
        why = f"{log.ended_early} connection(s) ended before it" + (f": {stale}" if remote
                                                                     else "")
    elif remote:
        why = ("the tree is down, not reachable from here or not answering (or the connection "
               "file's server_key is stale: compare it with `moorage keys list` on the tree's "
               "host)")
    else:
        why = "the actor is not running there, or not answering"
    told = (f"nothing was delivered to {exc.actor} at {endpoint}: no connection there "
            f"completed its handshake; {why}")
    detail = {"delivered": False, "endpoint": endpoint, "ended_early": log.ended_early}
    if exc.error.name == "timeout":
        err = WireError.of("timeout", f"{exc.error.message}; {told}", detail=detail)
    else:
        err = WireError.of("unavailable", f"{exc.op} did not run: {told}",
                           detail={**detail, "instead_of": exc.error.name})
    out = MoorageError(err, op=exc.op, actor=exc.actor, attempts=exc.attempts,
                       extra=exc.extra)
    out.__cause__ = exc
    return out


def stream_refused(actor: str, endpoint: str, client_public: bytes) -> MoorageError:
    """What a remote subscription's `next()` raises once the tree refused its key at the
    CURVE handshake of its stream socket: `unauthorized`, as a call on a refused connection."""
    key = client_public.decode()
    return MoorageError(WireError.of(
        "unauthorized",
        f"the tree refused this client's key {key} at the CURVE handshake of {actor}'s "
        f"stream ({endpoint}): allow it on the tree's host with `moorage keys allow '{key}'`, "
        "then subscribe from a new client (this subscription's connection is not tried "
        "again); what it delivered before is all it will"), op="subscribe", actor=actor,
        attempts=0)


# What a call that got no reply can end with; when the tree refused this client's key, that
# refusal is the reason, and `unauthorized` replaces it.
NO_REPLY = frozenset({"timeout", "outcome_unknown", "circuit_open"})


def unauthorized(exc: MoorageError, client_public: bytes) -> MoorageError:
    """The error of a call that got no reply (`exc`: timeout, outcome_unknown, circuit_open)
    while the last CURVE handshake of its connection was refused by the tree's ZAP handler:
    `unauthorized`, naming the key to allow, since a retry with the same key cannot help.
    Any other error (an actor's reply) is returned as it is. The original message and detail
    are kept (an outcome_unknown's "may or may not have run" still holds)."""
    if exc.error.name not in NO_REPLY:
        return exc
    key = client_public.decode()
    err = WireError.of(
        "unauthorized",
        f"the tree refused this client's key {key} at the CURVE handshake: allow it on the "
        f"tree's host with `moorage keys allow '{key}'`, then make a new client (this "
        f"one's connection is not tried again) ({exc.error.name}: "
        f"{exc.error.message})", detail=exc.error.detail)
    out = MoorageError(err, op=exc.op, actor=exc.actor, attempts=exc.attempts,
                       extra=exc.extra)
    out.__cause__ = exc
    return out
