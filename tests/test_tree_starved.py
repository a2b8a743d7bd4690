"""An actor whose loop waits for a CPU is not taken for hung: a machine saturated by the
user's own work (forty shells each running a build loop) left the terminal actor runnable
and unscheduled for seconds, and its supervisor SIGKILLed it as hung, taking every
session's work in flight with it. The supervisor reads the child's run delay
(/proc/<pid>/schedstat) on a tick without a beat; a loop that had a CPU and did not turn is
still hung."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3, idle_interval_ms = 100 }
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
"""

# A real-time busy loop pinned to one CPU for `seconds`: everything of normal priority on
# that CPU waits (but for the kernel's real-time throttling: 50 ms a second by default).
HOG = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
print("hogging", flush=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def test_an_actor_starved_of_the_cpu_is_not_taken_for_hung(make_tree):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the test pins a real-time hog to one and needs another")
    cpu = max(os.sched_getaffinity(0))
    tree = make_tree(TREE).start()
    pid = tree.child("alpha")["pid"]
    os.sched_setaffinity(pid, {cpu})  # (its main thread: the loop)
    with subprocess.Popen([sys.executable, "-c", HOG, str(cpu), "2.0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as hog:
        assert hog.stdout is not None
        if hog.stdout.readline().strip() != "hogging":
            hog.wait(10)
            pytest.skip(f"no real-time scheduling here: {hog.stderr.read().strip()[-200:]}")
        assert hog.wait(30) == 0
    assert tree.child("alpha")["pid"] == pid, tree.output()[-3000:]
    assert tree.call("alpha", "sys.ping")
