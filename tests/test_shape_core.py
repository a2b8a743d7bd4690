"""The protocol-value check, compiled (protocol/_cshape.c) and in Python (envelope._walk): the
same answer, word for word, on any value; the compiled one is what this process runs when it
was built, says so in sys.info, and without it the Python one serves."""

from __future__ import annotations

import collections
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.protocol import envelope, limits
from moorage.protocol.envelope import SHAPE_CORE, _walk, shape_problem, shape_problem_python
from tests.interpreter import printed

pytestmark = pytest.mark.timeout(60)


class Seq(list):
    pass


class Map(dict):
    pass


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8)
           | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)))
keys = st.text(max_size=6) | st.integers(0, 9) | st.binary(max_size=3) | st.none()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner)
    | st.lists(inner, max_size=3).map(Seq)
    | st.dictionaries(keys, inner, max_size=4)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3).map(Map),
    max_leaves=40,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


def compiled() -> Any:
    if SHAPE_CORE != "compiled":
        pytest.skip("the compiled check was not built here (no compiler): Python only")
    return shape_problem


@given(values)
@settings(max_examples=600, deadline=None)
def test_the_compiled_check_answers_what_the_python_walk_does(value):
    check = compiled()
    assert check(value) == _walk(value) == shape_problem_python(value)


@pytest.mark.parametrize("depth", [limits.MAX_DEPTH - 1, limits.MAX_DEPTH, limits.MAX_DEPTH + 1,
                                   100_000])
def test_the_depth_limit_is_the_same_and_a_hostile_depth_costs_nothing(depth):
    check = compiled()
    for leaf in (1, msgpack.Timestamp(1, 0), {5: 1}):
        value = nested(depth, leaf)
        assert check(value) == _walk(value)
    assert "deeper" in (check(nested(100_000)) or "")


def test_each_kind_of_problem_is_named_as_the_python_walk_names_it():
    check = compiled()
    cases = [
        {"a": collections.OrderedDict({1: 2})},
        [({"x": {b"k": 1}},)],
        {"t": [1, 2, msgpack.Timestamp(1, 0)]},
        msgpack.Timestamp(2, 0),
        {"ok": [{"options": {}, "n": None, "f": 1.5, "b": b"", "t": True}] * 50},
        {"files": [f"d/{i}" for i in range(10_000)]},
        nested(limits.MAX_DEPTH + 1),
        Seq([Map({"a": Seq([1])})]),
        {None: 1},
        "text",
        7,
        None,
    ]
    for value in cases:
        assert check(value) == _walk(value), value


def test_without_the_extension_the_python_check_serves():
    code = ("from moorage.protocol import envelope as e; import msgpack; "
            "from moorage.protocol.envelope import unpackb, DecodeError\n"
            "deep = 1\nfor _ in range(40):\n    deep = [deep]\n"
            "try:\n    unpackb(msgpack.packb(deep))\n"
            "except DecodeError as exc:\n    err = exc.error.name\n"
            "print(e.SHAPE_CORE, e.shape_problem is e.shape_problem_python, err)")
    assert printed(code, MOORAGE_PROTOCOL_CORE="python") == ["python", "True", "bad_request"]


def test_a_body_the_protocol_refuses_is_refused_by_either_check():
    for body in ({"a": {1: 2}}, nested(limits.MAX_DEPTH + 2), [msgpack.Timestamp(0, 5)]):
        with pytest.raises(envelope.DecodeError) as exc:
            envelope.unpackb(msgpack.packb(body))
        assert exc.value.error.name == "bad_request"
        assert shape_problem(body) == shape_problem_python(body)


def test_a_real_actor_says_which_check_it_runs(spawn_actor, client, runtime_dir):
    import zmq

    from moorage.protocol import endpoints

    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    info = client.call("parser", "sys.info")
    assert info["shape_core"] == SHAPE_CORE
    # a request body nested past the limit (msgpack takes it; the check does not): its
    # classified error, and the actor serves on
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoints.rpc(runtime_dir, "parser"))
    try:
        frames = envelope.encode_request(1, "shape-core-test", "parse.open", None)
        frames[2] = msgpack.packb({"stream": "s", "x": nested(limits.MAX_DEPTH + 2)})
        s.send_multipart(frames)
        assert s.poll(10_000), "no reply"
        reply = envelope.decode_reply(s.recv_multipart())
        assert not reply.ok and reply.body["name"] == "bad_request"
        assert "deeper" in reply.body["message"]
    finally:
        s.close(0)
        ctx.term()
    assert client.call("parser", "sys.ping") is not None
