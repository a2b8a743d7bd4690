"""What outlives the watcher's process, in its state directory, and how a restart uses it.

  watches.msgpack   the watches and their holders, saved as soon as they change
  wal.<g>.msgpack   the paths of every event, appended before the event is published
                    (snapshot.Wal; a generation starts at each capture)
  snapshot.msgpack  the told state (path -> stat), captured every interval and written one
                    interval later, so every event in it left the process an interval
                    before it could have died; older wal generations are then deleted. The
                    capture is a wal generation and the index itself, not a copy: its
                    entries are read as they are packed, a chunk a loop turn
                    (snapshot.stream), and a path changed since the capture, whichever
                    stat it was packed with, is in a newer generation, so it counts as
                    unknown. Also written at once (`now`) when the told state gained
                    what no event told and so no wal generation holds: a new watch's crawl
                    (its fs.watch is answered once it is on disk), a fresh resync's walk

A checkpoint written at once is labelled with the generation of the snapshot on disk (`_kept`),
not a new one: every event published since that snapshot's capture, those of the last interval
among them (maybe still on their way out), stays unknown to a restart, as it was, and no wal
generation is deleted; only what no generation holds, the crawl, becomes known. Its write is
the interval's (packed on the loop a chunk a turn, written by a worker) and waits for one under
way (one temporary file); the watches waiting meanwhile are answered by one write.

A restart diffs the walk against the snapshot in which every path of a newer wal generation
counts as unknown: published after the snapshot, maybe seen by a subscriber, maybe not, so
its current state is reported again. Changes in flight when the process died and changes made
while it was down differ from the snapshot and are reported by the same diff.

State written by another `moorage up` (another tree: the instance's lock file tells) is not
continued; neither is a snapshot that cannot be read or is not there: the restart then has
no base (`restart_base` None) and its resync is fresh (`fresh: true`: its consumers list
again). A diff against no snapshot would report what exists as created and nothing that
went away while the watcher was down, under a claim of continuity it has not got.

A log, a checkpoint or the watches that cannot be written or packed, whatever the reason,
give the state up (`lose`): the snapshot goes (so a restart is fresh), the log is closed, the
events go on, and fs.stats says why (`checkpoints.lost`). It never stops a flush or an op,
nor leaves the worker writing a checkpoint waiting for a part that will not come. A cause
in the state directory (a full or read-only disk, the directory gone: an OSError) passes,
so each checkpoint tries to rebuild the state (`_rebuild`): the watches saved, a new log
generation opened, a capture taken; that capture is written an interval later, as every
capture is (what was published just before it may not have left the process yet, and no
log generation has the events of the lost time), and the state is kept again
(`checkpoints.rebuilt`). A restart before then is fresh. A cause in the state itself (a
part that cannot be packed) would fail every rebuild the same way: none is tried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from loguru import logger

from moorage.actors.runtime.statefile import write_atomic_parts
from moorage.actors.watcher import snapshot
from moorage.actors.watcher.snapshot import UNKNOWN, Stat, Wal
from moorage.actors.watcher.workers import Job, Offload
from moorage.protocol.errors import MoorageError


def _answer_all(waiting: list[Callable[[], None]]) -> None:
    """Each of those a checkpoint written at once was for: one that raises strands none of
    the others (each is a watch's answer)."""
    for done in waiting:
        try:
            done()
        except Exception:
            logger.exception("watcher: answering after a checkpoint failed")


def tree_identity(runtime_dir: Path) -> str:
    """Which `moorage up` this is (its lock file: root pid, inode, ctime); "" outside one."""
    lock = runtime_dir / "lock"
    try:
        st = lock.stat()
        return f"{lock.read_text().strip()}:{st.st_ino}:{st.st_ctime_ns}"
    except OSError:
        return ""


# How long a stop waits for the worker writing a checkpoint.
CLOSE_WAIT_S = 5.0
# Packed parts that may wait for the worker: the loop packs on once it has taken one.
PARTS_AHEAD = 2


class Unpacked(Exception):
    """A checkpoint's part could not be packed: its write ends unwritten. Raised to the
    write's consumer (the worker, or `_save` on the loop) once the state is given up."""


class _Parts:
    """A checkpoint's packed parts on their way from the loop, which packs one a turn, to the
    worker that writes each as it comes (`put` on the loop, iterated on the worker). Held
    whole until written, they were 16-19 MB of a 190,000-path index each time a changing
    tree's checkpoint came round; now at most PARTS_AHEAD: while that many wait (the worker
    has not started, or a slow disk holds it), the loop stops packing, and the worker, taking
    one, has it go on (`wake`: a call on the loop's thread; without it, no bound)."""

    def __init__(self, wake: Callable[[Callable[[], None]], None] | None = None) -> None:
        self._q: SimpleQueue[bytes | Unpacked | None] = SimpleQueue()
        self._lock = threading.Lock()  # `_ahead` and `_resume`, between the loop and worker
        self._ahead = 0  # parts put and not taken yet
        self._resume: Callable[[], None] | None = None  # the loop's packing, waiting for room
        self._wake = wake
        self.packing = 0.0  # seconds the loop spent packing
        self.waited = 0.0  # seconds the worker waited for the loop (not the write's cost)
        self.done = threading.Event()  # the worker is through with them, however it went
        self.result: tuple[int, float] | None = None  # what the write gave (None: failed)

    def room(self, resume: Callable[[], None]) -> bool:
        """On the loop: may another part be packed now? If not, `resume` runs on the loop
        once the worker has taken one (the check and the hand-over under one lock: the
        worker cannot take the last one in between unseen)."""
        if self._wake is None:
            return True
        with self._lock:
            if self._ahead < PARTS_AHEAD:
                return True
            self._resume = resume
            return False

    def put(self, part: bytes | Unpacked | None) -> None:
        """The next part; None: there are no more; Unpacked: the rest cannot be packed, and
        the worker's write ends with it, unwritten."""
        with self._lock:
            self._ahead += 1
        self._q.put(part)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            t0 = time.perf_counter()
            part = self._q.get()
            self.waited += time.perf_counter() - t0
            with self._lock:
                self._ahead -= 1
                resume, self._resume = self._resume, None
            if resume is not None and self._wake is not None:
                self._wake(resume)
            if part is None:
                return
            if isinstance(part, Unpacked):
                raise part
            yield part


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
        # The checkpoint being written on a worker: (capture, its parts), and what is left
        # of it to pack a turn at a time (None: all of it packed)
        self._inflight: tuple[dict[str, Any], _Parts] | None = None
        self._rest: Iterator[bytes] | None = None
        # Why the state on disk is not whole (None: it is); cleared once a rebuild's capture
        # is written. Events are logged only while `_logging` (the log open, and the state
        # kept or being rebuilt); `wal` stays after a loss, closed, for reading the
        # generations a restart's base needs.
        self.lost: str | None = None
        self._logging = False
        self._logs = False  # this life logs events (not cache_only): a rebuild reopens the log
        self._lasting = False  # the loss's cause would fail any rebuild the same way
        # Bumped by each loss: a write begun before one must not stand, nor be tried again.
        self._era = 0
        self.rebuilt = 0  # times the state was kept again after a loss
        self._watches: dict[str, Any] | None = None  # the watches as last given
        self._watches_unsaved = False  # ... and not on disk
        # The generation the snapshot on disk is labelled with: every wal generation from it
        # on is on disk (a write deletes only those before its own label). 0: none.
        self._kept = 0
        # Checkpoints written at once (`now`): those waiting for the next one, the one being
        # written (answered when its write ends, however it went), and how to make the next
        # (the last `now` call's seq, capture and offloads)
        self._asked: list[Callable[[], None]] = []
        self._answers: list[Callable[[], None]] = []
        self._now_args: tuple[int, Callable[[], dict[str, Any]], Offload | None,
                              Callable[[Callable[[], None]], Any] | None,
                              Callable[[Callable[[], None]], None] | None] | None = None
        self.at_once = 0  # checkpoints written at once

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
        self._kept = int(saved.get("gen", 0)) if saved is not None else 0
        return watches, saved

    def save_watches(self, doc: dict[str, Any], holds: bool = False) -> None:
        """Save the watches as they now are. Called at the start and by the ops that change
        them, which are done whether or not this gets to disk: one that does not (a full
        state disk) gives the state up (a restart from the older watches file must not
        claim continuity) and is tried again by the rebuild; it never raises.

        `holds`: only who holds the watches changed (watches.Watch.hold), not what is
        watched. The told state does not depend on that, so no new capture is due, and a
        save the disk refuses does not give the state up: it is tried again with the next
        save, and at the stop. The same doc again writes nothing."""
        watches = {"tree": self.tree, **doc}
        if holds and not self._watches_unsaved and watches == self._watches:
            return
        if not holds:
            self.watch_version += 1
        self._watches = watches
        self._watches_unsaved = True
        failed = self._save_watches()
        if failed is None:
            return
        if holds and isinstance(failed, OSError):
            logger.warning("watcher: the watches' holders not saved ({}); tried again with "
                           "the next save", failed)
            return
        self.lose(f"the watches: {failed}", lasting=not isinstance(failed, OSError))

    def _save_watches(self) -> Exception | None:
        """Write the watches as last given (if given at all): what failed, or None."""
        if self._watches is None:
            return None
        try:
            snapshot.save(self._path("watches"), self._watches)
        except Exception as exc:  # (a disk full or read-only; a doc msgpack refuses)
            return exc
        self._watches_unsaved = False
        return None

    def open_wal(self) -> Wal | None:
        """Open the log of this life's events (not in cache_only). A log that cannot be
        opened gives the state up, as one that cannot be written does; after a loss at the
        start (the watches' save) it is opened all the same, closed, for the restart's base
        (`restart_base` reads the older generations through it)."""
        self._logs = True
        try:
            self.wal = Wal(str(self.dir))
        except OSError as exc:
            self.lose(f"the write-ahead log could not be opened: {exc}")
            return None
        if self.lost is None:
            self._logging = True
        else:
            self.wal.close()
        return self.wal

    def restart_base(self, saved: dict | None, in_scope: Callable[[str], bool]
                     ) -> dict[str, Stat] | None:
        """The told state to diff a restart against (see the module doc); None when there is
        no snapshot to diff against (or no log to read): the restart's resync is then fresh,
        never a diff against a base that is not whole."""
        if saved is None or self.wal is None:
            return None
        entries = dict(saved.get("entries", {}))
        for p in self.wal.touched(int(saved.get("gen", 0))):
            entries[p] = UNKNOWN
        return {p: s for p, s in entries.items() if in_scope(p)}

    def log(self, paths: list[str]) -> None:
        """The write-ahead log: the paths of a batch of events, before it is published. A
        log that cannot be written (its directory removed, its disk full) must not stop the
        events: the state is given up instead (`lose`)."""
        if not self._logging:
            return
        assert self.wal is not None
        try:
            self.wal.append(paths)
        except Exception as exc:  # (a disk full; a path msgpack refuses) never the events
            self.lose(f"the write-ahead log: {type(exc).__name__}: {exc}",
                      lasting=not isinstance(exc, OSError))

    def lose(self, why: str, lasting: bool = False) -> None:
        """Keep no state until it is rebuilt, and leave none that a restart could take for
        whole: the snapshot goes, so the next process has no base and resyncs fresh instead
        of missing what only the lost log knew. `lasting`: the cause is in the state, not
        the disk, and a rebuild would fail the same way (module doc)."""
        self._era += 1
        self._lasting = self._lasting or lasting
        if self.lost is not None and not self._logging:
            return  # (lost already, and nothing written since)
        self.lost = why
        logger.error("watcher: state no longer kept ({}); a restart resyncs fresh until it "
                     "is rebuilt", why)
        self._captured = None
        asked, self._asked = self._asked, []  # (nothing will be written for them)
        later = self._now_args[3] if self._now_args is not None else None
        if later is not None:  # (a turn later: this may run inside a publish)
            later(lambda: _answer_all(asked))
        else:
            _answer_all(asked)
        self._drop_snapshot()
        if self._logging and self.wal is not None:
            self.wal.close()
        self._logging = False

    def _rebuild(self) -> bool:
        """At a checkpoint of a lost state: may it go on? True once the log is open again
        (the checkpoint then captures, and the capture's write keeps the state again:
        `_written`); False while the state directory still refuses (tried again at the
        next checkpoint) or the loss is lasting."""
        if self._logging or self.lost is None:
            return True
        if self._lasting:  # (never rebuilt; the watches still saved, for the next start)
            if self._watches_unsaved:
                self._save_watches()
            return False
        # The watches written first, saved or not: a write that needs room, which tells
        # whether the disk takes writes again before a log generation is opened for nothing
        # (a full tmpfs still makes empty files) and every next event gives the state up.
        if self._save_watches() is not None:
            return False
        if not self._logs:  # (cache_only: the watches were all there was to keep)
            self._kept_again()
            return True
        try:
            self.wal = Wal(str(self.dir))  # (a new generation, past the lost ones)
        except OSError:
            return False
        self._logging = True
        self._mark = (-1, -1)  # (a capture at once: its write, an interval later, is whole)
        logger.info("watcher: the state directory takes writes again; rebuilding the state")
        return True

    def _kept_again(self) -> None:
        logger.info("watcher: state kept again (it was lost: {})", self.lost)
        self.lost = None
        self.rebuilt += 1

    def _drop_snapshot(self) -> None:
        try:
            Path(self._path("snapshot")).unlink(missing_ok=True)
        except OSError as exc:
            logger.error("watcher: the snapshot could not be removed: {}", exc)

    def checkpoint(self, seq: int, capture: Callable[[], dict[str, Any]],
                   write: Offload | None = None,
                   later: Callable[[Callable[[], None]], Any] | None = None,
                   wake: Callable[[Callable[[], None]], None] | None = None) -> float:
        """Write what was captured one call ago, then capture anew if anything changed.
        Returns the seconds the last checkpoint took (the caller spaces the calls by it).
        While one is being written a call does nothing.

        With `write` (a worker) and `later` (the loop's timer at 0 s: it runs after the
        next turn's requests), the capture is packed here a chunk a turn (snapshot.stream:
        a 100,000-file tree is about 200 chunks of about 100 µs, with whatever arrived
        served in between) and the worker writes each part as it comes (_Parts). Packed on
        the worker, the GIL went back and forth between it and the loop at every chunk and
        held each request up to a switch interval, or, packed in one go, held the loop for
        the whole 10-20 ms. `wake` (the loop's call from another thread) bounds the parts
        packed ahead of the worker (_Parts). Without `write` and `later`, all of it is done
        here.

        A checkpoint asked for at once (`now`) that could not start (the workers were full)
        is written first; this call's then waits for the next. A lost state is rebuilt
        from here (`_rebuild`)."""
        if self.writing or not self._rebuild():
            return self.last_cost
        if self._asked:
            self._write_now()
            if self.writing:
                return self.last_cost
        captured, self._captured = self._captured, None
        if captured is not None:
            if write is None or later is None:
                era = self._era
                self._written(captured, self._save(captured), era)
            else:
                self._stream(captured, write, later, wake)
        mark = (seq, self.watch_version)
        if mark != self._mark and self._logging and self.wal is not None:
            self._mark = mark
            try:
                gen = self.wal.rotate()
            except OSError as exc:
                self.lose(f"the write-ahead log's next generation: {exc}")
                return self.last_cost
            self._captured = {"tree": self.tree, "seq": seq, "gen": gen, **capture()}
        return self.last_cost

    def now(self, seq: int, capture: Callable[[], dict[str, Any]], done: Callable[[], None],
            write: Offload | None = None,
            later: Callable[[Callable[[], None]], Any] | None = None,
            wake: Callable[[Callable[[], None]], None] | None = None) -> None:
        """Write the told state as it is now, then `done()`: the told state gained what no
        event told (a new watch's crawl), so no wal generation has it, and the snapshot of
        the last interval may not either (module doc). Labelled with the snapshot on disk's
        generation (`_kept`), it keeps every event of the last interval unknown. Written as
        `checkpoint` writes (the same arguments); after the write under way, if there is
        one, and for every call made meanwhile at once. `done` runs however the write went
        (a state directory that cannot be written is logged; a lost state writes nothing):
        whoever waits for it is not held for good."""
        if self.lost is not None or self.wal is None:
            _answer_all([done])
            return
        self._asked.append(done)
        self._now_args = (seq, capture, write, later, wake)
        if not self.writing:
            self._write_now()

    def _write_now(self) -> None:
        """The checkpoint `now` asked for, for everyone who asked so far."""
        assert self._now_args is not None
        seq, capture, write, later, _wake = self._now_args
        asked, self._asked = self._asked, []
        doc = {"tree": self.tree, "seq": seq, "gen": self._kept, **capture()}
        if write is None or later is None:
            era = self._era
            self._written(doc, self._save(doc), era, at_once=True)
            _answer_all(asked)
        elif not self._stream(doc, write, later, _wake, asked):
            self._asked[:0] = asked  # the workers are full: at the next checkpoint call

    def _stream(self, captured: dict[str, Any], write: Offload,
                later: Callable[[Callable[[], None]], Any],
                wake: Callable[[Callable[[], None]], None] | None,
                answers: list[Callable[[], None]] | None = None) -> bool:
        """Start the worker's write of `captured`, then pack its first part (the worker waits
        for each; one io worker is taken until the last part is written). `answers`: it is
        written at once (`now`), for them. False: not started (the workers are full)."""
        parts = _Parts(wake)
        at_once = answers is not None
        era = self._era

        def written(got: tuple[int, float] | None) -> None:
            if self._inflight is not None and self._inflight[1] is parts:
                self._inflight = self._rest = None  # (a write that failed: no more to pack)
            self._written(captured, None if got is None else (
                got[0], got[1] - parts.waited + parts.packing), era, at_once=at_once)
            self._answer()

        try:
            job = write(lambda: self._write_streamed(captured, parts, era), written)
        except MoorageError:  # the workers are full: next time (or a newer capture)
            if self._captured is None and not at_once:
                self._captured = captured
            return False
        self.writing = True
        self._answers = answers or []
        self._inflight, self._rest = (captured, parts), self._packed(captured)
        job.then(self._write_settled)
        self._pack(parts, later)
        return True

    def _answer(self) -> None:
        """The write under way ended: answer those it was written for, and start the one
        asked for meanwhile."""
        answers, self._answers = self._answers, []
        _answer_all(answers)
        if self._asked and not self.writing and self.lost is None:
            self._write_now()

    def _pack(self, parts: _Parts, later: Callable[[Callable[[], None]], Any]) -> None:
        """One turn's part of the checkpoint being streamed, handed to its worker; the next
        turn the next."""
        rest = self._rest
        if rest is None or self._inflight is None or self._inflight[1] is not parts:
            return  # (its write failed, or a stop packed the rest)
        if not parts.room(lambda: self._pack(parts, later)):
            return  # PARTS_AHEAD wait for the worker: it has us go on when it takes one
        t0 = time.perf_counter()
        try:
            part = next(rest, None)
        except Unpacked as exc:  # (the state is given up: the worker's write ends with it)
            self._rest = None
            parts.put(exc)
            return
        parts.packing += time.perf_counter() - t0
        parts.put(part)
        if part is None:
            self._rest = None
            return
        later(lambda: self._pack(parts, later))

    def _write_streamed(self, captured: dict[str, Any], parts: _Parts, era: int
                        ) -> tuple[int, float] | None:
        """On the worker: write the parts as the loop packs them."""
        try:
            parts.result = self._save_parts(captured, parts, 0.0, era)
            return parts.result
        finally:
            parts.done.set()

    def _packed(self, captured: dict[str, Any]) -> Iterator[bytes]:
        """`captured`'s parts (snapshot.stream), packed on the loop. One that cannot be
        packed gives the state up (a checkpoint without it is not the told state, and every
        later one would fail the same way) and ends the write: Unpacked."""
        try:
            yield from snapshot.stream(captured)
        except Exception as exc:
            self.lose(f"the checkpoint could not be packed: {type(exc).__name__}: {exc}")
            raise Unpacked(str(exc)) from exc

    def _save(self, captured: dict[str, Any]) -> tuple[int, float] | None:
        """Pack and write `captured` here (at a stop, or without a worker)."""
        return self._save_parts(captured, self._packed(captured), 0.0, self._era)

    def _save_parts(self, captured: dict[str, Any], parts: Iterable[bytes], spent: float,
                    era: int) -> tuple[int, float] | None:
        """Write the packed `captured` (`parts`: packed already, or as they are written)
        and drop the wal generations it makes useless: (bytes, seconds spent packing and
        writing), or None when it could not be written. Touches only files (it may run on
        a worker). `era`: the losses when its write began; one since (`lose` on the loop)
        means it is not whole."""
        t0 = time.perf_counter()
        try:
            n = write_atomic_parts(self._path("snapshot"), parts)
        except OSError:
            logger.exception("watcher: checkpoint not written")
            return None
        except Unpacked:  # (the state was given up where it was packed, and logged there)
            return None
        if era != self._era:  # (lost while it was written: it must not stay)
            self._drop_snapshot()
            return None
        if self.wal is not None:
            self.wal.drop_before(captured["gen"])
        return n, spent + time.perf_counter() - t0

    def _written(self, captured: dict[str, Any], got: tuple[int, float] | None,
                 era: int, at_once: bool = False) -> None:
        """A write ended (`got`: what it wrote, None: nothing). One begun before a loss
        counts for nothing: it was dropped, and is not written again."""
        self.writing = False
        if era != self._era:
            return
        if got is None:
            # not written: again next time, unless superseded (one written at once is not
            # written again: the next capture's write has all it had)
            if self._captured is None and not at_once:
                self._captured = captured
            return
        self.bytes, self.last_cost = got
        self.written += 1
        self.last_ms = round(self.last_cost * 1000, 3)
        if at_once:
            self.at_once += 1
        else:
            self._kept = captured["gen"]
            if self.lost is not None:  # (the rebuild's capture: the state is whole again)
                self._kept_again()

    def _write_settled(self, job: Job) -> None:
        if job.error is not None:  # (a bug: `_save` answers None for what it expects)
            logger.opt(exception=job.error).error("watcher: checkpoint write failed")
            self.writing = False
            self._inflight = self._rest = None
            self._answer()

    def close(self) -> None:
        # (a loop that runs no more answers nobody: the told state they wait for is written
        # below all the same, as the newest capture, unless there is none)
        asked, self._asked, self._answers = self._asked, [], []
        if asked and self._captured is None and self._now_args is not None:
            seq, capture = self._now_args[:2]
            self._captured = {"tree": self.tree, "seq": seq, "gen": self._kept, **capture()}
        inflight, rest = self._inflight, self._rest
        self._inflight = self._rest = None
        if inflight is not None and self.writing:
            # A checkpoint's write under way: what is left of it is packed now (unless its
            # write failed already), and the write waited for (a write of the newer capture
            # would use the same temporary file). Its hand-back would come to a loop that
            # runs no more.
            captured, parts = inflight
            if rest is not None:
                end: Unpacked | None = None
                if not parts.done.is_set():
                    try:
                        for part in rest:
                            parts.put(part)
                    except Unpacked as exc:
                        end = exc
                parts.put(end)
            if not parts.done.wait(CLOSE_WAIT_S):
                logger.warning("watcher: the last checkpoint's write did not end within {} s",
                               CLOSE_WAIT_S)
                if self._logging and self.wal is not None:
                    self.wal.close()
                return
            self.writing = False
            if parts.result is None and self._captured is None:  # failed: once more, here
                self._captured = captured
        if self._captured is not None and not self.writing and self.lost is None:
            era = self._era
            self._written(self._captured, self._save(self._captured), era)
        if self._watches_unsaved:  # (once more; a restart still resyncs fresh)
            self._save_watches()
        if self._logging and self.wal is not None:
            self.wal.close()

    def stats(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "written": self.written, "last_ms": self.last_ms,
                "bytes": self.bytes, "wal_records": self.wal.records if self.wal else 0,
                "lost": self.lost, "rebuilt": self.rebuilt,
                "watches_unsaved": self._watches_unsaved,
                "at_once": self.at_once, "asked": len(self._asked)}
