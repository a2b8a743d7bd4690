"""The root's part of remote mode: from `[listen] endpoint` (or `moorage up --listen`) to
the plan every actor binds by, with the tree's keys checked before anything starts.

A tree refuses to start on tcp when its keys directory or server secret key is open to
group or others, when the key pair is missing or malformed, or when the address is not
tcp://HOST:PORT: each is a `bad_config` with the file and the fix in its message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moorage.protocol import curve, remote


def listen_address(doc: dict[str, Any]) -> str | None:
    table = doc.get("listen") or {}
    return table.get("endpoint") or None


def listen_plan(doc: dict[str, Any], names: Sequence[str],
                keys_dir: Path | None = None) -> tuple[remote.ListenPlan, curve.KeyPair] | None:
    """The plan and the server's key pair, or None when the tree does not listen on tcp.
    Raises remote.ListenError or curve.KeyFileError (both ValueError) when it cannot."""
    address = listen_address(doc)
    if address is None:
        return None
    keys_dir = keys_dir or curve.keys_dir()
    server = curve.load_pair(keys_dir, curve.SERVER)  # checks the modes on the way
    curve.read_allowed(keys_dir)  # a list open to others is refused now, not at a handshake
    return remote.make_plan(address, names, keys_dir), server
