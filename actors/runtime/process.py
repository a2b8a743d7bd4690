"""Turning the current process into a running actor: logging, then serve until stopped."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from loguru import logger


def setup_logging(
    runtime_dir: Path, name: str, level: str = "INFO", console_level: str = "WARNING"
) -> None:
    """One log file per actor in the runtime dir; the console gets warnings and worse."""
    logs = runtime_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    logger.remove()
    logger.add(sys.stderr, level=console_level, format="{time:HH:mm:ss.SSS} {extra[actor]} "
               "{level} {message}")
    logger.add(logs / f"{name}.log", level=level, rotation="10 MB", retention=2,
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level:<7} {extra[actor]}[{process}] "
               "{message}")
    logger.configure(extra={"actor": name})


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
