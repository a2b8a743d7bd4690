"""The actor runtime: what every moorage actor process is made of.

  loop         one event loop: zmq sockets, fds, timers, wake-ups from threads
  beat         the liveness slot the loop keeps and its supervisor reads (hang detection)
  signals      signal names and numbers in requests (sup.kill, term.signal)
  statefile    state files replaced whole (checkpoints, specs, records), durable on request
  registry     `@op` declarations and argument checking
  actor        `Actor`: binds `<name>.rpc`/`<name>.pub`, the request path, built-in ops
  reply_cache  answers to retried (sid, id) pairs
  streams      published topics with seq, retention and replay
  stats        per-op service time, folded into HDR histograms for the metrics actor
  process      logging set-up and the process entry point
  orphans      what a process does before it dies with its tree (a keeper's shells)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moorage.actors.runtime.actor import DEFERRED, Actor, Attached, Call
    from moorage.actors.runtime.registry import op

__all__ = ["DEFERRED", "Actor", "Attached", "Call", "op"]

# Taken from their modules on first use, not at import: a zygote started as a new program
# imports this package's small modules (trust, beat, heap) to serve at once, and `actor`
# would first load ZeroMQ and the logging library (~150 ms of a replacement's start-up).
_HOME = {"DEFERRED": "actor", "Actor": "actor", "Attached": "actor", "Call": "actor",
         "op": "registry"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
