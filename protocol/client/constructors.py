"""The constructors from a connection file that both clients have (a module of its own:
moorage.protocol.remote reads connection files too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from moorage.protocol import curve
from moorage.protocol.client.connection import from_file
from moorage.protocol.remote import target_from_file


class FromConnectionFile:
    """The constructors from a connection file that the sync and the asyncio client share
    (each is `cls(runtime_dir, **kw)` or `cls(remote=..., **kw)` underneath)."""

    core: Any

    @classmethod
    def from_connection_file(cls, path: str | Path, **kw: Any) -> Self:
        """A client of the tree that `path` (a `tree.json`) describes; `not_running` at
        once if that tree is not running (its lock free, or the file gone)."""
        conn = from_file(path)
        client = cls(conn.runtime_dir, **kw)  # type: ignore[call-arg]
        client.core.connection = conn
        return client

    @classmethod
    def remote(cls, path: str | Path, client_keys: curve.KeyPair | None = None,
               host: str | None = None, **kw: Any) -> Self:
        """A client of the tree elsewhere that `path` (its `tree.json`, copied here)
        describes, over tcp with CURVE: `client_keys` default to this user's client pair
        (`moorage keys init`), `host` replaces the address the tree bound (0.0.0.0, or a
        forwarded port's host). ValueError (or curve.KeyFileError) if either is unusable."""
        return cls(remote=target_from_file(path, client_keys, host), **kw)  # type: ignore[call-arg]
