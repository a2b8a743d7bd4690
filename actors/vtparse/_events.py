"""The records a parser emits: markers (always), tokens and text (on request), warnings.

Every event carries `start` and `end`: absolute byte offsets in the whole stream, `end`
exclusive, so a consumer can cut the raw scrollback at a marker and a replayed chunk is
recognisable. Each class has a class-level `kind` string (its name on the wire) and
`to_wire()` gives a dict of msgpack-friendly values (str, int, bytes, bool, None, lists,
dicts), because the parser actor sends them over msgpack.

Records are values: the dispatcher hands one object to every handler, so a handler must not
change it. They are not frozen because a frozen dataclass costs four times as much to build
(about 1 µs against 0.25 µs here), which was a fifth of a marker's whole cost and half of a
token's. Option lists are tuples of pairs, so nothing inside a record is mutable either;
`to_wire()` turns them into dicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

Options = tuple[tuple[str, str], ...]
Param = int | tuple[int, ...]

# ---------------------------------------------------------------------------------------------
# Shell-integration markers (OSC 633, 133, 7, 1337)
#
# `source` is the OSC number the marker came in (633, 133, 7 or 1337). `nonce` is the nonce
# field the sequence carried (None when it had none) and `trusted` says whether it equals the
# session's nonce; a session without a nonce trusts nothing.
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class PromptStart:
    """633 A / 133 A: a prompt begins. `continuation` is 133's `k=s` (a PS2 prompt)."""

    kind: ClassVar[str] = "prompt_start"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    continuation: bool = False
    options: Options = ()

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class PromptEnd:
    """633 B / 133 B: the prompt ends and the user's input begins."""

    kind: ClassVar[str] = "prompt_end"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    options: Options = ()

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class OutputStart:
    """633 C / 133 C: the command runs; its output starts at `end`."""

    kind: ClassVar[str] = "output_start"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    options: Options = ()

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class CommandFinished:
    """633 D / 133 D: the command finished; its output ends at `start`.

    `exit_code` is None when the sequence had none, which in VS Code's convention means that
    no command ran (an empty Enter, Ctrl+C at the prompt).
    """

    kind: ClassVar[str] = "command_finished"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    exit_code: int | None = None
    options: Options = ()

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class CommandLine:
    """633 E: the exact command line, unescaped. Trusted only with the session's nonce."""

    kind: ClassVar[str] = "command_line"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    command: str = ""

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Property:
    """633 P;Key=Value for any key but Cwd (which is a `Cwd` event), value unescaped."""

    kind: ClassVar[str] = "property"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    key: str = ""
    value: str = ""

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Cwd:
    """The shell's working directory: 633 P;Cwd=, OSC 7 file URL, or 1337 CurrentDir=.

    OSC 7 and 1337 have no room for a nonce, so they are never trusted.
    """

    kind: ClassVar[str] = "cwd"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None
    path: str = ""
    host: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Mark:
    """1337 SetMark: the user asked for a mark here."""

    kind: ClassVar[str] = "mark"
    start: int
    end: int
    source: int
    trusted: bool
    nonce: str | None

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Rejected:
    """A marker we understand the command of but could not accept (a non-file OSC 7, a
    non-numeric exit code, a property without `=`). Reported so a broken shell script is
    visible instead of silently losing a command's end."""

    kind: ClassVar[str] = "rejected"
    start: int
    end: int
    source: int
    reason: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


# ---------------------------------------------------------------------------------------------
# Tokens and text (Parser(tokens=True) / Parser(text=True))
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Text:
    """A run of text between sequences, decoded as UTF-8 with replacement.

    A UTF-8 character split across chunks is held back and starts the next run, so runs from
    chunked input concatenate to the text of the whole. Without tokens, C0 controls stay in
    the text (there is nowhere else to report them); with tokens they are `Control` events.
    """

    kind: ClassVar[str] = "text"
    start: int
    end: int
    text: str

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Control:
    """A C0 control executed (in text, or inline inside an escape or CSI sequence)."""

    kind: ClassVar[str] = "control"
    start: int
    end: int
    code: int

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Esc:
    """An escape sequence: ESC, up to two intermediates (0x20-0x2F), a final (0x30-0x7E)."""

    kind: ClassVar[str] = "esc"
    start: int
    end: int
    intermediates: str
    final: str

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Csi:
    """A control sequence.

    `params` holds one entry per `;`-separated parameter: an int, or a tuple of ints for a
    `:`-separated group (`38:2:1:2:3`). No parameter bytes at all gives `()`; an empty
    parameter is 0. At most 32 values in all (groups count each value), each saturated at
    65535. `private` is the one leading `<`, `=`, `>` or `?`, or "".
    """

    kind: ClassVar[str] = "csi"
    start: int
    end: int
    params: tuple[Param, ...]
    intermediates: str
    final: str
    private: str

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Osc:
    """An operating system command. `data` is the whole payload (`b"0;title"`); `command`
    is its leading number, or None when that is not a number. `bell`: ended by BEL, not ST."""

    kind: ClassVar[str] = "osc"
    start: int
    end: int
    command: int | None
    data: bytes
    bell: bool

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Dcs:
    """A device control string: the header as for `Csi`, then the passthrough `data`."""

    kind: ClassVar[str] = "dcs"
    start: int
    end: int
    params: tuple[Param, ...]
    intermediates: str
    final: str
    private: str
    data: bytes

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


@dataclass(slots=True)
class Invalid:
    """A malformed sequence that was skipped, or cut short by a reset (tokens only)."""

    kind: ClassVar[str] = "invalid"
    start: int
    end: int
    reason: str

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


# ---------------------------------------------------------------------------------------------
# Warnings (always emitted)
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Overflow:
    """A string sequence (`what` is "osc" or "dcs") outgrew the buffer cap `limit` at `end`:
    it is dropped, and the rest of it, up to its terminator, is discarded too (never text).
    Emitted when the cap is passed, not at the terminator, which may never come. This is the
    seed's "buffer overflow, resetting" warning."""

    kind: ClassVar[str] = "overflow"
    start: int
    end: int
    what: str
    limit: int

    def to_wire(self) -> dict[str, Any]:
        return _wire(self)


Marker = (
    PromptStart | PromptEnd | OutputStart | CommandFinished | CommandLine | Property | Cwd | Mark
)
Token = Text | Control | Esc | Csi | Osc | Dcs | Invalid
Event = Marker | Rejected | Token | Overflow

EVENT_TYPES: tuple[type, ...] = (
    PromptStart, PromptEnd, OutputStart, CommandFinished, CommandLine, Property, Cwd, Mark,
    Rejected, Text, Control, Esc, Csi, Osc, Dcs, Invalid, Overflow,
)  # fmt: skip
KINDS: frozenset[str] = frozenset(t.kind for t in EVENT_TYPES)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:  # dataclasses.fields() per event is a fifth of the actor's feed cost
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def fields_after_span(event: Any) -> tuple[Any, ...]:
    """The event's field values after `start` and `end`, in order: with those two in front,
    `type(event)(start, end, *fields_after_span(event))` is the same event elsewhere."""
    return tuple(getattr(event, name) for name in _names(type(event))[2:])


_WIRE: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _wire(event: Any) -> dict[str, Any]:
    """The event as a dict for msgpack: its kind, then its fields; options become a dict and
    tuples (CSI and DCS params) become lists."""
    fn = _WIRE.get(type(event))
    if fn is None:
        fn = _WIRE[type(event)] = _compile_wire(type(event))
    return fn(event)


def _compile_wire(cls: type) -> Callable[[Any], dict[str, Any]]:
    """One function per event class that builds its dict in one expression (a loop over its
    fields with a getattr and a type test each was half of the parser actor's time per
    feed). The names are the dataclass's own fields."""
    items = ['"kind": _kind']
    for name in _names(cls):
        value = f"e.{name}"
        if name == "options":
            value = f"dict({value})"
        elif name == "params":
            value = f"_plain({value})"
        items.append(f'"{name}": {value}')
    src = "lambda e: {" + ", ".join(items) + "}"
    return eval(src, {"_kind": cls.kind, "_plain": _plain})  # type: ignore[no-any-return]
