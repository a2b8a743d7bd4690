"""Shell-integration markers: from a complete OSC payload to a typed event.

Handled: OSC 633 (VS Code: A B C D E P), OSC 133 (FinalTerm / semantic prompts: A B C D with
`key=value` options), OSC 7 (`file://host/path`) and OSC 1337 (iTerm2: CurrentDir=, SetMark).
Each command is a function in a registry (`_HANDLERS`, `_VSC`, `_FTCS`), not an if-chain.

Policies:
- Unknown commands (633 F-I, 133 L/N/P, other 1337 keys) are ignored, as VS Code does.
- A marker we understand but cannot accept is a `Rejected` event, never a guess: OSC 7 that is
  not a `file://` URL with an absolute path, a non-numeric exit code, a property without `=`.
- The nonce is the field after the last one the command defines: A/B/C `;nonce`,
  D `;exit;nonce`, E `;cmd;nonce`, P `;K=V;nonce`. VS Code's D has no nonce, and our scripts
  send `D;NONCE` when nothing ran, so a lone D field that equals the session nonce is the
  nonce, not an exit code. For 133, a last field equal to the session nonce is the nonce.
- 633 E and P values are unescaped (`\\\\` and `\\xAB`, case-insensitive) as bytes, then
  decoded as UTF-8 with replacement; raw bytes (unescaped spaces, newlines, UTF-8) pass
  through, because the shipped bash and zsh scripts send them.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from moorage.actors.vtparse._events import (
    CommandFinished,
    CommandLine,
    Cwd,
    Event,
    Mark,
    Options,
    OutputStart,
    PromptEnd,
    PromptStart,
    Property,
    Rejected,
)

MARKER_COMMANDS = frozenset({7, 133, 633, 1337})
"""OSC numbers that may carry a marker; the parser decodes only these."""

_ESCAPE = re.compile(rb"\\(\\|[xX]([0-9a-fA-F]{2}))")
_EXIT = re.compile(rb"[-+]?[0-9]{1,10}")
_EXIT_MAX = 2**31 - 1  # an exit code or a wait status fits in a C int; anything else is junk


def unescape(value: bytes) -> str:
    """VS Code's `deserializeVSCodeOscMessage`: `\\\\` is a backslash, `\\xAB` a byte; any
    other byte stands for itself. The bytes are then decoded as UTF-8 with replacement."""
    if b"\\" in value:
        value = _ESCAPE.sub(_unescape_one, value)
    return value.decode("utf-8", "replace")


def _unescape_one(m: re.Match[bytes]) -> bytes:
    hex_digits = m.group(2)
    return b"\\" if hex_digits is None else bytes((int(hex_digits, 16),))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class _Ctx:
    """What every handler needs: where the sequence is, and the session's nonce."""

    __slots__ = ("end", "session", "start")

    def __init__(self, start: int, end: int, session: bytes | None) -> None:
        self.start = start
        self.end = end
        self.session = session

    def trusts(self, nonce: bytes | None) -> bool:
        # compare_digest: the nonce is a secret and output can be produced by anyone
        return (
            self.session is not None
            and nonce is not None
            and hmac.compare_digest(nonce, self.session)
        )

    def reject(self, source: int, reason: str, data: bytes) -> Rejected:
        return Rejected(self.start, self.end, source, reason, data)


def _exit_code(field: bytes) -> int | str | None:
    """The exit code of a D field: None when empty, an int, or an error string."""
    if not field:
        return None
    if _EXIT.fullmatch(field) is None:
        return "exit code is not an integer"
    code = int(field)
    if not -_EXIT_MAX - 1 <= code <= _EXIT_MAX:
        return "exit code out of range"
    return code


# ---------------------------------------------------------------------------------------------
# OSC 633 (VS Code)
# ---------------------------------------------------------------------------------------------


def _nonce(fields: list[bytes], index: int) -> bytes | None:
    return fields[index] if len(fields) > index else None


def _vsc_simple(cls: type[PromptStart] | type[PromptEnd] | type[OutputStart]) -> _Handler:
    def handle(ctx: _Ctx, fields: list[bytes], data: bytes) -> Event:
        nonce = _nonce(fields, 0)
        return cls(
            ctx.start, ctx.end, 633, ctx.trusts(nonce), None if nonce is None else _text(nonce)
        )

    return handle


def _vsc_finished(ctx: _Ctx, fields: list[bytes], data: bytes) -> Event:
    code_field: bytes = b""
    nonce: bytes | None = None
    if len(fields) == 1 and ctx.trusts(fields[0]):
        nonce = fields[0]
    elif fields:
        code_field, nonce = fields[0], _nonce(fields, 1)
    code = _exit_code(code_field)
    if isinstance(code, str):
        return ctx.reject(633, code, data)
    nonce_text = None if nonce is None else _text(nonce)
    return CommandFinished(ctx.start, ctx.end, 633, ctx.trusts(nonce), nonce_text, code)


def _vsc_command_line(ctx: _Ctx, fields: list[bytes], data: bytes) -> Event:
    command = unescape(fields[0]) if fields else ""
    nonce = _nonce(fields, 1)
    nonce_text = None if nonce is None else _text(nonce)
    return CommandLine(ctx.start, ctx.end, 633, ctx.trusts(nonce), nonce_text, command)


def _vsc_property(ctx: _Ctx, fields: list[bytes], data: bytes) -> Event:
    if not fields or b"=" not in fields[0]:
        return ctx.reject(633, "property without '='", data)
    key, _, value = fields[0].partition(b"=")
    nonce = _nonce(fields, 1)
    trusted = ctx.trusts(nonce)
    nonce_text = None if nonce is None else _text(nonce)
    key_text = unescape(key)
    if key_text == "Cwd":
        path = unescape(value)
        if not path:
            return ctx.reject(633, "empty cwd", data)
        return Cwd(ctx.start, ctx.end, 633, trusted, nonce_text, path, None)
    return Property(ctx.start, ctx.end, 633, trusted, nonce_text, key_text, unescape(value))


_Handler = Callable[[_Ctx, list[bytes], bytes], Event]

_VSC: dict[bytes, _Handler] = {
    b"A": _vsc_simple(PromptStart),
    b"B": _vsc_simple(PromptEnd),
    b"C": _vsc_simple(OutputStart),
    b"D": _vsc_finished,
    b"E": _vsc_command_line,
    b"P": _vsc_property,
}


def _osc633(ctx: _Ctx, rest: bytes, data: bytes) -> Event | None:
    fields = rest.split(b";")
    handler = _VSC.get(fields[0])
    return None if handler is None else handler(ctx, fields[1:], data)


# ---------------------------------------------------------------------------------------------
# OSC 133 (FinalTerm, semantic prompts)
# ---------------------------------------------------------------------------------------------


def _options(fields: list[bytes]) -> Options:
    pairs = []
    for f in fields:
        key, sep, value = f.partition(b"=")
        if sep:
            pairs.append((_text(key), _text(value)))
    return tuple(pairs)


def _osc133(ctx: _Ctx, rest: bytes, data: bytes) -> Event | None:
    letter, _, tail = rest.partition(b";")
    fields = tail.split(b";") if tail else []
    nonce: bytes | None = None
    if fields and ctx.trusts(fields[-1]):
        nonce = fields.pop()
    trusted = nonce is not None
    nonce_text = None if nonce is None else _text(nonce)
    if letter == b"A":
        options = _options(fields)
        continuation = ("k", "s") in options
        return PromptStart(ctx.start, ctx.end, 133, trusted, nonce_text, continuation, options)
    if letter == b"B":
        return PromptEnd(ctx.start, ctx.end, 133, trusted, nonce_text, _options(fields))
    if letter == b"C":
        return OutputStart(ctx.start, ctx.end, 133, trusted, nonce_text, _options(fields))
    if letter == b"D":
        code: int | str | None = None
        if fields and b"=" not in fields[0]:
            code = _exit_code(fields.pop(0))
        if isinstance(code, str):
            return ctx.reject(133, code, data)
        options = _options(fields)
        return CommandFinished(ctx.start, ctx.end, 133, trusted, nonce_text, code, options)
    return None


# ---------------------------------------------------------------------------------------------
# OSC 7 and OSC 1337: cwd without room for a nonce, so never trusted
# ---------------------------------------------------------------------------------------------


def _osc7(ctx: _Ctx, rest: bytes, data: bytes) -> Event | None:
    # VS Code requires ^file://.*/ ; kitty's kitty-shell-cwd:// and bare paths are rejected
    if rest[:7].lower() != b"file://":
        return ctx.reject(7, "not a file URL", data)
    host, slash, path = rest[7:].partition(b"/")
    if not slash:
        return ctx.reject(7, "file URL without a path", data)
    path_text = _text(unquote_to_bytes(b"/" + path))
    host_text = _text(unquote_to_bytes(host)) if host else None
    return Cwd(ctx.start, ctx.end, 7, False, None, path_text, host_text)


def _osc1337(ctx: _Ctx, rest: bytes, data: bytes) -> Event | None:
    key, sep, value = rest.partition(b"=")
    if key == b"CurrentDir" and sep:
        if not value:
            return ctx.reject(1337, "empty cwd", data)
        return Cwd(ctx.start, ctx.end, 1337, False, None, _text(value), None)
    if key == b"SetMark" and not sep:
        return Mark(ctx.start, ctx.end, 1337, False, None)
    return None


_HANDLERS: dict[int, Callable[[_Ctx, bytes, bytes], Event | None]] = {
    7: _osc7,
    133: _osc133,
    633: _osc633,
    1337: _osc1337,
}


def decode_marker(
    command: int, rest: bytes, data: bytes, start: int, end: int, session: bytes | None
) -> Event | None:
    """The marker event for a complete OSC, or None when it is not a marker.

    `command` is the OSC number, `rest` the payload after its `;` (empty if none), `data` the
    whole payload (kept in a `Rejected`), `start`/`end` the sequence's offsets, `session` the
    session's nonce as UTF-8 bytes (None: nothing is trusted).
    """
    handler = _HANDLERS.get(command)
    if handler is None:
        return None
    return handler(_Ctx(start, end, session), rest, data)
