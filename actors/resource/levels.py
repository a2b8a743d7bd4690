"""Pressure 0-100 from one sample of the tree, and the level and quality it implies.

Pure: numbers in, decisions out, the clock injected; the resource actor feeds it one sample
per interval and acts on what changes.

The formula (every term 0..100; the pressure is the largest, rounded and clamped):

  memory   100 * tree_memory / memory_budget           tree_memory: RSS (or PSS) summed
  cpu      100 * cpu_weight * cpu_cores / cpu_budget   cpu_cores: the tree's CPU in cores,
                                                       averaged over the last `cpu_samples`
  system   100 * (reserve - available) / reserve       available: the machine's available
           when available < reserve, else 0            memory as a fraction of its total

Why the largest and not a weighted sum: each term on its own is a reason to shed load, and a
sum would let an idle CPU hide a budget already spent. `cpu_weight` (default 0.8) caps what
CPU alone can do at 80 ("high": caches cleared, decorations off): a busy build is using the
cores it was given, it is not dying, and nothing is killed for it. Memory past the budget is
what brings a tree down, so only memory (the tree's, or the machine's running out) reaches
"critical". CPU is averaged over a few samples so that one burst (a process starting) is not
a level change; memory is taken as it is, because an allocation does not undo itself.

Levels (seed 6.1): normal 0-30, moderate 31-60, high 61-80, critical 81-100.
Hysteresis, so a pressure that hovers at a boundary does not flap:
  - up:   a level is entered when the pressure reaches its boundary in `up_samples`
          consecutive samples (default 1: react at once; the level entered is the lowest
          seen over those samples);
  - down: a level is left only when the pressure is below its boundary minus `margin`
          (default 5) in `down_samples` consecutive samples (default 3); it then drops to the
          highest level the margin still holds over those samples.
So at the high/critical boundary (81), 79, 82, 78, 81, ... enters critical once and stays
there until the pressure stays under 76 for three samples.

Quality (seed 9.2): 3 everything on, 2 decorations (command records) off, 1 shell integration
off as well, 0 file watching off as well. The level implies it (normal 3, moderate 2, high 1,
critical 0). Quality drops at once with the level and comes back one step per
`quality_up_samples` consecutive samples in which the level allows more: features come back
slowly, after the level has already been stable. `resource.quality.set` overrides it for a
while (on the injected clock); the derived quality keeps being tracked underneath.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

LEVELS = ("normal", "moderate", "high", "critical")
NORMAL, MODERATE, HIGH, CRITICAL = range(4)
ENTER = (0, 31, 61, 81)  # the lowest pressure of each level (seed 6.1)
QUALITY_OF_LEVEL = (3, 2, 1, 0)
MAX_QUALITY = 3
FEATURES_OFF = {3: (), 2: ("decorations",), 1: ("decorations", "shell_integration"),
                0: ("decorations", "shell_integration", "file_watching")}


def raw_level(pressure: float) -> int:
    """The level a pressure falls in, without hysteresis."""
    for lvl in (CRITICAL, HIGH, MODERATE):
        if pressure >= ENTER[lvl]:
            return lvl
    return NORMAL


# --- the formula -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """What the formula needs from one sample."""

    memory_bytes: int  # the tree's memory (RSS or PSS, summed)
    cpu_cores: float  # the tree's CPU over the last interval, in cores (1.0 = one core busy)
    system_total: int  # the machine's memory
    system_available: int


@dataclass(frozen=True, slots=True)
class Pressure:
    value: int  # 0..100
    memory: float  # each term, 0..100 (unclamped above: 140 means 40% over budget)
    cpu: float
    system: float

    def components(self) -> dict[str, float]:
        return {"memory": round(self.memory, 1), "cpu": round(self.cpu, 1),
                "system": round(self.system, 1)}


class PressureModel:
    """The formula above, with the few samples of CPU history it averages over."""

    def __init__(self, budget_bytes: int, cpu_budget_cores: float, *, cpu_weight: float = 0.8,
                 cpu_samples: int = 5, system_reserve: float = 0.10) -> None:
        if budget_bytes <= 0 or cpu_budget_cores <= 0 or cpu_samples < 1:
            raise ValueError("budget, cpu budget and cpu_samples must be positive")
        if not 0 <= cpu_weight <= 1 or not 0 <= system_reserve < 1:
            raise ValueError("cpu_weight must be in [0, 1], system_reserve in [0, 1)")
        self.budget_bytes = budget_bytes
        self.cpu_budget_cores = cpu_budget_cores
        self.cpu_weight = cpu_weight
        self.system_reserve = system_reserve
        self._cpu: deque[float] = deque(maxlen=cpu_samples)

    def feed(self, r: Reading) -> Pressure:
        self._cpu.append(max(0.0, r.cpu_cores))
        return self._pressure(r.memory_bytes, r.system_total, r.system_available)

    def without(self, r: Reading, freed: int) -> int:
        """The pressure `r` (already fed) would have given with `freed` bytes of the tree's
        memory gone (a process killed): its memory term lower, the machine's available memory
        higher, the CPU average as it is. Changes nothing."""
        available = min(r.system_total, r.system_available + freed)
        return self._pressure(max(0, r.memory_bytes - freed), r.system_total, available).value

    def _pressure(self, memory_bytes: int, system_total: int, system_available: int) -> Pressure:
        memory = 100.0 * memory_bytes / self.budget_bytes
        cores = sum(self._cpu) / len(self._cpu) if self._cpu else 0.0
        cpu = 100.0 * self.cpu_weight * min(1.0, cores / self.cpu_budget_cores)
        system = 0.0
        if self.system_reserve > 0 and system_total > 0:
            available = system_available / system_total
            if available < self.system_reserve:
                system = 100.0 * (self.system_reserve - available) / self.system_reserve
        value = round(max(memory, cpu, system))
        return Pressure(min(100, max(0, value)), memory, cpu, system)


# --- levels --------------------------------------------------------------------------------------


class LevelTracker:
    """The pressure level with hysteresis (see the module docstring)."""

    def __init__(self, *, margin: int = 5, up_samples: int = 1, down_samples: int = 3) -> None:
        if margin < 0 or up_samples < 1 or down_samples < 1:
            raise ValueError("margin must be >= 0, up_samples and down_samples >= 1")
        self.margin = margin
        self.up_samples = up_samples
        self.down_samples = down_samples
        self.level = NORMAL
        self._up = 0
        self._up_to = CRITICAL
        self._down = 0
        self._down_to = NORMAL

    def feed(self, pressure: float) -> int:
        up = raw_level(pressure)
        hold = raw_level(pressure + self.margin)  # the highest level the margin keeps
        if up > self.level:
            self._down = 0
            self._up_to = min(self._up_to, up) if self._up else up
            self._up += 1
            if self._up >= self.up_samples:
                self.level, self._up = self._up_to, 0
        elif hold < self.level:
            self._up = 0
            self._down_to = max(self._down_to, hold) if self._down else hold
            self._down += 1
            if self._down >= self.down_samples:
                self.level, self._down = self._down_to, 0
        else:
            self._up = self._down = 0
        return self.level


# --- quality -------------------------------------------------------------------------------------


class QualityTracker:
    """Quality 3..0 from the level: down at once, up one step per `up_samples` samples; an
    override set by an operator wins until it expires."""

    def __init__(self, *, up_samples: int = 3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if up_samples < 1:
            raise ValueError("quality up_samples must be >= 1")
        self.up_samples = up_samples
        self.clock = clock
        self.derived = MAX_QUALITY
        self._streak = 0
        self._override: tuple[int, float] | None = None  # (quality, until on the clock)

    def feed(self, level: int) -> int:
        """One sample at `level`; returns the effective quality."""
        target = QUALITY_OF_LEVEL[level]
        if target < self.derived:
            self.derived, self._streak = target, 0
        elif target > self.derived:
            self._streak += 1
            if self._streak >= self.up_samples:
                self.derived, self._streak = self.derived + 1, 0
        else:
            self._streak = 0
        return self.effective()

    def set_override(self, quality: int, duration_s: float) -> None:
        """Hold `quality` for `duration_s` seconds; a duration of 0 removes the override."""
        if not 0 <= quality <= MAX_QUALITY or duration_s < 0:
            raise ValueError("quality must be 0..3 and the duration >= 0")
        self._override = (quality, self.clock() + duration_s) if duration_s > 0 else None

    def override_left(self) -> float | None:
        """Seconds the override still holds, or None when there is none."""
        if self._override is None:
            return None
        left = self._override[1] - self.clock()
        if left <= 0:
            self._override = None
            return None
        return left

    def effective(self) -> int:
        if self.override_left() is not None:
            assert self._override is not None
            return self._override[0]
        return self.derived
