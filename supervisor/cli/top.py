"""`moorage top`: the tree, its pressure, per-op latency against targets, and recent alerts.

A frame is a handful of bounded calls: `sup.status`, `resource.level`, `metrics.query`,
`metrics.alerts`. An actor that does not answer is shown as not answering and the rest of the
frame is still drawn, so a single actor down never stops top; only the tree itself going away
does (no tree: exit code 2, as every other command). Supervisor events come from a
subscription that starts with the retained ones (`from_seq=1`); an event redraws at once, so a
restart shows without waiting for the next refresh.

Latency cells are coloured against the op's targets: green at or under the target, yellow up
to the alert threshold (the metrics actor's latency factor times the target), red above. p99
targets are the running metrics actor's own (`metrics.alerts` policy); p50 targets come from
the same table when the actor exposes it, else from the configuration document (the embedded
default and `--config` or ./moorage.toml, as `moorage up` reads it). Client columns show what
clients that push their latency (`ClientOptions.metrics_name`) measured for the same op.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import termios
import time
import tty
from collections import deque
from pathlib import Path
from typing import Any

import zmq

from moorage.protocol.client import Client, Loss, Reset, Subscription
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import EXIT_NO_TREE, EXIT_OK, tree_pid
from moorage.supervisor.cli.frame import Frame, tree_has
from moorage.supervisor.cli.top_view import render

FRAME_CALL_TIMEOUT = 1.0  # seconds per call of a frame: a hung actor costs at most this
EVENTS_KEPT = 12
SHOWN_EVENTS = frozenset({"exited", "restarted", "hung", "escalated", "fallback", "alert",
                          "relay_loss", "stopping", "shed", "unshed"})


def config_targets(config: str | None) -> dict[str, list[float]]:
    """The `[targets]` table of a configuration read as `moorage up` reads it (the embedded
    default, then `config` or ./moorage.toml); ConfigError if it cannot be read."""
    from moorage.supervisor.config import load

    doc, _ = load(config, allow_external=True)  # read for its targets; nothing is run
    return {k: list(v) for k, v in (doc.get("targets") or {}).items()
            if isinstance(v, list) and len(v) >= 2}


class Watcher:
    """Gathers frames from a live tree over one client; keeps the last supervisor events."""

    def __init__(self, runtime_dir: Path, interval: float,
                 targets: dict[str, list[float]]) -> None:
        self.runtime_dir = runtime_dir
        self.interval = interval
        self.client = Client(runtime_dir, timeout=FRAME_CALL_TIMEOUT)
        self.sub: Subscription = self.client.subscribe("supervisor", ["sup.event"], from_seq=1)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.local_targets = targets

    def close(self) -> None:
        self.sub.close()
        self.client.close()

    def _call(self, frame: Frame, actor: str, op: str) -> Any:
        try:
            return self.client.call(actor, op, idempotent=True)  # every frame call reads
        except MoorageError as exc:
            frame.errors[actor] = exc.name
            return None

    def drain_events(self) -> None:
        while (ev := self.sub.next(timeout=0)) is not None:
            if isinstance(ev, StreamMessage) and isinstance(ev.body, dict):
                if ev.body.get("event") in SHOWN_EVENTS:
                    self.events.append(ev.body)
            elif isinstance(ev, Loss):
                self.events.append({"event": "lost", "time": time.time(),
                                    "detail": f"events {ev.first}-{ev.last} lost"})
            elif isinstance(ev, Reset):
                self.events.clear()  # a new root: its retained events follow

    def frame(self) -> Frame | None:
        """This moment's frame, or None when the tree is gone."""
        f = Frame(at=time.time(), runtime_dir=self.runtime_dir, interval=self.interval)
        f.tree = self._call(f, "supervisor", "sup.status")
        if f.tree is None and not tree_alive(self.runtime_dir):
            return None  # gone: no point asking its actors
        if f.tree is None or tree_has(f.tree, "resource"):
            f.level = self._call(f, "resource", "resource.level")
        if f.tree is None or tree_has(f.tree, "metrics"):
            f.metrics = self._call(f, "metrics", "metrics.query")
            f.alerts = self._call(f, "metrics", "metrics.alerts")
        self.drain_events()
        f.events = list(self.events)
        f.targets = {op: [t[0], t[1]] for op, t in self.local_targets.items()}
        if f.alerts is not None:
            policy = f.alerts.get("policy", {})
            f.latency_factor = float(policy.get("latency_factor", 2.0))
            for op, t in (policy.get("targets") or {}).items():
                f.targets[op] = [t[0], t[1]]
            for op, p99 in (policy.get("p99_targets") or {}).items():
                f.targets.setdefault(op, [None, None])[1] = p99
        return f


# --- the loop ------------------------------------------------------------------------------


def tree_alive(runtime_dir: Path) -> bool:

    return tree_pid(runtime_dir) is not None


class Keys:
    """The terminal in cbreak mode (keys arrive one by one) while top runs, and Ctrl-C as a
    request to stop: its SIGINT sets a flag and writes a byte to a pipe the wait polls, so top
    stops between two steps instead of wherever KeyboardInterrupt would land (a socket half
    made there would keep the client's context from terminating). Both are restored however
    top ends. Without a terminal there are no keys to read; Ctrl-C still works."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
        self.saved: list[Any] | None = None
        self.stop_requested = False
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_handler: Any = None

    def __enter__(self) -> Keys:
        self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        if self.fd is not None:
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
        signal.signal(signal.SIGINT, self._old_handler)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        with contextlib.suppress(BlockingIOError):
            os.write(self.wake_w, b"!")

    def quit_pressed(self) -> bool:
        assert self.fd is not None
        data = os.read(self.fd, 64)
        return not data or b"q" in data.lower()


def wait_for_next(watcher: Watcher, keys: Keys, interval: float) -> bool:
    """Until the interval is over or a supervisor event arrives (-> True), or q or Ctrl-C
    (-> False)."""
    poller = zmq.Poller()
    poller.register(watcher.sub.sock, zmq.POLLIN)
    poller.register(keys.wake_r, zmq.POLLIN)
    if keys.fd is not None:
        poller.register(keys.fd, zmq.POLLIN)
    end = time.monotonic() + interval
    while not keys.stop_requested and (left := end - time.monotonic()) > 0:
        ready = dict(poller.poll(max(1, int(left * 1000))))
        if keys.fd is not None and keys.fd in ready and keys.quit_pressed():
            return False
        if watcher.sub.sock in ready:
            return True
    return not keys.stop_requested


def run(runtime_dir: Path, interval: float, once: bool,
        targets: dict[str, list[float]]) -> int:
    """Draw frames until q, Ctrl-C or the tree going away; `once`: one frame, no screen.
    `targets` (op -> [p50, p99, ...] µs) are used where the tree does not say."""
    from rich.console import Console
    from rich.live import Live


    console = Console()
    with Keys() as keys:
        watcher = Watcher(runtime_dir, interval, targets)
        try:
            if once:
                frame = watcher.frame()
                if keys.stop_requested:
                    return EXIT_OK
                if frame is None:
                    print(f"moorage: the tree in {runtime_dir} stopped", file=sys.stderr)
                    return EXIT_NO_TREE
                console.print(render(frame, console.width))
                return EXIT_OK
            with Live(console=console, screen=True, auto_refresh=False) as live:
                while tree_alive(runtime_dir) and (frame := watcher.frame()) is not None:
                    if keys.stop_requested:
                        return EXIT_OK
                    live.update(render(frame, console.width, console.height), refresh=True)
                    if not wait_for_next(watcher, keys, interval):
                        return EXIT_OK
        finally:
            watcher.close()
    # Said after the screen is restored, so it stays on the terminal.
    print(f"moorage: the tree in {runtime_dir} stopped", file=sys.stderr)
    return EXIT_NO_TREE
