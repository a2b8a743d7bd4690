"""What every `moorage` command shares: the exit codes, the usage error, and finding a live tree.

Exit codes are one table, the same for every command (EXIT_TABLE; README and `moorage --help`
show it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moorage.protocol.client import Client
from moorage.protocol.client.connection import tree_pid

EXIT_OK = 0  # done
EXIT_ERROR = 1  # the tree answered with an error, or could not do what was asked
EXIT_USAGE = 2  # usage or bad input: arguments, JSON, config, an unknown actor or op
EXIT_ESCALATED = 3  # the tree gave up (a supervisor escalated)
EXIT_NO_TREE = 4  # no tree is running for this instance

EXIT_TABLE = (
    (EXIT_OK, "done (`down` of a tree that is not running too: it is stopped)"),
    (EXIT_ERROR, "the tree answered with an error, or could not do it (already running, "
                 "failed to start, a child `unknown` in status)"),
    (EXIT_USAGE, "usage or bad input: arguments, JSON, configuration, unknown actor or op"),
    (EXIT_ESCALATED, "the tree gave up: a supervisor escalated"),
    (EXIT_NO_TREE, "no tree is running for this instance"),
)


def exit_table_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {what}" for code, what in EXIT_TABLE)


__all__ = ["EXIT_ERROR", "EXIT_ESCALATED", "EXIT_NO_TREE", "EXIT_OK", "EXIT_USAGE", "CliError",
           "check_actor", "connect", "known_actors", "need_tree", "tree_pid"]


class CliError(Exception):
    """A one-line message for the user and the exit code it means (never a traceback)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- finding a live tree -----------------------------------------------------------------


def need_tree(runtime_dir: Path) -> int:
    pid = tree_pid(runtime_dir)
    if pid is None:
        raise CliError(f"no moorage tree is running in {runtime_dir}; start one with "
                       "`moorage up` (or pass the right --instance)", EXIT_NO_TREE)
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
