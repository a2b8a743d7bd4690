"""Write `ops.json`, PROTOCOL.md's op tables and the clients' known ops from the actors' `@op`
declarations.

    python -m moorage.protocol.schema.generate           write them
    python -m moorage.protocol.schema.generate --check   exit 1 if any is stale

The declarations are read from the classes of the default tree (supervisor/default.toml's
`start` entries, their `op_providers`, and the supervisor): nothing is started, no socket is
opened. `ops.json` holds, per op, a JSON Schema (draft 2020-12 subset, validate.py) of its
arguments and of its result, with the attachments, errors and retry facts; PROTOCOL.md gets one
table per actor between `<!-- ops:NAME begin -->` and `<!-- ops:NAME end -->` markers, so the
prose around them is kept and the tables cannot drift from the code. Each client (Python,
TypeScript, Rust) gets one source file naming the ops declared idempotent: what it knows of an
actor's ops before that actor's `sys.info` has told it (an actor that is down or restarting
cannot), so that a read-only call to it is resent and ends `timeout`, never `outcome_unknown`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from moorage.actors.runtime.actor import Actor
from moorage.actors.runtime.registry import RUNTIME_ERRORS, Arg, OpSpec, declared
from moorage.actors.runtime.shapes import DIALECT, render
from moorage.protocol.envelope import PROTO_VERSION
from moorage.supervisor.supervisor import Supervisor

HERE = Path(__file__).resolve().parent
OPS_JSON = HERE / "ops.json"
PROTOCOL_MD = HERE.parent / "PROTOCOL.md"
KNOWN_OPS_PY = HERE.parent / "client" / "_known_ops.py"
KNOWN_OPS_TS = HERE.parent / "typescript" / "src" / "knownOps.ts"
KNOWN_OPS_RS = HERE.parent / "rust" / "src" / "known_ops.rs"
BUILTIN = "builtin"  # the table of the ops every actor serves
_ARG_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
              dict: "object", type(None): "null"}
_ARG_TEXT = {str: "str", int: "int", float: "float", bool: "bool", bytes: "bin", list: "array",
             dict: "map", type(None): "nil"}


# --- the declarations -------------------------------------------------------------------------


def tree_classes() -> dict[str, type]:
    """Actor id -> class, for the default tree: its supervisors and every `start` entry."""
    doc = tomllib.loads(resources.files("moorage.supervisor").joinpath("default.toml")
                        .read_text())
    out: dict[str, type] = {"supervisor": Supervisor}

    def walk(children: list[dict[str, Any]]) -> None:
        for c in children:
            if c.get("type") == "supervisor":
                out[c["id"]] = Supervisor
                walk(c.get("children", []))
            else:
                module, _, name = c["start"].partition(":")
                out[c["id"]] = getattr(importlib.import_module(module), name)

    walk(doc["children"])
    return out


def class_ops(klass: type) -> dict[str, OpSpec]:
    """Every op an actor class serves: its own, its ancestors', its op providers'."""
    table = {name: spec for name, (_, spec) in declared(klass).items()}
    for provider in getattr(klass, "op_providers", ()):
        for name, (_, spec) in declared(provider).items():
            if name in table:
                raise ValueError(f"{klass.__name__}: op {name} declared twice")
            table[name] = spec
    return table


def tree_ops() -> tuple[dict[str, OpSpec], dict[str, list[str]]]:
    """op -> its declaration, and op -> the actors of the default tree that serve it. The same
    name must be the same declaration wherever it is served (the built-ins, `sup.*`)."""
    ops: dict[str, OpSpec] = {}
    served: dict[str, list[str]] = {}
    for actor, klass in tree_classes().items():
        for name, spec in class_ops(klass).items():
            if ops.setdefault(name, spec) is not spec:
                raise ValueError(f"op {name} has two declarations ({actor})")
            served.setdefault(name, []).append(actor)
    undeclared = sorted(n for n, s in ops.items() if not s.declared)
    if undeclared:
        raise ValueError(f"ops without a declared result: {undeclared}")
    return dict(sorted(ops.items())), served


def group_of(name: str, actors: list[str]) -> str:
    """The table an op goes in: the built-ins', or its actor's (the root for `sup.*`)."""
    if name in class_ops(Actor):
        return BUILTIN
    return "supervisor" if "supervisor" in actors else actors[0]


# --- ops.json ---------------------------------------------------------------------------------


def arg_schema(a: Arg) -> dict[str, Any]:
    types = list(a.types) + ([] if a.required or type(None) in a.types else [type(None)])
    parts = [{"x-msgpack": "bin"} if t is bytes else {"type": _ARG_TYPES[t]} for t in types]
    if all("type" in p for p in parts):
        names = [p["type"] for p in parts]
        out: dict[str, Any] = {"type": names[0] if len(names) == 1 else names}
    else:
        out = {"anyOf": parts}
    if not a.required and a.default is not None:
        out["default"] = a.default
    return out


def args_schema(spec: OpSpec) -> dict[str, Any]:
    """The op's arguments: a map of its declared names (or nil when none is required)."""
    required = [a.name for a in spec.args if a.required]
    out: dict[str, Any] = {"type": "object" if required else ["object", "null"],
                           "properties": {a.name: arg_schema(a) for a in spec.args}}
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def ops_document() -> dict[str, Any]:
    ops, served = tree_ops()
    entries = {}
    for name, spec in ops.items():
        d = spec.describe()
        entries[name] = {
            "actors": served[name],
            "doc": d["doc"],
            "idempotent": d["idempotent"],
            "resumable": d["resumable"],
            "timeout_ms": d["timeout_ms"],
            "essential": d["essential"],
            "args": args_schema(spec),
            "result": d["result"],
            "attachments": d["attachments"],
            "errors": d["errors"],
        }
    return {
        "$comment": "Generated from the actors' @op declarations by `python -m "
                    "moorage.protocol.schema.generate`; do not edit. Format: PROTOCOL.md "
                    "section 14.",
        "format": "moorage-ops",
        "protocol": PROTO_VERSION,
        "dialect": DIALECT,
        "runtime_errors": list(RUNTIME_ERRORS),
        "ops": entries,
    }


def ops_json_text() -> str:
    return json.dumps(ops_document(), indent=1, ensure_ascii=False) + "\n"


# --- PROTOCOL.md's tables ---------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def args_text(spec: OpSpec) -> str:
    parts = []
    for a in spec.args:
        t = "|".join(_ARG_TEXT[t] for t in a.types)
        if a.required:
            parts.append(f"`{a.name}`: {t}")
        elif a.default is None:
            parts.append(f"`{a.name}`?: {t}")
        else:
            parts.append(f"`{a.name}`?: {t} = `{_default(a.default)}`")
    lo, hi = spec.request_attachments
    if hi != 0:
        parts.append(f"+ {_count(lo, hi)} attachment{'s' if hi != 1 else ''}")
    return ", ".join(parts) or "none"


def _count(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo} or more" if lo else "any number of"
    return str(lo) if lo == hi else f"{lo} or {hi}" if hi == lo + 1 else f"{lo} to {hi}"


def table(group: str, ops: dict[str, OpSpec], served: dict[str, list[str]]) -> str:
    rows = ["| op | args | result | errors | retry | timeout_ms |",
            "|---|---|---|---|---|---|"]
    named: dict[str, Any] = {}
    for name, spec in ops.items():
        if group_of(name, served[name]) != group:
            continue
        result = f"`{render(spec.result, named)}`"
        lo, hi = spec.reply_attachments
        if hi != 0:
            result += f" + {_count(lo, hi)} attachment{'s' if hi != 1 else ''}"
        errors = ", ".join(f"`{e}`" for e in spec.errors) or "-"
        retry = "idempotent" if spec.idempotent else "resumable" if spec.resumable else "no"
        rows.append(f"| `{name}` | {_cell(args_text(spec))} | {_cell(result)} | {errors} | "
                    f"{retry} | {spec.timeout_ms} |")
    if named:
        rows += ["", "where"]
        rows += [f"- `{shape_name}` is `{text}`" for shape_name, text in named.items()]
    return "\n".join(rows)


MARKER = re.compile(r"(<!-- ops:(?P<group>[\w.-]+) begin[^>]*-->\n)(.*?)(<!-- ops:(?P=group) "
                    r"end -->)", re.S)


def protocol_text(current: str) -> str:
    """PROTOCOL.md with each marked table made anew from the declarations."""
    ops, served = tree_ops()
    groups = {group_of(n, served[n]) for n in ops}
    found = set()

    def fill(m: re.Match[str]) -> str:
        found.add(m["group"])
        return m[1] + table(m["group"], ops, served) + "\n" + m[4]

    out = MARKER.sub(fill, current)
    missing = sorted(groups - found)
    if missing:
        raise ValueError(f"PROTOCOL.md has no table markers for: {missing}")
    return out


# --- the clients' known ops ------------------------------------------------------------------

# What each generated file says of itself, before its list.
_KNOWN_OPS_ABOUT = (
    "The ops the default tree's actors declare idempotent (protocol/schema/ops.json): what a",
    "client knows of an actor's ops before that actor's sys.info has told it (PROTOCOL.md",
    "section 10). Once it has, the actor's own table replaces this one for that actor.",
    "",
    "Generated from the actors' @op declarations by `python -m",
    "moorage.protocol.schema.generate`; do not edit.",
)


def idempotent_ops() -> list[str]:
    """The names of the ops declared idempotent, sorted (as ops.json says them)."""
    ops, _ = tree_ops()
    return [name for name, spec in ops.items() if spec.idempotent]


def known_ops_python(names: list[str]) -> str:
    about = "\n".join(_KNOWN_OPS_ABOUT)
    items = "".join(f"    {json.dumps(n)},\n" for n in names)
    return f'"""{about}\n"""\n\nSCHEMA_IDEMPOTENT = frozenset({{\n{items}}})\n'


def known_ops_typescript(names: list[str]) -> str:
    about = "".join(f" *{' ' + line if line else ''}\n" for line in _KNOWN_OPS_ABOUT)
    items = "".join(f"  {json.dumps(n)},\n" for n in names)
    return (f"/**\n{about} */\nexport const SCHEMA_IDEMPOTENT: ReadonlySet<string> = "
            f"new Set([\n{items}]);\n")


def known_ops_rust(names: list[str]) -> str:
    about = "".join(f"//!{' ' + line if line else ''}\n" for line in _KNOWN_OPS_ABOUT)
    items = "".join(f"    {json.dumps(n)},\n" for n in names)
    return (f"{about}\n/// The ops declared idempotent, sorted.\n"
            f"pub const SCHEMA_IDEMPOTENT: &[&str] = &[\n{items}];\n")


def known_ops_texts() -> dict[Path, str]:
    """Each client's generated source file and its text."""
    names = idempotent_ops()
    return {KNOWN_OPS_PY: known_ops_python(names),
            KNOWN_OPS_TS: known_ops_typescript(names),
            KNOWN_OPS_RS: known_ops_rust(names)}


# --- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    wanted = {OPS_JSON: ops_json_text(),
              PROTOCOL_MD: protocol_text(PROTOCOL_MD.read_text()),
              **known_ops_texts()}
    stale = [path for path, text in wanted.items()
             if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path} (run python -m moorage.protocol.schema.generate)",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
