"""Actors' own state files (checkpoints, specs, records) replaced whole, never torn.

A kill at any moment leaves the previous file or the new one: the bytes go to a temporary
file beside the target (mode 0600: the runtime dir's contents are the user's alone), which is
renamed over it. `durable` also fsyncs the file and the directory, for state that must survive
a machine crash, not only a process kill (the SLO record); a checkpoint that a resync can
rebuild skips that cost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

SUCCESSION = "succession"  # a runtime dir's directory of records kept for successors


def succession_dir(runtime_dir: Path) -> Path:
    """Where an actor keeps what a successor within the same tree's life must find (the
    terminal's session records): kept through any death and restart of the actor and of its
    supervisors, which may lose what the records name; removed with the instance lock held
    (launch.remove_successor_records: as a tree starts, by `down`'s clean-up, when the root
    ends): what a killed tree's records name died with it, and the next tree starts none."""
    d = runtime_dir / SUCCESSION
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def write_atomic(path: str | Path, data: bytes, durable: bool = False) -> int:
    """Replace `path` with `data`; returns the bytes written."""
    return write_atomic_parts(path, (data,), durable)


def write_atomic_parts(path: str | Path, parts: Iterable[bytes], durable: bool = False) -> int:
    """Replace `path` with the concatenation of `parts` (a checkpoint the watcher's loop
    packed a chunk a turn, or parts made as they are written); returns the bytes written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    n = 0
    try:
        for data in parts:
            view = memoryview(data)
            n += len(view)
            while view:
                view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return n
