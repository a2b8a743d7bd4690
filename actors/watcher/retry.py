"""The seed's 3.1 retry policy for file I/O, with errno classification, driven by the loop.

An OSError is one of three things:
  retry now   EINTR: nothing went wrong, the call was interrupted; again at once (bounded)
  transient   ETIMEDOUT, ECONNRESET, ECONNABORTED, EIO, ESTALE (network mounts), EAGAIN,
              EBUSY: may work a moment later; retried with capped exponential back-off, as
              many times as the recovery matrix allows for filesystem/recoverable (3)
  permanent   ENOENT, EACCES... : retrying cannot help; answered at once with its kind
Unknown errnos are answered as `io_error` without retrying (the seed retries only what it knows).

The actor has one thread, so a back-off must not sleep: `Attempts` runs the first try inline
and schedules later ones through an injected `schedule(delay, fn)` (the loop's `call_later`;
tests pass one that records the delays and runs at once). A try that may block hands its
syscalls to a worker and returns the worker's `Job` (moorage.actors.watcher.workers): its
outcome is classified the same way once it is back on the loop. The outcome lands in a
`Pending`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from loguru import logger

from moorage.actors.watcher.workers import Job
from moorage.protocol.errors import Category, MoorageError, Severity, WireError, fail
from moorage.protocol.recovery import Backoff, recovery_for


class Verdict(Enum):
    RETRY_NOW = "retry_now"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


TRANSIENT = frozenset({errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EIO,
                       errno.ESTALE, errno.EAGAIN, errno.EBUSY})
PERMANENT: dict[int, str] = {
    errno.ENOENT: "not_found",
    errno.EACCES: "forbidden",
    errno.EPERM: "forbidden",
    errno.EROFS: "forbidden",
    errno.ELOOP: "forbidden",  # O_NOFOLLOW met a symlink swapped in after resolution
    errno.EISDIR: "is_directory",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "file_too_large",
    errno.ENOTDIR: "not_a_directory",
    errno.ENAMETOOLONG: "bad_args",
    errno.EEXIST: "conflict",
}


def classify(exc: OSError) -> tuple[Verdict, str]:
    """(verdict, error kind name) for an OSError."""
    code = exc.errno
    if code == errno.EINTR:
        return Verdict.RETRY_NOW, "io_error"
    if code in TRANSIENT:
        return Verdict.TRANSIENT, "io_error"
    return Verdict.PERMANENT, PERMANENT.get(code or 0, "io_error")

# Every error an OSError can become (os_error): what a file op may answer for one.
FS_ERRORS: tuple[str, ...] = tuple(sorted({*PERMANENT.values(), "io_error"} - {"bad_args"}))

def os_error(exc: OSError, path: str, attempts: int = 1) -> MoorageError:
    """The classified error for an OSError, the errno kept in `detail` and as the cause.

    `retryable` says whether a client's resend could still help: only for a transient error
    tried once here. After `attempts` tries the matrix's budget is spent (a client resending
    it would multiply it: 4 x 4 reads of a failing disk), and an error the watcher judged
    permanent (EINVAL, ENXIO, ...) fails the same way every time."""
    verdict, name = classify(exc)
    code = exc.errno or 0
    reason = os.strerror(code) if code else str(exc)
    if code and exc.strerror and exc.strerror != reason:
        # our own reason for the errno (a read torn by a writer, a file made meanwhile):
        # what the caller can act on, which the errno's text alone does not say
        reason = f"{reason}: {exc.strerror}"
    err = fail(name, f"{path}: {reason}",
               detail={"path": path, "errno": errno.errorcode.get(code, str(code)),
                       "attempts": attempts})
    err.error.retryable = err.error.retryable and verdict is Verdict.TRANSIENT \
        and attempts <= 1
    err.__cause__ = exc
    return err


def _matrix_retries() -> int:
    row = recovery_for(Category.FILESYSTEM, Severity.RECOVERABLE)
    return row.max_retries if row is not None and row.max_retries is not None else 3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried."""

    retries: int = field(default_factory=_matrix_retries)
    backoff: Backoff = field(default_factory=lambda: Backoff(0.01, 2.0, 0.5))
    max_immediate: int = 100  # EINTR storms are bounded too

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RetryPolicy:
        return cls(
            retries=int(cfg.get("retries", _matrix_retries())),
            backoff=Backoff(float(cfg.get("initial_ms", 10)) / 1000,
                            float(cfg.get("factor", 2.0)),
                            float(cfg.get("max_ms", 500)) / 1000),
        )


class Pending:
    """The outcome of an operation that may finish now or after a back-off."""

    __slots__ = ("_then", "done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: WireError | MoorageError | None = None
        self._then: Callable[[Pending], None] | None = None

    def resolve(self, value: Any = None, error: WireError | MoorageError | None = None) -> None:
        if self.done:
            return
        self.done, self.value, self.error = True, value, error
        if self._then is not None:
            self._then(self)

    def then(self, fn: Callable[[Pending], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._then = fn

    def unwrap(self) -> Any:
        """The value, or raise the error (for a result that is already there)."""
        if isinstance(self.error, MoorageError):
            raise self.error
        if isinstance(self.error, WireError):
            raise MoorageError(self.error)
        return self.value


Schedule = Callable[[float, Callable[[], None]], Any]


class Attempts:
    """Run `attempt` under `policy`. Each try either returns (done), raises MoorageError
    (answered as is), or raises OSError (classified). When the retries are used up on a
    transient error, `exhausted(exc, attempts)` decides the answer: a stale cached copy, or
    the error."""

    def __init__(
        self,
        policy: RetryPolicy,
        attempt: Callable[[], Any],
        schedule: Schedule,
        path: str,
        exhausted: Callable[[OSError, int], Any] | None = None,
    ) -> None:
        self.policy = policy
        self.attempt = attempt
        self.schedule = schedule
        self.path = path
        self.exhausted = exhausted
        self.tries = 0
        self.immediate = 0  # EINTR retries so far (bounded by max_immediate)
        self.delays: list[float] = []
        self.pending = Pending()

    def run(self) -> Pending:
        while self._outcome(self._try_once) == "again":
            pass
        return self.pending

    def _try_once(self) -> Any:
        self.tries += 1
        return self.attempt()

    def _resume(self, job: Job) -> None:
        """An attempt that ran on a worker (`attempt` returned its Job) has settled."""
        if self._outcome(job.result) == "again":
            self.run()

    def _outcome(self, step: Callable[[], Any]) -> str:
        """Run `step` (a try, or the result of one a worker ran) and act on what it gave:
        "done", "later" (a back-off or a worker is on it), or "again" (EINTR: at once)."""
        try:
            value = step()
        except MoorageError as exc:
            self.pending.resolve(error=exc)
            return "done"
        except OSError as exc:
            verdict, _ = classify(exc)
            if verdict is Verdict.RETRY_NOW and self.immediate < self.policy.max_immediate:
                self.immediate += 1
                return "again"
            retry = len(self.delays)
            if verdict is Verdict.TRANSIENT and retry < self.policy.retries:
                delay = self.policy.backoff.delay(retry)
                self.delays.append(delay)
                self.schedule(delay, self.run)
                return "later"
            self._give_up(exc)
            return "done"
        except Exception as exc:  # (a bug, or MemoryError: answered, never left pending)
            logger.opt(exception=exc).error("watcher: {} failed", self.path)
            self.pending.resolve(error=fail("internal", f"{self.path}: "
                                            f"{type(exc).__name__}: {exc}"))
            return "done"
        if isinstance(value, Job):
            value.then(self._resume)
            return "later"
        self.pending.resolve(value)
        return "done"

    def _give_up(self, exc: OSError) -> None:
        verdict, _ = classify(exc)
        if verdict is not Verdict.PERMANENT and self.exhausted is not None:
            try:
                self.pending.resolve(self.exhausted(exc, self.tries))
                return
            except MoorageError as err:
                self.pending.resolve(error=err)
                return
        self.pending.resolve(error=os_error(exc, self.path, self.tries))
