"""Run-time timeout overrides (seed 9.1), kept by each supervisor until the tree stops.

`sup.config.set {key: "timeout.<op>", value: ms}` on the root stores the value here and tells
the whole tree: each running worker by `sys.config {timeouts}`, each running nested supervisor
by the same `sup.config.set` (which does the same for its own children). Nothing is persisted:
a new tree starts from the config file again. A worker spawned later gets the overrides in its
config; one spawned before a change, and any nested supervisor, is told when it comes up, so a
restarted actor keeps the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moorage.actors.runtime.outbound import Outbound
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import WireError, fail
from moorage.protocol.limits import MAX_OP_LEN

TIMEOUT_PREFIX = "timeout."
MAX_TIMEOUT_MS = 3_600_000  # one hour: longer is a mistake, not a timeout
TELL_TIMEOUT_S = 2.0
# Each override is kept, told to every child and merged into every spawn's config: a tree's
# ops are a few dozen (`moorage config set` sets only those), so more is not a tree's.
MAX_OVERRIDES = 256


def parse_key(key: str) -> str:
    """The op name of a `timeout.<op>` key (the only kind of key so far)."""
    op = key.removeprefix(TIMEOUT_PREFIX)
    if not key.startswith(TIMEOUT_PREFIX) or not op:
        raise fail("bad_args", f"unknown config key {key[:80]!r}; known: timeout.<op> (ms)")
    if len(op) > MAX_OP_LEN or not op.isprintable():  # no request could name such an op
        raise fail("bad_args", f"{key[:80]!r}: an op name is 1 to {MAX_OP_LEN} printable "
                   "characters")
    return op


def check_ms(value: Any) -> int:
    if type(value) is not int or not 0 < value <= MAX_TIMEOUT_MS:
        raise fail("bad_args", f"a timeout is milliseconds in 1..{MAX_TIMEOUT_MS}, "
                   f"got {value!r}")
    return value


class Overrides:
    """The overrides of one supervisor, and what each of its workers was spawned with."""

    def __init__(self) -> None:
        self.timeouts: dict[str, int] = {}
        self._spawned_with: dict[str, dict[str, int]] = {}

    def set(self, op: str, ms: int) -> None:
        if op not in self.timeouts and len(self.timeouts) >= MAX_OVERRIDES:
            raise fail("bad_args", f"{MAX_OVERRIDES} timeouts are overridden already, more "
                       "than the tree has ops; set only the tree's (`moorage ops`)")
        self.timeouts[op] = ms

    def spawn_config(self, child_id: str, config: dict[str, Any]) -> dict[str, Any]:
        """A worker's config with the overrides on top of the tree's `[timeouts]`."""
        self._spawned_with[child_id] = dict(self.timeouts)
        if not self.timeouts:
            return config
        return {**config, "timeouts": {**(config.get("timeouts") or {}), **self.timeouts}}

    def on_ready(self, child_id: str, is_supervisor: bool) -> list[tuple[str, dict]]:
        """The calls that bring a child that just came up to the current overrides."""
        if is_supervisor:
            return [("sup.config.set", {"key": TIMEOUT_PREFIX + op, "value": ms})
                    for op, ms in self.timeouts.items()]
        if self._spawned_with.get(child_id) == self.timeouts:
            return []
        return [("sys.config", {"timeouts": dict(self.timeouts)})]

    def describe(self, defaults: dict[str, Any]) -> dict[str, Any]:
        return {"defaults": {TIMEOUT_PREFIX + k: v for k, v in sorted(defaults.items())},
                "overrides": {TIMEOUT_PREFIX + k: v for k, v in sorted(self.timeouts.items())}}


def tell_all(outbound: Outbound, calls: list[tuple[str, str, dict]], deadline_ms: int | None,
             done: Callable[[dict[str, Any]], None]) -> None:
    """Send every (actor, op, args); `done({told, applied, failed})` once all have answered.

    `told` lists who acknowledged, `applied` who has the op, `failed` maps actor -> error name.
    A nested supervisor's own summary is merged in, so the root's reply covers the tree."""
    out: dict[str, Any] = {"told": [], "applied": [], "failed": {}}
    left = len(calls)
    if left == 0:
        done(out)
        return

    def one(cid: str) -> Callable[[Reply | None, WireError | None], None]:
        def got(reply: Reply | None, err: WireError | None) -> None:
            nonlocal left
            if err is not None or reply is None:
                out["failed"][cid] = err.name if err else "internal"
            else:
                body = reply.body if isinstance(reply.body, dict) else {}
                out["told"].append(cid)
                if "told" in body:  # a nested supervisor's summary
                    out["told"].extend(body.get("told", []))
                    out["applied"].extend(body.get("applied", []))
                    out["failed"].update(body.get("failed", {}))
                elif body.get("timeouts"):
                    out["applied"].append(cid)
            left -= 1
            if left == 0:
                done(out)
        return got

    for cid, op, args in calls:
        outbound.call(cid, op, args, timeout=TELL_TIMEOUT_S, on_done=one(cid),
                      deadline_ms=deadline_ms)
