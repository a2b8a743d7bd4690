"""Supervision policy as pure functions over an injected monotonic clock (no processes).

The words are OTP's, so Erlang's documentation of `supervisor` documents these too:

  restart type   permanent: always restarted; transient: restarted unless it exited
                 normally; temporary: never restarted (not even by a sibling's restart)
  strategy       one_for_one: restart the dead child; one_for_all: stop the others and
                 restart all; rest_for_one: stop those started after it, restart it and them
  intensity      more than `intensity` restarts of a child within `period` seconds and the
                 supervisor gives up: it stops its children and exits, and its parent decides
                 (escalation)

Beyond OTP, so that a crash loop is told apart from deaths that are not the child's doing (a
tree under chaos, a process killed now and then by hand or by the OOM killer):
  - intensity is counted per child, and only deaths of a child that was young: it died
    starting, or within `stable_after` seconds of being ready (or, a nested supervisor, it
    escalated). A child that had been serving for a while was killed, not crashing: it is
    restarted at once, and many such deaths spread over the tree never add up to a give-up;
  - a child whose start was cut short by its zygote's death (the zygote that forked it died
    before it was ready, and it died starting, unless its supervisor killed it for a hang) is
    the zygote's failure: restarted at once, counted against nothing, its back-off left as
    it was (as a start the dead zygote never confirmed is asked again of its successor);
  - the restarts of a young child wait a capped exponential back-off (so a crash loop is not
    a restart storm), reset by a death after a stable run;
  - a child may name fallbacks, engaged in order instead of escalating;
  - the root supervisor has no parent to escalate to: once the tree has come up, its last
    resort is to keep retrying the child, `LAST_RESORT` apart (doubling), never to stop the
    tree (during the first start it still gives up: the tree cannot come up). A nested
    supervisor whose spec says `retry_forever` does the same once it has come up: its
    escalation would stop every child of it, and children that hold the user's state (the
    shells of `terminals`) must not be given up over a sibling's crash loop. Its strategy
    still says which siblings restart with the one retried (rest_for_one, one_for_all).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from moorage.protocol.recovery import Backoff


class RestartType(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(StrEnum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class ExitKind(StrEnum):
    NORMAL = "normal"  # exit code 0
    SHUTDOWN = "shutdown"  # stopped by its supervisor (or SIGTERM/SIGINT)
    ABNORMAL = "abnormal"  # non-zero exit, a signal, a failed start, a missed heartbeat


@dataclass(frozen=True, slots=True)
class ExitReason:
    kind: ExitKind
    code: int | None = None
    signal: int | None = None
    detail: str = ""

    def describe(self) -> str:
        if self.signal is not None:
            text = f"killed by signal {self.signal}"
        elif self.code is not None:
            text = f"exit code {self.code}"
        else:
            text = self.kind.value
        if self.kind is ExitKind.SHUTDOWN:
            text = f"shutdown, {text}" if text != "shutdown" else text
        return f"{text} ({self.detail})" if self.detail else text


def classify_exit(code: int | None, signal: int | None, requested: bool) -> ExitReason:
    """An exit status as OTP would see it. `requested`: the supervisor asked it to stop."""
    if requested:
        return ExitReason(ExitKind.SHUTDOWN, code, signal)
    if signal is None and code == 0:
        return ExitReason(ExitKind.NORMAL, code)
    return ExitReason(ExitKind.ABNORMAL, code, signal)


# The restart decision as a table: (restart type, exit kind) -> restart?
RESTART_TABLE: dict[tuple[RestartType, ExitKind], bool] = {
    (RestartType.PERMANENT, ExitKind.NORMAL): True,
    (RestartType.PERMANENT, ExitKind.SHUTDOWN): True,
    (RestartType.PERMANENT, ExitKind.ABNORMAL): True,
    (RestartType.TRANSIENT, ExitKind.NORMAL): False,
    (RestartType.TRANSIENT, ExitKind.SHUTDOWN): False,
    (RestartType.TRANSIENT, ExitKind.ABNORMAL): True,
    (RestartType.TEMPORARY, ExitKind.NORMAL): False,
    (RestartType.TEMPORARY, ExitKind.SHUTDOWN): False,
    (RestartType.TEMPORARY, ExitKind.ABNORMAL): False,
}


def should_restart(restart: RestartType, reason: ExitReason) -> bool:
    return RESTART_TABLE[(restart, reason.kind)]


def affected(strategy: Strategy, order: list[str], dead: str) -> list[str]:
    """Children to (re)start, in start order, after `dead` died. They are stopped first in
    the reverse of this order (except `dead`, which is already gone)."""
    if strategy is Strategy.ONE_FOR_ONE:
        return [dead]
    if strategy is Strategy.ONE_FOR_ALL:
        return list(order)
    i = order.index(dead)
    return order[i:]


LAST_RESORT = Backoff(1.0, 2.0, 60.0)  # the root retrying a child that exhausted everything


def counts_against_intensity(young: bool, escalated: bool) -> bool:
    """Does this death count towards its child's intensity (see the module docstring)?
    (A start cut short by its zygote's death is not asked: start_cut_by_zygote.)"""
    return young or escalated


def start_cut_by_zygote(starting: bool, zygote_died: bool, killed_for: str) -> bool:
    """A child that died starting, forked by a zygote that has died since, died with its
    zygote: its start was cut short (the zygote never told it to go on, or what killed the
    zygote took it too), unless its supervisor killed it for a reason of its own
    (`killed_for`: a hang, a start that timed out)."""
    return starting and zygote_died and not killed_for


class PastIntensity(StrEnum):
    """What a supervisor does with a child that died young once too often."""

    FALLBACK = "fallback"  # its next fallback is engaged
    RETRY = "retry"  # retried LAST_RESORT apart, the rest of the tree serving
    ESCALATE = "escalate"  # the supervisor stops every child and exits (its parent decides)


def past_intensity(fallback_left: bool, retries: bool, started: bool) -> PastIntensity:
    """The decision past a child's intensity. `retries`: the supervisor retries rather than
    escalates (the root; a nested one whose spec says retry_forever); `started`: it has come
    up once (one that cannot come up says so: its parent, or the editor, is waiting)."""
    if fallback_left:
        return PastIntensity.FALLBACK
    if retries and started:
        return PastIntensity.RETRY
    return PastIntensity.ESCALATE


class Intensity:
    """OTP's restart intensity: a sliding window of restart times (one per child here)."""

    def __init__(self, intensity: int, period: float) -> None:
        self.intensity = intensity
        self.period = period
        self.times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """Record a restart; False when this one exceeds the intensity (give up)."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.period:
            self.times.popleft()
        return len(self.times) <= self.intensity

    def clear(self) -> None:
        self.times.clear()


class RestartBackoff:
    """Delay before each restart of one child: none for the first after a stable run, then
    capped exponential; a death after a stable run (not young: it served `stable_after_s`)
    resets it."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.consecutive = 0

    def next_delay(self, stable: bool) -> float:
        if stable:
            self.consecutive = 0
        delay = 0.0 if self.consecutive == 0 else self.backoff.delay(self.consecutive - 1)
        self.consecutive += 1
        return delay


class Heartbeat:
    """Missed-beat accounting for one child: `misses` heartbeat ticks in a row without a sign
    of life = hung. A sign of life is a turn of its loop since the last tick, or its loop
    blocked in its wait, idle (moorage.actors.runtime.beat)."""

    def __init__(self, misses: int) -> None:
        self.misses = misses
        self.outstanding = 0
        self.last_turn = 0

    def observe(self, turn: int, idle: bool) -> bool:
        """One heartbeat tick: `turn` as read from the child's slot; `idle`, its loop is
        blocked in its wait with the wait not overdue, and the process is not stopped.
        True when the child is now considered hung."""
        if turn != self.last_turn or idle:
            self.last_turn = turn
            self.answered()
        return self.sent()

    def sent(self) -> bool:
        """A tick (or a ping) goes out; returns True when the child is now considered hung."""
        self.outstanding += 1
        return self.outstanding > self.misses

    def answered(self) -> None:
        self.outstanding = 0

    def reset(self) -> None:
        """A new process of the child: nothing turned yet, nothing missed yet."""
        self.outstanding = 0
        self.last_turn = 0


# A tick without a beat is not a miss while the child's loop waited for a CPU (a machine
# saturated by a build: forty shells' loops, each runnable) for at least half of it, up to
# this many ticks in a row; then it counts again (a loop spinning in a turn gets its share
# of the CPU as well, and is hung however busy the machine is).
STARVED_TICKS_MAX = 50


def sched_sample(pid: int) -> tuple[int, int, bool] | None:
    """`pid`'s main thread (the actor's loop): its CPU time and the time it spent runnable
    waiting for a CPU, in ns (/proc/<pid>/schedstat; the kernel adds a wait to the second
    when it ends), and whether it is runnable now; None if they cannot be read."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            ran, waited = (int(x) for x in f.read().split()[:2])
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return ran, waited, state == b"R"


def starved(was: tuple[int, tuple[int, int, bool]] | None, now_ns: int,
            sample: tuple[int, int, bool] | None) -> bool:
    """Since `was` (monotonic ns, its sample), did the loop wait for a CPU rather than not
    turn with one to run on? It waited for at least half of the time (its waits that ended),
    or it is runnable and ran for less than a tenth of it (a wait not over yet: a CPU held
    by real-time work, or shared by dozens of busy processes)."""
    if was is None or sample is None or now_ns <= was[0]:
        return False
    elapsed = now_ns - was[0]
    ran, waited, runnable = sample
    return (waited - was[1][1] >= elapsed // 2
            or (runnable and ran - was[1][0] < elapsed // 10))
