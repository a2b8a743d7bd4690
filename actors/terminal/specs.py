"""What each session was created from, kept on disk for a successor."""

from __future__ import annotations

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
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        write_atomic(self.path, msgpack.packb(self.specs, use_bin_type=True))
