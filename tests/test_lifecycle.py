"""Life beside an editor, on real trees started as an editor starts them (`moorage up` with
its stdout read for the ready line): the line and the connection file, a failing start's
line, the editor's SIGKILL and an adoption within the grace period with every session and
byte intact, no adoption and nothing left behind, end of file on stdin, a socket path too
long, and a client that finds no tree."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.protocol import curve, endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import adopt
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import tree_pid
from tests.conftest import ROOT, assert_all_gone, descendants, kill_instance, wait_pid_exit
from tests.remote_support import make_keys
from tests.terminal_support import env_for, make_home
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

LINE_WAIT_S = 60

FAKES = """
[lifecycle]
grace_s = {grace}
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "beta"
start = "tests.fakes:FakeActor"
"""


def moorage(rdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(rdir), *args]


def take_down(rdir: Path) -> None:
    """`moorage down` for a tree started detached (no process of the test's holds it); if
    that fails, whatever still holds the instance is killed with its descendants, so a
    test that failed halfway leaves nothing running."""
    subprocess.run(moorage(rdir, "down"), capture_output=True, timeout=60)
    kill_instance(rdir)


class Editor:
    """A stand-in editor process (it does nothing; its death is what matters)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Up:
    """`moorage up ...` in the foreground, stdout a pipe (as an editor reads it)."""

    def __init__(self, rdir: Path, config: str | None, *extra: str,
                 stdin: Any = subprocess.DEVNULL, nofile: tuple[int, int] | None = None) -> None:
        self.rdir = rdir
        args = ["up", "--allow-external-actors", *extra]
        if config is not None:
            path = rdir.parent / f"{rdir.name}.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        self.err = open(rdir.parent / f"{rdir.name}.err", "wb")  # noqa: SIM115
        cmd = moorage(rdir, *args)
        if nofile is not None:  # (prlimit execs the command: the same pid)
            cmd = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                     stderr=self.err, stdin=stdin, cwd=ROOT,
                                     start_new_session=True)
        self.procs: list[psutil.Process] = [psutil.Process(self.proc.pid)]

    def line(self) -> dict[str, Any]:
        """The one line on stdout; stdout must then be at its end."""
        assert self.proc.stdout is not None
        # (a tree that never says its line fails the test here, its processes killed by
        # close(), rather than at the suite's timeout, which leaves them running)
        assert select.select([self.proc.stdout], [], [], LINE_WAIT_S)[0], \
            f"no ready or failed line within {LINE_WAIT_S} s"
        text = self.proc.stdout.readline()
        msg = json.loads(text)
        assert self.proc.stdout.read() == b"", "more than one line on stdout"
        if msg.get("moorage") == "ready":
            self.procs += descendants(self.proc.pid)
        return msg

    def stderr(self) -> str:
        return (self.rdir.parent / f"{self.rdir.name}.err").read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.err.close()
        assert_all_gone(self.procs)


@pytest.fixture
def ups(runtime_dir: Path) -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for u in started:
        u.close()


def up(ups: list[Up], rdir: Path, config: str | None, *extra: str, **kw: Any) -> Up:
    u = Up(rdir, config, *extra, **kw)
    ups.append(u)
    return u


def events_until(c: Client, name: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Supervisor events from the first retained one up to the first `name`."""
    sub = c.subscribe("supervisor", ["sup.event"], from_seq=1)
    seen = []
    end = time.monotonic() + timeout
    try:
        while True:
            left = end - time.monotonic()
            assert left > 0, f"no {name} event; saw {[e.get('event') for e in seen]}"
            ev = sub.next(timeout=left)
            if isinstance(ev, StreamMessage):
                seen.append(ev.body)
                if ev.body.get("event") == name:
                    return seen
    finally:
        sub.close()


def nothing_left(rdir: Path) -> None:
    left = sorted(p.name for p in rdir.iterdir()
                  if p.is_socket() or p.name in (endpoints.LOCK_FILE, endpoints.CONNECTION_FILE))
    assert left == []


# --- the ready line and the connection file ------------------------------------------------


def test_up_says_ready_in_one_json_line_and_the_connection_file_says_the_same(ups, runtime_dir):
    rdir = runtime_dir / "inst"
    u = up(ups, rdir, FAKES.format(grace=60))
    line = u.line()
    assert line["moorage"] == "ready" and line["pid"] == u.proc.pid
    assert line["instance"] == "inst" and line["runtime_dir"] == str(rdir)
    assert line["protocol"] == 1 and line["version"]
    assert line["connection_file"] == str(rdir / "tree.json")
    assert set(line["endpoints"]) == {"supervisor", "alpha", "beta"}
    assert line["endpoints"]["alpha"] == {"rpc": f"ipc://{rdir}/alpha.rpc",
                                          "pub": f"ipc://{rdir}/alpha.pub"}
    path = rdir / "tree.json"
    assert path.stat().st_mode & 0o777 == 0o600
    info = json.loads(path.read_text())
    with Client.from_connection_file(path, timeout=10) as c:
        assert info["epoch"] == c.hello("supervisor")["ep"]
        assert c.call("alpha", "fake.work")["done"] == 1
    assert {k: v for k, v in info.items() if k not in ("epoch", "state_dir")} == line
    status = json.loads(subprocess.run(moorage(rdir, "status", "--json"), capture_output=True,
                                       text=True, cwd=ROOT, timeout=60).stdout)
    assert status["runtime_dir"] == str(rdir)
    assert status["lifecycle"] == {"state": "standalone", "parent": None, "grace_s": 60.0}
    out = subprocess.run(moorage(rdir, "down"), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert wait_pid_exit(u.proc.pid, 20) and u.proc.wait(10) == 0
    nothing_left(rdir)


def test_the_ready_line_goes_to_ready_fd_and_stdout_stays_empty(runtime_dir):
    r, w = os.pipe()
    rdir = runtime_dir / "fd"
    cfg = runtime_dir / "fd.toml"
    cfg.write_text(FAKES.format(grace=60))
    proc = subprocess.Popen(moorage(rdir, "up", "--allow-external-actors", "--config", str(cfg),
                                    "--ready-fd", str(w)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, pass_fds=(w,),
                            cwd=ROOT, start_new_session=True)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            line = json.loads(f.readline())
            assert f.read() == b""
        assert line["moorage"] == "ready" and line["runtime_dir"] == str(rdir)
        subprocess.run(moorage(rdir, "down"), check=True, capture_output=True, timeout=60)
        assert proc.wait(30) == 0
        assert proc.stdout is not None and proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_ready_fd_1_is_stdout_not_stderr(ups, runtime_dir):
    rdir = runtime_dir / "fd1"
    u = up(ups, rdir, FAKES.format(grace=60), "--ready-fd", "1")
    line = u.line()
    assert line["moorage"] == "ready" and line["runtime_dir"] == str(rdir)
    subprocess.run(moorage(rdir, "down"), check=True, capture_output=True, timeout=60)
    assert u.proc.wait(30) == 0
    assert '"moorage":"ready"' not in u.stderr()


def test_a_relative_runtime_dir_is_made_absolute_and_a_relative_xdg_config_home_ignored(
        runtime_dir, tmp_path):
    """The ready line names the runtime dir and the endpoints to processes elsewhere; a
    relative $XDG_CONFIG_HOME would be the workspace's (the XDG spec says to ignore it)."""
    home = tmp_path / "home"
    (home / ".config" / "moorage").mkdir(parents=True)
    (home / ".config" / "moorage" / "moorage.toml").write_text(FAKES.format(grace=60))
    (runtime_dir / "ws" / "moorage").mkdir(parents=True)  # the workspace's: never read
    (runtime_dir / "ws" / "moorage" / "moorage.toml").write_text("[nosuch]\n")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": "ws",
           "MOORAGE_RUNTIME_DIR": "rel"}
    rdir = runtime_dir / "rel"
    proc = subprocess.Popen([sys.executable, "-m", "moorage.supervisor.cli", "up",
                             "--allow-external-actors"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=runtime_dir,
                            env=env, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        text = proc.stdout.readline()
        assert text, proc.stderr.read()
        line = json.loads(text)
        assert line["moorage"] == "ready", line
        assert line["runtime_dir"] == str(rdir) and set(line["endpoints"]) == {
            "supervisor", "alpha", "beta"}
        assert line["endpoints"]["alpha"]["rpc"] == f"ipc://{rdir}/alpha.rpc"
        subprocess.run(moorage(rdir, "down"), check=True, capture_output=True, timeout=60)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


@pytest.mark.parametrize(("config", "key"), [
    ('[actor.resource]\nmemory_budget_mb = "lots"\n', "actor.resource.memory_budget_mb"),
    ("[actor.watcher]\nnosuch = 1\n", "actor.watcher.nosuch"),
    ("[actor.nosuch]\nx = 1\n", "actor.nosuch"),
    ('[[children]]\nid = "a"\nstart = "tests.fakes:FakeActor"\nrestart = "often"\n',
     "supervisor.children[0].restart"),
    ("[supervisor]\nintensity = -1\n", "supervisor.intensity"),
    ('[lifecycle]\ngrace_s = "long"\n', "lifecycle.grace_s"),
    ("[lifecycle]\ngrace_s = nan\n", "lifecycle.grace_s"),
    ("[actor.resource]\ninterval_s = inf\n", "actor.resource.interval_s"),
    ("[supervisor]\nintensity = inf\n", "supervisor.intensity"),
    ("[nosuch]\n", "nosuch"),
    ('[timeouts]\n"fs.read" = 1.5\n', "timeouts.fs.read"),
    ("[actor.watcher]\nwatch = [{ path = 3 }]\n", "actor.watcher.watch[0].path"),
    ("not toml at all [", "bad.toml"),
])
def test_every_config_error_is_exit_2_naming_its_key_before_anything_starts(
        ups, runtime_dir, config, key):
    rdir = runtime_dir / "bad"
    u = up(ups, rdir, config)
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "bad_config"
    assert line["error"]["code"] == 105 and key in line["error"]["message"]
    assert u.proc.wait(30) == 2
    assert key in u.stderr() and "Traceback" not in u.stderr()
    assert tree_pid(rdir) is None


def test_a_start_that_fails_on_a_busy_port_or_systemds_variables_says_failed_on_its_line(
        ups, runtime_dir, tmp_path, monkeypatch):
    server_dir, _, _ = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"tcp://127.0.0.1:{busy.getsockname()[1]}"  # the root's port (actor 0)
        u = up(ups, runtime_dir / "busy", FAKES.format(grace=60), "--listen", listen)
        line = u.line()
        assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed"
        assert "Address already in use" in line["error"]["message"]
        assert u.proc.wait(30) == 1 and "this is a bug" not in u.stderr()
    nothing_left(runtime_dir / "busy")
    monkeypatch.setenv("NOTIFY_SOCKET", "@moorage-test-none")
    monkeypatch.setenv("WATCHDOG_USEC", "10s")
    u = up(ups, runtime_dir / "wd", FAKES.format(grace=60))
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed"
    assert "WATCHDOG_USEC" in line["error"]["message"]
    assert u.proc.wait(30) == 2 and "this is a bug" not in u.stderr()
    assert tree_pid(runtime_dir / "wd") is None


def open_files_limit(pid: int) -> int:
    """The soft limit of open descriptors of `pid`."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_a_tree_started_with_a_low_descriptor_limit_survives_a_leak_of_connections(
        ups, runtime_dir):
    """An editor's soft limit is often 1024 (here 256) and libzmq aborts a process whose
    listener finds no descriptor for a connection: the tree takes the hard limit, so a
    client leaking connections (600, none saying a word) does not end the root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"a hard limit of {hard} descriptors leaves no room above 256 to test")
    limit = 4096
    if soft < 1024:  # (this process holds the 600 connections)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, limit), hard))
    rdir = runtime_dir / "fds"
    u = up(ups, rdir, FAKES.format(grace=60), nofile=(256, limit))
    line = u.line()
    assert line["moorage"] == "ready", line
    assert {open_files_limit(p.pid) for p in u.procs} == {limit}
    leak: list[socket.socket] = []
    try:
        for _ in range(600):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            leak.append(s)
            s.connect(str(rdir / "supervisor.rpc"))
        with Client(rdir, timeout=10.0) as c:
            assert c.call("supervisor", "sys.info")["pid"] == line["pid"]
            assert c.call("alpha", "fake.work")["done"] == 1
    finally:
        for s in leak:
            s.close()
    assert u.proc.poll() is None


def test_a_tree_that_cannot_write_its_connection_file_says_failed_and_stops(ups, runtime_dir):
    """Out of space or descriptors when every child is up: no client could find the tree,
    and the editor waiting for the line is told why (it waited for ever before)."""
    rdir = runtime_dir / "nofile"
    rdir.mkdir(mode=0o700)
    (rdir / f"{endpoints.CONNECTION_FILE}.tmp").mkdir()  # (where the file is written first)
    u = up(ups, rdir, FAKES.format(grace=60))
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed", line
    assert "could not finish its start: could not write" in line["error"]["message"]
    assert u.proc.wait(30) == 1
    nothing_left(rdir)


def test_a_tree_asked_to_stop_before_it_is_ready_says_by_what_on_its_failed_line(
        ups, runtime_dir, tmp_path):
    """An editor that closes while the tree starts: the failed line names the signal, not
    the clean stop's exit code 0 (which read as if nothing had asked for it)."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)  # alpha's start waits for a writer that never comes
    config = ('[supervisor]\nstart_timeout_ms = 60000\n[[children]]\nid = "alpha"\n'
              f'start = "tests.fakes:FakeActor"\nconfig = {{ start_gate = "{gate}" }}\n')
    u = up(ups, runtime_dir / "early", config)
    wait_for(lambda: any(p.cmdline()[:1] == ["moorage[early]: alpha"]
                         for p in descendants(u.proc.pid)), "alpha forked, held at its gate")
    u.procs += descendants(u.proc.pid)
    u.proc.send_signal(signal.SIGTERM)
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed"
    assert "asked to stop (SIGTERM) before it was ready" in line["error"]["message"], line
    assert u.proc.wait(30) == 1
    nothing_left(runtime_dir / "early")


def test_a_tree_that_gives_up_during_start_says_failed_and_exits_3(ups, runtime_dir):
    config = """
[supervisor]
intensity = 1
backoff = { initial_ms = 1, factor = 1.0, max_ms = 1 }
[[children]]
id = "doomed"
start = "tests.fakes:FakeActor"
config = { fail_at_start = true }
"""
    u = up(ups, runtime_dir / "doomed", config)
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed"
    # the child, and what it said failed: the exit code alone says nothing
    assert "gave up" in line["error"]["message"] and "doomed: more than 1 restarts" in \
        line["error"]["message"]
    assert "died during start: RuntimeError: configured to fail at start" in \
        line["error"]["message"], line
    assert u.proc.wait(30) == 3
    nothing_left(runtime_dir / "doomed")


def test_a_child_that_fails_starting_with_an_unprintable_error_is_still_a_failure(
        ups, runtime_dir):
    """Its reason cannot be put in words (its str() raises): it is named by its type, and
    the child's exit is a failure (it was 0, with no reason and no traceback)."""
    config = """
[supervisor]
intensity = 1
backoff = { initial_ms = 1, factor = 1.0, max_ms = 1 }
[[children]]
id = "mute"
start = "tests.fakes:FakeActor"
config = { fail_unprintably = true }
"""
    u = up(ups, runtime_dir / "mute", config)
    message = u.line()["error"]["message"]
    assert "mute: more than 1 restarts" in message, message
    assert "exit code 1 (died during start: Unprintable)" in message, message
    assert u.proc.wait(30) == 3


def test_a_start_that_fails_below_a_nested_supervisor_is_named_on_the_failed_line(
        ups, runtime_dir):
    """The nested supervisor gives up and dies starting: it says why (its child and that
    child's own reason), and the root's line carries the whole chain."""
    config = """
[supervisor]
intensity = 1
backoff = { initial_ms = 1, factor = 1.0, max_ms = 1 }
[[children]]
id = "inner"
type = "supervisor"
intensity = 1
[[children.children]]
id = "doomed"
start = "tests.fakes:FakeActor"
config = { fail_at_start = true }
"""
    u = up(ups, runtime_dir / "nested", config)
    message = u.line()["error"]["message"]
    assert message.startswith("the tree gave up during start: inner: more than 1 restarts")
    assert "died during start: doomed: more than 1 restarts" in message, message
    assert "died during start: RuntimeError: configured to fail at start" in message, message
    assert u.proc.wait(30) == 3
    nothing_left(runtime_dir / "nested")


def test_a_socket_path_over_the_sun_path_limit_is_refused_with_the_path_and_the_limit(
        ups, runtime_dir):
    rdir = runtime_dir / ("x" * 90)
    u = up(ups, rdir, FAKES.format(grace=60))
    line = u.line()
    assert line["moorage"] == "failed" and line["error"]["name"] == "start_failed"
    assert "107-byte limit" in line["error"]["message"] and str(rdir) in line["error"]["message"]
    assert u.proc.wait(30) == 2 and "Traceback" not in u.stderr()
    # --detach neither hangs nor leaves anything: it prints the same failure
    out = subprocess.run(moorage(rdir, "up", "--detach", "--allow-external-actors"),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2, out.stderr
    assert json.loads(out.stdout)["error"]["name"] == "start_failed"
    assert "Traceback" not in out.stderr


def test_up_detach_prints_the_ready_line_and_on_failure_stops_what_it_started(runtime_dir):
    rdir = runtime_dir / "det"
    cfg = runtime_dir / "det.toml"
    cfg.write_text(FAKES.format(grace=60))
    out = subprocess.run(moorage(rdir, "up", "--detach", "--config", str(cfg),
                                 "--allow-external-actors"),
                         capture_output=True, text=True, cwd=ROOT, timeout=90)
    try:
        assert out.returncode == 0, out.stderr
        line = json.loads(out.stdout)
        assert line["moorage"] == "ready" and line["runtime_dir"] == str(rdir)
        root = psutil.Process(line["pid"])
        procs = [root, *root.children(recursive=True)]
    finally:
        take_down(rdir)
    assert_all_gone(procs)
    nothing_left(rdir)
    # a child that fails at start, again and again: the tree gives up, --detach says so
    cfg.write_text(FAKES.format(grace=60).replace(
        'id = "beta"\n', 'id = "beta"\nconfig = { fail_at_start = true }\n'))
    out = subprocess.run(moorage(rdir, "up", "--detach", "--config", str(cfg),
                                 "--allow-external-actors"),
                         capture_output=True, text=True, cwd=ROOT, timeout=90)
    assert out.returncode == 3, out.stderr
    assert json.loads(out.stdout)["error"]["name"] == "start_failed"
    assert tree_pid(rdir) is None
    nothing_left(rdir)


# --- following the editor ----------------------------------------------------------------


def test_editor_sigkill_orphans_the_tree_and_an_adopter_finds_every_session_and_byte(
        ups, runtime_dir, tmp_path):
    # (the grace period: the adoption below comes within milliseconds of the orphaning, and the
    # tree stops this long after the second editor's death)
    grace_s = 4.0
    editor = Editor()
    rdir = runtime_dir / "ed"
    u = up(ups, rdir, f"[lifecycle]\ngrace_s = {grace_s:g}\n", "--parent", str(editor.pid))
    line = u.line()
    home = make_home(tmp_path)
    with Client.from_connection_file(line["connection_file"], timeout=30) as c:
        s = c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)})
        sid = s["session"]
        r = c.call("terminal", "term.exec", {"session": sid, "command": "seq 1 3000"})
        assert r["exit_code"] == 0
        assert c.call("supervisor", "sup.status")["lifecycle"] == {
            "state": "attached", "parent": editor.pid, "grace_s": grace_s}
        editor.kill()
        seen = events_until(c, "orphaned")
        assert seen[-1]["parent"] == editor.pid and seen[-1]["grace_s"] == grace_s
        life = c.call("supervisor", "sup.status")["lifecycle"]
        assert life["state"] == "orphaned" and 0 < life["stops_in_s"] <= grace_s
        # the session keeps running while nobody is there
        c.call("terminal", "term.write", {"session": sid, "data": "echo orphan-''output\r"})

    second = Editor()
    try:
        with Client.from_connection_file(line["connection_file"], timeout=30) as c:
            life = adopt(c, second.pid)["lifecycle"]
            assert life == {"state": "attached", "parent": second.pid, "grace_s": grace_s}
            assert events_until(c, "adopted")[-1]["was"] == "orphaned"
            (found,) = c.call("terminal", "term.list")["sessions"]
            assert found["session"] == sid and found["pid"] == s["pid"]
            got = b""
            offset = 0
            while b"orphan-output\r\n" not in got:
                rep = c.request("terminal", "term.scrollback",
                                {"session": sid, "from_offset": offset})
                chunk = b"".join(rep.attachments)
                assert rep.body["from"] == offset
                got += chunk
                offset = rep.body["to"]
                if not chunk:
                    c.call("terminal", "term.exec", {"session": sid, "command": "true"})
            seq = b"".join(b"%d\r\n" % i for i in range(1, 3001))
            assert got.count(seq) == 1 and got.count(b"orphan-output\r\n") == 1
        # the new parent is followed from now on
        second.kill()
        assert wait_pid_exit(u.proc.pid, 40)
    finally:
        second.kill()


def test_editor_sigkill_and_no_adopter_leaves_nothing_and_a_new_up_works(ups, runtime_dir):
    editor = Editor()
    rdir = runtime_dir / "gone"
    u = up(ups, rdir, FAKES.format(grace=1), "--parent", str(editor.pid))
    u.line()
    procs = list(u.procs)
    editor.kill()
    t0 = time.monotonic()
    assert wait_pid_exit(u.proc.pid, 30)
    assert u.proc.wait(10) == 0
    assert time.monotonic() - t0 >= 1.0  # the grace period was kept
    assert_all_gone(procs)
    nothing_left(rdir)
    log = (endpoints.state_dir(rdir) / "logs" / "supervisor.log").read_text()
    assert "orphan_timeout" in log
    again = up(ups, rdir, FAKES.format(grace=1))
    assert again.line()["moorage"] == "ready"


def test_end_of_file_on_stdin_orphans_the_tree_like_the_editors_death(ups, runtime_dir):
    rdir = runtime_dir / "eof"
    u = up(ups, rdir, FAKES.format(grace=0), "--exit-on-stdin-eof", stdin=subprocess.PIPE)
    u.line()
    procs = list(u.procs)
    assert u.proc.stdin is not None
    u.proc.stdin.write(b"anything the editor says is ignored\n")
    u.proc.stdin.flush()
    with Client(rdir, timeout=10) as c:
        assert c.call("supervisor", "sup.status")["lifecycle"]["state"] == "standalone"
    u.proc.stdin.close()
    assert wait_pid_exit(u.proc.pid, 30) and u.proc.wait(10) == 0
    assert_all_gone(procs)
    nothing_left(rdir)


def test_stdin_watched_for_its_end_is_given_back_blocking_when_the_tree_stops(ups, runtime_dir):
    """The tree reads its stdin non-blocking, a flag of the open file it shares with whoever
    gave it (a terminal's shell reads the same): the flag is put back as it was."""
    r, w = os.pipe()
    try:
        rdir = runtime_dir / "flags"
        u = up(ups, rdir, FAKES.format(grace=0), "--exit-on-stdin-eof", stdin=r)
        u.line()
        procs = list(u.procs)
        assert not os.get_blocking(r)  # (the same open file as the tree's stdin)
        os.close(w)
        w = -1
        assert wait_pid_exit(u.proc.pid, 30) and u.proc.wait(10) == 0
        assert_all_gone(procs)
        assert os.get_blocking(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_end_of_file_on_stdin_orphans_with_no_parent_and_status_says_why(ups, runtime_dir):
    """The --parent still lives: the tree is orphaned by its stdin, not by the parent's
    death, and nothing says that the parent is gone."""
    editor = Editor()
    rdir = runtime_dir / "why"
    u = up(ups, rdir, FAKES.format(grace=60), "--parent", str(editor.pid),
           "--exit-on-stdin-eof", stdin=subprocess.PIPE)
    try:
        u.line()
        assert u.proc.stdin is not None
        u.proc.stdin.close()
        with Client(rdir, timeout=10) as c:
            ev = events_until(c, "orphaned")[-1]
            assert ev["reason"] == "end of file on stdin" and ev["parent"] is None
        out = subprocess.run(moorage(rdir, "status"), capture_output=True, text=True,
                             timeout=60)
        assert "ORPHANED: end of file on stdin" in out.stdout, out.stdout
        assert f"parent {editor.pid}" not in out.stdout
    finally:
        editor.kill()


def test_an_adopted_tree_no_longer_watches_the_first_editors_stdin(ups, runtime_dir):
    """Adopted by a live editor, a tree started with --exit-on-stdin-eof is not orphaned
    when the first editor's pipe closes: only its new parent's death orphans it."""
    first, second = Editor(), Editor()
    rdir = runtime_dir / "ado"
    u = up(ups, rdir, FAKES.format(grace=60), "--parent", str(first.pid),
           "--exit-on-stdin-eof", stdin=subprocess.PIPE)
    try:
        u.line()
        with Client(rdir, timeout=10) as c:
            assert adopt(c, second.pid)["lifecycle"]["parent"] == second.pid
            assert u.proc.stdin is not None
            u.proc.stdin.close()
            # The end of file is there before the first call: its turn of the root's loop
            # has passed by the second's answer at the latest.
            for _ in range(2):
                life = c.call("supervisor", "sup.status")["lifecycle"]
            assert life == {"state": "attached", "parent": second.pid, "grace_s": 60.0}
            second.kill()
            seen = events_until(c, "orphaned")
            assert [e["reason"] for e in seen if e["event"] == "orphaned"] == [
                f"parent {second.pid} exited"]
    finally:
        first.kill()
        second.kill()


def test_moorage_adopt_cancels_the_shutdown_and_only_the_root_can_be_adopted(ups, runtime_dir):
    editor = Editor()
    rdir = runtime_dir / "ad"
    u = up(ups, rdir, FAKES.format(grace=60), "--parent", str(editor.pid))
    u.line()
    editor.kill()
    with Client(rdir, timeout=10) as c:
        events_until(c, "orphaned")
        out = subprocess.run(moorage(rdir, "adopt"), capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "standalone" in out.stdout, out.stderr
        assert c.call("supervisor", "sup.status")["lifecycle"] == {
            "state": "standalone", "parent": None, "grace_s": 60.0}
        with pytest.raises(MoorageError) as e:
            c.call("alpha", "sys.hello", {"adopt": True})
        assert e.value.name == "bad_args"
        with pytest.raises(MoorageError) as e:
            adopt(c, 2**22 + 12345)  # no such process
        assert e.value.name == "bad_args"
    out = subprocess.run(moorage(rdir, "adopt", "--parent", "999999999"), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no such process" in out.stderr


def test_an_adopt_by_a_parent_that_cannot_be_followed_leaves_the_orphaned_tree_as_it_was(
        ups, runtime_dir):
    """A thread's id passes as a live process of the user, but no pidfd can follow it: the
    adopt is refused before anything changes, and the orphaned tree's grace runs on (it
    was called off first, and a tree nobody followed stayed up for good)."""
    editor = Editor()
    rdir = runtime_dir / "adt"
    u = up(ups, rdir, FAKES.format(grace=60), "--parent", str(editor.pid))
    u.line()
    editor.kill()
    parked = threading.Event()
    tids: list[int] = []
    thread = threading.Thread(target=lambda: (tids.append(threading.get_native_id()),
                                              parked.wait()))
    thread.start()
    try:
        with Client(rdir, timeout=10) as c:
            events_until(c, "orphaned")
            wait_for(lambda: tids, "the thread's id")
            with pytest.raises(MoorageError) as e:
                adopt(c, tids[0])
            assert e.value.name == "bad_args", e.value
            life = c.call("supervisor", "sup.status")["lifecycle"]
            assert life["state"] == "orphaned" and 0 < life["stops_in_s"] <= 60, life
    finally:
        parked.set()
        thread.join()


# --- finding no tree -----------------------------------------------------------------------


def test_a_client_of_an_instance_with_no_tree_gets_not_running_at_construction(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(MoorageError) as e:
        Client(instance="nobody")
    assert e.value.name == "not_running" and e.value.code == 115
    assert e.value.error.category == "network" and not e.value.retryable
    # a stale connection file (its lock free) is not a running tree either
    rdir = tmp_path / "moorage" / "stale"
    rdir.mkdir(parents=True)
    (rdir / "tree.json").write_text(json.dumps({"runtime_dir": str(rdir), "endpoints": {}}))
    (rdir / "lock").write_text("12345")
    with pytest.raises(MoorageError) as e:
        Client.from_connection_file(rdir / "tree.json")
    assert e.value.name == "not_running"
    with pytest.raises(MoorageError) as e:
        Client(instance="stale")
    assert e.value.name == "not_running"


def test_process_titles_tell_the_tree_apart(ups, runtime_dir):
    rdir = runtime_dir / "titles"
    u = up(ups, rdir, None)
    u.line()
    titles = set()
    for p in u.procs:
        try:
            titles.add(" ".join(p.cmdline()).strip())
        except psutil.NoSuchProcess:
            pass
    for want in ("supervisor", "zygote supervisor", "terminal", "supervisor terminals",
                 "zygote terminals", "ptykeeper", "metrics", "watcher"):
        assert f"moorage[titles]: {want}" in titles, titles
    subprocess.run(moorage(rdir, "down"), capture_output=True, timeout=60)


# --- a workspace cannot change the tree -----------------------------------------------------

EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from moorage.actors.runtime import Actor


class Evil(Actor):
    name = "evil"
"""


def test_a_workspace_moorage_toml_and_a_py_beside_it_are_never_read_nor_run(runtime_dir,
                                                                            tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    marker = tmp_path / "marker"
    (workspace / "evil.py").write_text(EVIL.format(marker=str(marker)))
    (workspace / "moorage.toml").write_text('[[children]]\nid = "evil"\nstart = "evil:Evil"\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    rdir = runtime_dir / "ws"
    # from the workspace, foreground and detached: the embedded default tree comes up
    out = subprocess.run(moorage(rdir, "up", "--detach"), capture_output=True, text=True,
                         cwd=workspace, env=env, timeout=90)
    try:
        assert out.returncode == 0, out.stderr
        assert "evil" not in json.loads(out.stdout)["endpoints"]
        assert "terminal" in json.loads(out.stdout)["endpoints"]
    finally:
        take_down(rdir)
    # named explicitly: refused, as a module from outside the package ...
    out = subprocess.run(moorage(rdir, "up", "--config", "moorage.toml"), capture_output=True,
                         text=True, cwd=workspace, env=env, timeout=60)
    assert out.returncode == 2 and "--allow-external-actors" in out.stderr
    # ... and even when allowed, the working directory is not where modules are found
    out = subprocess.run(moorage(rdir, "up", "--config", "moorage.toml",
                                 "--allow-external-actors"),
                         capture_output=True, text=True, cwd=workspace, env=env, timeout=60)
    assert out.returncode == 2 and "no module 'evil'" in out.stderr, out.stderr
    assert not marker.exists()
    assert "Traceback" not in out.stderr


def test_logs_and_the_slo_record_go_to_the_state_dir_not_the_runtime_dir(ups, runtime_dir):
    rdir = runtime_dir / "st"
    u = up(ups, rdir, None)
    line = u.line()
    state = Path(os.environ["XDG_STATE_HOME"]) / "moorage" / "st"
    assert json.loads(Path(line["connection_file"]).read_text())["state_dir"] == str(state)
    subprocess.run(moorage(rdir, "down"), check=True, capture_output=True, timeout=60)
    assert u.proc.wait(30) == 0
    assert (state / "logs" / "supervisor.log").is_file()
    assert (state / "logs" / "terminal.log").is_file()
    assert (state / "metrics-slo.msgpack").is_file()
    assert not (rdir / "logs").exists() and not (rdir / "metrics-slo.msgpack").exists()
    out = subprocess.run(moorage(rdir, "logs", "metrics"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "metrics serving" in out.stdout
