"""Shedding: a supervisor stops its non-essential children while critical pressure persists.

  op        args                      reply
  sup.shed  {on: bool, reason?: str}  {supervisor, shedding, shed: [child], resumed: [child],
                                       held: [child], failed: {supervisor: error name}}

`on: true` (the resource actor asks, once critical pressure has persisted): every child whose
spec says `essential = false` is stopped the way the tree stops any child (SIGTERM, then
SIGKILL after its `shutdown_ms`) and then held in state `shed`: not restarted, not counted as
a failure or a restart, not started again by a sibling's restart (rest_for_one, one_for_all).
One that is down with a start due (its group's restart under way) is shed too: that start
does not run; nor does any start of a non-essential child while the tree sheds (it is shed
then, with a `shed` event).
A `shed` event names each one. `on: false` starts them again: an `unshed` event, then their
`started` event with `resumed: true`. When to do either is the resource actor's decision (it
holds the hysteresis); a supervisor only carries it out.

The op reaches the whole tree: it is forwarded to every running nested supervisor, whose
answer is merged in (`shed` lists every child stopped now, wherever it is); a nested
supervisor that is non-essential itself is shed whole instead. A nested supervisor that comes
up while its parent is shedding (a restart) is told on its way up, so its non-essential
children do not come back by the side door. Idempotent: shedding twice sheds what has come up
since (`held`: what was shed already); resuming twice does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moorage.actors.runtime import DEFERRED, Call, op
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import WireError
from moorage.supervisor.children import Child, ChildState
from moorage.supervisor.host import SupervisorHost

TELL_TIMEOUT_S = 3.0
LISTS = ("shed", "resumed", "held")


class SheddingOps:
    """`sup.shed`, carried out through the supervisor's job queue (`SupervisorHost`)."""

    def __init__(self, sup: SupervisorHost) -> None:
        self.sup = sup

    @op("sup.shed", args={"on": bool, "reason": (str, "")}, idempotent=True, timeout_ms=5000,
        result={"supervisor": str, "shedding": bool, "shed": list[str], "resumed": list[str],
                "held": list[str], "failed": dict[str, str]})
    def _op_shed(self, call: Call, on: bool, reason: str) -> object:
        """Stop (on) or start again (off) the non-essential children of the whole tree."""
        self.sup.shedding = on
        out: dict[str, Any] = {"supervisor": self.sup.name, "shedding": on,
                               **{k: [] for k in LISTS}, "failed": {}}
        for cid in self.sup.order:
            c = self.sup.children[cid]
            if not c.spec.essential:
                (self._shed_one if on else self._resume_one)(c, reason, out)
        self.sup.next_job()
        nested = [cid for cid in self.sup.order if self.sup.children[cid].spec.type == "supervisor"
                  and self.sup.children[cid].spec.essential
                  and self.sup.children[cid].state is ChildState.RUNNING]
        if not nested:
            return out
        left = len(nested)

        def merge(cid: str) -> Callable[[Reply | None, WireError | None], None]:
            def got(reply: Reply | None, err: WireError | None) -> None:
                nonlocal left
                body = reply.body if reply is not None and isinstance(reply.body, dict) else {}
                if err is not None or reply is None:
                    out["failed"][cid] = err.name if err is not None else "internal"
                for k in LISTS:
                    out[k].extend(body.get(k, []))
                out["failed"].update(body.get("failed", {}))
                left -= 1
                if left == 0:
                    call.reply(out)
            return got

        for cid in nested:
            self.sup.outbound.call(cid, "sup.shed", {"on": on, "reason": reason},
                               timeout=TELL_TIMEOUT_S, on_done=merge(cid),
                               deadline_ms=call.deadline_ms)
        return DEFERRED

    def _shed_one(self, c: Child, reason: str, out: dict[str, Any]) -> None:
        if c.shed:
            out["held"].append(c.id)
            return
        if c.state in (ChildState.RUNNING, ChildState.STARTING):
            self.sup.jobs.append(("stop", c))  # after the job under way, like any stop
        elif c.state is ChildState.STOPPING:
            pass  # its stop goes on (to SIGKILL if need be); a start queued after it skips it
        elif c.state is ChildState.BACKOFF or any(
                kind == "start" and job is c for kind, job in self.sup.jobs):
            # Its pending restart skips it (and still restarts the rest of its group); or,
            # down with its start queued (its group's restart under way), that start is
            # not run.
            c.state = ChildState.SHED
        else:
            return  # stopped or failed already: nothing to shed, nothing to bring back
        self._mark(c, reason)
        out["shed"].append(c.id)

    def _mark(self, c: Child, reason: str) -> None:
        c.shed = True
        c.sheds += 1
        self.sup.event("shed", c, reason=reason)

    def hold(self, c: Child) -> bool:
        """A start of `c` is due: True when it is not to run, because the tree is shedding
        and `c` is not essential. A start queued after `sup.shed {on: true}` (a group's
        restart reaching a child that was down then, an explicit restart) would otherwise
        bring it back while the tree sheds; it is shed instead, and resumed with the
        others."""
        if not self.sup.shedding or c.spec.essential or c.shed:
            return False
        c.state = ChildState.SHED
        self._mark(c, "shedding when its start was due")
        return True

    def _resume_one(self, c: Child, reason: str, out: dict[str, Any]) -> None:
        if not c.shed:
            return
        c.shed = False
        # Still stopping: the start waits its turn behind the stop in the job queue.
        c.resuming = c.state is not ChildState.RUNNING
        self.sup.jobs.append(("start", c))
        out["resumed"].append(c.id)
        self.sup.event("unshed", c, reason=reason)

    def shed_calls_on_ready(self, child: Child) -> list[tuple[str, dict[str, Any]]]:
        """What a nested supervisor that just came up is told while the tree is shedding."""
        if self.sup.shedding and child.spec.type == "supervisor":
            return [("sup.shed", {"on": True, "reason": "shedding when it started"})]
        return []
