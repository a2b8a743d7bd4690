"""moorage.actors.vtparse: the conformance vectors, and each documented policy on its own.

The vectors (tests/vectors/vtparse.json) are fed as their chunks say and also byte by byte,
which sends every sequence through the byte machine instead of the fast paths: both must give
the same events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from moorage.actors.vtparse import (
    EVENT_TYPES,
    KINDS,
    MAX_BUFFER_SIZE,
    MAX_HEADER,
    Cleaner,
    CommandFinished,
    CommandLine,
    Csi,
    Dispatcher,
    Event,
    OutputStart,
    Parser,
    PromptStart,
    RecoveryMode,
    Text,
    TextCollector,
    clean,
    clean_fast,
    layout,
    unescape,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "vtparse.json").read_text())["vectors"]


def as_bytes(value: str | dict[str, str]) -> bytes:
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    return value.encode("latin-1")


def jsonable(value: Any) -> Any:
    """A wire value written as the vectors write it: bytes as latin-1 strings."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def make_parser(spec: dict[str, Any]) -> Parser:
    return Parser(
        spec["nonce"],
        spec["tokens"],
        RecoveryMode(spec["mode"]),
        text=spec["text"],
        max_buffer=spec.get("max_buffer", MAX_BUFFER_SIZE),
    )


def merged(events: list[Event]) -> list[Event]:
    """Adjacent text runs joined: how cut text compares with the same text whole."""
    out: list[Event] = []
    for e in events:
        last = out[-1] if out else None
        if isinstance(e, Text) and isinstance(last, Text) and last.end == e.start:
            out[-1] = Text(last.start, e.end, last.text + e.text)
        else:
            out.append(e)
    return out


def feed_all(parser: Parser, chunks: list[bytes], flush: bool = False) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    if flush:
        events += parser.flush()
    return events


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_gives_exactly_the_expected_events(vector: dict[str, Any]) -> None:
    parser = make_parser(vector["parser"])
    chunks = [as_bytes(c) for c in vector["chunks"]]
    events = feed_all(parser, chunks, vector.get("flush", False))
    wire = [jsonable(e.to_wire()) for e in events]
    assert len(wire) == len(vector["events"]), wire
    for got, want in zip(wire, vector["events"], strict=True):
        assert {k: got.get(k, "<missing>") for k in want} == want, got
    if "mode_after" in vector:
        assert parser.mode == vector["mode_after"]
    if "buffered_after" in vector:
        assert parser.buffered_bytes() == vector["buffered_after"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_fed_byte_by_byte_gives_the_same_events(vector: dict[str, Any]) -> None:
    chunks = [as_bytes(c) for c in vector["chunks"]]
    flush = vector.get("flush", False)
    whole = feed_all(make_parser(vector["parser"]), chunks, flush)
    data = b"".join(chunks)
    single = feed_all(make_parser(vector["parser"]), [bytes([b]) for b in data], flush)
    assert merged(single) == merged(whole)


# ---------------------------------------------------------------------------------------------
# Events on the wire
# ---------------------------------------------------------------------------------------------

WIRE_SAMPLE = (
    b"\x1b]633;A;N\x07\x1b]633;B\x07\x1b]633;E;ls\x07\x1b]633;C\x07out\r\n\x1b[1;38:2:1:2:3m"
    b"\x1b(B\x1bP1q\x00\x1b\\\x1b]633;P;Cwd=/x\x07\x1b]633;P;A=b\x07\x1b]7;file:///y\x07"
    b"\x1b]1337;SetMark\x07\x1b]7;nope\x07\x1b[1?h\x1b]133;D;0;k=v\x07\x1b]9;" + b"x" * 40 + b"\x07"
)


def test_every_event_kind_round_trips_through_msgpack_as_its_wire_dict() -> None:
    parser = Parser("N", tokens=True, text=True, max_buffer=32)
    events = parser.feed(WIRE_SAMPLE)
    assert {e.kind for e in events} == KINDS
    for event in events:
        wire = event.to_wire()
        assert wire["kind"] == event.kind
        assert msgpack.unpackb(msgpack.packb(wire), raw=False) == wire


def test_every_event_type_has_a_distinct_kind() -> None:
    assert len(KINDS) == len(EVENT_TYPES)


def test_events_of_different_kinds_with_the_same_fields_are_not_equal() -> None:
    assert PromptStart(0, 8, 633, False, None) != OutputStart(0, 8, 633, False, None)


# ---------------------------------------------------------------------------------------------
# Offsets, nonce, configuration
# ---------------------------------------------------------------------------------------------


def test_offsets_start_where_the_parser_was_told_the_stream_is() -> None:
    parser = Parser(offset=1000)
    (event,) = parser.feed(b"ab\x1b]633;C\x07")
    assert (event.start, event.end) == (1002, 1010)
    assert parser.offset == 1010


def test_a_marker_split_in_every_possible_place_keeps_its_absolute_offsets() -> None:
    data = b"xx\x1b]633;E;echo\\x20hi;N\x1b\\yy"
    for cut in range(len(data) + 1):
        parser = Parser("N")
        events = parser.feed(data[:cut]) + parser.feed(data[cut:])
        assert events == [CommandLine(2, 24, 633, True, "N", "echo hi")], cut


def test_max_buffer_below_sixteen_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Parser(max_buffer=8)


@pytest.mark.parametrize("nonce", ["", "a;b", "a b", "a\x07"])
def test_a_nonce_that_could_not_be_matched_as_a_field_is_refused(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        Parser(nonce)


def test_a_memoryview_or_bytearray_chunk_is_accepted() -> None:
    parser = Parser()
    assert parser.feed(bytearray(b"\x1b]633;A\x07"))[0].kind == "prompt_start"
    assert parser.feed(memoryview(b"\x1b]633;B\x07"))[0].kind == "prompt_end"


# ---------------------------------------------------------------------------------------------
# Recovery modes
# ---------------------------------------------------------------------------------------------


def test_mode_is_buffer_partial_while_a_sequence_is_held_and_skip_invalid_after() -> None:
    parser = Parser()
    assert parser.mode is RecoveryMode.SKIP_INVALID
    parser.feed(b"\x1b]633;")
    assert parser.mode is RecoveryMode.BUFFER_PARTIAL
    assert parser.buffered_bytes() == 6
    assert parser.feed(b"A\x07")[0].kind == "prompt_start"
    assert parser.mode is RecoveryMode.SKIP_INVALID
    assert parser.buffered_bytes() == 0


def test_a_cut_utf8_character_also_counts_as_held_in_text_mode() -> None:
    parser = Parser(text=True)
    parser.feed(b"\xe2\x82")
    assert parser.mode is RecoveryMode.BUFFER_PARTIAL
    assert parser.buffered_bytes() == 2


def test_a_held_osc_that_outgrows_the_buffer_is_dropped_with_a_warning_to_its_end() -> None:
    parser = Parser(max_buffer=64)
    assert parser.feed(b"\x1b]633;E;" + b"x" * 40) == []
    assert parser.mode is RecoveryMode.BUFFER_PARTIAL
    (warning,) = parser.feed(b"y" * 40)
    assert warning.kind == "overflow"
    assert (warning.start, warning.end) == (0, 2 + 64)
    # still inside the dropped string until its terminator; what is left of it is no text
    assert parser.mode is RecoveryMode.BUFFER_PARTIAL
    assert parser.feed(b"z" * 100 + b"\x07") == []
    assert parser.mode is RecoveryMode.SKIP_INVALID
    assert parser.buffered_bytes() == 0
    assert parser.feed(b"\x1b]633;A\x07")[0].kind == "prompt_start"


def test_skip_invalid_consumes_an_invalid_sequence_to_its_final_byte() -> None:
    parser = Parser(text=True)
    assert [e.to_wire() for e in parser.feed(b"\x1b[1?hok")] == [
        {"kind": "text", "start": 5, "end": 7, "text": "ok"}
    ]
    assert parser.mode is RecoveryMode.SKIP_INVALID


def test_assigning_raw_passthrough_stops_parsing_and_drops_what_was_held() -> None:
    parser = Parser()
    parser.feed(b"\x1b]633;")
    parser.mode = RecoveryMode.RAW_PASSTHROUGH
    assert parser.mode is RecoveryMode.RAW_PASSTHROUGH
    assert parser.buffered_bytes() == 0
    assert parser.feed(b"A\x07\x1b]633;B\x07") == []
    assert parser.offset == 6 + 10
    parser.mode = RecoveryMode.SKIP_INVALID
    (event,) = parser.feed(b"\x1b]633;C\x07")
    assert (event.kind, event.start) == ("output_start", 16)


def test_assigning_reset_on_error_changes_the_policy_not_the_events_so_far() -> None:
    parser = Parser(text=True)
    parser.mode = RecoveryMode.RESET_ON_ERROR
    assert parser.policy is RecoveryMode.RESET_ON_ERROR
    assert [e.kind for e in parser.feed(b"\x1b[1?h")] == ["text"]
    assert parser.mode is RecoveryMode.RESET_ON_ERROR
    parser.feed(b"plain")
    assert parser.mode is RecoveryMode.SKIP_INVALID
    assert parser.policy is RecoveryMode.RESET_ON_ERROR


def test_buffer_partial_as_a_policy_behaves_as_skip_invalid() -> None:
    skip = Parser(text=True).feed(b"\x1b[1?hx")
    buffered = Parser(mode=RecoveryMode.BUFFER_PARTIAL, text=True).feed(b"\x1b[1?hx")
    assert skip == buffered


def test_bytes_without_esc_are_skipped_unseen_only_where_they_could_change_nothing() -> None:
    plain = b"plain output, no escape in it\r\n" * 3
    marker = b"\x1b]633;D;0;N0NCE\x07"
    fed, skipped = Parser(nonce="N0NCE"), Parser(nonce="N0NCE")
    want = fed.feed(plain) + fed.feed(marker)
    assert skipped.skip(len(plain)) and skipped.offset == len(plain)
    assert skipped.feed(marker) == want and skipped.mode is fed.mode  # same offsets, same end
    # a sequence held (cut by the chunk's end): the bytes after it may end it, so not skipped
    held = Parser(nonce="N0NCE")
    held.feed(marker[:9])
    assert not held.skip(4) and held.offset == 9
    # text and tokens report those bytes: never skipped
    assert not Parser(text=True).skip(4) and not Parser(tokens=True).skip(4)
    raw = Parser(mode=RecoveryMode.RAW_PASSTHROUGH)
    assert raw.skip(10) and raw.offset == 10
    with pytest.raises(ValueError):
        Parser().skip(-1)


def test_reset_drops_a_held_sequence_and_keeps_the_offset() -> None:
    parser = Parser()
    parser.feed(b"\x1b]633;A")
    parser.reset()
    assert parser.buffered_bytes() == 0
    assert parser.feed(b"\x07") == []
    assert parser.offset == 8


def test_memory_stays_under_the_cap_while_a_huge_osc_streams_in() -> None:
    parser = Parser(max_buffer=1024)
    parser.feed(b"\x1b]633;E;")
    for _ in range(200):
        parser.feed(b"z" * 100)
        assert parser.buffered_bytes() <= 1024 + MAX_HEADER
        assert len(parser._buf) <= 1024


def test_a_huge_parameter_costs_nothing_and_saturates() -> None:
    digits = b"9" * 100_000
    fast = Parser(tokens=True).feed(b"\x1b[" + digits + b"m")
    assert fast[0].params == (65535,)  # type: ignore[union-attr]
    slow = Parser(tokens=True)
    events = slow.feed(b"\x1b[") + slow.feed(digits) + slow.feed(b"m")
    assert events == fast
    assert slow.buffered_bytes() == 0


def test_a_csi_with_a_hundred_thousand_separators_is_one_invalid_event() -> None:
    parser = Parser(tokens=True)
    data = b"\x1b[" + b";" * 100_000 + b"mx"
    events = [e for k in range(0, len(data), 4096) for e in parser.feed(data[k : k + 4096])]
    assert [e.to_wire() for e in events] == [
        {"kind": "invalid", "start": 0, "end": 100_003, "reason": "more than 32 parameters"}
    ]
    assert parser.buffered_bytes() == 0


# ---------------------------------------------------------------------------------------------
# clean() and TextCollector
# ---------------------------------------------------------------------------------------------


def test_clean_removes_every_kind_of_sequence() -> None:
    data = (
        b"\x1b[1;31merror\x1b[0m: \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ "
        b"\x1bP1$qm\x1b\\\x1b_apc\x1b\\\x1b(Bdone\r\n"
    )
    assert clean(data) == "error: link done\n"


def test_clean_keeps_tabs_and_lone_carriage_returns_and_drops_other_controls() -> None:
    assert clean(b"a\tb\x07\x08c\r50%\r\n\x7f") == "a\tbc\r50%\n"


def test_clean_decodes_utf8_with_replacement_per_run() -> None:
    assert clean("é€".encode() + b"\xff") == "é€\ufffd"
    # a character cut by a sequence is two broken runs, as a terminal would show it
    assert clean(b"\xe2\x82\x1b[m\xac") == "\ufffd\ufffd"


def test_clean_gives_the_parser_text_when_the_fast_strip_cannot_be_used() -> None:
    data = b"a\x1b[1\n2mb\x1b]0;t\x01itle\x07c\x1bPq\x1b\\d"
    assert clean(data) == "a\nbcd"


def test_a_cleaner_fed_in_pieces_cut_anywhere_gives_what_clean_gives() -> None:
    """A slice a loop turn: a sequence or a UTF-8 character cut between two pieces is kept
    by the parser, so every cut of the stream gives clean()'s text of the whole."""
    data = ("é€".encode() + b"a\x1b[1\n2mb\x1b]0;t\x01itle\x07c\x1bPq\x1b\\d\x1b[31mred\x1b[0m"
            b"\r\n\x1b_apc\x1b\\x\xff")
    assert clean_fast(data) is None  # (the parser's path)
    for size in range(1, len(data) + 1):
        cleaner = Cleaner()
        for i in range(0, len(data), size):
            cleaner.feed(data[i:i + size])
        assert cleaner.text() == clean(data), size
    assert clean_fast(b"\x1b[32mok\x1b[0m\r\n") == clean(b"\x1b[32mok\x1b[0m\r\n") == "ok\n"


def test_clean_of_a_range_between_markers_is_the_command_output() -> None:
    stream = b"\x1b]633;C\x07\x1b[32mok\x1b[0m\r\nline 2\r\n\x1b]633;D;0\x07\x1b]633;A\x07$ "
    parser = Parser(text=True)
    events = parser.feed(stream)
    start = next(e for e in events if isinstance(e, OutputStart)).end
    end = next(e for e in events if isinstance(e, CommandFinished)).start
    assert clean(stream[start:end]) == "ok\nline 2\n"


def test_text_collector_gathers_what_clean_gives_for_the_same_range() -> None:
    stream = b"$ \x1b]633;C\x07a\x1b[1mb\xe2\x82" + b"\xac\r\n\x1b[1\n2m\x1b]633;D;0\x07tail"
    parser = Parser(text=True)
    collector = TextCollector()
    output_range = (0, 0)
    for chunk in (stream[:12], stream[12:20], stream[20:]):
        for event in parser.feed(chunk):
            if isinstance(event, OutputStart):
                collector.begin()
                output_range = (event.end, 0)
            elif isinstance(event, CommandFinished):
                text = collector.end()
                output_range = (output_range[0], event.start)
            else:
                collector.add(event)
    assert text == "ab€\n\n" == clean(stream[output_range[0] : output_range[1]])


def test_text_collector_keeps_the_last_characters_within_its_limit() -> None:
    collector = TextCollector(limit=10)
    collector.begin()
    for i in range(100):
        collector.add(Text(i * 3, i * 3 + 3, f"{i:02d}\n"))
    assert collector.end() == "".join(f"{i:02d}\n" for i in range(100))[-10:]
    assert collector.dropped == 300 - 10


def test_layout_turns_crlf_into_lf() -> None:
    assert layout("a\r\nb\r") == "a\nb\r"


def test_unescape_follows_vs_code_and_leaves_stray_backslashes() -> None:
    assert unescape(b"a\\\\b\\x3B\\x3bc\\q\\x4") == "a\\b;;c\\q\\x4"


# ---------------------------------------------------------------------------------------------
# Hostile streams (issue 12, item 10)
# ---------------------------------------------------------------------------------------------


def test_a_window_title_longer_than_the_cap_is_never_text() -> None:
    """A string past the cap is dropped whole, to its terminator, as vte, xterm.js and pyte
    do (_machine.py's policy says how each does it); before, its payload came out as text:
    10.9 MB of a window title in a command's output."""
    title = b"\x1b]0;" + b"t" * (MAX_BUFFER_SIZE * 4) + b"\x07"
    data = b"before\r\n" + title + b"after\r\n"
    assert clean(data) == "before\nafter\n"
    parser = Parser(text=True)
    events = [e for k in range(0, len(data), 4096) for e in parser.feed(data[k : k + 4096])]
    assert [e.kind for e in events] == ["text", "overflow", "text"]
    assert "".join(e.text for e in events if isinstance(e, Text)) == "before\r\nafter\r\n"
    assert events[1].to_wire() == {"kind": "overflow", "start": 8, "end": 8 + 2 + MAX_BUFFER_SIZE,
                                   "what": "osc", "limit": MAX_BUFFER_SIZE}


@pytest.mark.parametrize("end", [b"\x07", b"\x1b\\", b"\x18", b"\x1a"])
def test_a_dropped_osc_ends_at_each_of_its_terminators(end: bytes) -> None:
    data = b"\x1b]2;" + b"t" * 40 + end + b"ok"
    events = Parser(text=True, max_buffer=16).feed(data)
    assert events[0].kind == "overflow"
    # CAN and SUB are executed (text here, dropped by the layout); nothing else is left
    assert layout("".join(e.text for e in events[1:] if isinstance(e, Text))) == "ok"


def test_a_dropped_dcs_is_discarded_to_its_st_but_not_to_a_bel() -> None:
    data = b"\x1bPq" + b"#" * 40 + b"\x07still dcs\x1b\\ok"
    assert clean(data) == "ok"
    events = Parser(text=True, max_buffer=16).feed(data)
    assert [e.kind for e in events] == ["overflow", "text"]


def test_text_collector_on_a_tokens_parser_keeps_tabs_and_line_ends_as_clean_does() -> None:
    stream = (b"$ \x1b]633;C\x07col\t1\r\n\x1b[32mok\x1b[0m\tdone\r\n50%\r100%\x07\r\n"
              b"\x1b]633;D;0\x07$ ")
    for tokens in (False, True):
        parser = Parser(tokens=tokens, text=True)
        collector = TextCollector()
        span = [0, 0]
        for event in parser.feed(stream[:9]) + parser.feed(stream[9:]):
            if isinstance(event, OutputStart):
                collector.begin()
                span[0] = event.end
            elif isinstance(event, CommandFinished):
                text = collector.end()
                span[1] = event.start
            else:
                collector.add(event)
        assert text == clean(stream[span[0] : span[1]]) == "col\t1\nok\tdone\n50%\r100%\n"


def _resume(data: bytes, cut: int, **kw: Any) -> tuple[list[Event], list[Event]]:
    """Events after `cut` from the parser that saw everything, and from a new parser started
    at `cut - buffered_bytes()` (the terminal's parse hop does this when it switches)."""
    first = Parser("N", offset=0, **kw)
    first.feed(data[:cut])
    back = cut - first.buffered_bytes()
    second = Parser("N", offset=back, **kw)
    return first.feed(data[cut:]) + first.flush(), second.feed(data[back:]) + second.flush()


@pytest.mark.parametrize("cut", [1, 2, 30, 71, 72, 73])
def test_a_parser_started_at_offset_minus_buffered_finds_a_held_marker(cut: int) -> None:
    # longer than the 64 bytes kept raw, so the byte machine holds it; before, `buffered`
    # counted its payload only, and a parser started there read `633;E;...` as text
    marker = b"\x1b]633;E;" + b"make\\x20" * 8 + b";N\x1b\\"
    data = b"$ " + marker + b"out"
    rest, again = _resume(data, cut)
    assert again == rest and [e.kind for e in again] == ["command_line"]


@pytest.mark.parametrize("data", [
    b"ab\x1bP1;2$q" + b"d" * 70 + b"\x1b\\z",  # a DCS with its header
    b"ab\x1b[" + b"1;" * 30 + b"1mz",  # a CSI held by the machine
    b"ab\x1b]0;" + b"t" * 70 + b"\x1b[mz",  # an OSC ended by the ESC of the next sequence
    b"ab\x1b_apc" + b"x" * 70 + b"\x1b]633;A;N\x07z",  # an APC ended by a marker
])
def test_every_held_sequence_is_read_again_whole_from_offset_minus_buffered(data: bytes) -> None:
    for cut in range(1, len(data)):
        rest, again = _resume(data, cut, tokens=True, text=True)
        assert merged(again) == merged(rest), cut


# ---------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------


def test_dispatcher_delivers_events_to_the_handlers_of_their_kind_in_order() -> None:
    seen: list[tuple[str, int]] = []
    dispatcher = Dispatcher()
    dispatcher.on("prompt_start", lambda e: seen.append(("first", e.start)))
    dispatcher.on("prompt_start", lambda e: seen.append(("second", e.start)))
    dispatcher.on("cwd", lambda e: seen.append(("cwd", e.start)))
    events = Parser().feed(b"\x1b]633;A\x07\x1b]7;file:///x\x07\x1b]633;B\x07")
    dispatcher.dispatch_all(events)
    assert seen == [("first", 0), ("second", 0), ("cwd", 8)]
    assert dispatcher.dispatch(events[2]) == 0


def test_a_handler_can_unregister_itself_during_a_dispatch() -> None:
    dispatcher = Dispatcher()
    calls: list[str] = []

    def once(event: Event) -> None:
        calls.append("once")
        off()

    off = dispatcher.on("prompt_start", once)
    dispatcher.on("prompt_start", lambda e: calls.append("always"))
    event = PromptStart(0, 8, 633, False, None)
    assert dispatcher.dispatch(event) == 2
    assert dispatcher.dispatch(event) == 1
    assert calls == ["once", "always", "always"]


def test_registering_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="promptstart"):
        Dispatcher().on("promptstart", print)


def test_a_handler_exception_reaches_the_caller() -> None:
    dispatcher = Dispatcher()
    dispatcher.on("csi", lambda e: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        dispatcher.dispatch(Csi(0, 3, (), "", "m", ""))
