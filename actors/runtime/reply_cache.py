"""Replies kept by (session, request id), so a retried request is answered, not run again.

A client retries with the same id after a timeout or a reconnect; whatever the first attempt
did, the second gets the same reply. Only requests that ran are cached: a refusal that means
"not run" (busy, deadline_expired) is safe to run on retry. Bounded by entries and bytes,
least recently stored first out.
"""

from __future__ import annotations

from collections import OrderedDict


class ReplyCache:
    def __init__(self, max_entries: int = 4096, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], list[bytes]] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, sid: str, rid: int) -> list[bytes] | None:
        frames = self._entries.get((sid, rid))
        if frames is not None:
            self.hits += 1
        return frames

    def put(self, sid: str, rid: int, frames: list[bytes]) -> None:
        size = sum(map(len, frames))
        if size > self.max_bytes // 4:
            return  # too big to keep; a retry of such an op runs again (documented)
        key = (sid, rid)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= sum(map(len, old))
        self._entries[key] = frames
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= sum(map(len, dropped))

    def trim(self, fraction: float) -> int:
        """Drop the oldest `fraction` of entries (memory pressure). Returns how many went."""
        n = int(len(self._entries) * fraction)
        for _ in range(n):
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= sum(map(len, dropped))
        return n
