"""perf/_sched.py reads what the kernel says each thread of a process ran, waited and was
preempted, on real threads of this process (no figure is judged: only that what a thread did
is what the snapshot shows, grouped and divided as the perf rows use it)."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import zmq

from perf import _sched


def burn(seconds: float, tids: list[int]) -> None:
    tids.append(threading.get_native_id())
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_thread_that_ran_shows_its_cpu_and_the_rest_is_grouped_per_call() -> None:
    me = os.getpid()
    tids: list[int] = []
    before = _sched.snapshot([me])
    assert before[me].kind == "main"
    # A thread born after the first snapshot and alive at the second: it counts from zero.
    alive = threading.Event()
    done = threading.Event()

    def burn_then_wait() -> None:
        burn(0.03, tids)
        alive.set()
        done.wait()

    second = threading.Thread(target=burn_then_wait)
    second.start()
    alive.wait()
    try:
        after = _sched.snapshot([me])
    finally:
        done.set()
        second.join()
    t = after[tids[0]]
    assert t.kind == "other" and t.tid != t.pid == me
    assert t.cpu_ns >= 25_000_000  # ran at least (nearly) the 30 ms it burned
    assert t.wait_ns >= 0 and t.preempted >= 0 and t.slept >= 0
    # (the suite's process may hold other threads of its own: only these two are compared)
    ours = {me, t.tid}
    shares = _sched.per_call({k: v for k, v in before.items() if k in ours},
                             {k: v for k, v in after.items() if k in ours}, 10, {me: "me"})
    assert set(shares) == {"me main", "me other"}
    # a thread born in between counts from zero: its whole CPU, over 10 calls
    assert shares["me other"].cpu_us == t.cpu_ns / 10 / 1000
    assert shares["me main"].cpu_us == (after[me].cpu_ns - before[me].cpu_ns) / 10 / 1000


def test_zeromq_io_threads_are_told_apart_and_a_gone_process_is_skipped() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind("inproc://perf-sched")
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        snap = _sched.snapshot([os.getpid(), gone.pid])
    finally:
        sock.close(0)
        ctx.term()
    assert {t.kind for t in snap.values()} >= {"main", "zmq-io"}
    assert all(t.pid == os.getpid() for t in snap.values())
