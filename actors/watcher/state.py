"""What outlives the watcher's process, in its state directory, and how a restart uses it.

  watches.msgpack   the watches, saved as soon as they change
  wal.<g>.msgpack   the paths of every event, appended before the event is published
                    (snapshot.Wal; a generation starts at each capture)
  snapshot.msgpack  the told state (path -> stat), captured every interval and written one
                    interval later, so every event in it left the process an interval
                    before it could have died; older wal generations are then deleted. The
                    capture is a wal generation and the index itself, not a copy: its
                    entries are read as they are packed, a chunk a loop turn
                    (snapshot.stream), and a path changed since the capture, whichever
                    stat it was packed with, is in a newer generation, so it counts as
                    unknown

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from loguru import logger

from moorage.actors.runtime.statefile import write_atomic_parts
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
                   write: Offload | None = None,
                   later: Callable[[Callable[[], None]], Any] | None = None) -> float:
        """Write what was captured one call ago, then capture anew if anything changed.
        Returns the seconds the last checkpoint took (the caller spaces the calls by it).
        While one is being written a call does nothing.

        With `write` (a worker) and `later` (the loop's timer at 0 s: it runs after the
        next turn's requests), the capture is packed here a chunk a turn (snapshot.stream:
        a 100,000-file tree is about 200 chunks of about 100 µs, with whatever arrived
        served in between) and the worker only writes the parts. Packed on the worker, the
        GIL went back and forth between it and the loop at every chunk and held each request
        up to a switch interval, or, packed in one go, held the loop for the whole 10-20 ms.
        Without them, all of it is done here."""
        if self.writing:
            return self.last_cost
        captured, self._captured = self._captured, None
        if captured is not None:
            if write is None or later is None:
                self._written(captured, self._save(captured))
            else:
                self.writing = True
                self._pack(captured, snapshot.stream(captured), [], 0.0, write, later)
        mark = (seq, self.watch_version)
        if mark != self._mark and self.wal is not None:
            self._mark = mark
            self._captured = {"tree": self.tree, "seq": seq, "gen": self.wal.rotate(),
                              **capture()}
        return self.last_cost

    def _pack(self, captured: dict[str, Any], parts: Iterator[bytes], packed: list[bytes],
              spent: float, write: Offload, later: Callable[[Callable[[], None]], Any]
              ) -> None:
        """One turn's chunk of `captured`; the next turn the next, and after the last the
        write goes to the worker."""
        t0 = time.perf_counter()
        part = next(parts, None)
        spent += time.perf_counter() - t0
        if part is not None:
            packed.append(part)
            later(lambda: self._pack(captured, parts, packed, spent, write, later))
            return
        try:
            job = write(lambda: self._save_parts(captured, packed, spent),
                        lambda got: self._written(captured, got))
        except MoorageError:  # the workers are full: next time (or a newer capture)
            self.writing = False
            if self._captured is None:
                self._captured = captured
            return
        job.then(self._write_settled)

    def _save(self, captured: dict[str, Any]) -> tuple[int, float] | None:
        """Pack and write `captured` here (at a stop, or without a worker)."""
        return self._save_parts(captured, snapshot.stream(captured), 0.0)

    def _save_parts(self, captured: dict[str, Any], parts: Iterable[bytes], spent: float
                    ) -> tuple[int, float] | None:
        """Write the packed `captured` (`parts`: packed already, or as they are written)
        and drop the wal generations it makes useless: (bytes, seconds spent packing and
        writing), or None when it could not be written. Touches only files (it may run on
        a worker)."""
        t0 = time.perf_counter()
        try:
            n = write_atomic_parts(self._path("snapshot"), parts)
        except OSError:
            logger.exception("watcher: checkpoint not written")
            return None
        if self.wal is not None:
            self.wal.drop_before(captured["gen"])
        return n, spent + time.perf_counter() - t0

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
