"""The pty keeper: the process that owns the shells (actor.py), their PTYs (ptys.py) and
how they are started (spawn.py)."""
