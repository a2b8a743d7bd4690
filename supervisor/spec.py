"""Child specs and supervisor specs, read from the config tree and checked up front.

A config error is reported with the path of the bad key (`children[2].restart: ...`) before
anything starts, never as a crash half way through bringing the tree up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moorage.protocol.recovery import Backoff
from moorage.supervisor.policy import RestartType, Strategy

BRUTAL_KILL = "brutal_kill"


class ConfigError(ValueError):
    """The configuration cannot describe a tree; the message names the offending key."""


@dataclass(frozen=True)
class HeartbeatSpec:
    interval_ms: int = 200
    misses: int = 3
    # While every child is idle (blocked in its loop's wait, not stopped) the board is read
    # this often instead: an idle tree sleeps. A stop is reported by the zygote at once,
    # and any sign of work brings the tick back to `interval_ms`.
    idle_interval_ms: int = 1000


@dataclass(frozen=True)
class ChildSpec:
    id: str
    start: str = ""  # "module:Class" of the actor (workers)
    restart: RestartType = RestartType.PERMANENT
    shutdown_ms: int | str = 5000  # milliseconds, or "brutal_kill"
    type: str = "worker"  # worker | supervisor
    config: dict[str, Any] = field(default_factory=dict)
    fallbacks: tuple[str, ...] = ()
    supervisor: SupervisorSpec | None = None  # for type == "supervisor"
    # False: stopped gracefully while critical pressure persists (`sup.shed`), started again
    # when it has passed; the editor keeps working without it.
    essential: bool = True

    @property
    def brutal(self) -> bool:
        return self.shutdown_ms == BRUTAL_KILL


# Serving this long makes a child's death a restart at once that counts against nothing (see
# supervisor.policy: killed, not crashing); a shorter life is a young death.
STABLE_AFTER_S = 0.25


@dataclass(frozen=True)
class SupervisorSpec:
    id: str
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 5
    period_s: float = 10.0
    stable_after_s: float = STABLE_AFTER_S
    start_timeout_ms: int = 10_000
    backoff: Backoff = field(default_factory=lambda: Backoff(0.02, 2.0, 2.0))
    heartbeat: HeartbeatSpec = field(default_factory=HeartbeatSpec)
    children: tuple[ChildSpec, ...] = ()
    # Past its intensity, with no fallback left, a child is retried as the root retries one
    # (policy.LAST_RESORT) instead of this supervisor escalating: for a supervisor whose
    # children hold what the user cannot get back (the `terminals` keeper's shells), which
    # its escalation would stop with the one that fails. Nested supervisors only: the root
    # has no parent and always retries.
    retry_forever: bool = False

    def walk(self) -> list[tuple[SupervisorSpec, ChildSpec]]:
        """Every (owner, child) pair in the tree, depth first in start order."""
        out = []
        for c in self.children:
            out.append((self, c))
            if c.supervisor is not None:
                out.extend(c.supervisor.walk())
        return out

    def find(self, child_id: str) -> tuple[SupervisorSpec, ChildSpec] | None:
        for owner, c in self.walk():
            if c.id == child_id:
                return owner, c
        return None

    def modules(self) -> list[str]:
        return sorted({c.start.partition(":")[0] for _, c in self.walk() if c.start})


_ID_OK = set("abcdefghijklmnopqrstuvwxyz0123456789_-")
RESERVED = {"supervisor"}
# The resource actor decides when shed actors come back: it cannot be shed itself.
NEVER_SHED = ("moorage.actors.resource.actor:",)
CHILD_KEYS = ("id", "type", "restart", "shutdown_ms", "config", "fallbacks", "essential")
BACKOFF_KEYS = ("factor", "initial_ms", "max_ms")
HEARTBEAT_KEYS = ("idle_interval_ms", "interval_ms", "misses")
# Supervisors below the root, at most: each is a process, and the tree is read (here, by every
# nested supervisor from the document it is given) by recursion. OTP trees are a few deep.
MAX_NESTING = 16


def _want(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def _num(d: dict, key: str, where: str, default: float, lo: float = 0) -> float:
    v = d.get(key, default)
    _want(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and v >= lo, f"{where}.{key}", f"must be a finite number >= {lo}, got {v!r}")
    return v


def _int(d: dict, key: str, where: str, default: int, lo: int = 0) -> int:
    """A count or a number of milliseconds: an integer (2.7 restarts, or `true` for 1, is a
    mistake to name, not a value to truncate)."""
    v = d.get(key, default)
    _want(type(v) is int and v >= lo, f"{where}.{key}", f"must be an integer >= {lo}, got {v!r}")
    return v


def _known(d: dict, keys: tuple[str, ...], where: str) -> None:
    for k in d:
        _want(k in keys, f"{where}.{k}", f"unknown key (known: {', '.join(keys)})")


def _backoff(d: Any, where: str) -> Backoff:
    _want(isinstance(d, dict), where, "must be a table")
    _known(d, BACKOFF_KEYS, where)
    initial_ms = _num(d, "initial_ms", where, 20)
    factor = _num(d, "factor", where, 2.0, 1)
    max_ms = _num(d, "max_ms", where, 2000)
    _want(initial_ms <= max_ms, f"{where}.initial_ms",
          f"the first delay ({initial_ms} ms) is more than the longest, max_ms ({max_ms} ms; "
          "a key the file does not set is the embedded default's: set max_ms too)")
    return Backoff(initial_ms / 1000, factor, max_ms / 1000)


def parse_supervisor(
    sid: str, d: dict, children: list, where: str, actor_config: dict, seen: set[str],
    depth: int = 0,
) -> SupervisorSpec:
    _want(depth <= MAX_NESTING, where,
          f"supervisors are nested more than {MAX_NESTING} deep below the root")
    known = {"strategy", "intensity", "period_s", "stable_after_s", "start_timeout_ms",
             "backoff", "heartbeat", "retry_forever"}
    for k in d:
        _want(k in known, f"{where}.{k}", f"unknown key (known: {', '.join(sorted(known))})")
    retry_forever = d.get("retry_forever", False)
    _want(isinstance(retry_forever, bool), f"{where}.retry_forever", "must be true or false")
    _want(depth > 0 or "retry_forever" not in d, f"{where}.retry_forever",
          "only for a nested supervisor: the root has no parent to escalate to, and always "
          "retries a child past its intensity")
    strategy = d.get("strategy", "one_for_one")
    _want(strategy in Strategy.__members__.values(), f"{where}.strategy",
          f"must be one of {[s.value for s in Strategy]}, got {strategy!r}")
    hb = d.get("heartbeat", {})
    _want(isinstance(hb, dict), f"{where}.heartbeat", "must be a table")
    _known(hb, HEARTBEAT_KEYS, f"{where}.heartbeat")
    _want(isinstance(children, list), f"{where}.children", "must be a list of tables")
    kids = tuple(
        parse_child(c, f"{where}.children[{i}]", actor_config, seen, depth)
        for i, c in enumerate(children)
    )
    return SupervisorSpec(
        id=sid,
        strategy=Strategy(strategy),
        intensity=_int(d, "intensity", where, 5),
        period_s=_num(d, "period_s", where, 10, 0.001),
        stable_after_s=_num(d, "stable_after_s", where, STABLE_AFTER_S),
        start_timeout_ms=_int(d, "start_timeout_ms", where, 10_000, 1),
        backoff=_backoff(d.get("backoff", {}), f"{where}.backoff"),
        heartbeat=HeartbeatSpec(
            _int(hb, "interval_ms", f"{where}.heartbeat", 200, 10),
            _int(hb, "misses", f"{where}.heartbeat", 3, 1),
            _int(hb, "idle_interval_ms", f"{where}.heartbeat", 1000, 10),
        ),
        children=kids,
        retry_forever=retry_forever,
    )


def parse_child(d: Any, where: str, actor_config: dict, seen: set[str],
                depth: int = 0) -> ChildSpec:
    _want(isinstance(d, dict), where, "must be a table")
    cid = d.get("id")
    _want(isinstance(cid, str) and cid != "" and set(cid) <= _ID_OK and len(cid) <= 32,
          f"{where}.id", f"must be 1-32 chars of [a-z0-9_-], got {cid!r}")
    _want(cid not in seen, f"{where}.id", f"{cid!r} is used twice (ids are tree-wide)")
    _want(cid not in RESERVED, f"{where}.id", f"{cid!r} is reserved")
    seen.add(cid)
    ctype = d.get("type", "worker")
    _want(ctype in ("worker", "supervisor"), f"{where}.type", "must be worker or supervisor")
    restart = d.get("restart", "permanent")
    _want(restart in RestartType.__members__.values(), f"{where}.restart",
          f"must be one of {[r.value for r in RestartType]}, got {restart!r}")
    shutdown = d.get("shutdown_ms", 5000 if ctype == "worker" else 30_000)
    _want(shutdown == BRUTAL_KILL or (type(shutdown) is int and shutdown >= 0),
          f"{where}.shutdown_ms", f"must be milliseconds or {BRUTAL_KILL!r}")
    _want(isinstance(d.get("config", {}), dict), f"{where}.config", "must be a table")
    config = dict(d.get("config", {}))
    config.update(actor_config.get(cid, {}))
    fallbacks = d.get("fallbacks", [])
    _want(isinstance(fallbacks, list) and all(isinstance(f, str) for f in fallbacks),
          f"{where}.fallbacks", "must be a list of strings")
    essential = d.get("essential", True)
    _want(isinstance(essential, bool), f"{where}.essential", "must be true or false")
    sup = None
    start = d.get("start", "")
    if ctype == "supervisor":
        # (a supervisor has no fallback: past its intensity it escalates to its own)
        _want(not fallbacks, f"{where}.fallbacks", "a supervisor has no fallbacks")
        sd = {k: v for k, v in d.items() if k not in (*CHILD_KEYS, "children")}
        sup = parse_supervisor(cid, sd, d.get("children", []), where, actor_config, seen,
                               depth + 1)
    else:
        _want(isinstance(start, str) and ":" in start, f"{where}.start",
              f"must be 'module:Class', got {start!r}")
        for k in d:
            _want(k in (*CHILD_KEYS, "start"), f"{where}.{k}", "unknown key for a worker")
        _want(essential or not start.startswith(NEVER_SHED), f"{where}.essential",
              "the resource actor brings shed actors back: it must stay essential")
    return ChildSpec(
        id=cid,
        start=start,
        restart=RestartType(restart),
        shutdown_ms=shutdown,
        type=ctype,
        config=config,
        fallbacks=tuple(fallbacks),
        supervisor=sup,
        essential=essential,
    )


def parse_tree(doc: dict) -> SupervisorSpec:
    """The root supervisor's spec from a merged config document."""
    actor_config = doc.get("actor", {})
    _want(isinstance(actor_config, dict), "actor", "must be a table of tables")
    shared = {"targets": doc.get("targets", {}), "timeouts": doc.get("timeouts", {})}
    merged_actor_config = {
        cid: {**shared, **cfg} for cid, cfg in actor_config.items()
    }
    seen: set[str] = set()
    root = parse_supervisor("supervisor", doc.get("supervisor", {}), doc.get("children", []),
                            "supervisor", merged_actor_config, seen)
    return _with_shared(root, shared)


def _with_shared(spec: SupervisorSpec, shared: dict) -> SupervisorSpec:
    # Every actor sees the tree-wide tables (targets, timeouts) under its own config.
    kids = []
    for c in spec.children:
        cfg = {**shared, **c.config}
        sup = _with_shared(c.supervisor, shared) if c.supervisor else None
        kids.append(ChildSpec(c.id, c.start, c.restart, c.shutdown_ms, c.type, cfg,
                              c.fallbacks, sup, c.essential))
    return SupervisorSpec(spec.id, spec.strategy, spec.intensity, spec.period_s,
                          spec.stable_after_s, spec.start_timeout_ms, spec.backoff,
                          spec.heartbeat, tuple(kids), spec.retry_forever)
