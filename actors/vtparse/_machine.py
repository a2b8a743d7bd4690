"""The DEC ANSI state machine (vt100.net/emu/dec_ansi_parser), byte by byte: the slow path.

`Parser` skips plain text and complete well-formed sequences with `bytes.find` and regular
expressions; whatever those cannot take whole (a sequence cut by the end of a chunk, a C0
control inside a CSI, a DCS, an invalid sequence) comes here, from its ESC until the machine is
back in ground. All state lives in the object, so a sequence split across chunks continues
where it stopped: nothing is re-read, lost or doubled.

States are Williams's (escape, escape intermediate, CSI entry/param/intermediate/ignore, DCS
entry/param/intermediate/passthrough/ignore, OSC string, SOS/PM/APC string) plus one of our
own, STR_ESC: an ESC seen inside a string, waiting for the next byte to tell whether it is the
ST (`ESC \\`) that ends the string or the start of a new sequence.

Policies (each tested in tests/test_vtparse.py):
- 7-bit only, like vte: C1 bytes (0x80-0x9F) are not controls. In text they are UTF-8 (or
  U+FFFD); inside an escape, CSI or DCS header they make the sequence invalid.
- C0 controls inside ESC/CSI sequences are executed where they stand (`ESC [ 1 LF 2 m` is a LF,
  then CSI m [12]); inside a DCS header they are ignored; in DCS passthrough they are data. In
  an OSC string BEL ends it, and the other C0 controls are *kept* in the payload, where
  Williams, vte and xterm.js drop them: VS Code's bash script sends a 633 E command line of
  2000 characters or more with raw newlines, and a multi-line command must keep them. DEL
  (0x7F) is ignored inside ESC, CSI and DCS, and kept in an OSC payload.
- CAN and SUB abort any sequence: nothing is emitted for it (not even a partial OSC), the
  control itself is executed, and the machine is in ground.
- ESC inside a sequence: in ESC/CSI/DCS headers it abandons the sequence (an invalid one) and
  starts a new one. Inside an OSC or DCS string, `ESC \\` is the ST that ends it; an ESC
  followed by anything else also ends the string (it is dispatched, as vte does) and starts a
  new sequence, so `ESC ] 0 ; t ESC ] 633 ; A BEL` loses neither.
- Bounds: 32 parameter values (colon sub-parameters count), each saturated at 65535; 2
  intermediates; one private marker, first. Past those the sequence is invalid.
- An invalid sequence under SKIP_INVALID is consumed up to its final byte (the ignore states)
  and dropped; under RESET_ON_ERROR the machine goes to ground at the offending byte and parses
  that byte again as text. With tokens, an `Invalid` event covers what was dropped.
- OSC and DCS payloads are capped (`cap` bytes). The byte that would go past the cap makes the
  machine drop the sequence and emit `Overflow` at once (the terminator may never come), then
  discard the rest of the string up to its terminator (BEL for an OSC, ST, CAN, SUB, or an ESC
  that starts the next sequence), as an ignore state does; with tokens, an `Invalid` event
  covers the whole dropped string when it ends. So a 10 MB window title is never text. This is
  what the parsers we follow do: xterm.js keeps its OSC_STRING state to the terminator and its
  OscHandler/DcsHandler stop collecting past PAYLOAD_LIMIT and do not dispatch (`_hitLimit`);
  vte (no_std) stops appending to its full `osc_raw` and stays in OscString to the terminator;
  pyte collects an OSC to its terminator with no cap at all. None of them turns the payload
  into text. SOS/PM/APC strings are consumed without being stored (no cap needed).
"""

from __future__ import annotations

import re

from moorage.actors.vtparse._codec import ParamReader
from moorage.actors.vtparse._events import (
    Control,
    Csi,
    Dcs,
    Esc,
    Event,
    Invalid,
    Osc,
    Overflow,
    Param,
    Text,
    fields_after_span,
)
from moorage.actors.vtparse._markers import MARKER_COMMANDS, decode_marker
from moorage.actors.vtparse._scan import MISS, Spec

MEMO_PAYLOAD = 256  # bytes: a longer OSC payload is decoded each time it comes
MEMO_ENTRIES = 256  # payloads remembered per parser, at most ...
# ... and at most this many bytes of them: an entry holds its payload and what it decodes to
# (a command line twice), about 3.5 times its payload's size in all (256 entries of 256 bytes
# were 220 KiB a stream; a shell's markers repeat, and fit many times over)
MEMO_BYTES = 16 * 1024


def osc_command(payload: bytes) -> int | None:
    """An OSC's command number: its leading digits before `;` (at most 9), or None."""
    head = payload.partition(b";")[0]
    return int(head) if 0 < len(head) <= 9 and head.isdigit() else None


# States. GROUND is 0 so `if self._state:` reads "inside a sequence".
GROUND = 0
ESCAPE = 1
ESC_INTER = 2
CSI_ENTRY = 3
CSI_PARAM = 4
CSI_INTER = 5
CSI_IGNORE = 6
DCS_ENTRY = 7
DCS_PARAM = 8
DCS_INTER = 9
DCS_PASS = 10
DCS_IGNORE = 11
OSC_STRING = 12
SOS_STRING = 13  # SOS, PM and APC: consumed, never stored or reported
STR_ESC = 14
ESC_IGNORE = 15  # an escape sequence with too many intermediates, consumed to its final
OSC_IGNORE = 16  # an OSC dropped past the cap, consumed to its terminator

MAX_INTERMEDIATES = 2

_AFTER_ESC = {0x5B: CSI_ENTRY, 0x5D: OSC_STRING, 0x50: DCS_ENTRY, 0x58: SOS_STRING,
              0x5E: SOS_STRING, 0x5F: SOS_STRING}  # fmt: skip
_CSI_IGNORE_STOP = re.compile(rb"[\x00-\x1f\x40-\x7e]")
_ESC_IGNORE_STOP = re.compile(rb"[\x00-\x1f\x30-\x7e]")
_OSC_STOP = re.compile(rb"[\x07\x18\x1a\x1b]")  # also OSC_IGNORE's
_DCS_STOP = re.compile(rb"[\x18\x1a\x1b\x7f]")
_SOS_STOP = re.compile(rb"[\x18\x1a\x1b]")


class Machine:
    """The state of one stream's escape-sequence parse, and the byte-wise transitions.

    `run(data, i)` is entered at an ESC in ground, or at the start of a chunk while inside a
    sequence; it returns the index where the machine is back in ground (a byte there may still
    need parsing as text), or len(data) if the chunk ended inside a sequence.
    """

    def __init__(self, *, tokens: bool, text: bool, cap: int, reset: bool,
                 session: bytes | None) -> None:  # fmt: skip
        self._tokens = tokens
        self._text = text
        self._cap = cap
        self._reset_policy = reset
        self._session = session
        self._out: list[Event] = []
        self._base = 0  # absolute offset of data[0] in the chunk being parsed
        self._errors = 0  # invalid sequences met in the current feed
        self._state = GROUND
        self._params = ParamReader()
        self._memo: dict[bytes, Spec | None] = {}  # payload -> what it emits (_decode)
        self._memo_bytes = 0  # the payloads' bytes in it
        self._clear()

    def _clear(self) -> None:
        """Forget the sequence in progress (Williams's `clear` action, and more)."""
        self._start = 0  # absolute offset of the sequence's ESC
        self._params.clear()
        self._inter = ""
        self._private = ""
        self._buf = bytearray()
        self._why = ""
        self._in_string = GROUND  # the string state an ESC interrupted (STR_ESC)
        self._esc_at = 0  # absolute offset of that ESC
        self._header: tuple[tuple[Param, ...], str, str, str] = ((), "", "", "")

    # -- the loop ------------------------------------------------------------------------------

    def run(self, data: bytes, i: int) -> int:
        n = len(data)
        if not self._state:  # at an ESC in ground
            self._clear()
            self._start = self._base + i
            self._state = ESCAPE
            i += 1
        steps = _STEPS
        while i < n and self._state:
            i = steps[self._state](self, data, i)
        return i

    # -- actions -------------------------------------------------------------------------------

    def _execute(self, i: int, code: int) -> None:
        pos = self._base + i
        if self._tokens:
            self._out.append(Control(pos, pos + 1, code))
        elif self._text:
            self._out.append(Text(pos, pos + 1, chr(code)))

    def _anywhere(self, data: bytes, i: int) -> int:
        """A C0 byte inside an ESC or CSI sequence: CAN/SUB abort, ESC restarts, the rest run."""
        b = data[i]
        if b == 0x1B:
            self._drop(i, "interrupted by ESC")
            self._clear()
            self._start = self._base + i
            self._state = ESCAPE
        elif b == 0x18 or b == 0x1A:
            self._execute(i, b)
            self._state = GROUND
        else:
            self._execute(i, b)
        return i + 1

    def _drop(self, i: int, why: str) -> None:
        """The sequence in progress ends unfinished at i: report it (tokens) as invalid."""
        if self._state in (CSI_IGNORE, DCS_IGNORE, ESC_IGNORE):
            why = self._why  # already counted when it went bad
        else:
            self._errors += 1
        if self._tokens:
            self._out.append(Invalid(self._start, self._base + i, why))

    def _bad(self, i: int, why: str, ignore: int) -> int:
        """Byte i makes the sequence invalid: skip to its end, or reset here (per policy)."""
        self._errors += 1
        if self._reset_policy:
            if self._tokens:
                self._out.append(Invalid(self._start, self._base + i, why))
            self._state = GROUND
            return i  # parsed again, in ground, as text
        self._why = why
        self._state = ignore
        return i + 1

    def osc_done(self, payload: bytes, start: int, end: int, bell: bool) -> None:
        """A complete OSC: the token (if asked for) and the marker (if it is one), decoded
        once per payload (the memo, see _scan.py)."""
        if self._tokens:
            self._out.append(Osc(start, end, osc_command(payload), payload, bell))
        spec = self._memo.get(payload, MISS)
        if spec is MISS:
            spec = self._decode(payload)
        if spec is not None:
            cls, args = spec
            self._out.append(cls(start, end, *args))

    def _decode(self, payload: bytes) -> Spec | None:
        """What a payload's OSC emits: its marker's class and fields, or None; kept in the
        memo when the payload is short (longer ones are decoded each time, so a stream of
        distinct long payloads costs the memo nothing). A full memo is emptied, not sorted:
        the payloads a shell repeats are back in it at their next prompt."""
        spec = None
        command = osc_command(payload)
        if command is not None and command in MARKER_COMMANDS:
            rest = payload.partition(b";")[2]
            event = decode_marker(command, rest, payload, 0, 0, self._session)
            if event is not None:
                spec = (type(event), fields_after_span(event))
        if len(payload) <= MEMO_PAYLOAD:
            if len(self._memo) >= MEMO_ENTRIES or \
                    self._memo_bytes + len(payload) > MEMO_BYTES:
                self._memo.clear()
                self._memo_bytes = 0
            self._memo[payload] = spec
            self._memo_bytes += len(payload)
        return spec

    def _end_string(self, end: int, bell: bool) -> None:
        """The string in progress ended at `end` (exclusive): dispatch it by its kind."""
        kind = self._in_string if self._state == STR_ESC else self._state
        if kind == OSC_STRING:
            self.osc_done(bytes(self._buf), self._start, end, bell)
        elif kind == DCS_PASS:
            if self._tokens:
                params, inter, final, private = self._header
                self._out.append(
                    Dcs(self._start, end, params, inter, final, private, bytes(self._buf))
                )
        elif kind in (DCS_IGNORE, OSC_IGNORE) and self._tokens:
            self._out.append(Invalid(self._start, end, self._why))
        self._buf = bytearray()
        self._state = GROUND

    def _store(self, data: bytes, i: int, k: int) -> int:
        """Append data[i:k] to the string payload; past the cap, drop it: `Overflow`, and the
        rest of the string is discarded in an ignore state (see the module's policy).

        Returns k, or the index of the first byte past the cap (where the ignore state goes
        on)."""
        room = self._cap - len(self._buf)
        if k - i <= room:
            self._buf += data[i:k]
            return k
        cut = i + room
        osc = self._state == OSC_STRING
        what = "osc" if osc else "dcs"
        self._out.append(Overflow(self._start, self._base + cut, what, self._cap))
        self._buf = bytearray()
        self._why = f"{what} longer than {self._cap} bytes"
        self._state = OSC_IGNORE if osc else DCS_IGNORE
        return cut

    # -- one method per state: (data, i) -> next i ----------------------------------------------

    def _escape(self, data: bytes, i: int) -> int:
        b = data[i]
        if b < 0x20:
            return self._anywhere(data, i)
        if b < 0x30:
            self._inter = chr(b)
            self._state = ESC_INTER
            return i + 1
        if b < 0x7F:
            nxt = _AFTER_ESC.get(b)
            if nxt is None:
                self._esc_dispatch(i, b)
            else:
                self._state = nxt
            return i + 1
        if b == 0x7F:
            return i + 1
        # a byte >= 0x80 cannot continue an escape: drop the ESC, the byte is text
        self._drop(i, "byte >= 0x80 in an escape sequence")
        self._state = GROUND
        return i

    def _esc_inter(self, data: bytes, i: int) -> int:
        b = data[i]
        if b < 0x20:
            return self._anywhere(data, i)
        if b < 0x30:
            if len(self._inter) == MAX_INTERMEDIATES:
                return self._bad(i, "more than 2 intermediates", ESC_IGNORE)
            self._inter += chr(b)
            return i + 1
        if b < 0x7F:
            self._esc_dispatch(i, b)
            return i + 1
        if b == 0x7F:
            return i + 1
        self._drop(i, "byte >= 0x80 in an escape sequence")
        self._state = GROUND
        return i

    def _esc_dispatch(self, i: int, b: int) -> None:
        if self._tokens:
            self._out.append(Esc(self._start, self._base + i + 1, self._inter, chr(b)))
        self._state = GROUND

    def _csi(self, data: bytes, i: int) -> int:
        """CSI entry, param and intermediate states (and the DCS header, which differs only in
        ignoring C0 and in what the final byte does)."""
        b = data[i]
        st = self._state
        dcs = st >= DCS_ENTRY
        ignore = DCS_IGNORE if dcs else CSI_IGNORE
        if b < 0x20:
            if dcs and b not in (0x18, 0x1A, 0x1B):
                return i + 1
            return self._anywhere(data, i)
        if b < 0x30:  # intermediate
            if len(self._inter) == MAX_INTERMEDIATES:
                return self._bad(i, "more than 2 intermediates", ignore)
            self._inter += chr(b)
            self._state = DCS_INTER if dcs else CSI_INTER
            return i + 1
        if b < 0x40:  # parameter byte or private marker
            if st in (CSI_INTER, DCS_INTER):
                return self._bad(i, "parameter after intermediate", ignore)
            if b >= 0x3C:
                if st in (CSI_ENTRY, DCS_ENTRY):
                    self._private = chr(b)
                    self._state = DCS_PARAM if dcs else CSI_PARAM
                    return i + 1
                return self._bad(i, "private marker after parameters", ignore)
            nxt = self._params.take(data, i)
            if nxt < 0:
                return self._bad(-1 - nxt, "more than 32 parameters", ignore)
            self._state = DCS_PARAM if dcs else CSI_PARAM
            return nxt
        if b < 0x7F:  # final
            params = self._params.finish()
            if dcs:
                self._header = (params, self._inter, chr(b), self._private)
                self._state = DCS_PASS
            else:
                if self._tokens:
                    end = self._base + i + 1
                    self._out.append(
                        Csi(self._start, end, params, self._inter, chr(b), self._private)
                    )
                self._state = GROUND
            return i + 1
        if b == 0x7F:
            return i + 1
        return self._bad(i, "byte >= 0x80 in a control sequence", ignore)

    def _ignore(self, data: bytes, i: int) -> int:
        """CSI ignore (ends at 0x40-0x7E) and escape ignore (ends at 0x30-0x7E), skipping
        what they ignore a run at a time: 100,000 separators cost one search, not a loop."""
        stop = _CSI_IGNORE_STOP if self._state == CSI_IGNORE else _ESC_IGNORE_STOP
        m = stop.search(data, i)
        if m is None:
            return len(data)
        k = m.start()
        if data[k] < 0x20:
            return self._anywhere(data, k)
        if self._tokens:
            self._out.append(Invalid(self._start, self._base + k + 1, self._why))
        self._state = GROUND
        return k + 1

    def _string(self, data: bytes, i: int) -> int:
        """OSC, DCS passthrough, the ignore states of both, and SOS/PM/APC: a run at a time,
        not a byte."""
        st = self._state
        stop = (_OSC_STOP if st in (OSC_STRING, OSC_IGNORE) else
                _DCS_STOP if st == DCS_PASS else _SOS_STOP)  # fmt: skip
        m = stop.search(data, i)
        k = len(data) if m is None else m.start()
        if k > i and st in (OSC_STRING, DCS_PASS):
            cut = self._store(data, i, k)
            if cut < k:
                return cut
        if m is None:
            return k
        b = data[k]
        if b == 0x1B:
            self._in_string = st
            self._esc_at = self._base + k
            self._state = STR_ESC
        elif b == 0x07:  # only an OSC (kept or ignored) stops at BEL
            self._end_string(self._base + k + 1, True)
        elif b == 0x18 or b == 0x1A:
            self._buf = bytearray()
            self._execute(k, b)
            self._state = GROUND
        # a DEL in a DCS is ignored
        return k + 1

    def _str_esc(self, data: bytes, i: int) -> int:
        if data[i] == 0x5C:  # ESC \ : the string terminator
            self._end_string(self._base + i + 1, False)
            return i + 1
        esc_at = self._esc_at
        self._end_string(esc_at, False)
        self._clear()
        self._start = esc_at
        self._state = ESCAPE
        return i  # this byte follows the ESC


# indexed by state; GROUND never steps (run() returns there)
_STEPS = (
    None,
    Machine._escape,  # ESCAPE
    Machine._esc_inter,  # ESC_INTER
    Machine._csi,  # CSI_ENTRY
    Machine._csi,  # CSI_PARAM
    Machine._csi,  # CSI_INTER
    Machine._ignore,  # CSI_IGNORE
    Machine._csi,  # DCS_ENTRY
    Machine._csi,  # DCS_PARAM
    Machine._csi,  # DCS_INTER
    Machine._string,  # DCS_PASS
    Machine._string,  # DCS_IGNORE
    Machine._string,  # OSC_STRING
    Machine._string,  # SOS_STRING
    Machine._str_esc,  # STR_ESC
    Machine._ignore,  # ESC_IGNORE
    Machine._string,  # OSC_IGNORE
)
