"""The C heap's free pages go back to the kernel once big work has been quiet (heap.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moorage.actors.runtime import heap
from moorage.actors.runtime.heap import HeapTrim
from moorage.actors.runtime.loop import Loop
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ENTRY = "moorage.actors.watcher.actor:WatcherActor"
MB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.skipif(not heap.CAN_TRIM, reason="not glibc: no malloc_trim")
def test_a_trim_gives_back_the_free_pages_below_a_live_allocation():
    # In a process of its own: 40 MB of 4 KB blocks (malloc's, not pymalloc's) freed under
    # one still held above them, which keeps free() itself from shrinking the heap.
    script = textwrap.dedent("""
        from moorage.actors.runtime.heap import release_free_heap, resident_bytes
        blocks = [bytes(4000) + i.to_bytes(4, "little") for i in range(10_000)]
        pin = bytes(4000) + b"pin!"
        del blocks
        before = resident_bytes()
        assert release_free_heap()
        print(before - resident_bytes())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30, check=True)
    assert int(out.stdout) > 20 * MB


def test_a_trim_waits_for_the_big_work_to_be_quiet_and_runs_once_for_a_burst():
    clock = FakeClock()
    loop = Loop(clock)
    try:
        h = HeapTrim(loop.call_later, clock, threshold=MB, quiet_s=1.0)
        h.note(MB // 2)  # below the threshold: nothing to do
        assert not h.armed
        clock.now += 5
        loop.run_once(0)
        assert h.trims == 0
        # a burst: big work noted every 0.5 s for 3 s; the trim comes 1 s after the last
        for _ in range(6):
            h.note(MB)
            assert h.armed
            clock.now += 0.5
            loop.run_once(0)
            assert h.trims == 0
        clock.now += 0.49  # 0.99 s after the last note
        loop.run_once(0)
        assert h.trims == 0
        clock.now += 0.02
        loop.run_once(0)
        assert h.trims == (1 if heap.CAN_TRIM else 0)
        assert not h.armed and h.noted == 0
        clock.now += 60
        loop.run_once(0)
        assert h.trims == (1 if heap.CAN_TRIM else 0)  # nothing noted since
    finally:
        loop.close()


@pytest.mark.skipif(not heap.CAN_TRIM, reason="not glibc: no malloc_trim")
def test_an_actor_trims_after_a_big_reply(spawn_actor, client, tmp_path: Path):
    data = Path(os.path.realpath(tmp_path))
    (data / "big").write_bytes(bytes(range(256)) * (8 * 1024))  # 2 MiB: past the threshold
    spawn_actor(ENTRY, "watcher", roots=[str(data)])
    client.hello("watcher")
    before = client.call("watcher", "sys.info")["heap"]
    got = client.request("watcher", "fs.read", {"path": "big"})
    assert sum(map(len, got.attachments)) == 2 * MB
    info = wait_for(lambda: client.call("watcher", "sys.info")["heap"]["trims"] > before["trims"]
                    and client.call("watcher", "sys.info")["heap"], "a trim after the reply")
    assert info["released_bytes"] >= 0 and info["last_trim_ms"] >= 0 and info["noted_bytes"] == 0
