"""Coalescing within a settle window: one event per path, with VS Code's rules.

  created  + deleted  = nothing       (a temporary file nobody needs to hear about)
  deleted  + created  = modified      (an editor's safe-save: the path was replaced)
                                      but a directory replaced, or a file replaced by one, is
                                      created, its old self in `replaced` (what was under it
                                      is gone: the pipeline tells that deletion first)
  created  + modified = created       (a new file being written)
  modified + deleted  = deleted
  anything else       = the later kind, except that a path that exists stays "modified"
Each surviving event keeps the position of the path's first event in the window, so the
order of a batch is the order in which paths first changed. A path whose events cancelled
out starts afresh (at the end) if it changes again in the same window.

"Nothing" is right only for a subscriber that never heard of the path. One that did (a resync
walk saw the file and reported it, and the file's own `created` event, queued behind the
walk, then met its deletion in one window) must hear the deletion: so cancelled paths are
kept aside (`take_cancelled`) for the pipeline to check against what it told. Nor does a
cancel-out whose deletion was a rename away (`take_renamed_away`) say the path is gone: two
files exchanged (`mv --exchange a b`) are two renames, a -> b and b -> a, and b is still
there; the pipeline looks at the disk for those.

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

    __slots__ = ("absorbed", "cancelled", "pending", "renamed_away", "replaced")

    def __init__(self) -> None:
        self.pending: dict[str, list] = {}
        self.cancelled: dict[str, bool] = {}  # path -> is_dir, events that cancelled out
        self.replaced: set[str] = set()  # directories deleted, then created again
        self.renamed_away: set[str] = set()  # cancelled, the deletion a rename away
        self.absorbed = 0  # events folded into another or cancelled (a statistic)

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, path: str, kind: str, is_dir: bool, hint: str | None = None) -> None:
        p = self.pending.get(path)
        if p is None:
            self.pending[path] = [kind, is_dir, hint]
            return
        new = _RULES[(p[0], kind)]
        if new == MODIFIED and p[0] == DELETED and (p[1] or is_dir):
            new = CREATED
            self.replaced.add(path)
        self.absorbed += 1
        if new is None:
            del self.pending[path]
            self.cancelled[path] = is_dir
            if hint is not None:  # (its deletion a rename away: the path may be taken)
                self.renamed_away.add(path)
            elif self.renamed_away:
                self.renamed_away.discard(path)
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

    def take_replaced(self) -> set[str]:
        """Directories deleted and created again in this window (each also in `pending`,
        created, unless its new self was deleted too: then in `cancelled`)."""
        out = self.replaced
        if out:
            self.replaced = set()
        return out

    def take_cancelled(self) -> dict[str, bool]:
        """Paths whose events cancelled out in this window (path -> is_dir); a path that
        changed again afterwards is also in `pending`."""
        out = self.cancelled
        if out:
            self.cancelled = {}
        return out

    def take_renamed_away(self) -> set[str]:
        """Paths of `take_cancelled` whose last cancel-out was a rename away (created, then
        renamed to elsewhere): something else may stand there now (an exchange)."""
        out = self.renamed_away
        if out:
            self.renamed_away = set()
        return out

    def clear(self) -> int:
        n = len(self.pending)
        self.pending = {}
        self.cancelled = {}
        self.replaced = set()
        self.renamed_away = set()
        return n
