"""Supervision and recovery policy as pure functions, driven by a fake clock."""

from __future__ import annotations

import pytest

from moorage.protocol.client._core import CallPlan, ClientCore, ClientOptions, Done, Resend
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import KINDS, WireError
from moorage.protocol.recovery import (
    MATRIX,
    Backoff,
    BreakerState,
    CircuitBreaker,
    max_retries_for,
    recovery_for,
)
from moorage.supervisor.policy import (
    ExitKind,
    Heartbeat,
    Intensity,
    RestartBackoff,
    RestartType,
    Strategy,
    affected,
    classify_exit,
    should_restart,
)

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("restart", "kind", "expected"),
    [
        (RestartType.PERMANENT, ExitKind.NORMAL, True),
        (RestartType.PERMANENT, ExitKind.ABNORMAL, True),
        (RestartType.TRANSIENT, ExitKind.NORMAL, False),
        (RestartType.TRANSIENT, ExitKind.SHUTDOWN, False),
        (RestartType.TRANSIENT, ExitKind.ABNORMAL, True),
        (RestartType.TEMPORARY, ExitKind.ABNORMAL, False),
    ],
)
def test_restart_decisions_follow_otp(restart, kind, expected):
    from moorage.supervisor.policy import ExitReason

    assert should_restart(restart, ExitReason(kind)) is expected


def test_exit_status_is_classified_as_otp_would():
    assert classify_exit(0, None, requested=False).kind is ExitKind.NORMAL
    assert classify_exit(1, None, requested=False).kind is ExitKind.ABNORMAL
    assert classify_exit(None, 9, requested=False).kind is ExitKind.ABNORMAL
    assert classify_exit(None, 15, requested=True).kind is ExitKind.SHUTDOWN


def test_strategies_pick_the_children_to_restart_in_start_order():
    order = ["a", "b", "c", "d"]
    assert affected(Strategy.ONE_FOR_ONE, order, "b") == ["b"]
    assert affected(Strategy.ONE_FOR_ALL, order, "b") == order
    assert affected(Strategy.REST_FOR_ONE, order, "b") == ["b", "c", "d"]
    assert affected(Strategy.REST_FOR_ONE, order, "d") == ["d"]


def test_intensity_allows_n_restarts_in_the_period_and_refuses_the_next():
    i = Intensity(3, 10.0)
    assert [i.add(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert i.add(3.0) is False


def test_intensity_forgets_restarts_older_than_the_period():
    i = Intensity(2, 10.0)
    assert i.add(0.0) and i.add(5.0)
    assert i.add(10.5)  # the one at 0.0 left the window
    assert not i.add(11.0)


def test_restart_backoff_is_immediate_first_then_exponential_and_capped():
    b = RestartBackoff(Backoff(0.02, 2.0, 0.1))
    delays = [b.next_delay(stable=False) for _ in range(6)]
    assert delays == [0.0, 0.02, 0.04, 0.08, 0.1, 0.1]


def test_restart_backoff_resets_after_a_stable_run():
    b = RestartBackoff(Backoff(0.02, 2.0, 1.0))
    b.next_delay(stable=False)
    b.next_delay(stable=False)
    assert b.next_delay(stable=False) == 0.04
    assert b.next_delay(stable=True) == 0.0


def test_heartbeat_declares_a_hang_after_the_configured_misses():
    h = Heartbeat(misses=3)
    assert [h.sent() for _ in range(3)] == [False, False, False]
    h.answered()
    assert [h.sent() for _ in range(4)] == [False, False, False, True]


def test_backoff_jitter_stays_within_its_fraction():
    import random

    b = Backoff(0.1, 2.0, 10.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(5):
        d = b.delay(attempt, rng)
        full = min(10.0, 0.1 * 2**attempt)
        assert full * 0.5 <= d <= full


def test_breaker_opens_after_threshold_failures_and_half_opens_after_cooldown():
    br = CircuitBreaker(threshold=3, cooldown=1.0)
    for t in (0.0, 0.1, 0.2):
        assert br.allow(t)
        br.record_failure(t)
    assert br.current(0.3) is BreakerState.OPEN
    assert not br.allow(0.5)
    assert br.retry_after(0.5) == pytest.approx(0.7)
    assert br.current(1.3) is BreakerState.HALF_OPEN
    assert br.allow(1.3)  # the probe
    assert not br.allow(1.31)  # only one probe at a time
    br.record_success(1.4)
    assert br.current(1.4) is BreakerState.CLOSED


def test_a_failed_probe_reopens_the_breaker_with_a_longer_cooldown():
    br = CircuitBreaker(threshold=1, cooldown=1.0, max_cooldown=3.0)
    br.record_failure(0.0)
    assert br.allow(1.0)
    br.record_failure(1.0)
    assert br.current(2.5) is BreakerState.OPEN
    assert br.current(3.0) is BreakerState.HALF_OPEN


def test_a_failure_of_a_request_sent_before_the_last_success_is_not_counted():
    """Calls that overlap: one to an actor that was killed times out after its successor
    answered another. That says nothing of the actor now; a failure of a request sent after
    the success does."""
    br = CircuitBreaker(threshold=1, cooldown=1.0)
    br.record_success(2.0)  # the successor answered a call sent at 1.8
    br.record_failure(2.5, sent_at=1.5)  # the call sent at 1.5 to the one killed
    assert br.current(2.5) is BreakerState.CLOSED and br.allow(2.5)
    br.record_failure(3.0, sent_at=2.1)
    assert br.current(3.0) is BreakerState.OPEN


def test_a_probe_that_never_reports_back_is_given_up_after_its_lease():
    br = CircuitBreaker(threshold=1, cooldown=1.0, probe_lease=5.0)
    br.record_failure(0.0)
    assert br.allow(1.0)  # the probe goes out, and its caller forgets it
    assert not br.allow(2.0) and not br.allow(5.9)
    assert br.allow(6.0)  # another probe after the lease
    br.record_success(6.1)
    assert br.current(6.1) is BreakerState.CLOSED


def test_a_probe_whose_connection_dropped_gives_its_place_back_to_its_resend():
    br = CircuitBreaker(threshold=1, cooldown=1.0, probe_lease=30.0)
    br.record_failure(0.0)
    assert br.allow(1.0)  # the probe goes out; the actor dies under it
    br.give_back()
    assert br.allow(1.01)  # its resend (to the successor) is the probe now
    assert not br.allow(1.02)
    br.record_success(1.1)
    assert br.current(1.1) is BreakerState.CLOSED


def test_the_recovery_matrix_is_the_seeds_table():
    assert len(MATRIX) == 11
    row = recovery_for("filesystem", "recoverable")
    assert row is not None
    assert (row.primary, row.fallback, row.max_retries) == ("retry_with_backoff",
                                                            "cache_previous", 3)
    assert recovery_for("timeout", "recoverable").max_retries == 2
    assert recovery_for("parser", "warning") is None
    assert max_retries_for(WireError.of("not_found")) == 0
    assert max_retries_for(WireError.of("io_error")) == 3
    assert max_retries_for(WireError.of("timeout")) == 2


def test_every_error_kind_has_a_unique_code_and_a_known_classification():
    codes = [k.code for k in KINDS.values()]
    assert len(codes) == len(set(codes))
    for k in KINDS.values():
        assert WireError.from_wire(WireError.of(k.name).to_wire()).name == k.name


def _plan(idempotent: bool, timeout: float = 5.0) -> CallPlan:
    core = ClientCore("/nonexistent", options=ClientOptions(timeout=timeout))
    return CallPlan(core, "a", "x.op", None, None, idempotent)


def _error_reply(name: str, **kw) -> Reply:
    return Reply(1, False, "ep", WireError.of(name, **kw).to_wire(), [])


def test_a_timed_out_idempotent_call_is_resent_with_the_same_id():
    p = _plan(idempotent=True)
    first = p.frames
    p.start(0.0)
    v = p.on_timeout(p.started + 1.0)
    assert isinstance(v, Resend)
    assert p.frames is first  # same id, same bytes


def test_a_timed_out_non_idempotent_call_fails_as_outcome_unknown():
    p = _plan(idempotent=False)
    p.start(0.0)
    v = p.on_timeout(p.deadline)
    assert isinstance(v, Done) and v.error.name == "outcome_unknown"


def test_busy_is_retried_after_the_actors_retry_after_even_for_non_idempotent_ops():
    p = _plan(idempotent=False)
    p.start(p.started)
    v = p.on_reply(_error_reply("busy", retry_after_ms=250), p.started + 0.01)
    assert isinstance(v, Resend) and v.delay >= 0.25


def test_a_permanent_error_is_not_retried():
    p = _plan(idempotent=True)
    p.start(p.started)
    v = p.on_reply(_error_reply("not_found"), p.started + 0.01)
    assert isinstance(v, Done) and v.error.name == "not_found"
