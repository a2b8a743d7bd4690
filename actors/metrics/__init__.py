"""The metrics actor's parts: push decoding, series and windows, alerts, Prometheus text."""
