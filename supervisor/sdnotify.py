"""sd_notify(3) without libsystemd: so systemd (Type=notify, WatchdogSec=) can supervise the
root supervisor itself."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Loop


class Notifier:
    def __init__(self, address: str, watchdog_usec: int | None) -> None:
        # An address starting with "@" is in the abstract namespace.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.dropped = 0  # messages its reader had no room for

    @classmethod
    def from_env(cls) -> Notifier | None:
        addr = os.environ.get("NOTIFY_SOCKET")
        if not addr:
            return None
        return cls(addr, watchdog_usec())

    def send(self, *fields: str) -> None:
        """Never waits: this runs on the root's loop, and a datagram socket whose reader has
        stopped reading (a full queue: ten messages by default, a second of watchdog pings)
        would otherwise hold the loop in sendto for as long as it does not read, the
        tree's stop included. What does not fit is dropped and counted."""
        try:
            self.sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.address)
        except BlockingIOError:
            self.dropped += 1  # its reader is behind: a later ping says the same
        except OSError:
            pass  # systemd gone or not listening: nothing to tell

    def start_watchdog(self, loop: Loop) -> None:
        """Ping at half the watchdog interval, from the loop: a wedged loop stops the pings."""
        if self.watchdog_usec:
            loop.call_every(self.watchdog_usec / 2e6, lambda: self.send("WATCHDOG=1"))


def _whole(name: str) -> int | None:
    text = os.environ.get(name)
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):  # no sign, no space, no unit
        raise ValueError(f"${name}={text!r:.40}: not a whole number, as systemd sets it")
    return int(text)


def watchdog_usec() -> int | None:
    """The watchdog interval systemd asks of this process (WATCHDOG_PID: this one, if set);
    ValueError naming the variable that is not systemd's."""
    usec, pid = _whole("WATCHDOG_USEC"), _whole("WATCHDOG_PID")
    return usec if usec and (pid is None or pid == os.getpid()) else None


def check_env() -> None:
    """Before anything starts: the variables from_env will read are systemd's."""
    if os.environ.get("NOTIFY_SOCKET"):
        watchdog_usec()
