"""moorage's actors: the runtime (moorage.actors.runtime) and one module per actor.

  metrics   merges every actor's histograms; percentiles, alerts, Prometheus text
  resource  samples the tree's memory and CPU; pressure level, quality, runaway kills
  parser    escape-sequence and shell-integration marker parsing per stream (moorage.actors.vtparse)
  watcher   cached file service and lossless watches (moorage.actors.watcher)
  ptykeeper owns the shells' PTYs (posix_spawn, no fork) and their unacknowledged output
  terminal  sessions and term.exec over the keeper (termsession, shell_integration)
"""
