"""The error taxonomy: every failure that crosses the wire is one of these, by stable number.

The seed's classification (severity x category, retryable, fallback_available) travels with
each error reply, so a client in any language can act on an error without knowing the actor
that raised it. Codes never change meaning; new ones are only added. Categories and severities
are the seed's words, lower-cased, plus one category of our own, `caller` (the request itself
is wrong). Each code also says whose fault it is (`Fault`), which the SLO's figures follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    CRITICAL = "critical"  # the operation (or the component) failed; retrying as-is will not help
    RECOVERABLE = "recoverable"  # a retry or a fallback can succeed
    WARNING = "warning"  # the caller's fault or a degraded answer; the system is fine
    INFO = "info"


class Category(StrEnum):
    # The request itself is wrong (an op or argument the actor does not have): the service
    # is fine, and the same request will fail the same way. Not one of the seed's seven.
    CALLER = "caller"
    TERMINAL = "terminal"
    FILESYSTEM = "filesystem"
    NETWORK = "network"
    PARSER = "parser"
    RESOURCE = "resource"
    TIMEOUT = "timeout"
    USER_CANCELLED = "user_cancelled"


class Fault(StrEnum):
    """Whose failure an error is, for the service's own figures (the SLO's error rate counts
    only the service's): the caller asked for something that cannot be (a missing file, an
    unknown op, bad arguments, a session it closed), or the service failed to do what it
    should have (a crash, a timeout, a refusal under load, a tree that is not running)."""

    CALLER = "caller"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One row of the code table: what a code means everywhere it appears."""

    code: int
    name: str
    category: Category
    severity: Severity
    retryable: bool
    fallback_available: bool
    summary: str
    fault: Fault


_C, _S = Category, Severity
CALLER, SERVICE = Fault.CALLER, Fault.SERVICE

# code, name, category, severity, retryable, fallback_available, summary, fault.
# Ranges: 1xx protocol/transport, 2xx timeout, 3xx resource, 4xx filesystem, 5xx terminal,
# 6xx parser, 7xx cancellation, 9xx internal.
_TABLE: tuple[tuple[int, str, Category, Severity, bool, bool, str, Fault], ...] = (
    (100, "bad_request", _C.NETWORK, _S.WARNING, False, False, "malformed frame or header",
     CALLER),
    (101, "unknown_op", _C.CALLER, _S.WARNING, False, False, "the actor has no such op", CALLER),
    (102, "bad_args", _C.CALLER, _S.WARNING, False, False, "arguments missing or of wrong type",
     CALLER),
    (103, "unsupported_version", _C.NETWORK, _S.CRITICAL, False, False, "unknown protocol tag",
     CALLER),
    (104, "message_too_large", _C.NETWORK, _S.WARNING, False, False, "over a decoding limit",
     CALLER),
    (105, "bad_config", _C.CALLER, _S.CRITICAL, False, False,
     "the configuration cannot describe a tree", CALLER),
    (110, "unavailable", _C.NETWORK, _S.RECOVERABLE, True, True, "actor not answering", SERVICE),
    (111, "circuit_open", _C.NETWORK, _S.RECOVERABLE, True, True, "breaker open for this actor",
     SERVICE),
    (112, "outcome_unknown", _C.NETWORK, _S.CRITICAL, False, False, "may or may not have run",
     SERVICE),
    (113, "unknown_actor", _C.CALLER, _S.WARNING, False, False, "no such actor in the tree",
     CALLER),
    (114, "stopping", _C.NETWORK, _S.RECOVERABLE, True, False, "the actor is shutting down",
     SERVICE),
    (115, "not_running", _C.NETWORK, _S.CRITICAL, False, False,
     "no tree is running for this instance", SERVICE),
    (116, "already_running", _C.NETWORK, _S.WARNING, False, False,
     "a tree already runs for this instance", CALLER),
    (117, "start_failed", _C.NETWORK, _S.CRITICAL, False, False,
     "the tree could not start", SERVICE),
    # Raised by a client, never sent: the tree's ZAP handler refused this client's CURVE key
    # at the handshake (remote mode). Not retryable: the same key is refused again until the
    # tree's owner allows it; the caller's, as a missing file is.
    (118, "unauthorized", _C.NETWORK, _S.CRITICAL, False, False,
     "the tree refused this client's key", CALLER),
    (200, "timeout", _C.TIMEOUT, _S.RECOVERABLE, True, False, "no reply before the deadline",
     SERVICE),
    (201, "deadline_expired", _C.TIMEOUT, _S.RECOVERABLE, True, False, "expired; not run",
     SERVICE),
    (300, "busy", _C.RESOURCE, _S.RECOVERABLE, True, True, "queue full or load shed; retry",
     SERVICE),
    (301, "resource_exhausted", _C.RESOURCE, _S.CRITICAL, False, True, "a hard limit was hit",
     SERVICE),
    (400, "not_found", _C.FILESYSTEM, _S.CRITICAL, False, False, "no such file or directory",
     CALLER),
    (401, "forbidden", _C.FILESYSTEM, _S.CRITICAL, False, False, "permission or confinement",
     CALLER),
    (402, "is_directory", _C.FILESYSTEM, _S.CRITICAL, False, False, "a directory, not a file",
     CALLER),
    (403, "no_space", _C.FILESYSTEM, _S.CRITICAL, False, False, "the device is full", SERVICE),
    (404, "file_too_large", _C.FILESYSTEM, _S.CRITICAL, False, False, "page the read", CALLER),
    (405, "conflict", _C.FILESYSTEM, _S.CRITICAL, False, False,
     "changed since the caller saw it", CALLER),
    (406, "io_error", _C.FILESYSTEM, _S.RECOVERABLE, True, True, "transient I/O failure",
     SERVICE),
    (407, "not_a_directory", _C.FILESYSTEM, _S.CRITICAL, False, False, "a file, not a dir",
     CALLER),
    (408, "watch_not_found", _C.FILESYSTEM, _S.WARNING, False, False, "no such watch", CALLER),
    (500, "session_not_found", _C.TERMINAL, _S.WARNING, False, False, "no such session", CALLER),
    (501, "pty_failed", _C.TERMINAL, _S.CRITICAL, True, True, "could not create a PTY", SERVICE),
    (502, "shell_exited", _C.TERMINAL, _S.CRITICAL, True, True, "the session's shell is gone",
     SERVICE),
    (503, "exec_failed", _C.TERMINAL, _S.RECOVERABLE, True, True, "command did not complete",
     SERVICE),
    (504, "session_busy", _C.TERMINAL, _S.RECOVERABLE, True, False, "a command is running",
     CALLER),
    # Not retryable: the data it names was dropped and the stream reset past it, so a resend
    # would be skipped as already parsed, and the caller would lose the error.
    (600, "parse_error", _C.PARSER, _S.RECOVERABLE, False, True, "input could not be parsed",
     SERVICE),
    (601, "stream_not_found", _C.PARSER, _S.WARNING, False, False, "no such parser stream",
     CALLER),
    (602, "buffer_overflow", _C.PARSER, _S.CRITICAL, False, True, "partial buffer over cap",
     SERVICE),
    (603, "stream_gap", _C.PARSER, _S.WARNING, False, False, "offset skips ahead", CALLER),
    (700, "cancelled", _C.USER_CANCELLED, _S.INFO, False, False, "cancelled by the caller",
     CALLER),
    (900, "internal", _C.NETWORK, _S.CRITICAL, False, False, "a handler raised; bug report",
     SERVICE),
)

KINDS: dict[str, ErrorKind] = {row[1]: ErrorKind(*row) for row in _TABLE}
BY_CODE: dict[int, ErrorKind] = {k.code: k for k in KINDS.values()}


def fault_of(name: str) -> Fault:
    """Whose failure an error of this name is; a name this table lacks (a newer peer's) is
    counted as the service's, the side that does not flatter it."""
    kind = KINDS.get(name)
    return kind.fault if kind is not None else Fault.SERVICE


@dataclass(slots=True)
class WireError:
    """An error as it travels: the kind's classification plus this instance's message."""

    code: int
    name: str
    category: str
    severity: str
    retryable: bool
    fallback_available: bool
    message: str
    detail: Any = None
    retry_after_ms: int | None = None

    @classmethod
    def of(
        cls,
        name: str,
        message: str = "",
        *,
        detail: Any = None,
        retry_after_ms: int | None = None,
        category: Category | None = None,
    ) -> WireError:
        kind = KINDS[name]
        return cls(
            code=kind.code,
            name=kind.name,
            category=str(category or kind.category),
            severity=str(kind.severity),
            retryable=kind.retryable,
            fallback_available=kind.fallback_available,
            message=message or kind.summary,
            detail=detail,
            retry_after_ms=retry_after_ms,
        )

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "name": self.name,
            "category": self.category,
            "severity": self.severity,
            "retryable": self.retryable,
            "fallback_available": self.fallback_available,
            "message": self.message,
        }
        if self.detail is not None:
            out["detail"] = self.detail
        if self.retry_after_ms is not None:
            out["retry_after_ms"] = self.retry_after_ms
        return out

    @classmethod
    def from_wire(cls, body: Any) -> WireError:
        """Read an error body; a peer that sent garbage still yields a classified error."""
        if not isinstance(body, dict) or type(body.get("code")) is not int:
            return cls.of("bad_request", f"malformed error body: {body!r:.200}")
        known = BY_CODE.get(body["code"])
        base = cls.of(known.name) if known else cls.of("internal")

        def pick(key: str, typ: type, default: Any) -> Any:
            v = body.get(key)
            return v if type(v) is typ else default

        return cls(
            code=body["code"],
            name=pick("name", str, base.name),
            category=pick("category", str, base.category),
            severity=pick("severity", str, base.severity),
            retryable=pick("retryable", bool, base.retryable),
            fallback_available=pick("fallback_available", bool, base.fallback_available),
            message=pick("message", str, ""),
            detail=body.get("detail"),
            retry_after_ms=pick("retry_after_ms", int, None),
        )


@dataclass(eq=False)
class MoorageError(Exception):
    """Raised wherever a classified error reaches Python code: a reply, or a local failure.

    Actor handlers raise it (see `fail`) to answer with a specific code; the client raises it
    for an error reply, a timeout, or an open breaker. `error.retryable` and friends say what
    the caller may do next; `__cause__` keeps the original exception when there was one.
    """

    error: WireError
    op: str = ""
    actor: str = ""
    attempts: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.actor}:{self.op} " if self.op else ""
        return f"{where}{self.error.name} ({self.error.code}): {self.error.message}"

    @property
    def name(self) -> str:
        return self.error.name

    @property
    def code(self) -> int:
        return self.error.code

    @property
    def retryable(self) -> bool:
        return self.error.retryable


def fail(name: str, message: str = "", **kw: Any) -> MoorageError:
    """Build the exception for a named error: `raise fail("not_found", path)`."""
    return MoorageError(WireError.of(name, message, **kw))
