"""What a supervisor's components (control ops, shedding, the event relay, the root's
lifecycle) need of it.

The Supervisor actor (supervisor.py) owns the children, the job queue and the life cycle; its
components reach that state through this interface and nothing else.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from moorage.actors.runtime.loop import Loop
    from moorage.actors.runtime.outbound import Outbound
    from moorage.actors.runtime.registry import OpSpec
    from moorage.actors.runtime.streams import Publisher
    from moorage.supervisor.children import Child
    from moorage.supervisor.overrides import Overrides
    from moorage.supervisor.sdnotify import Notifier
    from moorage.supervisor.spec import SupervisorSpec
    from moorage.supervisor.zygote import ZygoteHandle


class LifecycleView(Protocol):
    """The root's lifecycle component (lifecycle.py), as the control ops see it."""

    def describe(self) -> dict[str, Any]: ...


class SupervisorHost(Protocol):
    name: str
    spec: SupervisorSpec
    doc: dict[str, Any]
    runtime_dir: Path
    loop: Loop
    ops: dict[str, OpSpec]
    publisher: Publisher
    outbound: Outbound
    overrides: Overrides
    children: dict[str, Child]
    order: list[str]
    jobs: deque[tuple[str, Child]]
    shedding: bool
    zygote: ZygoteHandle
    zygote_restarts: int
    orphan_exits: dict[int, tuple[int | None, int | None]]
    epoch: str
    shutting_down: bool
    notify: Notifier | None
    lifecycle: LifecycleView | None  # the root's life beside an editor (lifecycle.py)

    def next_job(self) -> None: ...
    def stop(self) -> None: ...
    def set_timeouts(self, timeouts: dict[str, Any]) -> dict[str, int]: ...
    def event(self, name: str, child: Child | None = None, **fields: Any) -> None: ...
