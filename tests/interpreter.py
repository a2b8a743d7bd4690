"""What a fresh interpreter prints: for tests of what a process settles as it starts (which
compiled core it runs, given its environment), which this process has settled already."""

from __future__ import annotations

import os
import subprocess
import sys


def printed(code: str, **env: str) -> list[str]:
    """The words `code` prints, run by this Python with `env` added to the environment."""
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.split()
