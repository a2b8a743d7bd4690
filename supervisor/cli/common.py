"""What every `moorage` command shares: the exit codes, the usage error, and finding a live tree.

Exit codes are one table, the same for every command (EXIT_TABLE; README and `moorage --help`
show it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from moorage.protocol import curve, endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import read_connection_file, tree_pid

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


__all__ = ["EXIT_ERROR", "EXIT_ESCALATED", "EXIT_NO_TREE", "EXIT_OK", "EXIT_USAGE", "Budget",
           "CliError", "check_actor", "connect", "known_actors", "need_tree", "print_table",
           "read", "tree_pid"]


class CliError(Exception):
    """A one-line message for the user and the exit code it means (never a traceback)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# --- finding a live tree -----------------------------------------------------------------


def need_tree(runtime_dir: Path) -> int:
    """The live tree's root pid, or exit 4. A runtime dir or lock this user must not trust
    (another's, open to others, a link, a FIFO) is `forbidden` from tree_pid: exit 2, before
    any command sends anything there."""
    pid = tree_pid(runtime_dir)
    if pid is None:
        raise CliError(f"no moorage tree is running in {runtime_dir}; start one with "
                       "`moorage up` (or pass the right --instance)", EXIT_NO_TREE)
    return pid


def connect(args: argparse.Namespace) -> Client:
    """A client of the tree this command drives: this host's instance (`not running` at once
    when its lock is free), or with `--connection FILE` the tree elsewhere that the file
    describes, over tcp with CURVE (the Python client's remote mode, PROTOCOL.md section 2,
    "Remote"): a refused key then ends a call `unauthorized`, naming the key to allow."""
    if getattr(args, "connection", None):
        keys = Path(args.keys) if args.keys else keys_dir()
        try:
            pair = curve.load_pair(keys, curve.CLIENT)
            return Client.remote(args.connection, client_keys=pair, host=args.host,
                                 timeout=args.timeout)
        except FileNotFoundError as exc:
            raise CliError(f"--connection: {exc.filename} does not exist"
                           + (" (make this user's keys with `moorage keys init`)"
                              if exc.filename and str(keys) in str(exc.filename) else ""),
                           EXIT_USAGE) from None
        except (OSError, ValueError) as exc:  # (curve.KeyFileError is a ValueError)
            raise CliError(f"--connection: {exc}", EXIT_USAGE) from None
    need_tree(args.runtime_dir)
    return Client(args.runtime_dir, timeout=args.timeout)


def keys_dir() -> Path:
    """This user's keys directory (curve.keys_dir); a CliError when no variable names it and
    there is no home to find it in."""
    try:
        return curve.keys_dir()
    except ValueError as exc:
        raise CliError(f"no keys directory: {exc}") from None


class Budget:
    """A command's whole time (`--timeout`): every call it makes gets what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise CliError("out of time (--timeout): the tree did not answer in time",
                           EXIT_ERROR)
        return left if cap is None else min(cap, left)


def read(client: Client, actor: str, op: str, args: Any = None, *, budget: Budget,
         cap: float | None = None) -> Any:
    """A read-only call within the budget: idempotent, so it is resent while time lasts and
    ends as `timeout`, never `outcome_unknown`."""
    return client.call(actor, op, args, timeout=budget.left(cap), idempotent=True)


def known_actors(client: Client, budget: Budget | None = None) -> dict[str, Any]:
    return read(client, "supervisor", "sup.endpoints", budget=budget or Budget(5.0))


def check_actor(client: Client, actor: str, budget: Budget | None = None) -> None:
    """`actor` is one of the tree's: read from its connection file when it is there (the
    root need not answer for a call to another actor: it may be stopped, or busy), asked of
    the root otherwise (a name the file does not list). A remote tree's are those of the
    connection file the client was given (this machine's runtime dir is another tree's)."""
    remote = client.core.remote
    if remote is not None:
        listed: dict[str, Any] = remote.endpoints
    else:
        try:
            listed = read_connection_file(client.runtime_dir / endpoints.CONNECTION_FILE)[
                "endpoints"]
        except (OSError, ValueError, KeyError):
            listed = {}
    if actor in listed:
        return
    names = known_actors(client, budget)
    if actor not in names:
        raise CliError(f"unknown actor {actor!r}; the tree has: {', '.join(sorted(names))}")


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def followed(life: dict[str, Any]) -> str:
    """Whom the tree follows, every holder said (`holders` comes only when more than one
    process holds it: editor windows on one instance, each of which keeps it running)."""
    pids = life.get("holders") or ([life["parent"]] if life.get("parent") else [])
    if len(pids) > 1:
        return (f"following pids {', '.join(map(str, pids))} (it runs while one of them "
                f"does; {life['parent']} took it last)")
    return f"following pid {pids[0]}" if pids else \
        "following no one (it runs until `moorage down`)"
