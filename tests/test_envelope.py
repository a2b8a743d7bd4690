"""Envelope encoding and bounded decoding (pure: no sockets)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.protocol import limits
from moorage.protocol.envelope import (
    TAG,
    DecodeError,
    decode_reply,
    decode_request,
    decode_stream,
    encode_error,
    encode_reply,
    encode_request,
    encode_stream,
    packb,
    pin_request,
)
from moorage.protocol.errors import WireError

pytestmark = pytest.mark.timeout(60)

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


@given(rid=st.integers(0, limits.MAX_ID), sid=st.text(min_size=1, max_size=64),
       op=st.text(min_size=1, max_size=64), args=json_like,
       deadline=st.none() | st.integers(0, 2**62),
       atts=st.lists(st.binary(max_size=50), max_size=3))
@settings(max_examples=300, deadline=None)
def test_a_request_round_trips(rid, sid, op, args, deadline, atts):
    req = decode_request(encode_request(rid, sid, op, args, deadline, atts))
    assert (req.id, req.sid, req.op, req.deadline_ms, req.args, req.attachments) == \
        (rid, sid, op, deadline, args, atts)


@given(rid=st.integers(0, limits.MAX_ID), args=json_like,
       deadline=st.none() | st.integers(0, 2**62), epoch=st.text(min_size=1, max_size=16),
       atts=st.lists(st.binary(max_size=50), max_size=3))
@settings(max_examples=200, deadline=None)
def test_a_request_pinned_to_an_actor_life_round_trips_and_is_its_first_attempt_otherwise(
        rid, args, deadline, epoch, atts):
    first = encode_request(rid, "s-1", "fs.write", args, deadline, atts)
    assert decode_request(first).epoch is None
    pinned = encode_request(rid, "s-1", "fs.write", args, deadline, atts, epoch=epoch)
    # the resend a client makes of the first frames is the same request, pinned
    assert pin_request(first, epoch) == pinned
    req = decode_request(pinned)
    assert (req.id, req.sid, req.op, req.deadline_ms, req.args, req.attachments, req.epoch) \
        == (rid, "s-1", "fs.write", deadline, args, atts, epoch)
    assert msgpack.unpackb(pinned[1])["ep"] == epoch


def test_a_pinned_epoch_that_is_not_a_string_is_refused_with_the_id():
    header = packb({"id": 9, "sid": "s", "op": "fs.write", "ep": 5})
    with pytest.raises(DecodeError) as e:
        decode_request([TAG, header, packb(None)])
    assert e.value.error.name == "bad_request" and e.value.request_id == 9


@given(body=json_like, atts=st.lists(st.binary(max_size=50), max_size=3))
@settings(max_examples=200, deadline=None)
def test_replies_and_stream_messages_round_trip(body, atts):
    r = decode_reply(encode_reply(5, "ep", body, atts))
    assert (r.id, r.ok, r.epoch, r.body, r.attachments) == (5, True, "ep", body, atts)
    m = decode_stream(encode_stream("t.x", 9, "ep", body, atts))
    assert (m.topic, m.seq, m.epoch, m.body, m.attachments) == ("t.x", 9, "ep", body, atts)


def test_an_error_reply_carries_the_full_classification():
    err = WireError.of("busy", "full", retry_after_ms=20)
    r = decode_reply(encode_error(3, "ep", err))
    assert not r.ok
    assert WireError.from_wire(r.body) == err


@given(frames=st.lists(st.binary(max_size=100), max_size=6))
@settings(max_examples=700, deadline=None)
def test_random_frames_raise_only_decode_errors(frames):
    for decode in (decode_request, decode_reply, decode_stream):
        try:
            decode(frames)
        except DecodeError as exc:
            assert exc.error.code in (100, 103, 104)


@given(frames=st.lists(st.binary(max_size=100), min_size=1, max_size=4))
@settings(max_examples=400, deadline=None)
def test_random_headers_and_bodies_behind_a_good_tag_raise_only_decode_errors(frames):
    try:
        decode_request([TAG, *frames])
    except DecodeError:
        pass


def test_hostile_lengths_nesting_and_types_are_refused_with_the_id_when_readable():
    header = packb({"id": 11, "sid": "s", "op": "x.y"})
    cases = {
        "huge array header": b"\xdd\xff\xff\xff\xff",
        "huge map header": b"\xdf\xff\xff\xff\xff",
        "huge str header": b"\xdb\xff\xff\xff\xff",
        "deep nesting": b"\x91" * (limits.MAX_DEPTH + 1) + b"\xc0",
        "int map key": msgpack.packb({1: 2}),
        "ext type": msgpack.packb(msgpack.ExtType(5, b"x")),
        "trailing bytes": packb(1) + b"\x01",
        "invalid utf-8": b"\xa2\xff\xfe",
    }
    for name, body in cases.items():
        with pytest.raises(DecodeError) as e:
            decode_request([TAG, header, body])
        assert e.value.error.name == "bad_request", name
        assert e.value.request_id == 11, name
    ok_depth = b"\x91" * (limits.MAX_DEPTH - 1) + b"\xc0"
    assert decode_request([TAG, header, ok_depth]).args is not None


def test_headers_bodies_and_attachment_counts_over_their_limits_are_refused():
    header = packb({"id": 1, "sid": "s", "op": "x.y", "pad": "x" * limits.MAX_HEADER_SIZE})
    with pytest.raises(DecodeError) as e:
        decode_request([TAG, header, packb(None)])
    assert e.value.error.name == "message_too_large"
    good = packb({"id": 1, "sid": "s", "op": "x.y"})
    with pytest.raises(DecodeError) as e:
        decode_request([TAG, good, packb(None)] + [b""] * (limits.MAX_ATTACHMENTS + 1))
    assert e.value.error.name == "message_too_large"
    with pytest.raises(DecodeError) as e:
        decode_request([b"MOOR9", good, packb(None)])
    assert e.value.error.name == "unsupported_version"


@pytest.mark.parametrize("bad", [-1, 1.5, "7", 2**53, None, True])
def test_request_ids_must_be_exact_non_negative_integers(bad):
    with pytest.raises(DecodeError) as e:
        decode_request([TAG, packb({"id": bad, "sid": "s", "op": "x"}), packb(None)])
    assert e.value.error.name == "bad_request"
