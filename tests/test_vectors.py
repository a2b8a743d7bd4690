"""The conformance vectors and PROTOCOL.md's tables, checked against the real protocol code.

The vectors are what clients in other languages will check themselves against, so this file
reads them the way such a client would: JSON in, frames decoded, meaning compared; meaning
encoded, frames compared byte for byte. The JSON value convention ({"$bin": hex} for msgpack
bin) is written out here rather than imported from the generator, so the two are checked
against each other.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from moorage.protocol import envelope, limits
from moorage.protocol.envelope import TAG, DecodeError
from moorage.protocol.errors import _TABLE, BY_CODE, KINDS, WireError
from moorage.protocol.recovery import MATRIX

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
VECTOR_FILE = ROOT / "protocol" / "vectors" / "envelope.json"
GENERATOR = ROOT / "protocol" / "vectors" / "generate.py"
PROTOCOL_MD = ROOT / "protocol" / "PROTOCOL.md"

DOC = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
VECTORS = DOC["vectors"]
VALID = [v for v in VECTORS if v["valid"]]
ENCODABLE = [v for v in VALID if not v.get("decode_only")]
INVALID = [v for v in VECTORS if not v["valid"]]


def by_name(vectors: list[dict]) -> dict[str, Any]:
    return {"argvalues": vectors, "ids": [v["name"] for v in vectors]}


# --- JSON <-> wire values -------------------------------------------------------------------


def from_json(v: Any) -> Any:
    if isinstance(v, dict):
        if list(v) == ["$bin"]:
            return bytes.fromhex(v["$bin"])
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def as_json(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, dict):
        return {k: as_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [as_json(x) for x in v]
    return v


def frames_of(vector: dict) -> list[bytes]:
    return [bytes.fromhex(f) for f in vector["frames"]]


def attachments_of(meaning: dict) -> list[bytes]:
    return [bytes.fromhex(a) for a in meaning.get("attachments", [])]


def decode(kind: str, frames: list[bytes]) -> dict[str, Any]:
    if kind == "request":
        r = envelope.decode_request(frames)
        meaning = {"id": r.id, "sid": r.sid, "op": r.op, "deadline_ms": r.deadline_ms,
                   "args": as_json(r.args), "attachments": [a.hex() for a in r.attachments]}
        if r.epoch is not None:  # a pinned resend
            meaning["ep"] = r.epoch
        return meaning
    if kind in ("reply", "error_reply"):
        r = envelope.decode_reply(frames)
        if r.ok:
            return {"id": r.id, "ok": True, "ep": r.epoch, "result": as_json(r.body),
                    "attachments": [a.hex() for a in r.attachments]}
        assert r.attachments == []
        return {"id": r.id, "ok": False, "ep": r.epoch, "error": as_json(r.body)}
    if kind == "stream":
        s = envelope.decode_stream(frames)
        meaning = {"topic": s.topic, "seq": s.seq, "ep": s.epoch, "body": as_json(s.body),
                   "attachments": [a.hex() for a in s.attachments]}
        if s.welcome:
            meaning["welcome"] = True
        return meaning
    raise AssertionError(f"unknown kind {kind}")


def encode(kind: str, m: dict[str, Any]) -> list[bytes]:
    if kind == "request":
        frames = envelope.encode_request(m["id"], m["sid"], m["op"], from_json(m["args"]),
                                         m["deadline_ms"], attachments_of(m))
        return envelope.pin_request(frames, m["ep"]) if "ep" in m else frames
    if kind == "reply":
        return envelope.encode_reply(m["id"], m["ep"], from_json(m["result"]), attachments_of(m))
    if kind == "error_reply":
        return envelope.encode_error(m["id"], m["ep"], WireError(**from_json(m["error"])))
    if kind == "stream":
        if m.get("welcome"):
            return envelope.encode_welcome(m["topic"], m["seq"], m["ep"])
        return envelope.encode_stream(m["topic"], m["seq"], m["ep"], from_json(m["body"]),
                                      attachments_of(m))
    raise AssertionError(f"unknown kind {kind}")


# --- the vector file --------------------------------------------------------------------------


def test_the_vector_file_names_its_format_version_and_the_protocol_tag():
    assert DOC["version"] == 1
    assert DOC["tag"] == TAG.decode() == "MOOR1"
    assert set(DOC) == {"version", "tag", "vectors"}


def test_every_vector_has_a_unique_name_and_a_known_kind():
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names))
    for v in VECTORS:
        assert v["kind"] in {"request", "reply", "error_reply", "stream"}, v["name"]
        assert v["frames"] and all(re.fullmatch(r"(?:[0-9a-f]{2})*", f) for f in v["frames"])


def test_the_vectors_cover_every_kind_and_the_required_invalid_cases():
    assert {v["kind"] for v in ENCODABLE} == {"request", "reply", "error_reply", "stream"}
    required = {
        "wrong_tag", "too_few_frames", "header_not_a_map", "id_negative", "id_float",
        "id_string", "id_too_big", "sid_missing", "op_empty", "args_non_str_map_key",
        "args_ext_type", "args_nesting_depth_33", "body_truncated", "header_over_size_limit",
        "too_many_attachments",
    }
    assert required <= {v["name"] for v in INVALID}


@pytest.mark.parametrize("vector", **by_name(VALID))
def test_decoding_a_valid_vector_gives_its_meaning(vector):
    assert decode(vector["kind"], frames_of(vector)) == vector["meaning"]


@pytest.mark.parametrize("vector", **by_name(ENCODABLE))
def test_encoding_a_valid_vector_meaning_gives_its_frames_byte_for_byte(vector):
    assert [f.hex() for f in encode(vector["kind"], vector["meaning"])] == vector["frames"]


@pytest.mark.parametrize("vector", **by_name(INVALID))
def test_decoding_an_invalid_vector_raises_the_named_error_with_the_echoed_id(vector):
    with pytest.raises(DecodeError) as caught:
        decode(vector["kind"], frames_of(vector))
    assert caught.value.error.name == vector["error"]["name"]
    assert caught.value.error.code == vector["error"]["code"] == KINDS[vector["error"]["name"]].code
    if "id" in vector:
        assert caught.value.request_id == vector["id"]


@pytest.mark.parametrize("vector", **by_name(INVALID))
def test_an_invalid_request_is_answered_with_an_error_reply_that_a_client_can_read(vector):
    # What the actor does with a DecodeError: encode_error(request_id, epoch, error).
    with pytest.raises(DecodeError) as caught:
        decode(vector["kind"], frames_of(vector))
    reply = envelope.decode_reply(
        envelope.encode_error(caught.value.request_id, "5eed0f1ce0ffee00", caught.value.error))
    assert reply.ok is False and reply.id == vector["id"]
    assert WireError.from_wire(reply.body).name == vector["error"]["name"]


@pytest.mark.parametrize("vector", **by_name([v for v in VALID if v["kind"] == "error_reply"]))
def test_an_error_reply_vector_reads_back_as_the_wire_error_it_was_made_from(vector):
    body = envelope.decode_reply(frames_of(vector)).body
    assert WireError.from_wire(body).to_wire() == from_json(vector["meaning"]["error"])


def test_the_generator_rebuilds_the_vector_file_exactly():
    spec = importlib.util.spec_from_file_location("moorage_vectors_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    first = generate.render()
    assert first == generate.render()  # deterministic
    assert first == VECTOR_FILE.read_text(encoding="utf-8")


# --- PROTOCOL.md cannot drift from the code ---------------------------------------------------


def markdown_table(text: str, header: str) -> list[list[str]]:
    """The body rows of the table whose header row is `header`, cells stripped of backticks."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    return rows


def test_the_error_table_in_protocol_md_lists_every_code_with_its_classification():
    rows = markdown_table(
        PROTOCOL_MD.read_text(encoding="utf-8"),
        "| code | name | category | severity | retryable | fallback_available | meaning "
        "| fault |")
    documented = {int(r[0]): r for r in rows}
    assert len(documented) == len(rows), "a code is listed twice"
    assert set(documented) == set(BY_CODE), "codes missing from or unknown to PROTOCOL.md"
    for code, name, category, severity, retryable, fallback, summary, fault in _TABLE:
        assert documented[code][1:] == [
            name, str(category), str(severity), str(retryable).lower(),
            str(fallback).lower(), summary, str(fault),
        ], code


def test_the_recovery_matrix_in_protocol_md_is_the_one_in_the_code():
    rows = markdown_table(
        PROTOCOL_MD.read_text(encoding="utf-8"),
        "| category | severity | primary | fallback | max_retries |")
    assert rows == [
        [str(r.category), str(r.severity), r.primary, r.fallback or "-",
         "N/A" if r.max_retries is None else str(r.max_retries)]
        for r in MATRIX
    ]


def test_protocol_md_states_every_decoding_limit():
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for number in (limits.MAX_MESSAGE_SIZE, limits.MAX_HEADER_SIZE, limits.MAX_BODY_SIZE,
                   limits.MAX_ATTACHMENTS, limits.MAX_DEPTH, limits.MAX_OP_LEN, limits.HWM):
        assert re.search(rf"\|[^|\n]*\b{number}\b", text), number
    assert limits.MAX_ID == 2**53 - 1 and "2^53\u22121" in text


# --- the error body round trip --------------------------------------------------------------


def through_msgpack(err: WireError) -> WireError:
    return WireError.from_wire(msgpack.unpackb(envelope.packb(err.to_wire())))


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_error_kind_survives_to_wire_msgpack_and_from_wire(name):
    bare = WireError.of(name)
    assert through_msgpack(bare) == bare
    assert set(bare.to_wire()) == {"code", "name", "category", "severity", "retryable",
                                   "fallback_available", "message"}
    full = WireError.of(name, "with everything", detail={"path": "/x", "n": [1, b"\x00"]},
                        retry_after_ms=25)
    assert through_msgpack(full) == full
    assert full.code == KINDS[name].code and full.severity == str(KINDS[name].severity)


def test_an_error_code_unknown_to_the_reader_keeps_what_the_sender_said():
    sent = WireError(code=950, name="future_quota", category="resource", severity="recoverable",
                     retryable=True, fallback_available=False, message="later",
                     retry_after_ms=200)
    assert through_msgpack(sent) == sent


def test_an_unknown_code_with_missing_fields_is_classified_as_internal():
    got = WireError.from_wire({"code": 951})
    assert (got.code, got.name, got.retryable, got.message) == (951, "internal", False, "")


@pytest.mark.parametrize("body", [None, "boom", [100], {"code": "100"}, {"name": "busy"}])
def test_a_malformed_error_body_reads_as_bad_request(body):
    assert WireError.from_wire(body).name == "bad_request"
