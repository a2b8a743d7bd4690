"""The quality override (`resource.quality.set`) kept on disk, so a restarted resource actor
holds it for the rest of its duration instead of dropping it.

One small JSON file in the runtime dir, `<actor name>.quality`: {"quality": 0..3, "until":
wall-clock seconds}. Wall clock, because the monotonic clock of the process that wrote it
means nothing to its successor; a clock step can shorten or lengthen what is left, which an
override measured in seconds to hours tolerates. Written atomically (a temporary file renamed
over it); removed when the override is removed. A file that cannot be read is reported and
removed, never trusted half way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from loguru import logger

from moorage.actors.runtime.statefile import write_atomic


class OverrideFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, quality: int, duration_s: float) -> None:
        """Keep `quality` for `duration_s` seconds from now; 0 removes it."""
        if duration_s <= 0:
            self.clear()
            return
        write_atomic(self.path, json.dumps(
            {"quality": quality, "until": time.time() + duration_s}).encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def load(self) -> tuple[int, float] | None:
        """(quality, seconds left) of a saved override that still holds, else None."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("quality override in {} unreadable ({}); dropped", self.path, exc)
            self.clear()
            return None
        quality, until = (data.get("quality"), data.get("until")) if isinstance(data, dict) \
            else (None, None)
        if type(quality) is not int or not 0 <= quality <= 3 or \
                not isinstance(until, (int, float)) or isinstance(until, bool):
            logger.warning("quality override in {} malformed ({!r}); dropped", self.path, data)
            self.clear()
            return None
        left = until - time.time()
        if left <= 0:
            self.clear()  # expired while no one held it
            return None
        return quality, left
