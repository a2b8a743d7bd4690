"""Bytes to values, shared by the byte machine and the fast paths: CSI/DCS parameters (read
whole by `parse_params`, or across chunks by `ParamReader`, which must agree), and where a
UTF-8 character is cut."""

from __future__ import annotations

import re

from moorage.actors.vtparse._events import Param

MAX_PARAMS = 32
"""Parameter values in one CSI or DCS header, sub-parameters included (vte's MAX_PARAMS)."""
MAX_PARAM_VALUE = 65535
"""A parameter saturates here (vte's u16), so a 100,000-digit parameter is just 65535."""


def parse_num(digits: bytes) -> int:
    """A parameter's value from its digits, saturated (and never handed to int() whole: a
    hostile 100,000-digit parameter must not cost int()'s quadratic time or its limit)."""
    if len(digits) > 5:
        digits = digits.lstrip(b"0")
        if len(digits) > 5:
            return MAX_PARAM_VALUE
    return min(int(digits), MAX_PARAM_VALUE) if digits else 0


def parse_params(raw: bytes) -> tuple[Param, ...]:
    """Parameters from well-formed parameter bytes (digits, `;`, `:`); what the byte machine
    builds incrementally, for the regex fast path."""
    if not raw:
        return ()
    if b":" not in raw:
        return tuple(parse_num(x) for x in raw.split(b";"))
    out: list[Param] = []
    for part in raw.split(b";"):
        if b":" in part:
            out.append(tuple(parse_num(x) for x in part.split(b":")))
        else:
            out.append(parse_num(part))
    return tuple(out)


def utf8_hold(buf: bytes) -> int:
    """Where a UTF-8 character cut by the end of `buf` starts, or len(buf) if none is.

    Only a valid prefix (a lead byte 0xC2-0xF4 with fitting continuation bytes) is held back;
    anything else is already invalid and decodes to U+FFFD now, so a lone 0xFF is not delayed.
    Cutting before a lead byte never changes how the rest decodes, so runs decoded on either
    side of the cut concatenate to the text of the whole.
    """
    n = len(buf)
    k = n - 1
    while k >= 0 and k >= n - 3:
        b = buf[k]
        if b < 0x80:
            return n
        if b >= 0xC0:
            if b < 0xC2 or b > 0xF4:
                return n
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            if n - k >= need:
                return n
            if n - k >= 2:
                c = buf[k + 1]
                lo = 0xA0 if b == 0xE0 else 0x90 if b == 0xF0 else 0x80
                hi = 0x9F if b == 0xED else 0x8F if b == 0xF4 else 0xBF
                if not lo <= c <= hi:
                    return n
            return k
        k -= 1
    return n


_PARAM_RUN = re.compile(rb"[0-9;:]+")
_PARAM_PART = re.compile(rb"([0-9]*)([;:]?)")


class ParamReader:
    """The parameters of a CSI or DCS header, read as they arrive (a chunk may cut them).

    State is bounded: at most 32 values and one value being read, saturated."""

    __slots__ = ("_cur", "_group", "_nsep", "_params", "_seen")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._params: list[Param] = []
        self._cur: int | None = None  # the value being read; None: no digit yet
        self._group: list[int] | None = None  # a `:` group being read
        self._nsep = 0
        self._seen = False  # any parameter byte: `ESC [ m` has none, `ESC [ ; m` two zeros

    def take(self, data: bytes, i: int) -> int:
        """Read the run of parameter bytes (digits, `;`, `:`) at i, a value at a time rather
        than a byte at a time. Returns the index after the run, or -1 - j when the separator
        at j would start a 33rd value."""
        end = _PARAM_RUN.match(data, i).end()  # type: ignore[union-attr]
        self._seen = True
        pos = i
        while pos < end:
            m = _PARAM_PART.match(data, pos, end)
            digits, sep = m.group(1), m.group(2)  # type: ignore[union-attr]
            if digits:
                cur = self._cur
                if not cur:
                    cur = parse_num(digits)
                elif len(digits) >= 5:  # cur >= 1 and five more digits: past 65535
                    cur = MAX_PARAM_VALUE
                else:
                    cur = min(cur * 10 ** len(digits) + int(digits), MAX_PARAM_VALUE)
                self._cur = cur
            pos = m.end()  # type: ignore[union-attr]
            if sep and not self._separator(sep[0]):
                return -pos  # -1 - (pos - 1): the separator's index
        return end

    def _separator(self, b: int) -> bool:
        """End the current value at `;` or `:`; False when a 33rd value would start."""
        if self._nsep == MAX_PARAMS - 1:
            return False
        self._nsep += 1
        value = self._cur or 0
        self._cur = None
        if b == 0x3A:
            if self._group is None:
                self._group = [value]
            else:
                self._group.append(value)
        elif self._group is not None:
            self._group.append(value)
            self._params.append(tuple(self._group))
            self._group = None
        else:
            self._params.append(value)
        return True

    def finish(self) -> tuple[Param, ...]:
        """The parameters, at the final byte."""
        if self._seen:
            value = self._cur or 0
            if self._group is not None:
                self._group.append(value)
                self._params.append(tuple(self._group))
            else:
                self._params.append(value)
        return tuple(self._params)
