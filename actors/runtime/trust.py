"""Who may speak for an actor on the tree's internal channels (metrics pushes, the keeper link).

The process that starts a tree draws a key at import, before it forks anything; every process
of the tree is forked from it (zygotes, supervisors, actors) and so holds the same key in
memory, while a process started any other way (a client, a stranger) draws its own. A token
is the key's HMAC of a name: an actor's pushes carry `token(its name)`, which no process
outside the tree can make. The key is never written to a file, the environment or a log, and
is gone from a shell the keeper starts (exec replaces the image).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_KEY = secrets.token_bytes(32)


def token(name: str) -> str:
    """The token by which a process of this tree speaks as `name`."""
    return hmac.new(_KEY, name.encode(), hashlib.sha256).hexdigest()[:32]


def adopt(key: bytes) -> None:
    """Take the tree's key (a zygote started as a new program, to replace a dead one, is
    handed it by its supervisor over their socket)."""
    global _KEY
    _KEY = bytes(key)


def key() -> bytes:
    """The key, for a supervisor to hand to the zygote it starts as a new program."""
    return _KEY


def verify(name: str, tok: object) -> bool:
    """Did a process of this tree make `tok` for `name`?"""
    return isinstance(tok, str) and hmac.compare_digest(tok, token(name))
