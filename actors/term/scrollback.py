"""A byte stream's recent past, addressed by absolute offset: a session's scrollback, and the
bytes its parser hop still needs."""

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

    def trim(self, keep: int, exact: bool = False) -> int:
        """Drop whole chunks from the front while at least `keep` bytes remain; `exact` also
        cuts the first chunk down so that just `keep` remain (a copy of what is kept: for
        pressure, not for every append)."""
        dropped = 0
        while self.chunks and self.size - len(self.chunks[0]) >= keep:
            dropped += self._pop()
        cut = self.size - keep
        if exact and cut > 0 and self.chunks:
            self.chunks[0] = self.chunks[0][cut:]
            self.size -= cut
            self.base += cut
            dropped += cut
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
