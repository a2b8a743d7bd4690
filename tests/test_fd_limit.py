"""The terminal side at the open-file limit, under real limits (RLIMIT_NOFILE lowered on the
running keeper with prlimit(2), as `prlimit --pid` does): a limit hit is answered
`resource_exhausted` with its errno, never `bad_args`; creates stop short of the limit with
nothing half made; and a restart of the terminal actor keeps every shell even when the keeper
has no descriptor to spare; sessions a new terminal actor cannot take at a limit of its own
are kept, not lost, and taken once it can."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import Iterator

import psutil
import pytest

from moorage.actors.runtime import trust
from moorage.actors.terminal.actor import TerminalActor
from moorage.actors.terminal.keeper.fdroom import MIN_RESERVE
from moorage.actors.terminal.keeper.ptys import process_start
from moorage.actors.terminal.keeper.spawn import spawn_on_pty
from moorage.actors.terminal.link import LINK_TOKEN_NAME
from moorage.actors.terminal.ring import SessionRing
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import wait_pid_exit
from tests.terminal_support import RawLink, env_for, make_home, terminal_tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

ENV = {"PATH": os.defpath, "TERM": "dumb", "PS1": "$ "}


def open_fds(pid: int) -> set[int]:
    return {int(n) for n in os.listdir(f"/proc/{pid}/fd")}


def limit_leaving(pid: int, free: int) -> int:
    """The soft limit under which process `pid` can open `free` more descriptors (the limit
    bounds their numbers: a descriptor numbered above it, as the runtime keeps one, takes
    none of its room)."""
    taken = open_fds(pid)
    n = left = 0
    while left < free:
        left += n not in taken
        n += 1
    return n


def free_below(pid: int, limit: int) -> int:
    return limit - sum(1 for fd in open_fds(pid) if fd < limit)


@contextlib.contextmanager
def nofile(pid: int, soft: int) -> Iterator[None]:
    """Process `pid`'s soft RLIMIT_NOFILE at `soft` (its hard one kept), and back after."""
    old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_NOFILE, old)


def vm_size(pid: int | str = "self") -> int:
    """The process's address space, in bytes (what RLIMIT_AS bounds)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


class TightTerminal(TerminalActor):
    """The terminal actor with `room_bytes` of address space more than it has once it has
    made its keeper link (config): a session's ring (3 MiB mapped) does not fit, as after
    the copies of a keeper's sessions came to a process at its limit, until the test
    raises the limit again."""

    def on_start(self) -> None:
        super().on_start()
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + int(self.config["room_bytes"]),
                                                hard))


def test_an_adopt_the_keeper_has_no_descriptor_for_is_resource_exhausted_with_its_errno(
        spawn_actor, runtime_dir, client):
    """A session handed to the keeper (`adopt`) while its table is full but for the two
    descriptors that come with it: mapping the ring needs one more (EMFILE), which is a
    limit, not a bad message: `resource_exhausted` with the errno (was `bad_args`). The
    same adopt, once there is room, is taken: the session was not refused for good."""
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    keeper = client.call("ptykeeper", "sys.info")["pid"]
    sp = spawn_on_pty("/bin/sh", ["sh", "-c", "exec sleep 120"], ENV, "/", 80, 24)
    ring = SessionRing.create(1 << 16, 1 << 14, "fd-limit-test")
    link = RawLink(runtime_dir / "ptykeeper.sock")
    try:
        link.send({"t": "hello", "tok": trust.token(LINK_TOKEN_NAME)})
        assert link.recv()["t"] == "welcome"
        adopt = {"t": "adopt", "s": "a", "pid": sp.pid, "started": process_start(sp.pid),
                 "tty": sp.tty, "cols": 80, "rows": 24, "meta": {}}
        with nofile(keeper, limit_leaving(keeper, 2)):  # the two that come, not one more
            link.send({**adopt, "r": 1}, fds=[sp.master, ring.fd])
            err = link.wait(lambda m: m.get("r") == 1)
        assert err["t"] == "err" and err["name"] == "resource_exhausted", err
        assert err["errno"] == errno.EMFILE
        assert client.call("ptykeeper", "pty.list")["sessions"] == []
        link.send({**adopt, "r": 2}, fds=[sp.master, ring.fd])
        assert link.wait(lambda m: m.get("r") == 2)["t"] == "ok"
        (held,) = client.call("ptykeeper", "pty.list")["sessions"]
        assert held["s"] == "a" and held["pid"] == sp.pid
    finally:
        link.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(sp.pid, signal.SIGKILL)
        os.waitpid(sp.pid, 0)
        os.close(sp.master)
        ring.close()


def test_creates_stop_short_of_the_keeper_s_limit_with_nothing_half_made(make_tree, tmp_path):
    """A tree whose keeper may open 100 descriptors more than it holds: `term.create`
    answers `resource_exhausted` while the keeper still has its reserve free (it answered
    `pty_failed` at the limit itself, or ok with the session half made), and nothing is
    left of the refused create: no shell, no session listed."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    env = env_for(make_home(tmp_path))
    keeper = c.call("ptykeeper", "sys.info")["pid"]
    made: dict[str, int] = {}
    with nofile(keeper, limit_leaving(keeper, MIN_RESERVE + 36)):
        refused = None
        for _ in range(40):
            try:
                s = c.call("terminal", "term.create", {"shell": "bash", "env": env},
                           timeout=30)
            except MoorageError as exc:
                refused = exc
                break
            made[s["session"]] = s["pid"]
        assert refused is not None and refused.error.name == "resource_exhausted", refused
        assert refused.error.detail["reserve"] == MIN_RESERVE, refused
        assert 3 <= len(made) <= 12, made  # (3 descriptors a session, 36 for them)
        limit = resource.prlimit(keeper, resource.RLIMIT_NOFILE)[0]
        assert free_below(keeper, limit) >= MIN_RESERVE
        assert sorted(p.pid for p in psutil.Process(keeper).children()) == sorted(
            made.values())
        listed = c.call("terminal", "term.list")["sessions"]
        assert {x["session"]: x["pid"] for x in listed} == made
        assert {h["s"] for h in c.call("ptykeeper", "pty.list")["sessions"]} == set(made)
        # (a new connection to the keeper finds a descriptor: libzmq aborts where it finds
        # none)
        with Client(tree.runtime_dir, timeout=10.0) as other:
            assert other.call("ptykeeper", "sys.ping") is not None


def test_a_terminal_restart_with_the_keeper_at_its_limit_keeps_every_shell(make_tree, tmp_path):
    """The keeper's limit lowered to what it holds and one more (for the new terminal's
    link): the terminal actor is killed, and its successor gets every session from the
    keeper, which has no descriptor to copy them with. Each shell is the same one after
    (they were killed and started anew: the keeper copied each session's descriptors to
    send them, found none, sent nothing, and the successor closed them as lost)."""
    tree = make_tree(terminal_tree()).start()
    c = tree.client
    env = env_for(make_home(tmp_path))
    keeper = c.call("ptykeeper", "sys.info")["pid"]
    made = {}
    for _ in range(4):
        s = c.call("terminal", "term.create", {"shell": "bash", "env": env}, timeout=30)
        made[s["session"]] = s["pid"]
    victim = c.call("terminal", "sys.info")["pid"]
    with nofile(keeper, limit_leaving(keeper, 1)):
        os.kill(victim, signal.SIGKILL)
        assert wait_pid_exit(victim, 10)

        def restored() -> bool:
            info = c.call("terminal", "sys.info", timeout=5)
            if info["pid"] == victim or not info["keeper_connected"]:
                return False
            listed = c.call("terminal", "term.list", timeout=10)["sessions"]
            return sum(x["state"] != "unavailable" for x in listed) >= len(made)

        wait_for(restored, "the new terminal actor with every session", timeout=40)
        listed = c.call("terminal", "term.list")["sessions"]
    assert {x["session"]: x["pid"] for x in listed} == made
    assert all(psutil.pid_exists(pid) for pid in made.values())
    info = c.call("terminal", "sys.info")
    assert info.get("sessions_lost", 0) == 0 and info["sessions_unavailable"] == []
    sid = next(iter(made))
    out = c.call("terminal", "term.exec", {"session": sid, "command": "echo still-$$"},
                 timeout=20)
    assert out["output"].strip() == f"still-{made[sid]}"


def test_sessions_a_new_terminal_cannot_take_at_its_limit_are_kept_and_come_when_they_can(
        spawn_actor, client, tmp_path):
    """A new terminal actor at a limit of its own (address space: it cannot map the
    sessions' rings, ENOMEM): the keeper holds the sessions and sends their fds, and they
    cannot be used here. They are not taken for lost (the terminal used to close them in
    the keeper, ending healthy shells, and start them anew): ops on them answer
    `unavailable` (term.list lists them so), they are asked for again, and once the limit is
    raised they come, the same shells."""
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    first = spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal")
    env = env_for(make_home(tmp_path))
    made = {}
    for _ in range(2):
        s = client.call("terminal", "term.create", {"shell": "bash", "env": env}, timeout=30)
        made[s["session"]] = s["pid"]
    first.stop()
    tight = spawn_actor("tests.test_fd_limit:TightTerminal", "terminal", room_bytes=2 << 20)
    # (the keeper's welcome round is over once term.list answers: it waited for the
    # sessions, asked for them again, and decided)
    listed = client.call("terminal", "term.list", timeout=30)["sessions"]
    assert {x["session"]: (x["pid"], x["state"]) for x in listed} == {
        sid: (pid, "unavailable") for sid, pid in made.items()}
    info = client.call("terminal", "sys.info")
    assert info["sessions_unavailable"] == sorted(made), info
    assert info.get("sessions_lost", 0) == 0
    held = client.call("ptykeeper", "pty.list")["sessions"]
    assert {h["s"]: h["pid"] for h in held} == made
    sid = next(iter(made))
    with pytest.raises(MoorageError) as refused:
        client.call("terminal", "term.exec", {"session": sid, "command": "true"}, timeout=10)
    assert refused.value.error.name == "unavailable"
    # room again: the fds come at the next asking, and the sessions are the same shells
    resource.prlimit(tight.pid, resource.RLIMIT_AS,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    wait_for(lambda: {x["session"]: x["pid"] for x in client.call(
        "terminal", "term.list", timeout=10)["sessions"] if x["state"] != "unavailable"}
        == made, "the sessions restored in the terminal actor", timeout=30)
    assert client.call("terminal", "sys.info")["sessions_unavailable"] == []
    out = client.call("terminal", "term.exec", {"session": sid, "command": "echo still-$$"},
                      timeout=20)
    assert out["output"].strip() == f"still-{made[sid]}"


def test_term_list_shows_a_session_kept_unavailable_with_what_the_keeper_told_of_it(
        spawn_actor, client, tmp_path):
    """A session the keeper holds whose PTY a new terminal actor cannot take (its address
    space) is listed by term.list with `state` `unavailable`, the same shell, tty, size and
    mode as before: it was left out, so a client listing sessions after a reconnect never
    learned of it while ops on its id answered `unavailable`. Nothing of it is claimed to be
    served here (no scrollback, parser, consumers or cwd), and `offset` is how far the keeper
    read its output. Once its PTY comes it is listed as any other session, at its prompt."""
    spawn_actor("moorage.actors.terminal.keeper.actor:PtyKeeper", "ptykeeper")
    first = spawn_actor("moorage.actors.terminal.actor:TerminalActor", "terminal")
    sid = client.call("terminal", "term.create", {
        "shell": "bash", "env": env_for(make_home(tmp_path)), "cols": 101, "rows": 31},
        timeout=30)["session"]
    client.call("terminal", "term.exec", {"session": sid, "command": "echo before"},
                timeout=20)
    (before,) = client.call("terminal", "term.list")["sessions"]
    first.stop()
    tight = spawn_actor("tests.test_fd_limit:TightTerminal", "terminal", room_bytes=2 << 20)
    (kept,) = client.call("terminal", "term.list", timeout=30)["sessions"]
    assert kept["state"] == "unavailable", kept
    same = ("session", "pid", "tty", "shell", "kind", "mode", "cols", "rows", "exited")
    assert {k: kept[k] for k in same} == {k: before[k] for k in same}
    assert (kept["cols"], kept["rows"]) == (101, 31)
    assert kept["offset"] >= before["offset"] and kept["scrollback_from"] == kept["offset"]
    assert kept["parsed"] <= kept["offset"]
    assert (kept["cwd"], kept["parser"], kept["consumers"], kept["busy"]) == (
        None, None, {}, False)
    assert client.call("terminal", "sys.info")["sessions_unavailable"] == [sid]
    with pytest.raises(MoorageError) as refused:  # (what the state it is listed with says)
        client.request("terminal", "term.scrollback", {"session": sid})
    assert refused.value.error.name == "unavailable"
    resource.prlimit(tight.pid, resource.RLIMIT_AS,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def listed_state() -> str:
        (s,) = client.call("terminal", "term.list", timeout=10)["sessions"]
        assert s["pid"] == before["pid"], s
        return str(s["state"])

    wait_for(lambda: listed_state() == "prompt", "the session restored, at its prompt",
             timeout=30)
    (back,) = client.call("terminal", "term.list")["sessions"]
    assert back["offset"] >= kept["offset"] and back["parser"] is not None
    assert client.call("terminal", "sys.info")["sessions_unavailable"] == []
