"""Accepting when the process has no descriptor left: the waiting connection is closed (its
peer sees the end), not left in the queue to wake the loop for ever; accepting goes on once
descriptors are free again. A real process at its real RLIMIT_NOFILE, real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

N = 5

CHILD = textwrap.dedent("""
    import os, resource, select, socket, sys
    from moorage.actors.runtime.acceptor import Acceptor
    from moorage.actors.runtime.loop import Loop

    path, n = sys.argv[1], int(sys.argv[2])
    loop = Loop()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.setblocking(False)
    taken = []
    acceptor = Acceptor(loop, listener, taken.append, "test")
    acceptor.start()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    filler = []
    while True:  # every free slot below the limit taken: the next accept is EMFILE
        try:
            filler.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    print("full", flush=True)
    sys.stdin.readline()  # (the parent has connected its clients)
    turns = 0
    while acceptor.shed < n and turns < 1000:
        loop.run_once(100)
        turns += 1
    readable = select.select([listener], [], [], 0)[0]
    print("shed", acceptor.shed, "taken", len(taken), "pending", bool(readable), flush=True)
    for fd in filler:
        os.close(fd)
    print("free", flush=True)
    sys.stdin.readline()
    while not taken and turns < 2000:
        loop.run_once(100)
        turns += 1
    taken[0].sendall(b"served")
    print("taken", len(taken), flush=True)
""")


def test_a_connection_that_finds_no_descriptor_is_closed_and_accepting_goes_on(tmp_path):
    path = str(tmp_path / "l.sock")
    child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(N)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert child.stdout.readline().strip() == "full"
        for _ in range(N):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(20)
            c.connect(path)  # (into the backlog: the kernel completes a Unix connect)
            clients.append(c)
        child.stdin.write("go\n")
        child.stdin.flush()
        for c in clients:
            assert c.recv(1) == b"", "a waiting connection was not closed"
        assert child.stdout.readline().split() == [
            "shed", str(N), "taken", "0", "pending", "False"]
        assert child.stdout.readline().strip() == "free"
        late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        late.settimeout(20)
        clients.append(late)
        late.connect(path)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert late.recv(6) == b"served"
        assert child.stdout.readline().strip() == "taken 1"
        assert child.wait(20) == 0
    finally:
        for c in clients:
            c.close()
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()
