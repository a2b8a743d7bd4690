"""A zygote whose supervisor dies leaves the children to follow the supervisor themselves.

The kernel closes a dying supervisor's files (the zygote reads EOF) before it signals the
supervisor's children and the zygote, so a zygote that killed its children at that EOF would
often take a pty keeper before the keeper's orphan hooks killed its sessions' jobs (a job
that ignores SIGHUP then outlives the tree). Here a real zygote reads that EOF from a
supervisor that lives on: a child it killed would be dead when the zygote has gone.

A supervisor's clean stop ("exit", then its end closed) that finds the zygote's events unread
gives the zygote ECONNRESET before the "exit" queued behind it: the zygote reads on, and ends
as "exit" says (its children with it), not as at EOF."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, pid_running, wait_pid_exit

pytestmark = pytest.mark.timeout(60)

# A supervisor's part, no more: fork a zygote and have it start one actor.
START = textwrap.dedent("""
    import json, os, select, signal, sys
    import msgpack
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
""")
# ... then close the zygote's socket (what the kernel does first when a supervisor dies) and
# live on until told.
SUPERVISOR = START + textwrap.dedent("""
    print(json.dumps({"zygote": zygote.pid, "child": child}), flush=True)
    zygote.sock.close()
    sys.stdin.readline()
""")
# ... then stop as ZygoteHandle.close does ("exit", then our end closed), with an event of the
# zygote's unread (a spawn_failed), the zygote stopped meanwhile so that it cannot take the
# "exit" before our end is closed; say how the zygote ended and whether its child is gone.
CLOSE_UNREAD = START + textwrap.dedent("""
    child_fd = os.pidfd_open(child)
    zygote.spawn("b", "no-such-kind", {})
    select.select([zygote.sock], [], [])  # its spawn_failed, left unread
    os.kill(zygote.pid, signal.SIGSTOP)
    os.waitid(os.P_PID, zygote.pid, os.WSTOPPED)
    zygote.sock.send(msgpack.packb({"cmd": "exit"}))
    zygote.sock.close()
    os.kill(zygote.pid, signal.SIGCONT)
    _, status = os.waitpid(zygote.pid, 0)
    print(json.dumps({"child": child, "zygote_code": os.waitstatus_to_exitcode(status),
                      "child_ended": bool(select.select([child_fd], [], [], 0)[0])}),
          flush=True)
    sys.stdin.readline()
""")


@contextlib.contextmanager
def scripted_supervisor(script: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, dict]]:
    """A supervisor running `script` in a process of its own, and what it printed first (the
    pids); it, and the child it names, end with the test however the test ends."""
    sup = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out: dict = {}
    try:
        line = sup.stdout.readline()
        assert line, f"the supervisor ended first: {sup.wait()}"
        out = json.loads(line)
        yield sup, out
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        child = out.get("child")
        if child is not None and pid_running(child):
            psutil.Process(child).kill()
        sup.stdout.close()


def test_a_zygote_at_its_supervisors_eof_kills_no_child_and_the_child_follows_the_supervisor(
        tmp_path):
    with scripted_supervisor(SUPERVISOR, tmp_path) as (sup, pids):
        child = pids["child"]
        assert wait_pid_exit(pids["zygote"], 10), "the zygote outlived its socket's EOF"
        assert pid_running(child), "the zygote killed its child at EOF"
        assert psutil.Process(child).ppid() == sup.pid  # adopted: the supervisor reaps it
        sup.stdin.close()  # the supervisor exits: the child follows it out
        assert sup.wait(10) == 0
        assert wait_pid_exit(child, 10), "the child outlived its supervisor"


def test_a_zygote_reset_by_its_supervisors_clean_stop_reads_the_exit_and_takes_its_children(
        tmp_path):
    with scripted_supervisor(CLOSE_UNREAD, tmp_path) as (sup, out):
        assert out["zygote_code"] == 0
        assert out["child_ended"], "the zygote ended at the reset without reading its exit"
        sup.stdin.close()
        assert sup.wait(10) == 0
