"""One sample of the tree's processes: memory, CPU and role of each.

Which processes: everything under the root supervisor (its pid comes from `sup.status`),
found by parent pid (read from /proc/<pid>/stat). Process layout (moorage.supervisor.zygote): a
supervisor forks a zygote; the zygote forks the supervisor's children (actors and nested
supervisors); anything below an actor is that actor's: shells, their children, helper
processes. Every supervisor is a subreaper: a dead zygote's children, and anything orphaned
below it (`(cmd &)` or `setsid -f` from a shell or an actor, a dead keeper's shells), become
its children. Roles:

  supervisor  a pid `sup.status` reports as a supervisor: the root, or a nested one by the
              pid its parent's entry has now
  zygote      a supervisor's zygote or spare, as its `zygote.pid` and `zygote.spare` say; or
              another child of a supervisor that may be one: titled `moorage[` (every process
              of the tree is, from its first moments on: zygote.set_title), or not yet seen
              by a status asked after it appeared (`Sample.doubts`: the actor asks again)
  actor       a pid `sup.status` reports as a worker, or any other child of a zygote (an
              actor starting or exiting, not yet or no longer in the status): a zygote forks
              nothing else, and mistaking one for a runaway must never happen; or a titled
              process below an actor (a fork of it that has not exec'd: the tree's own)
  descendant  anything else below an actor, `owner` naming the actor; and any other child
              of a supervisor (something orphaned to it), `owner` naming the supervisor, and
              everything below it: these are the runaway candidates (escalation.py)

A nested supervisor that did not answer the root's `sup.status` in time comes with its
last-known tree (a previous process's pids, if it was restarted) or its spec's (no pids);
one starting or stopping comes with none. None of those pids is taken: its subtree is read
from what is sure without them (`_Unanswered`). The tree's own processes are titled, but for
a replacement zygote (a new program, titled a moment after it starts) and what it forks
meanwhile, each a supervisor's child or grandchild; so a process is a descendant there only
if it is untitled and at least two levels below anything that may be a supervisor (the
unanswered one; and any titled process, if its spec has supervisors of its own). Everything
above is classed zygote or actor, as it may be, never a candidate; `Sample.doubts` has the
status asked for again until that supervisor answers.

Cost is what matters at one sample a second (P14: the whole idle tree under 1% of a core).
Finding children needs the parent of every process on the machine; psutil's
`children(recursive=True)` reads /proc/<pid>/stat of all of them on every call (about 2 ms
for 90 processes here). Instead the parent of each pid is read once, when the pid first
appears in /proc (a listdir per sample), and read again for the orphans of a process that
died (they were reparented), or of a zombie's children (an RSS of 0: a process that has
exited but is not reaped yet, whose children were reparented when it died). Every
`rescan_every` samples the whole map (and every name: a process may have exec'd) is read
again, which bounds what a pid reused within one interval could get wrong.
psutil.Process objects are kept between samples (a signal through one is refused if its pid
was reused); the figures themselves are read from /proc directly, through files kept open per
process (a read of a kept /proc file is a fresh one; a process gone makes it fail, so a reused
pid is never read as the old one): statm for RSS and stat for CPU time, the numbers psutil's
memory_info and cpu_times give at about a third of the CPU (stat's own rss field is not used:
the kernel's count there is approximate), and /proc/meminfo for the machine's (psutil's
virtual_memory total and available). CPU is the difference of CPU
times between two samples.

Memory, three ways. `rss` (statm, about 10 us a process) counts every page a process maps
once per process: a zygote's children share most of the interpreter's pages, so an idle
default tree sums to about 3.3 times what it uses (330 MB of RSS for 98 MB of PSS, a third
of the default budget: "moderate" with nothing running). `pss` (smaps_rollup, about 350 us
a process, more for a large one: the kernel walks its page tables) counts each shared page
once, divided among every process on the machine that maps it, so it also moves a little
when unrelated processes (other Python interpreters) start or stop. `pss_tracked`, the
default, is `pss` at about `rss`'s cost: the tree's own processes (supervisors, zygotes,
actors: the ones that share pages) have their PSS read every `pss_every` samples, and in
between their RSS change is added to it (an allocation or a free moves both by the same
amount; only a page copied on write is missed until the next read, at most the shared
part). Descendants (shells and what they run) share nothing with the tree: RSS, every sample.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import psutil

from moorage.actors.resource.levels import Reading
from moorage.actors.runtime.procstat import PPID, START, stat_fields

GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)
METRICS = ("rss", "pss", "pss_tracked")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TITLE = "moorage["  # how every process of a tree is titled (supervisor.zygote.set_title)
_SERIALS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Roles:
    """Who is who in the tree, from the root supervisor's `sup.status`. Each one made is
    newer than every one before it (`serial`): a child of a supervisor that no status
    accounts for is judged by one asked after it was first seen (TreeSampler._role)."""

    root_pid: int | None = None
    supervisors: dict[int, str] = field(default_factory=dict)  # pid -> supervisor id
    actors: dict[int, str] = field(default_factory=dict)  # pid -> worker id
    workers: dict[str, int] = field(default_factory=dict)  # running worker id -> pid
    shed: set[str] = field(default_factory=set)  # children held stopped by `sup.shed`
    zygotes: dict[int, str] = field(default_factory=dict)  # zygote or spare pid -> supervisor
    # nested supervisors whose tree did not answer for their current pid -> whether their
    # subtree may hold supervisors of its own (its spec says so, or there is no spec to say)
    unanswered: dict[int, bool] = field(default_factory=dict)
    serial: int = field(default_factory=lambda: next(_SERIALS))


def roles_from_status(status: dict[str, Any]) -> Roles:
    """Read a `sup.status` reply (nested supervisors' trees under "tree"). A nested tree's
    pids are taken only if it answered for the supervisor's current pid: a stale one has a
    previous process's (a restarted supervisor's actors would be taken for its zygote's
    descendants, and killed as runaways), a spec-only one has none."""
    roles = Roles(root_pid=status.get("pid"))

    def walk(tree: dict[str, Any], sid: str) -> None:
        if isinstance(tree.get("pid"), int):
            roles.supervisors[tree["pid"]] = sid
        zygote = tree.get("zygote")
        if isinstance(zygote, dict):
            for key in ("pid", "spare"):
                if isinstance(zygote.get(key), int):
                    roles.zygotes[zygote[key]] = sid
        for ch in tree.get("children", []):
            pid = ch.get("pid")
            if ch.get("state") == "shed":
                roles.shed.add(ch["id"])
            if ch.get("type") == "supervisor":
                if not isinstance(pid, int):
                    continue
                roles.supervisors[pid] = ch["id"]
                sub = ch.get("tree")
                if _answered(sub, pid):
                    walk(sub, ch["id"])
                else:
                    roles.unanswered[pid] = _may_nest(sub)
            elif isinstance(pid, int):
                roles.actors[pid] = ch["id"]
                if ch.get("state") == "running":
                    roles.workers[ch["id"]] = pid

    walk(status, str(status.get("id", "supervisor")))
    return roles


def _answered(tree: object, pid: int) -> bool:
    """Whether a nested supervisor's `tree` is its own answer, now, of the process `pid`."""
    return isinstance(tree, dict) and "error" not in tree and tree.get("pid") == pid \
        and isinstance(tree.get("children"), list)


def _may_nest(tree: object) -> bool:
    """Whether an unanswered subtree may hold supervisors of its own: its children's types
    come from its spec (which a restart does not change), stale or not; no tree, no telling."""
    if not isinstance(tree, dict) or not isinstance(tree.get("children"), list):
        return True
    return any(ch.get("type") == "supervisor" for ch in tree["children"])


@dataclass(frozen=True, slots=True)
class _Unanswered:
    """Where a process stands in the subtree of a supervisor whose tree did not answer (the
    module's doc): what may be a supervisor is known, nothing else."""

    owner: str  # that supervisor's id
    nested: bool  # its subtree may hold supervisors of its own
    may_supervise: bool  # this process may be one of the tree's supervisors
    parent_may_supervise: bool
    sure: bool  # this process, and all below it, surely none of the tree's own


@dataclass(slots=True)
class ProcRow:
    pid: int
    ppid: int
    name: str
    role: str  # supervisor | zygote | actor | descendant
    owner: str  # the supervisor, actor, or (descendant) owning actor id
    rss: int
    memory: int  # what the budget counts: rss or pss
    cpu: float  # percent of one core since the previous sample

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "name": self.name, "role": self.role,
                "id": self.owner, "rss": self.rss, "memory": self.memory,
                "cpu": round(self.cpu, 1)}


@dataclass(slots=True)
class Sample:
    rows: list[ProcRow]
    system_total: int
    system_available: int
    taken_at: float  # monotonic
    cost_us: int  # this thread's CPU time spent taking it
    # processes whose role waits for a newer `sup.status`: children of a supervisor that the
    # status did not account for, and supervisors whose tree did not answer
    doubts: int = 0

    @property
    def memory(self) -> int:
        return sum(r.memory for r in self.rows)

    @property
    def rss(self) -> int:
        return sum(r.rss for r in self.rows)

    @property
    def cpu_percent(self) -> float:
        return sum(r.cpu for r in self.rows)

    def reading(self) -> Reading:
        return Reading(self.memory, self.cpu_percent / 100.0, self.system_total,
                       self.system_available)

    def totals(self) -> dict[str, Any]:
        by_role: dict[str, int] = defaultdict(int)
        for r in self.rows:
            by_role[r.role] += r.memory
        return {"processes": len(self.rows), "rss": self.rss, "memory": self.memory,
                "cpu_percent": round(self.cpu_percent, 1), "memory_by_role": dict(by_role)}


def _read(path: str, size: int = 4096) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _read_ppid_start(pid: int) -> tuple[int, int]:
    """(its parent, when it started in clock ticks since boot): a pid with another start
    time than before is another process."""
    f = stat_fields(pid)
    return int(f[PPID]), int(f[START])


# Processes whose /proc files stay open between samples, at most: past them (a build forking
# hundreds) each is opened and closed at each sample, so the sampler never holds more than
# 2 x OPEN_MAX descriptors (two a process held open, without bound, ran the actor out of
# descriptors, and sampling stopped for good).
OPEN_MAX = 128


class _ProcFiles:
    """A process's statm and stat, kept open between samples; closed with the object (the
    sampler forgets a process, or is itself dropped)."""

    __slots__ = ("stat", "statm")

    def __init__(self, pid: int) -> None:
        self.statm = self.stat = -1
        self.statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        self.stat = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)

    def figures(self) -> tuple[int, float]:
        """(RSS bytes, user + system CPU seconds), as psutil's memory_info().rss and
        cpu_times() user + system have them. OSError once the process is gone."""
        rss = int(os.pread(self.statm, 256, 0).split()[1]) * PAGE_SIZE
        data = os.pread(self.stat, 4096, 0)
        f = data[data.rindex(b")") + 2:].split()
        return rss, float(f[11]) / CLOCK_TICKS + float(f[12]) / CLOCK_TICKS

    def close(self) -> None:
        for fd in (self.statm, self.stat):
            if fd >= 0:
                os.close(fd)
        self.statm = self.stat = -1

    def __del__(self) -> None:
        self.close()


def _figures_once(pid: int) -> tuple[int, float]:
    """`_ProcFiles.figures` for a process whose files are not kept open."""
    files = _ProcFiles(pid)
    try:
        return files.figures()
    finally:
        files.close()


def system_memory() -> tuple[int, int]:
    """(total, available) bytes of the machine, as psutil.virtual_memory() has them."""
    data = _read("/proc/meminfo", 16384)
    mems = {}
    for line in data.split(b"\n"):
        if line.startswith((b"MemTotal:", b"MemFree:", b"MemAvailable:")):
            name, value = line.split()[:2]
            mems[name] = int(value) * 1024
    avail = mems.get(b"MemAvailable:", 0)
    if b"MemTotal:" not in mems or avail <= 0:
        vm = psutil.virtual_memory()  # an old or odd kernel: psutil's estimate
        return vm.total, vm.available
    total = mems[b"MemTotal:"]
    return total, mems[b"MemFree:"] if avail > total else avail


class TreeSampler:
    def __init__(self, metric: str = "pss_tracked", rescan_every: int = 30,
                 pss_every: int = 30, open_max: int = OPEN_MAX) -> None:
        if metric not in METRICS:
            raise ValueError(f"memory metric must be one of {METRICS}, not {metric!r}")
        if rescan_every < 1 or pss_every < 1:
            raise ValueError("rescan_every and pss_every must be >= 1")
        self.metric = metric
        self.rescan_every = rescan_every
        self.pss_every = pss_every
        self.open_max = open_max
        self.pss_reads = 0
        self.samples = 0
        self._ppid: dict[int, int] = {}  # every pid on the machine -> its parent
        self._start: dict[int, int] = {}  # ... and when it started (a reused pid differs)
        self._procs: dict[int, psutil.Process] = {}  # the tree's, kept between samples
        self._files: dict[int, _ProcFiles] = {}  # their /proc files, kept open too
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (cpu seconds, when)
        self._names: dict[int, str] = {}
        self._pss: dict[int, tuple[int, int, int]] = {}  # pid -> (pss, rss then, sample no.)
        # children of a supervisor no status accounted for -> Roles.serial when first seen
        self._unaccounted: dict[int, int] = {}
        self._doubts = 0  # this sample's (Sample.doubts)

    def process(self, pid: int) -> psutil.Process | None:
        """The kept psutil object of a sampled pid (its identity checks guard signals)."""
        return self._procs.get(pid)

    def _refresh_parents(self) -> None:
        rescan = self.samples % self.rescan_every == 0
        if rescan:
            self._names.clear()  # a process may have exec'd another program since
        now = set(psutil.pids())
        gone = self._ppid.keys() - now
        for pid in gone:
            del self._ppid[pid]
            self._start.pop(pid, None)
            self._forget(pid)
        # Orphans of what died were reparented (to init, or a subreaper): read them again.
        stale = {pid for pid, ppid in self._ppid.items() if ppid in gone} if gone else set()
        fresh = now - self._ppid.keys()
        for pid in fresh | stale:
            if pid not in stale:
                self._forget(pid)  # a pid seen anew is a new process
            self._reread(pid)  # None: gone already, or a kernel thread being torn down
        if rescan:
            # Every other parent read again (one reparented unseen; a pid reused between
            # two samples, which its start time tells: only then is what was measured of it
            # forgotten. Forgotten all at once, every process read 0% CPU for a sample,
            # which moved the level at its boundary down and up again.)
            for pid in self._ppid.keys() - fresh - stale:
                self._reread(pid)

    def _reread(self, pid: int) -> int | None:
        try:
            ppid, start = _read_ppid_start(pid)
        except (OSError, ValueError, IndexError):
            self._ppid.pop(pid, None)
            self._start.pop(pid, None)
            return None
        if self._start.get(pid, start) != start:
            self._forget(pid)  # (its pid is another process's now)
        elif self._ppid.get(pid, ppid) != ppid:
            # Reparented: its name is read again. One read as a fork of an actor (titled as
            # the actor, not a runaway candidate) and orphaned since has exec'd by now.
            self._names.pop(pid, None)
        self._ppid[pid], self._start[pid] = ppid, start
        return ppid

    def _forget(self, pid: int) -> None:
        self._procs.pop(pid, None)
        files = self._files.pop(pid, None)
        if files is not None:
            files.close()
        self._cpu.pop(pid, None)
        self._names.pop(pid, None)
        self._pss.pop(pid, None)
        self._unaccounted.pop(pid, None)

    def _memory(self, p: psutil.Process, rss: int, own: bool) -> int:
        """What the budget counts for one process (the module's doc: the three metrics)."""
        if self.metric == "rss" or (not own and self.metric == "pss_tracked"):
            return rss
        kept = self._pss.get(p.pid)
        if self.metric == "pss_tracked" and kept is not None \
                and self.samples - kept[2] < self.pss_every:
            return max(0, kept[0] + rss - kept[1])
        try:
            pss = p.memory_full_info().pss
        except psutil.AccessDenied:
            return rss
        self.pss_reads += 1
        self._pss[p.pid] = (pss, rss, self.samples)
        return pss

    def _measure(self, pid: int, now: float, own: bool) -> tuple[int, int, float, str] | None:
        # Two reads per process (statm, stat); the psutil object and the name once per
        # process; smaps_rollup as the metric needs it (`own`: not a descendant).
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
            name = self._names.get(pid)
            if name is None:
                name = self._names[pid] = _comm(pid)
            files = self._files.get(pid)
            if files is None and len(self._files) < self.open_max:
                files = self._files[pid] = _ProcFiles(pid)
            rss, total = files.figures() if files is not None else _figures_once(pid)
            memory = self._memory(p, rss, own)
        except (*GONE, OSError, ValueError, IndexError):
            self._forget(pid)
            return None
        prev = self._cpu.get(pid)
        self._cpu[pid] = (total, now)
        cpu = 100.0 * (total - prev[0]) / (now - prev[1]) if prev and now > prev[1] else 0.0
        return rss, memory, max(0.0, cpu), name

    def sample(self, roles: Roles) -> Sample:
        t0 = time.thread_time_ns()
        now = time.monotonic()
        self._refresh_parents()
        self.samples += 1
        children: dict[int, list[int]] = defaultdict(list)
        for pid, ppid in self._ppid.items():
            children[ppid].append(pid)
        rows: list[ProcRow] = []
        seen: set[int] = set()
        queue: deque[tuple[int, ProcRow | None, _Unanswered | None]] = deque()
        if roles.root_pid is not None:
            queue.append((roles.root_pid, None, None))
        unaccounted, self._unaccounted = self._unaccounted, {}
        self._doubts = 0
        while queue:
            pid, parent, up = queue.popleft()
            if pid in seen:
                continue
            seen.add(pid)
            role, owner, lineage = self._role(pid, parent, up, roles, unaccounted)
            got = self._measure(pid, now, role != "descendant")
            if got is None:
                continue
            rss, memory, cpu, name = got
            row = ProcRow(pid, parent.pid if parent else self._ppid.get(pid, 0), name, role,
                          owner, rss, memory, cpu)
            rows.append(row)
            kids = children.get(pid, ())
            if rss == 0 and kids:  # a zombie: its children are someone else's now
                kids = [k for k in kids if self._reread(k) == pid]
            queue.extend((c, row, lineage) for c in kids)
        for pid in self._procs.keys() - seen:
            self._forget(pid)
        total, available = system_memory()
        cost = (time.thread_time_ns() - t0) // 1000
        return Sample(rows, total, available, now, cost, self._doubts)

    def _role(self, pid: int, parent: ProcRow | None, up: _Unanswered | None, roles: Roles,
              unaccounted: dict[int, int]) -> tuple[str, str, _Unanswered | None]:
        """(role, owner) of a process (the module's doc), and where it stands in the subtree
        of a supervisor whose tree did not answer, if it is in one (`up`: its parent's)."""
        if pid in roles.supervisors:
            sid = roles.supervisors[pid]
            nested = roles.unanswered.get(pid)
            if nested is None:
                return "supervisor", sid, None
            self._doubts += 1
            return "supervisor", sid, _Unanswered(sid, nested, True, False, False)
        if pid in roles.actors:
            return "actor", roles.actors[pid], None
        if pid in roles.zygotes:
            return "zygote", roles.zygotes[pid], None
        if parent is None:
            return "supervisor", "supervisor", None
        if up is not None:
            return self._unanswered_role(pid, parent, up)
        if parent.role == "supervisor":
            # Titled: the tree's own (a spare the status has not caught up with, a zygote
            # being replaced). Else orphaned to this supervisor, or its zygote started after
            # the status was asked: judged by a status asked after it was first seen (the
            # actor asks for one).
            if self._titled(pid, fresh=True):
                return "zygote", parent.owner, None
            first = self._unaccounted[pid] = unaccounted.get(pid, roles.serial)
            if first == roles.serial:
                self._doubts += 1
                return "zygote", parent.owner, None
            return "descendant", parent.owner, None
        if parent.role == "zygote":
            return "actor", "", None
        if self._titled(pid):
            return "actor", parent.owner, None
        return "descendant", parent.owner, None

    def _unanswered_role(self, pid: int, parent: ProcRow,
                         up: _Unanswered) -> tuple[str, str, _Unanswered]:
        """A process below a supervisor whose tree did not answer (the module's doc): a
        runaway candidate only if surely none of the tree's own."""
        sure = up.sure or not (up.may_supervise or up.parent_may_supervise)
        # (a title read now if it may make a supervisor of it: it must be the current one)
        titled = self._titled(pid, fresh=up.nested and not sure)
        lineage = _Unanswered(up.owner, up.nested, up.nested and titled and not sure,
                              up.may_supervise, sure)
        if sure and not titled:
            return "descendant", parent.owner or up.owner, lineage
        if sure:
            return "actor", parent.owner, lineage
        if up.may_supervise:
            return "zygote", up.owner, lineage
        return "actor", "", lineage

    def _titled(self, pid: int, fresh: bool = False) -> bool:
        """Whether the process is titled as one of the tree's own. A cached name is taken
        only if untitled: a titled one may have exec'd since (a fork of an actor), and a
        runaway must not hide behind it; `fresh` reads it again in any case. A process
        whose name cannot be read is gone, or about to be: not a candidate."""
        name = None if fresh else self._names.get(pid)
        if name is not None and not name.startswith(TITLE):
            return False
        try:
            name = self._names[pid] = _comm(pid)
        except OSError:
            return True
        return name.startswith(TITLE)


def _comm(pid: int) -> str:
    """A process's name as the kernel keeps it (15 characters at most). Not psutil's name(),
    which reads /proc/<pid>/cmdline for a longer one: that read takes the process's memory
    map lock, and a process stuck in a fault (a hung FUSE or NFS mapping) holds it for as
    long as it is stuck, and this loop with it."""
    return _read(f"/proc/{pid}/comm").rstrip(b"\n").decode(errors="replace")
