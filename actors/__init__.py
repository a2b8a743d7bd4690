"""moorage's actors: the runtime every actor process is made of, the parser library, and one
package per actor (its process in `actor.py`, its parts beside it).

  runtime    loop, ops, reply cache, streams, beats, stats: the base of every actor
  vtparse    the pure, incremental escape-sequence and shell-integration parser
  metrics    merges every actor's histograms; percentiles, alerts, the SLO, Prometheus text
  resource   samples the tree's memory and CPU; pressure level, quality, runaway kills
  parser     `vtparse` served per stream, bounded, as an actor
  watcher    cached file service and lossless watches
  terminal   sessions and term.exec with shell integration; keeper/ is the pty keeper process
             that owns the shells (posix_spawn, no fork) and their unacknowledged output
"""

from moorage.actors.runtime import loguru_lean

loguru_lean.install()  # before any module here imports loguru: see loguru_lean
