"""Signals named in requests (`sup.kill`, `term.signal`): one reading for every op."""

from __future__ import annotations

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
