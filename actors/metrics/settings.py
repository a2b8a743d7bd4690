"""The metrics actor's configuration, checked before the actor binds anything."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moorage.actors.metrics.alerts import AlertPolicy
from moorage.actors.metrics.recovery import DEFAULT_RTO_ALL_S, DEFAULT_RTO_S
from moorage.actors.metrics.series import MAX_SPAN
from moorage.actors.metrics.slo_report import Objectives


@dataclass(frozen=True, slots=True)
class Settings:
    window_s: float
    bucket_s: float
    max_keys: int
    history: int
    policy: AlertPolicy
    supervisor: str = "supervisor"
    slo_file: str = "metrics-slo.msgpack"
    slo_save_s: float = 5.0
    probe_timeout_s: float = 5.0
    rto_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RTO_S))
    rto_default_s: float = DEFAULT_RTO_ALL_S
    objectives: Objectives = field(default_factory=Objectives)
    max_client_keys: int = 500

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> Settings:
        rto = c.get("rto_s", DEFAULT_RTO_S)
        if not (isinstance(rto, dict) and all(isinstance(k, str) and isinstance(v, (int, float))
                                              and v > 0 for k, v in rto.items())):
            raise ValueError("rto_s must map child ids to seconds > 0")
        slo = c.get("slo", {})
        if not isinstance(slo, dict):
            raise ValueError("slo must be a table")
        s = cls(c.get("window_s", 60), c.get("bucket_s", 1), int(c.get("max_keys", 2000)),
                int(c.get("alert_history", 100)), AlertPolicy.from_config(c),
                str(c.get("supervisor", "supervisor")),
                str(c.get("slo_file", "metrics-slo.msgpack")),
                float(c.get("slo_save_s", 5.0)), float(c.get("probe_timeout_s", 5.0)),
                {k: float(v) for k, v in rto.items()},
                float(c.get("rto_default_s", DEFAULT_RTO_ALL_S)), Objectives.from_config(slo),
                int(c.get("max_client_keys", 500)))
        if not (isinstance(s.window_s, (int, float)) and isinstance(s.bucket_s, (int, float))
                and 0 < s.bucket_s <= s.window_s and s.window_s / s.bucket_s <= MAX_SPAN):
            raise ValueError(f"need 0 < bucket_s <= window_s <= {MAX_SPAN} x bucket_s")
        if s.max_keys < 1 or s.history < 1 or s.max_client_keys < 0:
            raise ValueError("max_keys and alert_history must be >= 1, max_client_keys >= 0")
        if s.slo_save_s <= 0 or s.probe_timeout_s <= 0 or s.rto_default_s <= 0:
            raise ValueError("slo_save_s, probe_timeout_s and rto_default_s must be > 0")
        if "/" in s.slo_file or s.slo_file in ("", ".", ".."):
            raise ValueError("slo_file is a file name in the runtime dir, not a path")
        return s
