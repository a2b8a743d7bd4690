"""Accepting connections on a listening Unix socket from a loop, also when out of descriptors.

A connection the process cannot accept (EMFILE, ENFILE: no descriptor left for it) stays in
the listener's queue, and the listener stays readable: a loop that only logs the error and
returns is woken for it again at once, and turns on it at a full core for as long as the
descriptors are short. So one descriptor is held in reserve (libuv and nginx do the same):
when out of them, it is closed, the waiting connection accepted with its slot and closed at
once (its peer sees the connection end, as if refused, and may try again), and the reserve
is opened again. Should even that fail (another thread took the slot), accepting pauses for
PAUSE_S instead of spinning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable

from loguru import logger

from moorage.actors.runtime.loop import Loop, Timer

PAUSE_S = 0.1  # accepting rests this long when a waiting connection could not be shed
PER_TURN = 16  # connections taken in one turn of the loop at most: others wait for the next
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class Acceptor:
    """`on_connection(sock)` for each connection accepted on `listener` (non-blocking),
    once `start()` is called; `shed` counts those closed for want of a descriptor."""

    def __init__(self, loop: Loop, listener: socket.socket,
                 on_connection: Callable[[socket.socket], None], what: str) -> None:
        self.loop = loop
        self.listener = listener
        self.on_connection = on_connection
        self.what = what  # for the log: whose socket this is
        self.shed = 0
        self.started = False
        self.closed = False
        self._reserve = _open_reserve()
        self._resume: Timer | None = None

    def start(self) -> None:
        if not self.started and not self.closed:
            self.started = True
            self.loop.add_reader(self.listener.fileno(), self._readable)

    def close(self) -> None:
        """Stop accepting (the caller closes the listener)."""
        if self.closed:
            return
        self.closed = True
        if self.started:
            self.loop.remove_reader(self.listener.fileno())
        if self._resume is not None:
            self._resume.cancel()
        if self._reserve is not None:
            with contextlib.suppress(OSError):
                os.close(self._reserve)
            self._reserve = None

    def _readable(self) -> None:
        for _ in range(PER_TURN):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # (gone before we took it)
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    # (Linux says EMFILE before it looks at the queue: there may be none)
                    shed = self._shed_one()
                    if shed is None:
                        return
                    if shed:
                        continue
                self._pause(exc)
                return
            self.on_connection(sock)

    def _shed_one(self) -> bool | None:
        """The waiting connection, accepted with the reserve's slot and closed: True; None
        when none was waiting; False when it could not be taken."""
        if self._reserve is None:
            self._reserve = _open_reserve()  # (a slot may have come free since)
            if self._reserve is None:
                return False
        os.close(self._reserve)
        self._reserve = None
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            self._reserve = _open_reserve()
            return None
        except OSError:
            self._reserve = _open_reserve()
            return False
        sock.close()
        self._reserve = _open_reserve()
        self.shed += 1
        logger.warning("{}: out of descriptors; a connection was closed unserved ({} so far)",
                       self.what, self.shed)
        return True

    def _pause(self, exc: OSError) -> None:
        logger.warning("{}: accept failed ({}); accepting again in {} s", self.what, exc,
                       PAUSE_S)
        self.loop.remove_reader(self.listener.fileno())

        def resume() -> None:
            self._resume = None
            if not self.closed:
                self.loop.add_reader(self.listener.fileno(), self._readable)

        self._resume = self.loop.call_later(PAUSE_S, resume)


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
