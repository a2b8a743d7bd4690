"""`Parser`: one stream's incremental parse, with the fast paths in front of the state machine.

Text is never walked byte by byte: `bytes.find` (memchr) and compiled regular expressions take
text and whole well-formed sequences; only what they refuse goes to the byte machine
(`_machine.py`). One ground loop per kind of output, so none does work it does not need:

- markers only, invalid sequences skipped (the parser actor's case): `_scan.scan` jumps from
  one OSC that may carry a marker to the next, builds the events of payloads decoded before
  and skips titles and hyperlinks, compiled or in Python (`core`); what it cannot take goes
  to the rules here. SGR-heavy output costs one call per chunk, prompts one event each.
- markers only under RESET_ON_ERROR: stops at every ESC that does not start a well-formed
  sequence, so every reset is seen and reported.
- text (`text=True`): stops at every sequence to report the text before it.
- tokens (`tokens=True`): stops at every C0 control and every sequence.

A short sequence cut by the end of a chunk is kept raw and parsed whole with the next chunk
(`_cut`); a longer or odd one is held by the machine. Either way it is held, not lost.
The regexes accept exactly what the machine dispatches as valid, so the events do not depend
on which path took a sequence: the property tests feed every input whole, cut anywhere and
byte by byte (all through the machine), and compare.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from moorage.actors.vtparse._codec import parse_params, utf8_hold
from moorage.actors.vtparse._events import Control, Csi, Esc, Event, Invalid, Text
from moorage.actors.vtparse._machine import GROUND, STR_ESC, Machine
from moorage.actors.vtparse._recovery import (
    _RAW,
    MAX_BUFFER_SIZE,
    MAX_HEADER,
    RecoveryMode,
    next_mode,
)
from moorage.actors.vtparse._scan import (
    CLEAN_START,
    CORE,
    INERT_COMPILED,
    OSC,
    SCANNERS,
    compiled,
)

# Well-formed sequences, exactly as the machine accepts them: CSI with one optional private
# marker first, at most 32 values, at most 2 intermediates; ESC with at most 2 intermediates,
# and without one, a final that does not open a CSI, OSC, DCS, SOS, PM or APC. Bodies are
# written without their leading ESC so the patterns below can share them.
_CSI_BODY = rb"\[[<-?]?(?:[0-9]*[;:]){0,31}[0-9]*[ -/]{0,2}[@-~]"
_ESC_BODY = rb"(?:[ -/]{1,2}[0-~]|[0-OQ-WYZ\\`-~])"

_NONCE_RE = re.compile(r"[^;\x00-\x20\x7f]+")
_CSI_RE = re.compile(rb"\x1b\[([<-?]?)((?:[0-9]*[;:]){0,31}[0-9]*)([ -/]{0,2})([@-~])")
_ESC_RE = re.compile(rb"\x1b(?:([ -/]{1,2})([0-~])|([0-OQ-WYZ\\`-~]))")
_SIMPLE_RE = re.compile(rb"\x1b(?:" + _CSI_BODY + b"|" + _ESC_BODY + b")")
# Plain text and well-formed sequences only, to the end (possessive: linear on any input).
_INERT_RE = re.compile(rb"(?:[^\x1b]++|\x1b(?:" + _CSI_BODY + b"|" + _ESC_BODY + b"))*+")
_C0_RE = re.compile(rb"[\x00-\x1f]")
# A complete OSC, ended by BEL or ST, whose command is not a marker's (7, 133, 633, 1337;
# a leading zero still makes a number), and which fits the cap: without tokens it emits
# nothing, so the markers loop skips it too (titles, hyperlinks).
_OSC_QUIET = rb"\](?!0*(?:7|133|633|1337)[;\x07\x1b])[^\x07\x18\x1a\x1b]{0,%d}(?:\x07|\x1b\\)"
# What the strict loop must look at: an ESC that starts neither a well-formed sequence nor a
# quiet OSC.
_STOP = rb"\x1b(?!" + b"|".join((_CSI_BODY, _ESC_BODY, _OSC_QUIET)) + b")"


def inert_python(data: bytes) -> bool:
    """`inert` in Python: the reference for the compiled one (_cscan.c)."""
    return b"\x1b" not in data or _INERT_RE.fullmatch(data) is not None


inert: Callable[[bytes], bool] = INERT_COMPILED or inert_python
"""Are `data` bytes a markers-only parser takes without a trace, under any policy: plain text
and well-formed CSI and ESC sequences, each whole (no OSC, DCS, SOS, PM or APC, no sequence
cut by the end, none the machine would count an error)? Fed to one in ground holding nothing,
they give no event and leave it so, so `Parser.skip` may stand in for feeding them: coloured
output (a build's, `ls`'s) goes to the parser actor as a count, as plain output does. In C
where built (1.5 GB/s on coloured text; the regular expression here 46 MB/s)."""


class Parser(Machine):
    """An incremental parser for one terminal byte stream.

    `feed(chunk)` returns the events the chunk completes, with absolute stream offsets; a
    sequence or UTF-8 character cut by the chunk's end is held (at most `max_buffer` bytes)
    and completed by the next chunk. `feed` never raises on any bytes.

    nonce       the session's nonce: markers that carry it are `trusted`. None trusts nothing.
    tokens      also emit C0 controls, ESC, CSI, OSC, DCS and invalid sequences as events.
    mode        the recovery policy (`RecoveryMode`); see `mode` for what reading it gives.
    text        also emit the text between sequences as `Text` events.
    max_buffer  cap on an OSC or DCS payload, the only thing held that can grow; a longer one
                is dropped with an `Overflow` and discarded to its terminator.
    offset      absolute offset of the first byte that will be fed.
    core        the markers-only scan: "compiled" or "python" (`_scan.SCANNERS`); None, the
                best this process has (`_scan.CORE`). Both give the same events.
    """

    def __init__(
        self,
        nonce: str | None = None,
        tokens: bool = False,
        mode: RecoveryMode = RecoveryMode.SKIP_INVALID,
        *,
        text: bool = False,
        max_buffer: int = MAX_BUFFER_SIZE,
        offset: int = 0,
        core: str | None = None,
    ) -> None:
        if max_buffer < 16:
            raise ValueError(f"max_buffer must be at least 16 bytes, not {max_buffer}")
        if nonce is not None and not _NONCE_RE.fullmatch(nonce):
            # an empty nonce would trust `633;A;`, and one with `;` or a control could never
            # be matched as a field: both are configuration errors, not something to parse
            raise ValueError(f"a nonce is one or more printable characters but ';': {nonce!r}")
        self._policy = RecoveryMode(mode)
        self._mode = next_mode(self._policy, partial=False, reset=False)
        self._nonce = nonce
        session = None if nonce is None else nonce.encode()
        super().__init__(
            tokens=tokens,
            text=text,
            cap=max_buffer,
            reset=self._policy is RecoveryMode.RESET_ON_ERROR,
            session=session,
        )
        self._pos = offset
        self._pending = b""  # the start of a UTF-8 character cut by the last chunk's end
        self._carry = b""  # a short sequence cut by the last chunk's end (see _cut)
        self._carry_max = min(64, max_buffer)
        self._osc = compiled(OSC % max_buffer)
        self._stop = compiled(_STOP % max_buffer)
        core = CORE if core is None else core
        if core not in SCANNERS:
            raise ValueError(f"core must be one of {sorted(SCANNERS)}, not {core!r}")
        self._core = core
        self._scan_osc = SCANNERS[core]
        self._configure()

    def _configure(self) -> None:
        """Pick the ground loop for what is asked and the policy in force."""
        if self._tokens:
            self._scan = self._scan_tokens
        elif self._text:
            self._scan = self._scan_text
        elif self._reset_policy:
            self._scan = self._scan_markers
        else:
            self._scan = self._scan_quiet

    # -- public --------------------------------------------------------------------------------

    @property
    def nonce(self) -> str | None:
        return self._nonce

    @property
    def core(self) -> str:
        """Which markers-only scan this parser runs: "compiled" or "python"."""
        return self._core

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte to be fed."""
        return self._pos

    @property
    def policy(self) -> RecoveryMode:
        """The recovery policy in force (what `mode=` or the last assignment to `mode` set)."""
        return self._policy

    @property
    def mode(self) -> RecoveryMode:
        """The seed's recovery mode after the last feed: BUFFER_PARTIAL while a sequence is
        held, RESET_ON_ERROR after a reset on an invalid sequence, RAW_PASSTHROUGH when not
        parsing, SKIP_INVALID otherwise (see `next_mode`). Assigning it sets the policy; a
        switch to or from RAW_PASSTHROUGH drops whatever was held."""
        return self._mode

    @mode.setter
    def mode(self, value: RecoveryMode) -> None:
        value = RecoveryMode(value)
        raw = RecoveryMode.RAW_PASSTHROUGH
        if (value is raw) != (self._policy is raw):
            self.reset()
        self._policy = value
        self._reset_policy = value is RecoveryMode.RESET_ON_ERROR
        self._configure()
        self._mode = next_mode(value, partial=self._held_any(), reset=False)

    def buffered_bytes(self) -> int:
        """How far before `offset` a new parser must start to reach the same point: a parser
        started `offset - buffered_bytes()`, in ground, and fed the same bytes from there,
        reports what this one has still to report. That is the sequence in progress counted
        from its ESC (its introducer and header, not only the payload held: a parser started
        after the `ESC ]` of a cut marker would miss the marker), a cut sequence kept raw, or
        a cut UTF-8 character.

        At most `max_buffer + MAX_HEADER`. A sequence in progress that began further back
        than that cannot be read again within the bound: only a string already dropped past
        the cap, an SOS/PM/APC string or a header of thousands of parameter digits can, and
        none of them can carry a marker, so 0 (start at `offset`) loses no marker; with text
        or tokens, the new parser takes the rest of that one sequence as text. An ESC that
        may end it and start the next sequence is always counted.
        """
        if self._carry:
            return len(self._carry)
        if self._pending:
            return len(self._pending)
        if not self._state:
            return 0
        span = self._pos - self._start
        if span <= self._cap + MAX_HEADER:
            return span
        if self._state == STR_ESC:
            return self._pos - self._esc_at
        return 0

    def feed(self, data: bytes) -> list[Event]:
        """Parse the next chunk of the stream; the events it completes, in stream order."""
        n = len(data)
        if self._policy is _RAW:
            self._pos += n
            return []
        if not isinstance(data, bytes):
            data = bytes(data)
        out: list[Event] = []
        self._out = out
        self._base = self._pos
        self._errors = 0
        if self._carry:
            # the cut sequence the last chunk kept, now parsed whole by the fast paths
            self._base -= len(self._carry)
            data = self._carry + data
            self._carry = b""
        i = self.run(data, 0) if self._state else 0
        if not self._state and (i < len(data) or self._pending):
            self._scan(data, i)
        self._pos += n
        self._mode = next_mode(
            self._policy, partial=self._held_any(), reset=self._reset_policy and self._errors > 0
        )
        return out

    def skip(self, n: int) -> bool:
        """Take the stream's next `n` bytes as fed without reading them, where the caller
        knows they are `inert` (plain text and whole, well-formed CSI and ESC sequences).
        Markers only (no text, no tokens), in ground with nothing held, such bytes complete
        nothing and change nothing (every marker starts with an OSC or DCS, and a
        well-formed sequence is no error under any policy), so only the offset moves: a
        terminal whose output is plain or coloured text need not send it to be parsed.
        False, and nothing taken, where that does not hold: the caller feeds the bytes."""
        if n < 0:
            raise ValueError(f"a count of bytes, not {n}")
        if self._policy is not _RAW and (
                self._tokens or self._text or self._held_any()):
            return False
        self._pos += n
        self._errors = 0
        self._mode = next_mode(self._policy, partial=False, reset=False)
        return True

    def flush(self) -> list[Event]:
        """End of stream: a held UTF-8 fragment becomes U+FFFD text, a held sequence is
        dropped (an `Invalid` event with tokens), and the parser is back in ground."""
        out: list[Event] = []
        if self._pending and self._text:
            fragment = self._pending.decode("utf-8", "replace")
            out.append(Text(self._pos - len(self._pending), self._pos, fragment))
        if self._tokens and (self._state or self._carry):
            start = self._pos - len(self._carry) if self._carry else self._start
            out.append(Invalid(start, self._pos, "truncated by the end of the stream"))
        self.reset()
        self._mode = next_mode(self._policy, partial=False, reset=False)
        return out

    def reset(self) -> None:
        """Drop whatever is held and go back to ground; the offset is unchanged."""
        self._state = GROUND
        self._clear()
        self._pending = b""
        self._carry = b""

    def _held_any(self) -> bool:
        return bool(self._state or self._pending or self._carry)

    def _cut(self, data: bytes, j: int) -> bool:
        """Keep the sequence at j for the next chunk if the chunk cuts it short and it is a
        plain prefix of one the fast paths take whole (a CSI, an ESC sequence, an OSC) of at
        most 64 bytes: the next feed parses it whole at regex speed, where the byte machine
        would step through it twice (measured: a cut CSI cost 7 µs, a fifth of the time of a
        1 KiB feed of dense escapes). Anything else is the machine's to hold."""
        if len(data) - j > self._carry_max or CLEAN_START.fullmatch(data, j) is None:
            return False
        self._carry = data[j:]
        return True

    # -- the ground loops ----------------------------------------------------------------------

    def _scan_quiet(self, data: bytes, i: int) -> None:
        """Markers only, invalid sequences skipped: only OSC and DCS can emit anything.

        Every `ESC ]` in a stream starts an OSC and every `ESC P` a DCS, whatever the state
        before (an ESC ends or restarts any sequence), and nothing else emits an event here.
        So `_scan.scan` goes from one to the next, and what it hands back is taken here as
        everywhere: a complete OSC by `osc_done` (which decodes it and fills the memo), the
        rest by the machine (a DCS may overflow; an ESC before a control may hide an OSC).
        Last, a sequence the chunk cuts is held (kept raw when the scan says it is a clean
        start, as `_cut` would, or by the machine), so `mode` says BUFFER_PARTIAL and the next
        chunk completes it.
        """
        scan = self._scan_osc
        osc = self._osc.match
        base = self._base
        cap = self._cap
        memo = self._memo
        out = self._out
        n = len(data)
        while True:
            j = scan(data, i, cap, base, memo, out)
            if j < 0:
                return
            if j >= n:  # the chunk ends in the clean start of the sequence at j - n
                j -= n
                if n - j <= self._carry_max:
                    self._carry = data[j:]
                    return
            elif data[j + 1] == 0x5D:  # `ESC ]` (a lone ESC at the end is a clean start)
                m = osc(data, j)
                if m is not None:
                    i = m.end()
                    self.osc_done(m.group(1), base + j, base + i, m.group(2) == b"\x07")
                    continue
            i = self.run(data, j)
            if self._state:
                return

    def _scan_markers(self, data: bytes, i: int) -> None:
        """Markers only under RESET_ON_ERROR: every invalid sequence must reach the machine
        (its reset is reported), so this stops at any ESC that is not well-formed."""
        find = data.find
        stop = self._stop.search
        osc = self._osc.match
        base = self._base
        while True:
            j = find(b"\x1b", i)
            if j < 0:
                return
            m = stop(data, j)
            if m is None:
                return
            j = m.start()
            if data[j + 1 : j + 2] == b"]":
                m = osc(data, j)
                if m is not None:
                    i = m.end()
                    self.osc_done(m.group(1), base + j, base + i, m.group(2) == b"\x07")
                    continue
            if self._cut(data, j):
                return
            i = self.run(data, j)
            if self._state:
                return

    def _scan_text(self, data: bytes, i: int) -> None:
        out = self._out
        base = self._base
        find = data.find
        simple = _SIMPLE_RE.match
        osc = self._osc.match
        pending = self._pending
        self._pending = b""
        while True:
            j = find(b"\x1b", i)
            if j < 0:
                break
            if j > i or pending:
                run = pending + data[i:j] if pending else data[i:j]
                out.append(Text(base + i - len(pending), base + j, run.decode("utf-8", "replace")))
                pending = b""
            m = simple(data, j)
            if m is not None:
                i = m.end()
                continue
            if data[j + 1 : j + 2] == b"]":
                m = osc(data, j)
                if m is not None:
                    i = m.end()
                    self.osc_done(m.group(1), base + j, base + i, m.group(2) == b"\x07")
                    continue
            if self._cut(data, j):
                return
            i = self.run(data, j)
            if self._state:
                return
        self._tail(data, i, pending)

    def _tail(self, data: bytes, i: int, pending: bytes) -> None:
        """The text at the end of the chunk, less a cut UTF-8 character, which is held."""
        run = pending + data[i:] if pending else data[i:]
        keep = utf8_hold(run)
        if keep:
            start = self._base + i - len(pending)
            self._out.append(Text(start, start + keep, run[:keep].decode("utf-8", "replace")))
        self._pending = run[keep:]

    def _scan_tokens(self, data: bytes, i: int) -> None:
        out = self._out
        base = self._base
        text = self._text
        c0 = _C0_RE.search
        csi = _CSI_RE.match
        esc = _ESC_RE.match
        osc = self._osc.match
        pending = self._pending
        self._pending = b""
        while True:
            m = c0(data, i)
            if m is None:
                break
            j = m.start()
            if text and (j > i or pending):
                run = pending + data[i:j] if pending else data[i:j]
                out.append(Text(base + i - len(pending), base + j, run.decode("utf-8", "replace")))
            pending = b""
            b = data[j]
            if b != 0x1B:
                out.append(Control(base + j, base + j + 1, b))
                i = j + 1
                continue
            m = csi(data, j)
            if m is not None:
                private, raw, inter, final = m.groups()
                i = m.end()
                out.append(
                    Csi(base + j, base + i, parse_params(raw), inter.decode(), final.decode(),
                        private.decode())
                )  # fmt: skip
                continue
            m = esc(data, j)
            if m is not None:
                inter, final, alone = m.groups()
                i = m.end()
                if alone is not None:
                    out.append(Esc(base + j, base + i, "", alone.decode()))
                else:
                    out.append(Esc(base + j, base + i, inter.decode(), final.decode()))
                continue
            if data[j + 1 : j + 2] == b"]":
                m = osc(data, j)
                if m is not None:
                    i = m.end()
                    self.osc_done(m.group(1), base + j, base + i, m.group(2) == b"\x07")
                    continue
            if self._cut(data, j):
                return
            i = self.run(data, j)
            if self._state:
                return
        if text:
            self._tail(data, i, pending)
