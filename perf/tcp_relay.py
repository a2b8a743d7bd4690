"""A tcp relay under a benchmark's or a test's control, for what this kernel cannot do to a
link (no netem): each listening port on 127.0.0.1 forwards to a target port; `reset()` ends
every connection with an RST, as a middlebox dropping its state would. What a chunk meets on
its way is a subclass's `_pump` (a delay line in perf.r9_relay, lost replies in the remote
tests). One asyncio loop in a thread of its own."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends an RST


class TcpRelay:
    def __init__(self, pairs: list[tuple[int, int]]) -> None:
        """`pairs`: (port to listen on, port of the target), both on 127.0.0.1."""
        self.writers: set[asyncio.StreamWriter] = set()  # both ends of every connection
        self.client_ends: set[asyncio.StreamWriter] = set()  # the ends toward the client
        self.resets = 0
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pairs, started), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the relay did not start")

    def _run(self, pairs: list[tuple[int, int]], started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self._servers = [self.loop.run_until_complete(asyncio.start_server(
            lambda r, w, t=target: self._serve(r, w, t), "127.0.0.1", listen))
            for listen, target in pairs]
        started.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     target: int) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_w}
        self.client_ends.add(writer)
        try:
            await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the relay is closing (a cancelled handler would be logged as an error)
        for w in (writer, up_w):
            self.writers.discard(w)
            self.client_ends.discard(w)
            self._forget(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction of a connection: as it comes, less what `_lost` says is lost."""
        try:
            while data := await reader.read(65536):
                if self._lost(writer):
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def _lost(self, writer: asyncio.StreamWriter) -> bool:
        """Is what goes to `writer` now lost on the way? (Nothing is, here.)"""
        return False

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        """A connection's end is gone: a subclass drops what it kept about it."""

    def run(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run coroutine function `fn` on the relay's loop; its result (within 10 s)."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    def reset(self) -> int:
        """RST every connection now; returns how many ends were reset."""
        async def reset() -> int:
            ends = list(self.writers)
            for w in ends:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                w.close()
            self.resets += 1
            return len(ends)
        return self.run(reset)

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()
