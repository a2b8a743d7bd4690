"""A session's output in shared memory: a ring of bytes both the keeper and the terminal map.

The ring lives in a memfd that both processes hold, so what the keeper has read from the PTY
is not in either process: a keeper that dies loses no byte it had read (its successor goes on
at `write_off`), and a terminal that dies finds the ring as it was. The file descriptor rides
over the keeper link (SCM_RIGHTS) to whichever process is the newcomer.

  header  magic, cap, write_off, ack_off, floor_off, the read in progress (its offset, length
          and canary), the meta slots' size and the current one: 8-byte cells, each written
          by one side; cells 12-15 are the keeper's ledger of the input and signals it has
          done (keeper/ledger.py), which a successor keeper reads to do only the rest
  data    `cap` bytes: the byte at absolute offset `o` is at data[o % cap]
  meta    two slots of META_SLOT bytes: the terminal actor's state for the session (its
          `meta`: nonce, mode, the command in flight...), msgpack, written by the terminal
          into the slot that is not current, then made current by one 8-byte store of its
          number and length: a writer killed half-way leaves the last state whole, and a
          reader (the keeper, or a successor, only when it takes the session over) copies a
          slot and checks that no second write began meanwhile. The state lives with the
          output, so whoever holds the ring (the keeper, the terminal actor, the terminals
          supervisor's custody) holds the latest state too, and a change costs no message.

`write_off` (the keeper's) is the end of what was read; `ack_off` (the terminal's) is the end
of what it has handled (published, parsed, and taken by the consumers that acknowledge): the
keeper never writes more than `window` bytes past it, so nothing unhandled is overwritten.
What lies before `ack_off` and is still in the ring is the session's scrollback; `floor_off`
(the terminal's) says where it begins once memory pressure gave some of it back (its pages are
released with MADV_REMOVE). Offsets are absolute over the session's life and only grow.

Aligned 8-byte stores and loads do not tear, and each cell has one writer: no lock. The
keeper stores the bytes before it moves `write_off` (x86 keeps stores in order; so do the
loads on the other side), so a reader never sees an offset ahead of its bytes.

A read from the PTY consumes what it reads: a keeper killed between the read and moving
`write_off` would lose those bytes. So the keeper reads straight into the ring (`read_from`),
never more than FIONREAD said was there (a PTY master then returns all of it), and first
writes down the read it is about to make, with a canary in the first bytes of its target: a
successor that finds a read written down and the canary gone knows the read happened, all of
it, and takes it in (`recover`). (A canary still in place means it did not: the output
equalling 16 random bytes is out of reach. A read of fewer than 16 bytes has a shorter one;
its first byte is 0xFF, which text output never holds, and the keeper reads a byte it has
not counted only when nothing else can tell it the PTY hung up.)

A keeper's turn of such reads (`fill`) runs in C where the optional extension was built
(_cring.c: the same steps, some 4 µs a read less, which a `cat` of 50 MB makes 12,000 times);
`_fill_python` is the fallback and the reference. `RING_CORE` says which this process runs
(the keeper's `sys.info`); MOORAGE_TERMINAL_CORE=python forces the Python one at import.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import mmap
import os
import termios
from collections.abc import Callable

MAGIC = 0x6D6F6F7252494E47  # "moorRING"
HEADER = 128
_MAGIC, _CAP, _WRITE, _ACK, _FLOOR, _INTENT_OFF, _INTENT_LEN, _WINDOW = range(8)
_CANARY = 8  # two cells: what the first bytes of an intended read were before it
_META_SLOT, _META = 10, 11  # the slots' size; (number << 32 | length) of the current one
META_SLOT = 64 * 1024  # a bigger state goes over the keeper link (the slot then says so)
_SEED = int.from_bytes(os.urandom(16), "little")
_SEED_LO, _SEED_HI = _SEED & (2**64 - 1), (_SEED >> 64) & (2**56 - 1)  # (what _canary uses)
READ_CHUNK = 65536  # the most one read asks for (a PTY master hands over 4 KiB at most)
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW  # a ring's size, fixed at its creation
OFFSET_MAX = 1 << 62  # offsets stay far from what the C fill's signed arithmetic holds


def _canary(off: int) -> bytes:
    """16 bytes for a read at `off`: random, except the first, 0xFF, which never occurs in
    UTF-8 text; so even a read of one byte of a terminal's text output cannot be taken for
    one that did not happen (binary output: one chance in 256 ** length)."""
    return b"\xff" + ((_SEED ^ off) & (2**120 - 1)).to_bytes(15, "little")


class RingError(ValueError):
    """A descriptor that does not hold a ring of ours (or of the size it claims)."""


class SessionRing:
    """One session's ring, created by the keeper (`create`) or mapped from a descriptor it
    passed (`open`); `fd` stays open with it, to be passed on again."""

    def __init__(self, fd: int, cap: int, meta_slot: int) -> None:
        self.fd = fd
        self.cap = cap
        self.meta_slot = meta_slot
        self._map = mmap.mmap(fd, HEADER + cap + 2 * meta_slot)
        self._header = (ctypes.c_uint64 * (HEADER // 8)).from_buffer(self._map)
        self._data = memoryview(self._map)[HEADER : HEADER + cap]
        self._meta = memoryview(self._map)[HEADER + cap :]

    @classmethod
    def create(cls, cap: int, window: int, name: str = "moorage-ring") -> SessionRing:
        """A new ring of at least `cap` bytes, whose writer keeps at most `window` of them
        unhandled (so the `window` bytes after `ack_off` may be written at any moment)."""
        cap = max(mmap.PAGESIZE, (cap + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE)
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, HEADER + cap + 2 * META_SLOT)  # (sparse: pages cost when written)
            # its size for good: a holder that shrank it would fault every other one's reads
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS | fcntl.F_SEAL_SEAL)
        except BaseException:
            os.close(fd)
            raise
        ring = cls(fd, cap, META_SLOT)
        ring._header[_CAP] = cap
        ring._header[_META_SLOT] = META_SLOT
        ring._header[_WINDOW] = min(window, cap)
        ring._header[_MAGIC] = MAGIC
        return ring

    @classmethod
    def open(cls, fd: int) -> SessionRing:
        """Map a ring from a descriptor another process passed (ours from then on). What it
        says of itself is checked before anything is read or written by it: a ring whose
        window is over its cap, or whose offsets lie outside the window, would have the
        keeper read past its data (each holder can write the header)."""
        size = os.fstat(fd).st_size
        if size < HEADER + mmap.PAGESIZE:
            raise RingError(f"a ring is at least {HEADER + mmap.PAGESIZE} bytes, not {size}")
        try:
            sealed = fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SEALS == SEALS
        except OSError:
            sealed = False
        if not sealed:
            raise RingError("not a session ring: its size is not sealed")
        head = (ctypes.c_uint64 * (HEADER // 8)).from_buffer_copy(os.pread(fd, HEADER, 0))
        cap = size - HEADER - 2 * head[_META_SLOT]
        if head[_MAGIC] != MAGIC or head[_CAP] != cap or cap < mmap.PAGESIZE or \
                head[_META_SLOT] != META_SLOT:
            raise RingError("not a session ring")
        write, ack, window = head[_WRITE], head[_ACK], head[_WINDOW]
        if not 0 < window <= cap or not ack <= write <= ack + window or write >= OFFSET_MAX:
            raise RingError(f"a ring's offsets out of order: write {write}, ack {ack}, "
                            f"window {window}, cap {cap}")
        return cls(fd, cap, head[_META_SLOT])

    # --- the offsets ---------------------------------------------------------------------

    @property
    def write_off(self) -> int:
        return self._header[_WRITE]

    @property
    def ack_off(self) -> int:
        return self._header[_ACK]

    @ack_off.setter
    def ack_off(self, off: int) -> None:
        self._header[_ACK] = off

    @property
    def floor_off(self) -> int:
        return self._header[_FLOOR]

    @property
    def window(self) -> int:
        return self._header[_WINDOW]

    @property
    def cells(self) -> ctypes.Array[ctypes.c_uint64]:
        """The header's cells as this mapping holds them (unmapped by `close`): the keeper's
        ledger is kept in cells 12-15 (keeper/ledger.py), through this mapping rather than
        another of the same page."""
        return self._header

    @property
    def base(self) -> int:
        """The oldest byte safely held: not before `floor_off`, and not where the keeper may
        write next (the writer may reach `ack_off + window`, which wraps onto the bytes a
        cap before it)."""
        return max(self.ack_off + self.window - self.cap, self.floor_off, 0)

    def start_at(self, off: int) -> None:
        """A new ring that continues a stream from `off` (a session recreated, or a keeper
        that held its output elsewhere): nothing before it is held."""
        self._header[_FLOOR] = off
        self._header[_ACK] = off
        self._header[_WRITE] = off

    # --- bytes ---------------------------------------------------------------------------

    def room(self) -> int:
        """How much the keeper may write now without passing the window's unhandled bytes
        (never more than the ring holds, nor less than nothing, whatever a holder wrote)."""
        return max(0, min(self.cap, self.window - (self.write_off - self.ack_off)))

    def write(self, data: bytes) -> int:
        """Append (the keeper); returns the new write offset. The caller keeps `room`."""
        n = len(data)
        off = self.write_off
        pos = off % self.cap
        first = min(n, self.cap - pos)
        self._data[pos : pos + first] = data[:first]
        if first < n:
            self._data[: n - first] = data[first:]
        self._header[_WRITE] = off + n
        return off + n

    def _region(self, off: int, n: int) -> list[memoryview]:
        pos = off % self.cap
        first = min(n, self.cap - pos)
        parts = [self._data[pos : pos + first]]
        if first < n:
            parts.append(self._data[: n - first])
        return parts

    def read_from(self, fd: int, n: int) -> int:
        """Read at most `n` bytes of `fd` (no more than it holds: see the module docstring)
        into the ring and commit them; returns how many (0: nothing there). Raises the read's
        OSError (EIO: the PTY hung up) with nothing committed."""
        off = self.write_off
        k = min(n, 16)
        canary = _canary(off)[:k]
        parts = self._region(off, n)
        head = 0
        for part in parts:  # the canary may itself wrap
            take = min(k - head, len(part))
            part[:take] = canary[head : head + take]
            head += take
            if head == k:
                break
        self._header[_CANARY] = int.from_bytes(canary[:8].ljust(8, b"\0"), "little")
        self._header[_CANARY + 1] = int.from_bytes(canary[8:].ljust(8, b"\0"), "little")
        self._header[_INTENT_OFF] = off
        self._header[_INTENT_LEN] = n
        try:
            got = os.readv(fd, parts)
        except OSError:
            self._header[_INTENT_LEN] = 0  # (a read that raised read nothing)
            raise
        self._header[_WRITE] = off + got  # committed first: then the intent is stale
        self._header[_INTENT_LEN] = 0
        return got

    def fill(self, fd: int, room: int, batch: int) -> tuple[int, int]:
        """A turn of reads of the PTY master `fd` into the ring (each as `read_from`), until
        FIONREAD counts nothing, `batch` bytes are in, or `room` is used up. Returns (bytes
        read, end): end is -1 when the reads stopped for want of bytes or room, 0 at end of
        file (a read of nothing), else the errno that ended them (EIO: every slave fd is
        closed, Linux's end of a PTY)."""
        return _fill(self, fd, room, batch)

    def recover(self) -> int:
        """A keeper's successor: take in a read its predecessor made but did not commit
        (found by its canary, gone); returns how many bytes that was."""
        n = self._header[_INTENT_LEN]
        off = self._header[_INTENT_OFF]
        if not n or off != self.write_off:
            self._header[_INTENT_LEN] = 0
            return 0
        k = min(n, 16)
        canary = (self._header[_CANARY].to_bytes(8, "little")
                  + self._header[_CANARY + 1].to_bytes(8, "little"))[:k]
        here = b"".join(bytes(p) for p in self._region(off, k))
        self._header[_INTENT_LEN] = 0
        if here == canary:
            return 0  # never read
        self._header[_WRITE] = off + n
        return n

    def read(self, start: int, end: int) -> bytes:
        """The bytes from `start` to `end`, clipped to what the ring still holds."""
        start = max(start, self.base)
        end = min(end, self.write_off)
        if end <= start:
            return b""
        i = start % self.cap
        j = i + (end - start)
        if j <= self.cap:
            return bytes(self._data[i:j])
        return bytes(self._data[i:]) + bytes(self._data[: j - self.cap])

    def trim(self, keep: int) -> int:
        """Give back the memory of all but the last `keep` bytes before `ack_off` (memory
        pressure); returns how many bytes of scrollback went."""
        new_floor = max(self.base, self.ack_off - max(0, keep))
        cut = new_floor - self.base
        if cut <= 0:
            return 0
        self._header[_FLOOR] = new_floor
        # whole pages of the freed range, which is contiguous or wraps once
        start = (new_floor - cut) % self.cap
        for a, b in ((start, min(self.cap, start + cut)), (0, max(0, start + cut - self.cap))):
            lo = -(-(HEADER + a) // mmap.PAGESIZE) * mmap.PAGESIZE
            hi = (HEADER + b) // mmap.PAGESIZE * mmap.PAGESIZE
            if hi > lo:
                self._map.madvise(mmap.MADV_REMOVE, lo, hi - lo)
        return cut

    # --- the session's state ------------------------------------------------------------

    def write_meta(self, data: bytes) -> bool:
        """Make `data` the current state (one writer: the terminal actor holding the
        session); False when it does not fit a slot (b"": "the state went over the link")."""
        n = len(data)
        if n > self.meta_slot:
            return False
        number = (self._header[_META] >> 32) + 1
        at = (number % 2) * self.meta_slot
        self._meta[at : at + n] = data
        self._header[_META] = number << 32 | n
        return True

    def read_meta(self) -> bytes | None:
        """The current state's bytes (None: never written)."""
        for _ in range(8):
            cell = self._header[_META]
            if not cell:
                return None
            number, n = cell >> 32, cell & 0xFFFFFFFF
            at = (number % 2) * self.meta_slot
            data = bytes(self._meta[at : at + min(n, self.meta_slot)])
            # Only an unchanged counter proves the copy whole: a write that began during it
            # went to the other slot, but the one after that goes to this slot and moves the
            # counter only once it is done (a difference of one lets that one through).
            if self._header[_META] == cell:
                return data
        return None  # rewritten faster than we can copy: the caller's own copy stands

    def close(self) -> None:
        """Unmap and close our descriptor (the other side's copy keeps the ring alive)."""
        self._data.release()
        self._meta.release()
        del self._header
        self._map.close()
        os.close(self.fd)


def _fill_python(ring: SessionRing, fd: int, room: int, batch: int) -> tuple[int, int]:
    """`SessionRing.fill` in Python: the reference for _cring.c's."""
    room = min(room, ring.cap)  # (a read never wraps onto itself)
    got = 0
    buf = array.array("i", [0])
    while room > 0 and got < batch:
        try:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            if not buf[0] and got:
                # Nothing counted: stop, and the loop's epoll wakes the keeper for the rest.
                # A poll here would take in what still waits in the PTY's flip buffer, but a
                # poll of a PTY waits for the kernel worker that moves it (n_tty_poll flushes
                # the flip work): the keeper then sleeps while the worker refills 4 KiB, again
                # for every read, where stopping lets the worker refill while the keeper tells
                # the terminal. A 50 MB cat on a 2-core VM: 66-78 MB/s with that poll, 110-118
                # without (perf.p3_p4_terminal's P4, alternating builds).
                break
            # (nothing counted on the first read: the wake-up was the PTY's hang-up, and the
            # read's EIO says so; a one-byte read has a one-byte canary)
            n = ring.read_from(fd, min(buf[0] or 1, READ_CHUNK, room))
        except BlockingIOError:
            break
        except InterruptedError:
            continue  # (nothing was read: read_from cleared its intent)
        except OSError as exc:
            return got, exc.errno or errno.EIO
        if not n:
            return got, 0
        got += n
        room -= n
    return got, -1


Fill = Callable[[SessionRing, int, int, int], tuple[int, int]]


def _load() -> dict[str, Fill]:
    fills: dict[str, Fill] = {"python": _fill_python}
    if os.environ.get("MOORAGE_TERMINAL_CORE") != "python":
        try:
            from moorage.actors.terminal._cring import fill as fill_compiled
        except ImportError:
            pass
        else:
            def fill(ring: SessionRing, fd: int, room: int, batch: int) -> tuple[int, int]:
                return fill_compiled(ring._map, ring.cap, fd, room, batch, _SEED_LO, _SEED_HI)

            fills["compiled"] = fill
    return fills


FILLS: dict[str, Fill] = _load()
"""The ring fillers this process has: always "python", "compiled" when it was built."""
RING_CORE: str = "compiled" if "compiled" in FILLS else "python"
"""The one the keeper runs (its `sys.info`'s `ring_core`)."""
_fill = FILLS[RING_CORE]
