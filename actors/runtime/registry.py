"""Ops: what an actor serves, with the arguments each takes, and how it may be retried.

An op is declared next to its handler with `@op(...)`; the runtime validates the arguments
against the declaration before the handler runs, so handlers see clean keyword arguments and
a caller gets `bad_args` naming the culprit instead of a TypeError from deep inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moorage.protocol.errors import fail

_MISSING = object()
REQUIRED = _MISSING
_NO_ARGS: dict[str, Any] = {}  # what an op without arguments is called with; never mutated


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    types: tuple[type, ...]
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        return self.default is _MISSING


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
    _names: frozenset[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        self._names = frozenset(a.name for a in self.args)

    def bind(self, raw: Any) -> dict[str, Any]:
        """Validate wire arguments: a map (or nil when the op takes none) of declared names."""
        if raw is None:
            if not self.args:
                return _NO_ARGS
            raw = {}
        if not isinstance(raw, dict):
            kind = type(raw).__name__
            raise fail("bad_args", f"{self.name}: arguments must be a map, not {kind}")
        extra = raw.keys() - self._names
        if extra:
            raise fail("bad_args", f"{self.name}: unknown argument(s) {sorted(map(str, extra))}")
        out: dict[str, Any] = {}
        for a in self.args:
            v = raw.get(a.name, _MISSING)
            if v is _MISSING or (v is None and not a.required and type(None) not in a.types):
                if a.required:
                    raise fail("bad_args", f"{self.name}: missing argument {a.name!r}")
                out[a.name] = a.default
                continue
            # bool is an int in Python; an int argument must not take True.
            if not isinstance(v, a.types) or (isinstance(v, bool) and bool not in a.types):
                want = "|".join(t.__name__ for t in a.types)
                got = type(v).__name__
                raise fail("bad_args", f"{self.name}: {a.name!r} must be {want}, not {got}")
            out[a.name] = v
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "args": {
                a.name: {
                    "type": "|".join(t.__name__ for t in a.types),
                    "required": a.required,
                }
                for a in self.args
            },
            "idempotent": self.idempotent,
            "resumable": self.resumable,
            "timeout_ms": self.timeout_ms,
            "essential": self.essential,
            "doc": self.doc,
        }


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
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of `name`. `args` maps each name to a type, or to
    `(type, default)` for an optional one. `checked=False` skips the shape check of results
    (OpSpec.checked): only for results built from values of known types; an unencodable
    result still becomes `internal`."""

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
        )
        return fn

    return mark


def collect(obj: object) -> dict[str, OpSpec]:
    """The ops of an actor instance, handlers bound to it, walking the class hierarchy."""
    table: dict[str, OpSpec] = {}
    for klass in reversed(type(obj).__mro__):
        for attr, fn in vars(klass).items():
            spec = getattr(fn, "__moorage_op__", None)
            if spec is not None:
                bound = getattr(obj, attr)
                table[spec.name] = OpSpec(
                    spec.name, bound, spec.args, spec.idempotent, spec.timeout_ms,
                    spec.essential, spec.recorded, spec.doc, spec.checked, spec.resumable,
                )
    return table
