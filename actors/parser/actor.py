"""The parser actor: `actors.vtparse` served per stream, bounded so no stream starves the rest.

  op           args                          reply                            errors
  parse.open   {stream, nonce?, mode?,       {stream, offset, mode, opened,   bad_args
                tokens?, text?, offset?}      options}
  parse.feed   {stream, offset, data?,       {events, offset, mode, skipped,  bad_args,
               create?, events_from?,         unparsed, buffered}             message_too_large,
               inert?}, the bytes as one                                      stream_gap,
               raw attachment (or `data`)                                     stream_not_found,
                                                                              parse_error
  parse.reset  {stream}                      {stream, offset, mode, dropped}  stream_not_found
  parse.close  {stream}                      {stream, closed, offset, events} bad_args
  parse.list   {}                            {streams: [{stream, offset,      bad_args
                                              mode, buffered, idle_s,
                                              options}]}
  parse.stats  {}                            {streams, sessions, feeds,       bad_args
                                              bytes_parsed, bytes_inert,
                                              events, evictions,
                                              reaped, pressure_closed, ...}

Streams belong to a client session: the key is (sid, stream), so two clients never share one.
`open` is safe to repeat: the same options answer the open stream (`opened` false); other
options are `bad_args` (close it first). `offset` there is where a new stream starts (a
terminal reopening after a parser restart passes its scrollback offset); an open stream keeps
its own. A feed to an unknown stream opens it with default options when its offset is 0,
unless the feed says `create: false` (a caller that opened the stream with options of its
own, a nonce, wants `stream_not_found` when the stream was evicted, not a default stream).

Offsets make a resent feed safe (`parse.feed` is idempotent): `offset` is the absolute stream
offset of the data's first byte. The stream's last feed resent (the same request id: a client
resending the call whose reply it lost) gets that feed's answer again. Otherwise, behind the
stream's offset, the overlap was parsed already and is skipped (`skipped` bytes; its events
went out with an earlier reply); ahead of it is
`stream_gap` with detail {expected}. `events_from` leaves out of the reply the events that
start before it (the caller has them already: the terminal reads a command's end itself); the
stream parses them all the same. The reply's `offset` is the stream's new offset: when it is
short of the data's end (`unparsed` > 0), the per-feed event budget was spent and the caller
sends the rest from there. `mode` is the recovery mode after the feed (RecoveryMode values).
`inert` (instead of the bytes) says that the next `inert` bytes are inert (vtparse's `inert`:
plain text and whole, well-formed CSI and ESC sequences, nothing that may be or end a marker,
nothing any recovery policy counts an error): a stream that
reads markers only (no text, no tokens) and holds nothing at its offset takes them as parsed
unseen, since such bytes can neither hold a marker nor end one (vtparse's `Parser.skip`); any
other answers `bad_args`, and the caller sends the bytes. A terminal streaming plain or
coloured output (a `cat` of a log, a build) sends the parser actor a count a MiB, not the MiB
(`bytes_inert` in parse.stats).
`buffered` is how far before its offset the stream's sequence in progress began (a sequence
cut by the data's end, counted from its ESC: `Parser.buffered_bytes()`): a caller that moves
the stream elsewhere (the terminal's in-process fallback) starts the new parser that many
bytes earlier, so the cut sequence, marker and all, is read again whole.

Bounds, all from config (defaults in `Settings`): `max_streams` open streams in all, and
`max_streams_per_session` per client; opening one more closes the least recently used stream
of that session, or else of all, first. A stream unused for `idle_timeout_s` is reaped. Each is
published on `parse.evicted` {sid, stream, reason: lru | idle | pressure, offset, idle_s}.
A stream holds at most `max_buffer` bytes between feeds (the library's cap); a feed carries at
most `max_feed_bytes` (`message_too_large`) and answers at most about `max_events_per_feed`
events and what FEED_BUDGET_S (20 ms) of parsing and of packing the answer covers (checked
after each library call, the packing at what the stream's answers have cost an event; on
slices of SLICE_FIRST bytes, SLICE_MIN with tokens or text, that double while the bytes parse
fast, up to SLICE, and shrink to SLICE_MIN when they do not: escape-dense bytes go through the
library's Python state machine at a few µs a byte), which bounds both the reply's size and
the time one feed holds the loop;
the rest is `unparsed`, for the caller to send again. A feed's answer is kept for its resend
up to RESEND_KEEP_BYTES (64 KiB): a resend of a feed whose answer was bigger is answered
`outcome_unknown` (it ran; its events cannot be given again), never with its bytes skipped.

Failure: the library never raises on any bytes; if it does, the feed answers `parse_error`
(detail {stream, offset, dropped: [start, end]}), the stream is rebuilt in ground at the end of
that data (seed 5.1 ResetOnError), and the actor serves on. Under pressure high or critical,
streams unused for `pressure_idle_s` are closed. With the supervisor's fallback
"raw_passthrough", every new stream parses nothing (mode raw_passthrough, markers off).
"""

from __future__ import annotations

import time
import types
import typing
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

from loguru import logger

from moorage.actors.parser.packing import PACK_CORE, EventPacker
from moorage.actors.runtime import Actor, Call, op
from moorage.actors.runtime.loop import Timer
from moorage.actors.runtime.shapes import Named, OneOf
from moorage.actors.vtparse import (
    CORE,
    EVENT_TYPES,
    MAX_BUFFER_SIZE,
    Event,
    Parser,
    RecoveryMode,
)
from moorage.protocol import limits
from moorage.protocol.envelope import Packed
from moorage.protocol.errors import Category, fail

MAX_STREAM_NAME = 256  # characters
SLICE = 64 * 1024  # bytes per library call in a large feed (markers only) ...
SLICE_TOKENS = 16 * 1024  # ... and with tokens or text, where a byte can be an event
SLICE_FIRST = 16 * 1024  # a feed's first call: fast bytes then double the slice, up to those
SLICE_MIN = 2 * 1024  # ... slow ones (escape-dense: the library's Python machine) shrink it
SLICE_SLOW_S = 0.002  # a call that took longer than this is slow
FEED_BUDGET_S = 0.02  # a feed's time on the loop, its answer's packing counted; the rest
# is `unparsed`, sent again
PACK_S_FIRST = 2e-6  # a new stream's guess at an event's packing (a token's, unremembered) ...
PACK_LEARN_MIN = 64  # ... learned from each answer of at least this many events
RESEND_KEEP_BYTES = 64 * 1024  # a feed's answer kept for its resend up to this size
EVICTED = "parse.evicted"
CLOSED_KEEP = 256  # parse.close answers kept for a resend ...
CLOSED_KEEP_S = 60.0  # ... at most this long
FALLBACKS = ("raw_passthrough",)
MODES = tuple(m.value for m in RecoveryMode)


@dataclass(frozen=True, slots=True)
class Settings:
    max_streams: int = 512
    max_streams_per_session: int = 256
    max_buffer: int = MAX_BUFFER_SIZE
    max_feed_bytes: int = 4 * 1024 * 1024
    max_events_per_feed: int = 20_000
    idle_timeout_s: float = 300.0
    pressure_idle_s: float = 10.0
    fallback: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        """The settings, or ValueError: a config that cannot work fails the start."""
        d = cls()
        s = cls(
            max_streams=int(config.get("max_streams", d.max_streams)),
            max_streams_per_session=int(
                config.get("max_streams_per_session", d.max_streams_per_session)),
            max_buffer=int(config.get("max_buffer", d.max_buffer)),
            max_feed_bytes=int(config.get("max_feed_bytes", d.max_feed_bytes)),
            max_events_per_feed=int(config.get("max_events_per_feed", d.max_events_per_feed)),
            idle_timeout_s=float(config.get("idle_timeout_s", d.idle_timeout_s)),
            pressure_idle_s=float(config.get("pressure_idle_s", d.pressure_idle_s)),
            fallback=config.get("fallback"),
        )
        if min(s.max_streams, s.max_streams_per_session, s.max_events_per_feed) < 1:
            raise ValueError("max_streams, max_streams_per_session, max_events_per_feed >= 1")
        if s.max_buffer < 16 or not 0 < s.max_feed_bytes <= limits.MAX_MESSAGE_SIZE:
            raise ValueError("max_buffer >= 16, 0 < max_feed_bytes <= the message size limit")
        if s.idle_timeout_s <= 0 or s.pressure_idle_s < 0:
            raise ValueError("idle_timeout_s > 0 and pressure_idle_s >= 0")
        if s.fallback is not None and s.fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {s.fallback!r}; known: {FALLBACKS}")
        return s


@dataclass(frozen=True, slots=True)
class Options:
    """What a stream was opened with; equal options make a repeated open harmless."""

    nonce: str | None
    policy: RecoveryMode
    tokens: bool
    text: bool

    def to_wire(self) -> dict[str, Any]:
        # the nonce is a secret of the session: say whether there is one, not what it is
        return {"nonce": self.nonce is not None, "policy": self.policy.value,
                "tokens": self.tokens, "text": self.text}


@dataclass(slots=True)
class Stream:
    sid: str
    name: str
    options: Options
    parser: Parser
    last_use: float
    # The last feed's request id and its answer: that request again (a client resends the
    # identical frames of a call whose reply it lost) gets that answer again, events and
    # all, instead of `skipped` and none. A new call with the same bytes goes on.
    last_feed: int | None = None
    last_answer: Packed | None = None
    # What packing an event of this stream's answers costs (seconds, learned): the feed's
    # budget counts it, since a token stream's answer of 20,000 events took longer to pack
    # (36 ms) than its parse's whole budget.
    pack_s: float = PACK_S_FIRST

    def wire_state(self, now: float) -> dict[str, Any]:
        return {"stream": self.name, "offset": self.parser.offset,
                "mode": self.parser.mode.value, "buffered": self.parser.buffered_bytes(),
                "idle_s": round(now - self.last_use, 3), "options": self.options.to_wire()}


class StreamTable:
    """Open streams in least-recently-used order, in all and per session.

    Both orders are kept by `touch`, so the first entry is always the least recently used
    and idle streams are found from the front without scanning the rest.
    """

    def __init__(self, max_streams: int, per_session: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_streams = max_streams
        self.per_session = per_session
        self.clock = clock
        self._all: OrderedDict[tuple[str, str], Stream] = OrderedDict()
        self._sessions: dict[str, OrderedDict[str, Stream]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Stream]:
        return iter(self._all.values())

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def get(self, sid: str, name: str) -> Stream | None:
        return self._all.get((sid, name))

    def session(self, sid: str) -> list[Stream]:
        return list(self._sessions.get(sid, {}).values())

    def touch(self, s: Stream) -> None:
        s.last_use = self.clock()
        self._all.move_to_end((s.sid, s.name))
        self._sessions[s.sid].move_to_end(s.name)

    def add(self, s: Stream) -> list[Stream]:
        """Insert `s` as the most recent; returns the streams closed to make room for it."""
        evicted = []
        mine = self._sessions.get(s.sid)
        if mine is not None and len(mine) >= self.per_session:
            evicted.append(self.remove(s.sid, next(iter(mine))))
        while len(self._all) >= self.max_streams:
            evicted.append(self.remove(*next(iter(self._all))))
        s.last_use = self.clock()
        self._all[(s.sid, s.name)] = s
        self._sessions.setdefault(s.sid, OrderedDict())[s.name] = s
        return [e for e in evicted if e is not None]

    def remove(self, sid: str, name: str) -> Stream | None:
        s = self._all.pop((sid, name), None)
        if s is not None:
            mine = self._sessions[sid]
            del mine[name]
            if not mine:
                del self._sessions[sid]
        return s

    def unused_since(self, cutoff: float) -> list[Stream]:
        """Remove and return every stream last used before `cutoff`."""
        out = []
        while self._all:
            s = next(iter(self._all.values()))
            if s.last_use >= cutoff:
                break
            out.append(self.remove(s.sid, s.name))
        return [s for s in out if s is not None]


# --- the shapes of the answers ----------------------------------------------------------------


def _wire_type(hint: Any) -> Any:
    """An event field's type as its to_wire() sends it: tuples become lists."""
    if isinstance(hint, types.UnionType):
        return OneOf(*(_wire_type(h) for h in typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        return list[_wire_type(typing.get_args(hint)[0])]  # type: ignore[misc]
    return hint


def _event_shape(cls: type) -> dict[str, Any]:
    """One kind of event, read from its record class (vtparse's events), so the declaration
    follows the library: `kind`, then its fields; `options` is sent as a map."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {"kind": Literal[cls.kind]}  # type: ignore[attr-defined]
    for f in fields(cls):
        out[f.name] = dict[str, str] if f.name == "options" else _wire_type(hints[f.name])
    return out


MODE = Named("parse_mode", Literal[MODES])  # type: ignore[valid-type]
OPTIONS = Named("options", {"nonce": bool, "policy": MODE, "tokens": bool,
                            "text": bool})  # Options.to_wire
EVENT = Named("event", OneOf(*(_event_shape(t) for t in EVENT_TYPES)))
STREAM_STATE = Named("stream_state", {"stream": str, "offset": int, "mode": MODE,
                                      "buffered": int, "idle_s": float, "options": OPTIONS})


class ParserActor(Actor):
    name = "parser"
    category = Category.PARSER
    # What `fallbacks =` of its child spec may name (checked with the config, before start).
    fallbacks = FALLBACKS

    def __init__(self, name: str | None, runtime_dir: Any, config: dict | None = None) -> None:
        self.settings = Settings.from_config(config or {})
        super().__init__(name, runtime_dir, config)
        s = self.settings
        self.table = StreamTable(s.max_streams, s.max_streams_per_session)
        self.counts: Counter[str] = Counter()
        self.packer = EventPacker()
        # parse.close's answers of the last CLOSED_KEEP_S, at most CLOSED_KEEP of them, with
        # their request ids: a close resent after its reply was lost gets its flush's events
        # again (a new close of the stream, that it is not open).
        self.closed: OrderedDict[tuple[str, str], tuple[float, int, dict[str, Any]]] = \
            OrderedDict()

    def on_start(self) -> None:
        # Idle streams are looked for while there are streams: an idle parser sleeps (P14).
        self._reap_every = min(max(self.settings.idle_timeout_s / 4, 0.02), 5.0)
        self._reap_timer: Timer | None = None

    def _reap_later(self) -> None:
        if self._reap_timer is None:
            self._reap_timer = self.loop.call_later(self._reap_every, self._reap)

    def info(self) -> dict[str, Any]:
        # core: the markers-only scan this process runs, "compiled" (the optional extension
        # was built) or "python" (the fallback); both give the same events. pack_core: the
        # loop that packs an answer's remembered markers, the same way (both the same bytes)
        return {"streams": len(self.table), "fallback": self.settings.fallback, "core": CORE,
                "pack_core": PACK_CORE}

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        """High or critical: close the streams nobody used for `pressure_idle_s`."""
        if level not in ("high", "critical"):
            return {}
        gone = self.table.unused_since(self.table.clock() - self.settings.pressure_idle_s)
        for s in gone:
            self._evicted(s, "pressure")
        return {"streams_closed": len(gone)}

    # --- streams --------------------------------------------------------------------------------

    def make_parser(self, options: Options, offset: int) -> Parser:
        """A parser for a stream (a subclass may substitute its own)."""
        return Parser(options.nonce, options.tokens, options.policy, text=options.text,
                      max_buffer=self.settings.max_buffer, offset=offset)

    def _options(self, nonce: str | None, mode: str, tokens: bool, text: bool) -> Options:
        if mode not in MODES:
            raise fail("bad_args", f"mode must be one of {MODES}, not {mode!r:.40}")
        policy = RecoveryMode(mode)
        if self.settings.fallback == "raw_passthrough":
            policy = RecoveryMode.RAW_PASSTHROUGH
        return Options(nonce, policy, tokens, text)

    def _open(self, sid: str, name: str, options: Options, offset: int) -> Stream:
        if not 0 < len(name) <= MAX_STREAM_NAME:
            raise fail("bad_args", f"stream names are 1 to {MAX_STREAM_NAME} characters")
        if not 0 <= offset <= limits.MAX_ID:
            raise fail("bad_args", f"offset must be in [0, 2^53), not {offset}")
        try:
            parser = self.make_parser(options, offset)
        except ValueError as exc:  # a nonce the parser cannot match
            raise fail("bad_args", str(exc)) from exc
        s = Stream(sid, name, options, parser, 0.0)
        self.closed.pop((sid, name), None)
        for old in self.table.add(s):
            self._evicted(old, "lru")
        self.counts["opened"] += 1
        self._reap_later()
        return s

    def _stream(self, call: Call, name: str) -> Stream:
        s = self.table.get(call.sid, name)
        if s is None:
            raise fail("stream_not_found", f"no stream {name!r:.80} in this session",
                       detail={"stream": name[:MAX_STREAM_NAME]})
        self.table.touch(s)
        return s

    def _evicted(self, s: Stream, reason: str) -> None:
        self.counts[f"closed_{reason}"] += 1
        self.publisher.publish(EVICTED, {
            "sid": s.sid, "stream": s.name, "reason": reason, "offset": s.parser.offset,
            "idle_s": round(self.table.clock() - s.last_use, 3)})

    def _reap(self) -> None:
        self._reap_timer = None
        for s in self.table.unused_since(self.table.clock() - self.settings.idle_timeout_s):
            self._evicted(s, "idle")
        if len(self.table):
            self._reap_later()

    def _rebuild(self, s: Stream, offset: int) -> int:
        """Ground state at `offset`; returns the bytes that were held and are now dropped.
        A new parser rather than `reset()`: after a library error its state is suspect."""
        try:
            held = s.parser.buffered_bytes()
        except Exception:
            logger.exception("{!r}: the old parser cannot say what it held", s.name)
            held = 0
        s.parser = self.make_parser(s.options, offset)
        return held

    # --- ops --------------------------------------------------------------------------------------
    # (what they answer: MODE, OPTIONS, EVENT and STREAM_STATE, above the class)

    @op("parse.open", args={"stream": str, "nonce": (str, None), "mode": (str, "skip_invalid"),
                            "tokens": (bool, False), "text": (bool, False), "offset": (int, 0)},
        idempotent=True, result={"stream": str, "offset": int, "mode": MODE, "opened": bool,
                                 "options": OPTIONS})
    def _op_open(self, call: Call, stream: str, nonce: str | None, mode: str, tokens: bool,
                 text: bool, offset: int) -> dict[str, Any]:
        """Open a stream (repeatable with the same options)."""
        options = self._options(nonce, mode, tokens, text)
        s = self.table.get(call.sid, stream)
        opened = s is None
        if s is None:
            s = self._open(call.sid, stream, options, offset)
        elif s.options != options:
            raise fail("bad_args", f"stream {stream!r:.80} is open with other options; "
                       "close it first", detail={"options": s.options.to_wire()})
        else:
            self.table.touch(s)
        return {"stream": stream, "offset": s.parser.offset, "mode": s.parser.mode.value,
                "opened": opened, "options": options.to_wire()}

    @op("parse.feed", args={"stream": str, "offset": int, "data": (bytes, None),
                            "create": (bool, True), "events_from": (int, 0),
                            "inert": (int, 0)}, idempotent=True,
        request_attachments=(0, 1), checked=False,
        result={"events": list[EVENT], "offset": int, "mode": MODE, "skipped": int,
                "unparsed": int, "buffered": int},
        errors=("stream_not_found", "stream_gap", "parse_error", "message_too_large",
                "outcome_unknown"))
    def _op_feed(self, call: Call, stream: str, offset: int, data: bytes | None,
                 create: bool, events_from: int, inert: int) -> Packed:
        """Parse the stream's next bytes; the events they complete."""
        # (checked=False: the answer is ints, strs and the events' `to_wire` maps, whose
        # values are the library's str and int fields, options a map of strs, CSI params
        # lists of ints two deep: no shape to walk, and a walk of a 64 KiB feed's events
        # was a fifth of its time. It is packed here, by `packing.EventPacker`.)
        if inert:
            if data is not None or call.attachments:
                raise fail("bad_args", "parse.feed takes bytes or an `inert` count, not both")
            return self._skip(call, stream, offset, inert, create)
        if (0 if data is None else 1) + len(call.attachments) != 1:
            raise fail("bad_args", "parse.feed takes its bytes as exactly one raw attachment "
                       "or as `data`, not both")
        if data is None:
            data = call.attachments[0]
        size = len(data)
        if size > self.settings.max_feed_bytes:
            raise fail("message_too_large", f"a feed carries at most "
                       f"{self.settings.max_feed_bytes} bytes, not {size}",
                       detail={"limit": self.settings.max_feed_bytes, "size": size})
        s = self._fed_stream(call, stream, offset, create, size)
        if s.last_feed == call.id:
            return self._resent(s)
        expected = s.parser.offset
        skipped = min(expected - offset, size)
        self.counts["feeds"] += 1
        self.counts["duplicate_bytes"] += skipped
        events = self._parse(s, data, skipped) if skipped < size else []
        parsed = s.parser.offset - expected
        self.counts["bytes_parsed"] += parsed
        self.counts["events"] += len(events)
        if events_from:
            events = [e for e in events if e.start >= events_from]
        t0 = time.perf_counter()
        answer = self._answer(s, events, skipped, size - skipped - parsed)
        if len(events) >= PACK_LEARN_MIN:
            s.pack_s = (3 * s.pack_s + (time.perf_counter() - t0) / len(events)) / 4
        return self._keep(s, call, answer)

    @staticmethod
    def _keep(s: Stream, call: Call, answer: Packed) -> Packed:
        """The answer, kept for the feed's resend if it is small enough (bounded memory:
        RESEND_KEEP_BYTES a stream); the id is kept either way, so a resend is known."""
        s.last_feed = call.id
        s.last_answer = answer if len(answer.data) <= RESEND_KEEP_BYTES else None
        return answer

    def _resent(self, s: Stream) -> Packed:
        """The stream's last feed again (the same request id): its answer, or, where that was
        too big to keep, `outcome_unknown`: it ran, and its events cannot be given again."""
        self.counts["feeds_resent"] += 1
        if s.last_answer is not None:
            return s.last_answer
        raise fail("outcome_unknown", f"this parse.feed of {s.name!r:.80} ran; its answer was "
                   f"over the {RESEND_KEEP_BYTES} bytes kept for a resend, so its events "
                   "cannot be given again", detail={"stream": s.name[:MAX_STREAM_NAME],
                                                     "offset": s.parser.offset})

    def _answer(self, s: Stream, events: list[Event], skipped: int, unparsed: int) -> Packed:
        """A feed's answer, of bytes or of a count: its events and where the stream stands."""
        return self.packer.answer(events, {
            "offset": s.parser.offset, "mode": s.parser.mode.value, "skipped": skipped,
            "unparsed": unparsed, "buffered": s.parser.buffered_bytes()})

    def _fed_stream(self, call: Call, stream: str, offset: int, create: bool,
                    size: int) -> Stream:
        """The stream a feed of `size` bytes at `offset` goes on (opened by it at 0 with
        `create`), or the error that says why there is none to go on. A stream's offsets stay
        within the protocol's integers: a feed that would take it past 2^53 - 1 is refused
        (its answer's offset, and the next feed's, could not be sent)."""
        if not 0 <= offset <= limits.MAX_ID:
            raise fail("bad_args", f"offset must be in [0, 2^53), not {offset}")
        if offset + size > limits.MAX_ID:
            raise fail("bad_args", f"a feed of {size} bytes at {offset} would take the stream "
                       "past offset 2^53 - 1", detail={"offset": offset, "size": size})
        s = self.table.get(call.sid, stream)
        if s is not None:
            self.table.touch(s)
        elif offset == 0 and create:
            s = self._open(call.sid, stream, self._options(None, "skip_invalid", False, False), 0)
        else:
            self.counts["not_found"] += 1
            raise fail("stream_not_found", f"no stream {stream!r:.80} in this session (a feed "
                       "opens one only at offset 0, and only with create)",
                       detail={"stream": stream[:MAX_STREAM_NAME]})
        expected = s.parser.offset
        if offset > expected:
            self.counts["gaps"] += 1
            raise fail("stream_gap", f"{stream!r:.80} is at {expected}; this feed starts at "
                       f"{offset}", detail={"expected": expected})
        return s

    def _skip(self, call: Call, stream: str, offset: int, inert: int, create: bool
              ) -> Packed:
        """A feed of `inert` bytes not sent (the module docstring): taken as parsed where
        the stream reads markers only and holds nothing at its offset."""
        if not 0 < inert <= limits.MAX_ID:
            raise fail("bad_args", f"inert must be in (0, 2^53), not {inert}")
        s = self._fed_stream(call, stream, offset, create, inert)
        if s.last_feed == call.id:
            return self._resent(s)
        expected = s.parser.offset
        skipped = min(expected - offset, inert)
        if skipped < inert and not s.parser.skip(inert - skipped):
            raise fail("bad_args", f"{stream!r:.80} cannot take bytes unseen at {expected} "
                       "(it reads text or tokens, or holds a sequence): send them",
                       detail={"expected": expected})
        self.counts["feeds"] += 1
        self.counts["duplicate_bytes"] += skipped
        self.counts["bytes_inert"] += inert - skipped
        return self._keep(s, call, self._answer(s, [], skipped, 0))

    def _parse(self, s: Stream, data: bytes, start: int) -> list[Event]:
        """Feed data[start:] in slices until the event budget or the time budget is spent
        (the module docstring); a library error becomes `parse_error` and a rebuilt stream
        past the data."""
        parser = s.parser
        # (with tokens or text a byte can be an event, each with its packing to pay: such a
        # stream's slices start small and are held to the events left, so one slice cannot
        # overspend either budget)
        dense = s.options.tokens or s.options.text
        budget = self.settings.max_events_per_feed
        most, step = (SLICE_TOKENS, min(SLICE_MIN, budget)) if dense else (SLICE, SLICE_FIRST)
        first = parser.offset
        events: list[Event] = []
        try:
            if len(data) - start <= step:
                return parser.feed(data[start:] if start else data)
            clock = time.perf_counter
            end = len(data)
            began = clock()
            i = start
            while i < end:
                t0 = clock()
                events += parser.feed(data[i : i + step])
                i += step
                now = clock()
                if len(events) >= budget \
                        or now - began + len(events) * s.pack_s > FEED_BUDGET_S:
                    break
                step = max(SLICE_MIN, step // 4) if now - t0 > SLICE_SLOW_S \
                    else min(most, step * 2)
                if dense:
                    step = min(step, budget - len(events))
            return events
        except Exception as exc:
            end = first + len(data) - start
            logger.exception("parse.feed: the parser raised on {!r}; stream rebuilt", s.name)
            self.counts["parse_errors"] += 1
            self._rebuild(s, end)
            raise fail("parse_error", f"the parser failed ({type(exc).__name__}: {exc}); "
                       f"the stream was reset and continues at {end}",
                       detail={"stream": s.name, "offset": end, "dropped": [first, end]},
                       ) from exc

    @op("parse.reset", args={"stream": str},
        result={"stream": str, "offset": int, "mode": MODE, "dropped": int},
        errors=("stream_not_found",))
    def _op_reset(self, call: Call, stream: str) -> dict[str, Any]:
        """Back to ground: whatever the stream held is dropped; the offset goes on."""
        s = self._stream(call, stream)
        dropped = self._rebuild(s, s.parser.offset)
        s.last_feed = s.last_answer = None
        self.counts["resets"] += 1
        return {"stream": stream, "offset": s.parser.offset, "mode": s.parser.mode.value,
                "dropped": dropped}

    @op("parse.close", args={"stream": str}, idempotent=True,
        result={"stream": str, "closed": bool, "offset": int | None, "events": list[EVENT]})
    def _op_close(self, call: Call, stream: str) -> dict[str, Any]:
        """Close a stream; `events` are what its end flushes (a cut character, a held
        sequence). Closing a stream that is not open answers closed: false; the close that
        closed it, resent within CLOSED_KEEP_S, its answer again."""
        key = (call.sid, stream)
        s = self.table.remove(*key)
        now = time.monotonic()
        while self.closed and (len(self.closed) > CLOSED_KEEP
                               or next(iter(self.closed.values()))[0] < now - CLOSED_KEEP_S):
            self.closed.popitem(last=False)
        if s is None:
            kept = self.closed.get(key)
            if kept is not None and kept[1] == call.id:
                return kept[2]
            return {"stream": stream, "closed": False, "offset": None, "events": []}
        self.counts["closed"] += 1
        try:
            events = [e.to_wire() for e in s.parser.flush()]
        except Exception:
            logger.exception("parse.close: flush raised on {!r}", stream)
            events = []
        answer = {"stream": stream, "closed": True, "offset": s.parser.offset, "events": events}
        self.closed[key] = (now, call.id, answer)
        return answer

    @op("parse.list", idempotent=True, result={"streams": list[STREAM_STATE]})
    def _op_list(self, call: Call) -> dict[str, Any]:
        """This session's streams, least recently used first."""
        now = self.table.clock()
        return {"streams": [s.wire_state(now) for s in self.table.session(call.sid)]}

    @op("parse.stats", idempotent=True, result={
        "streams": int, "sessions": int, "max_streams": int, "buffered": int, "opened": int,
        "closed": int, "feeds": int, "feeds_resent": int, "bytes_parsed": int,
        "bytes_inert": int, "events": int,
        "duplicate_bytes": int, "gaps": int, "not_found": int, "resets": int,
        "parse_errors": int, "evictions": int, "reaped": int, "pressure_closed": int,
        "fallback": Literal[FALLBACKS] | None})  # type: ignore[valid-type]
    def _op_stats(self, call: Call) -> dict[str, Any]:
        """Counters over all sessions since the actor started."""
        c = self.counts
        return {
            "streams": len(self.table), "sessions": self.table.sessions,
            "max_streams": self.settings.max_streams,
            "buffered": sum(s.parser.buffered_bytes() for s in self.table),
            "opened": c["opened"], "closed": c["closed"], "feeds": c["feeds"],
            "feeds_resent": c["feeds_resent"],
            "bytes_parsed": c["bytes_parsed"], "bytes_inert": c["bytes_inert"],
            "events": c["events"], "duplicate_bytes": c["duplicate_bytes"], "gaps": c["gaps"],
            "not_found": c["not_found"], "resets": c["resets"],
            "parse_errors": c["parse_errors"], "evictions": c["closed_lru"],
            "reaped": c["closed_idle"], "pressure_closed": c["closed_pressure"],
            "fallback": self.settings.fallback,
        }

