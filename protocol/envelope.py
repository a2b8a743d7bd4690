"""Frames on the wire, and their bounded encoding and decoding.

    request  [TAG] [header {id, sid, op, deadline_ms?, ep?}] [body: args] [attachment...]
    reply    [TAG] [header {id, ok, ep}]                [body: result | error] [attachment...]
    stream   [topic] [TAG] [header {seq, ep}]           [body] [attachment...]

A ROUTER adds the routing-id frame(s) in front; they are transport, not protocol. Header and
body are msgpack; attachments are raw bytes that never pass through msgpack (file contents,
terminal output). Everything here is pure: no sockets, so the conformance vectors can be
checked against it byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgpack

from moorage.protocol import limits
from moorage.protocol.errors import MoorageError, WireError

TAG = b"MOOR1"
PROTO_VERSION = 1


class Request(NamedTuple):
    id: int
    sid: str
    op: str
    deadline_ms: int | None
    args: Any
    attachments: list[bytes]
    # The header's `ep`: run only in this actor life. A client sends it on a resend of a call
    # that may have run, so that only the process whose reply cache knows the id answers it
    # (PROTOCOL.md section 10); None on a first attempt.
    epoch: str | None = None


class Reply(NamedTuple):
    id: int | None
    ok: bool
    epoch: str
    body: Any
    attachments: list[bytes]


class StreamMessage(NamedTuple):
    topic: str
    seq: int
    epoch: str
    body: Any
    attachments: list[bytes]
    # A welcome is not a message of the stream: the publisher's answer to a new subscription,
    # carrying the topic's current seq (so a late joiner knows what to replay).
    welcome: bool = False


# Builds a NamedTuple from a tuple of all its fields without the generated __new__'s argument
# handling: a decoded request or reply is made once per message.
_new_tuple = tuple.__new__


class DecodeError(MoorageError):
    """A frame that cannot be taken; `request_id` is set when the header was readable."""

    request_id: int | None = None


def _decode_error(name: str, message: str, request_id: int | None = None) -> DecodeError:
    err = DecodeError(WireError.of(name, message))
    err.request_id = request_id
    return err


_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_NIL = _pack(None)
_join = b"".join


def packb(obj: Any) -> bytes:
    return _pack(obj)


class Packed:
    """A body already in msgpack form (`data`), sent as it is by `encode_reply` and
    `encode_stream`: for an answer a handler gives many times over (a cached file's whole
    contents, its stat), packed once instead of on every call, and for a stream message
    whose packed form is kept elsewhere too (the watcher's journal). (Not a bytes subclass:
    the frame mover takes only plain bytes on its fast path.)"""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not part of the protocol")


def _unpackb(data: bytes) -> Any:
    # msgpack >= 1.0 defaults: raw=False, strict_map_key=True (str/bytes keys only), and every
    # length limit derived from len(data), which the callers have already bounded.
    return msgpack.unpackb(data, ext_hook=_reject_ext)


class _TooManyValues(ValueError):
    pass


def _unpackb_counted(data: bytes, max_values: int) -> Any:
    """Decode, refusing past `max_values` arrays, maps and their elements: each container is
    counted as msgpack completes it, and none may declare more than `max_values` elements,
    which msgpack checks before it allocates; so the work done is bounded by the cap."""
    left = max_values

    def count(obj: Any) -> Any:
        nonlocal left
        left -= 1 + len(obj) * (2 if type(obj) is dict else 1)
        if left < 0:
            raise _TooManyValues(f"more than {max_values} values in a body")
        return obj

    return msgpack.unpackb(data, ext_hook=_reject_ext, list_hook=count, object_hook=count,
                           max_array_len=max_values, max_map_len=max_values)


def unpackb(data: bytes, max_len: int = limits.MAX_BODY_SIZE,
            max_values: int | None = None) -> Any:
    """Decode one msgpack value under the protocol's limits, depth included, and at most
    `max_values` values (arrays, maps, elements) when given. A value takes at least a byte,
    so a body shorter than the cap cannot exceed it and is decoded without counting."""
    if len(data) > max_len:
        raise _decode_error("message_too_large", f"{len(data)} bytes > {max_len}")
    try:
        if max_values is None or len(data) <= max_values:
            obj = _unpackb(data)
        else:
            obj = _unpackb_counted(data, max_values)
    except _TooManyValues as exc:
        raise _decode_error("bad_request", str(exc)) from exc
    except msgpack.StackError as exc:
        raise _decode_error("bad_request", "undecodable msgpack: nesting too deep") from exc
    except (ValueError, TypeError) as exc:
        # ExtraData and FormatError are ValueError subclasses; UnicodeDecodeError (also one)
        # is invalid UTF-8 in a str.
        raise _decode_error("bad_request", f"undecodable msgpack: {exc}") from exc
    if type(obj) not in SCALAR_TYPES:  # a container or a timestamp
        problem = shape_problem(obj)
        if problem:
            raise _decode_error("bad_request", problem)
    return obj


# Types that are protocol values as they are: a container holding only these needs no walk.
SCALAR_TYPES = frozenset({str, int, float, bool, bytes, type(None)})
# A long array of scalars is settled by one C call over its element types, not a bytecode
# loop: a third less (an fs.query page of 100,000 names); on a short one the call costs more
# than the loop.
_scalars_only = SCALAR_TYPES.issuperset
_LONG = 32


def shape_problem_python(obj: Any) -> str | None:
    """Why `obj` is not a protocol value (too deep, a non-str map key, a timestamp), or None.

    A flat map or array of scalars (most bodies and results) is settled in one pass with no
    walk; anything else is walked down to MAX_DEPTH and no further, so a hostile depth
    cannot exhaust the Python stack. Also applied to results before they are sent (tuples
    pack as arrays, dict subclasses as maps: both are walked as such).
    """
    t = type(obj)
    if t is dict:
        for k, v in obj.items():
            if type(k) is not str or type(v) not in SCALAR_TYPES:
                return _walk(obj)
        return None
    if t is list:
        if len(obj) > _LONG and _scalars_only(map(type, obj)):
            return None
        for v in obj:
            if type(v) not in SCALAR_TYPES:
                return _walk(obj)
        return None
    return _walk(obj)


def _walk(obj: Any, depth: int = 1) -> str | None:
    # Recursive, yet bounded: a container is refused at MAX_DEPTH before its children are
    # looked at, so a hostile depth costs at most MAX_DEPTH frames. About twice as fast as
    # an explicit stack on a reply of a few small maps (parse.feed's events).
    t = type(obj)
    if t is dict or (t is not list and t is not tuple and isinstance(obj, dict)):
        if depth > limits.MAX_DEPTH:
            return f"nesting deeper than {limits.MAX_DEPTH}"
        for k, v in obj.items():
            if type(k) is not str:
                return f"map keys must be strings, not {type(k).__name__}"
            if type(v) not in SCALAR_TYPES:
                problem = _walk(v, depth + 1)
                if problem:
                    return problem
        return None
    if t is list or t is tuple or isinstance(obj, (list, tuple)):
        if depth > limits.MAX_DEPTH:
            return f"nesting deeper than {limits.MAX_DEPTH}"
        if len(obj) > _LONG and _scalars_only(map(type, obj)):
            return None
        for v in obj:
            if type(v) not in SCALAR_TYPES:
                problem = _walk(v, depth + 1)
                if problem:
                    return problem
        return None
    if isinstance(obj, msgpack.Timestamp):
        return "msgpack timestamps are not part of the protocol"
    return None  # a scalar, or what the packer itself refuses


def _compiled_walk() -> Callable[[Any], str | None] | None:
    """protocol/_cshape.c's walk when the optional extension was built (and
    MOORAGE_PROTOCOL_CORE is not "python"): the same answers as `_walk`, at C speed."""
    if os.environ.get("MOORAGE_PROTOCOL_CORE") == "python":
        return None
    try:
        from moorage.protocol._cshape import configure, walk
    except ImportError:
        return None
    configure(limits.MAX_DEPTH, msgpack.Timestamp)
    return walk  # type: ignore[no-any-return]


_cwalk = _compiled_walk()
SHAPE_CORE: str = "python" if _cwalk is None else "compiled"
"""Which check `shape_problem` is in this process ("compiled" or "python"): sys.info's
`shape_core`."""
shape_problem: Callable[[Any], str | None] = shape_problem_python if _cwalk is None else _cwalk


# --- requests ---------------------------------------------------------------------------


def encode_request(
    id: int,
    sid: str,
    op: str,
    args: Any = None,
    deadline_ms: int | None = None,
    attachments: Sequence[bytes] = (),
    epoch: str | None = None,
) -> list[bytes]:
    if epoch is not None or type(sid) is not str or type(op) is not str:
        # (a resend pinned to an epoch is rare: packed as a dict, not from the tables below)
        header: dict[str, Any] = {"id": id, "sid": sid, "op": op}
        if deadline_ms is not None:
            header["deadline_ms"] = deadline_ms
        if epoch is not None:
            header["ep"] = epoch
        return [TAG, _pack(header), _pack(args), *attachments]
    if deadline_ms is not None:
        tail = _request_tails.get((sid, op, True)) or _request_tail(sid, op, True)
        header_bytes = _join((_REQUEST_HEAD_4, _pack(id), tail, _pack(deadline_ms)))
    else:
        tail = _request_tails.get((sid, op, False)) or _request_tail(sid, op, False)
        header_bytes = _join((_REQUEST_HEAD_3, _pack(id), tail))
    body = _NIL if args is None else _pack(args)
    if attachments:
        return [TAG, header_bytes, body, *attachments]
    return [TAG, header_bytes, body]


# A header is a msgpack map, whose bytes are its head byte and then each key and value packed
# in order: so the entries that do not change between messages (sid and op of a client's
# calls, ok and ep of an actor's replies) are packed once, and only the id (and a request's
# deadline) each time. Byte for byte what packing the dict gives; the conformance vectors
# check it. The tables are bounded: a caller's op names are its own text.
_REQUEST_HEAD_3 = b"\x83" + _pack("id")
_REQUEST_HEAD_4 = b"\x84" + _pack("id")
_REPLY_HEAD = b"\x83" + _pack("id")
_TAILS_MAX = 1024
_request_tails: dict[tuple[str, str, bool], bytes] = {}
_reply_tails: dict[str, bytes] = {}


def _request_tail(sid: str, op: str, has_deadline: bool) -> bytes:
    tail = _pack("sid") + _pack(sid) + _pack("op") + _pack(op)
    if has_deadline:
        tail += _pack("deadline_ms")
    if len(_request_tails) >= _TAILS_MAX:
        _request_tails.clear()
    _request_tails[(sid, op, has_deadline)] = tail
    return tail


def _reply_tail(epoch: str) -> bytes:
    tail = _pack("ok") + _pack(True) + _pack("ep") + _pack(epoch)
    if len(_reply_tails) >= _TAILS_MAX:
        _reply_tails.clear()
    _reply_tails[epoch] = tail
    return tail


def _header(frame: bytes) -> dict:
    # Headers are small and flat; the length check bounds every msgpack limit (unpackb's own
    # limits follow the buffer's length), so no depth walk is needed here.
    if len(frame) > limits.MAX_HEADER_SIZE:
        raise _decode_error("message_too_large", f"header {len(frame)} bytes")
    try:
        h = _unpackb(frame)
    except (ValueError, TypeError, msgpack.StackError) as exc:
        raise _decode_error("bad_request", f"undecodable header: {exc}") from exc
    if type(h) is not dict:
        raise _decode_error("bad_request", "header is not a map")
    return h


def decode_request_python(frames: Sequence[bytes]) -> Request:
    """Frames after the routing ids. Raises DecodeError with whatever id could be read.
    (The reference: `decode_request` is protocol/_cenvelope.c's where it was built.)"""
    if len(frames) < 3:
        raise _decode_error("bad_request", f"expected >= 3 frames, got {len(frames)}")
    if frames[0] != TAG:
        raise _decode_error("unsupported_version", f"tag {bytes(frames[0][:16])!r} != {TAG!r}")
    header = _header(frames[1])
    rid = header.get("id")
    if type(rid) is not int or not 0 <= rid <= limits.MAX_ID:
        raise _decode_error("bad_request", f"id must be an integer in [0, 2^53): {rid!r:.40}")
    sid = header.get("sid")
    op = header.get("op")
    if type(sid) is not str or not 0 < len(sid) <= 128:
        raise _decode_error("bad_request", "sid must be a non-empty string", rid)
    if type(op) is not str or not 0 < len(op) <= limits.MAX_OP_LEN:
        raise _decode_error("bad_request", "op must be a non-empty string", rid)
    deadline = header.get("deadline_ms")
    if deadline is not None and type(deadline) is not int:
        raise _decode_error("bad_request", "deadline_ms must be an integer", rid)
    epoch = header.get("ep")
    if epoch is not None and type(epoch) is not str:
        raise _decode_error("bad_request", "ep must be a string", rid)
    if len(frames) - 3 > limits.MAX_ATTACHMENTS:
        raise _decode_error("message_too_large", f"{len(frames) - 3} attachments", rid)
    body = frames[2]
    if body == b"\xc0":
        args = None  # the common "no arguments"
    else:
        try:
            args = unpackb(body, max_values=limits.MAX_BODY_VALUES)
        except DecodeError as exc:
            exc.request_id = rid
            raise
    return _new_tuple(Request, (rid, sid, op, deadline, args,
                                list(frames[3:]) if len(frames) > 3 else [], epoch))


def pin_request(frames: Sequence[bytes], epoch: str) -> list[bytes]:
    """The same request (same id, deadline, body, attachments) to be run only by the actor
    life `epoch`: what a client resends when the first attempt may have run there, so that
    a successor, whose reply cache does not know the id, refuses it instead of running it
    a second time (PROTOCOL.md section 10)."""
    header = _unpackb(frames[1])
    header["ep"] = epoch
    return [frames[0], _pack(header), *frames[2:]]


# --- replies ----------------------------------------------------------------------------


def encode_reply(
    id: int | None, epoch: str, result: Any = None, attachments: Sequence[bytes] = ()
) -> list[bytes]:
    body = _NIL if result is None else result.data if type(result) is Packed else _pack(result)
    if type(epoch) is not str:
        return [TAG, _pack({"id": id, "ok": True, "ep": epoch}), body, *attachments]
    tail = _reply_tails.get(epoch) or _reply_tail(epoch)
    if attachments:
        return [TAG, _join((_REPLY_HEAD, _pack(id), tail)), body, *attachments]
    return [TAG, _join((_REPLY_HEAD, _pack(id), tail)), body]


def encode_error(id: int | None, epoch: str, error: WireError) -> list[bytes]:
    return [TAG, _pack({"id": id, "ok": False, "ep": epoch}), _pack(error.to_wire())]


def decode_reply_python(frames: Sequence[bytes]) -> Reply:
    """(The reference: `decode_reply` is protocol/_cenvelope.c's where it was built.)"""
    if len(frames) < 3:
        raise _decode_error("bad_request", f"reply: expected >= 3 frames, got {len(frames)}")
    if frames[0] != TAG:
        raise _decode_error("unsupported_version", f"reply tag {bytes(frames[0][:16])!r}")
    header = _header(frames[1])
    rid = header.get("id")
    if rid is not None and type(rid) is not int:
        raise _decode_error("bad_request", "reply id must be an integer or nil")
    ok = header.get("ok")
    if type(ok) is not bool:
        raise _decode_error("bad_request", "reply header needs a bool 'ok'", rid)
    epoch = header.get("ep")
    try:
        body = unpackb(frames[2], limits.MAX_MESSAGE_SIZE)
    except DecodeError as exc:
        exc.request_id = rid  # so the caller waiting for it hears why, instead of timing out
        raise
    return _new_tuple(Reply, (rid, ok, epoch if type(epoch) is str else "", body,
                              list(frames[3:])))


# --- streams ----------------------------------------------------------------------------


def encode_stream(
    topic: str, seq: int, epoch: str, body: Any, attachments: Sequence[bytes] = ()
) -> list[bytes]:
    return [topic.encode(), TAG, _pack({"seq": seq, "ep": epoch}),
            body.data if type(body) is Packed else _pack(body), *attachments]


def decode_stream_python(frames: Sequence[bytes]) -> StreamMessage:
    """(The reference: `decode_stream` is protocol/_cenvelope.c's where it was built.)"""
    if len(frames) < 4 or frames[1] != TAG:
        raise _decode_error("bad_request", "stream message: expected [topic, TAG, header, body]")
    header = _header(frames[2])
    if type(header.get("seq")) is not int:
        raise _decode_error("bad_request", "stream header needs an integer 'seq'")
    epoch = header.get("ep")
    try:
        topic = bytes(frames[0]).decode()
    except UnicodeDecodeError as exc:
        raise _decode_error("bad_request", "stream topic is not UTF-8") from exc
    body = unpackb(frames[3], limits.MAX_MESSAGE_SIZE)
    return StreamMessage(
        topic, header["seq"], epoch if isinstance(epoch, str) else "", body, list(frames[4:]),
        header.get("welcome") is True,
    )


def _compiled_decoders() -> tuple[Any, Any, Any] | None:
    """protocol/_cenvelope.c's request, reply and stream decoders, configured, when the
    optional extension was built (and MOORAGE_PROTOCOL_CORE is not "python"): the same
    answers as the decode_*_python functions, which they call for every message they do not
    decode themselves."""
    if os.environ.get("MOORAGE_PROTOCOL_CORE") == "python":
        return None
    try:
        from moorage.protocol._cenvelope import configure, reply, request, stream
    except ImportError:
        return None
    configure(Request, Reply, StreamMessage, decode_request_python, decode_reply_python,
              decode_stream_python, TAG, limits.MAX_HEADER_SIZE, limits.MAX_OP_LEN,
              limits.MAX_ATTACHMENTS, limits.MAX_BODY_SIZE, limits.MAX_BODY_VALUES,
              limits.MAX_MESSAGE_SIZE, limits.MAX_ID, limits.MAX_DEPTH)
    return request, reply, stream


_cdecoders = _compiled_decoders()
ENVELOPE_CORE: str = "python" if _cdecoders is None else "compiled"
"""Which decoders `decode_request`, `decode_reply` and `decode_stream` are in this process
("compiled" or "python"): sys.info's `envelope_core`."""
decode_request: Callable[[Sequence[bytes]], Request] = \
    decode_request_python if _cdecoders is None else _cdecoders[0]
decode_reply: Callable[[Sequence[bytes]], Reply] = \
    decode_reply_python if _cdecoders is None else _cdecoders[1]
decode_stream: Callable[[Sequence[bytes]], StreamMessage] = \
    decode_stream_python if _cdecoders is None else _cdecoders[2]


def encode_welcome(topic: str, seq: int, epoch: str) -> list[bytes]:
    return [topic.encode(), TAG, _pack({"seq": seq, "ep": epoch, "welcome": True}), _pack(None)]
