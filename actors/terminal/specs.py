"""What each session was created from, and which command it is running, kept on disk for a
successor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
from loguru import logger

from moorage.actors.runtime.statefile import write_atomic


class SpecStore:
    """What each session was created from, on disk, for a successor (msgpack, 0600): a
    terminal actor that finds a session here that the keeper no longer holds knows that the
    keeper died with it, and starts it again from this."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.specs: dict[str, dict[str, Any]] = {}
        try:
            loaded = msgpack.unpackb(path.read_bytes())
            if isinstance(loaded, dict):
                self.specs = loaded
        except FileNotFoundError:
            pass
        except Exception as exc:
            logger.warning("session records {} unreadable, ignored: {}", path, exc)

    def put(self, sid: str, spec: dict[str, Any]) -> None:
        self.specs[sid] = spec
        self._save()

    def drop(self, sid: str) -> None:
        if self.specs.pop(sid, None) is not None:
            self._save()

    def clear(self) -> None:
        """Forget every record (the sessions are in the keeper's hands, or gone on purpose)."""
        self.specs.clear()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            self._unsaved(exc)

    def _save(self) -> None:
        try:
            write_atomic(self.path, msgpack.packb(self.specs, use_bin_type=True))
        except OSError as exc:
            self._unsaved(exc)

    def _unsaved(self, exc: OSError) -> None:
        """The records stay right in memory, and every session keeps working; what is lost
        is that a successor of ours would not know them (a session lost with every holder of
        its PTY meanwhile is not started again). Said, and tried again at the next change."""
        logger.error("session records {} not saved: {}; a session lost with every holder "
                     "of its PTY is not recreated until they are", self.path, exc)


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


def exec_call(record: Any) -> Call | None:
    """The call of a session's exec record (its meta's "exec" or "exec_ran")."""
    return (record["sid"], record["id"]) if record else None


def _call(value: Any) -> Call | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) \
            and type(value[1]) is int:
        return value[0], value[1]
    return None
