"""The request path's shortcuts keep every guarantee: header bytes packed from cached parts
are those of the whole map, the flat-body fast path of the shape check agrees with the full
walk, the wire helpers move any frames intact, and a result that cannot be sent still becomes
`internal` on a real actor that serves on."""

from __future__ import annotations

import collections
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.actors.runtime import Actor, Call, op
from moorage.actors.runtime.registry import collect
from moorage.protocol import limits
from moorage.protocol.envelope import (
    _walk,
    decode_reply,
    encode_reply,
    encode_request,
    packb,
    shape_problem,
)
from moorage.protocol.errors import MoorageError
from moorage.protocol.wire import COPY_THRESHOLD, recv_frames, send_frames

pytestmark = pytest.mark.timeout(60)

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), inner, max_size=4),
    max_leaves=20,
)


@given(rid=st.integers(0, limits.MAX_ID), sid=st.text(min_size=1, max_size=200),
       op=st.text(min_size=1, max_size=70), deadline=st.none() | st.integers(0, 2**64 - 1))
@settings(max_examples=300, deadline=None)
def test_request_headers_are_the_bytes_of_the_whole_map(rid, sid, op, deadline):
    header: dict[str, Any] = {"id": rid, "sid": sid, "op": op}
    if deadline is not None:
        header["deadline_ms"] = deadline
    assert encode_request(rid, sid, op, None, deadline)[1] == packb(header)


@given(rid=st.none() | st.integers(0, limits.MAX_ID), epoch=st.text(max_size=40))
@settings(max_examples=200, deadline=None)
def test_reply_headers_are_the_bytes_of_the_whole_map(rid, epoch):
    assert encode_reply(rid, epoch, 1)[1] == packb({"id": rid, "ok": True, "ep": epoch})


def test_header_parts_for_many_names_stay_bounded_and_correct():
    for i in range(3000):  # past the tables' bound: they are cleared, not grown
        frames = encode_request(i, f"s{i}", f"op.{i}", None, i)
        assert frames[1] == packb({"id": i, "sid": f"s{i}", "op": f"op.{i}", "deadline_ms": i})
        assert encode_reply(i, f"ep{i}")[1] == packb({"id": i, "ok": True, "ep": f"ep{i}"})


@given(values)
@settings(max_examples=400, deadline=None)
def test_the_fast_path_of_the_shape_check_agrees_with_the_full_walk(value):
    assert (shape_problem(value) is None) == (_walk(value) is None)


def test_results_the_packer_takes_but_the_protocol_does_not_are_found():
    deep: Any = 1
    for _ in range(limits.MAX_DEPTH + 1):
        deep = (deep,)  # tuples pack as arrays: nesting counts the same
    assert "deeper" in (shape_problem([deep]) or "")
    assert "keys" in (shape_problem({"a": collections.OrderedDict({1: 2})}) or "")
    assert "keys" in (shape_problem([({"x": {b"k": 1}},)]) or "")
    assert "timestamp" in (shape_problem({"t": msgpack.Timestamp(1, 0)}) or "")
    assert shape_problem({"a": 1, "b": "x", "c": None, "d": 1.5, "e": b"", "f": True}) is None


def test_the_wire_helpers_move_frames_of_every_size_intact():
    import zmq

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://hot-path-wire")
        b.connect("inproc://hot-path-wire")
        messages = [[b"one"], [b"", b""], [b"x" * COPY_THRESHOLD, b"y", b"z" * (3 << 20)],
                    [bytes(range(256))] * 20]
        for frames in messages:
            send_frames(a, frames)
            assert recv_frames(b) == frames
        with pytest.raises(zmq.Again):
            recv_frames(b, zmq.NOBLOCK)
    finally:
        a.close(0)
        b.close(0)
        ctx.term()


class ResultsActor(Actor):
    """Handlers returning results the packer would send but no client could read."""

    name = "results"

    @op("results.get", args={"kind": str}, idempotent=True)
    def get(self, call: Call, kind: str) -> Any:
        """One result of `kind`."""
        deep: Any = "x"
        for _ in range(limits.MAX_DEPTH + 2):
            deep = [deep]
        return {
            "flat": {"a": 1, "b": "two"},
            "deep": {"d": deep},
            "tuple_keys": {"t": ({1: "int key"},)},
            "timestamp": {"t": msgpack.Timestamp(1, 0)},
            "object": {"o": object()},
            "scalar": "just a string",
        }[kind]

    @op("results.effect", args={"kind": str})
    def effect(self, call: Call, kind: str) -> Any:
        """Not idempotent: its reply, an error included, is kept for a retry."""
        return self.get(call, kind)


def test_unsendable_results_become_internal_and_the_actor_serves_on(spawn_actor, client):
    spawn_actor("tests.test_hot_path:ResultsActor", "results")
    client.hello("results")
    assert client.call("results", "results.get", {"kind": "flat"}) == {"a": 1, "b": "two"}
    assert client.call("results", "results.get", {"kind": "scalar"}) == "just a string"
    for kind in ("deep", "tuple_keys", "timestamp", "object"):
        with pytest.raises(MoorageError) as e:
            client.call("results", "results.get", {"kind": kind})
        assert e.value.name == "internal" and "not sendable" in str(e.value), kind
    assert client.call("results", "sys.ping")["ep"]


def test_a_retried_unsendable_result_gets_the_same_internal_reply(spawn_actor, client, runtime_dir):
    import zmq

    from moorage.protocol import endpoints

    spawn_actor("tests.test_hot_path:ResultsActor", "results")
    client.hello("results")
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoints.rpc(runtime_dir, "results"))
    try:
        frames = encode_request(7, "hot-path-retry", "results.effect", {"kind": "object"})
        replies = []
        for _ in range(2):
            s.send_multipart(frames)
            assert s.poll(10_000), "no reply"
            replies.append(s.recv_multipart())
        assert replies[0] == replies[1]
        r = decode_reply(replies[0])
        assert not r.ok and r.body["name"] == "internal"
        info = client.call("results", "sys.info")
        assert info["reply_cache"]["hits"] == 1
    finally:
        s.close(0)
        ctx.term()


def test_runtime_built_results_skip_the_check_and_handlers_results_do_not():
    class A:
        @op("a.x")
        def x(self, call: Call) -> None:
            """x."""

        @op("a.y", checked=False)
        def y(self, call: Call) -> None:
            """y."""

    table = collect(A())
    assert table["a.x"].checked and not table["a.y"].checked
    assert table["a.x"].bind(None) == {} and table["a.x"].bind({}) == {}
    specs = collect(Actor.__new__(Actor))
    assert not specs["sys.ping"].checked and specs["sys.info"].checked
    assert specs["sys.pressure"].checked and not specs["replay"].checked  # (packed as sent)


def test_binding_takes_declared_types_fills_defaults_and_names_unknown_arguments_first():
    class A:
        @op("a.read", args={"path": str, "offset": (int, 0), "length": (int, None),
                            "flag": (bool, False)})
        def read(self, call: Call, path: str, offset: int, length: int | None,
                 flag: bool) -> None:
            """read."""

    spec = collect(A())["a.read"]

    class Name(str):
        pass

    def refused(raw: object) -> str:
        with pytest.raises(MoorageError) as e:
            spec.bind(raw)
        assert e.value.name == "bad_args"
        return str(e.value)

    assert spec.bind({"path": "p"}) == {"path": "p", "offset": 0, "length": None,
                                        "flag": False}
    assert spec.bind({"path": "p", "offset": 3, "length": 5, "flag": True}) == {
        "path": "p", "offset": 3, "length": 5, "flag": True}
    assert spec.bind({"path": "p", "offset": None}) == {  # nil: the default
        "path": "p", "offset": 0, "length": None, "flag": False}
    assert type(spec.bind({"path": Name("p")})["path"]) is Name  # a subclass is taken
    assert "'offset' must be int, not bool" in refused({"path": "p", "offset": True})
    assert "'flag' must be bool, not int" in refused({"path": "p", "flag": 1})
    assert "missing argument 'path'" in refused({})
    assert "unknown argument(s) ['bogus']" in refused({"path": "p", "bogus": 1})
    # unknown names come first, whatever else is wrong
    assert "unknown argument(s) ['bogus']" in refused({"bogus": 1})
    assert "unknown argument(s) ['bogus']" in refused({"path": 1, "bogus": 1})
    assert "unknown argument(s)" in refused({"path": "p", 1: 2})
    assert "must be a map, not list" in refused([1])


def test_a_hostile_depth_is_refused_at_the_limit_without_walking_it_all():
    deep: Any = []
    for _ in range(100_000):  # far past the interpreter's recursion limit
        deep = [deep]
    assert "deeper" in (shape_problem(deep) or "")
    assert "deeper" in (shape_problem({"a": deep}) or "")
