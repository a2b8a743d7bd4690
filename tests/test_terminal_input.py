"""A session's scrollback ring, and command input written by the terminal actor itself through
the PTY master the keeper passes it (only while the keeper holds none of that session's input,
and never beyond the keeper's life or the session's)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from moorage.actors.terminal.scrollback import Ring
from moorage.protocol.client import Client
from tests.conftest import open_files
from tests.terminal_support import env_for, make_home


def test_the_ring_keeps_exactly_the_last_cap_bytes_by_absolute_offset() -> None:
    rnd = random.Random(7)
    for cap in (1, 5, 64, 1000):
        for _ in range(50):
            base = rnd.randrange(100)
            ring, whole = Ring(cap, base), bytearray()
            for _ in range(80):
                if rnd.random() < 0.1:
                    keep = rnd.randrange(cap + 1)
                    dropped = ring.trim(keep)
                    assert ring.end - ring.base == min(keep, ring.end - ring.base + dropped)
                else:
                    n = rnd.choice([0, 1, 3, cap // 2, cap, 2 * cap + 1, rnd.randrange(cap + 5)])
                    chunk = rnd.randbytes(n)
                    whole += chunk
                    ring.append(chunk)
                assert ring.end == base + len(whole)
                assert ring.end - ring.base <= cap
                assert ring.get(ring.base, ring.end) == bytes(whole[ring.base - base:])
                lo = rnd.randrange(ring.base - 3, ring.end + 4)
                hi = rnd.randrange(lo, ring.end + 6)
                first, last = max(lo, ring.base), min(hi, ring.end)
                want = bytes(whole[first - base:last - base]) if last > first else b""
                assert ring.get(lo, hi) == want


def test_a_full_ring_keeps_cap_bytes_whatever_the_chunks() -> None:
    ring = Ring(1000)
    ring.append(b"a" * 5000)
    assert (ring.base, ring.end) == (4000, 5000)
    for i in range(3000):
        ring.append(b"%d" % (i % 10))
    assert ring.end - ring.base == 1000 and len(ring._buf) == 1000  # no growth past cap
    assert ring.trim(100) == 900 and ring.get(0, ring.end) == ring.get(ring.end - 100, ring.end)


def ptmx_fds(pid: int) -> int:
    """How many PTY masters process `pid` holds open."""
    return sum(path in ("/dev/ptmx", "/dev/pts/ptmx") for path in open_files(pid))


@pytest.fixture
def actors(spawn_actor, runtime_dir: Path) -> None:
    spawn_actor("moorage.actors.parser.actor:ParserActor", "parser")
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    # parsed in-process: the configuration where command lines take the direct way
    spawn_actor("moorage.actors.terminal.actor:TerminalActor",
                "terminal", shells=["bash"], parse="local")


def test_the_terminal_holds_each_live_sessions_pty_master_and_drops_it_on_close(
        actors: None, client: Client, tmp_path: Path) -> None:
    home = make_home(tmp_path)
    tpid = client.call("terminal", "sys.info", timeout=30)["pid"]
    held = ptmx_fds(tpid)
    sids = [client.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                        timeout=30)["session"] for _ in range(2)]
    # the master came right behind the keeper's answer to `create`, before the first prompt
    assert ptmx_fds(tpid) == held + 2
    for i, sid in enumerate(sids):
        r = client.call("terminal", "term.exec", {"session": sid, "command": f"echo in-{i}"},
                        timeout=30)
        assert (r["exit_code"], r["output"]) == (0, f"in-{i}")
    # typed input goes through the keeper, counted: what it says is still queued there is 0
    client.call("terminal", "term.write", {"session": sids[0], "data": "true\r"}, timeout=30)
    (entry,) = [e for e in client.call("ptykeeper", "pty.list")["sessions"]
                if e["s"] == sids[0]]
    assert entry["pending"] == 0
    client.call("terminal", "term.close", {"session": sids[0]}, timeout=30)
    assert ptmx_fds(tpid) == held + 1  # closed before the keeper hangs the PTY up
    r = client.call("terminal", "term.exec", {"session": sids[1], "command": "echo still"},
                    timeout=30)
    assert r["output"] == "still"
