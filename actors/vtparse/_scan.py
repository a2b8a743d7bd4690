"""The markers-only ground loop's inner scan, compiled when it could be built, Python otherwise.

A markers-only parse (the parser actor's, the terminal's) has one thing to find in a chunk:
the OSCs that may carry a marker. Prompt-dense shell-integration output has one every 50
bytes or so, and there the cost of a marker was the cost of the parse: a regular expression to
find it, another to take it whole, a partition, a dict lookup, a handler, an nonce comparison
and the event, about 3 µs each in Python (8.6 to 16 MB/s, against 50-63 MB/s for xterm.js'
whole terminal on the same bytes). Two things remove most of it:

- a memo of decoded payloads per parser (`Machine.osc_done` fills it): a shell repeats the same
  few payloads (`633;A;<nonce>`, `633;D;0;<nonce>`, the same cwd), and decoding is a function
  of the payload and the session's nonce alone, so a payload seen before costs a dict lookup
  and the event's construction. Lookups compare a keyed hash before any byte, so they tell
  nothing about how much of a forged nonce was right (the decoder itself uses
  `hmac.compare_digest`);
- `scan`, which walks the chunk, builds the events of payloads in the memo, skips OSCs that are
  no marker (titles, hyperlinks), and hands everything else back to the caller's full rules.

    scan(data, i, cap, base, memo, out) -> int

Called in ground at data[i], with nothing held. It goes from ESC to ESC. At an `ESC ]` that
ends within `cap` payload bytes with BEL or ST, it looks the payload up in `memo` if its
command is a marker's (7, 133, 633, 1337, as `osc_done` reads it): an entry `(cls, args)` is
appended to `out` as `cls(base + start, base + end, *args)`, an entry None (no event) and any
other command are skipped. It returns the index j of the first ESC the caller must handle with
the machine's rules: a payload not in the memo yet, `ESC P` (a DCS), an ESC followed by a C0
control or DEL (which may hide an OSC), an OSC longer than the cap or ended by CAN, SUB or an
ESC that is not ST, or the chunk's last sequence when the chunk cuts it and it is no clean
start of one (an SOS, PM or APC; a CSI with a byte a CSI cannot hold). It returns n + j, n the
length of the data, when the data ends in the clean start of a sequence at j that the next
chunk may complete: an OSC with no terminator yet (within the cap), a CSI or ESC sequence so
far well-formed, a lone ESC; the caller keeps it whole for the next chunk if it is short, or
hands it to its machine. Or -1 when nothing is left to do: every sequence in the chunk is
complete or taken. Any other sequence (CSI, ESC, SOS/PM/APC) is passed over: it carries no
marker, and an ESC ends it, so the next `ESC ]` starts an OSC whatever came before. (The
cut ends were once found by the caller, with three regular expressions that cost 2.5 µs of a
1 KiB feed's 15 on prompts.)

`scan_python` (regular expressions) and `_cscan.scan` (C, memchr) fulfil it alike; which one a
parser uses is `CORE` unless it asks (`Parser(core=...)`). `pip install .` builds the C one
when a compiler is there and goes on without it when not (an optional extension);
MOORAGE_VTPARSE_CORE=python forces the Python one at import.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any

MISS: Any = object()
"""What `memo.get(payload, MISS)` gives for a payload not decoded yet."""

Spec = tuple[type, tuple[Any, ...]]
"""A memo entry: the event's class and its fields after `start` and `end`."""
Scan = Callable[[bytes, int, int, int, dict[bytes, Spec | None], list[Any]], int]

# A complete OSC, ended by BEL or ST, of at most `cap` payload bytes (the payload a group).
OSC = rb"\x1b\]([^\x07\x18\x1a\x1b]{0,%d})(\x07|\x1b\\)"
# What `scan_python` stops at: `ESC P`, an ESC before a C0 control or DEL, or an `ESC ]` that
# starts a marker's command or an OSC not complete within the cap. The single literal ESC first
# lets the regex engine skip to each ESC at memchr speed and reject a CSI on the next byte.
INTEREST = (
    rb"\x1b(?:[P\x00-\x1f\x7f]|\](?:(?=0*(?:7|133|633|1337)[;\x07\x1b])"
    rb"|(?![^\x07\x18\x1a\x1b]{0,%d}(?:\x07|\x1b\\))))"
)
# How the chunk's last sequence stands when the scan is done: complete (a CSI or ESC sequence,
# valid or not: an invalid one with no control or 8-bit byte in it ends at the same final byte,
# the machine's ignore states; a complete OSC is `OSC`'s), else a clean start the next chunk
# may complete (a CSI, an ESC sequence or an OSC so far, to the end: what the parser's `_cut`
# keeps too), else neither.
COMPLETE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|[ -/]+[0-~]|[0-OQ-WYZ\\`-~])")
CLEAN_START = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|[ -/]*|\][^\x07\x18\x1a\x1b]*)")


@functools.cache
def compiled(pattern: bytes) -> re.Pattern[bytes]:
    """Patterns with the cap in them, compiled once per cap for every parser."""
    return re.compile(pattern)


def scan_python(
    data: bytes, i: int, cap: int, base: int, memo: dict[bytes, Spec | None], out: list[Any]
) -> int:
    """`scan` in Python (see the module's docstring for the contract)."""
    if data.find(b"\x1b", i) < 0:  # plain text: one memchr and out
        return -1
    search = compiled(INTEREST % cap).search
    osc = compiled(OSC % cap).match
    get = memo.get
    m = search(data, i)
    while m is not None:
        j = m.start()
        if data[j + 1] != 0x5D:  # ESC P, or an ESC before a control
            return j
        whole = osc(data, j)
        if whole is None:  # cut by the chunk (a clean start, within the cap), or not an OSC's
            cut = len(data) - j - 2 <= cap and CLEAN_START.fullmatch(data, j) is not None
            return len(data) + j if cut else j
        spec = get(whole.group(1), MISS)
        if spec is MISS:
            return j
        i = whole.end()
        if spec is not None:
            cls, args = spec
            out.append(cls(base + j, base + i, *args))
        m = search(data, i)
    k = data.rfind(b"\x1b", i)
    if k < 0 or COMPLETE.match(data, k) is not None or osc(data, k) is not None:
        return -1
    return len(data) + k if CLEAN_START.fullmatch(data, k) is not None else k


def _load() -> dict[str, Scan]:
    scanners: dict[str, Scan] = {"python": scan_python}
    if os.environ.get("MOORAGE_VTPARSE_CORE") != "python":
        try:
            from moorage.actors.vtparse._cscan import scan as scan_compiled
        except ImportError:
            pass
        else:
            scanners["compiled"] = scan_compiled
    return scanners


def _load_inert() -> Callable[[bytes], bool] | None:
    """The compiled `inert` (_parser.py's `inert_python` is the reference), where built."""
    if os.environ.get("MOORAGE_VTPARSE_CORE") == "python":
        return None
    try:
        from moorage.actors.vtparse._cscan import inert
    except ImportError:
        return None
    return inert  # type: ignore[no-any-return]


INERT_COMPILED = _load_inert()
SCANNERS: dict[str, Scan] = _load()
"""The scanners this process has: always "python", "compiled" when it was built."""
CORE: str = "compiled" if "compiled" in SCANNERS else "python"
"""The scanner a parser uses unless it asks for another: what `sys.info` reports."""
