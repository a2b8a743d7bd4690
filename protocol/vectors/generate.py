"""Rebuild the conformance vectors (envelope.json) from the real encoders, deterministically.

    python protocol/vectors/generate.py                 write envelope.json beside this file
    python protocol/vectors/generate.py --check         exit 1 if envelope.json is stale
    python protocol/vectors/generate.py --error-table   print PROTOCOL.md's error table

Valid vectors are written as their meaning first; the frames are whatever protocol.envelope's
encoders make of it, and the decoders must give the meaning back. Invalid vectors are hand-made
frames with the error the decoder must raise; both are checked here against the real code, so
this script refuses to write a vector the code disagrees with. The format and the JSON value
conventions ({"$bin": hex} for msgpack bin) are described in protocol/PROTOCOL.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgpack

from moorage.protocol import envelope, limits
from moorage.protocol.envelope import TAG, DecodeError, packb
from moorage.protocol.errors import _TABLE, KINDS, WireError

OUT = Path(__file__).with_name("envelope.json")
SID = "4242-1f2e3d4c5b6a"  # the Python client's form: "<pid>-<12 hex>"
EP = "5eed0f1ce0ffee00"  # an actor epoch: 16 lowercase hex digits
DEADLINE = 1_767_225_600_000  # 2026-01-01T00:00:00Z in Unix milliseconds
NIL = b"\xc0"


# --- JSON <-> msgpack values ------------------------------------------------------------------


def to_py(v: Any) -> Any:
    """A meaning's JSON value as the Python value the encoders take ({"$bin": hex} -> bytes)."""
    if isinstance(v, dict):
        if list(v) == ["$bin"]:
            return bytes.fromhex(v["$bin"])
        return {k: to_py(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_py(x) for x in v]
    return v


def to_json(v: Any) -> Any:
    """A decoded value as JSON (bytes -> {"$bin": hex})."""
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_json(x) for x in v]
    return v


def hexes(frames: list[bytes]) -> list[str]:
    return [bytes(f).hex() for f in frames]


def bin_(data: bytes) -> dict[str, str]:
    return {"$bin": data.hex()}


# --- meaning <-> frames, per kind ---------------------------------------------------------------


def encode(kind: str, m: dict[str, Any]) -> list[bytes]:
    atts = [bytes.fromhex(a) for a in m.get("attachments", [])]
    if kind == "request":
        frames = envelope.encode_request(
            m["id"], m["sid"], m["op"], to_py(m["args"]), m["deadline_ms"], atts)
        return envelope.pin_request(frames, m["ep"]) if "ep" in m else frames
    if kind == "reply":
        return envelope.encode_reply(m["id"], m["ep"], to_py(m["result"]), atts)
    if kind == "error_reply":
        return envelope.encode_error(m["id"], m["ep"], WireError(**to_py(m["error"])))
    if kind == "stream":
        if m.get("welcome"):
            return envelope.encode_welcome(m["topic"], m["seq"], m["ep"])
        return envelope.encode_stream(m["topic"], m["seq"], m["ep"], to_py(m["body"]), atts)
    raise ValueError(kind)


def decode(kind: str, frames: list[bytes]) -> dict[str, Any]:
    if kind == "request":
        r = envelope.decode_request(frames)
        out = {"id": r.id, "sid": r.sid, "op": r.op, "deadline_ms": r.deadline_ms,
               "args": to_json(r.args), "attachments": hexes(r.attachments)}
        if r.epoch is not None:  # a pinned resend (section 10)
            out["ep"] = r.epoch
        return out
    if kind in ("reply", "error_reply"):
        p = envelope.decode_reply(frames)
        if p.ok:
            return {"id": p.id, "ok": True, "ep": p.epoch, "result": to_json(p.body),
                    "attachments": hexes(p.attachments)}
        return {"id": p.id, "ok": False, "ep": p.epoch, "error": to_json(p.body)}
    if kind == "stream":
        s = envelope.decode_stream(frames)
        out = {"topic": s.topic, "seq": s.seq, "ep": s.epoch, "body": to_json(s.body),
               "attachments": hexes(s.attachments)}
        if s.welcome:
            out["welcome"] = True
        return out
    raise ValueError(kind)


def valid(name: str, kind: str, meaning: dict[str, Any]) -> dict[str, Any]:
    frames = encode(kind, meaning)
    got = decode(kind, frames)
    assert got == meaning, (name, got, meaning)
    return {"name": name, "kind": kind, "valid": True, "frames": hexes(frames),
            "meaning": meaning}


def decode_only(name: str, kind: str, frames: list[bytes], meaning: dict[str, Any],
                why: str) -> dict[str, Any]:
    """Frames our encoder would not write (other key order, wider ints, unknown fields) that
    every decoder must still accept."""
    got = decode(kind, frames)
    assert got == meaning, (name, got, meaning)
    return {"name": name, "kind": kind, "valid": True, "decode_only": True,
            "frames": hexes(frames), "meaning": meaning, "why": why}


def invalid(name: str, kind: str, frames: list[bytes], error: str, rid: int | None,
            why: str) -> dict[str, Any]:
    try:
        decode(kind, frames)
    except DecodeError as exc:
        assert exc.error.name == error, (name, exc.error.name, error)
        assert exc.request_id == rid, (name, exc.request_id, rid)
    else:
        raise AssertionError(f"{name}: decoded without error")
    return {"name": name, "kind": kind, "valid": False, "frames": hexes(frames),
            "meaning": {"why": why}, "error": {"name": error, "code": KINDS[error].code},
            "id": rid}


# --- the vectors --------------------------------------------------------------------------------


def req(id: int, op: str, args: Any = None, deadline_ms: int | None = None,
        attachments: tuple[bytes, ...] = (), sid: str = SID) -> dict[str, Any]:
    return {"id": id, "sid": sid, "op": op, "deadline_ms": deadline_ms, "args": args,
            "attachments": [a.hex() for a in attachments]}


def rep(id: int | None, result: Any, attachments: tuple[bytes, ...] = ()) -> dict[str, Any]:
    return {"id": id, "ok": True, "ep": EP, "result": result,
            "attachments": [a.hex() for a in attachments]}


def err(id: int | None, error: WireError) -> dict[str, Any]:
    return {"id": id, "ok": False, "ep": EP, "error": to_json(error.to_wire())}


def stream(topic: str, seq: int, body: Any, attachments: tuple[bytes, ...] = ()) -> dict:
    return {"topic": topic, "seq": seq, "ep": EP, "body": body,
            "attachments": [a.hex() for a in attachments]}


def nested(depth: int) -> Any:
    """`depth` arrays, one inside the other, around the integer 1."""
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


def header(**fields: Any) -> bytes:
    return packb(fields)


def valid_vectors() -> list[dict[str, Any]]:
    v = valid
    return [
        v("request_minimal", "request", req(1, "sys.ping")),
        v("request_deadline_and_map_args", "request",
          req(2, "sys.hello", {"client": f"python-sync {SID}"}, deadline_ms=DEADLINE)),
        v("request_nested_list_and_map_args", "request", req(3, "example.nested", {
            "ints": [0, 127, 128, 255, 65536, 4294967296, -1, -32, -33, -129, -40000],
            "floats": [0.5, -2.25, 1.0],
            "flags": [True, False, None],
            "map": {"a": {"b": [[], {}]}, "list": [1, "two", [3]]},
        })),
        v("request_binary_arg", "request",
          req(4, "fs.write", {"path": "/tmp/x.bin", "data": bin_(bytes([0, 1, 2, 0x7F, 0x80,
                                                                          0xFE, 0xFF]))})),
        v("request_unicode_strings", "request", req(5, "term.input", {
            "text": "héllo wörld ✓ 日本語 🚢",
            "ключ": "значение",
            "long": "moorage: ünïcödé strings past 31 bytes use str8",
        })),
        v("request_attachments", "request",
          req(6, "fs.write", {"path": "a.bin"}, attachments=(b"\x00\x01\x02\xff", b"hello\n"))),
        v("request_empty_attachment_and_empty_map_args", "request",
          req(7, "fs.write", {}, attachments=(b"",))),
        v("request_max_id", "request", req(limits.MAX_ID, "sys.info", deadline_ms=DEADLINE)),
        v("request_replay", "request",
          req(9, "replay", {"topic": "term.out.7", "from_seq": 5, "max": 100})),
        v("request_pinned_resend", "request",
          {**req(12, "term.exec", {"session": "7", "command": "make"}, deadline_ms=DEADLINE,
                 attachments=(b"\x00\x01",)), "ep": EP}),
        v("request_nesting_depth_32", "request",
          req(10, "example.deep", {"deep": nested(limits.MAX_DEPTH - 1)})),
        v("reply_ping", "reply", rep(1, {"ep": EP})),
        v("reply_hello", "reply", rep(2, {
            "actor": "metrics", "ep": EP, "proto": 1, "version": "0.1.0", "pid": 4321,
            "max_msg": limits.MAX_MESSAGE_SIZE})),
        v("reply_nil_result", "reply", rep(3, None)),
        # Results may carry integers past 2^53 (section 17): nanosecond times, inode and
        # device numbers; a JavaScript decoder must give them as bigint, not rounded.
        v("reply_integers_past_2_53", "reply", rep(11, {
            "mtime_ns": 1_767_225_600_123_456_789, "ctime_ns": 1_767_225_600_987_654_321,
            "ino": 2**64 - 1, "min_int64": -(2**63), "safe": 2**53 - 1, "unsafe": 2**53 + 1,
            "negative_unsafe": -(2**53) - 1})),
        v("reply_with_attachment", "reply",
          rep(4, {"size": 4, "stale": False}, attachments=(b"\x00\x01\x02\xff",))),
        v("reply_replay_answer_with_lost_more_and_attachments", "reply", rep(9, {
            "epoch": EP, "first_seq": 3, "last_seq": 6,
            "messages": [[3, {"offset": 0}, 1], [4, {"offset": 5}, 0], [5, {"offset": 5}, 2]],
            "lost": [1, 2], "more": True,
        }, attachments=(b"hello", b"wor", b"ld"))),
        v("error_bad_request_nil_id", "error_reply",
          err(None, WireError.of("bad_request", "id must be an integer in [0, 2^53): -1"))),
        v("error_unsupported_version", "error_reply",
          err(None, WireError.of("unsupported_version", "tag b'MOOR2' != b'MOOR1'"))),
        v("error_unknown_op", "error_reply",
          err(3, WireError.of("unknown_op", "metrics has no op 'metrics.nope'"))),
        v("error_bad_args", "error_reply",
          err(4, WireError.of("bad_args", "sys.hello: 'client' must be str, not int"))),
        v("error_busy_with_retry_after", "error_reply", err(5, WireError.of(
            "busy", "terminal: inbound queue over 1000", retry_after_ms=50))),
        v("error_deadline_expired", "error_reply",
          err(6, WireError.of("deadline_expired", "fs.read: not run"))),
        v("error_not_found_with_detail", "error_reply", err(7, WireError.of(
            "not_found", "/nope: No such file or directory",
            detail={"path": "/nope", "errno": "ENOENT", "attempts": 1}))),
        v("error_internal_with_actor_category", "error_reply", err(8, WireError.of(
            "internal", "KeyError: 'x'", category="terminal"))),
        v("error_message_too_large_default_message", "error_reply",
          err(9, WireError.of("message_too_large"))),
        v("error_code_unknown_to_this_table", "error_reply", err(10, WireError(
            code=950, name="future_quota", category="resource", severity="recoverable",
            retryable=True, fallback_available=False, message="a code added later",
            retry_after_ms=200))),
        v("stream_event", "stream", stream("sup.event", 1, {
            "event": "started", "supervisor": "supervisor", "child": "metrics", "pid": 4321})),
        v("stream_with_attachment", "stream",
          stream("term.out.7", 42, {"offset": 1024}, attachments=(b"$ echo hi\r\nhi\r\n",))),
        v("stream_large_seq", "stream", stream("metrics.alert", limits.MAX_ID, {
            "op": "fs.read", "kind": "failure_rate", "value": 0.25})),
        v("stream_welcome", "stream", {"topic": "term.out.", "seq": 0, "ep": EP, "body": None,
                                       "attachments": [], "welcome": True}),
        v("stream_welcome_of_a_topic", "stream", {
            "topic": "term.out.t1a2b3c4d5e6", "seq": 17, "ep": EP, "body": None,
            "attachments": [], "welcome": True}),
        v("stream_terminal_output_replayed_after_restart", "stream", stream(
            "term.out.t1a2b3c4d5e6", 1, {"offset": 4096, "replay": True},
            attachments=(b"$ make\r\n",))),
    ]


def decode_only_vectors() -> list[dict[str, Any]]:
    # Header keys in another order, id as uint32 (0xce), args as map16 (0xde): decoders must
    # accept any key order and any integer or container width.
    reordered = (b"\x83" + packb("op") + packb("sys.ping") + packb("sid") + packb(SID)
                 + packb("id") + b"\xce\x00\x00\x00\x0d")
    wide_args = b"\xde\x00\x01" + packb("client") + packb("x")
    pad = "x" * (limits.MAX_HEADER_SIZE - len(header(id=15, sid=SID, op="sys.ping", pad="")) - 2)
    at_limit = header(id=15, sid=SID, op="sys.ping", pad=pad)
    assert len(at_limit) == limits.MAX_HEADER_SIZE, len(at_limit)
    return [
        decode_only("request_keys_reordered_and_wide_ints", "request",
                    [TAG, reordered, wide_args], req(13, "sys.ping", {"client": "x"}),
                    "header keys op, sid, id; id 13 as uint32; args as map16"),
        decode_only("request_unknown_header_field_ignored", "request",
                    [TAG, header(id=14, sid=SID, op="sys.ping", trace="abc"), NIL],
                    req(14, "sys.ping"), "header field 'trace' is unknown: ignored"),
        decode_only("request_header_exactly_at_size_limit", "request",
                    [TAG, at_limit, NIL], req(15, "sys.ping"),
                    f"header of exactly {limits.MAX_HEADER_SIZE} bytes (unknown 'pad' field)"),
        decode_only("request_nil_deadline_is_absent", "request",
                    [TAG, header(id=16, sid=SID, op="sys.ping", deadline_ms=None), NIL],
                    req(16, "sys.ping"), "deadline_ms nil means no deadline"),
        decode_only("request_nil_ep_is_absent", "request",
                    [TAG, header(id=17, sid=SID, op="sys.ping", ep=None), NIL],
                    req(17, "sys.ping"), "ep nil means not pinned: any actor life may run it"),
    ]


def invalid_vectors() -> list[dict[str, Any]]:
    h = header(id=7, sid=SID, op="example.op")
    big = "x" * (limits.MAX_HEADER_SIZE + 1 - len(header(id=11, sid=SID, op="sys.ping",
                                                         pad="")) - 2)
    over = header(id=11, sid=SID, op="sys.ping", pad=big)
    assert len(over) == limits.MAX_HEADER_SIZE + 1, len(over)
    bad = invalid
    return [
        bad("wrong_tag", "request", [b"MOOR2", h, NIL], "unsupported_version", None,
            "tag of another major version"),
        bad("empty_delimiter_before_tag", "request", [b"", TAG, h, NIL],
            "unsupported_version", None, "a REQ socket's empty delimiter frame: use DEALER"),
        bad("too_few_frames", "request", [TAG, h], "bad_request", None, "no body frame"),
        bad("header_not_a_map", "request", [TAG, packb([7, SID, "example.op"]), NIL],
            "bad_request", None, "header is an array"),
        bad("header_truncated", "request", [TAG, h[:-3], NIL], "bad_request", None,
            "header msgpack ends early"),
        bad("id_missing", "request", [TAG, header(sid=SID, op="example.op"), NIL],
            "bad_request", None, "no id"),
        bad("id_negative", "request", [TAG, header(id=-1, sid=SID, op="example.op"), NIL],
            "bad_request", None, "id -1"),
        bad("id_float", "request", [TAG, header(id=1.0, sid=SID, op="example.op"), NIL],
            "bad_request", None, "id 1.0 (float64)"),
        bad("id_string", "request", [TAG, header(id="1", sid=SID, op="example.op"), NIL],
            "bad_request", None, "id '1' (str)"),
        bad("id_bool", "request", [TAG, header(id=True, sid=SID, op="example.op"), NIL],
            "bad_request", None, "id true (bool)"),
        bad("id_too_big", "request",
            [TAG, header(id=limits.MAX_ID + 1, sid=SID, op="example.op"), NIL],
            "bad_request", None, "id 2^53, one past the largest"),
        bad("sid_missing", "request", [TAG, header(id=5, op="example.op"), NIL],
            "bad_request", 5, "no sid"),
        bad("sid_empty", "request", [TAG, header(id=5, sid="", op="example.op"), NIL],
            "bad_request", 5, "sid ''"),
        bad("ep_not_a_string", "request",
            [TAG, header(id=6, sid=SID, op="example.op", ep=5), NIL],
            "bad_request", 6, "ep 5 (int): a pin names an actor life by its epoch"),
        bad("op_empty", "request", [TAG, header(id=6, sid=SID, op=""), NIL],
            "bad_request", 6, "op ''"),
        bad("op_too_long", "request",
            [TAG, header(id=6, sid=SID, op="x" * (limits.MAX_OP_LEN + 1)), NIL],
            "bad_request", 6, f"op of {limits.MAX_OP_LEN + 1} characters"),
        bad("deadline_float", "request",
            [TAG, header(id=6, sid=SID, op="example.op", deadline_ms=1.5e12), NIL],
            "bad_request", 6, "deadline_ms as float64"),
        bad("args_non_str_map_key", "request", [TAG, h, packb({1: "x"})],
            "bad_request", 7, "args map with an int key"),
        bad("args_bin_map_key", "request", [TAG, h, packb({b"k": "x"})],
            "bad_request", 7, "args map with a bin key (keys are str only)"),
        bad("args_timestamp", "request",
            [TAG, h, packb({"t": msgpack.Timestamp(1, 0)})],
            "bad_request", 7, "args with a msgpack timestamp (ext -1)"),
        bad("args_ext_type", "request", [TAG, h, packb({"a": msgpack.ExtType(1, b"\x00")})],
            "bad_request", 7, "args with msgpack ext type 1"),
        bad("args_nesting_depth_33", "request",
            [TAG, h, packb({"deep": nested(limits.MAX_DEPTH)})],
            "bad_request", 7, "a map holding 32 nested arrays: depth 33"),
        bad("body_truncated", "request", [TAG, h, packb({"path": "/x"})[:-2]],
            "bad_request", 7, "body msgpack ends early"),
        bad("body_trailing_bytes", "request", [TAG, h, NIL + NIL], "bad_request", 7,
            "two msgpack values in the body frame"),
        bad("body_invalid_utf8", "request", [TAG, h, b"\xa2\xff\xfe"], "bad_request", 7,
            "str that is not UTF-8"),
        bad("body_length_past_end", "request", [TAG, h, b"\xdd\xff\xff\xff\xff"],
            "bad_request", 7, "array32 claiming 2^32-1 elements in 5 bytes"),
        bad("header_over_size_limit", "request", [TAG, over, NIL], "message_too_large", None,
            f"header of {limits.MAX_HEADER_SIZE + 1} bytes"),
        bad("too_many_attachments", "request",
            [TAG, header(id=12, sid=SID, op="fs.write"), NIL]
            + [b""] * (limits.MAX_ATTACHMENTS + 1),
            "message_too_large", 12, f"{limits.MAX_ATTACHMENTS + 1} attachment frames"),
        bad("reply_without_ok", "reply", [TAG, header(id=1, ep=EP), NIL], "bad_request", 1,
            "reply header has no bool 'ok'"),
        bad("stream_wrong_tag", "stream", [b"sup.event", b"MOOR2", header(seq=1, ep=EP), NIL],
            "bad_request", None, "stream tag of another major version"),
        bad("stream_seq_missing", "stream", [b"sup.event", TAG, header(ep=EP), NIL],
            "bad_request", None, "stream header without seq"),
    ]


def build() -> dict[str, Any]:
    return {
        "version": 1,
        "tag": TAG.decode(),
        "vectors": valid_vectors() + decode_only_vectors() + invalid_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def error_table() -> str:
    """The markdown error table of PROTOCOL.md, from protocol/errors.py."""
    rows = ["| code | name | category | severity | retryable | fallback_available | meaning "
            "| fault |",
            "|---|---|---|---|---|---|---|---|"]
    for code, name, cat, sev, retry, fallback, summary, fault in _TABLE:
        rows.append(f"| {code} | `{name}` | {cat} | {sev} | {str(retry).lower()} | "
                    f"{str(fallback).lower()} | {summary} | {fault} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="fail if envelope.json is stale")
    ap.add_argument("--error-table", action="store_true", help="print the error table")
    a = ap.parse_args(argv)
    if a.error_table:
        print(error_table())
        return 0
    text = render()
    if a.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python protocol/vectors/generate.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(build()['vectors'])} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
