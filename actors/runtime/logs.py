"""Per-actor log files, set up in well under a millisecond in a freshly forked child.

loguru compiles each handler's format when it is added (about 6 ms a handler here), which
would be most of an actor's restart time. So handlers are installed once per process image
(the zygote does it before forking) and write through `SINK`, a small size-rotated file that
a child merely re-points at its own path.

The console, where it is a file the tree appends to (`up --detach`'s `logs/up.out`), is kept
under the size in MOORAGE_CONSOLE_ROTATE, KEEP older copies beside it: a tree that runs for
weeks would otherwise grow it without end (the root logs every supervisor event there).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import socket
import stat
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

from loguru import logger

FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {extra[actor]}[{process}] {message}"
CONSOLE_FORMAT = "{time:HH:mm:ss.SSS} {extra[actor]} {level} {message}"
MAX_BYTES = 10 * 1024 * 1024
RETRY_S = 1.0  # how often a log file that cannot be had is tried again, at most
KEEP = 2  # rotated files kept: name.log.1 .. name.log.KEEP
CONSOLE_ROTATE_ENV = "MOORAGE_CONSOLE_ROTATE"  # bytes a console file is kept under; unset: no
CONSOLE_MAX_BYTES = 2 * 1024 * 1024  # what `up --detach` sets it to unless given


def shift_rotated(path: Path) -> None:
    """name.1 .. name.(KEEP-1) become name.2 .. name.KEEP, the oldest dropped: name.1 is free."""
    for i in range(KEEP - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))


class RotatingFile:
    """A loguru sink: one file, renamed to .1 (.2, ...) when it passes MAX_BYTES.

    A log is never a reason for a process not to run, nor to stop logging for good: a file
    that cannot be opened, written or rotated (its disk read-only, full, out of inodes) leaves
    the process logging to the console only, which is told so once (`say`), and the file is
    tried again at the first line after RETRY_S, so that a disk that fails costs one open a
    second at most. The lines it missed meanwhile are counted, and the first line written
    again is preceded by a note of how many and since when."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] | None = None) -> None:
        """`say` takes a console line (CONSOLE_FORMAT's); by default it goes to stderr."""
        self.path: Path | None = None
        self.file: TextIO | None = None
        self.clock = clock
        self.say = say or _to_stderr
        self.lost = 0  # lines the file missed since `lost_from` (a wall-clock time)
        self.lost_from = ""
        self.failing: str | None = None  # what went wrong, told once; None: the file works
        self.torn = False  # a write failed part-way: the file may end inside a line
        self.retry_at = 0.0  # (on `clock`) the first time the file may be opened again

    def open(self, path: Path) -> None:
        """Log into `path` from now on, its directory made if missing. Never raises: a file
        that cannot be had is the class docstring's case (the console is told why)."""
        self._drop()
        self.path = path
        self.lost, self.lost_from, self.failing, self.torn = 0, "", None, False
        self._reopen()

    def write(self, message: str) -> None:
        if self.path is None:
            return
        if self.file is None and (self.clock() < self.retry_at or not self._reopen()):
            self._miss()
            return
        assert self.file is not None
        try:
            self.file.write(self._gap_note() + message)
            self.file.flush()
        except OSError as exc:
            self._miss()
            self.torn = True
            self._fail("cannot be written", exc)
            return
        self.lost, self.torn = 0, False  # (the note told them)
        try:
            if self.file.tell() > MAX_BYTES:
                self._rotate()
        except OSError as exc:
            self._fail("cannot be rotated", exc)
            return
        if self.failing is not None:  # (only now: a rotation that keeps failing is one outage)
            self.failing = None
            self._tell(f"log file {self.path} is written again")

    def _rotate(self) -> None:
        assert self.path is not None and self.file is not None
        self.file.close()
        shift_rotated(self.path)
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.file = _open_log(self.path)

    def _reopen(self) -> bool:
        assert self.path is not None
        try:
            self.file = _open_log(self.path)
        except OSError as exc:
            self._fail("cannot be opened", exc)
            return False
        return True

    def _fail(self, what: str, exc: OSError) -> None:
        """The file is given up until RETRY_S from now; the console hears of it once per
        outage (not at each retry that fails again)."""
        self._drop()
        self.retry_at = self.clock() + RETRY_S
        if self.failing is None:
            self.failing = f"{what}: {exc.strerror or exc}"
            self._tell(f"log file {self.path} {self.failing}; logging to the console only, "
                       f"and trying the file again every {RETRY_S:g} s")

    def _tell(self, text: str) -> None:
        """A warning on the console, written there directly: loguru refuses a log call from
        inside one of its sinks."""
        assert self.path is not None
        self.say(f"{_now()[11:]} {self.path.stem} WARNING {text}\n")

    def close(self) -> None:
        """The file closed; nothing more is written (until `open`)."""
        self._drop()
        self.path = None

    def _drop(self) -> None:
        if self.file is not None:
            # (closing flushes: what a full disk did not take goes with it, its line counted)
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None

    def _miss(self) -> None:
        if not self.lost:
            self.lost_from = _now()
        self.lost += 1

    def _gap_note(self) -> str:
        """A log line saying what the file missed, before its first line after an outage."""
        if not self.lost:
            return ""
        assert self.path is not None
        return ("\n" if self.torn else "") + (
            f"{_now()} WARNING {self.path.stem}[{os.getpid()}] {self.lost} log lines since "
            f"{self.lost_from} are missing here: the file {self.failing}\n")


def _open_log(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return open(path, "a", encoding="utf-8")


def _now() -> str:
    """The wall-clock time as FILE_FORMAT writes it."""
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _to_stderr(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # (no console: nobody to tell)
        sys.stderr.write(line)
        sys.stderr.flush()


class ConsoleSink:
    """The console (stderr) as a sink that never waits: what does not fit is dropped and
    counted (`dropped`); the log file has every line.

    An editor that starts `moorage up` and reads only its ready line, a journald that falls
    behind, a terminal held by ^S: a blocking write to any of them would stop the process at
    its next warning, and every process of the tree writes to the same stderr. A pipe or a
    terminal is opened again through /proc, as a description of our own set non-blocking
    (setting it on the inherited one would change it for the editor or the shell too); a
    socket is written with MSG_DONTWAIT; a file is written as it is, and kept under
    MOORAGE_CONSOLE_ROTATE bytes when asked (`rotate`). Installed once per process image (the
    zygote's children share its description).

    What the process writes to stderr itself goes through it too (`take_stderr`): Python's
    sys.stderr (a traceback, a warning, a print) is a stream over this sink, and fd 2, where
    C code writes, is the non-blocking description (a pipe's or a terminal's), so no line
    anywhere in the tree waits for a reader."""

    def __init__(self) -> None:
        self.dropped = 0
        self._fd: int | None = None
        self._reopened = False  # _fd is a description of our own, non-blocking
        self._sock: socket.socket | None = None
        self._max_bytes = 0  # a file kept under this size (`rotate`); 0: as it grows

    def open(self, fd: int) -> None:
        self.close()
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return  # no stderr at all: nothing to write to
        if stat.S_ISSOCK(mode):
            self._sock = socket.socket(fileno=os.dup(fd))
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:
                # (O_NOCTTY: a process of ours without a controlling terminal must not
                # gain one by opening the tty it writes to)
                self._fd = os.open(f"/proc/self/fd/{fd}",
                                   os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
                self._reopened = True
            except OSError:  # (no /proc): the inherited one, blocking, rather than nothing
                self._fd = os.dup(fd)
        else:
            self._fd = os.dup(fd)
            self._max_bytes = console_max_bytes(self._fd)

    def take_stderr(self, fd: int) -> None:
        """Make `fd` (the process's stderr) and sys.stderr write through this sink (the class
        docstring). A child inherits both."""
        if self._reopened and self._fd is not None:
            os.dup2(self._fd, fd)  # (dup2 leaves fd inheritable, as stderr must be)
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(_ConsoleStream(self, fd)),
                                      encoding="utf-8", errors="backslashreplace",
                                      line_buffering=True)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._reopened = False

    def write(self, message: str) -> None:
        self.write_bytes(message.encode("utf-8", "replace"))

    def write_bytes(self, data: bytes) -> None:
        try:
            if self._sock is not None:
                self._sock.send(data, socket.MSG_DONTWAIT)
            elif self._fd is not None:
                os.write(self._fd, data)  # (a short write to a full pipe: its tail is lost)
                if self._max_bytes and os.fstat(self._fd).st_size > self._max_bytes:
                    self.rotate(self._fd)
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            pass  # the reader is gone (or the file cannot be rotated): nobody to tell

    def rotate(self, fd: int) -> None:
        """Copy the file to name.1 (older copies shifted), then truncate it. Every process of
        the tree appends to it through a description inherited from `up`, which no rename
        could move them off; appending, each writes at the new end. A line another process
        writes between the copy and the truncation is lost (a logged one is in the log files)."""
        fcntl.lockf(fd, fcntl.LOCK_EX)  # (per process: two that see it full rotate it once)
        try:
            st = os.fstat(fd)
            if st.st_size <= self._max_bytes:
                return
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            try:
                if os.path.samestat(path.stat(), st):  # (not removed or replaced meanwhile)
                    shift_rotated(path)
                    shutil.copyfile(f"/proc/self/fd/{fd}", path.with_name(f"{path.name}.1"))
            finally:  # (a copy that failed, the disk full: the bound holds all the same)
                os.ftruncate(fd, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


def console_max_bytes(fd: int) -> int:
    """The size the console file `fd` is kept under: MOORAGE_CONSOLE_ROTATE, for a file
    every writer appends to (only such a file can be truncated under them); 0 otherwise."""
    try:
        limit = int(os.environ.get(CONSOLE_ROTATE_ENV) or 0)
    except ValueError:
        return 0
    if limit <= 0 or not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
        return 0
    return limit


class _ConsoleStream(io.RawIOBase):
    """sys.stderr's raw stream: every write is the console sink's (never a wait, never an
    error: what does not fit is dropped and counted there)."""

    def __init__(self, sink: ConsoleSink, fd: int) -> None:
        super().__init__()
        self.sink = sink
        self.fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sink.write_bytes(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return self.fd


SINK = RotatingFile()
CONSOLE = ConsoleSink()
_installed: tuple[str, str] | None = None


def install_handlers(level: str = "INFO", console_level: str = "WARNING") -> None:
    """The slow part (format compilation); done once, before children are forked."""
    global _installed
    logger.remove()
    logger.configure(extra={"actor": "-"})
    # diagnose=False on every sink: loguru's default writes each frame's local variables
    # into a traceback, a client's CURVE secret or a file's contents among them, and
    # thousands of lines of them a failure.
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # (a stderr replaced by one without an fd)
        fd = None
    if fd is None:
        logger.add(sys.stderr, level=console_level, format=CONSOLE_FORMAT, diagnose=False)
    else:
        CONSOLE.open(fd)
        CONSOLE.take_stderr(fd)
        logger.add(CONSOLE, level=console_level, format=CONSOLE_FORMAT, diagnose=False)
    logger.add(SINK, level=level, format=FILE_FORMAT, diagnose=False)
    _installed = (level, console_level)


STATE_ENV = "MOORAGE_STATE_DIR"


def state_dir(runtime_dir: Path) -> Path:
    """Where this process's tree keeps what must outlive a reboot (logs, the SLO record):
    the root sets MOORAGE_STATE_DIR for every process it starts (moorage.protocol.endpoints
    .state_dir says where); an actor started on its own (tests) keeps it in its runtime dir."""
    given = os.environ.get(STATE_ENV)
    return Path(given) if given else Path(runtime_dir)


def setup_logging(
    runtime_dir: Path, name: str, level: str = "INFO", console_level: str = "WARNING"
) -> None:
    """Log as `name` into `<state_dir>/logs/<name>.log` (console: warnings and worse). A log
    file that cannot be opened does not stop the process: it logs to the console until the
    file can be had (RotatingFile)."""
    if _installed != (level, console_level):
        install_handlers(level, console_level)
    SINK.open(state_dir(runtime_dir) / "logs" / f"{name}.log")
    logger.configure(extra={"actor": name})
