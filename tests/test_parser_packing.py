"""parse.feed's answer packed by hand (actors/parser/packing.py) is byte for byte msgpack's
packing of the events' `to_wire` dicts: for every event of the conformance vectors (markers,
tokens, text, under every mode), for markers met again and again (the memo), past the memo's
bounds, and for a field no memo can hold; by the compiled loop (_cpack.c) and by the Python
one alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.parser import packing
from moorage.actors.parser.packing import EventPacker
from moorage.actors.vtparse import Parser
from moorage.actors.vtparse._events import CommandLine, Cwd, PromptStart
from moorage.protocol.envelope import packb
from tests.interpreter import printed
from tests.test_vtparse import as_bytes, make_parser

VECTORS = json.loads((Path(__file__).parent / "vectors" / "vtparse.json").read_text())["vectors"]
FIELDS = {"offset": 7, "mode": "skip_invalid", "skipped": 0, "unparsed": 0, "buffered": 3}


def reference(events: list[Any]) -> bytes:
    return packb({"events": [e.to_wire() for e in events], **FIELDS})


def vector_events(v: dict[str, Any]) -> list[Any]:
    parser = make_parser(v["parser"])
    events: list[Any] = []
    for chunk in v["chunks"]:
        events += parser.feed(as_bytes(chunk))
    return events + parser.flush()


@pytest.fixture(params=["python", "compiled"])
def loop(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and packing.PACK_CORE != "compiled":
        pytest.skip("the optional extension actors/parser/_cpack.c was not built")
    return request.param  # type: ignore[no-any-return]


def test_every_vector_s_events_pack_as_their_dicts(loop: str) -> None:
    packer = EventPacker(compiled=loop == "compiled")
    kinds = set()
    for _ in range(2):  # the second time from the memo
        for v in VECTORS:
            events = vector_events(v)
            kinds |= {e.kind for e in events}
            assert packer.answer(events, FIELDS).data == reference(events), v["name"]
    assert {"prompt_start", "command_finished", "cwd", "text", "csi", "osc"} <= kinds


def test_markers_met_again_pack_with_their_own_offsets(loop: str) -> None:
    packer = EventPacker(compiled=loop == "compiled")
    parser = Parser("N")
    cycle = (b"\x1b]633;D;0;N\x07\x1b]633;A;N\x07$ \x1b]633;B;N\x07\x1b]633;E;ls;N\x07"
             b"\x1b]633;C;N\x07out\n\x1b]633;P;Cwd=/tmp;N\x07")
    for k in range(40):  # arrays of 6 to 240 events: fixarray and array 16 headers
        events = parser.feed(cycle * (k + 1))
        assert packer.answer(events, FIELDS).data == reference(events)
    assert packer._remembered <= 6


def test_the_memo_stays_bounded_and_right_past_its_bounds(loop: str) -> None:
    packer = EventPacker(compiled=loop == "compiled")
    events = [CommandLine(k, k + 10, 633, True, "N", f"cmd {k}") for k in range(3 * 256)]
    events += [CommandLine(9, 99, 633, True, "N", "x" * 10_000)] * 2  # too long to remember
    events += [PromptStart(1 << 40, (1 << 40) + 8, 633, False, None)]  # a uint64 offset
    assert packer.answer(events, FIELDS).data == reference(events)
    assert packer.answer(events, FIELDS).data == reference(events)
    assert 0 < packer._remembered <= packing.MEMO_ENTRIES
    assert all(len(t) <= packing.MEMO_BYTES for lay in packer._layouts.values()
               for t in lay.tails.values())


def test_a_field_no_memo_can_hold_is_packed_the_long_way(loop: str) -> None:
    packer = EventPacker(compiled=loop == "compiled")
    odd = Cwd(0, 5, 633, True, "N", ["not", "a", "str"], None)  # type: ignore[arg-type]
    events = [odd, Cwd(5, 9, 633, True, "N", "/tmp", None), odd]
    assert packer.answer(events, FIELDS).data == reference(events)
    assert packer.pack(odd) == packb(odd.to_wire())


def test_an_answer_of_many_events_has_a_long_array_header(loop: str) -> None:
    packer = EventPacker(compiled=loop == "compiled")
    events = [PromptStart(k, k + 1, 633, False, None) for k in range(70_000)]
    assert packer.answer(events, FIELDS).data == reference(events)


def test_offsets_the_compiled_loop_does_not_take_are_packed_the_long_way(loop: str) -> None:
    """A marker remembered, then met with an offset that is no plain int in [0, 2^63): each
    is packed as msgpack packs it, half an event never left behind."""
    packer = EventPacker(compiled=loop == "compiled")
    odd = [1 << 63, (1 << 64) - 1, -1, True, 0, 127, 128, 255, 256, 65535, 65536, (1 << 32)]
    events = [PromptStart(0, 1, 633, False, None)]
    events += [PromptStart(o, 2, 633, False, None) for o in odd]
    events += [PromptStart(3, o, 633, False, None) for o in odd]
    for _ in range(2):
        assert packer.answer(events, FIELDS).data == reference(events)
        assert packer.answer(tuple(events), FIELDS).data == reference(events)


def test_both_loops_give_the_same_bytes_for_a_stream_s_answers() -> None:
    if packing.PACK_CORE != "compiled":
        pytest.skip("the optional extension actors/parser/_cpack.c was not built")
    compiled, python = EventPacker(), EventPacker(compiled=False)
    parser = Parser("N")
    cycle = (b"\x1b]633;D;0;N\x07\x1b]633;A;N\x07$ \x1b]633;B;N\x07\x1b]633;E;ls;N\x07"
             b"\x1b]633;C;N\x07out\n\x1b]633;P;Cwd=/tmp;N\x07\x1b]633;E;make;X\x07")
    for k in range(300):
        events = parser.feed(cycle.replace(b"ls", b"ls %d" % (k % 40)))
        assert compiled.answer(events, FIELDS).data == python.answer(events, FIELDS).data


def test_the_python_loop_runs_where_it_is_asked_for() -> None:
    code = "from moorage.actors.parser import packing; print(packing.PACK_CORE)"
    assert printed(code, MOORAGE_PARSER_CORE="python") == ["python"]


@pytest.mark.parametrize("error", [TypeError, ValueError])
def test_both_loops_do_the_same_with_an_event_whose_key_raises(error: type[Exception]) -> None:
    """A layout's key that raises for an event (a field that is no value): a TypeError sends
    the event the long way, unremembered, in both loops; any other error is the caller's in
    both."""
    if packing.PACK_CORE != "compiled":
        pytest.skip("the optional extension actors/parser/_cpack.c was not built")
    odd = CommandLine(4, 8, 633, True, "N", "odd")
    events = [CommandLine(0, 4, 633, True, "N", "ls"), odd, CommandLine(8, 9, 633, True, "N", "ls")]
    outcomes = []
    for packer in (EventPacker(), EventPacker(compiled=False)):
        packer.answer(events[:1], FIELDS)  # its class's layout made, "ls" remembered
        layout = packer._layouts[CommandLine]
        real_key = layout.key

        def key(e: Any, real_key: Any = real_key) -> Any:
            if e is odd:
                raise error("no value")
            return real_key(e)

        layout.key = key
        packer._known[CommandLine] = (layout.head, key, layout.tails)
        try:
            outcomes.append(packer.answer(events, FIELDS).data)
        except Exception as exc:  # (which one is what is compared)
            outcomes.append(type(exc))
        outcomes.append(sorted(k[-1] for k in layout.tails))
    assert outcomes[:2] == outcomes[2:]
    if error is TypeError:
        assert outcomes[0] == reference(events)
        assert outcomes[1] == ["ls"]
    else:
        assert outcomes[0] is error
