"""Shell completion for bash and zsh (argcomplete): commands and options from the parser,
and from a running tree its actors (`sup.endpoints`), an actor's ops and topics (`sys.info`).

    eval "$(moorage completion bash)"     # in ~/.bashrc
    eval "$(moorage completion zsh)"      # in ~/.zshrc

A completer asks the tree with a short timeout and offers nothing rather than fail: a shell
waiting on a tab must not hang, and no error may reach it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import argcomplete

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import tree_pid
from moorage.protocol.errors import MoorageError

ASK_TIMEOUT = 0.5


def autocomplete(p: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (and exit) when this run is one."""
    if "_ARGCOMPLETE" in os.environ:
        argcomplete.autocomplete(p, always_complete_options=False)


def _runtime_dir(parsed: argparse.Namespace) -> Path | None:
    try:
        given = getattr(parsed, "instance_dir", None)
        if given is not None:  # ('' names no directory: up and every command refuse it)
            return Path(given) if given else None
        return endpoints.runtime_dir(getattr(parsed, "instance", None))
    except ValueError:
        return None


def _ask(parsed: argparse.Namespace, actor: str, op: str) -> Any:
    rdir = _runtime_dir(parsed)
    if rdir is None:
        return None
    try:  # (a runtime dir not the user's: refused by tree_pid, completes nothing)
        if tree_pid(rdir) is None:
            return None
        with Client(rdir, timeout=ASK_TIMEOUT, learn_ops=False) as c:
            return c.call(actor, op, idempotent=True)
    except MoorageError:
        return None


def actor_completer(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    names = _ask(parsed_args, "supervisor", "sup.endpoints") or {}
    return sorted(n for n in names if n.startswith(prefix))


def _info(parsed: argparse.Namespace) -> dict[str, Any]:
    actor = getattr(parsed, "actor", None)
    return (_ask(parsed, actor, "sys.info") or {}) if actor else {}


def op_completer(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    return sorted(o for o in _info(parsed_args).get("ops", {}) if o.startswith(prefix))


def topic_completer(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    return sorted(t for t in _info(parsed_args).get("topics", {}) if t.startswith(prefix))


def cmd_completion(args: argparse.Namespace) -> int:
    print(argcomplete.shellcode(["moorage"], shell=args.shell))
    return 0


def add_completion_command(sub: Any, parents: list[Any]) -> None:
    c = sub.add_parser("completion", parents=parents,
                       help="print the shell code for tab completion: "
                       "eval \"$(moorage completion bash)\" (or zsh)")
    c.add_argument("shell", choices=["bash", "zsh"])
    c.set_defaults(func=cmd_completion)


