"""Signals named in requests (`sup.kill`, `term.signal`): one reading for every op."""

from __future__ import annotations

import os
import signal

from moorage.protocol.errors import fail


def parse_signal(value: str | int) -> int:
    """A signal by number or name (`INT`, `SIGINT`, `int`); bad_args for one that does not
    exist."""
    if isinstance(value, int):
        if value in {s.value for s in signal.Signals}:
            return value
        raise fail("bad_args", f"no signal number {value}")
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return signal.Signals[name].value
    except KeyError:
        raise fail("bad_args", f"no signal named {value!r}") from None


# The stop signals (by name, comma-separated) ignored when `moorage up` started: set by `up`
# before the tree forks anything, and kept ignored by every process of it (Actor.serve).
IGNORED_STOP_ENV = "MOORAGE_IGNORED_STOP_SIGNALS"


def ignored_at_start() -> set[str]:
    return {n for n in os.environ.get(IGNORED_STOP_ENV, "").split(",") if n}


def ignore(_signum: int, _frame: object) -> None:
    """A stop signal `moorage up` started with ignored: ignored here too (a handler, not
    SIG_IGN, which a process's exec would pass on to a session's shell)."""
