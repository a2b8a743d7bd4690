"""The seed's alerts (8.1) as a pure state machine over window figures, time passed in.

Raised once when a condition starts, cleared once when it ends below a lower threshold
(hysteresis), so a burst gives one alert, not one per sample. Kinds: failure_rate and latency
per (actor, op) over the recent window; data_loss per (actor, loss counter) over the last hour
(any loss raises it; it clears when the hour holds none).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    min_samples: int = 20
    failure_rate: float = 0.10
    latency_factor: float = 2.0
    clear_ratio: float = 0.8  # hysteresis: cleared at this fraction of the threshold
    p99_targets: Mapping[str, float] = field(default_factory=dict)  # op -> p99 target, us

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AlertPolicy:
        targets = {}
        for name, t in dict(config.get("targets") or {}).items():
            if not (isinstance(t, (list, tuple)) and len(t) >= 2
                    and isinstance(t[1], (int, float)) and t[1] > 0):
                raise ValueError(f"targets[{name!r}] must be [p50_us, p99_us, p999_us]")
            targets[name] = float(t[1])
        policy = cls(int(config.get("alert_min_samples", 20)),
                     float(config.get("alert_failure_rate", 0.10)),
                     float(config.get("alert_latency_factor", 2.0)),
                     float(config.get("alert_clear_ratio", 0.8)), targets)
        if policy.min_samples < 1 or not 0 < policy.clear_ratio <= 1:
            raise ValueError("alert_min_samples must be >= 1, alert_clear_ratio in (0, 1]")
        return policy

    def latency_threshold(self, op: str) -> float | None:
        target = self.p99_targets.get(op)
        return None if target is None else target * self.latency_factor


class Alerts:
    """Raised and cleared alerts, de-duplicated; pure: fed window figures, it returns the
    events to publish and keeps the active set and the last `history` events."""

    def __init__(self, policy: AlertPolicy, window_s: float, history: int = 100) -> None:
        self.policy = policy
        self.window_s = window_s
        self.active: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=history)
        self.raised_total = 0
        self.cleared_total = 0

    def evaluate(self, actor: str, op: str, *, requests: int, errors: int,
                 p99: float | None, now: float) -> list[dict[str, Any]]:
        """`p99` over the window is needed only when `policy.latency_threshold(op)` is set."""
        pol = self.policy
        enough = requests >= pol.min_samples
        events = []
        rate = errors / requests if requests else 0.0
        events += self._edge("failure_rate", actor, op, rate, pol.failure_rate,
                             enough, requests, now)
        limit = pol.latency_threshold(op)
        if limit is not None:
            events += self._edge("latency", actor, op, p99 or 0, limit, enough, requests, now)
        return events

    def evaluate_loss(self, actor: str, counter: str, lost: int,
                      now: float) -> list[dict[str, Any]]:
        """`lost`: what `actor` counted in `counter` over the last hour."""
        return self._edge("data_loss", actor, counter, lost, 0, True, lost, now,
                          window_s=3600)

    def _edge(self, kind: str, actor: str, op: str, value: float, threshold: float,
              enough: bool, samples: int, now: float,
              window_s: float | None = None) -> list[dict[str, Any]]:
        key = (kind, actor, op)
        on = key in self.active
        if not on and enough and value > threshold:
            state = "raised"
            self.raised_total += 1
        elif on and (samples == 0 or value <= threshold * self.policy.clear_ratio):
            state = "cleared"
            self.cleared_total += 1
        else:
            return []
        event = {"kind": kind, "state": state, "actor": actor, "op": op, "value": value,
                 "threshold": threshold,
                 "window_s": self.window_s if window_s is None else window_s, "time": now,
                 "samples": samples}
        if state == "raised":
            self.active[key] = event
        else:
            del self.active[key]
        self.recent.append(event)
        return [event]

    def clear_all(self, now: float) -> list[dict[str, Any]]:
        """Forget everything; the cleared events of what was active, to publish."""
        events = [{**e, "state": "cleared", "time": now, "reason": "reset"}
                  for e in self.active.values()]
        self.active.clear()
        self.recent.clear()
        self.raised_total = self.cleared_total = 0
        return events

    def active_by_kind(self) -> Counter[str]:
        return Counter(k for k, _, _ in self.active)


