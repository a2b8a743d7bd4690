"""The error taxonomy: every failure that crosses the wire is one of these, by stable number.

The seed's classification (severity x category, retryable, fallback_available) travels with
each error reply, so a client in any language can act on an error without knowing the actor
that raised it. Codes never change meaning; new ones are only added. Categories and severities
are the seed's words, lower-cased.
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
    TERMINAL = "terminal"
    FILESYSTEM = "filesystem"
    NETWORK = "network"
    PARSER = "parser"
    RESOURCE = "resource"
    TIMEOUT = "timeout"
    USER_CANCELLED = "user_cancelled"


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


_C, _S = Category, Severity

# code, name, category, severity, retryable, fallback_available, summary.
# Ranges: 1xx protocol/transport, 2xx timeout, 3xx resource, 4xx filesystem, 5xx terminal,
# 6xx parser, 7xx cancellation, 9xx internal.
_TABLE: tuple[tuple[int, str, Category, Severity, bool, bool, str], ...] = (
    (100, "bad_request", _C.NETWORK, _S.WARNING, False, False, "malformed frame or header"),
    (101, "unknown_op", _C.NETWORK, _S.WARNING, False, False, "the actor has no such op"),
    (102, "bad_args", _C.NETWORK, _S.WARNING, False, False, "arguments missing or of wrong type"),
    (103, "unsupported_version", _C.NETWORK, _S.CRITICAL, False, False, "unknown protocol tag"),
    (104, "message_too_large", _C.NETWORK, _S.WARNING, False, False, "over a decoding limit"),
    (110, "unavailable", _C.NETWORK, _S.RECOVERABLE, True, True, "actor not answering"),
    (111, "circuit_open", _C.NETWORK, _S.RECOVERABLE, True, True, "breaker open for this actor"),
    (112, "outcome_unknown", _C.NETWORK, _S.CRITICAL, False, False, "may or may not have run"),
    (113, "unknown_actor", _C.NETWORK, _S.WARNING, False, False, "no such actor in the tree"),
    (114, "stopping", _C.NETWORK, _S.RECOVERABLE, True, False, "the actor is shutting down"),
    (200, "timeout", _C.TIMEOUT, _S.RECOVERABLE, True, False, "no reply before the deadline"),
    (201, "deadline_expired", _C.TIMEOUT, _S.RECOVERABLE, True, False, "expired; not run"),
    (300, "busy", _C.RESOURCE, _S.RECOVERABLE, True, True, "queue full or load shed; retry"),
    (301, "resource_exhausted", _C.RESOURCE, _S.CRITICAL, False, True, "a hard limit was hit"),
    (400, "not_found", _C.FILESYSTEM, _S.CRITICAL, False, False, "no such file or directory"),
    (401, "forbidden", _C.FILESYSTEM, _S.CRITICAL, False, False, "permission or confinement"),
    (402, "is_directory", _C.FILESYSTEM, _S.CRITICAL, False, False, "a directory, not a file"),
    (403, "no_space", _C.FILESYSTEM, _S.CRITICAL, False, False, "the device is full"),
    (404, "file_too_large", _C.FILESYSTEM, _S.CRITICAL, False, False, "page the read"),
    (405, "conflict", _C.FILESYSTEM, _S.CRITICAL, False, False, "changed since the caller saw it"),
    (406, "io_error", _C.FILESYSTEM, _S.RECOVERABLE, True, True, "transient I/O failure"),
    (407, "not_a_directory", _C.FILESYSTEM, _S.CRITICAL, False, False, "a file, not a dir"),
    (408, "watch_not_found", _C.FILESYSTEM, _S.WARNING, False, False, "no such watch"),
    (500, "session_not_found", _C.TERMINAL, _S.WARNING, False, False, "no such session"),
    (501, "pty_failed", _C.TERMINAL, _S.CRITICAL, True, True, "could not create a PTY"),
    (502, "shell_exited", _C.TERMINAL, _S.CRITICAL, True, True, "the session's shell is gone"),
    (503, "exec_failed", _C.TERMINAL, _S.RECOVERABLE, True, True, "command did not complete"),
    (504, "session_busy", _C.TERMINAL, _S.RECOVERABLE, True, False, "a command is running"),
    # Not retryable: the data it names was dropped and the stream reset past it, so a resend
    # would be skipped as already parsed, and the caller would lose the error.
    (600, "parse_error", _C.PARSER, _S.RECOVERABLE, False, True, "input could not be parsed"),
    (601, "stream_not_found", _C.PARSER, _S.WARNING, False, False, "no such parser stream"),
    (602, "buffer_overflow", _C.PARSER, _S.CRITICAL, False, True, "partial buffer over cap"),
    (603, "stream_gap", _C.PARSER, _S.WARNING, False, False, "offset skips ahead"),
    (700, "cancelled", _C.USER_CANCELLED, _S.INFO, False, False, "cancelled by the caller"),
    (900, "internal", _C.NETWORK, _S.CRITICAL, False, False, "a handler raised; bug report"),
)

KINDS: dict[str, ErrorKind] = {row[1]: ErrorKind(*row) for row in _TABLE}
BY_CODE: dict[int, ErrorKind] = {k.code: k for k in KINDS.values()}


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
