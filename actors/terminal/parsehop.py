"""The parser hop: a session's output goes to the parser actor, its markers come back.

design.md's data flow: output chunks go, with their absolute offsets, to the parser actor
(`parse.feed`, sent from the loop by `Outbound`, never blocking it); the reply's markers carry
their offsets and the session completes its execs from them. Each session has a `ParseHop`
that says which parser serves it (`via`):

  actor   the parser actor: each chunk is sent as it arrives (at most `parse_feed_bytes` a
          feed), up to FLYING feeds in flight per session; two shortcuts below.
  local   the same library in this process, fed as the bytes arrive (seed 1.2, Network
          Critical: local mode) when the parser actor is down or its breaker is open.
  None    nothing parses (the library failed in this process too): raw output mode.

Switching never misses or doubles a marker. A parser's `offset` minus the bytes it holds (a
sequence cut by a chunk's end, from its ESC; `buffered` in the parser actor's reply) is where
a new parser, in ground state, can start and find everything not yet reported: the hop keeps
the bytes from there on, and the next parser starts a little before it (`SLACK`, a margin
that costs nothing but a few bytes parsed twice). Markers it reports again are
recognised by their offsets (the session drops a marker that starts before the end of the
last one it applied), and a parser actor's reply that comes after the switch is dropped (each
switch is a new generation and a new stream name). The parser actor's offsets make a resent
feed safe on its side too (`parse.feed` is idempotent).

The breaker (protocol/recovery.py) is one for all sessions: a transport failure (timeout,
unavailable, busy, stopping) opens it and every session parses locally; after its cooldown
one session probes the actor again, and a success closes it, after which each session goes
back to the actor with its next output. A stream the parser actor no longer has (it
restarted, or evicted it) is opened again from the ground point; that is not a failure.

While a session's unparsed output is over `parse_lag_bytes` the terminal holds back its acks
to the keeper, so a slow parser slows the shell down instead of growing this buffer.

Three shortcuts keep the parser actor off a command's critical path without taking the
stream from it (every byte is accounted to it, in order, and its markers are applied):
- *Inert output waits, and goes as a count.* An inert chunk (vtparse's `inert`: plain text
  and whole, well-formed CSI and ESC sequences, as plain and coloured output are), arriving
  where the parser actor's stream is in ground state with nothing held (`clean_at`: known
  from its last reply, or the end of a count sent from such a point), cannot hold a marker
  or finish one. It is not sent alone but with the next chunk that is not inert (or after
  INERT_FLUSH_S, or past `parse_feed_bytes`), and then as a count (`parse.feed` with
  `inert`: the stream takes the bytes as parsed unseen) followed by the bytes after it. A
  command's echo and plain or coloured output cost no round trip then, a session whose
  unparsed output is all inert counts as parsed (`when_parsed`), and a `cat` of a log costs
  the parser actor a message a MiB, not the bytes (counted as `inert_bytes`); a chunk that
  cuts a sequence is sent as bytes, and the stream is clean again at the reply that says
  it holds nothing.
- *The end of a command, read here.* A chunk that carries the session's command-end or
  prompt-end marker (633 D or B, with its nonce) is also parsed here, at once, by the same
  library: the command is answered and the prompt known without waiting for a round trip.
  The read-ahead parser goes on from where its last read-ahead stopped, or starts at the
  ground point of the parser actor's last reply when that is further on; it parses at most
  READ_AHEAD_MAX bytes at once, else the chunk waits for the actor as any other. The parser
  actor parses those bytes too, but is not asked for their markers (the feeds' `events_from`);
  any that come all the same (a feed sent before the read-ahead) are dropped as repeats (by
  offset, as after a switch). Output that a read-ahead has parsed to its end counts as parsed
  (`when_parsed`): the next command need not wait for the actor's reply. Counted as
  `read_ahead` in `sys.info`.
- *Output with markers goes in batches.* A chunk with one of the session's markers in it
  (its nonce) is not sent at once: it and what follows go to the parser actor in one feed
  after HOLD_S, or as soon as the bytes from the ground point pass READ_AHEAD_MAX, or when
  something waits on them (`when_parsed`). A quick command (most of what an editor runs) is
  then read ahead and answered here, and its output goes to the parser actor with the next
  ones', after the reply, instead of in two or three feeds before it, each a round trip and
  a turn of the parser process on a core the command's reply needs. A long command's output
  goes out when the hold ends, as before. Counted as `held`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from loguru import logger

from moorage.actors.runtime.outbound import Outbound
from moorage.actors.terminal.scrollback import Scrollback
from moorage.actors.vtparse import (
    CommandFinished,
    CommandLine,
    Cwd,
    Event,
    Mark,
    OutputStart,
    Parser,
    PromptEnd,
    PromptStart,
    Property,
    inert,
)
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import WireError
from moorage.protocol.recovery import BreakerState, CircuitBreaker

if TYPE_CHECKING:
    from moorage.actors.runtime import Actor

PARSE_MODES = ("actor", "local")
FLYING = 4  # feeds in flight per session
SLACK = 16  # bytes before a parser's ground point that the next parser parses again
READ_AHEAD_MAX = 16 << 10  # the most output a read-ahead parses again (in flight, held)
INERT_FLUSH_S = 0.02  # inert output not followed by anything is sent after this
HOLD_S = 0.02  # the longest output with markers waits to go to the parser actor
# errors that say the parser actor is not serving (the breaker counts them)
TRANSPORT = frozenset({"timeout", "unavailable", "busy", "stopping", "deadline_expired",
                       "outcome_unknown"})
MARKERS: dict[str, type] = {t.kind: t for t in (
    PromptStart, PromptEnd, OutputStart, CommandFinished, CommandLine, Property, Cwd, Mark)}
_FIELDS: dict[type, tuple[str, ...]] = {t: tuple(f.name for f in fields(t))
                                        for t in MARKERS.values()}


def marker_from_wire(d: dict[str, Any]) -> Event | None:
    """A marker of the parser actor's reply as the library's record; None for other kinds
    (warnings) or a record this version does not know."""
    cls = MARKERS.get(d.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        return None
    try:
        kw = {n: d[n] for n in _FIELDS[cls] if n in d}
        if "options" in kw:
            kw["options"] = tuple((d["options"] or {}).items())
        return cls(**kw)  # type: ignore[no-any-return]
    except (KeyError, TypeError, AttributeError):
        logger.warning("parser actor sent an unreadable {} record", d.get("kind"))
        return None


class ParserLink:
    """The terminal's side of the parser actor, shared by every session: the mode asked for
    in config, the outbound socket, the breaker, and the counters `sys.info` shows."""

    def __init__(self, actor: Actor, config: dict[str, Any]) -> None:
        mode = str(config.get("parse", "actor"))
        if mode not in PARSE_MODES:
            raise ValueError(f"[actor.terminal] parse must be one of {PARSE_MODES}, not "
                             f"{mode!r}")
        self.mode = mode
        self.target = str(config.get("parser", "parser"))
        self.timeout_s = int(config.get("parse_timeout_ms", 1000)) / 1000
        self.feed_bytes = max(4096, int(config.get("parse_feed_bytes", 1 << 20)))
        self.lag_bytes = max(self.feed_bytes, int(config.get("parse_lag_bytes", 4 << 20)))
        self.breaker = CircuitBreaker(
            threshold=1, cooldown=int(config.get("parse_retry_ms", 1000)) / 1000,
            max_cooldown=int(config.get("parse_retry_max_ms", 10_000)) / 1000)
        self.outbound = Outbound(actor) if mode == "actor" else None
        self.call_later = actor.loop.call_later
        self.counts: Counter[str] = Counter()

    def closed(self, now: float) -> bool:
        """May a session go (back) to the parser actor now? In half-open, this takes the
        one probe."""
        if self.outbound is None:
            return False
        state = self.breaker.current(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self.breaker.allow(now)

    def is_open(self, now: float) -> bool:
        """Open: no session sends to the parser actor (half-open: the probe is on its way)."""
        return self.breaker.current(now) is BreakerState.OPEN

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "breaker": self.breaker.state.value,
                "breaker_transitions": self.breaker.transitions, **self.counts}

    def close(self) -> None:
        if self.outbound is not None:
            self.outbound.close()


class ParseHop:
    """One session's parsing. `take(data)` gets each new byte once, in order; markers go to
    `apply(events, via)` in stream order; `caught_up()` is called when the unparsed
    output fell back under the lag limit."""

    def __init__(self, link: ParserLink, sid: str, nonce: str, base: int,
                 apply: Callable[[list[Event], str], None],
                 caught_up: Callable[[], None], local_until: int = 0) -> None:
        self.link = link
        self.sid = sid
        self.nonce = nonce
        self.apply = apply
        self.caught_up = caught_up
        self.buf = Scrollback(0, base)  # from (about) the ground point to the end
        self.parsed = base  # the serving parser's offset
        self.ahead = base  # every marker before this was applied by a read-ahead
        self.held = 0  # bytes it holds at `parsed`
        self.gen = 0
        self.wave = 0  # a resend within a stream: replies to the feeds before it are dropped
        self.opened = False
        self.sent = base  # what the feeds sent so far cover
        self.flying = 0  # requests awaiting their replies
        self._waiting: list[tuple[int, Callable[[], None]]] = []  # (offset, when parsed)
        # bytes from `sent` on are inert; the stream is clean at `sent`, or a reply due
        # will say whether it is
        self.inert = False
        self.inert_run = (base, base)  # [from, to): bytes known to be inert
        self.clean_at: int | None = base  # the actor's stream is in ground, holding nothing
        self._flush_timer: Any = None
        self._hold_timer: Any = None  # set while output waits to go in one feed
        self._ahead_parser: Parser | None = None  # the read-ahead's, kept to go on from
        # b"\x1b]633;D;" and b"\x1b]633;B;" are in a chunk that ends or draws a prompt; the
        # nonce after them makes it ours (a cheap test before the read-ahead parse)
        self._nonce_b = nonce.encode()
        self.local: Parser | None = None
        self.via: str | None = "actor"
        # A restarted terminal's session gets its predecessor's output again first: parsed
        # here, at once, so the session's state (prompt, running, cwd) is right before it
        # serves an op; what comes after it goes to the parser actor.
        self.local_until = local_until
        if local_until <= base and link.closed(time.monotonic()):
            self._to_actor(base)
        else:
            self._to_local(base, "parse = local" if link.outbound is None else
                           "catching up" if local_until > base else
                           "the parser actor's breaker is open")

    @property
    def end(self) -> int:
        return self.buf.end

    def lag(self) -> int:
        return self.end - self.parsed

    def ground(self) -> int:
        """Where a new parser may start and report every marker not reported yet."""
        return max(self.buf.base, self.parsed - self.held - SLACK)

    def take(self, data: bytes) -> None:
        start = self.end
        self.buf.append(data)
        if self.via == "local":
            self._feed_local(data)
            if self.end >= self.local_until and self.link.closed(time.monotonic()):
                self._to_actor(self.ground())
        elif self.via == "actor":
            ours = self._nonce_b in data
            if ours and (b"633;D;" in data or b"633;B;" in data):
                self._read_ahead()
            if self._holding(ours):
                # (what is unsent is no longer all inert: `inert` says it is, and a caller of
                # when_parsed would take a marker held here for applied)
                self.inert = False
                return
            # every byte not sent yet before this chunk is in the run of inert output
            run_from, run_to = self.inert_run
            continues = run_to == start and run_from <= self.sent
            if inert(data) and (continues or self.sent == start) and (
                    self.clean_at == self.sent or self.flying):
                # (with feeds in flight, the last reply says whether the stream will be clean)
                # nothing here can be a marker: it goes with the next, as a count
                self.inert_run = (run_from if continues else start, self.end)
                self.inert = True
                if self.end - self.sent < self.link.feed_bytes:
                    if self._flush_timer is None:
                        self._flush_timer = self.link.call_later(INERT_FLUSH_S, self._flush)
                    return
            self.inert = False
            self._pump()
        else:
            self.buf.drop_before(self.end)

    def _holding(self, ours: bool) -> bool:
        """Does this chunk wait, with what came before it, to go to the parser actor in one
        feed? From a chunk with one of the session's markers in it, for HOLD_S, while the
        bytes from the ground point are at most READ_AHEAD_MAX."""
        if self.end - self.ground() > READ_AHEAD_MAX:
            self._unhold()
            return False
        if self._hold_timer is not None:
            return True
        if not ours:
            return False
        self.link.counts["held"] += 1
        self._hold_timer = self.link.call_later(HOLD_S, self._hold_over)
        return True

    def _hold_over(self) -> None:
        self._hold_timer = None
        if self.via == "actor":
            self.inert = False  # what the command printed goes with what came before it
            self._pump()

    def _unhold(self) -> None:
        timer, self._hold_timer = self._hold_timer, None
        if timer is not None:
            timer.cancel()

    def _flush(self) -> None:
        self._flush_timer = None
        if self.inert and self.via == "actor" and self._hold_timer is None:
            self.inert = False
            self.link.counts["inert_flushed"] += 1
            self._pump()

    def _read_ahead(self) -> None:
        """The chunk that ends a command (or draws the prompt), with what is still on its
        way to the parser actor before it: its markers, now (see the module docstring).
        The read-ahead parser goes on from where it stopped last time, or starts at the
        ground point of the parser actor's last reply when that is further on."""
        parser = self._ahead_parser
        ground = self.ground()
        if parser is None or parser.offset < ground or parser.offset > self.end:
            parser = self._ahead_parser = None
            start = ground
        else:
            start = parser.offset
        if self.end - start > READ_AHEAD_MAX:
            return  # too far behind: this chunk waits for the parser actor, as any other
        try:
            if parser is None:
                parser = Parser(nonce=self.nonce, offset=start)
            events = parser.feed(self.buf.get(start, self.end))
            whole = parser.buffered_bytes() == 0
        except Exception:  # vtparse promises never to raise; the actor's reply will do
            logger.exception("session {}: read-ahead parse failed", self.sid)
            self._ahead_parser = None
            return
        self._ahead_parser = parser
        self.link.counts["read_ahead"] += 1
        if events:
            self.apply(events, "actor")
        if whole:  # no sequence left open at its end: every marker before it is applied
            self.ahead = max(self.ahead, self.end)
            self._parsed_to()

    def when_parsed(self, offset: int, fn: Callable[[], None]) -> None:
        """Call `fn` once every byte before `offset` has been parsed (at once when it has,
        when what is left is inert, or when no parser runs): the session's state then
        reflects all that output."""
        if self.via != "actor" or self.parsed >= offset or self.ahead >= offset or (
                self.inert and self.clean_at == self.sent):
            fn()
        else:
            self.link.counts["waits"] += 1
            self._waiting.append((offset, fn))
            if self._hold_timer is not None:  # someone waits on it: the output goes now
                self._unhold()
                self._hold_over()

    def _parsed_to(self) -> None:
        if not self._waiting:
            return
        done = max(self.parsed, self.ahead)
        ready = [fn for off, fn in self._waiting if self.via != "actor" or done >= off]
        if ready:
            self._waiting = [(o, f) for o, f in self._waiting
                             if self.via == "actor" and done < o]
            for fn in ready:
                fn()

    def restart_at(self, offset: int) -> None:
        """The stream jumped (it never should): parse on from `offset`, as from a start."""
        self.buf = Scrollback(0, offset)
        self._ahead_parser = None
        self.ahead = offset
        self.parsed, self.held = offset, 0
        self.inert_run = (offset, offset)
        if self.via == "actor":
            self._to_actor(offset)
        elif self.via == "local":
            self._to_local(offset, "the output jumped")

    def close(self) -> None:
        """The session is gone: its stream in the parser actor goes too (best effort)."""
        self._unhold()
        self._close_stream()
        self.gen += 1
        self.via = None
        self._parsed_to()  # an exec waiting for the parser learns that the session is gone

    def _close_stream(self) -> None:
        """The stream in the parser actor this hop is done with, closed there (best effort;
        before `gen` moves on, since the stream is named by it): left open, it would hold
        its parser and buffer until the actor's idle reaper, 300 s on, counted against the
        terminal's streams the while (a churn of sessions had live ones evicted)."""
        if self.via == "actor" and self.opened and self.link.outbound is not None:
            self.link.outbound.call(self.link.target, "parse.close",
                                    {"stream": self._stream()}, timeout=self.link.timeout_s,
                                    on_done=lambda _r, _e: None)

    # --- the parser actor ------------------------------------------------------------------

    def _stream(self) -> str:
        return f"term.{self.sid}.{self.gen}"

    def _to_actor(self, start: int) -> None:
        self._unhold()
        self._close_stream()  # (a stream jumped: the new one starts where the old one ends)
        self.gen += 1
        self.via = "actor"
        self.inert = False
        self.inert_run = (start, start)
        self.clean_at = start  # a new stream, in ground where it starts
        self.local = None
        self.parsed = self.sent = start
        self.held = 0
        self.opened = False
        self.flying = 0
        self.link.counts["to_actor"] += 1
        self._pump()

    def _pump(self) -> None:
        """Send what has not been sent: the open first, then feeds, up to `FLYING` at once
        (one socket, so the parser actor takes them in order, not each after the reply to
        the one before it); nothing while output is held or waits as inert."""
        if self.via != "actor" or self.inert or self._hold_timer is not None:
            return
        if not self.opened:
            self.opened = True
            self._call("parse.open", {"stream": self._stream(), "nonce": self.nonce,
                                      "offset": self.parsed}, self._opened)
        while self.flying < FLYING and self.sent < self.end:
            if self.link.is_open(time.monotonic()):
                self._to_local(self.ground(), "the parser actor's breaker is open")
                return
            inert_from, inert_to = self.inert_run
            if self.clean_at == self.sent and inert_from <= self.sent < inert_to:
                end = min(inert_to, self.sent + self.link.feed_bytes)
                self.link.counts["inert_feeds"] += 1
                self.link.counts["inert_bytes"] += end - self.sent
                self._call("parse.feed", {"stream": self._stream(), "offset": self.sent,
                                          "create": False, "inert": end - self.sent},
                           self._fed)
                self.sent = self.clean_at = end  # (nothing in it can leave a sequence open)
                continue
            end = min(self.end, self.sent + self.link.feed_bytes)
            data = self.buf.get(self.sent, end)
            self.link.counts["feeds"] += 1
            # the bytes as an attachment: neither packed into the body here nor unpacked
            # out of it there (a copy on each side of every byte of output)
            self._call("parse.feed", {"stream": self._stream(), "offset": self.sent,
                                      "create": False, "events_from": self.ahead},
                       self._fed, (data,))
            self.sent = end
            self.clean_at = None  # until a reply says where the stream stands

    def _call(self, op: str, args: dict[str, Any],
              then: Callable[[dict[str, Any]], None], attachments: tuple[bytes, ...] = ()
              ) -> None:
        outbound = self.link.outbound
        assert outbound is not None
        gen, wave = self.gen, self.wave
        self.flying += 1
        sent = time.monotonic()

        def done(reply: Reply | None, err: WireError | None) -> None:
            # The breaker hears every outcome, a stale one too: it may be the half-open probe,
            # and a probe never reported would hold the breaker half-open. (A failure of a
            # feed sent before the parser actor last answered is not counted: a feed to the
            # one that was killed times out after its successor serves.)
            now = time.monotonic()
            if err is not None and err.name in TRANSPORT:
                self.link.breaker.record_failure(now, sent)
            else:
                self.link.breaker.record_success(now)  # answered: the actor is alive
            if gen != self.gen or wave != self.wave:
                return  # from before a switch or a resend: dropped
            self.flying -= 1
            if err is not None:
                self._failed(op, err)
                return
            assert reply is not None
            then(reply.body)

        outbound.call(self.link.target, op, args, timeout=self.link.timeout_s, on_done=done,
                      attachments=attachments)

    def _declined(self, body: dict[str, Any]) -> bool:
        """The parser actor runs its raw_passthrough fallback (it parses nothing): for the
        terminal that is as good as down."""
        if body.get("mode") != "raw_passthrough":
            return False
        self.link.breaker.record_failure(time.monotonic())
        self._to_local(self.ground(), "the parser actor passes everything through")
        return True

    def _opened(self, body: dict[str, Any]) -> None:
        # the feeds went out behind it (a new stream name starts where asked); what the open
        # held back of the `FLYING` goes now
        if not self._declined(body):
            self._pump()

    def _fed(self, body: dict[str, Any]) -> None:
        if self._declined(body):
            return
        events = [e for e in map(marker_from_wire, body.get("events", ())) if e is not None]
        lagging = self.lag() > self.link.lag_bytes
        self.parsed = int(body["offset"])
        self.held = int(body.get("buffered", 0))
        self.buf.drop_before(self.ground())
        self.link.counts["actor_events"] += len(events)
        if body.get("unparsed"):
            # the parser's event budget cut the feed short: the feeds after it would not
            # fit (stream_gap); drop their replies and send again from its offset
            self.wave += 1
            self.flying = 0
            self.sent = self.parsed
            self.inert = False  # (what is unsent now is what the run did not cover)
            self.inert_run = (self.sent, self.sent)
        if self.flying == 0 and self.parsed == self.sent:
            self.clean_at = self.sent if self.held == 0 else None
        if events:
            self.apply(events, "actor")
        if lagging and self.lag() <= self.link.lag_bytes:
            self.caught_up()
        if self.inert and self.flying == 0 and (self.clean_at != self.sent or self._waiting):
            self.inert = False  # it goes now: as a count where the stream is clean, else bytes
        self._parsed_to()
        self._pump()

    def _failed(self, op: str, err: WireError) -> None:
        if err.name in ("stream_not_found", "stream_gap"):
            # The parser actor restarted or evicted the stream: it is alive; start a new
            # stream at the ground point.
            self.link.counts["reopened"] += 1
            self._to_actor(self.ground())
            return
        expected = err.detail.get("expected") if isinstance(err.detail, dict) else None
        if err.name == "bad_args" and op == "parse.feed" and expected == self.parsed:
            # A count of inert bytes the stream could not take where our replies said it was
            # clean (inside an OSC dropped past the parser's cap, which holds nothing to read
            # again: `buffered` 0, the 150 KB command line of an E marker): the bytes go
            # instead, from where it stands; the feeds sent after the count are sent again.
            self.link.counts["inert_refused"] += 1
            self.wave += 1
            self.flying = 0
            self.sent = self.parsed
            self.clean_at = None
            self.inert = False
            self.inert_run = (self.sent, self.sent)
            self._pump()
            return
        if err.name not in TRANSPORT:  # (the breaker has heard it already, in `done`)
            logger.warning("session {}: {} answered {}: {}", self.sid, op, err.name,
                           err.message)
        self._to_local(self.ground(), f"{op}: {err.name}")

    # --- in this process ----------------------------------------------------------------------

    def _to_local(self, start: int, reason: str) -> None:
        self._unhold()
        self._ahead_parser = None
        self._close_stream()
        self.gen += 1  # a reply still on its way is dropped
        self.flying = 0
        self.inert = False
        self.via = "local"
        self.link.counts["to_local"] += 1
        logger.info("session {}: parsing in-process from offset {} ({})", self.sid, start,
                    reason)
        try:
            self.local = Parser(nonce=self.nonce, offset=start)
        except ValueError:
            logger.exception("session {}: no local parser; raw output", self.sid)
            self._raw()
            return
        self.parsed, self.held = start, 0
        self._feed_local(self.buf.get(start, self.end))
        self.caught_up()  # acks held back for the parser actor's lag may go now
        self._parsed_to()

    def _feed_local(self, data: bytes) -> None:
        parser = self.local
        if parser is None:
            return
        try:
            events = parser.feed(data)
        except Exception:  # vtparse promises never to raise; if it does, stop parsing
            logger.exception("session {}: the parser failed; raw output mode", self.sid)
            self._raw()
            return
        self.parsed = parser.offset
        self.held = parser.buffered_bytes()
        self.buf.drop_before(self.ground())
        self.link.counts["local_events"] += len(events)
        if events:
            self.apply(events, "local")

    def _raw(self) -> None:
        self._unhold()
        self.local = None
        self.inert = False
        self.via = None
        self.link.counts["raw"] += 1
        self.buf.drop_before(self.end)
        self.apply([], "raw")
        self.caught_up()
        self._parsed_to()
