"""A validator for the JSON Schema subset that `ops.json` is written in, over msgpack values.

Why our own: the subset is small (what actors/runtime/shapes.py generates), the values are
msgpack's (bin is `bytes`, an int is never a float's stand-in for `integer`, a bool is never
an int), and a stock validator would be a dependency for twenty lines of checks. Keywords:
`type` (one name or a list), `enum`, `const`, `properties`, `required`,
`additionalProperties`, `items`, `prefixItems`, `minItems`, `anyOf`, `$ref` to
`#/$defs/<name>`, and `x-msgpack: "bin"`. Annotations (`$defs`, `$comment`, `description`,
`title`, `default`) are ignored. Any other keyword is refused when the schema is loaded, so a
schema cannot say more than is checked.
"""

from __future__ import annotations

from typing import Any

SUPPORTED = frozenset({
    "type", "enum", "const", "properties", "required", "additionalProperties", "items",
    "prefixItems", "minItems", "anyOf", "$ref", "x-msgpack",
})
ANNOTATIONS = frozenset({"$defs", "$comment", "description", "title", "default", "$schema"})
_TYPES = frozenset({"string", "integer", "number", "boolean", "null", "array", "object"})


class SchemaError(ValueError):
    """A schema that uses something outside the subset (raised on load, not on a value)."""


def _is(value: Any, name: str) -> bool:
    t = type(value)
    if name == "string":
        return t is str
    if name == "integer":
        return t is int
    if name == "number":
        return t is int or t is float
    if name == "boolean":
        return t is bool
    if name == "null":
        return value is None
    if name == "array":
        return t is list or t is tuple
    return t is dict  # object


def _kind(value: Any) -> str:
    return {str: "str", int: "int", float: "float", bool: "bool", bytes: "bin",
            type(None): "nil", list: "array", tuple: "array", dict: "map"}.get(
        type(value), type(value).__name__)


class Validator:
    """One schema document (its `$defs` resolve its `$ref`s); `problems(value)` lists where
    the value breaks it, each as `path: what`, empty when it conforms."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        # anyOf tables by the schema's id (the schema kept beside, so the id stays its own)
        self._tags: dict[int, tuple[dict, tuple[str, dict[Any, Any]] | None]] = {}
        self.schema = schema
        self._check_subset(schema)
        for d in self.defs.values():
            self._check_subset(d)

    def _check_subset(self, schema: Any) -> None:
        if isinstance(schema, bool):
            return
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema is a map or a bool, not {schema!r}")
        unknown = set(schema) - SUPPORTED - ANNOTATIONS
        if unknown:
            raise SchemaError(f"keywords outside the subset: {sorted(unknown)}")
        types = schema.get("type")
        for t in [types] if isinstance(types, str) else (types or []):
            if t not in _TYPES:
                raise SchemaError(f"unknown type {t!r}")
        ref = schema.get("$ref")
        if ref is not None and (not ref.startswith("#/$defs/") or ref[8:] not in self.defs):
            raise SchemaError(f"$ref {ref!r} is not one of this document's $defs")
        for key in ("properties",):
            for sub in schema.get(key, {}).values():
                self._check_subset(sub)
        for key in ("additionalProperties", "items"):
            if key in schema:
                self._check_subset(schema[key])
        for sub in schema.get("prefixItems", []) + schema.get("anyOf", []):
            self._check_subset(sub)

    def problems(self, value: Any, path: str = "result") -> list[str]:
        out: list[str] = []
        self._walk(self.schema, value, path, out)
        return out

    def _walk(self, schema: Any, value: Any, path: str, out: list[str]) -> None:
        if schema is True or schema == {}:
            return
        if schema is False:
            out.append(f"{path}: no value is allowed here, got {_kind(value)}")
            return
        ref = schema.get("$ref")
        if ref is not None:
            self._walk(self.defs[ref[8:]], value, path, out)
        if "anyOf" in schema and not self._tagged_conforms(schema, value, path):
            branches = []
            for sub in schema["anyOf"]:
                found: list[str] = []
                self._walk(sub, value, path, found)
                if not found:
                    break
                branches.append(found)
            else:
                best = min(branches, key=len)
                out.append(f"{path}: matches none of {len(branches)} alternatives; the "
                           f"closest: {'; '.join(best)}")
        if "x-msgpack" in schema and type(value) is not bytes:
            out.append(f"{path}: expected bin, got {_kind(value)}")
            return
        types = schema.get("type")
        if types is not None:
            names = [types] if isinstance(types, str) else types
            if not any(_is(value, n) for n in names):
                out.append(f"{path}: expected {'|'.join(names)}, got {_kind(value)} "
                           f"{_short(value)}")
                return
        if "const" in schema and not _same(value, schema["const"]):
            out.append(f"{path}: expected {schema['const']!r}, got {_short(value)}")
        if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
            out.append(f"{path}: expected one of {schema['enum']!r}, got {_short(value)}")
        if type(value) is dict:
            self._object(schema, value, path, out)
        elif type(value) in (list, tuple):
            self._array(schema, value, path, out)

    def _tagged_conforms(self, schema: dict, value: Any, path: str) -> bool:
        """Does a map conform to the anyOf branch its tag names? For an anyOf of maps told
        apart by a const field (an event's `kind`): that branch is walked alone, where the
        walk of every branch before it took four fifths of a test's time checking a thousand
        events a reply. False sends the caller through every branch, as without a tag, so
        the verdict and its message are the same either way."""
        if type(value) is not dict:
            return False
        entry = self._tags.get(id(schema))
        if entry is None:
            entry = self._tags[id(schema)] = (schema, self._tag_table(schema["anyOf"]))
        table = entry[1]
        if table is None:
            return False
        field, by_tag = table
        try:
            sub = by_tag.get(value.get(field))
        except TypeError:  # an unhashable tag: no branch names it
            return False
        if sub is None:
            return False
        found: list[str] = []
        self._walk(sub, value, path, found)
        return not found

    def _tag_table(self, branches: list[Any]) -> tuple[str, dict[Any, Any]] | None:
        """(field, {const: branch}) when every branch is a map with a const `field` and no
        two share its value; None otherwise."""
        resolved = []
        for b in branches:
            while isinstance(b, dict) and set(b) == {"$ref"}:
                b = self.defs[b["$ref"][8:]]
            if not isinstance(b, dict) or not isinstance(b.get("properties"), dict):
                return None
            resolved.append(b)
        if not resolved:
            return None
        for field, sub in resolved[0]["properties"].items():
            if not (isinstance(sub, dict) and isinstance(sub.get("const"), str)):
                continue
            tags = [p.get("const") if isinstance(p := b["properties"].get(field), dict)
                    else None for b in resolved]
            if all(isinstance(t, str) for t in tags) and len(set(tags)) == len(tags):
                return field, dict(zip(tags, resolved, strict=True))
        return None

    def _object(self, schema: dict, value: dict, path: str, out: list[str]) -> None:
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                out.append(f"{path}: missing field {name!r}")
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            sub = props.get(k)
            if sub is not None:
                self._walk(sub, v, f"{path}.{k}", out)
            elif extra is False:
                out.append(f"{path}: undeclared field {k!r} ({_kind(v)})")
            else:
                self._walk(extra, v, f"{path}.{k}", out)

    def _array(self, schema: dict, value: list | tuple, path: str, out: list[str]) -> None:
        prefix = schema.get("prefixItems", [])
        if len(value) < schema.get("minItems", 0):
            out.append(f"{path}: {len(value)} elements, at least {schema['minItems']} expected")
        for i, v in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", True)
            self._walk(sub, v, f"{path}[{i}]", out)


def _same(a: Any, b: Any) -> bool:
    """JSON equality, where True is not 1."""
    return (type(a) is type(b) and a == b) or (
        type(a) in (int, float) and type(b) in (int, float) and a == b)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
