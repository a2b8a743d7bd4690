"""What each session was created from, and which command it is running, kept on disk for a
successor."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from loguru import logger

from moorage.actors.runtime.statefile import write_atomic

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Timer

# A record that could not be written (the runtime directory full, or read-only) is written
# again this often until it lands: space may come back with nothing changing in the sessions.
RETRY_S = 1.0
UNRECORDED_MESSAGE = ("not recorded (the runtime directory takes no write): lost with every "
                      "holder of its PTY, it would not be recreated, nor reported lost")


class SpecStore:
    """What each session was created from, on disk, for a successor (msgpack, 0600): a
    terminal actor that finds a session here that the keeper no longer holds knows that the
    keeper died with it, and starts it again from this. One file for every session, replaced
    whole (write_atomic): a kill at any moment leaves the old records or the new ones.

    A write that fails leaves the store `dirty`: it is tried again every RETRY_S on the
    actor's loop (`call_later`) until it lands. Meanwhile the sessions that are not on disk
    are told through `alert` (a `term.alert` `sessions_unrecorded`: the terminals supervisor
    dying now would lose them with no record of them, so with no `lost` event), and once
    they are on disk, `sessions_recorded`.

    Many records that change at once go in one write (`put_many`; `drop_soon`, with `defer`,
    the drops of a loop turn): a write each would cost a batch the square of its size. A
    store of other records (keeper_client.Tombstones) says what they are in its log lines
    (NOUN, UNSAVED, UNRECORDED), which records it takes from the file (`_valid`) and how an
    empty store is kept (`_write`)."""

    NOUN = "session records"
    UNSAVED = "a session lost with every holder of its PTY meanwhile is not recreated"
    UNRECORDED = UNRECORDED_MESSAGE

    def __init__(self, path: Path,
                 call_later: Callable[[float, Callable[[], None]], Timer] | None = None,
                 alert: Callable[[dict[str, Any]], None] | None = None,
                 defer: Callable[[Callable[[], None]], Any] | None = None) -> None:
        self.path = path
        self.specs: dict[str, dict[str, Any]] = {}
        self.call_later = call_later
        self.alert = alert
        self.defer = defer
        self.dirty = False  # what is on disk is not `specs`
        self.failed = 0  # writes that failed, over the actor's life
        self.error: str | None = None  # why the last write failed, while dirty
        self._retry: Timer | None = None
        self._soon = False  # a drop_soon's write is due (deferred), none since
        self._alerted: set[str] = set()  # sessions told unrecorded, not yet told recorded
        try:
            loaded = msgpack.unpackb(path.read_bytes())
            if isinstance(loaded, dict):
                self.specs = self._valid(loaded)
        except FileNotFoundError:
            pass
        except Exception as exc:
            logger.warning("{} {} unreadable, ignored: {}", self.NOUN, path, exc)
        self.recorded: set[str] = set(self.specs)  # the sessions the file on disk names

    @staticmethod
    def _valid(loaded: dict[Any, Any]) -> dict[str, dict[str, Any]]:
        """The records of a file as read (a dict) that this store takes: every one."""
        return loaded

    def put(self, sid: str, spec: dict[str, Any]) -> None:
        self.specs[sid] = spec
        self._save()

    def put_many(self, specs: dict[str, dict[str, Any]]) -> None:
        """`put` each, in one write (none when `specs` is empty)."""
        if specs:
            self.specs.update(specs)
            self._save()

    def drop(self, sid: str) -> None:
        if self.specs.pop(sid, None) is not None:
            self._save()

    def drop_soon(self, sid: str) -> None:
        """`drop`, written with the other drops of this loop turn in one write (`defer`; at
        once without it). For records a successor that still finds them only does again
        what is done with them already: the window is a loop turn's."""
        if self.specs.pop(sid, None) is None:
            return
        if self.defer is None:
            self._save()
        elif not self._soon:
            self._soon = True
            self.defer(self._save_soon)

    def clear(self) -> None:
        """Forget every record (the sessions are in the keeper's hands, or gone on purpose)."""
        self.specs.clear()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            self._unsaved(exc)
            return
        self._saved()

    def unrecorded(self) -> list[str]:
        """The sessions a successor would not know of: made, or made again, since the file
        on disk was last written."""
        return sorted(set(self.specs) - self.recorded)

    def info(self) -> dict[str, Any]:
        """For the actor's sys.info."""
        return {"dirty": self.dirty, "unrecorded": self.unrecorded(), "failed": self.failed,
                "error": self.error}

    def _write(self) -> None:
        """Put `specs` on disk whole; raises OSError when it is not."""
        write_atomic(self.path, msgpack.packb(self.specs, use_bin_type=True))

    def _save_soon(self) -> None:
        if self._soon:  # (else a write since has taken the drops in)
            self._save()

    def _save(self) -> None:
        self._soon = False
        try:
            self._write()
        except OSError as exc:
            self._unsaved(exc)
            return
        self._saved()

    def _saved(self) -> None:
        if self.dirty:
            logger.info("{} {} saved again, after {} failed write(s)", self.NOUN, self.path,
                        self.failed)
        self.dirty, self.error = False, None
        self.recorded = set(self.specs)
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        landed = sorted(self._alerted & self.recorded)
        self._alerted.clear()  # (the others were closed meanwhile: nothing left to record)
        if landed:
            self._tell("sessions_recorded", "info", landed,
                       "recorded again: recreated if every holder of its PTY dies")

    def _unsaved(self, exc: OSError) -> None:
        """The records stay right in memory, and every session keeps working; what is lost,
        until a retry lands, is that a successor of ours would not know them. Said once
        (the log, and an alert naming each session that is not on disk), then tried again
        every RETRY_S and at each change."""
        if not self.dirty:
            logger.error("{} {} not saved: {}; tried again every {} s; {}", self.NOUN,
                         self.path, exc, RETRY_S, self.UNSAVED)
        self.dirty, self.error = True, f"{type(exc).__name__}: {exc}"
        self.failed += 1
        fresh = set(self.unrecorded()) - self._alerted
        if fresh:
            self._alerted |= fresh
            logger.warning("session(s) {} {}", sorted(fresh), self.UNRECORDED)
            self._tell("sessions_unrecorded", "warning", sorted(fresh), self.UNRECORDED)
        if self._retry is None and self.call_later is not None:
            self._retry = self.call_later(RETRY_S, self._again)

    def _again(self) -> None:
        self._retry = None
        if self.dirty:
            self._save()

    def _tell(self, kind: str, severity: str, sessions: list[str], message: str) -> None:
        if self.alert is not None:
            self.alert({"kind": kind, "severity": severity, "sessions": sessions,
                        "message": message, "path": str(self.path), "error": self.error})


Call = tuple[str, int]  # a call's (sid, id)
SLOT = 2048  # one record: its length (2 bytes), then msgpack [running, ran]; a sid is at
# most 128 characters (512 bytes of UTF-8), so the two calls of a record fit with room
_RECORD_PREFIX = ".exec."


class ExecRecords:
    """Which call each session is running a command for and which it answered last, on disk.

    The keeper keeps both in the session's ring, for a successor of this actor; but the ring
    dies with every holder of the session (the terminals supervisor killed takes the keeper,
    this actor and its custody of the PTYs with it), and the session is then started again
    under its id (restore.reconcile). A client resends a term.exec whose connection dropped
    (the op is resumable): without these records the new shell would run the command a
    second time. With them the successor answers `outcome_unknown` instead.

    One small file per session, in the runtime directory, overwritten in place by one pwrite
    before the command goes to the shell: a process killed at any moment has written the
    whole record or none of it. Not fsynced: the runtime directory does not outlive the
    machine either. A record that cannot be written (the directory full) is counted in
    `failed` and the command still runs: the keeper's copy covers every other death."""

    def __init__(self, directory: Path, actor: str) -> None:
        self.directory = directory
        self.prefix = actor + _RECORD_PREFIX
        self.fds: dict[str, int] = {}
        self.written: dict[str, tuple[Call | None, Call | None]] = {}
        self.failed = 0

    def _path(self, session: str) -> Path:
        return self.directory / (self.prefix + session)

    def write(self, session: str, running: Call | None, ran: Call | None) -> None:
        """Record the session's calls, unless they are what was last written."""
        if self.written.get(session) == (running, ran):
            return
        data = msgpack.packb([running, ran], use_bin_type=True)
        try:
            fd = self.fds.get(session)
            if fd is None:
                fd = os.open(self._path(session), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                             0o600)
                self.fds[session] = fd
            os.pwrite(fd, len(data).to_bytes(2, "little") + data, 0)
        except OSError as exc:
            self.failed += 1
            self.written.pop(session, None)
            logger.warning("session {}: its command record could not be written: {}",
                           session, exc)
            return
        self.written[session] = (running, ran)

    def take(self, session: str) -> tuple[Call | None, Call | None]:
        """The session's last record (running, ran), which is then dropped."""
        try:
            raw = self._path(session).read_bytes()[:SLOT]
            n = int.from_bytes(raw[:2], "little")
            running, ran = msgpack.unpackb(raw[2:2 + n])
            got = (_call(running), _call(ran))
        except FileNotFoundError:
            got = (None, None)
        except Exception as exc:  # torn by something else, or not ours: nothing to go on
            logger.warning("session {}: its command record is unreadable: {}", session, exc)
            got = (None, None)
        self.drop(session)
        return got

    def drop(self, session: str) -> None:
        fd = self.fds.pop(session, None)
        if fd is not None:
            os.close(fd)
        self.written.pop(session, None)
        self._path(session).unlink(missing_ok=True)

    def prune(self, keep: set[str]) -> None:
        """Drop the records of sessions not in `keep` (closed while no one could drop them)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name.startswith(self.prefix) and name[len(self.prefix):] not in keep:
                self.drop(name[len(self.prefix):])

    def clear(self) -> None:
        for session in list(self.fds):
            self.drop(session)


def is_exec_record(name: str) -> bool:
    """Does `name`, an entry of a runtime dir, name an actor's exec record (`<actor>.exec.
    <session>`)? An actor's id has no dot (supervisor.spec), so the first `.exec.` after a
    name without one says so, whichever actor of whichever tree wrote it."""
    actor, sep, session = name.partition(_RECORD_PREFIX)
    return bool(sep and actor and session and "." not in actor)


def remove_exec_records(directory: Path) -> list[str]:
    """Remove every actor's exec records in `directory` (a runtime dir), whoever wrote them;
    returns their names. For the root alone, with the instance lock held: no live actor then
    writes or reads them, and the sessions and calls they name died with the tree that made
    them. A terminal drops only the records it wrote itself (`clear`), or those of sessions
    it has no record of once it has settled (`prune`): those of a killed predecessor, or of
    an actor the next tree does not have, would stay for good."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    gone = []
    for entry in entries:
        try:
            if not (is_exec_record(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        gone.append(entry.name)
    return sorted(gone)


def exec_call(record: Any) -> Call | None:
    """The call of a session's exec record (its meta's "exec" or "exec_ran")."""
    return (record["sid"], record["id"]) if record else None


def _call(value: Any) -> Call | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) \
            and type(value[1]) is int:
        return value[0], value[1]
    return None
