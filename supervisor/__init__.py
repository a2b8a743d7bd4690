"""The supervisor tree and the `moorage` CLI.

  policy      restart decisions, strategies, intensity, back-off, heartbeats (pure)
  spec        child and supervisor specs, checked from the config document
  config      the embedded default.toml merged with a moorage.toml
  zygote      the thread-free fork server each supervisor starts children from
  children    a supervisor's record of one child
  supervisor  the supervisor process (an actor: control ops and events)
  launch      the root's start-up sequence and what forked children run
  sdnotify    READY/WATCHDOG/STOPPING for systemd
  cli         `moorage up|down|status|restart|kill|call|events|logs|metrics`
"""

from moorage.actors.runtime import loguru_lean

loguru_lean.install()  # before any module here imports loguru: see loguru_lean
