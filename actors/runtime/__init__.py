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
"""

from moorage.actors.runtime.actor import DEFERRED, Actor, Attached, Call
from moorage.actors.runtime.registry import op

__all__ = ["DEFERRED", "Actor", "Attached", "Call", "op"]
