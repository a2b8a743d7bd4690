"""The resource actor's configuration: every key optional, type-checked, range-checked.

Keys and defaults are in actors/resource.py's docstring; the [actor.resource] table of a
moorage.toml sets them. Unknown keys are ignored (the runtime's own keys and the tree-wide
tables arrive in the same config); a known key of the wrong type or out of range is a
ValueError naming it, which fails the actor's start instead of sampling with nonsense.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    interval_s: float = 1.0
    calm_interval_s: float = 5.0
    calm_after_samples: int = 5
    memory_budget_mb: float = 1024.0
    memory_metric: str = "pss_tracked"
    pss_every: int = 30
    cpu_budget_cores: float = float(os.cpu_count() or 1)
    cpu_weight: float = 0.8
    cpu_samples: int = 5
    system_reserve: float = 0.10
    margin: int = 5
    up_samples: int = 1
    down_samples: int = 3
    quality_up_samples: int = 3
    kill_runaways: bool = True
    kill_after_samples: int = 2
    runaway_min_share: float = 0.10
    persist_after_samples: int = 10
    shed_nonessential: bool = True
    restore_level: str = "moderate"
    restore_after_samples: int = 10
    quality_file: bool = True
    tell_timeout_s: float = 1.0
    status_timeout_s: float = 1.0
    rescan_every: int = 30
    supervisor: str = "supervisor"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Settings:
        """Take the known keys (type-checked) and ignore the rest (runtime keys, targets)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in config:
                continue
            v = config[f.name]
            want = type(f.default)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if type(v) is not want:
                raise ValueError(f"resource config {f.name}: must be {want.__name__}, "
                                 f"got {v!r}")
            values[f.name] = v
        s = cls(**values)
        if s.interval_s < 0.01 or s.memory_budget_mb <= 0 or s.cpu_budget_cores <= 0:
            raise ValueError("resource config: interval_s >= 0.01, memory_budget_mb and "
                             "cpu_budget_cores > 0")
        if not 0 <= s.calm_interval_s <= 3600 or s.interval_s > 3600 \
                or s.calm_after_samples < 1:
            raise ValueError("resource config: interval_s and calm_interval_s at most 3600, "
                             "calm_interval_s >= 0, calm_after_samples >= 1")
        if s.tell_timeout_s <= 0 or s.status_timeout_s <= 0 or s.runaway_min_share < 0:
            raise ValueError("resource config: timeouts > 0, runaway_min_share >= 0")
        return s
