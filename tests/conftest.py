"""Fixtures that start real actors and real trees, and always take them down again.

Nothing here waits on a sleep: a test waits for a reply, a supervisor event (by seq), or a
process's exit (its pidfd). Every process a test starts is killed at teardown, even when the
test failed, and the teardown checks that none is left.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.actors.runtime import trust
from moorage.actors.runtime.loop import Loop
from moorage.actors.runtime.process import run_actor
from moorage.actors.watcher.mounts import fs_type
from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.commands import all_children_running
from moorage.supervisor.cli.common import tree_pid
from perf._tree import compile_package

ROOT = Path(__file__).resolve().parent.parent

# Every process a test starts sees the same environment: the tests' fake actors importable
# from PYTHONPATH (a tree never imports from its working directory, and runs them only with
# --allow-external-actors), and no user configuration or state of the developer's:
# $XDG_CONFIG_HOME and $XDG_STATE_HOME are the session's own, empty at the start.
SESSION_HOME = Path(tempfile.mkdtemp(prefix="mt-home-", dir="/tmp"))
# (at exit, not at pytest_unconfigure: a run that stops at a usage error never configures)
atexit.register(shutil.rmtree, SESSION_HOME, ignore_errors=True)
# Only `tests` on that path (not the checkout, whose egg-info would pass for an install).
(SESSION_HOME / "path").mkdir()
(SESSION_HOME / "path" / "tests").symlink_to(ROOT / "tests")
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(SESSION_HOME / "path"),
     *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
os.environ["XDG_CONFIG_HOME"] = str(SESSION_HOME / "config")
os.environ["XDG_STATE_HOME"] = str(SESSION_HOME / "state")
for _var in ("MOORAGE_CONFIG", "MOORAGE_STATE_DIR", "MOORAGE_RUNTIME_DIR"):
    os.environ.pop(_var, None)
# Every interpreter a test starts (a `moorage up`, a CLI call, a replacement zygote) imports
# the package compiled, as an install has it: where bytecode is not written
# (PYTHONDONTWRITEBYTECODE), each would compile every module again at each start. Written
# once, by the process that starts the xdist workers (or runs the tests itself).
if "PYTEST_XDIST_WORKER" not in os.environ:
    compile_package()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` (addopts): half as many workers again as there are cores. A tree's test
    spends a third of its time waiting (a shell's prompt, a restart, a timeout that is the
    point), so workers only as many as the cores left the machine a third idle."""
    if config.option.numprocesses != "auto":
        return None
    cores = len(os.sched_getaffinity(0))
    return cores + cores // 2


# --- every reply the tests see, held against protocol/schema/ops.json -------------------------
# The Python client of this process and of every process the tests start (the CLI, a tree's
# supervisors) checks each reply against its op's declaration (protocol/schema/live.py) and
# appends what breaks it to one file; a test during which a line was added fails. A caller may
# name its own log (to keep it), and the set of ops seen ($MOORAGE_SCHEMA_SEEN).
SCHEMA_LOG = Path(os.environ.get("MOORAGE_SCHEMA_LOG") or SESSION_HOME / "schema-violations")
os.environ["MOORAGE_SCHEMA_CHECK"] = str(ROOT / "protocol" / "schema" / "ops.json")
os.environ["MOORAGE_SCHEMA_LOG"] = str(SCHEMA_LOG)


@pytest.fixture(autouse=True)
def replies_follow_their_declarations() -> Iterator[None]:
    start = SCHEMA_LOG.stat().st_size if SCHEMA_LOG.exists() else 0
    yield
    if not SCHEMA_LOG.exists():
        return
    with open(SCHEMA_LOG, "rb") as f:
        f.seek(start)
        added = f.read().decode(errors="replace").splitlines()
    if added:
        pytest.fail("replies that break their op's declaration (protocol/schema/ops.json):\n"
                    + "\n".join(added[:20]), pytrace=False)


@pytest.fixture(autouse=True)
def terminal_outputs_closed() -> Iterator[None]:
    yield
    support = sys.modules.get("tests.terminal_support")
    if support is not None:
        support.close_left_open()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A directory for a watcher to watch, by its real path (events name real paths)."""
    d = tmp_path / "data"
    d.mkdir()
    return Path(os.path.realpath(d))


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    # Short paths: a Unix socket path must fit in 107 bytes.
    d = Path(tempfile.mkdtemp(prefix="mt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


SHM = Path("/dev/shm")


@pytest.fixture
def tmpfs_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on the machine's tmpfs, for a test that makes tens of thousands of
    files to watch or walk (each cost 60-180 µs of the kernel's on this kind of VM's ext4, 15
    on tmpfs, where inotify works the same); tmp_path where there is no writable tmpfs."""
    if not (SHM.is_dir() and os.access(SHM, os.W_OK)
            and fs_type(SHM.stat().st_dev) == "tmpfs"):
        yield Path(os.path.realpath(tmp_path))
        return
    d = Path(tempfile.mkdtemp(prefix="moorage-test-", dir=SHM))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def wait_pid_exit(pid: int, timeout: float) -> bool:
    """Block until `pid` exits (its pidfd turns readable), or `timeout` passes."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def end_built_tree(proc: subprocess.Popen, pids: dict[str, int]) -> None:
    """Let a process tree a test built go (its builder's stdin closed: each process exits on
    its EOF), killing any that outlives 10 s; then reap the builder."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    for pid in pids.values():
        if not wait_pid_exit(pid, 10):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def running(p: psutil.Process) -> bool:
    """Still running: a zombie has exited (only its entry waits for its parent's wait(),
    which an init that reaps late, as some containers' do, may leave for a while)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def open_files(pid: int) -> list[str]:
    """What process `pid`'s descriptors are open on (/proc/<pid>/fd's links; one closed
    while they are read is left out)."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            continue
    return out


def pid_running(pid: int) -> bool:
    try:
        return running(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        psutil.wait_procs(alive, timeout=0.1)  # (returns as soon as they are gone)
        alive = [p for p in alive if running(p)]
    for p in alive:
        p.kill()
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


def printed_by(script: str) -> str:
    """What `script` prints, run by a fresh interpreter in the project root (its imports its
    own, none of this process's), which must exit 0."""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def kill_instance(runtime_dir: Path) -> None:
    """Whatever holds the instance in `runtime_dir` (a tree's root) is killed with its
    descendants, and they are checked gone."""
    pid = tree_pid(runtime_dir)
    if pid is None or pid <= 0:
        return
    try:
        procs = [psutil.Process(pid), *descendants(pid)]
    except psutil.NoSuchProcess:
        return
    os.kill(pid, signal.SIGKILL)
    assert_all_gone(procs)


# --- a single actor in a forked process ----------------------------------------------------


class ActorProcess:
    def __init__(self, runtime_dir: Path, entry: str, name: str, config: dict) -> None:
        self.runtime_dir = runtime_dir
        self.name = name
        # The key is this process's, drawn at import, before any fork: actors forked from
        # here share it as a tree's processes do (an actor that imported it first itself
        # would draw its own, and the keeper would refuse the terminal's link).
        trust.key()
        ctx = multiprocessing.get_context("fork")
        self.proc = ctx.Process(target=run_actor, args=(entry, name, runtime_dir, config),
                                daemon=True)
        self.proc.start()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)


@pytest.fixture
def spawn_actor(runtime_dir: Path) -> Iterator[Callable[..., ActorProcess]]:
    started: list[ActorProcess] = []

    def spawn(
        entry: str = "tests.fakes:FakeActor", name: str = "fake", **config: Any
    ) -> ActorProcess:
        config.setdefault("push_metrics", False)
        a = ActorProcess(runtime_dir, entry, name, config)
        started.append(a)
        return a

    yield spawn
    for a in started:
        a.stop()


@pytest.fixture
def loop() -> Iterator[Loop]:
    """A loop the test turns itself (tests.waiting.turn_until)."""
    lp = Loop()
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture
def client(runtime_dir: Path) -> Iterator[Client]:
    c = Client(runtime_dir, timeout=10.0)
    yield c
    c.close()


# --- a whole tree, started by the CLI ----------------------------------------------------------


# What starts `moorage up` with SIGINT and SIGHUP at their defaults whatever ran the tests:
# pytest-xdist's workers ignore both, and `nohup` SIGHUP, and a root keeps a stop signal it
# started with ignored (as `nohup moorage up` asks): a test that stops a tree by one of them
# starts it through this.
WITH_STOP_SIGNALS = [sys.executable, "-c",
                     "import os, signal, sys\n"
                     "for s in (signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)\n"
                     "os.execv(sys.argv[1], sys.argv[1:])"]


class Tree:
    """`moorage up` in a subprocess on a test config, with a client and the event stream."""

    def __init__(self, runtime_dir: Path, config: str) -> None:
        self.runtime_dir = runtime_dir
        self.config_path = runtime_dir / "moorage.toml"
        self.config_path.write_text(config)
        self.out = runtime_dir / "up.out"
        self.proc: subprocess.Popen | None = None
        self.client = Client(runtime_dir, timeout=10.0)
        self.events: Any = None
        self.seen_pids: set[int] = set()
        self.launcher: list[str] = []  # what runs `moorage up` (e.g. ip netns exec NS)

    def start(self, wait: bool = True, stderr: int = subprocess.STDOUT,
              env: dict[str, str] | None = None) -> Tree:
        """`moorage up` on this tree's config (in `env`, else this process's environment);
        its stdout (the ready line, and then what the tree writes on stderr unless `stderr`
        is given) into `self.out`."""
        with open(self.out, "wb") as f:
            self.proc = subprocess.Popen(
                [*self.launcher, sys.executable, "-m", "moorage.supervisor.cli",
                 "--instance-dir", str(self.runtime_dir),
                 "up", "--config", str(self.config_path), "--allow-external-actors",
                 # a test run killed before its teardown leaves no tree behind for long
                 "--parent", str(os.getpid())],
                stdout=f, stderr=stderr, stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                start_new_session=True)
        # from_seq=1: every retained event, whenever we happen to connect (no slow joiner).
        self.events = self.client.subscribe("supervisor", ["sup.event"], from_seq=1)
        if wait:
            self.wait_all_running()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def state_dir(self) -> Path:
        """Where this tree's logs and SLO record are (its runtime dir holds sockets only)."""
        return endpoints.state_dir(self.runtime_dir)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def call(self, actor: str, op: str, args: Any = None, **kw: Any) -> Any:
        return self.client.call(actor, op, args, **kw)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`moorage --instance-dir <this tree's dir> ARGS...`, as a user runs it."""
        return subprocess.run(
            [sys.executable, "-m", "moorage.supervisor.cli",
             "--instance-dir", str(self.runtime_dir), *args],
            capture_output=True, text=True, cwd=ROOT, timeout=60)

    def status(self) -> dict:
        tree = self.call("supervisor", "sup.status")
        self._note_pids(tree)
        return tree

    def _note_pids(self, tree: dict) -> None:
        for ch in tree.get("children", []):
            if ch["pid"]:
                self.seen_pids.add(ch["pid"])
            if "tree" in ch:
                self._note_pids(ch["tree"])

    def child(self, cid: str) -> dict:
        def find(tree: dict) -> dict | None:
            for ch in tree.get("children", []):
                if ch["id"] == cid:
                    return ch
                if "tree" in ch:
                    got = find(ch["tree"])
                    if got:
                        return got
            return None

        found = find(self.status())
        assert found is not None, f"no child {cid}"
        return found

    def wait_all_running(self, timeout: float = 20) -> dict:
        """Until every child reports running: re-checked on each supervisor event."""
        end = time.monotonic() + timeout
        while True:
            try:
                tree = self.status()
            except MoorageError as exc:
                assert self.proc is None or self.proc.poll() is None, (
                    f"moorage up exited ({self.proc.returncode}):\n{self.output()}")
                raise exc
            if all_children_running(tree):
                return tree
            left = end - time.monotonic()
            assert left > 0, f"tree not all running: {tree}\n{self.output()}"
            self.events.next(timeout=min(left, 1.0))

    def wait_event(self, pred: Callable[[dict], bool], timeout: float = 20) -> dict:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            assert left > 0, f"no matching event within {timeout}s\n{self.output()}"
            ev = self.events.next(timeout=left)
            if isinstance(ev, StreamMessage) and pred(ev.body):
                return ev.body

    def stop(self) -> None:
        if self.proc is None:
            # Started some other way (`up --detach`), or not at all: whatever holds this
            # instance's lock goes now.
            self.client.close()
            kill_instance(self.runtime_dir)
            return
        tree_procs: list[psutil.Process] = []
        if self.proc.poll() is None:
            tree_procs = [psutil.Process(self.pid), *descendants(self.pid)]
            with Client(self.runtime_dir, timeout=5.0) as c:
                try:
                    c.call("supervisor", "sup.stop")
                except MoorageError:
                    pass  # not answering: the SIGKILL below takes it down
            if not wait_pid_exit(self.pid, 20):
                os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.events is not None:
            self.events.close()
        self.client.close()
        extra = []
        for pid in self.seen_pids:
            try:
                extra.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        assert_all_gone(tree_procs + extra)


@pytest.fixture
def make_tree(runtime_dir: Path) -> Iterator[Callable[[str], Tree]]:
    trees: list[Tree] = []

    def make(config: str) -> Tree:
        t = Tree(runtime_dir, config)
        trees.append(t)
        return t

    yield make
    for t in trees:
        t.stop()


def module_tree(config: str, prefix: str = "mt-") -> Iterator[Tree]:
    """A started tree of `config` for a whole module's tests (a fixture of scope "module"
    yields from it), in a runtime dir of its own under /tmp (a socket path must fit in 107
    bytes), stopped and removed after, whatever the tests did."""
    rdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    t = Tree(rdir, config)
    try:
        t.start()
        yield t
    finally:
        t.stop()
        shutil.rmtree(rdir, ignore_errors=True)
