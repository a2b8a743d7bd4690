"""The tree sampler on real process trees: roles, memory, reparenting, and `sup.status`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from moorage.actors.resource import Roles, TreeSampler, roles_from_status
from moorage.actors.resource.sampler import _read_ppid_start
from tests.conftest import end_built_tree, open_files, wait_pid_exit
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024

# supervisor -> zygote -> actor -> hog (holding `mb` MB), the layout of a real tree; each
# prints "<name> <pid>" and then waits for its stdin (shared) to close. With "reap", a dead
# child is reaped at once (SIGCHLD ignored); without, it stays a zombie until its parent exits.
CHAIN = r"""
import os, signal, sys
mb = int(sys.argv[1])
if sys.argv[2] == "reap":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
names = ["supervisor", "zygote", "actor", "hog"]
for i, name in enumerate(names):
    if name == "hog":
        data = b"x" * (mb * 1024 * 1024)
    sys.stdout.write(f"{name} {os.getpid()}\n")
    sys.stdout.flush()
    if name == "hog" or os.fork() != 0:
        sys.stdin.buffer.read()
        os._exit(0)
"""


@dataclass
class Chain:
    proc: subprocess.Popen
    pids: dict[str, int]

    def roles(self, *, with_actor: bool = True) -> Roles:
        sup, actor = self.pids["supervisor"], self.pids["actor"]
        return Roles(root_pid=sup, supervisors={sup: "supervisor"},
                     actors={actor: "fake"} if with_actor else {},
                     workers={"fake": actor} if with_actor else {})


@pytest.fixture
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    reap = "reap" if getattr(request, "param", False) else "keep"
    proc = subprocess.Popen([sys.executable, "-c", CHAIN, "40", reap], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    pids = {}
    for _ in range(4):
        name, pid = proc.stdout.readline().split()
        pids[name] = int(pid)
    yield Chain(proc, pids)
    end_built_tree(proc, pids)


def by_pid(sample) -> dict:
    return {r.pid: r for r in sample.rows}


def test_every_process_of_the_tree_is_found_with_its_role(chain):
    s = TreeSampler()
    rows = by_pid(s.sample(chain.roles()))
    p = chain.pids
    assert set(rows) == set(p.values())
    assert (rows[p["supervisor"]].role, rows[p["supervisor"]].owner) == ("supervisor",
                                                                         "supervisor")
    assert (rows[p["zygote"]].role, rows[p["zygote"]].owner) == ("zygote", "supervisor")
    assert (rows[p["actor"]].role, rows[p["actor"]].owner) == ("actor", "fake")
    assert (rows[p["hog"]].role, rows[p["hog"]].owner) == ("descendant", "fake")
    assert rows[p["hog"]].rss >= 40 * MB
    assert rows[p["hog"]].ppid == p["actor"]
    assert os.getpid() not in rows  # the test process is the supervisor's parent: outside


def test_a_child_of_a_zygote_missing_from_the_status_is_an_actor_never_a_runaway(chain):
    rows = by_pid(TreeSampler().sample(chain.roles(with_actor=False)))
    assert rows[chain.pids["actor"]].role == "actor"
    assert rows[chain.pids["actor"]].owner == ""
    assert rows[chain.pids["hog"]].role == "descendant"


def test_psutil_objects_are_kept_between_samples_and_totals_add_up(chain):
    s = TreeSampler(metric="rss")
    first = s.sample(chain.roles())
    kept = s.process(chain.pids["hog"])
    second = s.sample(chain.roles())
    assert s.process(chain.pids["hog"]) is kept
    assert second.rss == sum(r.rss for r in second.rows) and second.memory == second.rss
    assert second.totals()["processes"] == 4
    assert second.system_total >= second.system_available > 0
    assert first.cost_us > 0 and second.reading().memory_bytes == second.memory


@pytest.mark.parametrize("chain", [False, True], ids=["zombie", "reaped"], indirect=True)
def test_a_killed_descendant_is_gone_from_the_next_sample(chain):
    s = TreeSampler()
    s.sample(chain.roles())
    os.kill(chain.pids["hog"], signal.SIGKILL)
    assert wait_pid_exit(chain.pids["hog"], 10)
    rows = by_pid(s.sample(chain.roles()))
    # Dead but not yet reaped by its parent: a zombie holds no memory, so it counts nothing.
    assert chain.pids["hog"] not in rows or rows[chain.pids["hog"]].rss == 0


@pytest.mark.parametrize("chain", [False, True], ids=["zombie_parent", "reaped_parent"],
                         indirect=True)
def test_a_process_whose_parent_died_leaves_the_tree(chain):
    s = TreeSampler()
    s.sample(chain.roles())
    hog = psutil.Process(chain.pids["hog"])
    os.kill(chain.pids["actor"], signal.SIGKILL)
    assert wait_pid_exit(chain.pids["actor"], 10)
    rows = by_pid(s.sample(chain.roles()))
    assert hog.pid not in rows
    hog.kill()  # an orphan now: the chain fixture's stdin no longer reaches it in time


def test_pss_counts_shared_pages_once(chain):
    s = TreeSampler(metric="pss")
    sample = s.sample(chain.roles())
    for r in sample.rows:
        assert 0 < r.memory <= r.rss
    # The zygote-like forks share the interpreter's pages: PSS is well below the RSS sum.
    assert sample.memory < sample.rss


def test_tracked_pss_counts_the_tree_by_pss_and_descendants_by_rss(chain):
    s = TreeSampler()  # the default metric
    rows = by_pid(s.sample(chain.roles()))
    for name in ("supervisor", "zygote", "actor"):
        assert 0 < rows[chain.pids[name]].memory <= rows[chain.pids[name]].rss
    hog = rows[chain.pids["hog"]]
    assert hog.memory == hog.rss  # a descendant shares nothing with the tree: not read
    assert s.pss_reads == 3


# supervisor -> actor; the actor holds `n` more MB for each line `n` on its stdin, and says
# "grown" when it has.
GROWER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    held = []
    for line in sys.stdin:
        held.append(b"x" * (int(line) * 1024 * 1024))
        sys.stdout.write("grown\n")
        sys.stdout.flush()
    os._exit(0)
sys.stdout.write(f"{os.getpid()} {pid}\n")
sys.stdout.flush()
os.waitpid(pid, 0)
"""


def test_tracked_pss_is_read_every_pss_every_samples_and_follows_rss_between():
    proc = subprocess.Popen([sys.executable, "-c", GROWER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        sup, actor = map(int, proc.stdout.readline().split())
        roles = Roles(root_pid=sup, supervisors={sup: "supervisor"}, actors={actor: "a"},
                      workers={"a": actor})
        s = TreeSampler(metric="pss_tracked", pss_every=3)
        first = by_pid(s.sample(roles))[actor]
        assert s.pss_reads == 2 and 0 < first.memory <= first.rss
        proc.stdin.write("40\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "grown\n"
        second = by_pid(s.sample(roles))[actor]
        grew = second.rss - first.rss
        assert grew >= 40 * MB
        assert s.pss_reads == 2  # not read again: the RSS change is added to the last PSS
        assert second.memory == first.memory + grew
        by_pid(s.sample(roles))
        assert s.pss_reads == 2
        fourth = by_pid(s.sample(roles))[actor]  # the third sample since the last read
        assert s.pss_reads == 4
        assert 40 * MB <= fourth.memory <= fourth.rss
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def test_an_unknown_memory_metric_is_refused():
    with pytest.raises(ValueError):
        TreeSampler(metric="vms")


def test_no_root_means_an_empty_sample_with_the_machine_s_memory():
    sample = TreeSampler().sample(Roles())
    assert sample.rows == [] and sample.memory == 0 and sample.system_total > 0


def test_the_parent_pid_is_read_past_a_process_name_with_spaces_and_parentheses(tmp_path: Path):
    odd = tmp_path / "a) b (c"
    odd.symlink_to(sys.executable)
    with subprocess.Popen([str(odd), "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE) as p:
        try:
            assert psutil.Process(p.pid).name().startswith("a) b (c")
            ppid, start = _read_ppid_start(p.pid)
            assert ppid == os.getpid() and start == _read_ppid_start(p.pid)[1] > 0
        finally:
            p.kill()


def test_roles_are_read_from_a_nested_sup_status():
    status = {
        "id": "supervisor", "pid": 100, "children": [
            {"id": "metrics", "type": "worker", "state": "running", "pid": 110},
            {"id": "resource", "type": "worker", "state": "starting", "pid": 111},
            {"id": "parser", "type": "worker", "state": "backoff", "pid": None},
            {"id": "terminals", "type": "supervisor", "state": "running", "pid": 120,
             "tree": {"id": "terminals", "pid": 120, "children": [
                 {"id": "ptykeeper", "type": "worker", "state": "running", "pid": 130},
                 {"id": "terminal", "type": "worker", "state": "running", "pid": 131}]}},
            {"id": "other", "type": "supervisor", "state": "running", "pid": 140,
             "tree": {"error": {"code": 200}}},
        ]}
    r = roles_from_status(status)
    assert r.root_pid == 100
    assert r.supervisors == {100: "supervisor", 120: "terminals", 140: "other"}
    assert r.actors == {110: "metrics", 111: "resource", 130: "ptykeeper", 131: "terminal"}
    assert r.workers == {"metrics": 110, "ptykeeper": 130, "terminal": 131}


def test_past_its_bound_the_sampler_reads_processes_without_keeping_their_files(chain):
    s = TreeSampler(metric="rss", open_max=2)
    for _ in range(2):
        rows = by_pid(s.sample(chain.roles()))
        assert set(rows) == set(chain.pids.values())
        assert rows[chain.pids["hog"]].rss >= 40 * MB
    ours = {f"/proc/{pid}/{name}" for pid in chain.pids.values() for name in ("stat", "statm")}
    held = [path for path in open_files(os.getpid()) if path in ours]
    assert len(held) == 4  # two processes' stat and statm




BUSY = "import sys, os\nif os.fork() == 0:\n    while True: pass\nsys.stdin.read()"


def test_a_rescan_keeps_what_was_measured_of_the_processes_it_finds_again():
    """Every `rescan_every` samples the parents are read again; what was measured of a
    process that is still the same one (its start time) is kept: forgotten, every process
    read 0% CPU for that sample."""
    with subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE) as p:
        try:
            busy = wait_for(lambda: psutil.Process(p.pid).children(), "the busy child")[0].pid
            roles = Roles(root_pid=p.pid, supervisors={p.pid: "supervisor"},
                          actors={busy: "fake"}, workers={"fake": busy})
            s = TreeSampler(metric="rss", rescan_every=2)
            s.sample(roles)
            last, cpu = _ticks(busy), []
            for _ in range(4):  # (samples 2 and 4 rescan)
                wait_for(lambda: _ticks(busy) > last, "the busy child's next tick")  # noqa: B023
                cpu.append(by_pid(s.sample(roles))[busy].cpu)
                last = _ticks(busy)
            assert all(c > 0 for c in cpu), cpu
        finally:
            for child in psutil.Process(p.pid).children():
                child.kill()
            p.kill()


def _ticks(pid: int) -> int:
    """User + system CPU ticks of `pid` so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])
