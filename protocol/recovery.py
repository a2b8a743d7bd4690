"""The seed's recovery matrix as data, and the pure policies built on it.

One table, read by the client (how often to retry, what to fall back to), by the actors (what
a failure of theirs means) and by the supervisor (what to announce). Policies take the clock
as an argument so their tests need no waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from moorage.protocol.errors import Category, Severity, WireError


@dataclass(frozen=True, slots=True)
class Recovery:
    category: Category
    severity: Severity
    primary: str
    fallback: str | None
    max_retries: int | None  # None: not a retry strategy (throttle, degrade)


_C, _S = Category, Severity

MATRIX: tuple[Recovery, ...] = (
    Recovery(_C.TERMINAL, _S.CRITICAL, "recreate_terminal", "alert_user", 1),
    Recovery(_C.TERMINAL, _S.RECOVERABLE, "retry_command", "raw_output_mode", 3),
    Recovery(_C.FILESYSTEM, _S.CRITICAL, "alert_user", None, 0),
    Recovery(_C.FILESYSTEM, _S.RECOVERABLE, "retry_with_backoff", "cache_previous", 3),
    Recovery(_C.NETWORK, _S.CRITICAL, "reconnect_ipc", "local_mode", 5),
    Recovery(_C.NETWORK, _S.RECOVERABLE, "retry_request", "queue_for_later", 3),
    Recovery(_C.PARSER, _S.CRITICAL, "reset_parser_state", "skip_markers", 0),
    Recovery(_C.PARSER, _S.RECOVERABLE, "buffer_and_retry", "raw_passthrough", 1),
    Recovery(_C.RESOURCE, _S.CRITICAL, "free_resources", "graceful_shutdown", 0),
    Recovery(_C.RESOURCE, _S.RECOVERABLE, "throttle_operations", "reduce_quality", None),
    Recovery(_C.TIMEOUT, _S.RECOVERABLE, "increase_timeout", "cancel_operation", 2),
)

_INDEX = {(r.category, r.severity): r for r in MATRIX}


def recovery_for(category: str, severity: str) -> Recovery | None:
    """The matrix row for a classification, or None where the seed gives no strategy."""
    try:
        return _INDEX.get((Category(category), Severity(severity)))
    except ValueError:
        return None


def max_retries_for(error: WireError) -> int:
    """How many times a client may retry an idempotent request that failed with `error`."""
    if not error.retryable:
        return 0
    row = recovery_for(error.category, error.severity)
    if row is None or row.max_retries is None:
        # Throttling rows (resource/recoverable) have no count: the caller is told to wait
        # retry_after_ms; we still bound it so a caller never loops for ever.
        return 3
    return row.max_retries


# --- back-off -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential back-off: initial * factor**n, at most `cap`, with optional jitter.

    `jitter` is the fraction of each delay that is randomised (0 gives exact delays, which the
    supervisor uses so a restart schedule is predictable and testable).
    """

    initial: float = 0.01
    factor: float = 2.0
    cap: float = 2.0
    jitter: float = 0.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (0 for the first retry)."""
        if attempt < 0:
            return 0.0
        d = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        if self.jitter:
            r = (rng or random).random()
            d = d * (1 - self.jitter) + d * self.jitter * r
        return d


# --- circuit breaker -----------------------------------------------------------------------


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per-actor breaker (seed 4.1): stop sending to an actor that keeps failing, probe later.

    closed -> open after `threshold` consecutive transport failures (timeouts, unavailable);
    open -> half_open once `cooldown` seconds passed; half_open lets `probes` requests through:
    a success closes it, a failure opens it again with the cooldown doubled (up to
    `max_cooldown`). Errors the actor answered (bad_args, not_found...) are successes here: the
    actor is alive. A probe whose outcome is never recorded (its caller went away) is given up
    after `probe_lease` seconds and another is let through, so the breaker cannot stay
    half-open for good. Time is passed in, never read, so tests drive it with a fake clock.
    """

    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 0.5,
        max_cooldown: float = 10.0,
        probes: int = 1,
        probe_lease: float = 30.0,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.probes = probes
        self.probe_lease = probe_lease
        self._probe_at = 0.0
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.cooldown = cooldown
        self._probes_out = 0
        self.transitions = 0
        self._success_at = float("-inf")  # when the last success was recorded

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            self.state = state
            self.transitions += 1

    def current(self, now: float) -> BreakerState:
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown:
            self._set(BreakerState.HALF_OPEN)
            self._probes_out = 0
        return self.state

    def allow(self, now: float) -> bool:
        """May a request be sent now? In half-open, counts the probe it lets through."""
        state = self.current(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            if self._probes_out >= self.probes and now - self._probe_at >= self.probe_lease:
                self._probes_out = 0  # the probes out never came back: give them up
            if self._probes_out < self.probes:
                self._probes_out += 1
                self._probe_at = now
                return True
        return False

    def retry_after(self, now: float) -> float:
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.cooldown - now)
        return 0.0

    def give_back(self) -> None:
        """An attempt ended with no outcome (the connection dropped under it, before any
        reply or deadline): the probe it held, if any, is free for the next request, which
        may be its own resend. Without this the breaker stayed half-open with no probe
        allowed for `probe_lease`, failing every call at once."""
        if self.state is BreakerState.HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1

    def record_success(self, now: float) -> None:
        self._success_at = now
        self.failures = 0
        self.cooldown = self.base_cooldown
        self._set(BreakerState.CLOSED)

    def record_failure(self, now: float, sent_at: float | None = None) -> None:
        """`sent_at`: when the failed request went out. One sent before the last success was
        recorded says nothing of the actor now (a call to an incarnation that died, timing
        out after its successor answered) and is not counted: it opened the breaker of a
        caller whose calls overlap, and sent it away from an actor that was serving."""
        if sent_at is not None and sent_at < self._success_at:
            return
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self._open(now)
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.opened_at = now
        self._probes_out = 0
        self._set(BreakerState.OPEN)
