"""The CLI as a user meets it, on a real tree: no traceback from any command whatever the
input or a reader that stops early, one exit-code table, global options anywhere, --version,
the op tables, bytes in and out, following streams until the tree stops, config get/set that
know the tree's ops, and a status that never hides a child."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.commands import parser
from moorage.supervisor.cli.tree import force_stop
from tests.conftest import ROOT, Tree, assert_all_gone, descendants, module_tree, wait_pid_exit
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

TREE = """
[supervisor]
heartbeat = { interval_ms = 1000, misses = 30 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
config = { retention_messages = 5 }
[[children]]
id = "group"
type = "supervisor"
heartbeat = { interval_ms = 1000, misses = 30 }
[[children.children]]
id = "inner"
start = "tests.fakes:FakeActor"
[timeouts]
"fake.work" = 7000
"""


def moorage(tree: Tree, *args: str | bytes, stdout: Any = subprocess.PIPE,
            stdin: Any = subprocess.DEVNULL, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moorage.supervisor.cli",
                           "--instance-dir", str(tree.runtime_dir), *args],
                          stdout=stdout, stderr=subprocess.PIPE, stdin=stdin, cwd=ROOT,
                          timeout=timeout)


def text(out: subprocess.CompletedProcess) -> str:
    return out.stdout.decode(errors="replace") if isinstance(out.stdout, bytes) else out.stdout


def closed_early(tree: Tree, *args: str) -> subprocess.CompletedProcess:
    """The command with a stdout whose reader is already gone (`| head -0`)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return moorage(tree, *args, stdout=w)
    finally:
        os.close(w)


BAD_INPUT = [
    ("up", "--log-level", "loud"), ("up", "--config", "/nonexistent.toml"),
    ("up", "--metrics-http", "0.0.0.0:1"), ("up", "--parent", "0"),
    ("up", "--detach", "--exit-on-stdin-eof"), ("up", "--ready-fd", "999"),
    ("adopt", "--parent", "-5"), ("status", "--timeout", "0"), ("status", "--timeout", "x"),
    ("restart", "nosuch"), ("kill", "alpha", "--signal", "NOPE"), ("kill", "alpha", "--signal",
                                                                  "999"),
    ("kill", "supervisor"), ("call", "alpha", "fake.work", "{not json"),
    ("call", "alpha", "fake.work", "[1, 2]"), ("call", "alpha", "fake.work", '{"n": "x"}'),
    ("call", "alpha", "nosuch.op"), ("call", "nosuch", "sys.ping"),
    ("call", "watcher", "fs.write", '{"path": "/tmp/x"}', "--data", "@/nonexistent"),
    ("call", "watcher", "fs.read", '{"path": "/etc/hostname"}', "--raw", "--out", "/tmp/y"),
    ("ops", "nosuch"), ("ops", "alpha", "nosuch.op"), ("subscribe", "nosuch", "t"),
    ("subscribe", "alpha", "t", "--from-seq", "0"), ("events", "--count", "x"),
    ("logs", "nosuch"), ("metrics", "--nosuch"), ("top", "--interval", "0"),
    ("config", "set", "timeout.nosuch.op", "5s"), ("config", "set", "timeout.fake.work", "x"),
    ("config", "set", "nosuch", "5s"), ("config", "get", "nosuch.op"), ("config", "frob"),
    ("slo", "--nosuch"), ("completion", "fish"), ("down", "--nosuch"), ("nosuch",), (),
    ("keys", "allow", "not-a-key"), ("keys", "frob"),
]

READERS = [
    ("status", "--json"), ("status",), ("call", "alpha", "sys.info"), ("ops",),
    ("ops", "alpha", "fake.work"), ("metrics",), ("metrics", "--prometheus"), ("logs",),
    ("config", "get"), ("slo",), ("completion", "bash"), ("--help",), ("events", "--replay",
                                                                      "--count", "2"),
    ("subscribe", "supervisor", "sup.event", "--from-seq", "1"),
    ("call", "watcher", "fs.read", '{"path": "/etc/hostname"}', "--raw"),
]


@pytest.fixture(scope="module")
def shared_tree() -> Iterator[Tree]:
    """One TREE for the tests that only read it, or write files of their own through it:
    none changes what another looks at (the SLO test, which counts calls, has its own)."""
    yield from module_tree(TREE)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_no_command_ends_in_a_traceback_on_bad_input_or_a_reader_gone_early(
        shared_tree: Tree) -> None:
    tree = shared_tree
    seen = []
    # Each case its own process, none changing the tree: a few run at once, as several
    # users' commands do (most of each one's time is its interpreter starting).
    with ThreadPoolExecutor(max_workers=4) as pool:
        bad = list(pool.map(lambda args: moorage(tree, *args), BAD_INPUT))
        readers = list(pool.map(lambda args: closed_early(tree, *args), READERS))
    for args, out in zip(BAD_INPUT, bad, strict=True):
        err = out.stderr.decode()
        assert "Traceback" not in err and "Exception ignored" not in err, (args, err)
        assert out.returncode != 0 and err.strip(), args
        assert out.returncode in (1, 2), (args, out.returncode, err)
        seen.append(args[0] if args else "")
    for args, out in zip(READERS, readers, strict=True):
        err = out.stderr.decode()
        assert "Traceback" not in err and "Exception ignored" not in err, (args, err)
        assert out.returncode == 0, (args, out.returncode, err)
        seen.append(args[0])
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) <= set(seen), set(sub.choices) - set(seen)


def test_one_exit_code_table_for_every_command(make_tree):
    tree = make_tree(TREE)
    no_tree = (("status",), ("call", "alpha", "sys.ping"), ("ops",), ("restart", "alpha"),
               ("subscribe", "alpha", "t"), ("events",), ("metrics",), ("config", "get"),
               ("slo",), ("adopt",), ("top", "--once"))
    with ThreadPoolExecutor(max_workers=4) as pool:  # (independent: a few at once)
        outs = list(pool.map(lambda args: moorage(tree, *args), no_tree))
    for args, out in zip(no_tree, outs, strict=True):
        assert out.returncode == 4 and b"no moorage tree is running" in out.stderr, args
    out = moorage(tree, "down")
    assert out.returncode == 0 and b"not running" in out.stdout
    tree.start()
    assert moorage(tree, "kill", "alpha", "--signal", "15").returncode == 0
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    assert moorage(tree, "kill", "alpha", "--signal", "term").returncode == 0
    assert moorage(tree, "call", "alpha", "fake.work", '{"fail": true}').returncode == 1
    assert moorage(tree, "call", "alpha", "fake.work", '{"n": "x"}').returncode == 2
    assert moorage(tree, "restart", "nosuch").returncode == 2
    assert moorage(tree, "kill", "supervisor").returncode == 2
    nosuch = moorage(tree, "metrics", "nosuch.op")  # no actor has it: not an empty table
    assert nosuch.returncode == 2 and b"no actor of the tree has an op" in nosuch.stderr
    assert moorage(tree, "metrics", "fake.publish").returncode == 0  # not called yet: no rows
    up = moorage(tree, "up", "--config", str(tree.config_path), "--allow-external-actors")
    assert up.returncode == 1 and json.loads(up.stdout)["error"]["name"] == "already_running"
    assert "stop it with `moorage down`" in json.loads(up.stdout)["error"]["message"]
    help_ = text(moorage(tree, "--help"))
    for code in ("0  done", "1  the tree answered", "2  usage", "3  the tree gave up",
                 "4  no tree"):
        assert code in help_
    assert "exit codes:" in text(moorage(tree, "kill", "--help"))


SMALL = """
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[[children]]
id = "group"
type = "supervisor"
[[children.children]]
id = "inner"
start = "tests.fakes:FakeActor"
"""


def nothing_left(rdir: Path) -> None:
    left = sorted(p.name for p in rdir.iterdir()
                  if p.is_socket() or p.name in ("lock", "tree.json", "listen.json"))
    assert left == []


def test_down_stops_a_root_that_does_not_answer_and_leaves_nothing(make_tree):
    tree = make_tree(SMALL).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    os.kill(tree.pid, signal.SIGSTOP)  # (the fixture's SIGKILL takes it if this fails)
    out = moorage(tree, "down", "--timeout", "1")
    assert out.returncode == 0, out.stderr
    assert b"SIGTERM" in out.stderr and b"moorage tree stopped" in out.stdout
    assert wait_pid_exit(tree.pid, 30)
    assert_all_gone(procs)
    nothing_left(tree.runtime_dir)


def test_a_root_that_ignores_sigterm_gets_sigkill_after_the_grace():
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys; signal.signal("
                             "signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                             "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        fd = os.pidfd_open(proc.pid)
        try:
            force_stop(fd, proc.pid, 0.2)
        finally:
            os.close(fd)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait(10)
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def test_down_after_a_root_that_was_killed_removes_what_it_left(make_tree):
    tree = make_tree(SMALL).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    assert (tree.runtime_dir / "group.custody.sock").is_socket()
    os.kill(tree.pid, signal.SIGKILL)
    assert_all_gone(procs)
    assert (tree.runtime_dir / "tree.json").exists()
    out = moorage(tree, "down")
    assert out.returncode == 0 and b"not running" in out.stdout, out.stderr
    assert b"group.custody.sock" in out.stderr and b"tree.json" in out.stderr
    nothing_left(tree.runtime_dir)
    out = moorage(tree, "down")  # nothing more to say
    assert out.returncode == 0 and out.stderr == b""


def test_a_time_that_is_not_finite_or_over_a_day_is_a_usage_error(tmp_path):
    rdir = tmp_path / "none"
    for args in (("--timeout", "inf", "status"), ("--timeout", "1e300", "down"),
                 ("--timeout", "nan", "call", "a", "b"), ("top", "--interval", "inf"),
                 ("config", "set", "timeout.fs.read", "inf"),
                 ("config", "set", "timeout.fs.read", "1e400ms")):
        out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli",
                              "--instance-dir", str(rdir), *args], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 2, (args, out.returncode, out.stderr)
        assert "this is a bug" not in out.stderr and "Traceback" not in out.stderr, args


def test_global_options_anywhere_and_the_version(shared_tree: Tree) -> None:
    tree = shared_tree
    assert moorage(tree, "status", "--timeout", "3").returncode == 0
    out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "status",
                          "--instance-dir", str(tree.runtime_dir)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "alpha" in out.stdout
    out = subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "status",
                          "--instance", "x/y"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "bad instance name" in out.stderr
    v = text(moorage(tree, "--version"))
    assert v.startswith("moorage ") and "(protocol 1)" in v


def test_ops_lists_every_op_with_its_arguments_and_whole_description(shared_tree: Tree) -> None:
    tree = shared_tree
    out = text(moorage(tree, "ops"))
    assert "alpha" in out and "fake.work" in out and "n: int?, fail: bool?" in out
    out = text(moorage(tree, "ops", "alpha", "fake.work"))
    assert "n: int (optional)" in out and "idempotent: no" in out and "timeout: 7000 ms" in out
    # the whole docstring, not its first line
    assert "unlike bad arguments, which are the caller's)." in out
    info = tree.call("watcher", "sys.info")
    docs = {name: spec["doc"] for name, spec in info["ops"].items()}
    assert all(d.endswith((".", ")")) for d in docs.values() if d), docs
    err = moorage(tree, "call", "alpha", "nosuch.op").stderr.decode()
    assert err.rstrip().endswith("see `moorage ops alpha`")
    err = moorage(tree, "call", "alpha", "fake.work", '{"n": "x"}').stderr.decode()
    assert err.rstrip().endswith("see `moorage ops alpha`")


def test_bytes_go_in_and_come_out_whole(shared_tree: Tree, tmp_path: Path) -> None:
    tree = shared_tree
    blob = bytes(range(256)) * 40 + b"\xff\xfe not utf-8"
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    dst = tmp_path / "copy.bin"
    out = moorage(tree, "call", "watcher", "fs.write", json.dumps({"path": str(dst)}),
                  "--data", f"@{src}")
    assert out.returncode == 0, out.stderr
    assert dst.read_bytes() == blob
    dst2 = tmp_path / "copy2.bin"
    out = moorage(tree, "call", "watcher", "fs.write", json.dumps({"path": str(dst2)}),
                  "--attach", str(src))
    assert out.returncode == 0 and dst2.read_bytes() == blob
    out = moorage(tree, "call", "watcher", "fs.read", json.dumps({"path": str(dst)}), "--raw")
    assert out.returncode == 0 and out.stdout == blob
    assert json.loads(out.stderr)["stat"]["size"] == len(blob)
    got = tmp_path / "out.bin"
    out = moorage(tree, "call", "watcher", "fs.read", json.dumps({"path": str(dst)}),
                  "--out", str(got))
    assert out.returncode == 0 and got.read_bytes() == blob
    assert json.loads(out.stdout)["stat"]["size"] == len(blob)
    out = moorage(tree, "call", "watcher", "fs.read", json.dumps({"path": str(dst)}))
    assert f"[attachment 0: {len(blob)} bytes".encode() in out.stderr


def test_subscribe_follows_a_stream_says_its_losses_and_ends_when_the_tree_stops(make_tree):
    tree = make_tree(TREE).start()
    tree.call("alpha", "fake.publish", {"topic": "t.one", "n": 12, "size": 3})
    # retention 5: seqs 1-7 are gone, and said to be
    proc = subprocess.Popen([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                             str(tree.runtime_dir), "subscribe", "alpha", "t.one", "--from-seq",
                             "1", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    raw = subprocess.Popen([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                            str(tree.runtime_dir), "subscribe", "alpha", "t.one", "--from-seq",
                            "1", "--raw"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           cwd=ROOT)
    events = subprocess.Popen([sys.executable, "-m", "moorage.supervisor.cli",
                               "--instance-dir", str(tree.runtime_dir), "events", "--replay"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    logs = subprocess.Popen([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                             str(tree.runtime_dir), "logs", "-f"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    try:
        # each follower is connected (it has said something) before anything else happens
        assert raw.stdout is not None and events.stdout is not None and logs.stdout is not None
        got = b""
        while len(got) < 15:
            chunk = os.read(raw.stdout.fileno(), 15 - len(got))
            assert chunk, raw.stderr.read() if raw.stderr else ""
            got += chunk
        assert got == b"".join(bytes([i]) * 3 for i in range(7, 12))
        assert b'"event": "started"' in events.stdout.readline()
        assert logs.stdout.readline()
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first == {"lost": [1, 7], "topic": "t.one"}
        lines = [json.loads(proc.stdout.readline()) for _ in range(5)]
        assert [x["seq"] for x in lines] == [8, 9, 10, 11, 12]
        assert lines[0]["body"] == {"i": 7} and lines[0]["attachments"] == ["\x07\x07\x07"]
        tree.call("alpha", "fake.publish", {"topic": "t.one", "n": 1})
        assert json.loads(proc.stdout.readline())["seq"] == 13
        # the publisher restarts: a Reset, then its new stream
        old = tree.child("alpha")["pid"]
        tree.call("supervisor", "sup.kill", {"child": "alpha"})
        tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha"
                        and e["pid"] != old)
        assert "reset" in json.loads(proc.stdout.readline())
        tree.call("alpha", "fake.publish", {"topic": "t.one", "n": 1})
        assert json.loads(proc.stdout.readline())["seq"] == 1
        tree.call("supervisor", "sup.stop")
        for p in (proc, raw, events, logs):
            assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
        assert raw.stdout.read() == b""  # nothing more: the later messages have no bytes
        assert events.stdout is not None and b'"event": "stopping"' in events.stdout.read()
        assert logs.stdout is not None and b"supervisor stopped" in logs.stdout.read()
    finally:
        for p in (proc, raw, events, logs):
            if p.poll() is None:
                p.kill()
                p.wait(10)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


def test_config_set_knows_the_trees_ops_and_get_says_where_each_timeout_comes_from(make_tree):
    tree = make_tree(TREE).start()
    assert moorage(tree, "config", "set", "timeout.nosuch.op", "5s").returncode == 2
    assert moorage(tree, "config", "set", "timeout.fs.read", "soon").returncode == 2
    assert moorage(tree, "config", "set", "timeout.fs.read", "2h").returncode == 2
    assert moorage(tree, "config", "set", "timeout.fs.read", "3s").returncode == 0
    rows = {r["op"]: r for r in json.loads(text(moorage(tree, "config", "get", "--json")))["ops"]}
    assert rows["fs.read"]["timeout_ms"] == 3000
    assert rows["fs.read"]["source"] == "override (config set)"
    assert rows["fake.work"]["timeout_ms"] == 7000
    assert rows["fake.work"]["source"] == "[timeouts] in the config"
    assert rows["fake.work"]["actors"] == ["alpha", "inner"]
    assert rows["sys.ping"]["source"] == "the op's own"
    assert set(rows) >= {"fs.read", "fs.write", "fake.publish", "sup.status", "metrics.query"}
    table = text(moorage(tree, "config", "get"))
    assert "timeout.fs.sync" in table and "the op's own" in table


def test_status_shows_a_stopped_nested_supervisor_as_unknown_with_its_children_in_budget(
        make_tree):
    tree = make_tree(TREE).start()
    assert "inner" in text(moorage(tree, "status"))
    group = tree.child("group")["pid"]
    os.kill(group, signal.SIGSTOP)
    try:
        out = moorage(tree, "status", "--timeout", "1")
        rows = {line.split()[0]: line.split() for line in text(out).splitlines()
                if line.split() and line.split()[0] in ("group", "inner", "alpha")}
        assert rows["group"][2] == "unknown" and rows["inner"][2] == "unknown"
        assert rows["alpha"][2] == "running"
        assert out.returncode == 1 and b"state unknown: group, inner" in out.stderr
        tree_ = json.loads(text(moorage(tree, "status", "--json", "--timeout", "1")))
        nested = next(c for c in tree_["children"] if c["id"] == "group")["tree"]
        assert nested["error"]["name"] == "timeout"
        assert [c["id"] for c in nested["children"]] == ["inner"]
        # a budget too small for anything: a timeout, never outcome_unknown
        out = moorage(tree, "status", "--timeout", "0.001")
        assert out.returncode == 1 and b"outcome_unknown" not in out.stderr
    finally:
        os.kill(group, signal.SIGCONT)


def test_completion_offers_commands_actors_and_ops_in_bash(shared_tree: Tree,
                                                           tmp_path: Path) -> None:
    tree = shared_tree

    def complete(line: str) -> list[str]:
        out = tmp_path / "completions"
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line,
               "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
               "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_SUPPRESS_SPACE": "1"}
        subprocess.run([sys.executable, "-m", "moorage.supervisor.cli"], env=env, cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        return [w.strip() for w in out.read_text().split("\n") if w.strip()]

    d = str(tree.runtime_dir)
    assert "status" in complete("moorage sta")
    assert {"alpha", "watcher", "inner"} <= set(complete(f"moorage --instance-dir {d} call "))
    assert {"fake.work", "fake.publish", "sys.info"} <= set(
        complete(f"moorage --instance-dir {d} call alpha fake."))  \
        | set(complete(f"moorage --instance-dir {d} call alpha "))
    assert "fs.read" in complete(f"moorage call watcher fs.r --instance-dir {d}") or \
        "fs.read" in complete(f"moorage --instance-dir {d} ops watcher fs.")
    # the shell code itself, in a real bash
    script = text(moorage(tree, "completion", "bash"))
    moorage_bin = Path(sys.executable).with_name("moorage")
    probe = (f'{script}\nCOMP_LINE="moorage --instance-dir {d} kill al"; '
             f"COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=(moorage --instance-dir {d} kill al); "
             'COMP_CWORD=4; _python_argcomplete moorage; printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{moorage_bin.parent}:{os.environ['PATH']}"})
    assert "alpha" in out.stdout.split(), out.stderr
    zsh = text(moorage(tree, "completion", "zsh"))
    assert "compdef" in zsh or "_python_argcomplete" in zsh


def test_caller_errors_do_not_count_against_the_slo(make_tree):
    tree = make_tree(TREE).start()
    for _ in range(155):
        tree.call("alpha", "fake.work")
    for _ in range(5):
        with pytest.raises(MoorageError):
            tree.call("alpha", "fake.work", {"n": "typo"})

    def merged() -> dict[str, Any] | None:
        r = tree.call("metrics", "metrics.slo")
        ops = {o["op"]: o for o in r["windows"]["1h"]["ops"]}
        w = ops.get("fake.work")
        return r if w and w["requests"] >= 160 else None

    r = wait_for(merged, "160 fake.work calls in the SLO record")
    w = {o["op"]: o for o in r["windows"]["24h"]["ops"]}["fake.work"]
    assert (w["errors"], w["caller_errors"], w["error_rate"]) == (0, 5, 0.0)
    rate = next(o for o in r["slo"] if o["name"] == "error_rate")
    assert rate["met"] is True
    out = text(moorage(tree, "slo"))
    assert "seed" not in out.lower() and "caller errors" in out
    assert not wait_pid_exit(tree.pid, 0)


STOPPING_SLOWLY = """
[[children]]
id = "stubborn"
start = "tests.fakes:FakeActor"
shutdown_ms = 60000
config = { ignore_sigterm = true }
"""


def test_an_up_while_the_tree_stops_says_it_is_stopping_not_just_running(make_tree):
    """A start right after a stop may find the old root still holding the instance: the
    refusal says so, rather than sending the user to a `down` already under way."""
    tree = make_tree(STOPPING_SLOWLY).start()
    stubborn = tree.child("stubborn")["pid"]
    tree.call("supervisor", "sup.stop")
    wait_for(lambda: not (tree.runtime_dir / "tree.json").exists(), "the tree stopping")
    try:
        up = moorage(tree, "up", "--config", str(tree.config_path), "--allow-external-actors")
        error = json.loads(up.stdout)["error"]
        assert up.returncode == 1 and error["name"] == "already_running"
        assert "starting or stopping" in error["message"], error
    finally:
        os.kill(stubborn, signal.SIGKILL)  # (the stop then ends at once)
    assert wait_pid_exit(tree.pid, 30)


def test_down_of_a_tree_stopped_whole_continues_it_and_stops_it_cleanly(make_tree):
    """(A tree stopped whole, as Ctrl-Z on `moorage up` stops it, got SIGTERM and SIGCONT at
    its root alone: the root asked its stopped children to stop, waited out each one's
    shutdown and killed them for hung, 36 s in all.)"""
    tree = make_tree(SMALL).start()
    procs = [psutil.Process(tree.pid), *descendants(tree.pid)]
    os.killpg(os.getpgid(tree.pid), signal.SIGSTOP)  # (the fixture kills it should this fail)
    out = moorage(tree, "down", "--timeout", "5")
    assert out.returncode == 0, out.stderr
    assert b"did not stop when asked" not in out.stderr and b"moorage tree stopped" in out.stdout
    assert wait_pid_exit(tree.pid, 30)
    assert_all_gone(procs)
    assert "hung" not in tree.output()
    nothing_left(tree.runtime_dir)


def test_a_call_to_an_actor_is_made_while_the_root_is_stopped(make_tree):
    """(The CLI asked the root for the actor's name first: with the root stopped, a call to
    an actor serving all along failed after 5 s.)"""
    tree = make_tree(SMALL).start()
    os.kill(tree.pid, signal.SIGSTOP)
    try:
        out = moorage(tree, "call", "alpha", "fake.work", timeout=30)
        assert out.returncode == 0, out.stderr
    finally:
        os.kill(tree.pid, signal.SIGCONT)
