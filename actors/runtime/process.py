"""Turning the current process into a running actor: logging, then serve until stopped."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moorage.actors.runtime.logs import setup_logging

_ON_ORPHANED: list[Callable[[], None]] = []


def on_orphaned(fn: Callable[[], None]) -> None:
    """Run `fn` if this process finds its supervisor gone (the tree died under it) and is
    about to exit: what must not outlive the tree (a keeper's shells) goes first."""
    _ON_ORPHANED.append(fn)


def has_orphan_hooks() -> bool:
    """Does this process have something to do before it may die with its supervisor?"""
    return bool(_ON_ORPHANED)


def orphaned() -> None:
    """The supervisor is gone: run the hooks (each once, whatever the others do)."""
    hooks, _ON_ORPHANED[:] = list(_ON_ORPHANED), []
    for fn in hooks:
        with contextlib.suppress(Exception):
            fn()


def resolve(entry: str) -> Any:
    """`package.module:Name` -> the object."""
    module, _, attr = entry.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def run_actor(entry: str, name: str, runtime_dir: Path | str, config: dict) -> None:
    """Build the actor class named by `entry` and serve; returns when it stops."""
    runtime_dir = Path(runtime_dir)
    setup_logging(runtime_dir, name, config.get("log_level", "INFO"))
    cls = resolve(entry)
    actor = cls(name, runtime_dir, config)
    actor.serve()
