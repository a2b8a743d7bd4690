"""Coalescing within a settle window: one event per path, with VS Code's rules.

  created  + deleted  = nothing       (a temporary file nobody needs to hear about)
  deleted  + created  = modified      (an editor's safe-save: the path was replaced)
  created  + modified = created       (a new file being written)
  modified + deleted  = deleted
  anything else       = the later kind, except that a path that exists stays "modified"
Each surviving event keeps the position of the path's first event in the window, so the
order of a batch is the order in which paths first changed. A path whose events cancelled
out starts afresh (at the end) if it changes again in the same window.

The window itself is the pipeline's business (when to `take`); this is only the table.
"""

from __future__ import annotations

CREATED, MODIFIED, DELETED = "created", "modified", "deleted"

_RULES: dict[tuple[str, str], str | None] = {
    (CREATED, DELETED): None,
    (DELETED, CREATED): MODIFIED,
    (CREATED, MODIFIED): CREATED,
    (CREATED, CREATED): CREATED,
    (MODIFIED, MODIFIED): MODIFIED,
    (MODIFIED, DELETED): DELETED,
    (MODIFIED, CREATED): MODIFIED,
    (DELETED, DELETED): DELETED,
    (DELETED, MODIFIED): MODIFIED,
}


class Coalescer:
    """Pending events by path: [kind, is_dir, hint] where hint is the other end of a move."""

    __slots__ = ("absorbed", "pending")

    def __init__(self) -> None:
        self.pending: dict[str, list] = {}
        self.absorbed = 0  # events folded into another or cancelled (a statistic)

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, path: str, kind: str, is_dir: bool, hint: str | None = None) -> None:
        p = self.pending.get(path)
        if p is None:
            self.pending[path] = [kind, is_dir, hint]
            return
        new = _RULES[(p[0], kind)]
        self.absorbed += 1
        if new is None:
            del self.pending[path]
            self.absorbed += 1
            return
        p[0] = new
        p[1] = is_dir
        p[2] = hint if new == kind else None

    def take(self) -> dict[str, list]:
        """Everything pending, in first-change order; the window starts empty again."""
        out = self.pending
        self.pending = {}
        return out

    def clear(self) -> int:
        n = len(self.pending)
        self.pending = {}
        return n
