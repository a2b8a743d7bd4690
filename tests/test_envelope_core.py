"""The request, reply and stream decoders, compiled (protocol/_cenvelope.c) and in Python
(envelope.decode_request_python, decode_reply_python, decode_stream_python): the same answer
on any frames, value for value and type for type, or the same error, word for word and with
the same request id; the compiled ones are what this process runs when they were built, say
so in sys.info, and without them the Python ones serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.protocol import envelope, limits
from moorage.protocol.envelope import (
    ENVELOPE_CORE,
    TAG,
    DecodeError,
    decode_reply_python,
    decode_request_python,
    decode_stream_python,
)
from tests.interpreter import printed

pytestmark = pytest.mark.timeout(120)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "protocol" / "vectors" /
                      "envelope.json").read_text())["vectors"]


def compiled() -> Any:
    if ENVELOPE_CORE != "compiled":
        pytest.skip("the compiled decoders were not built here (no compiler): Python only")
    return envelope.decode_request, envelope.decode_reply, envelope.decode_stream


def exact(value: Any) -> Any:
    """`value` with every element's type beside it: True == 1 and 1 == 1.0 in Python, but a
    decoder that answers one for the other is wrong."""
    if isinstance(value, dict):
        return ("dict", sorted((exact(k), exact(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [exact(v) for v in value])
    return (type(value).__name__, repr(value))


def outcome(decode: Any, frames: list[bytes]) -> Any:
    try:
        got = decode(frames)
    except DecodeError as exc:
        return ("error", exc.error.name, exc.error.message, exc.request_id)
    return ("ok", type(got).__name__, exact(tuple(got)))


def same(frames: list[bytes]) -> None:
    """Each decoder on these frames, and the stream decoder on them as a stream message's
    (a topic frame before them)."""
    request, reply, stream = compiled()
    assert outcome(request, frames) == outcome(decode_request_python, frames)
    assert outcome(reply, frames) == outcome(decode_reply_python, frames)
    for topic in (b"term.out.s1", b"\xff"):
        streamed = [topic, *frames]
        assert outcome(stream, streamed) == outcome(decode_stream_python, streamed)


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.integers(-5, 5) | st.integers(limits.MAX_ID - 2, limits.MAX_ID + 2)
           | st.floats(allow_nan=False) | st.floats(width=32, allow_nan=False)
           | st.text(max_size=6) | st.text(min_size=120, max_size=140) | st.binary(max_size=6)
           | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)))
keys = st.text(max_size=4) | st.binary(max_size=2) | st.integers(0, 3)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=3), max_leaves=12)
header_key = st.sampled_from(["id", "sid", "op", "deadline_ms", "ep", "ok", "seq", "welcome",
                              "x", ""])
header_value = (values | st.integers(0, 2**53 + 5) | st.sampled_from(["sys.ping", "fs.read"])
                | st.just("é" * 70))
bodies = values | st.dictionaries(st.text(max_size=5), scalars, max_size=5) \
    | st.lists(scalars, max_size=5)


def pack_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    """A map with these entries in this order, duplicate keys kept (as a peer may send)."""
    head = bytes([0x80 | len(pairs)]) if len(pairs) < 16 else b"\xde" + len(pairs).to_bytes(2,
                                                                                         "big")
    return head + b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in pairs)


def nested(depth: int, leaf: Any = 1) -> Any:
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


def build(pairs: list[tuple[Any, Any]], body: Any, tag: bytes = TAG,
          attachments: int = 0) -> list[bytes]:
    return [tag, pack_pairs(pairs), msgpack.packb(body), *[b"a" * i for i in range(attachments)]]


@given(st.lists(st.tuples(header_key, header_value), max_size=7), bodies,
       st.integers(0, limits.MAX_ATTACHMENTS + 2))
@settings(max_examples=500, deadline=None)
def test_any_header_and_body_decode_alike(pairs, body, attachments):
    same(build(pairs, body, attachments=attachments))


@given(st.integers(0, 2**53 + 3), st.text(max_size=130), st.text(max_size=70),
       st.none() | st.integers(-(2**63), 2**64 - 1) | st.booleans() | st.floats(),
       st.none() | st.text(max_size=8) | st.integers(0, 3) | st.binary(max_size=3),
       st.booleans(), bodies, st.permutations(range(5)))
@settings(max_examples=500, deadline=None)
def test_well_formed_requests_and_replies_decode_alike(rid, sid, op, deadline, ep, ok, body,
                                                       order):
    request = [("id", rid), ("sid", sid), ("op", op), ("deadline_ms", deadline), ("ep", ep)]
    same(build([request[i] for i in order], body))
    same(build([("id", rid), ("ok", ok), ("ep", ep)][: 1 + order[0] % 3], body))
    same(build([("seq", rid), ("ep", ep), ("welcome", ok)][: 1 + order[1] % 3], body))
    same(build([("seq", deadline), ("ep", ep), ("welcome", deadline)], body))


@given(st.binary(min_size=1, max_size=60), st.integers(0, 59), st.integers(0, 255))
@settings(max_examples=500, deadline=None)
def test_damaged_bytes_decode_alike(raw, at, byte):
    good = envelope.encode_request(7, "damage-1", "fs.read", {"path": "/x", "n": 3}, 99)
    reply = envelope.encode_reply(7, "ep-1", {"data": b"abc", "size": 3})
    for frames in (good, reply):
        for k in (1, 2):
            damaged = list(frames)
            b = bytearray(damaged[k])
            b[at % len(b)] = byte
            damaged[k] = bytes(b)
            same(damaged)
            same([*frames[:k], frames[k][: at % len(frames[k])], *frames[k + 1 :]])
        same([frames[0], raw, frames[2]])
        same([frames[0], frames[1], raw])


def test_the_edges_decode_alike():
    ok = [("id", 1), ("sid", "s"), ("op", "sys.ping")]
    cases = [
        build(ok, None), build(ok, {"a": 1}), build(ok, [1, "x", None]), build(ok, "text"),
        build(ok, {}), build(ok, []), build(ok, {"a": {"b": 1}}), build(ok, [[1]]),
        build([*ok, ("id", 2)], None),  # a key twice
        build([("id", 1), ("sid", "s" * 128), ("op", "o" * 64)], None),
        build([("id", 1), ("sid", "s" * 129), ("op", "o")], None),
        build([("id", 1), ("sid", "é" * 128), ("op", "o" * 65)], None),
        build([("id", 1), ("sid", ""), ("op", "o")], None),
        build([("id", limits.MAX_ID), ("sid", "s"), ("op", "o")], None),
        build([("id", limits.MAX_ID + 1), ("sid", "s"), ("op", "o")], None),
        build([("id", -1), ("sid", "s"), ("op", "o")], None),
        build([("id", True), ("sid", "s"), ("op", "o")], None),
        build([*ok, ("deadline_ms", -5)], None), build([*ok, ("deadline_ms", 2**64 - 1)], None),
        build([*ok, ("deadline_ms", 1.5)], None), build([*ok, ("ep", {})], None),
        build(ok, None, tag=b"MOOR0"), build(ok, None, attachments=limits.MAX_ATTACHMENTS),
        build(ok, None, attachments=limits.MAX_ATTACHMENTS + 1),
        [TAG, pack_pairs(ok)], [TAG, pack_pairs(ok) + b"\xc0", b"\xc0"],
        [TAG, pack_pairs(ok), b"\xc0\xc0"], [TAG, b"\x81\xa2id\x01" * 1100, b"\xc0"],
        [TAG, pack_pairs(ok), msgpack.packb({"k": "v" * 10} | {str(i): i for i in range(2100)})],
        [TAG, pack_pairs(ok), msgpack.packb(list(range(4097)))],
        [TAG, pack_pairs(ok), msgpack.packb({"x": b"\0" * 5000})],
        [TAG, pack_pairs(ok), b"\x81\xa1k\xa2\xed\xa0"],  # a surrogate: not UTF-8
        [TAG, pack_pairs(ok), b"\x81\xa1k\xc7\x01\x05x"],  # an extension type
        [TAG, pack_pairs(ok), b"\x81\xa1k\xc1"],  # the byte msgpack never uses
        [TAG, pack_pairs([("id", 1), ("ok", True), ("ep", b"e")]), b"\xc0"],
        [TAG, pack_pairs([("ok", 1)]), b"\xc0"],
        [TAG, b"\x82\xa2id\x81\xa2op\xa1x\xa3sid\xa1s", b"\xc0"],  # a map inside, short
        [TAG, b"\x83\xa2id\x81\xa2op\xa1x\xa3sid\xa1s", b"\xc0"],
        [TAG, b"\x83\xa2id\x01\xa3sid\xa1s\xa2op\xd9\x02op", b"\xc0"],  # str 8
        [TAG, b"\x83\xa2id\xd3" + (5).to_bytes(8, "big") + b"\xa3sid\xa1s\xa2op\xa1o", b"\xc0"],
        [TAG, b"\x83\xa2id\xd0\xff\xa3sid\xa1s\xa2op\xa1o", b"\xc0"],
        [TAG, b"\x83\xa2id\x01\xa3sid\xa1s\xa2op\xa1o", b"\x92\xca\x3f\xc0\x00\x00\xc4\x01x"],
        (TAG, pack_pairs(ok), b"\xc0"), [bytearray(TAG), pack_pairs(ok), b"\xc0"],
        *(build(ok, nested(d)) for d in (limits.MAX_DEPTH - 1, limits.MAX_DEPTH,
                                         limits.MAX_DEPTH + 1, 200)),
        build(ok, [[1] * 10] * 370), build(ok, [[1] * 10] * 380),  # values counted: 4071, 4181
        build(ok, {"k": [{"a": "x" * 3}] * 1100}), build(ok, [{"a": {1: 2}}]),
        build(ok, [[msgpack.Timestamp(1, 0)]]),
        build([("seq", 5), ("ep", "e"), ("welcome", True)], None),
        build([("seq", -5), ("welcome", 1)], None), build([("seq", True)], None),
        build([("seq", 5), ("ep", 5), ("welcome", None)], {"a": b"x"}),
        build([("seq", 5), ("ep", b"e")], None), build([("seq", 2**64 - 1)], None),
    ]
    for frames in cases:
        same(frames)


def test_short_strs_decode_alike_first_and_again_from_the_str_cache():
    """Short strs, map keys and values alike, are decoded once and kept (a slot per hash, the
    last one wins): thousands of distinct keys and values (slots taken over many times), both
    sides of the 24-byte limit of what is kept, non-ASCII and empty strs, strs that are each
    other's prefixes, and a key or a value that is not UTF-8 after its valid twin; each body
    twice, the second from what the first kept."""
    ok = [("id", 1), ("sid", "s"), ("op", "o")]
    names = ["", "é", "日本", "x" * 23, "x" * 24, "x" * 25, "kind", "kin", "kinds", "path", "\0a"]
    bodies = [{f"k{i}": i for i in range(j, j + 100)} for j in range(0, 3000, 100)]
    bodies += [[f"v{i}" for i in range(j, j + 100)] for j in range(0, 3000, 100)]
    bodies += [{"events": [{n: i for n in names} for i in range(20)]},
               [{n: n for n in names}, {n: None for n in names}, names, [names[::-1]]]]
    for body in bodies:  # (each within the values the compiled decoder takes)
        for _ in range(2):
            same(build(ok, body))
    for raw in (b"\x82\xa1k\x01\xa1k\x02", b"\x82\xa2\xc3\xa9\x01\xa2\xed\xa0\x02",
                b"\x92\xa2\xc3\xa9\xa2\xed\xa0"):
        for _ in range(2):  # (a key twice in a map; a valid str, then one that is not UTF-8)
            same([TAG, pack_pairs(ok), raw])


def test_a_declared_size_costs_nothing_before_the_entries_do():
    """A body of a megabyte: maps (or arrays) nested twenty deep, each header saying a
    million entries, one there (the next map or array) and then nothing that decodes. The
    compiled decoder makes one of them at its declared size at most (the sizes it makes
    containers at add up to no more than the body's bytes; past that, a container grows as
    its entries come: a presized dict takes up to 2.6 MB, a list 8 bytes an element, at each
    level), and says what the reference says."""
    import tracemalloc

    request, reply, stream = compiled()
    n = 1 << 20
    count = n.to_bytes(4, "big")
    maps = (b"\xdf" + count + b"\xa1k") * 20 + b"\xc1" * n
    arrays = (b"\xdd" + count) * 20 + b"\xc1" * n
    for body in (maps, arrays):
        cases = [
            (reply, decode_reply_python, [TAG, pack_pairs([("id", 1), ("ok", True)]), body]),
            (request, decode_request_python,
             [TAG, pack_pairs([("id", 1), ("sid", "s"), ("op", "o")]), body]),
            (stream, decode_stream_python, [b"t", TAG, pack_pairs([("seq", 1)]), body])]
        for decode, reference, frames in cases:
            tracemalloc.start()
            try:
                got = outcome(decode, frames)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert got == outcome(reference, frames)
            assert peak < 12 * n, (reference.__name__, body[:1])  # (twenty: 50-160 MB)


def test_every_vector_decodes_alike():
    for v in VECTORS:
        frames = [bytes.fromhex(f) for f in v["frames"]]
        same(frames)
        if v["kind"] in ("request", "reply", "error_reply") and v["valid"]:
            decode = envelope.decode_request if v["kind"] == "request" else envelope.decode_reply
            assert outcome(decode, frames)[0] == "ok", v["name"]


def configure(request: Any, reply: Any, stream: Any) -> None:
    from moorage.protocol import _cenvelope

    _cenvelope.configure(envelope.Request, envelope.Reply, envelope.StreamMessage, request,
                         reply, stream, TAG, limits.MAX_HEADER_SIZE, limits.MAX_OP_LEN,
                         limits.MAX_ATTACHMENTS, limits.MAX_BODY_SIZE, limits.MAX_BODY_VALUES,
                         limits.MAX_MESSAGE_SIZE, limits.MAX_ID, limits.MAX_DEPTH)


def test_the_messages_calls_are_made_of_are_decoded_here():
    """Not handed on: the fallback is not called for a call's request, a reply or a stream
    message."""
    compiled()
    calls = []
    real = (decode_request_python, decode_reply_python, decode_stream_python)

    def spy(fn):
        def wrapped(frames):
            calls.append(frames)
            return fn(frames)
        return wrapped

    configure(*map(spy, real))
    try:
        req = envelope.encode_request(3, "cli-1", "term.exec", {"session": "s1",
                                                               "command": "ls"}, 123, [b"att"])
        got = envelope.decode_request(req)
        assert got == envelope.Request(3, "cli-1", "term.exec", 123,
                                       {"session": "s1", "command": "ls"}, [b"att"], None)
        rep = envelope.encode_reply(3, "ep-9", {"exit_code": 0, "output": "x", "cwd": None})
        assert envelope.decode_reply(rep).body["exit_code"] == 0
        out = envelope.decode_stream(envelope.encode_stream("term.out.s1", 9, "ep-9",
                                                            {"offset": 4}, [b"data"]))
        assert out == envelope.StreamMessage("term.out.s1", 9, "ep-9", {"offset": 4},
                                             [b"data"], False)
        assert envelope.decode_stream(envelope.encode_welcome("t", 3, "e")).welcome is True
        assert calls == []
        envelope.decode_request(build([("id", 1), ("sid", "s"), ("op", "o")], {"a": [1]}))
        assert calls == []  # nested: decoded here too
        with pytest.raises(DecodeError):
            envelope.decode_request(build([("id", 1), ("sid", "s"), ("op", "o")], {1: 2}))
        assert len(calls) == 1  # an int key: the reference's, which refuses it
    finally:
        configure(*real)


def test_without_the_extension_the_python_decoders_serve():
    code = ("from moorage.protocol import envelope as e\n"
            "f = e.encode_request(1, 's', 'sys.ping', {'a': 1})\n"
            "print(e.ENVELOPE_CORE, e.decode_request is e.decode_request_python, "
            "e.decode_request(f).args)")
    assert printed(code, MOORAGE_PROTOCOL_CORE="python") == ["python", "True", "{'a':", "1}"]


def test_a_real_actor_says_which_decoders_it_runs(spawn_actor, client):
    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    assert client.call("parser", "sys.info")["envelope_core"] == ENVELOPE_CORE
