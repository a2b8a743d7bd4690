"""Replies kept by (session, request id), so a retried request is answered, not run again.

A client retries with the same id after a timeout or a reconnect; whatever the first attempt
did, the second gets the same reply. Only requests that ran are cached: a refusal that means
"not run" (busy, deadline_expired) is safe to run on retry. Bounded by entries and bytes,
least recently stored first out.

The bounds mean an entry can go before a resend of its request arrives (a flood of other
calls, memory pressure, a reply too big to keep): a resend that finds nothing would then run
a second time. So the cache remembers the latest `keep_until_ms` (the request's deadline) of
any entry it let go early: a resend pinned to this actor life (`ep`) whose deadline is not
later than that may be one whose reply was let go, and is refused `outcome_unknown` rather
than run (`dropped_before`). One integer, no list of ids: a flood cannot grow it.
"""

from __future__ import annotations

from collections import OrderedDict

# An entry's frames and the time (Unix ms) until which a resend of its request may come.
_Entry = tuple[list[bytes], int]


class ReplyCache:
    def __init__(self, max_entries: int = 4096, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        # The latest keep_until_ms of an entry let go (or too big to store); 0: none was. (One
        # already past does no harm: a resend past its deadline is refused anyway.)
        self.dropped_until_ms = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, sid: str, rid: int) -> list[bytes] | None:
        entry = self._entries.get((sid, rid))
        if entry is None:
            return None
        self.hits += 1
        return entry[0]

    def put(self, sid: str, rid: int, frames: list[bytes], keep_until_ms: int = 0,
            size: int | None = None) -> None:
        """Keep `frames` for a resend of (sid, rid), which may come until `keep_until_ms`.
        `size`: their bytes, when the caller has counted them already."""
        if size is None:
            size = sum(map(len, frames))
        if size > self.max_bytes // 4:
            self._dropped(keep_until_ms)  # too big to keep: a resend of it is refused
            return
        key = (sid, rid)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= sum(map(len, old[0]))
        self._entries[key] = (frames, keep_until_ms)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._pop_oldest()

    def trim(self, fraction: float) -> int:
        """Drop the oldest `fraction` of entries (memory pressure). Returns how many went."""
        n = int(len(self._entries) * fraction)
        for _ in range(n):
            self._pop_oldest()
        return n

    def dropped_before(self, keep_until_ms: int | None) -> bool:
        """Could the reply of a request whose resends may come until `keep_until_ms` (its
        deadline; None: no deadline, any time) have been let go? False means a miss is a
        request that never ran here (or is running: the actor's `pending` knows)."""
        if keep_until_ms is None:
            return self.dropped_until_ms > 0
        return keep_until_ms <= self.dropped_until_ms

    def _pop_oldest(self) -> None:
        _, (frames, keep_until_ms) = self._entries.popitem(last=False)
        self._bytes -= sum(map(len, frames))
        self._dropped(keep_until_ms)

    def _dropped(self, keep_until_ms: int) -> None:
        if keep_until_ms > self.dropped_until_ms:
            self.dropped_until_ms = keep_until_ms
