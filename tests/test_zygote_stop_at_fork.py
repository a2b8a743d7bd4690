"""A child's stop sent while its zygote is still forking it is acted on, not discarded.

The supervisor may stop a child as soon as the zygote's "spawned" gives it the pid, and the
child leaves its zygote's SIG_IGN only once told that the supervisor knows it: a SIGTERM in
between was discarded, the child served on, and the stop of its tree waited out the whole
grace before a SIGKILL (a nested supervisor restarting when `down` came held the tree 5 s,
its supervisor 20). Here a real zygote is held in that very moment: its socket to us full, it
blocks sending the "spawned" of the child it has just forked, which waits to be told."""

from __future__ import annotations

import platform
import textwrap

import pytest

from tests.test_zygote_eof import scripted_supervisor

pytestmark = pytest.mark.timeout(60)

# What the kernel says a process waits in (/proc/<pid>/syscall's first field): the zygote's
# wait for a request, and a send blocked on a full socket.
SYSCALLS = {"x86_64": (("232", "281"), ("44", "46")),
            "aarch64": (("22",), ("206", "211"))}[platform.machine()]

SCRIPT = textwrap.dedent("""
    import fcntl, json, os, select, signal, struct, sys, termios
    from moorage.supervisor import launch  # noqa: F401 (fills the zygote's launchers)
    from moorage.supervisor.zygote import start_zygote

    IDLE, SEND = %r
    zygote = start_zygote(["tests.fakes"], owner="fork")
    sock = zygote.sock

    def state() -> str:
        with open(f"/proc/{zygote.pid}/syscall") as f:
            nr = f.read().split()[0]
        return "idle" if nr in IDLE else "blocked" if nr in SEND else "busy"

    def unread_by_it() -> int:
        return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\\0" * 4))[0]

    def settled() -> str:
        # It has read all we sent, and waits for more or is blocked sending.
        while unread_by_it() or (s := state()) == "busy":
            select.select([], [], [], 0.001)
        return s

    def filler() -> str:
        assert zygote.spawn("filler", "no-such-kind", {}) is None
        return settled()

    def children() -> set[int]:
        with open(f"/proc/{zygote.pid}/task/{zygote.pid}/children") as f:
            return {int(p) for p in f.read().split()}

    # Requests it cannot serve, each answered by a spawn_failed we leave unread, until one's
    # answer blocks: `full` answers fill our end.
    settled()
    sent = 1
    while filler() != "blocked":
        sent += 1
    full = sent - 1
    # Read until it has sent that one and waits for requests again...
    read = 0
    while True:
        sock.recv(1 << 16)
        read += 1
        if settled() == "idle":
            break
    # ... then fill our end up to one answer short, the child's "spawned" that answer.
    for _ in range(full - (sent - read)):
        assert filler() == "idle"
    zygote.spawn("victim", "actor", {"entry": "tests.fakes:FakeActor", "name": "victim",
                                     "runtime_dir": sys.argv[1], "config": {}})
    held = settled() == "blocked" and len(children()) == 1
    victim = children().pop() if held else None
    if held:
        os.kill(victim, signal.SIGTERM)
    end = None
    while held and end is None:
        select.select([sock], [], [])
        for ev in zygote.read_events():
            if ev.get("pid") == victim and ev.get("ev") in ("ready", "exited"):
                end = ev
    print(json.dumps({"held": held, "child": victim, "end": end}), flush=True)
    sys.stdin.readline()
    zygote.close()
""") % (SYSCALLS,)


def test_a_sigterm_sent_while_the_zygote_forks_the_child_ends_the_child(tmp_path):
    with scripted_supervisor(SCRIPT, tmp_path) as (sup, out):
        assert out["held"], "the zygote was not held sending the child's spawned"
        end = out["end"]
        assert end["ev"] == "exited", f"the child served on after its SIGTERM: {end}"
        assert end["signal"] == 15, end
        sup.stdin.close()
        assert sup.wait(10) == 0
