"""One terminal session as the terminal actor sees it: its output stream, its markers, and the
command being run in it. The actor (actor.py) owns the sockets; this module decides, and
reaches the actor only through `SessionHost`.

Output is in the session's ring (ring.py), which the keeper writes and this process maps:
`on_ring(end)` takes the bytes up to `end` that are new here, with their absolute offsets,
out on `term.out.<id>` and to the session's parser hop (parsehop.py: the parser actor, or the
library in this process). A byte at an offset already seen is not taken twice. The ring is
also the scrollback. Markers come back in stream order with their offsets; one that starts
before the end of the last marker applied is one a new parser found again after a switch, and
is dropped, so no marker counts twice. A marker from before the command was sent never
completes it (with the parser actor, markers may arrive after the next command was written).

What the session has handled (`handled`) is what the keeper may drop from its window: output
published, not too far ahead of its parser, and taken by every consumer that acknowledges
(`term.ack`: a consumer silent for `consumer_timeout_s` while behind is dropped, so it never
holds the session for good). Only this session's shell is slowed down by it.

How a command completes, by the session's mode (seed 2.1: the fallback chain):
  integration     the command is sent once the last trusted marker is the prompt's B (the
                  shell reads a new command line: not a question, a line of its own, a prompt
                  still being drawn; and no input typed with term.write since waits there: it
                  is refused `session_busy` then, the line left as typed, until a B after a
                  line was let go), as one bracketed paste when it has more than one line, a
                  control character or over PASTE_FROM bytes; the exec completes on the
                  first trusted D after it, with D's exit code, the text between C and D, and
                  the cwd of the P;Cwd before D. Markers without the session's nonce are
                  ignored: program output cannot end a command. A trusted prompt after it
                  with no C, its line editor having let the line go (bash: a failed history
                  expansion, histverify, histreedit), means nothing ran: answered at once, as
                  a D without an exit code is, and the line the shell may hold again
                  cancelled (^C) before the next command. A spelling question (zsh's
                  SPROMPT, marked) is answered `n`: the command runs as it was given.
                  No trusted C or D within `integration_detect_ms` (5 s) of sending, its
                  input read, means the integration is broken: the session drops to
                  no_integration and this exec completes as one (the command is not sent
                  again: it may have run). So does a C whose shell is back in its line
                  editor for that long without a D (`exec bash`: a shell without the nonce);
                  the session, too, when that C is of a command typed (term.write).
  no_integration  sent as typed (no control character but line ends); output collected
                  until the session is quiet for `quiet_ms`; exit code None; the echoed
                  command and the next prompt are cut off. A shell started with the
                  integration that has not shown its first prompt yet (a slow rc file) is not
                  guessed at: the command ends at its D. A trusted C or D brings the
                  integration back (so does a trusted prompt), and a one-line command whose C
                  or D it is ends at its D.
  raw_output      as no_integration, with escape sequences left in (the parser failed).
A command past its timeout gets SIGINT in its process group and the caller a `timeout` error;
one whose C has not come yet gets ^C typed instead, which also drops what the shell has not
read of it. A trusted marker is then due within `integration_detect_ms`; with none, and the
shell itself in the foreground, the session goes on without the integration.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgpack
from loguru import logger

from moorage.actors.runtime import Call
from moorage.actors.terminal.execs import (
    CUT_BEFORE,
    ZSH_PROMPT_SP,
    Exec,
    canonical,
    clean_cut,
    cut_echo_and_prompt,
    line_editing,
    pending_line,
    runs_its_launch,
    shell_activity,
    shell_in_foreground,
    unread_input,
)
from moorage.actors.terminal.outbuf import OutputBuffer, Timers
from moorage.actors.terminal.parsehop import ParseHop, ParserLink
from moorage.actors.terminal.ring import SessionRing
from moorage.actors.vtparse import (
    Cleaner,
    CommandFinished,
    CommandLine,
    Cwd,
    Event,
    OutputStart,
    PromptEnd,
    PromptStart,
    clean,
    clean_fast,
)
from moorage.protocol.errors import WireError, fail

MODES = ("integration", "no_integration", "raw_output")
PASTE_START, PASTE_END = b"\x1b[200~", b"\x1b[201~"
# A command with any of these goes as a paste (with the integration): typed, a tab completes,
# ^A/^U/ESC edit the line, ^D ends the shell; pasted, a line editor takes each as text.
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Bytes the terminal acts on itself, before any shell reads them, paste or not (with the usual
# stty settings: ^C, ^\ and ^Z signal the foreground group, ^S and ^Q stop and start output,
# and what follows such a byte is read outside the paste): refused.
TERMINAL_ACTS_ON = re.compile(rb"[\x03\x1c\x1a\x13\x11]")
# Without the integration a command is typed: only its line ends may be control characters.
TYPED_REFUSED = re.compile(rb"[\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")
# What a line editor writes when it hands a line to its shell and leaves the terminal (bash's
# readline and zsh's zle, bracketed paste on: moorage's bash.sh turns it on)
LINE_TAKEN = b"\x1b[?2004l"
AHEAD_MAX = 4096  # of what is typed while a command runs, the tail looked at (Session._ahead)
# 133 A's option on zsh's spelling-correction question (SPROMPT, moorage.zsh)
QUESTION = ("k", "q")
# A line longer than this goes as a paste too: zle redraws the line for each character typed
# (a 20 KB line typed takes zsh 3 s, pasted 60 ms), and a command typed more slowly than its
# timeout was cut in two by the SIGINT, its tail then run as a command of its own.
PASTE_FROM = 1024
# Sent before a command with the integration, which binds it (bash.sh, moorage.zsh) to turn
# history expansion off for the line that follows: the command runs as it was sent (`echo
# "fix!x"` ran a line of the user's history), while a line typed with term.write expands as
# the user's shell has it. A line editor without the binding drops all three keys. Not sent
# for a command of letters, digits, blanks and the shell's own punctuation only (NO_HISTORY_
# CHARACTER): a history character (`!`, a first `^`, or one of the user's choosing) is one
# that has no other use on a command line, or every use of it would be expanded. bash draws
# its prompt again after the binding's function, output that costs the command some 100 µs
# more on its way through the terminal.
VERBATIM = b"\x1b[\x7f"
NO_HISTORY_CHARACTER = re.compile(rb"[\w\s./,:=+\-\"'$|&;()<>*?\[\]{}~`#]*")


class HostLoop(Timers, Protocol):
    def defer(self, fn: Callable[[], None]) -> None: ...


class SessionHost(Protocol):
    """What a session needs of the actor that holds it: its settings, the parser link it
    shares with the other sessions, the way out for its output and records, and its keeper."""

    scrollback_bytes: int
    detect_s: float
    quiet_s: float
    max_output: int
    output_window_s: float
    parse_link: ParserLink
    loop: HostLoop

    def integration_allowed(self) -> bool: ...
    def need_tick(self, s: Session) -> None: ...
    def publish_output(self, s: Session, off: int, data: bytes, replay: bool) -> None: ...
    def publish_command(self, s: Session, body: dict[str, Any]) -> None: ...
    def output_published(self, s: Session) -> None: ...
    def keeper_write(self, s: Session, data: bytes,
                     refused: Callable[[WireError], None]) -> bool: ...
    def keeper_signal(self, s: Session, sig: str, to: str) -> None: ...
    def keeper_interrupt(self, s: Session) -> None: ...
    def keeper_drop_input(self, s: Session) -> None: ...
    def keeper_meta(self, s: Session) -> None: ...
    def when_keeper(self, fn: Callable[[bool], None]) -> None: ...
    def acks_ready(self) -> None: ...


PUBLISH_CHUNK = 128 << 10  # the largest term.out message
# A command's output cleaned a slice a loop turn when it needs the parser (escape-heavy
# bytes cost it about a microsecond each: a megabyte in one go held the loop for a second).
CLEAN_SLICE = 16 << 10
TIMEOUT_TAIL = 16 << 10  # what a timed-out command's answer is cleaned from (it keeps 4096)
PROMPT_TAIL = 4096  # where the prompt of a shell that does not mark it is looked for


class RingScroll:
    """The session's scrollback, read from its ring: what `term.scrollback`, the output of a
    command without markers, and pressure trimming see."""

    __slots__ = ("s",)

    def __init__(self, s: Session) -> None:
        self.s = s

    @property
    def base(self) -> int:
        """The oldest byte served: what the ring still holds, at most `scrollback_bytes`."""
        s = self.s
        if s.ring is None:
            return s.offset
        return min(max(s.ring.base, s.offset - s.host.scrollback_bytes), s.offset)

    @property
    def end(self) -> int:
        return self.s.offset

    def get(self, start: int, end: int) -> bytes:
        ring = self.s.ring
        return b"" if ring is None else ring.read(max(start, self.base), min(end, self.s.offset))

    def trim(self, keep: int) -> int:
        ring = self.s.ring
        return 0 if ring is None else ring.trim(keep)


MAX_CONSUMERS = 64  # clients acknowledging one session's output at a time


class Consumer:
    """One client that acknowledges a session's output (`term.ack`)."""

    __slots__ = ("acked", "heard")

    def __init__(self, acked: int, heard: float) -> None:
        self.acked = acked
        self.heard = heard


_SPEC_KEY = msgpack.packb("spec")
SPLICE_SPEC_FROM = 1024  # bytes of packed spec


class MetaPacker:
    """msgpack of a session's `meta`, written on every exec before the command goes out.
    Its `spec` (the creation request, the whole environment included: some KB, 6-12 us of
    msgpack for 75 variables here, hot) never changes once the session exists, so it is packed
    once and spliced in after the rest: the map's header then counts it too. (A small spec
    costs less to pack again than the splice does.)"""

    def __init__(self) -> None:
        self._spec: Any = None
        self._spec_packed = b""

    def pack(self, meta: dict[str, Any]) -> bytes:
        spec = meta.get("spec")
        if spec is None:
            return msgpack.packb(meta, use_bin_type=True)
        if spec is not self._spec:
            self._spec, self._spec_packed = spec, msgpack.packb(spec, use_bin_type=True)
        if len(self._spec_packed) < SPLICE_SPEC_FROM:
            return msgpack.packb(meta, use_bin_type=True)
        rest = msgpack.packb({k: v for k, v in meta.items() if k != "spec"}, use_bin_type=True)
        n = len(meta)
        # `rest` starts with the header of a map of n - 1: a fixmap (1 byte) below 16, else
        # a map16 (3)
        skip = 1 if rest[0] & 0xF0 == 0x80 else 3
        head = bytes((0x80 | n,)) if n < 16 else b"\xde" + n.to_bytes(2, "big")
        return head + rest[skip:] + _SPEC_KEY + self._spec_packed


class Session:
    def __init__(self, host: SessionHost, sid: str, meta: dict[str, Any],
                 ring: SessionRing | None = None, master: int | None = None, base: int = 0,
                 replay_until: int = 0, catch_up: int = 0) -> None:
        self.host = host
        self.id = sid
        self.meta = meta
        self.meta_packer = MetaPacker()
        self.nonce: str = meta["nonce"]
        self.mode: str = meta.get("mode", "integration")
        self.kind: str = meta.get("kind", "other")
        self.shell: str = meta.get("shell", "")
        self.cwd: str | None = meta.get("cwd")
        self.pid = 0
        self.started: int | None = None  # the shell's start time (keeper.ptys.process_start)
        self.tty = ""
        self.cols = 80
        self.rows = 24
        self.offset = base  # the next byte expected
        # output and command records on their way out, coalesced (outbuf.py)
        self.out = OutputBuffer(
            host.output_window_s, host.loop,
            lambda off, data, replay: host.publish_output(self, off, data, replay),
            lambda record: host.publish_command(self, record), published=base,
            chunk=PUBLISH_CHUNK, on_timed_flush=lambda: host.output_published(self))
        self.ring = ring  # the output (shared with the keeper); None until its fds come
        self.master = master  # our copy of the PTY master (shared custody, input)
        self.hold_acks = False  # restarted: waiting for the output's subscribers to return
        self.replay_until = replay_until  # bytes before this were seen by our predecessor
        self.scroll = RingScroll(self)
        self.consumers: dict[str, Consumer] = {}  # client sid -> what it acknowledged
        self.keeper_paused = False  # the keeper stopped reading for a full window
        self.marker_end = base  # end of the last marker applied
        self.repeated_markers = 0  # found again by a parser that took over, dropped
        self.state = "starting"  # starting | prompt | running | exited
        self.exec: Exec | None = None
        self.exited: dict[str, Any] | None = None
        self.last_output = time.monotonic()
        self.last_use = time.monotonic()
        self.command_line: str | None = None
        self.command_start: tuple[int, float] | None = None  # (offset, time)
        self.untrusted = 0
        self.output_skipped = 0  # bytes the ring no longer held when they were to be taken
        self.cleaning: list[Callable[..., None]] = []  # answers being cleaned (_text_then)
        self.keeper_writes = 0  # input sent through the keeper, not answered yet
        self.keeper_backlog = False  # the keeper holds input not yet written to the PTY
        # one-shot callbacks: the first prompt (or the session settled without one, or gone)
        self.on_prompt: list[Callable[[], Any]] = []
        self.on_quiet: list[Callable[[], Any]] = []  # one-shot callbacks: output went quiet
        self._quiet_from = 0.0  # monotonic: quiet counts from here or the last output
        self.last_prompt_at = -1  # offset of the last trusted prompt start
        self.integration_back = 0  # times a trusted marker undid "no_integration"
        # Where the last trusted marker says the shell is: "prompt" (B: it reads a new command
        # line), "drawing" (A), "more" (a continuation prompt), "question" (zsh's spelling
        # question), "running" (C), "finished" (D); None before any (a command then goes as
        # it always did). A command goes to the shell only at "prompt".
        self.shell_at: str | None = None
        # A line the shell holds is being cancelled (_cancel_line): the ^C's D is due, and no
        # prompt before it is one the next command may go to. `cancel_typed`: when the ^C
        # was typed (monotonic), None while it waits for the line editor to read keys.
        self.cancel_pending = False
        self.cancel_typed: float | None = None
        # monotonic: a trusted D or prompt is due by then (a timed-out command was interrupted)
        self.answer_by: float | None = None
        # as Exec.editing_since, for a command no exec waits for (typed with term.write),
        # looked at every quiet_s while it runs (_watch_typed)
        self.editing_since: float | None = None
        self._typed_timer: Any = None
        # Input typed with term.write since the last prompt that took it: the output offset
        # when it was written (None: none). With the integration no command goes while it is
        # set: it would be added to a line the shell holds, or typed into what that input
        # started. Cleared by a trusted B drawn after a line was let go since (its D, or the
        # line editor's LINE_TAKEN: not a prompt drawn again), with none of it left unread.
        self.typed_at: int | None = None
        self.typed_ended = False  # a trusted D came since typed_at
        # What was typed while a command ran with the terminal in canonical mode (its last
        # AHEAD_MAX bytes): a line begun there and not ended is type-ahead (`pending_line`),
        # which the shell takes at its next prompt as the start of that prompt's line; the
        # command's D then does not count as that input's line let go.
        self._ahead = b""
        self.typed_writes = 0  # term.write input the keeper has not answered for yet
        self._typed_notes = 0  # term.writes noted so far (note_typed: which is the last)
        self._start_record: dict[str, Any] | None = None  # waiting for its E (bash)
        self._via = "local"  # the parser whose markers are being applied
        self._records: list[dict[str, Any]] = []  # term.cmd records, published after a batch
        self._taking = False  # in on_output: records wait for the output they come from
        # what the keeper resends to a successor (all it read, acknowledged or not) is
        # parsed here as it arrives, so the session's state is right before an op is served
        self.hop = ParseHop(host.parse_link, sid, self.nonce, base, self._apply,
                            host.acks_ready, local_until=max(replay_until, catch_up))

    # --- output ---------------------------------------------------------------------------------

    def take_custody(self, master: int, ring_fd: int) -> None:
        """Our copies of the session's master and ring, passed by the keeper (a ring that
        cannot be used raises with nothing of ours changed: the caller closes both)."""
        ring = SessionRing.open(ring_fd)
        self.drop_custody()
        os.set_blocking(master, False)
        self.master = master
        self.ring = ring

    def drop_custody(self) -> None:
        fd, self.master = self.master, None
        if fd is not None:
            os.close(fd)
        ring, self.ring = self.ring, None
        if ring is not None:
            ring.close()

    def on_ring(self, end: int) -> None:
        """The ring holds output up to `end`: take what is new here, in publishable pieces.
        What the keeper committed since it said so is taken too (its bytes are in the ring
        before its offset moves): output that came in pieces while this process was busy is
        handled, published and parsed once, and the keeper's word of the later pieces finds
        nothing new."""
        ring = self.ring
        if ring is None:
            return
        end = max(end, ring.write_off)
        while self.offset < end:
            start = max(self.offset, ring.base)
            stop = min(end, start + PUBLISH_CHUNK)
            data = ring.read(start, stop)
            if not data:
                return
            self.on_output(start, data)

    def on_output(self, off: int, data: bytes) -> bool:
        """Take a chunk at `off`; False if it was entirely a repeat."""
        end = off + len(data)
        if end <= self.offset:
            return False
        if off < self.offset:
            data = data[self.offset - off :]
            off = self.offset
        elif off > self.offset:
            # The ring never skips what was not handled; if it ever did, say so and carry on.
            logger.error("session {}: output jumps from {} to {}", self.id, self.offset, off)
            self.output_skipped += off - self.offset
            self.marker_end = off
            self.hop.restart_at(off)
        self.offset = end
        self.last_output = time.monotonic()
        # The parse first: a command that ends here is answered sooner. The records its
        # markers make go out after this output (they speak of it), which then is one
        # message with the output held before it.
        self._taking = True
        try:
            self.hop.take(data)
        finally:
            # (published whatever the parse met: the offset has moved past these bytes,
            # and no one would take them again)
            self._taking = False
            self.out.output(off, data, off < self.replay_until)
            if self._records:
                self._send_records()
        return True

    def _apply(self, events: list[Event], via: str) -> None:
        """Markers from the parser hop, in stream order (`via`: actor, local; raw when
        nothing can parse any more)."""
        if via == "raw":
            self.set_mode("raw_output")
            return
        self._via = via
        try:
            self._apply_markers(events)
        finally:
            # Command records go out after the markers, so an exec that ends here is
            # answered first (before any other op runs, they are retained all the same);
            # markers of output being taken, after that output (on_output).
            if not self._taking:
                self._send_records()

    def _send_records(self) -> None:
        records, self._records = self._records, []
        for record in records:
            self.out.command(record)

    def _apply_markers(self, events: list[Event]) -> None:
        for ev in events:
            if ev.start < self.marker_end:
                self.repeated_markers += 1
                continue
            self.marker_end = ev.end
            replay = ev.start < self.replay_until
            trusted = getattr(ev, "trusted", False)
            if not trusted:
                if isinstance(ev, (CommandFinished, OutputStart, PromptStart, CommandLine)):
                    self.untrusted += 1
                continue
            if isinstance(ev, PromptStart):
                if ev.continuation:  # (PS2: not a prompt for a new command)
                    self.shell_at = "more"
                    if not replay:
                        self._on_continuation(ev.start)
                    continue
                if QUESTION in ev.options:  # (nor is a question before the command runs)
                    self.shell_at = "question"
                    if not replay:
                        self._on_question(ev.start)
                    continue
                self._on_prompt_start(ev.start, replay)
                self._on_prompt()
            elif isinstance(ev, PromptEnd):
                self.shell_at = "prompt"
                if self.typed_at is not None and not replay:
                    self._typed_prompt(ev.start)
                self._on_prompt()
            elif isinstance(ev, CommandLine):
                self.command_line = ev.command
                if self._start_record is not None:
                    self._publish_start()
            elif isinstance(ev, OutputStart):
                self.shell_at = "running"
                self._on_output_start(ev.end, replay)
                if self.mode == "no_integration" and not replay:
                    self._integration_back()
            elif isinstance(ev, CommandFinished):
                self.shell_at = "finished"
                self.answer_by = None
                self.cancel_pending = False
                if self.typed_at is not None and ev.start >= self.typed_at and \
                        not pending_line(self._ahead):
                    self.typed_ended = True
                self._ahead = b""
                self._on_finished(ev.start, ev.exit_code, replay)
                if self.mode == "no_integration" and not replay:
                    self._integration_back()
            elif isinstance(ev, Cwd):
                self.cwd = ev.path
        ex = self.exec
        if ex is not None and ex.held:
            # (after the whole batch, and on the next turn, when what a read-ahead parsed
            # counts as parsed: a marker after a B may say the shell is not at it any more)
            self.host.loop.defer(lambda: self._try_send(ex))

    def _on_continuation(self, at: int) -> None:
        """The shell asks for more of a command it has not started: one sent by term.exec is
        incomplete (an open quote, a trailing backslash, an unfinished block or
        here-document). Waiting would end in the integration given up and the next commands
        read into it; instead its input is cancelled (^C: the shell draws a new prompt) and
        the call answered `bad_args`, not run."""
        ex = self._exec_at(at)
        if ex is None or ex.done or ex.out_start is not None or not ex.whole:
            return  # (a command sent line by line asks for its next lines so: no sign)
        self._cancel_line()
        # The next command waits for the prompt the ^C brings, as a starting shell's first
        # (sent before it, it would be read into the cancelled line, or find its end).
        if self.state != "exited":
            self.state = "starting"
        self._fail(WireError.of(
            "bad_args", f"{ex.command[:80]!r} is not a whole command: the shell asked for "
            "more of it (an open quote, a trailing backslash, an unfinished block or "
            "here-document); its input was cancelled, nothing ran"), ran=False)

    def _on_question(self, at: int) -> None:
        """The shell asks whether to correct a word of the line it read (zsh's CORRECT and
        CORRECT_ALL; its SPROMPT is marked) and waits for a key. For a command of term.exec
        the answer is `n`: the command runs as it was given, as in a shell without the
        option (a wrong name then fails as one, `command not found`, 127). Unanswered, the
        question took the command's time, and the next command typed answered it. A question
        to whoever types at the terminal is left to them."""
        ex = self._exec_at(at)
        if ex is not None and not ex.done:
            self.host.keeper_write(self, b"n", lambda _err: None)

    def _on_prompt_start(self, at: int, replay: bool) -> None:
        """A trusted prompt (A) for a new command line."""
        self.shell_at = "drawing"
        self.last_prompt_at = at
        if not self.cancel_pending:  # (a cancelled line is answered by its D, not a prompt)
            self.answer_by = None
        unprompted = self.meta.pop("unprompted", None) is not None
        if unprompted:
            self.host.keeper_meta(self)
        if replay:
            return
        ex = self._exec_at(at)
        if ex is not None and not unprompted and self._went_back(ex, at):
            self._not_run(ex, at)
        if self.mode == "no_integration":
            self._integration_back()
            ex = self.exec
            if ex is not None and not ex.done and ex.mode == "no_integration" and \
                    ex.out_start is None:
                # Sent while the shell was not yet marking (read after this prompt): it ends
                # at its own D now, not at a quiet spell, which would let the next command be
                # typed into it and answered by its D. (Its markers are waited for afresh.)
                ex.until_marked = True
                ex.detect_by = time.monotonic() + self.host.detect_s

    def _went_back(self, ex: Exec, at: int) -> bool:
        """Did the shell come back to its prompt at `at` without running `ex`? No C since it
        was sent (a D would have answered it), and its line editor let a line go since:
        the new prompt is the next command line's, not the same prompt drawn again (a
        resize, a theme's redraw) while the command is still being read."""
        # (marked only: a command typed line by line without the integration has prompts
        # between its lines, each with its own line let go)
        return ex.sent and ex.marked and not ex.done and ex.out_start is None and \
            LINE_TAKEN in self.scroll.get(ex.sent_off, at)

    def _not_run(self, ex: Exec, at: int) -> None:
        """The shell read the command and drew its next prompt without running it and
        without the D that says so (bash, when history expansion fails: `echo "fix!x"`, event
        not found; with histverify or histreedit, the line put back for editing; bash runs
        no PROMPT_COMMAND then; a command is expanded only where its line editor lost the
        VERBATIM binding). Answered now as the D without an exit code answers: nothing
        ran, `exit_code` None, the shell's message as the output; the integration stays.
        Waiting for a D there would have dropped the session to no_integration after
        integration_detect_ms. The line the shell may hold again is cancelled (^C) before
        the next command goes, which would be added to it."""
        self._complete(None, ex.sent_off, at, self._via, shape=lambda text:
                       cut_echo_and_prompt(text, ex.command, None))
        self._cancel_line()

    def _cancel_line(self) -> None:
        """Drop the line the shell holds (its input, a continuation, a question) with a ^C:
        the shell draws a new prompt after a D without an exit code. The next command waits
        for that prompt's B; with no D within integration_detect_ms, the session goes on
        without the integration (`_unanswered`)."""
        self.cancel_pending = True
        self.cancel_typed = None
        now = time.monotonic()
        self.answer_by = now + self.host.detect_s
        self.host.need_tick(self)
        self._type_cancel(now)

    def _type_cancel(self, now: float) -> None:
        """Type the ^C of a cancel once the shell's line editor waits for a key (the shell in
        the foreground, sleeping, the terminal neither canonical nor echoing): a SIGINT that
        finds the shell elsewhere (zsh running its precmd hooks, a line editor not yet
        reading) may be lost, and the line kept. Typed again when no D came of it, all the
        output parsed, with the line editor waiting again `quiet_s` on."""
        typed = self.cancel_typed
        if typed is not None and now - typed < self.host.quiet_s:
            return
        master = self.master
        seen = shell_activity(self.pid)
        if shell_in_foreground(master, self.pid) is False or \
                line_editing(master) is False or (seen is not None and seen[0]):
            return

        def type_it() -> None:
            if self.cancel_pending and self.cancel_typed == typed:
                self.cancel_typed = time.monotonic()
                self.host.keeper_interrupt(self)

        if typed is None:
            type_it()
        else:  # (its D may be in output the parser actor has not answered for yet)
            self.hop.when_parsed(self.offset, type_it)

    def _integration_back(self) -> None:
        """A trusted marker in a session whose integration was given up (its shell took
        longer than integration_detect_ms to its first prompt: a slow rc file; or a command
        showed no marker in time): only a shell given this session's nonce prints one, so its
        integration works, and the next command runs with it (exit codes, records)."""
        logger.info("session {}: a trusted marker came after all; integration back", self.id)
        self.set_mode("integration")
        self.integration_back += 1

    def _on_prompt(self) -> None:
        if self.state != "exited":
            self.state = "prompt"
        self._release_prompt_waiters()

    def note_typed(self, data: bytes) -> Callable[[bool], None]:
        """Input typed with term.write (`data`) is on its way to the shell: with the
        integration, no command of term.exec goes until a prompt has taken it
        (`_typed_prompt`). Returns what to call once the keeper has answered for it:
        `written` False when it never reached the shell (refused, or no keeper came back for
        it), which, if no other input was typed since, lets the mark go (nothing of it waits
        for a prompt to take it)."""
        if self.shell_at == "running" and self.exec is None and canonical(self.master):
            self._ahead = (self._ahead + data)[-AHEAD_MAX:]
        else:  # (at a line editor, or to a program that reads keys: taken as they come)
            self._ahead = b""
        self.typed_at = at = self.offset
        self.typed_ended = False
        self.typed_writes += 1
        self._typed_notes += 1
        note = self._typed_notes

        def answered(written: bool) -> None:
            self.typed_writes = max(0, self.typed_writes - 1)
            if not written and note == self._typed_notes and self.typed_at == at:
                self.typed_at = None
                self.typed_ended = False

        return answered

    def _typed_prompt(self, at: int) -> None:
        """A trusted B at `at` with input typed since the last one that took it: this one
        has if a line was let go after that input was typed (a D, or the line editor's
        LINE_TAKEN; a prompt drawn again, as on a resize, still holds the line) and none of
        it is still on its way to the keeper or unread by the shell (read after this B, it
        would be this prompt's line)."""
        typed = self.typed_at
        if typed is None or at < typed:
            return
        if not self.typed_ended and LINE_TAKEN not in self.scroll.get(typed, at):
            return
        if self.typed_writes or unread_input(self.master):
            return
        self.typed_at = None
        self.typed_ended = False

    def _exec_at(self, at: int) -> Exec | None:
        """The exec a marker at `at` belongs to: none if it came before the command was
        sent (the parser actor's markers can arrive after the next command went out), nor
        while the command waits for the prompt to be sent."""
        ex = self.exec
        return ex if ex is not None and not ex.held and at >= ex.sent_off else None

    def _on_output_start(self, at: int, replay: bool) -> None:
        if self.exited is None:
            self.state = "running"
        self.command_start = (at, time.time())
        ex = self._exec_at(at)
        if self.exec is None:
            self.editing_since = None
            if self._typed_timer is None:
                self._typed_timer = self.host.loop.call_later(self.host.quiet_s,
                                                              self._watch_typed)
        if ex is not None and ex.out_start is None:
            if ex.marked:
                ex.out_start = at
            elif not replay and _one_line(ex.command):
                # (a session without the integration whose shell marks after all: the
                # command ends at its D, not at a quiet spell; its mode stays as it was sent)
                ex.out_start = at
                ex.until_marked = True
        if not replay:
            self._start_record = {"event": "start", "command": None, "cwd": self.cwd,
                                  "offset": at, "time": self.command_start[1]}
            # bash sends E after C (C comes from PS0, E from the DEBUG trap), zsh before it;
            # a command that started from term.exec is known already
            if self.command_line is not None or ex is not None:
                self._publish_start()

    def _publish_start(self) -> None:
        record, self._start_record = self._start_record, None
        assert record is not None
        ex = self._exec_at(record["offset"])
        record["command"] = self.command_line or (ex.command if ex is not None else None)
        self._records.append(record)

    def _on_finished(self, at: int, exit_code: int | None, replay: bool) -> None:
        start = self.command_start
        if self._start_record is not None:  # no E came (a bare subshell, in bash)
            self._publish_start()
        if self.exited is None:
            self.state = "prompt"
        self.command_start = None
        ex = self._exec_at(at)
        if ex is not None and ex.marked and ex.out_start is None and ex.command and \
                not replay and self.ring is not None and self.scroll.base <= ex.sent_off \
                and b"\n" not in self.scroll.get(ex.sent_off, at):
            # Not the command's: the shell has not read its line (a line editor that takes
            # one ends it, but an empty one with readline's erase-empty-line). bash draws its
            # prompt again after VERBATIM's function, and a D that PS1 gave is drawn with it
            # (the previous command's, once PROMPT_COMMAND was set again while it ran).
            ex = None
        if not replay and start is not None:
            command = self.command_line or (ex.command if ex is not None else None)
            self._records.append({
                "event": "end", "command": command, "cwd": self.cwd,
                "exit_code": exit_code, "start_offset": start[0], "end_offset": at,
                "start": start[1], "end": time.time()})
        self.command_line = None
        if ex is not None and ex.mode == "integration":
            if ex.out_start is not None:
                self._complete(exit_code, ex.out_start, at, self._via)
                return
            # No C: nothing ran (an empty line, a syntax error, zsh's failed history
            # expansion); the output is what the shell said, its echo of the command cut.
            self._complete(exit_code, ex.sent_off, at, self._via, shape=lambda text:
                           cut_echo_and_prompt(text, ex.command, None))
            if exit_code is None and ex.command.strip() and not replay:
                # zsh's HIST_VERIFY puts the expanded line back in the editor after this D:
                # the next command would be added to it
                self._cancel_line()
            return
        if ex is not None and not ex.marked and not replay and _one_line(ex.command):
            ex.until_marked = True  # (a shell that marks after all: this D ends it)
        if ex is not None and ex.until_marked:
            if ex.out_start is not None:
                self._complete(None, ex.out_start, at, self._via)
            else:  # (no C: the output begins with the shell's echo of the command)
                self._complete(None, ex.sent_off, at, self._via, shape=lambda text:
                               cut_echo_and_prompt(text, ex.command, None))

    # --- time: one sweep for every deadline, no timer per command ---------------------------
    # (a cancelled loop timer stays queued, with what it refers to, until it is due)

    def tick(self, now: float) -> bool:
        """Called every TICK_S while this returns True: deadlines of the exec, and quiet."""
        ex = self.exec
        if ex is not None and not ex.done:
            if now >= ex.deadline:
                self._timed_out(ex)
            elif ex.held:
                pass  # (nothing sent: only its timeout)
            elif ex.marked and ex.out_start is None:
                if self.keeper_paused:
                    # (its markers may be in what the keeper does not read while the window
                    # is full: the wait for them counts from when output flows again)
                    ex.detect_by = now + self.host.detect_s
                elif now >= ex.detect_by:
                    self._detect(ex)
            elif ex.marked:
                self._watch_editing(ex, now)
        if self.cancel_pending:
            self._type_cancel(now)
        if self.answer_by is not None and now >= self.answer_by:
            self._unanswered(now)
        if self.on_quiet and now >= max(self.last_output, self._quiet_from) + \
                self.host.quiet_s:
            self._quiet()
        return bool(self.on_quiet) or (self.exec is not None and not self.exec.done) or \
            self.answer_by is not None or self.cancel_pending

    def _typed_running(self) -> bool:
        """Does a command no exec waits for run (its trusted C came, no D yet: typed with
        term.write, or left by a timed-out exec), in a session held here?"""
        return self.exec is None and self.state == "running" and \
            self.mode == "integration" and self.master is not None

    def _watch_typed(self) -> None:
        """`_watch_editing` for a command no exec waits for, every quiet_s until its D: not
        every tick, as an exec's, which for a long program typed (an editor, a server) would
        wake the actor 50 times a second for as long as it ran."""
        self._typed_timer = None
        if not self._typed_running():
            return
        self._watch_editing(None, time.monotonic())
        self._typed_timer = self.host.loop.call_later(self.host.quiet_s, self._watch_typed)

    def wait_quiet(self, cb: Any) -> None:
        self._quiet_from = time.monotonic()
        self.on_quiet.append(cb)
        self.host.need_tick(self)

    def _quiet(self) -> None:
        callbacks, self.on_quiet = self.on_quiet, []
        _run_each(callbacks, self.id)

    # --- exec -----------------------------------------------------------------------------------

    @property
    def unprompted(self) -> bool:
        """Started with the integration, and no trusted prompt seen yet: its start-up (the
        rc file) may still run, and read what is typed meanwhile at its first prompt."""
        return self.meta.get("unprompted") is True

    @property
    def busy(self) -> bool:
        """Does a command run in the session: term.exec's, or, with the integration, one the
        shell started (its C) and has not ended (no D yet) that no exec waits for any more, as
        a program a timed-out exec left in the foreground (deaf to its SIGINT, or at a prompt
        of its own) or one typed with term.write? term.exec refuses the session then
        (`busy_reason`), and term.list says so: an editor that took `busy` false would send
        its next command into that program. False again at the command's D (it ended, or was
        interrupted). Without the integration (no markers say where a command ends): while
        the shell is not the terminal's foreground process group (a program it started holds
        the terminal: vim, less, one a command left running past its quiet spell)."""
        if self.exec is not None:
            return True
        if self.mode == "integration":
            return self.state == "running"
        return self._program_holds()

    def _program_holds(self) -> bool:
        """Is a program the shell started the terminal's foreground process group (so a
        command typed would be keys to it)? Not known (no master here, the shell gone):
        no."""
        return self.exited is None and shell_in_foreground(self.master, self.pid) is False

    def busy_reason(self) -> str | None:
        if self.exited is not None:
            return "exited"
        if self.exec is not None:
            return "a command is running (term.exec)"
        if self.busy:
            return "a command is running" if self.mode == "integration" else (
                "a program holds the terminal (the shell is not its foreground process "
                "group): a command would be typed into it")
        if self.state == "starting":
            return "the shell is starting"
        if self.typed_at is not None and self.mode == "integration":
            return ("input was typed at the prompt (term.write) that the shell has not taken "
                    "as a line yet: a command would be added to it; it goes once a prompt "
                    "comes after that line")
        return None

    def start_exec(self, call: Call, command: str, timeout_s: float) -> None:
        """Run `command` for `call` (the session is not busy). A command whose bytes cannot
        reach the shell as one command line is refused `bad_args` before anything is sent
        (`_unsendable`). With the integration it goes when the shell is at its prompt: at
        once, or at the next trusted B (a question or a line of the shell's own is cancelled
        first: ^C)."""
        mode = self.mode if self.host.integration_allowed() else "no_integration"
        if mode == "integration" and self.hop.via is None:
            mode = "raw_output"
        # (the shell's markers are read whatever the mode: where they work, they say where
        # a command ends)
        marked = self.mode == "integration" and self.hop.via is not None
        why = _unsendable(command.encode(), marked)
        if why is not None:
            raise fail("bad_args", f"{command[:80]!r}: {why}; nothing was sent")
        now = time.monotonic()
        ex = Exec(call, command, mode, now, self.offset, now + timeout_s,
                  now + self.host.detect_s)
        # A shell still marking its commands ends each at its D; so does a command typed ahead
        # of a slow rc file (read at the first prompt, whose marker brings the integration
        # back): a quiet spell there says nothing of it, and would answer it before it ran.
        ex.until_marked = mode == "no_integration" and (
            marked or (self.unprompted and self.hop.via is not None))
        self._run(ex)
        if marked:
            ex.held = True
            self._try_send(ex)
        else:
            self._dispatch(ex, marked)

    def _at_prompt(self) -> bool:
        """Is the shell reading a new command line, by its last trusted marker (B, and no
        ^C of ours on its way, and no input typed since that the shell has not taken: the
        command would be added to it)? Not known before any marker: then yes, as it always
        was."""
        return self.shell_at in ("prompt", None) and not self.cancel_pending and \
            self.typed_at is None

    def _try_send(self, ex: Exec) -> None:
        """Send held `ex` if the shell is at its prompt, by every marker in the output so
        far (parsed first, when some of it is still with the parser actor). Typed at any
        other time it would answer a question, be added to a line the shell holds, or be
        read before the prompt is drawn (and any prompt after it would look like the shell
        gone back without running it): it waits for the next B, a question or a line of the
        shell's own cancelled first (^C); one left by input typed (term.write) is the
        user's, never cancelled."""
        def decide() -> None:
            if ex is not self.exec or ex.done or not ex.held:
                return
            if self._at_prompt():
                ex.held = False
                self._dispatch(ex, True)
            elif self.shell_at in ("more", "question") and not self.cancel_pending and \
                    self.typed_at is None:
                self._cancel_line()

        self.hop.when_parsed(self.offset, decide)

    def _dispatch(self, ex: Exec, marked: bool) -> None:
        """Send `ex`'s command: a bracketed paste (marked, and it has more than one line, a
        control character, or over PASTE_FROM bytes), else typed, and Enter; marked, after
        VERBATIM when it may hold a history character (no history expansion)."""
        data = ex.command.encode()
        pasted = marked and (len(data) > PASTE_FROM or CONTROL.search(data) is not None)
        if pasted:
            payload = PASTE_START + data.replace(b"\r\n", b"\n") + PASTE_END + b"\r"
        else:
            payload = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r") + b"\r"
        if marked and NO_HISTORY_CHARACTER.fullmatch(data) is None:
            payload = VERBATIM + payload
        # (marked: its input is one line, or one paste, which the shell reads whole)
        ex.whole = marked
        now = time.monotonic()
        ex.sent_off = self.offset
        ex.detect_by = now + self.host.detect_s  # (from when it goes, not from the call)
        # Written down with the keeper before the command goes to the shell, so that a
        # successor of ours knows it is running and answers a resend of it (term.exec is
        # resumable: restore.py).
        # (its start by the wall clock, which a successor shares, as its end: the duration
        # it answers counts from the call's start, not from its restore)
        wall = time.time()
        self.meta["exec"] = {"sid": ex.call.sid, "id": ex.call.id, "command": ex.command,
                             "sent_off": ex.sent_off, "mode": ex.mode,
                             "deadline_ms": ex.call.deadline_ms,
                             "started_ms": int((wall - (now - ex.started)) * 1000),
                             "ends_ms": int((wall + (ex.deadline - now)) * 1000)}
        if ex.until_marked:
            self.meta["exec"]["until_marked"] = True
        self.host.keeper_meta(self)
        self._send_command(ex, payload)

    def _send_command(self, ex: Exec, payload: bytes) -> None:
        """The command's input to the shell. A keeper that died since the call was let in
        (its start waited for the first prompt, or for a restore) is waited for as the call
        itself would have been, and the command sent to its successor, the exec's own
        timeout still running; with none within the wait it fails `unavailable`, unsent."""
        if self.host.keeper_write(self, payload, lambda err: self._refused(ex, err)):
            ex.sent = True
            return

        def keeper(ok: bool) -> None:
            if ex.done or self.exec is not ex:
                return
            if ok:
                self._send_command(ex, payload)
            else:
                self._fail(WireError.of("unavailable", "the pty keeper is not connected"))

        self.host.when_keeper(keeper)

    def _run(self, ex: Exec) -> None:
        self.exec = ex
        self.last_use = ex.started
        self.host.need_tick(self)
        if ex.mode != "integration":
            self.state = "running"
            if not ex.until_marked:
                self.wait_quiet(lambda: self._quiet_done(ex))

    def resume_exec(self, call: Call, record: dict[str, Any]) -> None:
        """A predecessor's exec, from its record: it completes here as it would have there
        (on the markers after `sent_off`, or by the mode's rule), answering `call` with its
        whole duration (from its start there, by the wall clock)."""
        now = time.monotonic()
        # (a record of an earlier version kept no start: the duration then counts from here)
        begun = record.get("started_ms")
        started = now - max(0.0, time.time() - begun / 1000) if type(begun) is int else now
        # (what is left of its time, not its time again: the predecessor ran it a while)
        ends = record.get("ends_ms")
        if isinstance(ends, int):
            timeout_s = ends / 1000 - time.time()
        else:  # (a record of an earlier version, which kept the whole timeout)
            timeout_s = int(record.get("timeout_ms") or 60_000) / 1000
        deadline = record.get("deadline_ms")
        if deadline is not None:
            timeout_s = min(timeout_s, deadline / 1000 - time.time() - 0.1)
        timeout_s = max(0.0, timeout_s)
        ex = Exec(call, str(record.get("command", "")), str(record.get("mode", self.mode)),
                  started, int(record["sent_off"]), now + timeout_s, now + self.host.detect_s,
                  sent=True, until_marked=record.get("until_marked") is True)
        self._run(ex)

    def _refused(self, ex: Exec, err: WireError) -> None:
        """The keeper refused `ex`'s input: it never reached the shell."""
        if ex is self.exec and not ex.done and ex.out_start is None:
            self._fail(err)

    def _detect(self, ex: Exec) -> None:
        """No trusted C or D in time: the integration is not working in this session, unless
        the shell has not read the command yet (its rc file still runs) or is still at work
        on it (a long paste, a loaded machine): then that says nothing, and the command
        waits on (its timeout ends the wait). A shell idle with the command read has its
        markers, if it drew any, parsed before the verdict."""
        if ex is not self.exec or ex.done or ex.out_start is not None:
            return
        now = time.monotonic()
        if unread_input(self.master):
            ex.detect_by = now + self.host.detect_s
            return
        seen = shell_activity(self.pid)
        if seen is not None and (seen[0] or seen[1] != ex.shell_cpu):
            ex.shell_cpu = seen[1]
            ex.detect_by = now + self.host.quiet_s  # (looked at again soon)
            return
        ex.detect_by = float("inf")  # (once: the markers being parsed may start it yet)
        self.hop.when_parsed(self.offset, lambda: self._no_marker(ex))

    def _no_marker(self, ex: Exec) -> None:
        if ex is not self.exec or ex.done or ex.out_start is not None or not ex.marked:
            return
        logger.warning("session {}: no trusted marker {} s after a command; no integration "
                       "from now on", self.id, self.host.detect_s)
        self.set_mode("no_integration")
        ex.mode = "no_integration"
        ex.until_marked = False
        if self.meta.pop("unprompted", None) is not None:
            # (its shell read the command and drew no marker: its start-up is over, and a
            # shell that draws none there, as an rc's `exec zsh`, would cost every command
            # this wait)
            self.host.keeper_meta(self)
        self.wait_quiet(lambda: self._quiet_done(ex))

    def _quiet_done(self, ex: Exec) -> None:
        if ex is not self.exec or ex.done or ex.until_marked:
            return  # (until_marked: its D ends it, whatever quiet came)
        if self.state == "running" and ex.mode == "no_integration":
            self.state = "prompt"
        # a shell that still marks its prompt (integration turned off by degradation) shows
        # where the output ends
        end = self.last_prompt_at if self.last_prompt_at > ex.sent_off else self.offset
        prompt = self.meta.get("prompt")
        self._complete(None, ex.sent_off, end, raw=ex.mode == "raw_output",
                       shape=lambda text: cut_echo_and_prompt(text, ex.command, prompt))

    def _watch_editing(self, ex: Exec | None, now: float) -> None:
        """After the command's C, its shell back in its line editor (the foreground group,
        the terminal neither canonical nor echoing) and quiet, with no D for detect_s, and
        no longer the program the session started (`exec bash`: a shell without this
        session's nonce, which never marks): the D never comes, and the integration is lost.
        A program that runs (its own process group), output, or the session's own shell
        reading keys itself (`read -n1`, zsh's `rm *` confirmation: its D comes once it is
        answered) keeps it waiting. `ex` None: a command no exec waits for (`exec bash`
        typed with term.write), which would leave the session busy for good."""
        w: Exec | Session = self if ex is None else ex
        if now - self.last_output < self.host.quiet_s or self.keeper_paused or not (
                shell_in_foreground(self.master, self.pid) and line_editing(self.master)):
            w.editing_since = None
            return
        if w.editing_since is None:
            w.editing_since = now
        elif now - w.editing_since >= self.host.detect_s:
            if runs_its_launch(self.pid, self.nonce) is not False:
                w.editing_since = now  # (asked again detect_s later: it may exec yet)
                return
            w.editing_since = float("inf")  # (once: a D still being parsed may end it)
            self.hop.when_parsed(self.offset, lambda: self._integration_lost(ex))

    def _integration_lost(self, ex: Exec | None) -> None:
        """The command's shell reads commands without marking them: it ends as a command
        without the integration does, and so does the session (a trusted prompt later, the
        session's own shell back, brings the integration back). `ex` None: the command was
        typed, and the session is free for the next one at once."""
        if ex is None:
            if not self._typed_running():
                return  # (its D came after all)
        elif ex is not self.exec or ex.done or not ex.marked:
            return
        logger.warning("session {}: the shell reads commands again without a marker after "
                       "{!r}; no integration from now on", self.id,
                       "a command typed" if ex is None else ex.command[:80])
        self.set_mode("no_integration")
        self.note_prompt()
        if ex is None:
            self.state = "prompt"
            return
        ex.mode = "no_integration"
        ex.until_marked = False
        self.wait_quiet(lambda: self._quiet_done(ex))

    def _unanswered(self, now: float) -> None:
        """No trusted marker since a timed-out command was interrupted: the shell there does
        not mark (a shell exec'd in place of the session's, or one whose start-up never
        reached its hooks). Once it is the terminal's foreground group again, the session
        takes commands without the integration (a trusted prompt brings it back); while a
        program still holds the terminal, a command runs, and the session says busy."""
        held = self.exec if self.exec is not None and self.exec.held else None
        if self.exited is not None or (self.exec is not None and held is None):
            self.answer_by = None  # (a command in flight has deadlines of its own)
            return
        if shell_in_foreground(self.master, self.pid) is False:
            self.answer_by = now + self.host.detect_s
            return
        self.answer_by = None
        logger.warning("session {}: no marker {} s after a command was interrupted; no "
                       "integration from now on", self.id, self.host.detect_s)
        self.set_mode("no_integration")
        self.note_prompt()
        if self.state == "running":
            self.state = "prompt"
        self.settle()
        if held is not None:
            # (it waited for a prompt with the integration, which no longer comes; sent as
            # it is, it would be pasted into a shell that may take no paste)
            self._fail(WireError.of(
                "session_busy", f"session {self.id}: its shell showed no prompt after its "
                "line was cancelled, and goes on without the integration; the command was "
                "not sent"), ran=False, cache=False)

    def note_prompt(self) -> None:
        """The last line shown, as the prompt of a shell that does not mark its own: the
        commands run without markers cut it from the end of their output."""
        text = clean(self.scroll.get(max(self.scroll.base, self.offset - PROMPT_TAIL),
                                     self.offset))
        # (what follows the line's last carriage return is what shows: zsh draws its prompt
        # after "\r \r", bash after the "\r" that ends its bracketed paste mode)
        self.meta["prompt"] = text.rstrip("\n").rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
        self.host.keeper_meta(self)

    def _timed_out(self, ex: Exec) -> None:
        if ex is not self.exec or ex.done:
            return
        if ex.held:
            where = {"more": "it asks for more of a line of its own",
                     "question": "it asks a question",
                     "running": "a command of its own runs"}.get(str(self.shell_at),
                                                                 "its prompt is not drawn")
            if self.typed_at is not None and self.shell_at == "prompt":
                where = "input typed at its prompt is not taken yet"
            self._fail(WireError.of(
                "timeout", f"{ex.command[:80]!r} could not be sent within its timeout: the "
                f"shell did not come back to its prompt ({where}); it was not sent",
                detail={"output": "", "mode": ex.mode, "signalled": None}),
                ran=False, cache=False)
            return
        if ex.marked and ex.out_start is None and self._program_holds() and \
                LINE_TAKEN not in self.scroll.get(ex.sent_off, self.offset):
            # Never read by the shell: a program holds the terminal (no C of the command,
            # and no line let go since it was sent). The signal would be the program's, not
            # the command's; what waits unread of it is dropped, not read later as a command.
            self.host.keeper_drop_input(self)
            self._fail(WireError.of(
                "timeout", f"{ex.command[:80]!r} had not started by its timeout: a program "
                "holds the terminal, and the shell never read it; nothing was signalled, and "
                "what the program had not read of it was dropped",
                detail={"output": "", "mode": ex.mode, "signalled": None}))
            return
        if ex.marked and ex.out_start is None and unread_input(self.master) != 0:
            # Not started: its input still waits, whole or in part (the shell not reading
            # yet, or still reading a long line). A SIGINT would cancel only what the line
            # editor holds, and the rest be read as a command of its own; ^C typed makes
            # the terminal drop what was not read, with the SIGINT. The next command waits
            # for the prompt that brings, as a starting shell's first. (All of it read and
            # no C: a shell that does not mark runs it: SIGINT, as to any command.)
            self.host.keeper_interrupt(self)
            if self.state != "exited":
                self.state = "starting"
            what = (f"{ex.command[:80]!r} had not started by its timeout"
                    f"{' (the shell has shown no prompt yet)' if self.unprompted else ''}: "
                    "its input was cancelled (^C: SIGINT to the foreground process group, "
                    "what the shell had not read of it dropped)")
        else:
            self.host.keeper_signal(self, "SIGINT", "fg")
            what = (f"{ex.command[:80]!r} still running after its timeout: sent SIGINT to "
                    "its process group")
        if ex.marked:
            self.answer_by = time.monotonic() + self.host.detect_s
        first = ex.out_start or ex.sent_off
        begin = max(first, self.offset - TIMEOUT_TAIL)
        if begin > first:  # cut: not inside a sequence or a character
            begin += self._clean_cut(begin, self.scroll.get(begin, self.offset))
        so_far = self._text(begin, self.offset)
        self._fail(WireError.of("timeout", what, detail={
            "output": so_far[-4096:], "mode": ex.mode, "signalled": "SIGINT"}))

    def _text(self, start: int, end: int, raw: bool = False) -> str:
        """The clean text of [start, end), at once: for ranges the caller bounded."""
        data, _ = self._range(start, end)
        text = data.decode("utf-8", "replace") if raw else clean(data)
        return self._shaped(text)

    def _range(self, start: int, end: int) -> tuple[bytes, bool]:
        """The bytes of [start, end), at most the last max_output of them (and none the
        scrollback no longer holds), starting where a sequence, a line or a character does
        when cut (`clean_cut`); whether any was left out."""
        limit = self.host.max_output
        truncated = start < max(self.scroll.base, end - limit)
        begin = max(start, end - limit, self.scroll.base)
        data = self.scroll.get(begin, end)
        return (data[self._clean_cut(begin, data):] if truncated else data), truncated

    def _clean_cut(self, at: int, after: bytes) -> int:
        """`clean_cut` of output cut at `at`, `after` its bytes from there."""
        return clean_cut(self.scroll.get(max(self.scroll.base, at - CUT_BEFORE), at), after)

    def _shaped(self, text: str) -> str:
        if self.kind == "zsh":
            text = ZSH_PROMPT_SP.sub("", text)
        return text

    def _text_then(self, start: int, end: int, raw: bool,
                   then: Callable[[str, bool], None]) -> None:
        """The clean text of [start, end) to `then`, with whether its start was left out
        (past max_output, or gone from the scrollback): at once when no sequence in it needs
        the parser, else a CLEAN_SLICE a loop turn (a command's output is up to
        max_output)."""
        data, truncated = self._range(start, end)
        text = data.decode("utf-8", "replace") if raw else clean_fast(data)
        if text is not None:
            then(self._shaped(text), truncated)
            return
        cleaner = Cleaner()
        view = memoryview(data)
        done = 0

        def step(at_once: bool = False) -> None:
            nonlocal done
            if done >= len(data):
                return  # (finished at once by finish_cleaning)
            while True:
                cleaner.feed(view[done:done + CLEAN_SLICE].tobytes())
                done += CLEAN_SLICE
                if done >= len(data):
                    self.cleaning.remove(step)
                    then(self._shaped(cleaner.text()), truncated)
                    return
                if not at_once:
                    self.host.loop.defer(step)
                    return

        self.cleaning.append(step)
        step()

    def finish_cleaning(self) -> None:
        """Answer now the commands whose answers are being cleaned a slice a turn (the actor
        stops: their answers would be lost, and the commands are recorded as run)."""
        for step in list(self.cleaning):
            step(True)

    def _complete(self, exit_code: int | None, start: int, end: int,
                  parser: str | None = None, raw: bool = False,
                  shape: Callable[[str], str] | None = None) -> None:
        """Answer the command in flight with its output [start, end). The session is free
        for the next command at once; the answer goes when its text is clean (over loop
        turns for escape-heavy output), with what was true when the command ended."""
        ex = self.exec
        if ex is None or ex.done:
            return
        ex.done = True
        self.exec = None
        result = {"session": self.id, "exit_code": exit_code, "cwd": self.cwd,
                  "duration_ms": round((time.monotonic() - ex.started) * 1000, 3),
                  "mode": ex.mode, "trusted": ex.mode == "integration",
                  "parser": parser if ex.mode == "integration" else self.hop.via}
        self._answered(ex, ran=True)

        def reply(output: str, truncated: bool) -> None:
            if shape is not None:
                output = shape(output)
            if output.endswith("\n"):
                output = output[:-1]
            ex.call.reply({**result, "output": output, "truncated": truncated})

        self._text_then(start, end, raw, reply)

    def _fail(self, err: WireError, ran: bool | None = None, cache: bool = True) -> None:
        """`ran`: whether the command ran, if known better than by its input being sent;
        `cache`: the answer kept for a resend (not when nothing was sent: a resend gets a
        fresh chance)."""
        ex = self.exec
        if ex is None or ex.done:
            return
        ex.done = True
        self.exec = None
        ex.call.fail(err, cache=cache)
        self._answered(ex, ran=ex.sent if ran is None else ran)

    def _answered(self, ex: Exec, ran: bool) -> None:
        """After the answer: the keeper's record of the command only serves a successor that
        must answer it, and a successor that finds it after the answer answers nobody. What
        stays is whether it ran (to its end, or until it failed after its input was sent):
        a resend of it that reaches a successor (its answer lost with this process) is then
        refused, not run a second time."""
        changed = self.meta.pop("exec", None) is not None
        if ran:
            self.meta["exec_ran"] = {"sid": ex.call.sid, "id": ex.call.id}
        if changed or ran:
            self.host.keeper_meta(self)

    def on_exit(self, info: dict[str, Any]) -> None:
        """The shell is gone. All its output has arrived before this, but may still be on its
        way through the parser actor: the command in flight is answered once its markers
        are in (a marker parsed after this must not find it still waiting, nor make the
        session look alive again)."""
        self.exited = info
        self.state = "exited"
        self.cancel_pending = False  # (no line left to cancel)
        self.out.flush()  # the shell's last words
        self.hop.when_parsed(self.offset, lambda: self._shell_gone(info))

    def _shell_gone(self, info: dict[str, Any]) -> None:
        ex = self.exec
        if ex is not None and ex.held and not ex.done:
            self._fail(WireError.of("shell_exited", f"session {self.id}'s shell has exited "
                                    "before the command was sent"), ran=False)
        elif ex is not None and not ex.done:
            # `exit` (or a crash) ended the shell: the command's result is the shell's.
            begin = ex.out_start if ex.out_start is not None else ex.sent_off
            self._complete(info.get("code"), begin, self.offset)
        self._release_prompt_waiters()

    def abort(self, err: WireError) -> None:
        """The command in flight fails (the session is closed, or the keeper is gone)."""
        self._fail(err)
        self.on_quiet = []

    def parse_lags(self) -> bool:
        """Too much output waits for the parser: hold the keeper's acks (backpressure)."""
        return self.hop.lag() > self.host.parse_link.lag_bytes

    def handled(self) -> int:
        """Up to where the keeper may forget the output: published, parsed closely enough,
        and taken by every consumer that acknowledges."""
        if self.parse_lags():
            return self.ring.ack_off if self.ring is not None else 0
        floor = self.out.published
        for c in self.consumers.values():
            floor = min(floor, c.acked)
        return floor

    def consumer_ack(self, consumer: str, offset: int, now: float) -> tuple[int, str | None]:
        """A consumer took the output up to `offset` (it registers with its first ack);
        returns what it has acknowledged (never more than was published), and the consumer
        its registration pushed out, if any: past MAX_CONSUMERS, the one heard from least
        recently goes (a client that acked and went away stays registered until output
        leaves it behind; without a bound, a stream of such clients grew the session's
        consumers, and then the sweep that drops them, without end)."""
        offset = min(offset, self.out.published)
        c = self.consumers.get(consumer)
        pushed_out = None
        if c is None:
            if len(self.consumers) >= MAX_CONSUMERS:
                pushed_out = min(self.consumers, key=lambda k: self.consumers[k].heard)
                del self.consumers[pushed_out]
            c = self.consumers[consumer] = Consumer(offset, now)
        c.acked, c.heard = max(c.acked, offset), now
        return c.acked, pushed_out

    def silent_consumers(self, now: float, timeout: float, stalled: bool = False) -> list[str]:
        """Consumers behind that have not acknowledged for `timeout`: dropped (they catch up
        by replay or term.scrollback; the session goes on without them). One that has
        taken everything owes nothing: its silence counts from when it falls behind (from
        this check on), not from its last ack (an editor's view of an idle session, dropped
        by the first output after the timeout). `stalled`: the terminal's own loop stalled
        since the last check (its process was stopped), so no consumer could be heard: every
        one's silence counts from now."""
        published = self.out.published
        for c in self.consumers.values():
            if stalled or c.acked >= published:
                c.heard = now
        gone = [k for k, c in self.consumers.items()
                if c.acked < published and now - c.heard > timeout]
        for k in gone:
            del self.consumers[k]
        return gone

    def close(self, err: WireError) -> None:
        """The session is gone for good: its command fails, its parser stream closes, and
        what waited for its first prompt (an exec sent while it started, its creation) is
        let go, to find it gone."""
        self.drop_custody()  # before the keeper hangs the PTY up: ours would keep it open
        self.out.flush()
        self.cancel_pending = False
        self.abort(err)
        self.hop.close()
        self._release_prompt_waiters()

    def settle(self) -> None:
        """Ready for commands without a trusted prompt (started without the integration, or
        none came in time): what waited for the first prompt goes now, as after one."""
        if self.state == "starting":
            self.state = "prompt"
        self._release_prompt_waiters()

    def _release_prompt_waiters(self) -> None:
        """Run what waited for a prompt (each looks at the session again: a prompt came,
        the shell is gone, or the session is closed)."""
        callbacks, self.on_prompt = self.on_prompt, []
        _run_each(callbacks, self.id)

    def set_mode(self, mode: str) -> None:
        if mode != "integration":
            self.cancel_pending = False  # (no prompt is waited for without the markers)
            self.typed_at = None  # (nor one to take typed input: `busy` looks at the shell)
        if mode != self.mode:
            self.mode = mode
            self.meta["mode"] = mode
            self.host.keeper_meta(self)

    def created(self) -> dict[str, Any]:
        """term.create's answer for this session."""
        return {"session": self.id, "pid": self.pid, "tty": self.tty, "shell": self.shell,
                "kind": self.kind, "mode": self.mode, "attempts": []}

    def describe(self) -> dict[str, Any]:
        return {
            "session": self.id, "pid": self.pid, "tty": self.tty, "shell": self.shell,
            "kind": self.kind, "mode": self.mode, "state": self.state, "cwd": self.cwd,
            "cols": self.cols, "rows": self.rows, "offset": self.offset,
            "scrollback_from": self.scroll.base, "exited": self.exited,
            "busy": self.busy, "untrusted_markers": self.untrusted,
            "parser": self.hop.via, "parsed": self.hop.parsed,
            "repeated_markers": self.repeated_markers,
            "integration_back": self.integration_back,
            "consumers": {k: c.acked for k, c in self.consumers.items()},
        }


def describe_unavailable(entry: dict[str, Any]) -> dict[str, Any]:
    """term.list's entry for a session the keeper holds whose PTY has not come here yet
    (keeper_client: `unavailable`), made from what the keeper told of it: its welcome's
    entry and, in it, the terminal's last state from the session's ring. Listed, not left
    out, so that a client that lists sessions (an editor after a reconnect) learns that the
    session exists and why ops on it answer `unavailable`, not `session_not_found`.

    What only a session held here has is told as nothing yet: no scrollback served here
    (`scrollback_from` is `offset`, as for a session without its ring), no parser, no
    consumers, nothing counted, and no cwd (the one its state records is where it started;
    where the shell is now is read from output this actor has not taken). `offset` is how
    far the keeper has read the shell's output (where the session goes on once it comes),
    `parsed` how far a terminal had handled it (the ring's ack): behind `offset` while
    there is output no terminal has parsed."""
    meta = entry.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    # (as restore.restore takes it: a state without a nonce is served without integration)
    mode = meta.get("mode", "integration") if meta.get("nonce") else "no_integration"
    shell, kind = meta.get("shell"), meta.get("kind")
    offset = int(entry["read"])
    return {
        "session": entry["s"], "pid": entry["pid"], "tty": entry["tty"],
        "shell": shell if isinstance(shell, str) else "",
        "kind": kind if isinstance(kind, str) else "other",
        "mode": mode if mode in MODES else "no_integration", "state": "unavailable",
        "cwd": None, "cols": entry["cols"], "rows": entry["rows"], "offset": offset,
        "scrollback_from": offset, "exited": entry.get("exited"),
        # (a command the last terminal to hold it was running: its record in the state)
        "busy": isinstance(meta.get("exec"), dict), "untrusted_markers": 0,
        "parser": None, "parsed": min(int(entry["acked"]), offset), "repeated_markers": 0,
        "integration_back": 0, "consumers": {},
    }


def _one_line(command: str) -> bool:
    """Typed, is `command` one line (one command line the shell reads, one C and one D)?"""
    return "\n" not in command and "\r" not in command


def _unsendable(data: bytes, marked: bool) -> str | None:
    """Why the command `data` cannot go to the shell as the command line it is, if it cannot.
    With the integration it is pasted (control characters and all), but not past the end of
    the paste, nor with a byte the terminal itself acts on; without it, typed as keys, only
    its line ends may be control characters (a tab completes, ^A/^U/ESC edit the line, ^D
    ends the shell)."""
    if marked:
        if PASTE_END in data:
            return ("it holds ESC [ 2 0 1 ~, the end of a bracketed paste: what follows would "
                    "be read as typed keys, outside the command")
        found = TERMINAL_ACTS_ON.search(data)
        if found is not None:
            return (f"it holds the control character 0x{found.group()[0]:02x} (^C, ^\\, ^Z, "
                    "^S and ^Q are acted on by the terminal itself: a signal, or flow "
                    "control)")
        return None
    found = TYPED_REFUSED.search(data)
    if found is not None:
        return (f"it holds the control character 0x{found.group()[0]:02x}: without the shell "
                "integration a command is typed as keys, and only its line ends may be "
                "control characters")
    return None


def _run_each(callbacks: list[Callable[[], Any]], sid: str) -> None:
    """Run one-shot callbacks, each whatever the others do: they answer different calls
    (a creation, an exec waiting for the prompt), and they run from the middle of taking
    output, which must go on."""
    for cb in callbacks:
        try:
            cb()
        except Exception:
            logger.exception("session {}: a callback failed", sid)
