"""What a keeper did with a session's input and signals, written where its successor and the
terminal actor can read it after the keeper died: four cells of the session's ring header
(ring.py uses cells 0-11 of its 16; these are 12-15), in the memfd that every holder of the
session maps.

The terminal numbers the bytes of input it sends a session through the keeper (`write`'s
`at`: the offset of its first byte, in one stream per session that only grows) and the
signals it has the keeper send (`seq`). A keeper that dies takes with it the input it had
queued and not written, and the requests it had not answered: with no record, the terminal
could only guess whether a write or a signal in flight had reached the shell (a line typed
twice, or never). So the keeper writes down

  IN_DONE   the end of the input it has taken off its queue: written to the PTY, or dropped
            (an interrupt, the PTY hung up). Everything before it is done with; nothing at
            or after it was written (no gap is ever written over: a refused write's bytes
            are skipped).
  IN_AT     the offset of the write(2) it is about to make ...
  IN_LEN    ... and its length (0: none in progress): written before the write(2), cleared
            after IN_DONE has moved past it. A keeper killed between the write(2) and that
            leaves IN_LEN set with IN_AT not before IN_DONE: those bytes may or may not have
            reached the PTY, in part or in whole (`doubt`), the one thing no record can tell.
            A write(2) is at most PTY_WRITE_MAX bytes (ptys.py), so that is all a doubt
            spans: not the rest of a paste queued behind it. IN_LEN is cleared before IN_AT
            moves, so a keeper killed between those stores leaves no doubt rather than a
            wrong one; a keeper that takes the session over folds a predecessor's doubt into
            IN_DONE (`fold`) once the terminal has read it (its first input after the
            welcome), so a later note never pairs with that stale length.
  SIG       the signal it is about to send and the last one sent, as the low 16 bits of their
            seqs, and the process group that last one went to: (intent << 48 | done << 32 |
            pgid), one store, before killpg(2) and after it. intent != done: a keeper killed
            in between, that signal in doubt.

Each cell has one writer at a time (the keeper holding the session: a new one only once its
predecessor is dead) and is stored whole; the keeper stores them in program order around its
syscalls, and a reader takes them after the writer died (or, from a live keeper, only the
signal cell, which is one store). Offsets and seqs go on across keepers: a new keeper starts
from what the cells say, a new terminal from the keeper's welcome (`input_end`, `signals`).
"""

from __future__ import annotations

import ctypes
import mmap
from typing import NamedTuple

from moorage.actors.terminal.ring import SessionRing

CELLS = 16  # ring.py's header: 128 bytes
IN_DONE, IN_AT, IN_LEN, SIG = 12, 13, 14, 15
SEQ_MASK = 0xFFFF


class LedgerState(NamedTuple):
    """The cells as read: see the module docstring."""

    done: int  # input: the end of what was written or dropped
    doubt: tuple[int, int] | None  # input: (offset, length) of a write whose fate is unknown
    sig_done: int  # the low 16 bits of the seq of the last signal sent
    sig_doubt: int | None  # ... of a signal that may or may not have been sent
    pgid: int  # where the last signal went

    @property
    def input_end(self) -> int:
        """Where a keeper taking the session over goes on: past the write in doubt too (it
        is never written again)."""
        return self.done if self.doubt is None else max(self.done, sum(self.doubt))

    def signal_sent(self, seq: int) -> bool | None:
        """Whether the signal numbered `seq` was sent: True, False, or None (in doubt).
        Seqs compare modulo 2^16: fewer than 2^15 signals are ever outstanding."""
        s = seq & SEQ_MASK
        if self.sig_doubt is not None and s == self.sig_doubt:
            return None
        return (self.sig_done - s) & SEQ_MASK < 0x8000


class _Header:
    """The header of a ring no SessionRing maps here: its cells, mapped for one Ledger."""

    def __init__(self, ring_fd: int) -> None:
        self._map = mmap.mmap(ring_fd, CELLS * 8)
        self.cells = (ctypes.c_uint64 * CELLS).from_buffer(self._map)

    def close(self) -> None:
        del self.cells
        self._map.close()


class Ledger:
    """The cells of one session's ring: its SessionRing's own (`ring` a SessionRing: nothing
    is mapped again, and they go with the ring's mapping), or, given only the ring's
    descriptor, a mapping of the header for this ledger alone, unmapped by `close` (the
    ring's lifetime is not tied to it)."""

    def __init__(self, ring: SessionRing | int) -> None:
        self._header = ring if isinstance(ring, SessionRing) else _Header(ring)

    @classmethod
    def read(cls, ring: SessionRing | int) -> LedgerState:
        """The cells of the ring `ring` (a descriptor: mapped for the moment)."""
        ledger = cls(ring)
        try:
            return ledger.state()
        finally:
            ledger.close()

    @property
    def _cells(self) -> ctypes.Array[ctypes.c_uint64]:
        # (looked up, never kept: a reference kept here would keep the ring's mapping from
        # being closed)
        return self._header.cells

    @property
    def done(self) -> int:
        """IN_DONE: the end of the input written or dropped."""
        return self._cells[IN_DONE]

    def state(self) -> LedgerState:
        c = self._cells
        length, at, done, sig = c[IN_LEN], c[IN_AT], c[IN_DONE], c[SIG]
        intent, sent = sig >> 48, (sig >> 32) & SEQ_MASK
        return LedgerState(done, (at, length) if length and at >= done else None, sent,
                           intent if intent != sent else None, sig & 0xFFFFFFFF)

    # --- the keeper's side ------------------------------------------------------------------

    def writing(self, at: int, n: int) -> None:
        """A write(2) of `n` bytes at offset `at` is about to be made. The length goes to 0
        first: until the new one is stored, no stale length pairs with the new offset."""
        c = self._cells
        c[IN_LEN] = 0
        if c[IN_DONE] < at:
            c[IN_DONE] = at  # (the bytes before it were refused: none to write)
        c[IN_AT] = at
        c[IN_LEN] = n

    def wrote(self, end: int) -> None:
        """The write(2) returned: everything before `end` is written (`end` = at: none)."""
        c = self._cells
        if end > c[IN_DONE]:
            c[IN_DONE] = end
        c[IN_LEN] = 0

    def fold(self, end: int) -> None:
        """A keeper that took the session over goes on from `end` (its predecessor's
        `input_end`): what lies before it, a predecessor's doubt included, is done with
        (never written again), and no doubt is left standing."""
        if end > self._cells[IN_DONE]:
            self._cells[IN_DONE] = end
        self._cells[IN_LEN] = 0

    def dropped(self, end: int) -> None:
        """The queued input before `end` was dropped, unwritten: done with all the same."""
        if end > self._cells[IN_DONE]:
            self._cells[IN_DONE] = end

    def signalling(self, seq: int) -> None:
        sig = self._cells[SIG]
        self._cells[SIG] = (seq & SEQ_MASK) << 48 | (sig & ((1 << 48) - 1))

    def signalled(self, seq: int, pgid: int) -> None:
        s = seq & SEQ_MASK
        self._cells[SIG] = s << 48 | s << 32 | (pgid & 0xFFFFFFFF)

    def not_signalled(self) -> None:
        """The signal was not sent (killpg failed): no doubt left about it."""
        sig = self._cells[SIG]
        sent = (sig >> 32) & SEQ_MASK
        self._cells[SIG] = sent << 48 | (sig & ((1 << 48) - 1))

    def close(self) -> None:
        """Unmap the header mapped for this ledger alone (a ring's own stays with it)."""
        if isinstance(self._header, _Header):
            self._header.close()
