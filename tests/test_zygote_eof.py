"""A zygote whose supervisor dies leaves the children to follow the supervisor themselves.

The kernel closes a dying supervisor's files (the zygote reads EOF) before it signals the
supervisor's children and the zygote, so a zygote that killed its children at that EOF would
often take a pty keeper before the keeper's orphan hooks killed its sessions' jobs (a job
that ignores SIGHUP then outlives the tree). Here a real zygote reads that EOF from a
supervisor that lives on: a child it killed would be dead when the zygote has gone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.conftest import ROOT, pid_running, wait_pid_exit

pytestmark = pytest.mark.timeout(60)

# A supervisor's part, no more: fork a zygote, have it start one actor, then close the
# zygote's socket (what the kernel does first when a supervisor dies) and live on until told.
SUPERVISOR = textwrap.dedent("""
    import json, select, sys
    from moorage.supervisor import launch  # noqa: F401 (fills the zygote's launchers)
    from moorage.supervisor.zygote import start_zygote

    zygote = start_zygote(["tests.fakes"], owner="eof")
    zygote.spawn("a", "actor", {"entry": "tests.fakes:FakeActor", "name": "a",
                                "runtime_dir": sys.argv[1], "config": {}})
    child = ready = None
    while ready is None:
        select.select([zygote.sock], [], [])
        for ev in zygote.read_events():
            if ev.get("ev") == "spawned":
                child = ev["pid"]
            elif ev.get("ev") == "ready":
                ready = ev["pid"]
            elif ev.get("ev") == "spawn_failed":
                raise SystemExit(f"spawn failed: {ev}")
    assert ready == child
    print(json.dumps({"zygote": zygote.pid, "child": child}), flush=True)
    zygote.sock.close()
    sys.stdin.readline()
""")


def test_a_zygote_at_its_supervisors_eof_kills_no_child_and_the_child_follows_the_supervisor(
        tmp_path):
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           cwd=ROOT)
    child = None
    try:
        line = sup.stdout.readline()
        assert line, f"the supervisor ended first: {sup.wait()}"
        pids = json.loads(line)
        child = pids["child"]
        assert wait_pid_exit(pids["zygote"], 10), "the zygote outlived its socket's EOF"
        assert pid_running(child), "the zygote killed its child at EOF"
        assert psutil.Process(child).ppid() == sup.pid  # adopted: the supervisor reaps it
        sup.stdin.close()  # the supervisor exits: the child follows it out
        assert sup.wait(10) == 0
        assert wait_pid_exit(child, 10), "the child outlived its supervisor"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        if child is not None and pid_running(child):
            psutil.Process(child).kill()
        sup.stdout.close()
