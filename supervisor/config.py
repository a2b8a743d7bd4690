"""The configuration document: the embedded default, overridden by a moorage.toml."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from moorage.supervisor.spec import ConfigError, SupervisorSpec, parse_tree


def default_document() -> dict[str, Any]:
    text = resources.files("moorage.supervisor").joinpath("default.toml").read_text()
    return tomllib.loads(text)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def find_config(explicit: str | Path | None) -> Path | None:
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    p = Path("moorage.toml")
    return p if p.is_file() else None


def load(explicit: str | Path | None = None) -> tuple[dict[str, Any], SupervisorSpec]:
    """The merged document and the tree it describes; ConfigError names what is wrong."""
    doc = default_document()
    path = find_config(explicit)
    if path is not None:
        try:
            over = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        doc = merge(doc, over)
    return doc, parse_tree(doc)
