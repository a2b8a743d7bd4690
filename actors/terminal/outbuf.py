"""A session's `term.out` and `term.cmd` on their way out, coalesced.

A shell writes its output in many small pieces: a command typed at the prompt comes back as
its echo, its output, its end marker and the next prompt, each a separate write, each a
separate read by the keeper. Published one by one, every piece costs a message (ZeroMQ's I/O
thread here, the subscriber's and its process on the other side), and those wake-ups compete
for the machine's cores with the shell still producing the rest. So, as VS Code's pty host
does (its output is flushed every 5 ms), output that follows other output closely waits for
the rest of its burst and goes out as one message.

  - Output after `window_s` without any goes out at once: a keystroke's echo is not delayed.
  - Output within `window_s` of the last message waits, at most `window_s` from the first
    piece held, and goes out with what came after it (contiguous pieces, one message of up
    to PUBLISH_CHUNK bytes each).
  - A piece with the prompt's end in it (OSC 633;B: the shell now waits for input, so the
    burst is over), `max_held` bytes held, the session's end, and a `flush` all send what is
    held at once.
  - A command record (`term.cmd`) raised while output is held goes out after that output,
    with what else was held: a record speaks of output before it (the session raises it
    once the output its markers are in was taken), so each still follows its output, and
    the burst stays one message.

`published` is the end of the output sent: the keeper's window and the consumers' acks count
from it, not from what was read (Session.handled).

`window_s` 0 sends everything at once, as it comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

PROMPT_END = b"\x1b]633;B;"


class Timers(Protocol):
    def call_later(self, delay: float, fn: Callable[[], None]) -> Any: ...


PublishOut = Callable[[int, bytes, bool], None]  # (offset, data, replay)
PublishCmd = Callable[[dict[str, Any]], None]


class OutputBuffer:
    __slots__ = ("_clock", "_cmd", "_held", "_held_bytes", "_last", "_on_timed_flush", "_out",
                 "_records", "_timer", "_timers", "chunk", "max_held", "messages", "pieces",
                 "published", "window_s")

    def __init__(self, window_s: float, timers: Timers, out: PublishOut, cmd: PublishCmd,
                 published: int, chunk: int, max_held: int | None = None,
                 on_timed_flush: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.chunk = chunk  # the largest message
        self.max_held = chunk if max_held is None else max_held
        self.published = published
        self.pieces = 0  # output taken (each read of the keeper's that brought some)
        self.messages = 0  # term.out messages sent
        self._timers = timers
        self._out = out
        self._cmd = cmd
        self._held: list[tuple[int, bytes, bool]] = []  # (offset, data, replay), in order
        self._records: list[dict[str, Any]] = []  # raised while output was held
        self._held_bytes = 0
        self._last = -1e9  # monotonic time of the last message
        self._timer: Any = None
        self._clock = clock
        # after a flush the window's end made (one that output or a caller made has its
        # caller see to what follows): `published` moved with no output to carry the news
        self._on_timed_flush = on_timed_flush

    def output(self, off: int, data: bytes, replay: bool) -> None:
        """Output at `off` (it continues what came before: the session sees to that)."""
        now = self._clock()
        self.pieces += 1
        if not self._held and (self.window_s <= 0 or now - self._last >= self.window_s):
            self._send_out(off, data, replay)
            self._last = now
            return
        self._held.append((off, data, replay))
        self._held_bytes += len(data)
        if self._held_bytes >= self.max_held or PROMPT_END in data:
            self.flush()
        elif self._timer is None:
            self._timer = self._timers.call_later(self.window_s, self._timed_out)

    def command(self, record: dict[str, Any]) -> None:
        if self._held:
            self._records.append(record)
        else:
            self._cmd(record)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def flush(self) -> None:
        """Send everything held, in order."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        held, self._held = self._held, []
        records, self._records = self._records, []
        self._held_bytes = 0
        run: list[bytes] = []  # contiguous output of one kind, not sent yet
        run_off, run_replay, size = 0, False, 0
        for off, data, replay in held:
            if run and (replay != run_replay or off != run_off + size or
                        size + len(data) > self.chunk):
                self._send_run(run_off, run, run_replay)
                run = []
            if not run:
                run_off, run_replay, size = off, replay, 0
            run.append(data)
            size += len(data)
        if run:
            self._send_run(run_off, run, run_replay)
        for record in records:
            self._cmd(record)
        self._last = self._clock()

    def _timed_out(self) -> None:
        self._timer = None
        self.flush()
        if self._on_timed_flush is not None:
            self._on_timed_flush()

    def _send_run(self, off: int, run: list[bytes], replay: bool) -> None:
        self._send_out(off, run[0] if len(run) == 1 else b"".join(run), replay)

    def _send_out(self, off: int, data: bytes, replay: bool) -> None:
        self._out(off, data, replay)
        self.published = off + len(data)
        self.messages += 1
