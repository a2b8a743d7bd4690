"""The markers-only scan, compiled and in Python, against the semantics it replaced.

The reference is the byte machine with the memo of decoded payloads emptied before every byte:
each sequence goes through `_machine.py` a byte at a time and each payload through the
decoders afresh, as every marker did before the scan and the memo. Every core this process has
(`_scan.SCANNERS`: "python" always, "compiled" when `pip install` could build it) must give
exactly its events: on the conformance vectors, on random streams cut anywhere, and on what a
real bash with our integration prints on a real PTY.
"""

from __future__ import annotations

import gc
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.actors.vtparse import Event, Parser
from moorage.actors.vtparse._machine import MEMO_BYTES
from moorage.actors.vtparse._scan import CORE, SCANNERS, scan_python
from perf.p5_parser import chunks_of, shell_corpus
from tests.interpreter import printed
from tests.test_vtparse_props import cut, stream

VECTORS = json.loads((Path(__file__).parent / "vectors" / "vtparse.json").read_text())["vectors"]
CORES = sorted(SCANNERS)


def reference(data: bytes, nonce: str | None, cap: int = 65536) -> list[Event]:
    parser = Parser(nonce, max_buffer=cap)
    events: list[Event] = []
    for b in data:
        parser._memo.clear()
        events += parser.feed(bytes([b]))
    return events + parser.flush()


def parse(core: str, chunks: list[bytes], nonce: str | None, cap: int = 65536) -> list[Event]:
    parser = Parser(nonce, max_buffer=cap, core=core)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.flush()


def test_this_process_says_which_core_it_runs() -> None:
    assert CORE in SCANNERS and "python" in SCANNERS
    assert Parser().core == CORE and Parser(core="python").core == "python"
    with pytest.raises(ValueError, match="core"):
        Parser(core="fortran")
    if "compiled" not in SCANNERS:
        pytest.skip("the compiled core was not built here (no compiler): Python only")


def test_without_the_compiled_core_a_parser_runs_the_python_one() -> None:
    code = ("from moorage.actors.vtparse import Parser; from moorage.actors.vtparse._scan "
            "import CORE, SCANNERS; p = Parser('N'); "
            "print(CORE, sorted(SCANNERS), p.feed(b'\\x1b]633;A;N\\x07')[0].trusted)")
    assert printed(code, MOORAGE_VTPARSE_CORE="python") == ["python", "['python']", "True"]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_every_core_gives_every_vector_s_events(core: str, vector: dict[str, Any]) -> None:
    spec = vector["parser"]
    chunks = [bytes.fromhex(c["hex"]) if isinstance(c, dict) else c.encode("latin-1")
              for c in vector["chunks"]]
    parser = Parser(spec["nonce"], spec["tokens"], spec["mode"], text=spec["text"],
                    max_buffer=spec.get("max_buffer", 65536), core=core)
    events = [e for c in chunks for e in parser.feed(c)]
    if vector.get("flush"):
        events += parser.flush()
    assert len(events) == len(vector["events"])
    for got, want in zip(events, vector["events"], strict=True):
        assert got.kind == want["kind"] and (got.start, got.end) == (want["start"], want["end"])


@settings(max_examples=300, deadline=None)
@given(data=stream, points=st.lists(st.integers(0, 10_000), max_size=8),
       nonce=st.sampled_from([None, "N0NCE"]), cap=st.sampled_from([16, 40, 65536]))
def test_every_core_gives_the_events_of_the_byte_machine(
    data: bytes, points: list[int], nonce: str | None, cap: int
) -> None:
    want = reference(data, nonce, cap)
    for core in CORES:
        assert parse(core, cut(data, points), nonce, cap) == want, core


@settings(max_examples=300, deadline=None)
@given(data=stream, points=st.lists(st.integers(0, 10_000), max_size=8),
       nonce=st.sampled_from([None, "N0NCE"]))
def test_every_core_holds_the_same_bytes_after_each_chunk(
    data: bytes, points: list[int], nonce: str | None
) -> None:
    """Not only the same events: the same offset, mode and bytes held between chunks (the
    compiled core handed `ESC ESC` to the machine, the Python one passed over it)."""
    parsers = [Parser(nonce, core=core) for core in CORES]
    for chunk in cut(data, points):
        first, *others = [(p.feed(chunk), p.offset, p.mode, p.buffered_bytes())
                          for p in parsers]
        assert all(o == first for o in others), (first, others)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, str]:
    return shell_corpus(400, tmp_path_factory.mktemp("prompts"))


@pytest.mark.parametrize("size", [64 * 1024, 4096, 97])
def test_on_our_bash_integration_s_output_every_core_gives_the_old_events(
    prompts: tuple[bytes, int, str], size: int
) -> None:
    data, markers, nonce = prompts
    want = reference(data, nonce)
    assert len(want) == markers
    assert all(e.trusted for e in want)  # type: ignore[union-attr]
    for core in CORES:
        assert parse(core, chunks_of(data, size), nonce) == want, core


def test_a_payload_decoded_once_is_built_again_with_its_own_offsets() -> None:
    parser = Parser("N")
    first = parser.feed(b"\x1b]633;D;0;N\x07")
    again = parser.feed(b"xx\x1b]633;D;0;N\x07")
    assert [(e.start, e.end) for e in first + again] == [(0, 12), (14, 26)]
    assert first[0].exit_code == again[0].exit_code == 0 and again[0].trusted


def test_the_memo_stays_bounded_whatever_the_payloads() -> None:
    parser = Parser("N")
    for k in range(2000):
        parser.feed(b"\x1b]633;E;cmd%d;N\x07" % k)
    parser.feed(b"\x1b]633;E;" + b"x" * 10_000 + b";N\x07")
    assert 0 < len(parser._memo) <= 256
    assert max(map(len, parser._memo)) <= 256
    # payloads of the most it remembers, each new: bounded by their bytes too
    for k in range(2000):
        parser.feed(b"\x1b]633;E;%s;N\x07" % (b"%05d" % k * 48))
    assert 0 < sum(map(len, parser._memo)) <= MEMO_BYTES


@pytest.mark.parametrize("core", CORES)
def test_a_scanner_refuses_arguments_it_cannot_read(core: str) -> None:
    scan = SCANNERS[core]
    with pytest.raises((TypeError, ValueError)):
        scan("text", 0, 16, 0, {}, [])  # type: ignore[arg-type]
    if core == "compiled":
        with pytest.raises(ValueError):
            scan(b"abc", 5, 16, 0, {}, [])
    assert scan(b"abc", 0, 16, 0, {}, []) == scan_python(b"abc", 0, 16, 0, {}, []) == -1


@dataclass(slots=True)
class _Filled:
    kind: ClassVar[str] = "filled"
    start: int
    end: int
    a: object
    b: object = None


@dataclass(slots=True)
class _PostInit:
    start: int
    end: int
    a: object
    seen: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seen.append(self.a)


@dataclass(slots=True)
class _NotInInit:
    start: int
    end: int
    a: object
    later: object = field(default="unset", init=False)


@dataclass(slots=True)
class _OwnInit:
    start: int
    end: int
    a: object

    def __init__(self, start: int, end: int, a: object) -> None:  # (@dataclass keeps it)
        self.start, self.end, self.a = start, end, ("own", a)


class _Plain:
    def __init__(self, start: int, end: int, a: object) -> None:
        self.span = (start, end, a)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Plain) and other.span == self.span


@pytest.mark.parametrize("core", CORES)
def test_a_scanner_builds_each_event_as_calling_its_class_would(core: str) -> None:
    """The compiled core fills the slots of a plain slotted dataclass without running the
    __init__ @dataclass wrote, and calls any other class (one with a __post_init__, a field
    left out of __init__, an __init__ of its own): the events are what the calls give."""
    payloads = [b"633;A;%d" % k for k in range(6)]
    tag = ["t"]
    args: list[tuple[Any, tuple[Any, ...]]] = [
        (_Filled, ("x", tag)), (_PostInit, ("y", [])), (_NotInInit, ("z",)),
        (_Plain, ("w",)), (_Filled, (None, {"k": 1})), (_OwnInit, ("v",))]
    memo = dict(zip(payloads, args, strict=True))
    data = b"".join(b"ab\x1b]" + p + b"\x07" for p in payloads)
    held = sys.getrefcount(tag)
    out: list[Any] = []
    assert SCANNERS[core](data, 0, 64, 100, memo, out) == -1
    assert out[1].seen == ["y"] and out[2].later == "unset"  # __post_init__ ran; the default
    assert out[5].a == ("own", "v")  # the class body's __init__ ran
    want, at = [], 100
    for p, (cls, a) in zip(payloads, args, strict=True):
        want.append(cls(at + 2, at + 2 + len(p) + 3, *a))
        at += len(p) + 5
    assert out == want
    assert all(gc.is_tracked(e) for e in out)
    del out, want  # (references counted right: nothing freed twice, nothing leaked)
    assert sys.getrefcount(tag) == held


# (the data, what the scan returns: j >= 0 the caller's machine takes the sequence at j,
# n + j the data ends in the clean start of the one at j, -1 nothing left to do)
ENDINGS = [
    (b"ab\x1b", 5),  # a lone ESC: a clean start
    (b"ab\x1b]633;A;N", 13),  # an OSC with no terminator yet
    (b"ab\x1b]", 6),
    (b"ab\x1b]0;" + b"t" * 20, 2),  # ... longer than the cap (16)
    (b"ab\x1b]0;title\x1b", 2),  # ... an ESC that may be ST's, or not
    (b"ab\x1b]0;title\x07", -1),  # a complete quiet OSC
    (b"ab\x1b[1;", 8),  # a CSI so far well-formed
    (b"ab\x1b[?25 ", 10),
    (b"ab\x1b[1m", -1),  # complete: the caller has nothing to hold
    (b"ab\x1b[1$2", 2),  # a CSI with a byte it cannot hold there
    (b"ab\x1b[1\n", 2),
    (b"ab\x1b(", 6),  # an ESC sequence with its intermediate
    (b"ab\x1b(B", -1),
    (b"ab\x1b\\", -1),  # ST alone is a complete ESC sequence
    (b"ab\x1bXsos", 2),  # SOS, PM and APC: the machine's
    (b"ab\x1b_apc", 2),
    (b"ab\x1b]0;t\x07\x1b[1", 19),  # the last sequence after a quiet OSC
    (b"ab\x1b[1\x1b]0;t\x07", -1),  # a cut CSI ended by the next ESC is no one's
    (b"ab\x1bPq", 2),  # a DCS, as before
    (b"ab\x1b\x1b^pm", 2),  # an ESC before a C0 control, ESC itself included: the machine's
    (b"ab\x1b\x1b[1m", 2),
]


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize(("data", "want"), ENDINGS)
def test_a_scanner_says_how_the_chunk_ends(core: str, data: bytes, want: int) -> None:
    assert SCANNERS[core](data, 0, 16, 0, {}, []) == want


@pytest.mark.parametrize("core", CORES)
def test_a_scanner_reads_the_memo_as_it_is_now(core: str) -> None:
    """The compiled core remembers lookups across calls and parsers: a memo changed after a
    lookup (an answer replaced, the memo emptied) is read as it is, and two memos that answer
    the same payload differently are each read as their own."""
    scan = SCANNERS[core]
    data = b"\x1b]633;A;N\x07"
    memo: dict[bytes, Any] = {b"633;A;N": (_Filled, ("x",))}
    other: dict[bytes, Any] = {b"633;A;N": (_Filled, ("y",))}
    for _ in range(3):
        out: list[Any] = []
        assert scan(data, 0, 64, 0, memo, out) == scan(data, 0, 64, 0, other, out) == -1
        assert [e.a for e in out] == ["x", "y"]
    memo[b"633;A;N"] = (_Filled, ("z",))
    out = []
    scan(data, 0, 64, 0, memo, out)
    assert [e.a for e in out] == ["z"]
    memo[b"633;A;N"] = None  # no event
    out = []
    assert scan(data, 0, 64, 0, memo, out) == -1 and out == []
    memo.clear()
    assert scan(data, 0, 64, 0, memo, []) == 0  # not decoded yet: the caller's
    for k in range(300):  # payloads of every length the memo holds, in and out of it
        payload = b"633;E;" + b"c" * k + b";N"
        known = {payload: (_Filled, (k,))} if k % 2 else {}
        osc = b"\x1b]" + payload + b"\x07"
        out = []
        result = scan(osc, 0, 4096, 0, known, out)
        assert (result, [e.a for e in out]) == ((-1, [k]) if k % 2 else (0, []))
