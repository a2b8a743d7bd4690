"""A supervisor's control ops: status, restart, kill, stop, run-time config, endpoints.

A component of the Supervisor actor (supervisor.py: the life-cycle, jobs, spawns, deaths,
heartbeats), which serves its ops; the op table is documented there. An op naming a child of
a nested supervisor is forwarded to the direct child supervisor that holds it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

from moorage.actors.runtime import DEFERRED, Call, op
from moorage.actors.runtime.actor import LIFECYCLE
from moorage.actors.runtime.shapes import WIRE_ERROR, Named, OneOf
from moorage.actors.runtime.signals import parse_signal
from moorage.protocol import endpoints
from moorage.protocol.errors import WireError, fail
from moorage.supervisor.children import ChildState
from moorage.supervisor.host import SupervisorHost
from moorage.supervisor.overrides import check_ms, parse_key, tell_all
from moorage.supervisor.policy import affected

# The shapes of sup.status: a child, and a (nested) supervisor's tree of them.
_CHILD_FIELDS: dict[str, object] = {
    "id": str, "type": Literal["worker", "supervisor"],
    "restart": Literal["permanent", "transient", "temporary"],
    "state": Literal["starting", "running", "stopping", "backoff", "stopped", "failed", "shed",
                     "unknown"],
    "pid": int | None, "uptime_s": float, "restarts": int, "last_exit": str | None,
    "fallback": str | None, "essential": bool, "sheds": int,
    # in backoff: seconds to its planned start; past_intensity: that start is a last-resort
    # retry (children.Child._planned_restart)
    "retry_in_s?": float, "past_intensity?": bool,
}
CHILD = Named("child", _CHILD_FIELDS)
_TREE_FIELDS: dict[str, object] = {
    "id": str, "strategy": Literal["one_for_one", "one_for_all", "rest_for_one"],
    "pid": int, "intensity": int, "period_s": float, "shedding": bool,
    # spare: the zygote standing by (from the first death of one on), else nil
    "zygote": {"pid": int | None, "restarts": int, "spare": int | None}, "runtime_dir": str,
    "children": list[CHILD],
    "lifecycle?": LIFECYCLE,
    # (a nested supervisor that did not answer: as last seen, every state `unknown`)
    "error?": WIRE_ERROR,
}
STATUS = Named("status", _TREE_FIELDS)
# A nested supervisor's tree; never seen answering: its children as its spec says.
TREE = Named("tree", OneOf(STATUS, {"id": str, "children": list[CHILD], "error": WIRE_ERROR}))
_CHILD_FIELDS["tree?"] = TREE
_ENDPOINTS = {"rpc": str, "pub": str, "in?": str}  # `in`: the metrics actor's push socket


class ControlOps:
    """The `sup.*` control ops, over the supervisor's state (`SupervisorHost`)."""

    def __init__(self, sup: SupervisorHost) -> None:
        self.sup = sup
        # Each nested supervisor's last status that answered: shown, marked unknown, when it
        # does not answer (a stopped or hung supervisor must not hide its children).
        self._last_nested: dict[str, dict[str, Any]] = {}

    def _owner_path(self, child_id: str) -> str | None:
        """Which direct child supervisor holds `child_id` in its subtree (None: ours)."""
        if child_id in self.sup.children:
            return None
        for cid in self.sup.order:
            c = self.sup.children[cid]
            if c.spec.supervisor is not None and c.spec.supervisor.find(child_id):
                return cid
        raise fail("unknown_actor", f"no child {child_id!r} in {self.sup.name}'s tree")

    def _forward(self, call: Call, via: str, op_name: str, args: dict) -> object:
        def done(reply: Any, err: WireError | None) -> None:
            if err is not None:
                call.fail(err)
            else:
                call.reply(reply.body)

        self.sup.outbound.call(via, op_name, args, timeout=5.0, on_done=done,
                           deadline_ms=call.deadline_ms)
        return DEFERRED

    @op("sup.status", idempotent=True, timeout_ms=5000, result=STATUS)
    def _op_status(self, call: Call) -> object:
        """The tree: state, pid, uptime, restarts and last exit of every child. A nested
        supervisor that does not answer in half of the time left, or that dies before it
        answers (at once, `unavailable`), gets `tree` with its last known children, each in
        state `unknown`, and `tree.error`."""
        now = time.monotonic()
        me = {"id": self.sup.name, "strategy": str(self.sup.spec.strategy), "pid": os.getpid(),
              "intensity": self.sup.spec.intensity, "period_s": self.sup.spec.period_s,
              "shedding": self.sup.shedding,
              "zygote": {"pid": self.sup.zygote.pid, "restarts": self.sup.zygote_restarts,
                         "spare": self.sup.spare.pid or None if self.sup.spare else None},
              "runtime_dir": str(self.sup.runtime_dir),
              "children": [self.sup.children[c].describe(now) for c in self.sup.order]}
        if self.sup.lifecycle is not None:
            me["lifecycle"] = self.sup.lifecycle.describe()
        nested = [c for c in me["children"] if c["type"] == "supervisor" and
                  c["state"] == ChildState.RUNNING]
        if not nested:
            return me
        waiting = {c["id"] for c in nested}

        def got(cid: str) -> Callable[[Any, WireError | None], None]:
            def done(reply: Any, err: WireError | None) -> None:
                entry = next(c for c in me["children"] if c["id"] == cid)
                if err is None:
                    entry["tree"] = self._last_nested[cid] = reply.body
                else:
                    entry["tree"] = {**self.unknown_tree(cid), "error": err.to_wire()}
                waiting.discard(cid)
                if not waiting:
                    call.reply(me)
            return done

        # A nested supervisor gets half of the time left, so that our reply, saying it did
        # not answer, still reaches a caller that waits no longer than its deadline.
        left = call.remaining_ms()
        wait = 2.0 if left is None else max(0.01, min(2.0, left / 2000))
        for c in nested:
            self.sup.outbound.call(c["id"], "sup.status", timeout=wait, on_done=got(c["id"]))
        return DEFERRED

    def unknown_tree(self, cid: str) -> dict[str, Any]:
        """A nested supervisor's subtree as last seen (or as its spec says, never seen), every
        state `unknown`: it did not answer now."""
        def mark(tree: dict[str, Any]) -> dict[str, Any]:
            kids = []
            for ch in tree.get("children", []):
                ch = {**ch, "state": "unknown"}
                if isinstance(ch.get("tree"), dict):
                    ch["tree"] = mark(ch["tree"])
                kids.append(ch)
            return {**tree, "children": kids}

        last = self._last_nested.get(cid)
        if last is None:
            spec = self.sup.children[cid].spec.supervisor
            last = {"id": cid, "children": [
                {"id": c.id, "type": c.type, "restart": str(c.restart), "pid": None,
                 "uptime_s": 0.0, "restarts": 0, "last_exit": None, "fallback": None,
                 "essential": c.essential, "sheds": 0}
                for c in (spec.children if spec is not None else ())]}
        return mark(last)

    @op("sup.restart", args={"child": str}, timeout_ms=15000, result={"restarted": str},
        errors=("unknown_actor", "unavailable"))
    def _op_restart(self, call: Call, child: str) -> object:
        """Stop a child and start it again (not counted against the intensity), on its
        primary if it ran a fallback."""
        # A restart asked for by hand is a new attempt at the child itself: a fallback is the
        # supervisor's answer to a crash storm, and one that is over, the user asks for the
        # real thing. Should its primary still fail, the storm engages the fallbacks again.
        via = self._owner_path(child)
        if via is not None:
            return self._forward(call, via, "sup.restart", {"child": child})
        c = self.sup.children[child]
        if c.shed:
            raise fail("busy", f"{child} is shed under critical pressure; it comes back "
                       "when the pressure has passed (or with sup.shed {on: false})")
        if c.fallback_index >= 0:
            c.primary_again()
        if c.state is ChildState.BACKOFF and c.run_plan():
            return {"restarted": child}  # (its group's restart, now: the others come too)
        for m in self.sup.children.values():
            # A dependant whose group waits for a member's back-off: that group's restart,
            # now, in its order (started on its own, it would run before what it depends
            # on, and be left out when the member came up).
            if m is not c and m.state is ChildState.BACKOFF and m.plan is not None and \
                    c.id in affected(self.sup.spec.strategy, self.sup.order, m.id):
                m.run_plan()
                return {"restarted": child}
        c.cancel_plan()
        if c.state in (ChildState.RUNNING, ChildState.STARTING):
            self.sup.jobs.append(("stop", c))
        c.restarts += 1
        self.sup.jobs.append(("start", c))
        self.sup.next_job()
        return {"restarted": child}

    @op("sup.kill", args={"child": str, "signal": ((str, int), "SIGKILL")},
        result={"signalled": str, "pid": int, "signal": int},
        errors=("unknown_actor", "unavailable"))
    def _op_kill(self, call: Call, child: str, signal: str | int) -> object:
        """Send a signal to a child's process (a death is then handled like any other)."""
        via = self._owner_path(child)
        if via is not None:
            return self._forward(call, via, "sup.kill", {"child": child, "signal": signal})
        sig = parse_signal(signal)
        c = self.sup.children[child]
        if c.pid is None or not c.signal(sig):
            raise fail("unavailable", f"{child} has no running process ({c.state})")
        return {"signalled": child, "pid": c.pid, "signal": sig}

    @op("sup.stop", timeout_ms=2000, result={"stopping": bool})
    def _op_stop(self, call: Call) -> dict[str, Any]:
        """Stop the whole tree after answering."""
        self.sup.loop.call_later(0, self.sup.stop)
        return {"stopping": True}

    @op("sup.config.set", args={"key": str, "value": int}, idempotent=True, timeout_ms=5000,
        result={"key": str, "value": int, "told": list[str], "applied": list[str],
                "failed": dict[str, str]})
    def _op_config_set(self, call: Call, key: str, value: int) -> object:
        """Override a setting for the whole tree until it stops (now: `timeout.<op>` ms)."""
        op_name, ms = parse_key(key), check_ms(value)
        self.sup.overrides.set(op_name, ms)
        self.sup.set_timeouts({op_name: ms})
        calls = []
        for cid in self.sup.order:
            c = self.sup.children[cid]
            if c.state is not ChildState.RUNNING:
                continue  # spawned with it, or told when it comes up
            if c.spec.type == "supervisor":
                calls.append((cid, "sup.config.set", {"key": key, "value": ms}))
            else:
                calls.append((cid, "sys.config", {"timeouts": {op_name: ms}}))

        def done(out: dict[str, Any]) -> None:
            if op_name in self.sup.ops:
                out["applied"].append(self.sup.name)
            call.reply({"key": key, "value": ms, **out})

        tell_all(self.sup.outbound, calls, call.deadline_ms, done)
        return DEFERRED

    @op("sup.config.get", idempotent=True, timeout_ms=1000,
        result={"defaults": dict[str, int], "overrides": dict[str, int]})
    def _op_config_get(self, call: Call) -> dict[str, Any]:
        """The tree's `[timeouts]` defaults and the run-time overrides on top of them."""
        return self.sup.overrides.describe(self.sup.doc.get("timeouts") or {})

    @op("sup.orphan_exit", args={"pid": int}, idempotent=True, timeout_ms=1000,
        result={"pid": int, "code": int | None, "signal": int | None}, errors=("not_found",))
    def _op_orphan_exit(self, call: Call, pid: int) -> dict[str, Any]:
        """The exit status of a process orphaned to this supervisor and reaped by it (a
        keeper's shell, when that keeper died): for the one that took the shell over."""
        status = self.sup.orphan_exits.get(pid)
        if status is None:
            raise fail("not_found", f"no orphan {pid} reaped here (yet)")
        return {"pid": pid, "code": status[0], "signal": status[1]}

    @op("sup.endpoints", idempotent=True,
        result=dict[str, _ENDPOINTS])
    def _op_endpoints(self, call: Call) -> dict[str, Any]:
        """Where every actor of the tree listens."""
        rd = self.sup.runtime_dir
        names = [self.sup.name] + [c.id for _, c in self.sup.spec.walk()]
        out = {n: {"rpc": endpoints.rpc(rd, n), "pub": endpoints.pub(rd, n)} for n in names}
        if any(c.id == "metrics" for _, c in self.sup.spec.walk()):
            out["metrics"]["in"] = endpoints.metrics_in(rd)
        return out
