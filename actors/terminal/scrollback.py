"""A byte stream's recent past, addressed by absolute offset: a session's scrollback
(`Ring`), and the bytes its parser hop still needs (`Scrollback`)."""

from __future__ import annotations

from collections import deque


class Scrollback:
    """At least the last `cap` bytes of a stream, addressed by absolute offset; kept as the
    chunks that arrived (no copy on append, whole chunks dropped from the front). A `cap` of
    0 keeps everything until `drop_before` says what may go."""

    def __init__(self, cap: int, base: int = 0) -> None:
        self.cap = cap
        self.base = base
        self.chunks: deque[bytes] = deque()
        self.size = 0

    @property
    def end(self) -> int:
        return self.base + self.size

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.cap and self.size - len(self.chunks[0]) >= self.cap:
            self.trim(self.cap)

    def trim(self, keep: int) -> int:
        """Drop whole chunks from the front while at least `keep` bytes remain."""
        dropped = 0
        while self.chunks and self.size - len(self.chunks[0]) >= keep:
            dropped += self._pop()
        return dropped

    def drop_before(self, offset: int) -> None:
        """Drop the whole chunks that end at or before `offset` (the bytes from `offset`
        on stay)."""
        while self.chunks and self.base + len(self.chunks[0]) <= offset:
            self._pop()

    def _pop(self) -> int:
        n = len(self.chunks.popleft())
        self.size -= n
        self.base += n
        return n

    def get(self, start: int, end: int) -> bytes:
        start = max(start, self.base)
        end = min(end, self.end)
        if end <= start:
            return b""
        parts = []
        pos = self.end
        for chunk in reversed(self.chunks):  # the end is what is asked for most
            cstart = pos - len(chunk)
            if cstart < end:
                parts.append(chunk[max(0, start - cstart) : end - cstart])
            pos = cstart
            if pos <= start:
                break
        parts.reverse()
        return b"".join(parts)


class Ring:
    """The last `cap` bytes of a stream (exactly: fewer only before that much arrived, or
    after `trim`), addressed by absolute offset, in one buffer that stops growing at `cap`.

    A session's scrollback must cost the same memory whatever its output looks like: kept as
    the chunks that arrived, 2 MiB of `echo` output is ten thousand small objects (about a
    tenth more again in headers, allocated where the large chunks of a `cat` that they replace
    cannot be reused), so a long-lived session's memory would drift with its traffic. Here a
    chunk is copied in (a memcpy: cheap beside everything else done with it); the buffer grows
    with the output up to `cap`, then wraps."""

    def __init__(self, cap: int, base: int = 0) -> None:
        self.cap = max(1, cap)
        self.base = base  # absolute offset of the oldest byte kept
        self.size = 0
        self._buf = bytearray()  # contiguous from `base` until full, then a ring
        self._head = 0  # index of the byte at `base` once `_buf` is a full ring

    @property
    def end(self) -> int:
        return self.base + self.size

    def append(self, chunk: bytes) -> None:
        n = len(chunk)
        if not n:
            return
        cap = self.cap
        if self.size + n <= cap and self._head == 0 and len(self._buf) == self.size:
            self._buf += chunk  # still filling: contiguous
            self.size += n
            return
        if n >= cap:
            self._buf = bytearray(memoryview(chunk)[n - cap :])
            self.base += self.size + n - cap
            self.size, self._head = cap, 0
            return
        if len(self._buf) < cap:  # the first wrap: one buffer of exactly `cap`, then a ring
            buf = bytearray(self.get(self.end - (cap - n), self.end))
            buf += chunk
            self.base = self.end + n - cap
            self._buf, self.size, self._head = buf, cap, 0
            return
        pos = self._head  # full: the new bytes overwrite the oldest
        first = min(n, cap - pos)
        self._buf[pos : pos + first] = chunk[:first]
        if first < n:
            self._buf[: n - first] = chunk[first:]
        self._head = (pos + n) % cap
        self.base += n

    def trim(self, keep: int) -> int:
        """Keep only the last `keep` bytes (memory pressure); returns the bytes dropped. The
        buffer shrinks to them and grows again with new output, up to `cap`."""
        cut = self.size - max(0, keep)
        if cut <= 0:
            return 0
        end = self.end
        self._buf = bytearray(self.get(end - keep, end))
        self.base, self.size, self._head = end - keep, keep, 0
        return cut

    def get(self, start: int, end: int) -> bytes:
        start = max(start, self.base)
        end = min(end, self.end)
        if end <= start:
            return b""
        i = self._head + start - self.base
        j = i + end - start
        cap = len(self._buf)
        with memoryview(self._buf) as view:
            if i >= cap:
                return bytes(view[i - cap : j - cap])
            if j <= cap:
                return bytes(view[i:j])
            return bytes(view[i:]) + bytes(view[: j - cap])
