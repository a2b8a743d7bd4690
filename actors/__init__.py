"""moorage's actors: the runtime (actors.runtime) and one module per actor.

  metrics   merges every actor's histograms; percentiles, alerts, Prometheus text
"""
