"""The op declarations as a contract: the shape language, the validator of the JSON Schema
subset it compiles to, and the generated files (ops.json, PROTOCOL.md's tables) that must
follow the declarations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest

from moorage.actors.runtime.registry import RUNTIME_ERRORS, OpSpec, op
from moorage.actors.runtime.shapes import Named, OneOf, document, render, to_schema
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import KINDS
from moorage.protocol.schema import generate
from moorage.protocol.schema.live import ReplyCheck
from moorage.protocol.schema.validate import SchemaError, Validator

ROOT = Path(__file__).resolve().parents[1]


def problems(shape: Any, value: Any) -> list[str]:
    return Validator(document(shape)).problems(value)


# --- the shape language -------------------------------------------------------------------------


def test_a_record_has_required_and_optional_fields_and_no_other():
    shape = {"a": int, "b?": str}
    assert problems(shape, {"a": 1}) == []
    assert problems(shape, {"a": 1, "b": "x"}) == []
    assert problems(shape, {"b": "x"}) == ["result: missing field 'a'"]
    assert problems(shape, {"a": 1, "c": 2}) == ["result: undeclared field 'c' (int)"]


def test_a_record_with_an_ellipsis_takes_more_fields_of_its_shape():
    assert problems({"a": int, ...: Any}, {"a": 1, "z": [1, {}]}) == []
    assert problems({"a": int, ...: int}, {"a": 1, "z": "no"}) == [
        "result.z: expected integer, got str 'no'"]


def test_msgpack_types_are_told_apart_as_the_wire_does():
    assert problems(int, True) == ["result: expected integer, got bool True"]
    assert problems(int, 1.0) == ["result: expected integer, got float 1.0"]
    assert problems(float, 3) == []  # a number may be an int
    assert problems(bytes, "text") == ["result: expected bin, got str"]
    assert problems(str, b"bin") == ["result: expected string, got bin b'bin'"]
    assert problems(bytes, b"\x00") == []


def test_unions_lists_maps_tuples_and_literals():
    assert problems(int | None, None) == []
    assert problems(list[int], [1, "x"]) == ["result[1]: expected integer, got str 'x'"]
    assert problems(dict[str, float], {"a": 1.5, "b": None}) == [
        "result.b: expected number, got nil None"]
    assert problems(tuple[str, int], ["a", 1]) == []
    assert problems(tuple[str, int], ["a"])[0].startswith("result: 1 elements")
    assert problems(tuple[str, int], ["a", 1, 2]) == [
        "result[2]: no value is allowed here, got int"]
    assert problems(Literal["a", "b"], "c") == ["result: expected one of ['a', 'b'], got 'c'"]
    assert problems(Literal[True], 1) != []  # true is not 1
    assert problems(OneOf({"x": int}, None), {"x": "1"})[0].startswith(
        "result: matches none of 2 alternatives")


def test_a_named_shape_is_defined_once_and_may_refer_to_itself():
    fields: dict[str, Any] = {"id": str}
    node = Named("node", fields)
    fields["children?"] = list[node]
    schema = document({"root": node})
    assert schema["properties"]["root"] == {"$ref": "#/$defs/node"}
    assert set(schema["$defs"]) == {"node"}
    good = {"root": {"id": "a", "children": [{"id": "b", "children": []}]}}
    assert Validator(schema).problems(good) == []
    assert Validator(schema).problems({"root": {"id": "a", "children": [{"id": 1}]}}) == [
        "result.root.children[0].id: expected string, got int 1"]
    named: dict[str, Any] = {}
    assert render({"root": node}, named) == "{root: node}"
    assert named == {"node": "{id: str, children?: [node]}"}


def test_the_notation_of_the_tables():
    assert render({"a": int | None, "b?": list[str], ...: Any}) == "{a: int|nil, b?: [str], ...}"
    assert render(dict[str, bytes]) == "{str: bin}"
    assert render(tuple[str, int, int]) == "[str, int, int]"
    assert render(Literal["x", "y"]) == '"x"|"y"'


@pytest.mark.parametrize("bad", [set, {"a": object}, {1: int}, list, frozenset[int]])
def test_what_is_not_a_shape_is_refused(bad):
    with pytest.raises(TypeError):
        to_schema(bad, {})


def test_an_op_cannot_declare_an_error_that_does_not_exist_or_a_result_that_is_no_shape():
    with pytest.raises(ValueError, match="no_such_error"):
        op("x.y", result={"a": int}, errors=("no_such_error",))
    with pytest.raises(TypeError):
        op("x.y", result={"a": object})(lambda self, call: None)


# --- the validator of the subset ----------------------------------------------------------------


@pytest.mark.parametrize("schema", [
    {"type": "string", "pattern": "^a"},  # a keyword outside the subset
    {"type": "bigint"},
    {"$ref": "#/$defs/missing"},
    {"properties": {"a": {"format": "email"}}},
])
def test_a_schema_outside_the_subset_is_refused_on_load(schema):
    with pytest.raises(SchemaError):
        Validator(schema)


class Untagged(Validator):
    """The same validator walking every anyOf branch, as it did before tags."""

    def _tag_table(self, branches: list[Any]) -> None:
        return None


def test_a_tagged_any_of_gives_the_verdict_and_message_of_the_walk_of_every_branch():
    """parse.feed's events (an anyOf told apart by `kind`): the branch the tag names is
    walked alone; whatever the value, the problems are those of the walk of all branches."""
    result = json.loads(generate.OPS_JSON.read_text())["ops"]["parse.feed"]["result"]
    body = {"offset": 9, "mode": "skip_invalid", "skipped": 0, "unparsed": 0, "buffered": 0}
    ok = {"kind": "prompt_end", "start": 0, "end": 9, "source": 0, "trusted": True,
          "nonce": None, "options": {}}
    done = {"kind": "command_finished", "start": 0, "end": 9, "source": 0, "trusted": False,
            "nonce": "n", "exit_code": 0, "options": {"a": "b"}}
    cases = [
        [ok, done], [], [{**ok, "start": "0"}], [{**ok, "kind": "no_such_kind"}],
        [{**ok, "kind": ["unhashable"]}], [{**ok, "kind": 1}], [{**ok, "kind": True}],
        [{**done, "exit_code": "x"}], [{**ok, "extra": 1}], [None, 3, "s"], [{}],
    ]
    tagged, untagged = Validator(result), Untagged(result)
    assert tagged._tag_table(result["$defs"]["event"]["anyOf"]) is not None
    for events in cases:
        value = {**body, "events": events}
        assert tagged.problems(value) == untagged.problems(value), events
    assert tagged.problems({**body, "events": [ok, done]}) == []
    assert tagged.problems({**body, "events": [{**ok, "start": "0"}]}) != []


# --- the generated files follow the declarations ------------------------------------------------


def test_ops_json_is_what_the_declarations_generate():
    assert (ROOT / "protocol/schema/ops.json").read_text() == generate.ops_json_text(), (
        "stale: run python -m moorage.protocol.schema.generate")


def test_protocol_md_tables_are_what_the_declarations_generate():
    text = (ROOT / "protocol/PROTOCOL.md").read_text()
    assert generate.protocol_text(text) == text, (
        "stale: run python -m moorage.protocol.schema.generate")


def test_every_op_of_the_default_tree_declares_its_result_and_valid_schemas():
    ops, served = generate.tree_ops()
    assert len(ops) > 40 and all(s.declared for s in ops.values())
    doc = json.loads((ROOT / "protocol/schema/ops.json").read_text())
    assert doc["runtime_errors"] == list(RUNTIME_ERRORS)
    for name, entry in doc["ops"].items():
        Validator(entry["args"])  # in the subset, or SchemaError
        Validator(entry["result"])
        assert set(entry["errors"]) <= set(KINDS), name
        assert entry["actors"] == served[name]


def test_the_arguments_that_exist_live_are_in_the_tables():
    # Issue 15, point 10: each of these was missing from the spec.
    text = (ROOT / "protocol/PROTOCOL.md").read_text()
    for row, arg in [("sys.config", "timeouts"), ("term.create", "cols`?: int = `80"),
                     ("term.create", "rows`?: int = `24"), ("term.create", "session`?: str"),
                     ("parse.feed", "data`?: bin"), ("term.signal", "target`?: str"),
                     ("fs.sync", "timeout_ms`?: int = `10000"), ("metrics.query", "actor`?")]:
        line = next(x for x in text.splitlines() if x.startswith(f"| `{row}` |"))
        assert f"`{arg}" in line, (row, arg)


def test_an_args_schema_accepts_what_the_runtime_binds_and_refuses_what_it_refuses():
    ops, _ = generate.tree_ops()
    spec: OpSpec = ops["fs.read"]
    v = Validator(generate.args_schema(spec))
    assert v.problems({"path": "/x"}) == []
    assert v.problems({"path": "/x", "length": None}) == []  # nil: the default
    assert v.problems({"path": "/x", "offset": "0"}) != []
    assert v.problems({"path": "/x", "nope": 1}) != []
    assert v.problems({}) != []
    assert Validator(generate.args_schema(ops["sys.ping"])).problems(None) == []


# --- the live check -----------------------------------------------------------------------------


def test_the_live_check_records_a_result_of_another_shape_and_an_undeclared_error(tmp_path):
    log = tmp_path / "violations"
    check = ReplyCheck(ROOT / "protocol/schema/ops.json", log)
    check("terminal", "term.resize", Reply(1, True, "e" * 16, {"cols": 80, "rows": 24}, []))
    check("terminal", "term.resize", Reply(2, False, "e" * 16, {"name": "busy"}, []))
    assert check.violations == [] and not log.exists()
    check("terminal", "term.resize", Reply(3, True, "e" * 16, {"cols": "80", "rows": 24}, []))
    check("watcher", "fs.read", Reply(4, True, "e" * 16, {
        "stat": {"type": "file", "size": 1, "mtime_ns": 1, "ctime_ns": 1, "ino": 1, "dev": 1,
                 "mode": 0o644, "etag": "x"},
        "stale": False, "size": 1, "offset": 0, "length": 1}, []))
    check("terminal", "term.resize", Reply(5, False, "e" * 16, {"name": "conflict"}, []))
    check("fake", "fake.work", Reply(6, True, "e" * 16, {"anything": 1}, []))  # not ours
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["op"], x["problems"]) for x in lines] == [
        ("term.resize", ["result.cols: expected integer, got str '80'"]),
        ("fs.read", ["0 attachments; the op answers 1..1"]),
        ("term.resize", ["answered error 'conflict', which term.resize does not declare"]),
    ]
    assert check.seen == {("terminal", "term.resize", True), ("terminal", "term.resize", False),
                          ("watcher", "fs.read", True)}
