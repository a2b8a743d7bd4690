"""Result shapes: what an op answers, written once beside its handler in Python's own types.

A client in another language needs each op's result written down exactly: which fields, of
which types, which of them may be missing or nil. Writing that in prose drifts from the code;
writing it as JSON Schema beside each handler is unreadable. So an op declares its result in
this small language, made of the Python types a reader already knows, and the declaration is
turned into a JSON Schema (draft 2020-12 subset) for `sys.info`, `protocol/schema/ops.json`
and the live check of every reply in the tests, and into text for PROTOCOL.md's tables.

  str, int, float, bool, bytes, None   msgpack str, int, float (an int is accepted), bool,
                                       bin, nil
  Any                                  any value; only where the op truly does not say
  Literal["a", "b"]                    one of these values
  list[S]                              an array, each element of shape S
  tuple[S1, S2]                        an array of exactly these elements
  dict[str, S]                         a map of any str keys, each value of shape S
  {"a": S, "b?": S}                    a record: field `a` always there, `b` may be missing;
                                       no other field, unless the record has a key `...`:
  {"a": S, ...: S2}                    ... and any other field, each of shape S2
  S1 | S2                              either (Python's union of types)
  OneOf(S1, S2)                        either, where a record is in one of them (a dict
                                       literal has no `|`, and makes `list[...] | None` fail)
  Named("name", S)                     S, with a name: tables show the name and define S once

Records are closed by default on purpose: a field an op starts returning without declaring
it fails the tests that see it (tests/conftest.py), so the declaration cannot fall behind.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# msgpack bin has no JSON Schema type: our keyword says it (a stock validator, to which an
# unknown keyword is an annotation, accepts any value there; ours checks for bytes).
BIN_KEYWORD = "x-msgpack"

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                            None: "null", type(None): "null"}
_SCALAR_TEXT: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool",
                                bytes: "bin", None: "nil", type(None): "nil"}


class OneOf:
    """Either of several shapes (a union that may hold records)."""

    __slots__ = ("shapes",)

    def __init__(self, *shapes: Any) -> None:
        if len(shapes) < 2:
            raise TypeError("OneOf takes two shapes or more")
        self.shapes = shapes

    def __or__(self, other: Any) -> OneOf:
        return OneOf(*self.shapes, other)

    def __ror__(self, other: Any) -> OneOf:
        return OneOf(other, *self.shapes)

    def __repr__(self) -> str:
        return f"OneOf{self.shapes!r}"


@dataclass(frozen=True, slots=True)
class Named:
    """A shape with a name, for one that several ops share or that is too big for a table
    cell (a terminal session, a parser event): defined once, referred to by name."""

    name: str
    shape: Any

    def __or__(self, other: Any) -> OneOf:
        return OneOf(self, other)

    def __ror__(self, other: Any) -> OneOf:
        return OneOf(other, self)


def _scalar(shape: Any) -> bool:
    """str, int, float, bool, bytes or None (asked without hashing: a shape may be a dict)."""
    return shape is None or (isinstance(shape, type) and shape in _SCALAR_TEXT)


def _members(shape: Any) -> tuple[Any, ...] | None:
    """The alternatives of a union shape, or None when it is not one."""
    if isinstance(shape, OneOf):
        return shape.shapes
    if isinstance(shape, types.UnionType) or get_origin(shape) is typing.Union:
        return get_args(shape)
    return None


def _record_fields(shape: dict) -> tuple[dict[str, tuple[Any, bool]], Any]:
    """A record's fields as name -> (shape, required), and the shape of any other field
    (None: no other field)."""
    fields: dict[str, tuple[Any, bool]] = {}
    rest = None
    for key, value in shape.items():
        if key is Ellipsis:
            rest = value
        elif isinstance(key, str) and key:
            optional = key.endswith("?")
            fields[key.removesuffix("?")] = (value, not optional)
        else:
            raise TypeError(f"a record's keys are field names or `...`, not {key!r}")
    return fields, rest


# --- to JSON Schema ---------------------------------------------------------------------------


def to_schema(shape: Any, defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of `shape`; named shapes go into `defs` and are referred to.
    Raises TypeError for anything that is not part of the language."""
    if shape is Any:
        return {}
    if shape is bytes:
        return {BIN_KEYWORD: "bin"}
    if _scalar(shape):
        return {"type": _SCALARS[shape]}
    if isinstance(shape, Named):
        if defs is None:
            raise TypeError(f"named shape {shape.name!r} outside a schema document")
        if shape.name not in defs:
            defs[shape.name] = {}  # taken before its body: a shape may refer to itself
            defs[shape.name] = to_schema(shape.shape, defs)
        return {"$ref": f"#/$defs/{shape.name}"}
    if isinstance(shape, dict):
        fields, rest = _record_fields(shape)
        props = {k: to_schema(s, defs) for k, (s, _) in fields.items()}
        out: dict[str, Any] = {"type": "object", "properties": props}
        required = [k for k, (_, req) in fields.items() if req]
        if required:
            out["required"] = required
        out["additionalProperties"] = False if rest is None else to_schema(rest, defs)
        return out
    members = _members(shape)
    if members is not None:
        return _union([to_schema(m, defs) for m in members])
    origin, params = get_origin(shape), get_args(shape)
    if origin is Literal:
        return {"const": params[0]} if len(params) == 1 else {"enum": list(params)}
    if origin is list and len(params) == 1:
        return {"type": "array", "items": to_schema(params[0], defs)}
    if origin is tuple and len(params) == 2 and params[1] is Ellipsis:
        return {"type": "array", "items": to_schema(params[0], defs)}
    if origin is tuple and params:
        return {"type": "array", "prefixItems": [to_schema(p, defs) for p in params],
                "items": False, "minItems": len(params)}
    if origin is dict and len(params) == 2 and params[0] is str:
        return {"type": "object", "additionalProperties": to_schema(params[1], defs)}
    raise TypeError(f"not a shape: {shape!r}")


def _union(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    """anyOf, folded to one `type` list when every member is a bare type (`int | None`)."""
    if any(s == {} for s in schemas):
        return {}
    if all(set(s) == {"type"} and isinstance(s["type"], str) for s in schemas):
        return {"type": [s["type"] for s in schemas]}
    return {"anyOf": schemas}


def document(shape: Any) -> dict[str, Any]:
    """A self-contained schema of `shape`: its named parts in its own `$defs`."""
    defs: dict[str, Any] = {}
    out = to_schema(shape, defs)
    return {**out, "$defs": dict(sorted(defs.items()))} if defs else out


# --- to text, for the tables in PROTOCOL.md ---------------------------------------------------


def render(shape: Any, named: dict[str, Any] | None = None) -> str:
    """`shape` in the notation PROTOCOL.md uses (`{a: int, b?: str|nil}`, `[event]`); named
    shapes are written by name and collected into `named` for a definition of their own."""
    if shape is Any:
        return "any"
    if _scalar(shape):
        return _SCALAR_TEXT[shape]
    if isinstance(shape, Named):
        if named is not None and shape.name not in named:
            named[shape.name] = None  # first, so that a shape naming itself stops here
            named[shape.name] = render(shape.shape, named)
        return shape.name
    if isinstance(shape, dict):
        fields, rest = _record_fields(shape)
        parts = [f"{k}{'' if req else '?'}: {render(s, named)}" for k, (s, req) in fields.items()]
        if rest is not None:
            parts.append("..." if rest is Any else f"...: {render(rest, named)}")
        return "{" + ", ".join(parts) + "}"
    members = _members(shape)
    if members is not None:  # alternatives that are records read better spaced out
        sep = " | " if any(isinstance(m, dict) for m in members) else "|"
        return sep.join(render(m, named) for m in members)
    origin, params = get_origin(shape), get_args(shape)
    if origin is Literal:
        return "|".join(f'"{p}"' if isinstance(p, str) else repr(p) for p in params)
    if origin is list or (origin is tuple and len(params) == 2 and params[1] is Ellipsis):
        return f"[{render(params[0], named)}]"
    if origin is tuple:
        return "[" + ", ".join(render(p, named) for p in params) + "]"
    if origin is dict:
        return f"{{str: {render(params[1], named)}}}"
    raise TypeError(f"not a shape: {shape!r}")


# --- shapes of the protocol itself, which several ops carry -----------------------------------

# An error as it travels (PROTOCOL.md section 6): inside a result, where a part of an answer
# failed (a nested supervisor that did not answer, an actor that refused its pressure level).
WIRE_ERROR = Named("error", {
    "code": int, "name": str, "category": str, "severity": str, "retryable": bool,
    "fallback_available": bool, "message": str, "detail?": Any, "retry_after_ms?": int})
