"""`moorage up` as an editor first runs it, from the user's workspace with the user's
environment: nothing of the workspace importable by the command or any process of the tree,
whatever PYTHONPATH holds (the shells keep the user's PYTHONPATH as it was); a failed line,
where the ready line would have gone, for every start refused before the tree runs; every
socket the tree binds checked against sun_path before anything is bound; and the directories
moorage makes, and the configuration it reads, out of other users' reach."""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.supervisor import config
from moorage.supervisor.config import load
from moorage.supervisor.launch import tree_names
from tests.conftest import ROOT, kill_instance
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

CONSOLE_SCRIPT = Path(sys.executable).with_name("moorage")
AS_MODULE = [sys.executable, "-m", "moorage.supervisor.cli"]

PROBE = """
import importlib.util, json, os, sys
from pathlib import Path

from tests.fakes import FakeActor


class Probe(FakeActor):
    \"\"\"Says, in a file of its own, what it can import and what its shells would inherit.\"\"\"

    def __init__(self, name, runtime_dir, config=None):
        record = Path(config["record"]) / f"{os.getpid()}.json"
        facts = {"ppid": os.getppid(), "path": sys.path,
                 "wsmod": importlib.util.find_spec("wsmod") is not None,
                 "pythonpath": os.environ.get("PYTHONPATH")}
        record.with_suffix(".tmp").write_text(json.dumps(facts))
        os.replace(record.with_suffix(".tmp"), record)
        super().__init__(name, runtime_dir, config)
"""

PLANTED = """
import os
with open({marker!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{__name__}}\\n")
raise ImportError("a workspace module was imported")
"""

FAKE = """
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""


def moorage(rdir: Path, *args: str) -> list[str]:
    return [*AS_MODULE, "--instance-dir", str(rdir), *args]


def take_down(rdir: Path) -> None:
    subprocess.run(moorage(rdir, "down"), capture_output=True, timeout=60, cwd=ROOT)
    kill_instance(rdir)


def refused(cmd: list[str], rdir: Path, **kw) -> subprocess.CompletedProcess:
    """A start that should be refused, run; whatever it started if it was not, taken down
    (a detached tree would outlive the test)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)
    finally:
        if (rdir / endpoints.LOCK_FILE).exists():
            take_down(rdir)


def failed_line(out: subprocess.CompletedProcess) -> dict:
    """The one failed line on stdout, with no traceback anywhere."""
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stdout.count("\n") == 1, (out.stdout, out.stderr)
    line = json.loads(out.stdout)
    assert line["moorage"] == "failed", line
    return line["error"]


# --- the working directory, whatever PYTHONPATH holds ----------------------------------------


def test_the_entries_pythonpath_makes_of_the_working_directory_are_found_and_a_named_one_kept():
    from moorage.supervisor.cli.commands import implicit_entries

    assert implicit_entries(":/x:src:.", "/w") == {"", "src", "/w/src", ".", "/w"}
    assert implicit_entries("/x:", "/w") == {"", "/w"}
    assert implicit_entries("/x", "/w") == {""}
    # the working directory named by its absolute path was named on purpose: it stays
    assert implicit_entries("/w::src", "/w") == {"", "src", "/w/src"}
    assert implicit_entries(None, None) == {""}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An editor's workspace holding modules that shadow the tree's (msgpack) and one of its
    own (wsmod), at its top and in src/: importing any of them leaves a line in `marker`."""
    ws = tmp_path / "workspace"
    for d in (ws, ws / "src"):
        d.mkdir(parents=True)
        for name in ("msgpack", "wsmod"):
            (d / f"{name}.py").write_text(PLANTED.format(marker=str(tmp_path / "marker")))
    return ws


def records(d: Path) -> list[dict]:
    out = []
    for p in sorted(d.glob("*.json")):
        out.append({"pid": int(p.stem), **json.loads(p.read_text())})
    return out


def started_with(pid: int) -> dict[str, str]:
    """The environment process `pid`'s program was started with (not later changes)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode(errors="replace").partition("=")[::2] for e in raw if e)


def assert_clean(rec: dict, ws: Path, pythonpath: str) -> None:
    assert not rec["wsmod"], rec
    # (a relative entry naming nothing there is an import hook's key: an editable install's)
    inside = [p for p in rec["path"] if p == "" or ((ws / p).exists()
              and os.path.commonpath([ws, ws / p]) == str(ws))]
    assert inside == [], rec["path"]
    assert rec["pythonpath"] == pythonpath  # what the shells inherit: the user's, as given


@pytest.mark.parametrize(("entry", "element"), [
    pytest.param([str(CONSOLE_SCRIPT)], "", id="console-script-empty-element"),
    pytest.param(AS_MODULE, "src", id="python-m-relative-element"),
])
def test_the_workspace_is_importable_by_no_process_of_the_tree_whatever_pythonpath_holds(
        entry, element, workspace, runtime_dir, tmp_path):
    """`export PYTHONPATH=$PYTHONPATH:/x` with none set before gives `:/x`, which puts the
    working directory on the path; a relative element puts a directory under it. Neither the
    command, nor the detached tree, its actors, or the actors a replacement zygote (a new
    program) forks can import from there; each still has the user's PYTHONPATH to hand on."""
    ext = tmp_path / "ext"
    ext.mkdir()
    (ext / "probe_up.py").write_text(PROBE)
    record = tmp_path / "records"
    record.mkdir()
    cfg = tmp_path / "tree.toml"
    cfg.write_text(f'[[children]]\nid = "probe"\nstart = "probe_up:Probe"\n'
                   f'config = {{ record = "{record}" }}\n')
    pythonpath = f"{element}:{ext}:{os.environ['PYTHONPATH']}"
    rdir = runtime_dir / "ws"
    out = subprocess.run([*entry, "--instance-dir", str(rdir), "up", "--detach", "--config",
                          str(cfg), "--allow-external-actors"], cwd=workspace,
                         env={**os.environ, "PYTHONPATH": pythonpath}, capture_output=True,
                         text=True, timeout=120)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        first = wait_for(lambda: records(record), "the probe's record")[0]
        assert_clean(first, workspace, pythonpath)
        with Client(rdir, timeout=10) as c:
            zygote = c.call("supervisor", "sup.status")["zygote"]["pid"]
            assert first["ppid"] == zygote
            os.kill(zygote, signal.SIGKILL)
            wait_for(lambda: c.call("supervisor", "sup.status")["zygote"]["pid"] != zygote,
                     "a replacement zygote")
            replacement = c.call("supervisor", "sup.status")["zygote"]["pid"]
            # the new programs' interpreters started without it (it is put back before any
            # of moorage runs, for their children)
            root = json.loads(out.stdout)["pid"]
            assert "PYTHONPATH" not in started_with(root)
            assert "PYTHONPATH" not in started_with(replacement)
            os.kill(first["pid"], signal.SIGKILL)
            again = wait_for(lambda: [r for r in records(record)
                                      if r["ppid"] == replacement], "the probe forked again")
        assert_clean(again[0], workspace, pythonpath)
    finally:
        take_down(rdir)
    assert not (tmp_path / "marker").exists(), (tmp_path / "marker").read_text()


# --- a start refused before the tree runs says so on its line --------------------------------


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_parent_that_is_gone_is_said_on_the_failed_line_wherever_the_line_goes(runtime_dir):
    """The editor died while starting the tree (or the tree cannot see its pid, from a
    sandbox): in the foreground, detached, and on --ready-fd, the line says so, exit 2."""
    rdir = runtime_dir / "par"
    for parent in (str(dead_pid()), "0"):
        for how in ([], ["--detach"]):
            out = refused(moorage(rdir, "up", *how, "--parent", parent), rdir)
            error = failed_line(out)
            assert error["name"] == "start_failed" and f"--parent {parent}" in error["message"]
            assert out.returncode == 2
    r, w = os.pipe()
    with os.fdopen(r) as line:
        out = subprocess.run(moorage(rdir, "up", "--parent", "0", "--ready-fd", str(w)),
                             capture_output=True, text=True, cwd=ROOT, timeout=60,
                             pass_fds=(w,))
        os.close(w)
        assert out.returncode == 2 and out.stdout == ""
        assert json.loads(line.read())["error"]["name"] == "start_failed"
    assert not (rdir / endpoints.LOCK_FILE).exists()


def test_a_bad_instance_or_ready_fd_or_option_is_a_failed_line_for_up_and_one_line_for_others(
        runtime_dir):
    out = subprocess.run([*AS_MODULE, "--instance", "..", "up"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert failed_line(out)["name"] == "bad_config" and out.returncode == 2
    out = subprocess.run([*AS_MODULE, "--instance", "..", "status"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and out.stdout == "" and "bad instance name" in out.stderr
    assert "Traceback" not in out.stderr
    rdir = runtime_dir / "opts"
    for args in (["up", "--ready-fd", "99"], ["up", "--detach", "--exit-on-stdin-eof"],
                 ["up", "--host", "h"]):
        out = refused(moorage(rdir, *args), rdir)
        assert failed_line(out)["name"] == "bad_config" and out.returncode == 2, args
    # (what argparse refuses: its usage on stderr as well)
    for args in (["up", "--no-such-option"], ["up", "--timeout", "x"],
                 ["up", "--detach", "--log-level", "loud"], ["up", "extra"]):
        out = refused(moorage(rdir, *args), rdir)
        assert failed_line(out)["name"] == "bad_config" and out.returncode == 2, args
        assert "usage:" in out.stderr, out.stderr
    out = subprocess.run(moorage(rdir, "status", "--no-such-option"), capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert "unrecognized arguments: --no-such-option" in out.stderr
    r, w = os.pipe()
    with os.fdopen(r) as line:
        out = subprocess.run(moorage(rdir, "up", f"--ready-fd={w}", "--timeout", "x"),
                             capture_output=True, text=True, cwd=ROOT, timeout=60,
                             pass_fds=(w,))
        os.close(w)
        assert out.returncode == 2 and out.stdout == "" and "usage:" in out.stderr
        error = json.loads(line.read())["error"]
        assert error["name"] == "bad_config" and "--timeout" in error["message"], error


def test_up_detach_with_a_state_dir_it_cannot_make_says_failed_and_starts_nothing(
        runtime_dir, tmp_path):
    (tmp_path / "file").write_text("")
    rdir = runtime_dir / "st"
    out = subprocess.run(moorage(rdir, "up", "--detach"), capture_output=True, text=True,
                         cwd=ROOT, timeout=60,
                         env={**os.environ, "MOORAGE_STATE_DIR": str(tmp_path / "file" / "st")})
    error = failed_line(out)
    assert error["name"] == "start_failed" and str(tmp_path / "file") in error["message"]
    assert out.returncode == 1
    assert not (rdir / endpoints.LOCK_FILE).exists()


NOBODY = 4242


def no_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


@pytest.fixture
def as_nobody() -> Iterator[tuple[list[str], dict[str, str], Path]]:
    """A command line running moorage as a uid with no passwd entry and no HOME (a container
    started with `--user N`), its environment, and a directory it may write in. It runs the
    system's python on these sources (this interpreter is in root's home)."""
    system = Path("/usr/bin/python3")
    if os.getuid() != 0 or not no_passwd_entry(NOBODY) or not system.exists():
        pytest.skip("needs root, a uid with no passwd entry and /usr/bin/python3")
    version = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {version}, not this interpreter's version")
    d = Path(tempfile.mkdtemp(prefix="mt-nobody-", dir="/tmp"))
    try:
        os.chmod(d, 0o777)
        (d / "path").mkdir(mode=0o755)
        (d / "path" / "moorage").symlink_to(ROOT)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{d / 'path'}:"
               f"{sysconfig.get_paths()['purelib']}"}
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               str(system), "-P", "-m", "moorage.supervisor.cli"]
        yield cmd, env, d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def test_with_no_home_to_be_found_up_says_failed_and_other_commands_say_one_line(as_nobody):
    cmd, env, d = as_nobody
    env = {**env, "MOORAGE_RUNTIME_DIR": str(d / "rt")}
    for how in ([], ["--detach"]):
        out = subprocess.run([*cmd, "up", *how], capture_output=True, text=True, env=env,
                             cwd="/tmp", timeout=60)
        error = failed_line(out)
        assert error["name"] == "bad_config" and "MOORAGE_STATE_DIR" in error["message"]
        assert out.returncode == 2
    # (a state dir given, the keys --listen needs are what has no home)
    out = subprocess.run([*cmd, "up", "--listen", "tcp://127.0.0.1:1"], capture_output=True,
                         text=True, env={**env, "MOORAGE_STATE_DIR": str(d / "st")},
                         cwd="/tmp", timeout=60)
    error = failed_line(out)
    assert error["name"] == "bad_config" and "MOORAGE_KEYS_DIR" in error["message"], error
    assert out.returncode == 2
    for args in (["status"], ["keys", "list"]):
        out = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env,
                             cwd="/tmp", timeout=60)
        assert out.returncode == 2 and "HOME is not set" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


# --- every socket the tree binds fits -----------------------------------------------------------


def test_a_runtime_dir_too_long_for_a_supervisors_custody_socket_is_refused_naming_it(
        runtime_dir):
    """supervisor.rpc fits, supervisor.custody.sock (9 bytes longer) would not: refused before
    anything is bound, as any other socket path too long, and a nested supervisor's too."""
    rdir = runtime_dir / ("x" * (88 - len(str(runtime_dir)) - 1))
    assert len(str(rdir)) == 88
    cfg = runtime_dir / "fake.toml"
    cfg.write_text(FAKE)
    out = subprocess.run(moorage(rdir, "up", "--config", str(cfg), "--allow-external-actors"),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    error = failed_line(out)
    assert error["name"] == "start_failed" and out.returncode == 2
    assert f"{rdir}/supervisor.custody.sock" in error["message"]
    assert "107-byte limit" in error["message"]
    sup = "s" * 32
    cfg.write_text(f'[[children]]\nid = "{sup}"\ntype = "supervisor"\n'
                   f'[[children.children]]\nid = "a"\nstart = "tests.fakes:FakeActor"\n')
    rdir = runtime_dir / ("y" * (107 - len(f"{runtime_dir}/") - len(f"/{sup}.custody.sock")
                                 + 1))
    assert len(f"{rdir}/{sup}.rpc") <= endpoints.SUN_PATH_MAX
    out = subprocess.run(moorage(rdir, "up", "--config", str(cfg), "--allow-external-actors"),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    error = failed_line(out)
    assert f"{rdir}/{sup}.custody.sock" in error["message"] and out.returncode == 2


def test_every_socket_a_running_tree_binds_is_one_the_length_check_knows(make_tree):
    """The default tree (a nested supervisor, the pty keeper, metrics): each socket file in
    its runtime dir is among those checked against sun_path before the start."""
    from moorage.supervisor.launch import custody_sockets

    text = resources.files("moorage.supervisor").joinpath("default.toml").read_text()
    tree = make_tree(text).start()
    _, spec = load(tree.config_path, allow_external=True)
    rdir = tree.runtime_dir
    checked = set(endpoints.socket_paths(rdir, tree_names(spec),
                                         also=custody_sockets(rdir, spec)))
    bound = {str(p) for p in rdir.iterdir() if p.is_socket()}
    assert {f"{rdir}/supervisor.custody.sock", f"{rdir}/terminals.custody.sock",
            f"{rdir}/ptykeeper.sock", f"{rdir}/metrics.in"} <= bound
    assert bound <= checked, bound - checked


# --- directories moorage makes, files it reads ------------------------------------------------


def modes(top: Path, path: Path) -> dict[str, str]:
    """The mode of each directory from `top` (excluded) down to `path`."""
    out = {}
    while path != top:
        out[path.name] = oct(stat.S_IMODE(path.stat().st_mode))
        path = path.parent
    return out


def test_a_config_home_whose_moorage_toml_is_a_dangling_link_is_refused_not_run_on_defaults(
        runtime_dir, tmp_path):
    """A dotfiles checkout not there yet: the link says the user has a config, so `up` says
    bad_config naming it rather than start on the defaults without a word."""
    xdg = tmp_path / "config"
    (xdg / "moorage").mkdir(parents=True)
    (xdg / "moorage" / "moorage.toml").symlink_to(tmp_path / "dotfiles" / "moorage.toml")
    rdir = runtime_dir / "dl"
    try:
        out = subprocess.run(moorage(rdir, "up", "--detach"), capture_output=True, text=True,
                             cwd=ROOT, timeout=90,
                             env={**os.environ, "XDG_CONFIG_HOME": str(xdg)})
    finally:
        take_down(rdir)  # (on the defaults, as before the check, it would have come up)
    error = failed_line(out)
    assert error["name"] == "bad_config" and out.returncode == 2, error
    assert "symbolic link" in error["message"] and "dotfiles" in error["message"], error
    assert not (rdir / endpoints.LOCK_FILE).exists()


def under_umask_000(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=90, **kw)


def test_directories_moorage_makes_are_0700_at_every_level_under_umask_000(
        runtime_dir, tmp_path):
    xdg = tmp_path / "xdg" / "config"
    out = under_umask_000([*AS_MODULE, "keys", "init"],
                          env={**os.environ, "XDG_CONFIG_HOME": str(xdg)})
    assert out.returncode == 0, out.stderr
    assert set(modes(tmp_path, xdg / "moorage" / "keys").values()) == {"0o700"}
    # detached: the state dir and logs/ are made before the tree starts (the start fails)
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nintensity = 'x'\n")
    state = tmp_path / "st" / "deep" / "state"
    out = under_umask_000(moorage(runtime_dir / "um", "up", "--detach", "--config", str(bad)),
                          env={**os.environ, "MOORAGE_STATE_DIR": str(state)})
    assert failed_line(out)["name"] == "bad_config"
    assert set(modes(tmp_path, state / "logs").values()) == {"0o700"}
    # in the foreground: the state dir and the runtime dir, of a tree that comes up
    cfg = tmp_path / "fake.toml"
    cfg.write_text(FAKE)
    state = tmp_path / "fg" / "deep" / "state"
    rdir = runtime_dir / "a" / "b" / "fg"
    with open(tmp_path / "fg.err", "wb") as err:
        proc = subprocess.Popen(
            ["sh", "-c", 'umask 000 && exec "$@"', "sh",
             *moorage(rdir, "up", "--config", str(cfg), "--allow-external-actors",
                      "--parent", str(os.getpid()))],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, start_new_session=True,
            env={**os.environ, "MOORAGE_STATE_DIR": str(state)})
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 60)[0], "no ready line"
        assert json.loads(proc.stdout.readline())["moorage"] == "ready"
        assert set(modes(tmp_path, state).values()) == {"0o700"}
        assert set(modes(runtime_dir, rdir).values()) == {"0o700"}
    finally:
        take_down(rdir)
        proc.wait(30)
        proc.stdout.close()


def test_a_config_another_user_could_have_written_is_refused(tmp_path):
    """As ssh refuses its own config: a file writable by others or by a group other than the
    user's private one, one owned by another user, or one in a directory others may write
    to (unless sticky, as /tmp) is bad_config, exit 2, naming why; a root-owned file in a
    root-owned directory is fine."""
    def top(cfg: Path) -> subprocess.CompletedProcess:  # reads the config as `up` does
        return subprocess.run([*AS_MODULE, "--instance-dir", str(tmp_path / "rt"), "top",
                               "--once", "--config", str(cfg)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    d = tmp_path / "conf"
    d.mkdir()
    cfg = d / "moorage.toml"
    cfg.write_text("[lifecycle]\ngrace_s = 5\n")
    assert top(cfg).returncode == 4  # read, and no tree to show
    cfg.chmod(0o664)
    if config.private_group(cfg.stat().st_gid, os.getuid()):
        # (umask 002 where each user has a group of their own: no one else can write it)
        assert top(cfg).returncode == 4
    if os.getuid() == 0:
        os.chown(cfg, 0, NOBODY)  # (a group with others in it, or another's)
    if not config.private_group(cfg.stat().st_gid, os.getuid()):
        out = top(cfg)
        assert out.returncode == 2 and "writable by group or others" in out.stderr, out.stderr
    if os.getuid() == 0:
        os.chown(cfg, 0, 0)
    cfg.chmod(0o644)
    d.chmod(0o777)
    out = top(cfg)
    assert out.returncode == 2 and "writable by others" in out.stderr, out.stderr
    d.chmod(0o1777)
    assert top(cfg).returncode == 4
    d.chmod(0o755)
    if os.getuid() == 0:
        os.chown(cfg, NOBODY, NOBODY)
        out = top(cfg)
        assert out.returncode == 2 and f"owned by uid {NOBODY}" in out.stderr, out.stderr
        os.chown(cfg, 0, 0)
        os.chown(d, NOBODY, NOBODY)
        out = top(cfg)
        assert out.returncode == 2 and "another user may replace" in out.stderr, out.stderr
    # and `up` says it on its line
    cfg.chmod(0o666)
    out = subprocess.run(moorage(tmp_path / "rt", "up", "--config", str(cfg)),
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert failed_line(out)["name"] == "bad_config" and out.returncode == 2
