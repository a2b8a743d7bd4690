"""Where a round trip's wall time goes at the scheduler, per thread of the processes under test.

Read before and after a measured stretch, from /proc/<pid>/task/<tid>/schedstat and status:
the CPU each thread ran, the time it waited runnable for a CPU (its run delay), how often it
was preempted (involuntary switches) and how often a wait of its ended in a wake-up
(voluntary ones). Per call, the CPU of every thread on the path set against the call's wall
time says how much of that time is contention for this machine's cores, and each side's CPU
set against a bare echo's says what the runtime adds there. A thread preempted in most calls
has the preemption inside any wall-clock time it records around that point: an actor's main
thread is, in most round trips, by its own ZeroMQ I/O thread, which the reply's hand-off
wakes (`perf sched` named that thread in all but 3 of 1,755 preemptions of a watcher serving
sys.ping): a service time that ran to the reply's send held the I/O thread's run, which is why
the runtime's ends with the reply made, before the send (actors/runtime/actor.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ThreadTimes:
    pid: int
    tid: int
    name: str  # the thread's comm
    cpu_ns: int  # time run on a CPU
    wait_ns: int  # time runnable, waiting for a CPU
    preempted: int  # involuntary context switches
    slept: int  # voluntary context switches: each a wait that ended in a wake-up

    @property
    def kind(self) -> str:
        """main (the process's first thread), zmq-io (a ZeroMQ I/O thread) or other."""
        if self.tid == self.pid:
            return "main"
        if self.name.startswith("ZMQbg/IO"):
            return "zmq-io"
        return "other"


def _thread(pid: int, tid: int) -> ThreadTimes | None:
    task = PROC / str(pid) / "task" / str(tid)
    try:
        cpu, wait, _ = (int(x) for x in (task / "schedstat").read_text().split())
        name = (task / "comm").read_text().strip()
        status = (task / "status").read_text()
    except (OSError, ValueError):
        return None  # gone meanwhile
    preempted = slept = 0
    for line in status.splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            preempted = int(line.split()[1])
        elif line.startswith("voluntary_ctxt_switches:"):
            slept = int(line.split()[1])
    return ThreadTimes(pid, tid, name, cpu, wait, preempted, slept)


def snapshot(pids: Iterable[int]) -> dict[int, ThreadTimes]:
    """Every live thread of `pids`, by thread id."""
    out: dict[int, ThreadTimes] = {}
    for pid in pids:
        try:
            tids = [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            t = _thread(pid, tid)
            if t is not None:
                out[tid] = t
    return out


@dataclass(frozen=True)
class Share:
    """One group of threads' cost per call over a stretch."""

    cpu_us: float
    wait_us: float
    preempted: float  # involuntary switches per call
    woken: float  # voluntary switches (waits ended by a wake-up) per call


def per_call(before: dict[int, ThreadTimes], after: dict[int, ThreadTimes], calls: int,
             label: dict[int, str]) -> dict[str, Share]:
    """Each (process label, thread kind)'s CPU, run delay and preemptions per call between two
    snapshots; `label` names each pid ("actor", "client", ...). A thread that started or ended
    in between counts from zero or not at all: the stretch is taken with the path warm."""
    sums: dict[str, list[float]] = {}
    for tid, a in after.items():
        b = before.get(tid)
        key = f"{label.get(a.pid, str(a.pid))} {a.kind}"
        s = sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        s[0] += a.cpu_ns - (b.cpu_ns if b else 0)
        s[1] += a.wait_ns - (b.wait_ns if b else 0)
        s[2] += a.preempted - (b.preempted if b else 0)
        s[3] += a.slept - (b.slept if b else 0)
    n = max(1, calls)
    return {k: Share(v[0] / n / 1000, v[1] / n / 1000, v[2] / n, v[3] / n)
            for k, v in sums.items()}


def stretch(label: dict[int, str], run: Callable[[], object], calls: int
            ) -> tuple[dict[str, Share], float]:
    """`run()` (which makes `calls` calls) between two snapshots of the processes `label`
    names: each group's share per call (per_call), and the wall µs per call."""
    before = snapshot(label)
    t0 = time.perf_counter()
    run()
    wall = (time.perf_counter() - t0) / max(1, calls) * 1e6
    return per_call(before, snapshot(label), calls, label), wall
