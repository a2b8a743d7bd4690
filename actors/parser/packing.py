"""parse.feed's answer packed by hand: each distinct marker's fields packed once.

A 64 KiB feed of compiler-like output answers about 45 markers, and building each one's dict
(`to_wire`, 1.1 µs on this VM) and packing it (1.2 µs) was half of the actor's time per feed.
A shell repeats the same few markers, which differ only in where they are: a marker's map is
its kind, its start and end, then fields every marker of the same payload shares. So those
fields are packed once per distinct set of values (a bounded memo, as the parser keeps of
decoded payloads), and an answer is its parts joined: byte for byte what msgpack gives for
`to_wire`'s dicts (the tests compare them). Tokens and text (a terminal's screen, not its
markers) vary too much to be worth a memo and are packed from their dicts.

The loop over an answer's remembered events runs compiled where the optional extension was
built (_cpack.c: a 64 KiB feed's 45 markers 73 -> 35 us on this VM, as long as its parse);
the Python loop here is the reference and the fallback (PACK_CORE says which this process
runs; MOORAGE_PARSER_CORE=python picks the Python one).
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from msgpack import Packer

from moorage.actors.vtparse import Event
from moorage.actors.vtparse._events import Marker, Rejected
from moorage.protocol.envelope import Packed

_pack_known: Callable[..., tuple[bytes, int]] | None = None
if os.environ.get("MOORAGE_PARSER_CORE") != "python":
    try:
        from moorage.actors.parser._cpack import pack_known as _pack_known
    except ImportError:  # (not built: the Python loop)
        pass
PACK_CORE: str = "python" if _pack_known is None else "compiled"
"""Which loop packs an answer's remembered events in this process: the parser's sys.info
`pack_core`."""

MEMO_ENTRIES = 256  # distinct field sets remembered, over all classes
MEMO_BYTES = 256  # a longer packing is not remembered (a 64 KiB command line, say)

_MEMO_CLASSES = frozenset((*typing.get_args(Marker), Rejected))
_pack = Packer(use_bin_type=True, autoreset=True).pack  # as envelope.packb, without its frame
_END = _pack("end")
_EVENTS = _pack("events")


def map_header(n: int) -> bytes:
    return bytes((0x80 | n,)) if n < 16 else b"\xde" + n.to_bytes(2, "big")


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    return b"\xdc" + n.to_bytes(2, "big") if n < 0x10000 else b"\xdd" + n.to_bytes(4, "big")


class _Layout:
    """What one event class's packing needs: the bytes before `start`'s value, the fields
    after `end` as one hashable key, and the remembered packings of those fields."""

    __slots__ = ("head", "key", "tails")

    def __init__(self, cls: type, sample: dict[str, Any]) -> None:
        self.head = map_header(len(sample)) + _pack("kind") + _pack(cls.kind) + _pack("start")
        names = list(sample)[3:]
        self.key: Callable[[Any], Any] = attrgetter(*names) if names else (lambda e: ())
        self.tails: dict[Any, bytes] = {}


class EventPacker:
    """Packs events as `packb(event.to_wire())` does, remembering marker fields. (Values equal
    as keys pack alike: each field of a marker class holds one type, or None.) `compiled`
    False runs the Python loop where the compiled one was built (the tests run both)."""

    def __init__(self, compiled: bool = True) -> None:
        self._layouts: dict[type, _Layout] = {}
        # what the compiled loop reads of each layout: (head, key, tails)
        self._known: dict[type, tuple[bytes, Callable[[Any], Any], dict[Any, bytes]]] = {}
        self._remembered = 0
        self._add_events = self._add_events_python if not compiled or _pack_known is None \
            else self._add_events_compiled

    def pack(self, e: Any) -> bytes:
        return b"".join(self._parts(e))

    def answer(self, events: Sequence[Event], fields: dict[str, Any]) -> Packed:
        """{"events": [...], **fields} packed, the events first, as a dict would be."""
        parts = [map_header(1 + len(fields)), _EVENTS, array_header(len(events))]
        self._add_events(parts, events)
        for k, v in fields.items():
            parts.append(_pack(k))
            parts.append(_pack(v))
        return Packed(b"".join(parts))

    def _add_events_compiled(self, parts: list[bytes], events: Sequence[Event]) -> None:
        assert _pack_known is not None
        if type(events) is not list:
            events = list(events)
        i, n = 0, len(events)
        while i < n:
            run, i = _pack_known(events, i, self._known)
            parts.append(run)
            if i < n:  # not remembered (yet): the long way, which remembers it
                parts += self._parts(events[i])
                i += 1

    def _add_events_python(self, parts: list[bytes], events: Sequence[Event]) -> None:
        """As _add_events_compiled, in Python (the reference)."""
        add = parts.append
        layouts = self._layouts
        for e in events:  # (inline: a call per event was a third of the time)
            layout = layouts.get(type(e))
            tail = None
            if layout is not None:
                try:
                    tail = layout.tails.get(layout.key(e))
                except TypeError:  # (a field that is no value: not from this library)
                    pass
            if tail is None:
                parts += self._parts(e)
                continue
            add(layout.head)
            add(_pack(e.start))
            add(_END)
            add(_pack(e.end))
            add(tail)

    def _parts(self, e: Any) -> list[bytes]:
        """The event's packing the long way, its marker fields remembered for next time."""
        cls = type(e)
        wire = e.to_wire()
        if cls not in _MEMO_CLASSES:
            return [_pack(wire)]
        layout = self._layouts.get(cls)
        if layout is None:
            layout = self._layouts[cls] = _Layout(cls, wire)
            self._known[cls] = (layout.head, layout.key, layout.tails)
        tail = b"".join(_pack(k) + _pack(v) for k, v in list(wire.items())[3:])
        if len(tail) <= MEMO_BYTES:
            try:
                key = layout.key(e)
                hash(key)
            except TypeError:
                pass
            else:
                if self._remembered >= MEMO_ENTRIES:
                    for other in self._layouts.values():
                        other.tails.clear()
                    self._remembered = 0
                layout.tails[key] = tail
                self._remembered += 1
        return [layout.head, _pack(e.start), _END, _pack(e.end), tail]
