"""What outlives the watcher's process, in its state directory, and how a restart uses it.

  watches.msgpack   the watches, saved as soon as they change
  wal.<g>.msgpack   the paths of every event, appended before the event is published
                    (snapshot.Wal; a generation starts at each capture)
  snapshot.msgpack  the told state (path -> stat tuple), captured every interval and written
                    one interval later, so every event in it left the process an interval
                    before it could have died; older wal generations are then deleted

A restart diffs the walk against the snapshot in which every path of a newer wal generation
counts as unknown: published after the snapshot, maybe seen by a subscriber, maybe not, so
its current state is reported again. Changes in flight when the process died and changes made
while it was down differ from the snapshot and are reported by the same diff.

State written by another `moorage up` (another tree: the instance's lock file tells) is not
continued; neither is a file that cannot be read (then the restart has no base to diff against
and reports every watched path as created: complete, if noisy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.watcher import snapshot
from moorage.actors.watcher.snapshot import UNKNOWN, Stat, Wal
from moorage.actors.watcher.workers import Job, Offload
from moorage.protocol.errors import MoorageError


def tree_identity(runtime_dir: Path) -> str:
    """Which `moorage up` this is (its lock file: root pid, inode, ctime); "" outside one."""
    lock = runtime_dir / "lock"
    try:
        st = lock.stat()
        return f"{lock.read_text().strip()}:{st.st_ino}:{st.st_ctime_ns}"
    except OSError:
        return ""


class State:
    def __init__(self, directory: Path, tree: str) -> None:
        self.dir = directory
        self.tree = tree
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.wal: Wal | None = None
        self.watch_version = 0
        self._captured: dict[str, Any] | None = None
        self._mark: tuple[int, int] = (-1, -1)
        self.written = 0
        self.last_ms = 0.0
        self.last_cost = 0.0
        self.bytes = 0
        self.writing = False  # a checkpoint write is under way on a worker

    def _path(self, what: str) -> str:
        return str(self.dir / f"{what}.msgpack")

    def load(self) -> tuple[dict | None, dict | None]:
        """(saved watches, saved snapshot) of this tree, each None when absent."""
        watches = snapshot.load(self._path("watches"))
        saved = snapshot.load(self._path("snapshot"))
        if watches is not None and watches.get("tree") != self.tree:
            return None, None
        if saved is not None and saved.get("tree") != self.tree:
            saved = None
        return watches, saved

    def save_watches(self, doc: dict[str, Any]) -> None:
        self.watch_version += 1
        snapshot.save(self._path("watches"), {"tree": self.tree, **doc})

    def open_wal(self) -> Wal:
        self.wal = Wal(str(self.dir))
        return self.wal

    def restart_base(self, saved: dict | None, in_scope: Callable[[str], bool]
                     ) -> dict[str, Stat]:
        """The told state to diff a restart against (see the module doc)."""
        assert self.wal is not None
        entries = dict(saved.get("entries", {})) if saved is not None else {}
        gen = int(saved.get("gen", 0)) if saved is not None else 0
        for p in self.wal.touched(gen):
            entries[p] = UNKNOWN
        return {p: s for p, s in entries.items() if in_scope(p)}

    def log(self, paths: list[str]) -> None:
        """The write-ahead log: the paths of a batch of events, before it is published."""
        assert self.wal is not None
        self.wal.append(paths)

    def checkpoint(self, seq: int, capture: Callable[[], dict[str, Any]],
                   write: Offload | None = None) -> float:
        """Write what was captured one call ago (on a worker through `write`, when given:
        a checkpoint of a 100,000-file tree is tens of milliseconds of msgpack and a file
        write; else here), then capture anew if anything changed. Returns the seconds the
        last write took (the caller spaces the calls by it). While a write is under way a
        call does nothing."""
        if self.writing:
            return self.last_cost
        captured, self._captured = self._captured, None
        if captured is not None:
            if write is None:
                self._written(captured, self._save(captured))
            else:
                self.writing = True
                try:
                    job = write(lambda: self._save(captured),
                                lambda got: self._written(captured, got))
                except MoorageError:  # the workers are full: next time
                    self.writing = False
                    self._captured = captured
                    return self.last_cost
                job.then(self._write_settled)
        mark = (seq, self.watch_version)
        if mark != self._mark and self.wal is not None:
            self._mark = mark
            self._captured = {"tree": self.tree, "seq": seq, "gen": self.wal.rotate(),
                              **capture()}
        return self.last_cost

    def _save(self, captured: dict[str, Any]) -> tuple[int, float] | None:
        """Write `captured` and drop the wal generations it makes useless: (bytes, seconds),
        or None when it could not be written. Touches only files (it may run on a worker)."""
        t0 = time.perf_counter()
        try:
            n = snapshot.save(self._path("snapshot"), captured)
        except OSError:
            logger.exception("watcher: checkpoint not written")
            return None
        if self.wal is not None:
            self.wal.drop_before(captured["gen"])
        return n, time.perf_counter() - t0

    def _written(self, captured: dict[str, Any], got: tuple[int, float] | None) -> None:
        self.writing = False
        if got is None:
            if self._captured is None:  # not written: again next time, unless superseded
                self._captured = captured
            return
        self.bytes, self.last_cost = got
        self.written += 1
        self.last_ms = round(self.last_cost * 1000, 3)

    def _write_settled(self, job: Job) -> None:
        if job.error is not None:  # (a bug: `_save` answers None for what it expects)
            logger.opt(exception=job.error).error("watcher: checkpoint write failed")
            self.writing = False

    def close(self) -> None:
        if self._captured is not None and not self.writing:
            self._written(self._captured, self._save(self._captured))
        if self.wal is not None:
            self.wal.close()

    def stats(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "written": self.written, "last_ms": self.last_ms,
                "bytes": self.bytes, "wal_records": self.wal.records if self.wal else 0}
