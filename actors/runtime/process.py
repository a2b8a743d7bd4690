"""Turning the current process into a running actor: logging, then serve until stopped."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from moorage.actors.runtime.logs import setup_logging


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
