"""Ops: what an actor serves, with the arguments each takes, what it answers, and how it may
be retried.

An op is declared next to its handler with `@op(...)`; the runtime validates the arguments
against the declaration before the handler runs, so handlers see clean keyword arguments and
a caller gets `bad_args` naming the culprit instead of a TypeError from deep inside. The
same declaration says what the op answers (`result`, in the language of shapes.py), how many
attachments it takes and gives, and the errors it answers itself: `sys.info` serves all of
it, `protocol/schema/ops.json` and PROTOCOL.md's tables are generated from it, and the tests
check every reply they see against it, so the contract cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from moorage.actors.runtime.shapes import document
from moorage.protocol.errors import KINDS, fail

_MISSING = object()
REQUIRED = _MISSING
_NO_ARGS: dict[str, Any] = {}  # what an op without arguments is called with; never mutated
_NONE = type(None)
UNDECLARED = _MISSING  # an op that says nothing of its result (test actors); ours all do
# What the runtime itself may answer for any op, before or around its handler (actor.py's
# request path, PROTOCOL.md sections 6, 9 and 15): an op's `errors` list only its own.
RUNTIME_ERRORS: tuple[str, ...] = (
    "bad_request", "unsupported_version", "message_too_large", "bad_args", "deadline_expired",
    "busy", "stopping", "timeout", "outcome_unknown", "internal",
)


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    types: tuple[type, ...]
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def describe(self) -> dict[str, Any]:
        return {"type": "|".join(t.__name__ for t in self.types), "required": self.required}


@dataclass(slots=True)
class OpSpec:
    name: str
    handler: Callable[..., Any]
    args: tuple[Arg, ...] = ()
    idempotent: bool = False
    timeout_ms: int = 5000
    essential: bool = True  # non-essential ops are shed first under pressure
    recorded: bool = True  # counted in the op's metrics (not liveness probes)
    doc: str = ""
    # Results are checked for protocol shape before they are sent. False only for ops whose
    # result the runtime builds itself from values of known types (sys.ping's {ep: str}).
    checked: bool = True
    # Not idempotent, but at most once across the actor's restarts: a successor answers a
    # resend with the same (sid, id) as its predecessor would have (from a record of the call
    # that outlives the process), so a client resends it instead of giving up on it.
    resumable: bool = False
    result: Any = UNDECLARED  # a shape (shapes.py)
    errors: tuple[str, ...] = ()  # the error names the op answers itself
    request_attachments: tuple[int, int | None] = (0, 0)  # (at least, at most; None: any)
    reply_attachments: tuple[int, int | None] = (0, 0)
    _names: frozenset[str] = field(default=frozenset())
    # Each argument's name, the exact types a value may have to be taken at once, its
    # default (REQUIRED: none), and the argument (bind).
    _exact: tuple[tuple[str, frozenset[type], Any, Arg], ...] = ()
    _result_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._names = frozenset(a.name for a in self.args)
        self._exact = tuple((a.name, frozenset(a.types), a.default, a) for a in self.args)
        if self.result is not UNDECLARED and self._result_schema is None:
            self._result_schema = document(self.result)

    @property
    def declared(self) -> bool:
        """Whether the op says what it answers."""
        return self._result_schema is not None

    def bind(self, raw: Any) -> dict[str, Any]:
        """Validate wire arguments: a map (or nil when the op takes none) of declared names.

        A value whose exact type is declared (the common case) costs a set lookup; anything
        else (a default to fill in, a subclass, a wrong type) takes the full checks. Unknown
        names are found by counting the declared ones present, and are named before any
        other fault, as the first fault a caller should fix."""
        if raw is None:
            if not self.args:
                return _NO_ARGS
            raw = {}
        if type(raw) is not dict and not isinstance(raw, dict):
            kind = type(raw).__name__
            raise fail("bad_args", f"{self.name}: arguments must be a map, not {kind}")
        out: dict[str, Any] = {}
        present = 0
        for name, exact, default, a in self._exact:
            v = raw.get(name, _MISSING)
            if type(v) in exact:
                out[name] = v
                present += 1
                continue
            if v is _MISSING or (v is None and default is not _MISSING and _NONE not in a.types):
                if default is _MISSING:
                    self._refuse(raw, f"missing argument {name!r}")
                out[name] = default
                present += v is not _MISSING
                continue
            # bool is an int in Python; an int argument must not take True.
            if not isinstance(v, a.types) or (isinstance(v, bool) and bool not in a.types):
                want = "|".join(t.__name__ for t in a.types)
                self._refuse(raw, f"{name!r} must be {want}, not {type(v).__name__}")
            out[name] = v
            present += 1
        if present != len(raw):
            self._refuse(raw, "")
        return out

    def check_attachments(self, n: int) -> None:
        """bad_args for a request with more or fewer raw frames than the op takes: the
        declaration is the contract (sys.info), and a frame the handler would not read is
        not taken in silence."""
        lo, hi = self.request_attachments
        if n < lo or (hi is not None and n > hi):
            takes = f"{lo}" if lo == hi else f"{lo} to {'any' if hi is None else hi}"
            raise fail("bad_args", f"{self.name}: {n} attachments; it takes {takes}")

    def _refuse(self, raw: dict, problem: str) -> None:
        """bad_args for `problem`, or for the unknown names in `raw` if there are any."""
        extra = raw.keys() - self._names
        if extra:
            raise fail("bad_args", f"{self.name}: unknown argument(s) {sorted(map(str, extra))}")
        raise fail("bad_args", f"{self.name}: {problem}")

    def describe(self) -> dict[str, Any]:
        """The op's entry in `sys.info` (PROTOCOL.md section 13): JSON-able data."""
        out = {
            "args": {a.name: a.describe() for a in self.args},
            "idempotent": self.idempotent,
            "resumable": self.resumable,
            "timeout_ms": self.timeout_ms,
            "essential": self.essential,
            "doc": self.doc,
        }
        if self._result_schema is not None:
            out["result"] = self._result_schema
            out["errors"] = list(self.errors)
            out["attachments"] = {"request": _count(self.request_attachments),
                                  "reply": _count(self.reply_attachments)}
        return out


def _count(bounds: tuple[int, int | None]) -> dict[str, int | None]:
    return {"min": bounds[0], "max": bounds[1]}


def _bounds(n: int | tuple[int, int | None], what: str) -> tuple[int, int | None]:
    """An attachment count: exactly `n`, or `(at least, at most)` with None for no limit."""
    lo, hi = (n, n) if isinstance(n, int) else n
    if lo < 0 or (hi is not None and hi < lo):
        raise ValueError(f"{what}: bad attachment count {n!r}")
    return lo, hi


def _arg(name: str, spec: Any) -> Arg:
    """`type`, `(type, default)` or `((type, type), default)`."""
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[1], type):
        t, default = spec
        types = t if isinstance(t, tuple) else (t,)
        return Arg(name, types, default)
    types = spec if isinstance(spec, tuple) else (spec,)
    return Arg(name, types)


def op(
    name: str,
    *,
    args: dict[str, Any] | None = None,
    idempotent: bool = False,
    timeout_ms: int = 5000,
    essential: bool = True,
    recorded: bool = True,
    checked: bool = True,
    resumable: bool = False,
    result: Any = UNDECLARED,
    errors: tuple[str, ...] = (),
    request_attachments: int | tuple[int, int | None] = 0,
    reply_attachments: int | tuple[int, int | None] = 0,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of `name`. `args` maps each name to a type, or to
    `(type, default)` for an optional one. `result` is the shape of what it answers
    (shapes.py), `errors` the names of the errors it answers itself (the runtime's own,
    RUNTIME_ERRORS, go without saying), `*_attachments` how many raw frames the request
    takes and the reply carries: a number, or `(at least, at most)` with None for no limit.
    `checked=False` skips the encodability check of results (OpSpec.checked): only for
    results built from values of known types; an unencodable result still becomes
    `internal`. A shape or an error name that is not one is refused here, at import."""
    unknown = [e for e in errors if e not in KINDS]
    if unknown or isinstance(errors, str):
        raise ValueError(f"{name}: errors must be a tuple of error names; unknown: {unknown}")

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__moorage_op__ = OpSpec(  # type: ignore[attr-defined]
            name=name,
            handler=fn,
            args=tuple(_arg(k, v) for k, v in (args or {}).items()),
            idempotent=idempotent,
            timeout_ms=timeout_ms,
            essential=essential,
            recorded=recorded,
            doc=" ".join((fn.__doc__ or "").split()),  # whole sentences, on one line
            checked=checked,
            resumable=resumable,
            result=result,
            errors=tuple(errors),
            request_attachments=_bounds(request_attachments, name),
            reply_attachments=_bounds(reply_attachments, name),
        )
        return fn

    return mark


def declared(klass: type) -> dict[str, tuple[str, OpSpec]]:
    """The ops a class declares, walking its hierarchy: op name -> (attribute, declaration).
    Reads classes only, so the op table of an actor can be had without starting it."""
    table: dict[str, tuple[str, OpSpec]] = {}
    for k in reversed(klass.__mro__):
        for attr, fn in vars(k).items():
            spec = getattr(fn, "__moorage_op__", None)
            if spec is not None:
                table[spec.name] = (attr, spec)
    return table


def collect(obj: object) -> dict[str, OpSpec]:
    """The ops of an actor instance, handlers bound to it, walking the class hierarchy."""
    return {name: replace(spec, handler=getattr(obj, attr))
            for name, (attr, spec) in declared(type(obj)).items()}
