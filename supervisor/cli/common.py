"""What every `moorage` command shares: the exit codes, the usage error, and finding a live tree.

Exit codes: 0 done; 1 the tree answered with an error; 2 usage error, no tree running,
unknown actor, bad JSON or bad config; 3 the tree gave up (a supervisor escalated).
"""

from __future__ import annotations

import argparse
import fcntl
import os
from pathlib import Path
from typing import Any

from moorage.protocol.client import Client

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ESCALATED = 0, 1, 2, 3
EXIT_NO_TREE = EXIT_USAGE


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- finding a live tree -----------------------------------------------------------------


def tree_pid(runtime_dir: Path) -> int | None:
    """The root's pid if a live tree holds the instance lock, else None."""
    path = runtime_dir / "lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def need_tree(runtime_dir: Path) -> int:
    pid = tree_pid(runtime_dir)
    if pid is None:
        raise CliError(f"no moorage tree is running in {runtime_dir}; start one with "
                       "`moorage up` (or pass the right --instance)")
    return pid


def connect(args: argparse.Namespace) -> Client:
    need_tree(args.runtime_dir)
    return Client(args.runtime_dir, timeout=args.timeout)


def known_actors(client: Client) -> dict[str, Any]:
    return client.call("supervisor", "sup.endpoints")


def check_actor(client: Client, actor: str) -> None:
    names = known_actors(client)
    if actor not in names:
        raise CliError(f"unknown actor {actor!r}; the tree has: {', '.join(sorted(names))}")
