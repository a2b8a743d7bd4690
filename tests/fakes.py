"""Small actors for the supervisor's tests, misbehaving on request (config keys):

  fail_at_start: true        raise while starting (before binding)
  fail_unprintably: true     the same, with an exception whose str() raises
  fail_at_start_if: path     the same, while that file exists
  fail_primary_if: path      the same, while that file exists and it runs as its primary (no
                             `fallback` in its config: its fallbacks start)
  start_delay_s: float       take this long to start
  start_gate: path           a FIFO there at start: wait for a writer to open it first
  crash_after: int           os._exit(3) on the Nth `fake.work` request
  hang_after: int            spin for ever (holding the loop) on the Nth `fake.work`
  ignore_sigterm: true       SIGTERM does nothing (the supervisor must SIGKILL)
  exit_normally_after: int   exit(0) on the Nth `fake.work` (transient children)
  forge_from: path           at start, when that file holds a pid: on the zygote's socket it
                             inherited, say that pid exited, and that it is ready

and, on request, holds memory of its own (`fake.memory`) or tells another actor a pressure
state with the tree's token (`fake.pressure`), for the resource actor's tests.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from moorage.actors.runtime import DEFERRED, Actor, Attached, Call, op
from moorage.actors.runtime.custody import CustodyClient, custody_path
from moorage.actors.runtime.outbound import Outbound
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import WireError, fail
from tests.pressure_support import told


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this one")


class FakeActor(Actor):
    name = "fake"

    def __init__(self, name: str | None, runtime_dir: Any, config: dict | None = None) -> None:
        config = config or {}
        if config.get("fail_unprintably"):
            raise Unprintable()
        if config.get("fail_at_start") or (
                config.get("fail_at_start_if") and os.path.exists(config["fail_at_start_if"])):
            raise RuntimeError("configured to fail at start")
        if config.get("fail_primary_if") and not config.get("fallback") \
                and os.path.exists(config["fail_primary_if"]):
            raise RuntimeError("configured to fail at start on its primary")
        if config.get("start_delay_s"):
            time.sleep(float(config["start_delay_s"]))  # sleep-ok: the slow start it fakes
        if config.get("start_gate") and os.path.exists(config["start_gate"]):
            os.close(os.open(config["start_gate"], os.O_RDONLY))  # (until the test opens it)
        if config.get("forge_from") and os.path.exists(config["forge_from"]):
            _forge(int(Path(config["forge_from"]).read_text()))
        super().__init__(name, runtime_dir, config)
        self.work_done = 0
        self.side_effects = 0
        self.held: list[tuple[Call, int]] = []  # fake.held calls and their effect counts
        self.ballast = b""  # fake.memory: memory this process holds, as a bloated cache would
        self._outbound: Outbound | None = None  # fake.pressure's calls

    def on_start(self) -> None:
        # Runs after Actor.serve installed its SIGTERM handler, so this replaces it.
        if self.config.get("ignore_sigterm"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def on_stop(self) -> None:
        if self._outbound is not None:
            self._outbound.close()

    @op("fake.work", args={"n": (int, 0), "fail": (bool, False)})
    def work(self, call: Call, n: int, fail: bool) -> dict[str, Any]:
        """Count a unit of work, misbehaving when configured to; `fail` raises (a failure of
        the service, `internal`, unlike bad arguments, which are the caller's)."""
        if fail:
            raise ValueError("asked to fail")
        self.work_done += 1
        if self.work_done == self.config.get("crash_after"):
            os._exit(3)
        if self.work_done == self.config.get("hang_after"):
            while True:
                pass
        if self.work_done == self.config.get("exit_normally_after"):
            os._exit(0)
        return {"done": self.work_done, "pid": os.getpid()}

    @op("fake.stderr", args={"lines": int})
    def stderr(self, call: Call, lines: int) -> dict[str, Any]:
        """What a library does on its own: `lines` warnings printed to sys.stderr, and one
        traceback from a thread that dies of an uncaught exception."""
        for i in range(lines):
            print(f"fake: warning {i} from a library, written to stderr", file=sys.stderr)
        t = threading.Thread(target=_die, name="fake-dies")
        t.start()
        t.join()
        return {"lines": lines}

    @op("fake.effect")
    def effect(self, call: Call) -> dict[str, Any]:
        """A side effect that must happen once per request id (the reply cache's job)."""
        self.side_effects += 1
        return {"effects": self.side_effects}

    @op("fake.count", idempotent=True)
    def count(self, call: Call) -> dict[str, Any]:
        """How many side effects happened in this process; how many fake.held calls wait,
        and how many attempts of them (a resend that joined a held call adds one)."""
        return {"effects": self.side_effects, "pid": os.getpid(), "held": len(self.held),
                "held_attempts": sum(len(c.routes) for c, _ in self.held)}

    @op("fake.held")
    def hold(self, call: Call) -> object:
        """A side effect whose reply is held back until fake.release: a test decides when
        the answer leaves, and what happens to the link meanwhile."""
        self.side_effects += 1
        self.held.append((call, self.side_effects))
        return DEFERRED

    @op("fake.held_read", idempotent=True)
    def hold_read(self, call: Call) -> object:
        """An idempotent call whose reply is held back until fake.release (no side effect)."""
        self.held.append((call, self.side_effects))
        return DEFERRED

    @op("fake.release", idempotent=True)
    def release(self, call: Call) -> dict[str, Any]:
        """Answer every held call (each with the effect count its run made)."""
        held, self.held = self.held, []
        for c, effects in held:
            c.reply({"effects": effects})
        return {"released": len(held)}

    @op("fake.attach", args={"size": int})
    def attach(self, call: Call, size: int) -> Attached:
        """A reply with one attachment of `size` bytes."""
        return Attached({"size": size}, [b"a" * size])

    @op("fake.publish", args={"topic": str, "n": int, "size": (int, 0)})
    def publish(self, call: Call, topic: str, n: int, size: int) -> dict[str, Any]:
        """Publish `n` messages on `topic` (body {i}, plus `size` bytes as an attachment)."""
        last = 0
        for i in range(n):
            atts = [bytes([i % 256]) * size] if size else None
            last = self.publisher.publish(topic, {"i": i}, atts)
        return {"last_seq": last}

    @op("fake.slow", args={"ms": int, "session": (str, None)})
    def slow(self, call: Call, ms: int, session: str | None) -> object:
        """Answer after `ms` milliseconds, without blocking the loop (a deferred reply);
        `session` is only carried (as a terminal op's is)."""
        self.loop.call_later(ms / 1000, lambda: call.reply({"slept_ms": ms}))
        return DEFERRED

    @op("fake.burn", args={"ms": int})
    def burn(self, call: Call, ms: int) -> dict[str, Any]:
        """Hold the loop for `ms` milliseconds of work: a costly request that is allowed."""
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass
        return {"burnt_ms": ms}

    @op("fake.spin", args={"ms": int}, idempotent=True)
    def spin(self, call: Call, ms: int) -> dict[str, Any]:
        """Hold the loop for `ms` milliseconds in Python code (a request whose input makes
        an op's work explode, on the loop): idempotent, so a client resends it to a
        successor of an actor killed as hung."""
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass
        return {"spun_ms": ms, "pid": os.getpid()}

    @op("fake.custody", args={"keys": int, "fds": (int, 2)})
    def custody(self, call: Call, keys: int, fds: int) -> dict[str, Any]:
        """Leave `keys` entries of `fds` descriptors each with the supervisor (as a pty
        keeper leaves a session's two), or, with 0, take back every one left."""
        if getattr(self, "_custody", None) is None:
            self._custody = CustodyClient(self.loop, custody_path(
                self.runtime_dir, self.config["supervised_by"]), self.name)
            self._kept = 0
        if keys == 0:
            for k in range(self._kept):
                self._custody.drop(f"k{k}")
            self._kept = 0
            return {"kept": 0}
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            for k in range(self._kept, self._kept + keys):
                self._custody.keep(f"k{k}", {}, [fd] * fds)
        finally:
            os.close(fd)
        self._kept += keys
        return {"kept": self._kept}

    @op("fake.power", args={"exp": int})
    def power(self, call: Call, exp: int) -> dict[str, Any]:
        """2 ** exp: from 64 on, a result msgpack cannot encode."""
        return {"v": 2 ** exp}

    @op("fake.unsendable_error")
    def unsendable_error(self, call: Call) -> None:
        """Fail with a detail msgpack refuses (a path's surrogate escapes, as
        os.path.realpath gives a non-UTF-8 name)."""
        raise fail("not_found", "no such thing", detail={"path": "out\udcff"})

    @op("fake.memory", args={"mb": int})
    def memory(self, call: Call, mb: int) -> dict[str, Any]:
        """Hold `mb` MB (written, so resident and private) instead of what was held: the
        actor's own memory, a cache that has bloated, which no kill of a user's process
        gives back. Answers once it is all allocated."""
        if not 0 <= mb <= 4096:
            raise fail("bad_args", "fake.memory: mb must be 0..4096")
        self.ballast = b""  # (the old block goes first: the two are never held together)
        self.ballast = b"y" * (mb << 20)
        return {"mb": mb, "pid": os.getpid()}

    @op("fake.pressure", args={"actor": str, "level": str, "quality": int})
    def tell_pressure(self, call: Call, actor: str, level: str, quality: int) -> object:
        """Tell `actor` a pressure level and quality with the tree's token, which only a
        process of the tree can make: a tell that is not the resource actor's, leaving that
        actor holding a state the tree is not in. Answers with its `sys.pressure` answer."""
        if self._outbound is None:
            self._outbound = Outbound(self)

        def done(reply: Reply | None, err: WireError | None) -> None:
            if err is not None:
                call.fail(err)
            else:
                call.reply(reply.body if reply is not None else None)

        self._outbound.call(actor, "sys.pressure", told(level, quality), timeout=5.0,
                            on_done=done)
        return DEFERRED

    @op("fake.fail")
    def fail_op(self, call: Call) -> None:
        """Raise a plain exception (it must become an `internal` error reply)."""
        raise ValueError("configured failure")


def _forge(victim: int) -> None:
    """What a starting child could say for another on the socket it holds until it is
    ready (the zygote's): that the victim exited, and that the victim is ready."""
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_SEQPACKET:
                sock.send(msgpack.packb({"ev": "exited", "pid": victim, "code": 0,
                                         "signal": None}))
                sock.send(msgpack.packb({"ev": "ready", "pid": victim}))
                sock.send(b"not msgpack \xc1")
                return
        finally:
            sock.detach()


def _die() -> None:
    raise RuntimeError("a thread that dies with a traceback on stderr")
