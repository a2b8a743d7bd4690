"""The memory hogs' actors for tests/test_resource_tree.py and tests/test_resource_roles.py,
in a module of their own: a tree's actor process imports it, and must not import the tests'
conftest with it (which makes the test session's home directory at import, and would leave
one behind per actor start)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from moorage.actors.runtime import Actor, Call, op

HOG = "import sys; data = b'x' * (int(sys.argv[1]) << 20); sys.stdin.read()"


class HogActor(Actor):
    """Starts memory hogs as its own children, and records what `sys.pressure` told it."""

    name = "hog"

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        self.hogs: list[subprocess.Popen] = []
        self.background: list[int] = []  # the write ends of the background hogs' stdin
        self.pressure_log: list[list[Any]] = []

    def on_start(self) -> None:
        # Dead hogs are reaped by the kernel (no zombie holds a pid, no fd to watch); Popen
        # then reads "no such child" as exited.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    def on_pressure(self, level: str, quality: int) -> dict[str, Any]:
        self.pressure_log.append([level, quality])
        self.publisher.publish("hog.pressure", {"level": level, "quality": quality})
        return {"noted": 1}

    def alive(self) -> list[int]:
        return sorted(p.pid for p in self.hogs if p.poll() is None)

    def info(self) -> dict[str, Any]:
        return {"pressure_log": self.pressure_log, "hogs": self.alive()}

    @op("hog.start", args={"mb": int})
    def start(self, call: Call, mb: int) -> dict[str, Any]:
        """Start a process that allocates `mb` MB and holds it; answers with its pid."""
        proc = subprocess.Popen([sys.executable, "-c", HOG, str(mb)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)
        self.hogs.append(proc)
        return {"pid": proc.pid, "mb": mb}

    @op("hog.background", args={"mb": int})
    def start_background(self, call: Call, mb: int) -> dict[str, Any]:
        """Start a hog the way `(cmd &)` does in a shell: the shell starting it exits at once,
        so the hog is orphaned to the nearest subreaper, the root supervisor. Its stdin is a
        pipe this actor holds: it exits with the actor (or at `hog.stop`)."""
        r, w = os.pipe()
        try:
            # (an asynchronous list's stdin is /dev/null but for an explicit redirection)
            sh = subprocess.run(
                ["sh", "-c", 'exec 3<&0; "$0" -c "$1" "$2" <&3 3<&- >/dev/null 2>&1 & echo $!',
                 sys.executable, HOG, str(mb)],
                stdin=r, stdout=subprocess.PIPE, text=True, check=True)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self.background.append(w)
        return {"pid": int(sh.stdout), "mb": mb}

    @op("hog.stop")
    def stop_hogs(self, call: Call) -> dict[str, Any]:
        """Let every hog exit (their stdin closes)."""
        for proc in self.hogs:
            if proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        for w in self.background:
            os.close(w)
        self.background.clear()
        return {"stopping": self.alive()}


class FatActor(Actor):
    """An actor that holds `mb` MB itself (a cache, say): one of the tree's own processes,
    which the resource actor must never take for a runaway, whatever it holds."""

    name = "fat"

    def __init__(self, name: str | None, runtime_dir: Path | str,
                 config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        self.held = b"y" * (int((config or {}).get("mb", 0)) << 20)
