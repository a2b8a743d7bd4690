"""Actors' own state files (checkpoints, specs, records) replaced whole, never torn.

A kill at any moment leaves the previous file or the new one: the bytes go to a temporary
file beside the target (mode 0600: the runtime dir's contents are the user's alone), which is
renamed over it. `durable` also fsyncs the file and the directory, for state that must survive
a machine crash, not only a process kill (the SLO record); a checkpoint that a resync can
rebuild skips that cost.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, data: bytes, durable: bool = False) -> int:
    """Replace `path` with `data`; returns the bytes written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return len(data)
