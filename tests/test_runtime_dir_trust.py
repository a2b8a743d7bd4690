"""Which runtime dir a client trusts. The folder it finds an instance in (and moorage's own
folder above it, `$XDG_RUNTIME_DIR/moorage` or `/tmp/moorage-<uid>`) must be a directory of
this user's, not a symbolic link, that no group or other can write; its `lock` a regular file
of this user's. Otherwise another local user who made the folder first (the default place
without XDG_RUNTIME_DIR is in /tmp) would be sent every call, `term.write`'s data too, and a
FIFO named `lock` would hang every command, `down` included. Each command is refused with
exit 2, naming the path, its owner and its mode, before it connects anywhere; the Python
client raises `forbidden`."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import locate
from moorage.protocol.errors import MoorageError
from tests.conftest import ROOT, kill_instance

NOBODY = 65534
AS_MODULE = [sys.executable, "-m", "moorage.supervisor.cli"]
as_root = pytest.mark.skipif(os.geteuid() != 0,
                             reason="a folder of another uid's is made by root (os.chown)")

# What a client would send: a status, the data of a terminal session, a stop.
COMMANDS = (["status"],
            ["call", "terminal", "term.write", '{"session": "s1", "data": "hunter2\\n"}'],
            ["down"])

FAKE = """
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""


def cli(*args: str, env: dict[str, str] | None = None,
        budget: str | None = "2") -> subprocess.CompletedProcess:
    """A moorage command, by default with a 2 s budget of its own (a tree that does not
    answer ends it with exit 1), run with a subprocess timeout far past that: a command that
    hangs fails the test (and is killed) instead of holding it."""
    return subprocess.run([*AS_MODULE, *args, *(["--timeout", budget] if budget else [])],
                          capture_output=True, text=True, cwd=ROOT, timeout=30 if budget else 90,
                          stdin=subprocess.DEVNULL, env=env)


def refused(out: subprocess.CompletedProcess, *said: str) -> None:
    """Exit 2 and one line, `forbidden`, naming each of `said`; no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "forbidden" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    for s in said:
        assert s in out.stderr, (s, out.stderr)


def refused_by_client(make: Callable[[], object]) -> MoorageError:
    """The MoorageError a client's construction raised (one that was made is closed, and
    the test fails)."""
    try:
        made = make()
    except MoorageError as exc:
        return exc
    close = getattr(made, "close", None)
    if close is not None:
        close()
    pytest.fail(f"{made!r} was made")


class Squat:
    """A folder made to pass for a running tree's, as another local user would make it: its
    `lock` held (flock) with no pid in it (a tree still starting: no `down` signals anyone),
    a `tree.json` naming its sockets, and plain Unix listeners at `supervisor.rpc` and
    `terminal.rpc`. A client's connection waits in a listener's backlog, where
    `connections()` counts it, whether or not the client is still there."""

    def __init__(self, rdir: Path) -> None:
        self.rdir = rdir
        self.listeners: list[socket.socket] = []
        self.lock_fd: int | None = None

    def make(self, mode: int, owner: int | None) -> None:
        rdir = self.rdir
        rdir.mkdir(mode=0o700)
        names = ("supervisor", "terminal")
        for name in names:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listeners.append(s)
            s.bind(endpoints.ipc_path(endpoints.rpc(rdir, name)))
            s.listen(16)
            s.setblocking(False)
        (rdir / endpoints.CONNECTION_FILE).write_text(json.dumps({
            "moorage": "ready", "pid": os.getpid(), "instance": rdir.name,
            "runtime_dir": str(rdir),
            "endpoints": {n: {"rpc": endpoints.rpc(rdir, n), "pub": endpoints.pub(rdir, n)}
                          for n in names}}))
        self.lock_fd = os.open(rdir / endpoints.LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                               0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        if owner is not None:
            for p in (rdir, *rdir.iterdir()):
                os.chown(p, owner, owner)
        os.chmod(rdir, mode)

    def connections(self) -> int:
        n = 0
        for s in self.listeners:
            while True:
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
        return n

    def close(self) -> None:
        for s in self.listeners:
            s.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


@pytest.fixture
def squat() -> Iterator[Callable[..., Squat]]:
    made: list[Squat] = []

    def make(rdir: Path, mode: int = 0o755, owner: int | None = None) -> Squat:
        s = Squat(rdir)
        made.append(s)  # (closed even when it is only half made)
        s.make(mode, owner)
        return s

    yield make
    for s in made:
        s.close()


def no_command_connects(s: Squat, *said: str, env: dict[str, str] | None = None,
                        where: list[str] | None = None) -> None:
    """Every command of COMMANDS refused (exit 2, naming `said`) without a connection to the
    squatter's sockets, and its folder left as it was (`down` removed nothing)."""
    before = sorted(p.name for p in s.rdir.iterdir())
    for args in COMMANDS:
        out = cli(*(where or ["--instance-dir", str(s.rdir)]), *args, env=env)
        refused(out, *said)
    assert s.connections() == 0
    assert sorted(p.name for p in s.rdir.iterdir()) == before


# --- a folder of another user's ---------------------------------------------------------


@as_root
def test_a_runtime_dir_of_another_users_is_refused_before_anything_is_sent(
        runtime_dir, squat):
    s = squat(runtime_dir / "sq", owner=NOBODY)
    no_command_connects(s, str(s.rdir), "uid 65534", "0755")
    # the Python client: given the folder, its connection file, or the folder by name
    for make in (lambda: Client(runtime_dir=s.rdir),
                 lambda: Client.from_connection_file(s.rdir / endpoints.CONNECTION_FILE),
                 lambda: locate(env={"MOORAGE_RUNTIME_DIR": str(s.rdir)})):
        err = refused_by_client(make)
        assert err.name == "forbidden" and str(s.rdir) in str(err) and "65534" in str(err)
    assert s.connections() == 0


@as_root
def test_moorages_own_folder_above_of_another_users_is_refused(runtime_dir, squat,
                                                                monkeypatch):
    """`$XDG_RUNTIME_DIR/moorage` (or `/tmp/moorage-<uid>`) made by someone else: they can
    rename the instance's folder away and put one of theirs in its place."""
    xdg = runtime_dir / "xdg"
    xdg.mkdir(mode=0o700)
    ours = xdg / "moorage"
    ours.mkdir(mode=0o700)
    s = squat(ours / "sq", mode=0o700)
    os.chown(ours, NOBODY, NOBODY)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    no_command_connects(s, str(ours), "uid 65534", env=env, where=["--instance", "sq"])
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    err = refused_by_client(lambda: Client(instance="sq"))
    assert err.name == "forbidden" and str(ours) in str(err)
    assert s.connections() == 0


# --- a folder others can write, or a link ------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o1777])
def test_a_runtime_dir_group_or_others_can_write_is_refused(runtime_dir, squat, mode):
    s = squat(runtime_dir / "open", mode=mode)
    no_command_connects(s, str(s.rdir), f"{mode:04o}", "group or others")
    err = refused_by_client(lambda: Client(runtime_dir=s.rdir))
    assert err.name == "forbidden"


def test_a_runtime_dir_that_is_a_symbolic_link_is_refused(runtime_dir, squat):
    s = squat(runtime_dir / "real", mode=0o700)
    link = runtime_dir / "link"
    link.symlink_to(s.rdir)
    for args in COMMANDS:
        refused(cli("--instance-dir", str(link), *args), str(link), "symbolic link")
    assert s.connections() == 0
    err = refused_by_client(lambda: Client(runtime_dir=link))
    assert err.name == "forbidden" and "symbolic link" in str(err)
    # the folder itself is this user's: found by its own path, it is trusted
    assert Client.from_connection_file(s.rdir / endpoints.CONNECTION_FILE).close() is None


def test_up_refuses_an_instance_dir_that_is_a_symbolic_link(runtime_dir, tmp_path):
    """What every client refuses, `up` does not start in: a tree no command could reach."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = runtime_dir / "uplink"
    link.symlink_to(real)
    out = cli("--instance-dir", str(link), "up", budget=None)
    line = json.loads(out.stdout.splitlines()[0])
    # (as for a dir another user owns: start_failed, exit 1)
    assert out.returncode == 1 and line["moorage"] == "failed", (out.returncode, out.stdout)
    assert "symbolic link" in line["error"]["message"], line
    assert not (real / endpoints.LOCK_FILE).exists() and list(real.iterdir()) == []


# --- a forged lock ----------------------------------------------------------------------


def test_a_fifo_named_lock_ends_every_command_at_once_with_exit_2(runtime_dir):
    """(A blocking open of a FIFO waits for a writer that never comes: every command, `down`
    too, hung for good.)"""
    rdir = runtime_dir / "fifo"
    rdir.mkdir(mode=0o700)
    lock = rdir / endpoints.LOCK_FILE
    os.mkfifo(lock, 0o600)
    for args in COMMANDS:
        refused(cli("--instance-dir", str(rdir), *args), str(lock), "FIFO")
    assert stat.S_ISFIFO(os.lstat(lock).st_mode)  # (`down` removed nothing)
    # the Python client finding it by name, in a process of its own (the old open hung)
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys\n"
         "from moorage.protocol.client.connection import locate\n"
         "from moorage.protocol.errors import MoorageError\n"
         "try:\n"
         "    locate(env={'MOORAGE_RUNTIME_DIR': sys.argv[1]})\n"
         "except MoorageError as exc:\n"
         "    print(exc.name)\n", str(rdir)],
        capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.stdout.strip() == "forbidden", (out.stdout, out.stderr)


def test_a_lock_that_is_a_symbolic_link_is_refused(runtime_dir, squat):
    s = squat(runtime_dir / "ln", mode=0o700)
    lock = s.rdir / endpoints.LOCK_FILE
    held = s.rdir / "held"
    lock.rename(held)  # (still flocked: the tree looks alive through the link)
    lock.symlink_to(held)
    for args in COMMANDS:
        refused(cli("--instance-dir", str(s.rdir), *args), str(lock), "symbolic link")
    assert s.connections() == 0


@as_root
def test_a_lock_of_another_users_is_refused(runtime_dir, squat):
    s = squat(runtime_dir / "other", mode=0o700)
    lock = s.rdir / endpoints.LOCK_FILE
    os.chown(lock, NOBODY, NOBODY)
    for args in COMMANDS:
        refused(cli("--instance-dir", str(s.rdir), *args), str(lock), "uid 65534")
    assert s.connections() == 0
    err = refused_by_client(lambda: locate(env={"MOORAGE_RUNTIME_DIR": str(s.rdir)}))
    assert err.name == "forbidden" and str(lock) in str(err)


# --- what works today keeps working --------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_tree_in_the_users_xdg_runtime_dir_is_found_by_name(runtime_dir, monkeypatch):
    """The folders `moorage up` makes ($XDG_RUNTIME_DIR/moorage/NAME, 0700, the user's) pass
    the check: status, a client by name, and down."""
    xdg = runtime_dir / "xdg"
    xdg.mkdir(mode=0o700)
    cfg = runtime_dir / "fake.toml"
    cfg.write_text(FAKE)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(xdg)}
    rdir = xdg / "moorage" / "ok"
    try:
        out = subprocess.run([*AS_MODULE, "--instance", "ok", "up", "--detach", "--config",
                              str(cfg), "--allow-external-actors"], capture_output=True,
                             text=True, cwd=ROOT, timeout=90, env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["runtime_dir"] == str(rdir)
        out = cli("--instance", "ok", "status", env=env, budget=None)
        assert out.returncode == 0, out.stderr
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        with Client(instance="ok", timeout=30) as c:
            assert c.call("a", "sys.ping") is not None
        out = cli("--instance", "ok", "down", env=env, budget=None)
        assert out.returncode == 0 and "moorage tree stopped" in out.stdout, out.stderr
    finally:
        subprocess.run([*AS_MODULE, "--instance", "ok", "down"], capture_output=True,
                       cwd=ROOT, timeout=60, env=env)
        kill_instance(rdir)
