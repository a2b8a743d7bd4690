"""The resource actor's pure parts: sampling the tree, and deciding from the samples.

  sampler     psutil over the tree's processes: memory, CPU and role (supervisor, zygote,
              actor, descendant) of each, found from the root supervisor's `sup.status`
  levels      the pressure formula, the level (seed 6.1) and quality (seed 9.2) state
              machines with hysteresis; pure, fed numbers and an injected clock
  escalation  what happens while critical persists: alert, then kill the largest runaway
              process that no actor is, then shed the non-essential actors and bring them
              back when it has passed (pure decisions; the actor carries them out)
  settings    the resource actor's config keys, checked
"""

from moorage.actors.resource.escalation import Decision, Escalation, Shedder, pick_runaway
from moorage.actors.resource.levels import (
    ENTER,
    FEATURES_OFF,
    LEVELS,
    LevelTracker,
    Pressure,
    PressureModel,
    QualityTracker,
    Reading,
    raw_level,
)

__all__ = [
    "ENTER", "FEATURES_OFF", "LEVELS", "Decision", "Escalation", "LevelTracker", "Pressure",
    "PressureModel", "ProcRow", "QualityTracker", "Reading", "Roles", "Sample", "Shedder",
    "TreeSampler",
    "pick_runaway", "raw_level", "roles_from_status",
]

_SAMPLER = frozenset({"ProcRow", "Roles", "Sample", "TreeSampler", "roles_from_status"})


def __getattr__(name: str) -> object:
    # the sampler brings psutil (30 ms of a CLI call's start, which reads only the levels)
    if name in _SAMPLER:
        from moorage.actors.resource import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
