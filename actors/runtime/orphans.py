"""What a process must do before it dies with its tree: hooks run when it finds its
supervisor gone (supervisor.zygote.follow_supervisor). Apart from the process entry point
because a zygote, which must not load the logging library to serve, installs the signal
handler that asks it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

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
