"""Per-actor log files, set up in well under a millisecond in a freshly forked child.

loguru compiles each handler's format when it is added (about 6 ms a handler here), which
would be most of an actor's restart time. So handlers are installed once per process image
(the zygote does it before forking) and write through `SINK`, a small size-rotated file that
a child merely re-points at its own path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TextIO

from loguru import logger

FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {extra[actor]}[{process}] {message}"
CONSOLE_FORMAT = "{time:HH:mm:ss.SSS} {extra[actor]} {level} {message}"
MAX_BYTES = 10 * 1024 * 1024
KEEP = 2  # rotated files kept: name.log.1 .. name.log.KEEP


class RotatingFile:
    """A loguru sink: one file, renamed to .1 (.2, ...) when it passes MAX_BYTES."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.file: TextIO | None = None

    def open(self, path: Path) -> None:
        if self.file is not None:
            self.file.close()
        self.path = path
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as we do

    def write(self, message: str) -> None:
        if self.file is None:
            return
        self.file.write(message)
        self.file.flush()
        if self.file.tell() > MAX_BYTES:
            self._rotate()

    def _rotate(self) -> None:
        assert self.path is not None and self.file is not None
        self.file.close()
        for i in range(KEEP - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115


SINK = RotatingFile()
_installed: tuple[str, str] | None = None


def install_handlers(level: str = "INFO", console_level: str = "WARNING") -> None:
    """The slow part (format compilation); done once, before children are forked."""
    global _installed
    logger.remove()
    logger.configure(extra={"actor": "-"})
    logger.add(sys.stderr, level=console_level, format=CONSOLE_FORMAT)
    logger.add(SINK, level=level, format=FILE_FORMAT)
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
    """Log as `name` into `<state_dir>/logs/<name>.log` (console: warnings and worse)."""
    if _installed != (level, console_level):
        install_handlers(level, console_level)
    logs = state_dir(runtime_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    SINK.open(logs / f"{name}.log")
    logger.configure(extra={"actor": name})
