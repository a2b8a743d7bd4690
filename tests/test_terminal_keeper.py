"""The pty keeper alone, driven over its socket as the terminal actor drives it: real PTYs,
real shells, offsets, the window, acks, a new connection getting everything again."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import textwrap

import psutil
import pytest

from moorage.actors.runtime import trust
from moorage.actors.terminal.keeper.spawn import SpawnError, get_winsize, spawn_on_pty
from moorage.actors.terminal.link import LINK_TOKEN_NAME, encode
from moorage.actors.terminal.ring import RING_CORE
from tests.conftest import assert_all_gone, descendants, open_files, wait_pid_exit
from tests.terminal_support import RawLink
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

SH = "/bin/sh"
HELLO = {"t": "hello", "tok": trust.token(LINK_TOKEN_NAME)}  # as a process of the tree
ENV = {"PATH": os.defpath, "TERM": "dumb", "PS1": "$ "}


@pytest.fixture
def keeper(spawn_actor, runtime_dir):
    def start(**config):
        spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper", **config)
        return runtime_dir / "ptykeeper.sock"

    return start


@pytest.fixture
def links():
    opened: list[RawLink] = []
    yield opened
    for link in opened:
        link.close()


@pytest.fixture
def connect(links):
    def connect(client, path) -> RawLink:
        client.call("ptykeeper", "sys.ping")  # bound: the socket exists once it answers
        link = RawLink(path)
        links.append(link)
        link.send(HELLO)
        assert link.recv()["t"] == "welcome"
        return link

    return connect


def create(link: RawLink, sid: str, r: int = 1, **kw) -> dict:
    msg = {"t": "create", "r": r, "s": sid, "path": SH, "argv": ["sh"], "env": ENV,
           "cwd": "/", "cols": 80, "rows": 24, "meta": {"n": sid}} | kw
    link.send(msg)
    return link.wait(lambda m: m.get("r") == r)


def test_spawned_shell_has_the_pty_as_controlling_terminal_and_its_own_session(tmp_path):
    sp = spawn_on_pty(SH, ["sh", "-c", "ps -o sid=,pgid=,tty= -p $$; pwd"], ENV, str(tmp_path),
                      100, 30)
    try:
        assert get_winsize(sp.master) == (100, 30)
        out = b""
        while select.select([sp.master], [], [], 10)[0]:
            try:
                out += os.read(sp.master, 4096)
            except OSError:  # EIO: the shell side is closed, everything has been read
                break
        sid, pgid, tty = out.split(b"\r\n")[0].split()
        assert int(sid) == sp.pid and int(pgid) == sp.pid
        assert sp.tty.endswith(tty.decode())
        assert out.split(b"\r\n")[1] == str(tmp_path).encode()
    finally:
        os.close(sp.master)
        os.waitpid(sp.pid, 0)


def test_a_missing_program_or_cwd_fails_at_once_with_its_errno(tmp_path):
    with pytest.raises(SpawnError) as e1:
        spawn_on_pty("/no/such/shell", ["x"], ENV, None, 80, 24)
    assert e1.value.errno == 2
    with pytest.raises(SpawnError) as e2:
        spawn_on_pty(SH, ["sh"], ENV, str(tmp_path / "missing"), 80, 24)
    assert e2.value.errno == 2


def test_output_arrives_in_the_shared_ring_in_order_and_exit_after_the_last_byte(
        keeper, client, connect):
    link = connect(client, keeper())
    ok = create(link, "a", argv=["sh", "-c", "seq 1 20000; exit 7"])
    assert ok["t"] == "ok" and ok["pid"] > 0
    seen: dict[str, bytearray] = {}
    ex = link.wait(lambda m: m["t"] == "exit",
                   on_other=lambda m: m["t"] == "out" and link.read_out(m, seen))
    assert ex == {"t": "exit", "s": "a", "code": 7, "signal": None}
    assert bytes(seen["a"]).split(b"\r\n")[:-1] == [str(i).encode() for i in range(1, 20001)]
    # read by the ring filler this process would run too (the compiled one where it was built)
    assert client.call("ptykeeper", "sys.info")["ring_core"] == RING_CORE


def test_a_full_window_stops_reading_until_acked_and_nothing_is_lost(keeper, client, connect):
    link = connect(client, keeper(window_bytes=65536))
    create(link, "w", argv=["sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' y; echo; exit 0"])
    seen: dict[str, bytearray] = {}
    max_unhandled = 0
    pauses = 0

    def take(m):
        nonlocal max_unhandled, pauses
        if m["t"] != "out":
            return
        ring = link.rings["w"]
        max_unhandled = max(max_unhandled, m["end"] - ring.ack_off)
        # handle (ack) only once the keeper says it stopped for a full window
        link.read_out(m, seen, ack=bool(m.get("paused")))
        pauses += bool(m.get("paused"))

    link.wait(lambda m: m["t"] == "exit", on_other=take)
    assert max_unhandled == 65536 and pauses >= 10
    assert seen["w"].count(b"y") == 1_000_000


def test_a_terminal_that_lacks_a_session_s_copies_gets_them_again_on_asking(
        keeper, client, connect):
    """`pass`: the session's master and ring again (they could not be sent or used: out of
    descriptors on either side), then its reply; a session the keeper does not hold is
    refused."""
    link = connect(client, keeper())
    create(link, "c", argv=["sh", "-c", "echo here; exec sleep 60"])
    assert link.recv() == {"t": "fds", "s": "c"}  # (the first copies, after the `ok`)
    link.send({"t": "pass", "r": 2, "s": "c"})
    again = link.wait(lambda m: m["t"] != "out")  # (the shell's output may come first)
    assert again == {"t": "fds", "s": "c"} and link.wait(lambda m: m.get("r") == 2)["t"] == "ok"
    ring = link.rings["c"]  # (mapped from the descriptors that came again)
    wait_for(lambda: b"here" in ring.read(0, ring.write_off), "the shell's output in the ring")
    link.send({"t": "pass", "r": 3, "s": "nope"})
    assert link.wait(lambda m: m.get("r") == 3)["name"] == "session_not_found"


def test_a_terminal_that_stops_reading_costs_the_keeper_one_word_per_session(
        keeper, client, connect):
    """While the terminal reads nothing (its link full of replies it has not read), a shell
    writing a byte at a time costs the keeper one queued word for the session, which goes
    with the end then when the terminal reads again; nothing is lost and the exit still
    comes after the last output. (One `out` a read was queued: 145 MiB for a window filled
    a byte at a time.)"""
    n = 200_000
    link = connect(client, keeper(read_batch_bytes=4096))  # (at least n / 4096 reads)
    create(link, "b", argv=["sh", "-c", f"read go; i=0; while [ $i -lt {n} ]; do printf x; "
                                        f"i=$((i+1)); done; echo; exit 3"])
    for r in range(100, 30_100):  # replies enough to fill the socket, none of them read
        link.send({"t": "resize", "r": r, "s": "b", "cols": 80, "rows": 24})
    link.send({"t": "write", "s": "b", "data": b"go\n"})
    total = len(b"go\r\n") + n + len(b"\r\n")

    def all_read() -> bool:
        (held,) = client.call("ptykeeper", "pty.list")["sessions"]
        return held["read"] == total

    # (its word waits, `outs_deferred` in sys.info, until the exit takes it out first)
    wait_for(all_read, "the shell's output read by the keeper", 120)
    seen: dict[str, bytearray] = {}
    outs = 0

    def other(m: dict) -> None:
        nonlocal outs
        if m["t"] == "out":
            outs += 1
            link.read_out(m, seen)

    ex = link.wait(lambda m: m["t"] == "exit", timeout=60, on_other=other)
    assert ex == {"t": "exit", "s": "b", "code": 3, "signal": None}
    assert bytes(seen["b"]) == b"go\r\n" + b"x" * n + b"\r\n"
    assert outs == 1


def test_a_new_connection_gets_every_session_with_its_master_and_ring(
        keeper, client, connect, links):
    path = keeper()
    link = connect(client, path)
    create(link, "r", argv=["sh", "-c", "echo one; echo two; sleep 30"])
    seen: dict[str, bytearray] = {}
    while b"two" not in seen.get("r", b""):
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen, ack=False)
    link.rings["r"].ack_off = 5  # "one\r\n" handled, the rest not
    link.send({"t": "meta", "s": "r", "meta": {"nonce": "N"}})
    link.close()
    again = RawLink(path)
    links.append(again)
    again.send(HELLO)
    welcome = again.recv()
    assert welcome["t"] == "welcome"
    (entry,) = welcome["sessions"]
    assert entry["s"] == "r" and entry["acked"] == 5 and entry["base"] == 0
    assert entry["meta"] == {"nonce": "N"}
    assert again.recv() == {"t": "fds", "s": "r"}
    ring = again.rings["r"]  # the same memory: everything read so far is there
    assert ring.ack_off == 5 and ring.read(0, ring.write_off) == bytes(seen["r"])
    again.send({"t": "close", "r": 9, "s": "r"})
    assert again.wait(lambda m: m.get("r") == 9)["t"] == "ok"
    assert wait_pid_exit(entry["pid"], 10)


def test_a_new_keeper_adopts_a_session_from_the_terminal_side_and_the_shell_goes_on(
        spawn_actor, client, connect, runtime_dir, links):
    first = spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    path = runtime_dir / "ptykeeper.sock"
    link = connect(client, path)
    ok = create(link, "k", argv=["sh", "-c", "echo a; read x; echo got-$x; exit 3"])
    seen: dict[str, bytearray] = {}
    while b"a\r\n" not in seen.get("k", b""):
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen)
    os.kill(first.pid, signal.SIGKILL)  # we (the terminal side) still hold master and ring
    assert wait_pid_exit(first.pid, 10)
    assert psutil.pid_exists(ok["pid"])  # the shell lives on
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    fresh = connect(client, path)
    fresh.send({"t": "adopt", "r": 1, "s": "k", "pid": ok["pid"], "tty": ok["tty"],
                "cols": 80, "rows": 24, "meta": {"n": "k"}},
               fds=[link.masters["k"], link.rings["k"].fd])
    fresh.rings["k"], fresh.masters["k"] = link.rings.pop("k"), link.masters.pop("k")
    assert fresh.wait(lambda m: m.get("r") == 1)["t"] == "ok"
    assert client.call("ptykeeper", "sys.info")["adopted"] == 1
    fresh.send({"t": "write", "s": "k", "data": b"it\n"})
    fresh.wait(lambda m: m["t"] == "exit",
               on_other=lambda m: m["t"] == "out" and fresh.read_out(m, seen))
    assert seen["k"].endswith(b"got-it\r\n") and seen["k"].count(b"a\r\n") == 1
    assert wait_pid_exit(ok["pid"], 10)


def test_input_resize_and_signals_reach_the_session(keeper, client, connect):
    link = connect(client, keeper())
    ok = create(link, "i", argv=["sh", "-i"])
    seen: dict[str, bytearray] = {}

    def take(m):
        if m["t"] == "out":
            link.read_out(m, seen)

    def output() -> bytes:
        return bytes(seen.get("i", b""))

    link.send({"t": "resize", "r": 2, "s": "i", "cols": 132, "rows": 43})
    assert link.wait(lambda m: m.get("r") == 2, on_other=take)["t"] == "ok"
    # `st''arted`: the echo of the typed line is not the output
    link.send({"t": "write", "s": "i",
               "data": b"stty size; sh -c 'echo st''arted; exec sleep 30'\r"})
    while b"started" not in output():
        take(link.recv())
    assert b"43 132" in output()
    link.send({"t": "signal", "r": 3, "s": "i", "sig": int(signal.SIGINT), "to": "fg"})
    reply = link.wait(lambda m: m.get("r") == 3, on_other=take)
    assert reply["t"] == "ok" and reply["pgid"] != ok["pid"]  # the sleep's group, not sh's
    link.send({"t": "write", "s": "i", "data": b"echo after-$?\r"})
    while b"after-130" not in output():
        take(link.recv())


def test_bad_messages_get_error_replies_and_the_keeper_serves_on(keeper, client, connect):
    link = connect(client, keeper())
    link.send({"t": "nonsense", "r": 1})
    assert link.recv()["name"] == "bad_args"
    link.send({"t": "write", "r": 2, "s": "nope", "data": b"x"})
    assert link.recv()["name"] == "session_not_found"
    err = create(link, "x", r=3, path="/no/such/shell")
    assert err["t"] == "err" and err["name"] == "pty_failed" and err["errno"] == 2
    link.send({"t": "create", "r": 4, "s": "y"})  # missing fields
    assert link.recv()["name"] == "bad_args"
    assert create(link, "z", r=5)["t"] == "ok"
    assert client.call("ptykeeper", "pty.list")["sessions"][0]["s"] == "z"
    # a window the kernel cannot hold is refused before a shell is spawned for it (it went
    # unanswered), and a resize to one is a bad request, not an internal error
    pid = client.call("ptykeeper", "sys.info")["pid"]
    shells = len(psutil.Process(pid).children())
    assert create(link, "w", r=6, cols=70000)["name"] == "bad_args"
    assert len(psutil.Process(pid).children()) == shells
    link.send({"t": "resize", "r": 7, "s": "z", "cols": 80, "rows": 0})
    assert link.wait(lambda m: m.get("r") == 7)["name"] == "bad_args"
    # an adopt whose fields are bad keeps none of the descriptors that came with it
    with open(os.devnull) as a, open(os.devnull) as b:
        held = open_files(pid).count(os.devnull)
        for r, msg in ((8, {"t": "adopt", "r": 8}), (9, {"t": "adopt", "r": 9, "s": "v",
                                                      "pid": 1, "cols": "wide"})):
            link.send(msg, fds=[a.fileno(), b.fileno()])
            assert link.wait(lambda m, r=r: m.get("r") == r)["name"] == "bad_args"
        assert open_files(pid).count(os.devnull) == held
    assert create(link, "z2", r=10)["t"] == "ok"


def test_a_create_refused_after_its_shell_was_spawned_leaves_no_shell_and_creates_go_on(
        keeper, client, connect):
    """A field read after the spawn is bad (`base`): the create is refused, the shell
    spawned for it is killed and reaped (it lingered, its master open, never reaped), and
    the next create is served."""
    link = connect(client, keeper())
    pid = client.call("ptykeeper", "sys.info")["pid"]
    err = create(link, "x", r=1, argv=["sh", "-c", "exec sleep 300"], base="not a number")
    assert err["t"] == "err" and err["name"] == "bad_args", err
    wait_for(lambda: not psutil.Process(pid).children(), "the refused create's shell gone")
    assert create(link, "z", r=2)["t"] == "ok"
    assert [h["s"] for h in client.call("ptykeeper", "pty.list")["sessions"]] == ["z"]


def test_stopping_the_keeper_ends_every_shell_and_its_jobs(
        spawn_actor, runtime_dir, client, connect):
    proc = spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper",
                       "ptykeeper", stop_grace_ms=300)
    link = connect(client, runtime_dir / "ptykeeper.sock")
    script = "trap '' HUP; sleep 60 & echo bg-started; wait"
    pids = [create(link, f"s{i}", r=i, argv=["sh", "-c", script])["pid"] for i in range(3)]
    seen: dict[str, bytearray] = {}
    while not all(b"bg-started" in seen.get(f"s{i}", b"") for i in range(3)):
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen)
    procs = descendants(proc.pid)
    assert len(procs) >= 6  # three shells, three sleeps
    assert {p.pid for p in procs} >= set(pids)
    os.kill(proc.pid, signal.SIGTERM)
    assert wait_pid_exit(proc.pid, 10)
    assert_all_gone(procs, timeout=5)


def test_a_keeper_stopped_within_a_closed_session_s_grace_takes_the_jobs_it_left(
        spawn_actor, runtime_dir, client, connect):
    """A closed session's shell that ended at the hang-up, and a job of it that did not:
    the job is killed when the grace is over, or when the keeper stops before that. (The
    session had left the keeper's lists when its shell was reaped: a stop within the grace
    left the job running, the tree gone.)"""
    proc = spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper",
                       stop_grace_ms=300, close_grace_ms=120_000)
    link = connect(client, runtime_dir / "ptykeeper.sock")
    script = "nohup sleep 301 >/dev/null 2>&1 & echo bg-started; exec sleep 300"
    shell = create(link, "g", argv=["sh", "-c", script])["pid"]
    seen: dict[str, bytearray] = {}
    while b"bg-started" not in seen.get("g", b""):
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen)
    def the_job() -> psutil.Process | None:
        for p in descendants(proc.pid):
            with contextlib.suppress(psutil.Error):
                if p.cmdline() == ["sleep", "301"]:
                    return p
        return None

    job = wait_for(the_job, "the job started")
    link.send({"t": "close", "r": 2, "s": "g"})
    assert link.wait(lambda m: m.get("r") == 2)["t"] == "ok"
    assert wait_pid_exit(shell, 10)  # (the hang-up ended the shell: reaped by the keeper)
    wait_for(lambda: shell not in {p.pid for p in psutil.Process(proc.pid).children()},
             "the shell reaped")
    assert job.is_running()  # it ignores SIGHUP: the grace's end would take it
    os.kill(proc.pid, signal.SIGTERM)
    assert wait_pid_exit(proc.pid, 10)
    assert_all_gone([job], timeout=5)


def test_a_stranger_on_the_keeper_socket_is_refused_and_the_live_link_keeps_working(
        keeper, client, connect, links):
    path = keeper()
    link = connect(client, path)
    assert create(link, "s1")["t"] == "ok"
    # a process outside the tree: its own key, so no valid token, whatever it sends
    stranger = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import socket, struct, msgpack
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect({str(path)!r})
            body = msgpack.packb({{"t": "hello", "tok": "0" * 32}})
            s.sendall(struct.pack(">I", len(body)) + body)
            print(s.recv(1) == b"")  # closed by the keeper, nothing sent back
            """)], capture_output=True, text=True, timeout=30)
    assert stranger.stdout.strip() == "True", stranger.stderr
    # a tree process that says nothing is dropped after its grace, too
    silent = RawLink(path)
    links.append(silent)
    link.send({"t": "write", "r": 2, "s": "s1", "data": b"echo still-here\n"})
    seen: dict[str, bytearray] = {}
    while b"still-here\r\n" not in seen.get("s1", b""):  # echo, then output: it still serves
        m = link.recv()
        if m["t"] == "out":
            link.read_out(m, seen)
    info = wait_for(lambda: (i := client.call("ptykeeper", "sys.info"))["strangers_refused"] >= 2
                    and i, "the silent connection refused")
    assert info["connected"] and info["peer_pid"] == os.getpid()


def test_a_session_s_clean_up_kills_its_own_members_and_never_session_0_1_or_ours():
    """kill_session takes every process of a shell's session (one in a session of its own
    here, and its child), and refuses the kernel's session 0, init's 1 and the caller's own:
    a record without its shell's pid must not turn into them. A session whose leader was
    reaped and whose pid now runs another process is not touched."""
    from moorage.actors.terminal.keeper.ptys import kill_session

    for sid in (0, 1, os.getsid(0)):
        assert kill_session(sid) == 0
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"],
                              start_new_session=True)
    try:
        sid = leader.pid
        members = wait_for(lambda: len(m := [p for p in psutil.process_iter()
                                             if _sid(p.pid) == sid]) >= 3 and m,
                           "the leader and its two sleeps")
        assert kill_session(sid, leader_reaped=True) == 0  # its pid runs: not ours to judge
        assert kill_session(sid) == len(members)
        assert all(wait_pid_exit(p.pid, 10) for p in members)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)  # (the sleeps too, should the test fail)
        leader.wait()


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _outq(sock: socket.socket) -> int:
    """What we sent that the peer has not read yet (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def test_descriptors_passed_before_a_valid_hello_are_never_held(
        keeper, client, connect, tmp_path):
    """A process of our uid that has not said a valid hello yet may pass descriptors; the
    kernel closes them as the keeper reads (it holds none until the hello), so waiting out
    its grace cannot fill the keeper's table."""
    path = keeper()
    link = connect(client, path)
    pid = client.call("ptykeeper", "sys.info")["pid"]
    marker = tmp_path / "passed"
    marker.write_bytes(b"")
    fd = os.open(marker, os.O_RDONLY)
    candidate = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        candidate.connect(str(path))
        candidate.sendall(struct.pack(">I", 1000))  # a frame begun, never finished
        for _ in range(8):
            candidate.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        array.array("i", [fd] * 16))])
        wait_for(lambda: _outq(candidate) == 0, "the keeper's read of everything sent")
        assert str(marker) not in open_files(pid)
        assert create(link, "s1")["t"] == "ok"  # the live link serves meanwhile
    finally:
        candidate.close()
        os.close(fd)


def test_creates_queued_when_their_terminal_is_replaced_start_no_shell(
        keeper, client, connect, links):
    """Creates wait for their turn (one a turn here); those still waiting when a new
    terminal actor takes the link over are dropped: no shell nobody asked for, and no reply
    with the old link's request numbers on the new one."""
    path = keeper(create_per_turn=1)
    old = connect(client, path)
    pid = client.call("ptykeeper", "sys.info")["pid"]
    n = 60
    # Stopped, the keeper finds both at once when it goes on: the creates, and the new
    # terminal's connection with its hello (it replaces the link a turn or two later).
    os.kill(pid, signal.SIGSTOP)
    try:
        old.sock.sendall(b"".join(encode({
            "t": "create", "r": i, "s": f"q{i}", "path": "/bin/sleep",
            "argv": ["sleep", "300"], "env": ENV, "cwd": "/", "cols": 80, "rows": 24,
            "meta": {}}) for i in range(1, n + 1)))
        new = RawLink(path)  # (a Unix connect completes in the listener's queue)
        links.append(new)
        new.send(HELLO)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert new.recv()["t"] == "welcome"
    answered = set()
    with contextlib.suppress(AssertionError):  # (read until the keeper closes it)
        while True:
            m = old.recv(timeout=10)
            if m["t"] == "ok" and "pid" in m:
                answered.add(m["s"])
    wait_for(lambda: client.call("ptykeeper", "sys.info")["creates_queued"] == 0,
             "the queue of creates gone through")
    new.send({"t": "close", "r": 10_000, "s": "none"})
    first = new.wait(lambda m: m["t"] in ("ok", "err"))
    assert first["r"] == 10_000, f"a reply to the old link's request on the new one: {first}"
    held = {h["s"] for h in client.call("ptykeeper", "pty.list")["sessions"]}
    assert held == answered
    assert len(held) < n
