"""actors.vtparse under hypothesis: cut anywhere, fed any bytes, the parser says the same thing.

Inputs are built from pieces that reach every state (well-formed and broken CSI, ESC, OSC
markers, DCS, APC, text, cut UTF-8, stray controls) as well as raw random bytes, and parsed
under every configuration, with small buffer caps so the overflow path is taken too.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.actors.vtparse import (
    MAX_HEADER,
    Event,
    Parser,
    RecoveryMode,
    Text,
    TextCollector,
    clean,
    inert,
    layout,
    unescape,
)
from moorage.actors.vtparse._parser import inert_python
from moorage.actors.vtparse._scan import INERT_COMPILED

SETTINGS = settings(max_examples=200, deadline=None)
NONCE = "N0NCE"

_digits = st.text("0123456789", max_size=7)
_few, _many = st.lists(_digits, max_size=4), st.lists(_digits, min_size=30, max_size=34)
_params = st.one_of(_few, _many).map(";".join)
_noise = st.sampled_from(["", "\n", "\x7f", "\x9b", "\x18", "\x1a", "\x1b", "?", ":", " ", "\x07"])


def _b(s: str) -> bytes:
    return s.encode("latin-1")


@st.composite
def csi(draw: st.DrawFn) -> bytes:
    private = draw(st.sampled_from(["", "?", ">", "<", "="]))
    params = draw(_params)
    if draw(st.booleans()):
        params = params.replace(";", ":", draw(st.integers(0, 3)))
    inter = draw(st.sampled_from(["", "", "", " ", "$", '!"', ' !"', "!"]))
    final = draw(st.sampled_from("m@HJKhlsu~`p"))
    body = private + params + inter
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(_noise) + body[at:]
    return _b("\x1b[" + body + final)


@st.composite
def esc(draw: st.DrawFn) -> bytes:
    inter = draw(st.text(' !"#()*+-./', max_size=3))
    final = draw(st.sampled_from("0789=>BDEHMNOZ\\c~\x7f\x80"))
    return _b("\x1b" + inter + final)


_fields = st.lists(
    st.one_of(
        st.sampled_from(["", "0", "130", "-1", "x", NONCE, "k=s", "aid=1", "Cwd=/tmp/a\\x3bb"]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=6),
    ),
    max_size=3,
)


@st.composite
def osc(draw: st.DrawFn) -> bytes:
    head = draw(st.sampled_from([
        "633;A", "633;B", "633;C", "633;D", "633;E", "633;P", "633;F", "133;A", "133;B",
        "133;C", "133;D", "133;L", "7;file://h/a%20b", "7;/x", "1337;CurrentDir=/srv",
        "1337;SetMark", "0;title", "8;;http://x", "x", "",
    ]))  # fmt: skip
    fields = draw(_fields)
    payload = ";".join([head, *fields]).encode("utf-8")
    if draw(st.integers(0, 3)) == 0:
        payload += b"p" * draw(st.integers(0, 80))  # around the small caps
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(payload)))
        payload = payload[:at] + _b(draw(_noise)) + payload[at:]
    end = draw(st.sampled_from(["\x07", "\x1b\\", "\x1b\\", "", "\x18", "\x1b[m", "\x1bx"]))
    # DEL and C0 controls between ESC and `]` are ignored or executed: still an OSC
    opener = draw(st.sampled_from(["\x1b]"] * 6 + ["\x1b\x7f]", "\x1b\n]", "\x1b\x00\x7f]"]))
    return _b(opener) + payload + _b(end)


@st.composite
def dcs_or_apc(draw: st.DrawFn) -> bytes:
    opener = draw(st.sampled_from(["P", "P1;2$", "P?1|", "_", "^", "X", "P1 ! q"]))
    data = draw(st.binary(max_size=40)).replace(b"\x1b", b"")
    end = draw(st.sampled_from(["\x1b\\", "", "\x18", "\x1b[1m"]))
    return _b("\x1b" + opener) + data + _b(end)


_utf8 = st.text(max_size=8).map(lambda s: s.encode("utf-8"))
_ascii = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).map(_b)
_controls = st.sampled_from([b"\n", b"\r\n", b"\t", b"\x07", b"\x08", b"\x00", b"\x18", b"\x1b"])
_cut_utf8 = st.sampled_from([b"\xe2\x82", b"\xf0\x9f", b"\xc3", b"\xff", b"\x80", b"\xed\xa0"])

piece = st.one_of(
    csi(), esc(), osc(), dcs_or_apc(), _utf8, _ascii, _controls, _cut_utf8, st.binary(max_size=8)
)
stream = st.lists(piece, max_size=25).map(b"".join)

config = st.fixed_dictionaries(
    {
        "nonce": st.sampled_from([None, NONCE]),
        "tokens": st.booleans(),
        "mode": st.sampled_from(
            [RecoveryMode.SKIP_INVALID, RecoveryMode.RESET_ON_ERROR, RecoveryMode.BUFFER_PARTIAL]
        ),
        "text": st.booleans(),
        "max_buffer": st.sampled_from([16, 40, 65536]),
    }
)


def make(cfg: dict) -> Parser:
    return Parser(
        cfg["nonce"], cfg["tokens"], cfg["mode"], text=cfg["text"], max_buffer=cfg["max_buffer"]
    )


def merged(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        last = out[-1] if out else None
        if isinstance(e, Text) and isinstance(last, Text) and last.end == e.start:
            out[-1] = Text(last.start, e.end, last.text + e.text)
        else:
            out.append(e)
    return out


def parse(cfg: dict, chunks: list[bytes]) -> list[Event]:
    parser = make(cfg)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
        assert parser.buffered_bytes() <= cfg["max_buffer"] + MAX_HEADER
        assert len(parser._buf) <= cfg["max_buffer"]
    return events + parser.flush()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@SETTINGS
@given(data=stream, points=st.lists(st.integers(0, 10_000), max_size=8), cfg=config)
def test_a_stream_cut_anywhere_gives_the_same_events_as_whole(
    data: bytes, points: list[int], cfg: dict
) -> None:
    assert merged(parse(cfg, cut(data, points))) == merged(parse(cfg, [data]))


@SETTINGS
@given(data=stream, cfg=config)
def test_byte_by_byte_through_the_machine_equals_the_fast_paths(data: bytes, cfg: dict) -> None:
    assert merged(parse(cfg, [bytes([b]) for b in data])) == merged(parse(cfg, [data]))


@SETTINGS
@given(data=st.binary(max_size=300), points=st.lists(st.integers(0, 400), max_size=6), cfg=config)
def test_random_bytes_never_raise_and_stay_under_the_cap(
    data: bytes, points: list[int], cfg: dict
) -> None:
    assert merged(parse(cfg, cut(data, points))) == merged(parse(cfg, [data]))


@SETTINGS
@given(data=stream, cfg=config)
def test_events_lie_inside_the_stream_in_the_order_they_end(data: bytes, cfg: dict) -> None:
    events = parse(cfg, [data])
    ends = [e.end for e in events]
    assert ends == sorted(ends)
    assert all(0 <= e.start <= e.end <= len(data) for e in events)


MARKER_KINDS = {
    "prompt_start", "prompt_end", "output_start", "command_finished", "command_line",
    "property", "cwd", "mark", "rejected", "overflow",
}  # fmt: skip


@SETTINGS
@given(data=stream, cfg=config)
def test_markers_do_not_depend_on_asking_for_tokens_or_text(data: bytes, cfg: dict) -> None:
    plain = parse(cfg | {"tokens": False, "text": False}, [data])
    full = parse(cfg | {"tokens": True, "text": True}, [data])
    assert plain == [e for e in full if e.kind in MARKER_KINDS]


@SETTINGS
@given(data=stream, points=st.lists(st.integers(0, 10_000), max_size=8), cfg=config)
def test_the_mode_after_each_feed_does_not_depend_on_asking_for_tokens(
    data: bytes, points: list[int], cfg: dict
) -> None:
    def modes(tokens: bool) -> list[tuple[RecoveryMode, int]]:
        parser = make(cfg | {"tokens": tokens, "text": False})
        seen = []
        for chunk in cut(data, points):
            parser.feed(chunk)
            seen.append((parser.mode, parser.offset))
        return seen

    assert modes(False) == modes(True)


@SETTINGS
@given(data=stream)
def test_clean_equals_the_parser_text_with_the_layout_applied(data: bytes) -> None:
    events = parse({"nonce": None, "tokens": False, "mode": RecoveryMode.SKIP_INVALID,
                    "text": True, "max_buffer": 65536}, [data])  # fmt: skip
    assert clean(data) == layout("".join(e.text for e in events if isinstance(e, Text)))


@SETTINGS
@given(data=stream, tokens=st.booleans())
def test_a_text_collector_gathers_what_clean_gives_with_or_without_tokens(
    data: bytes, tokens: bool
) -> None:
    parser = Parser(tokens=tokens, text=True)
    collector = TextCollector()
    collector.begin()
    for event in parser.feed(data) + parser.flush():
        collector.add(event)
    assert collector.end() == clean(data)


@SETTINGS
@given(data=stream, cut_at=st.integers(0, 10_000), cfg=config)
def test_a_parser_started_at_offset_minus_buffered_reports_what_is_left(
    data: bytes, cut_at: int, cfg: dict
) -> None:
    """What the terminal's parse hop relies on when it moves a stream to another parser. The
    new parser reads the held sequence again from its ESC, so what the old one reported from
    inside it (an overflow, a control executed in a CSI) comes again, with the same offsets
    (which is how a consumer recognises it); then the two agree."""
    cut_at %= len(data) + 1
    first = make(cfg)
    before = first.feed(data[:cut_at])
    held = first.buffered_bytes()
    back = cut_at - held
    rest = first.feed(data[cut_at:])
    second = Parser(cfg["nonce"], cfg["tokens"], cfg["mode"], text=cfg["text"],
                    max_buffer=cfg["max_buffer"], offset=back)  # fmt: skip
    again = second.feed(data[back:])
    if held or first_in_ground(cfg, data[:cut_at]):
        assert merged(again) == merged([e for e in before if e.start >= back] + rest)
        assert second.flush() == first.flush()
    else:  # begun too far back to be counted: it carries no marker
        assert [e for e in again if e.kind in MARKER_KINDS] == [
            e for e in rest if e.kind in MARKER_KINDS]  # fmt: skip


def first_in_ground(cfg: dict, data: bytes) -> bool:
    parser = make(cfg)
    parser.feed(data)
    return parser.mode is not RecoveryMode.BUFFER_PARTIAL


@SETTINGS
@given(
    data=st.binary(max_size=200).map(lambda b: b.replace(b"\x1b", b"")),
    points=st.lists(st.integers(0, 300), max_size=8),
)
def test_text_cut_anywhere_decodes_as_the_whole_does(data: bytes, points: list[int]) -> None:
    cfg = {"nonce": None, "tokens": False, "mode": RecoveryMode.SKIP_INVALID, "text": True,
           "max_buffer": 16}  # fmt: skip
    text = "".join(e.text for e in parse(cfg, cut(data, points)) if isinstance(e, Text))
    assert text == data.decode("utf-8", "replace")


def _vscode_escape(value: str) -> bytes:
    """VS Code's encoder: backslash doubled; `;` and bytes <= 0x20 as \\xAB."""
    return re.sub(
        rb"[\\;\x00-\x20]",
        lambda m: b"\\\\" if m.group() == b"\\" else b"\\x%02x" % m.group()[0],
        value.encode("utf-8"),
    )


@SETTINGS
@given(command=st.text(max_size=40))
def test_a_command_line_escaped_as_vs_code_does_comes_back_exactly(command: str) -> None:
    assert unescape(_vscode_escape(command)) == command
    (event,) = Parser(NONCE).feed(b"\x1b]633;E;" + _vscode_escape(command) + b";N0NCE\x07")
    assert event.to_wire()["command"] == command
    assert event.to_wire()["trusted"] is True


# What coloured output is made of: text, controls, CSI and ESC sequences, some malformed or cut
coloured = st.lists(st.one_of(csi(), esc(), _utf8, _ascii, _controls, _cut_utf8),
                    max_size=25).map(b"".join)


@SETTINGS
@given(data=st.one_of(coloured, stream), points=st.lists(st.integers(0, 10_000), max_size=4),
       mode=st.sampled_from([RecoveryMode.SKIP_INVALID, RecoveryMode.RESET_ON_ERROR]))
def test_inert_bytes_leave_a_markers_parser_as_skipping_them_does(
        data: bytes, points: list[int], mode: RecoveryMode) -> None:
    """`inert` (both cores agree) only where feeding the bytes, cut anywhere, gives no event
    and leaves the parser as `skip` of as many bytes does: in ground, holding nothing, its
    mode the same, the next marker read the same."""
    verdict = inert_python(data)
    if INERT_COMPILED is not None:
        assert INERT_COMPILED(data) == verdict
    if not verdict:
        return
    fed, skipped = Parser(NONCE, mode=mode), Parser(NONCE, mode=mode)
    assert [e for chunk in cut(data, points) for e in fed.feed(chunk)] == []
    assert skipped.skip(len(data))
    assert (fed.offset, fed.buffered_bytes(), fed.mode) == (
        skipped.offset, skipped.buffered_bytes(), skipped.mode)
    marker = b"\x1b]633;D;0;N0NCE\x07"
    assert fed.feed(marker) == skipped.feed(marker) and fed.mode is skipped.mode


def test_coloured_output_is_inert_and_what_may_hold_a_marker_is_not() -> None:
    sgr = b"\x1b[1;31merror\x1b[0m: \x1b[38;5;208mwarning\x1b[m \x1b(B\x1b[?25h\x1b[2K\r\n"
    assert inert(sgr * 100) and inert(b"") and inert(b"no escape at all")
    for not_inert in (b"\x1b]0;title\x07", b"\x1b]633;A;N0NCE\x07", b"\x1bPq#0\x1b\\",
                      b"\x1bXsos\x1b\\", b"\x1b_apc\x1b\\", b"\x1b^pm\x1b\\", b"x\x1b[1;3",
                      b"x\x1b", b"\x1b\x07]633;A\x07", b"\x1b[1?h", b"\x1b[" + b"1;" * 40 + b"m"):
        assert not inert(sgr + not_inert) and not inert_python(sgr + not_inert), not_inert
