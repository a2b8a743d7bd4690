"""A full runtime directory, on a real tmpfs this test mounts: the terminal's session records
(actors/terminal/specs.py) are written again once space returns, and said to be missing
meanwhile; `moorage up` refuses such a directory naming the lock, and leaves nothing in it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.runtime.loop import Loop
from moorage.actors.terminal.specs import SpecStore
from moorage.protocol.envelope import StreamMessage
from tests.conftest import ROOT, Tree
from tests.terminal_support import env_for, make_home, terminal_tree
from tests.waiting import turn_until

pytestmark = pytest.mark.timeout(180)

CHUNK = b"\0" * (64 << 10)
SPEC = {"shell": "bash", "args": [], "cwd": None, "env": {}, "cols": 80, "rows": 24,
        "integration": True, "recreated": 0}


@contextlib.contextmanager
def small_tmpfs(size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` KiB mounted (0700) on a fresh short path under /tmp, unmounted
    and removed however the test ends; the test is skipped where no mount is permitted."""
    where = Path(tempfile.mkdtemp(prefix="mt-fs-", dir="/tmp"))
    mount = shutil.which("mount")
    made = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
        capture_output=True, text=True) if mount else None
    if made is None or made.returncode != 0:
        where.rmdir()
        why = made.stderr.strip() if made is not None else "no mount command"
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root or CAP_SYS_ADMIN): {why}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)  # (something held it)
        where.rmdir()


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill the file system `fs` to its last byte, then give `leave` bytes back (whole pages
    on tmpfs); returns the filler, whose removal gives the space back."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    size = 0
    try:
        while True:
            size += os.write(fd, CHUNK)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        if leave:
            os.ftruncate(fd, size - leave)
        os.close(fd)
    return filler


def on_disk(path: Path) -> set[str]:
    """The sessions a successor would find recorded (it reads the file as we do)."""
    return set(SpecStore(path).specs)


def test_session_records_a_full_disk_refused_are_written_once_space_returns(loop: Loop):
    with small_tmpfs(256) as fs:
        path = fs / "terminal.sessions"
        alerts: list[dict[str, Any]] = []
        store = SpecStore(path, loop.call_later, alerts.append)
        store.put("a", SPEC)
        store.put("c", SPEC)
        filler = fill(fs)
        store.put("b", SPEC)
        store.drop("c")  # (closed while the disk is full: a successor must not recreate it)
        assert store.dirty and store.unrecorded() == ["b"]
        assert on_disk(path) == {"a", "c"}
        assert [(x["kind"], x["sessions"]) for x in alerts] == [("sessions_unrecorded", ["b"])]
        assert "No space left" in alerts[0]["error"] and alerts[0]["severity"] == "warning"

        # tried again with no change to the sessions, while the disk stays full; told once
        tried = store.failed
        turn_until(loop, lambda: store.failed > tried)
        assert store.dirty and len(alerts) == 1

        filler.unlink()
        turn_until(loop, lambda: not store.dirty)
        assert on_disk(path) == {"a", "b"}
        assert [(x["kind"], x["sessions"]) for x in alerts[1:]] == [("sessions_recorded", ["b"])]
        assert store.info() == {"dirty": False, "unrecorded": [], "failed": store.failed,
                                "error": None}


def next_alert(alerts: Any, kind: str, timeout: float = 30) -> dict[str, Any]:
    """The next `term.alert` of `kind` on the subscription `alerts`."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ev = alerts.next(timeout=left)
        if isinstance(ev, StreamMessage) and ev.body.get("kind") == kind:
            return ev.body
    pytest.fail(f"no term.alert {kind} within {timeout} s")


def recreated(events: Any, sessions: set[str], timeout: float = 60) -> None:
    """Until each of `sessions` was reported `lost`, then `recreated`, on term.session."""
    seen: dict[str, list[str]] = {sid: [] for sid in sessions}
    deadline = time.monotonic() + timeout
    while any(said[-1:] != ["recreated"] for said in seen.values()):
        left = deadline - time.monotonic()
        assert left > 0, f"sessions not recreated in time: {seen}"
        ev = events.next(timeout=left)
        if isinstance(ev, StreamMessage) and ev.body.get("session") in seen:
            seen[ev.body["session"]].append(ev.body["event"])
    assert all(said == ["lost", "recreated"] for said in seen.values()), seen


def test_a_session_created_on_a_full_runtime_dir_is_recreated_once_space_returned(tmp_path):
    """The session b, made while the runtime dir is full, is said to be unrecorded; once
    space is back its record lands by itself, so the terminals supervisor's death recreates
    it as it does a (made with space)."""
    with small_tmpfs(2048) as fs:
        runtime = fs / "rt"
        runtime.mkdir(mode=0o700)
        tree = Tree(runtime, terminal_tree())
        tree.out = tmp_path / "up.out"  # (the tree's console off the disk that fills)
        try:
            tree.start()
            c = tree.client
            alerts = c.subscribe("terminal", ["term.alert"], from_seq=1)
            args = {"shell": "bash", "env": env_for(make_home(tmp_path))}
            a = c.call("terminal", "term.create", args, timeout=30)["session"]
            filler = fill(fs)
            b = c.call("terminal", "term.create", args, timeout=30)["session"]
            assert next_alert(alerts, "sessions_unrecorded")["sessions"] == [b]
            records = c.call("terminal", "sys.info")["session_records"]
            assert records["dirty"] and records["unrecorded"] == [b]

            filler.unlink()
            assert next_alert(alerts, "sessions_recorded")["sessions"] == [b]
            assert not c.call("terminal", "sys.info")["session_records"]["dirty"]

            events = c.subscribe("terminal", ["term.session"], from_seq=1)
            os.kill(tree.child("terminals")["pid"], signal.SIGKILL)
            recreated(events, {a, b})
            r = c.call("terminal", "term.exec", {"session": b, "command": "echo alive"},
                       timeout=30)
            assert (r["exit_code"], r["output"]) == (0, "alive")
            alerts.close()
            events.close()
        finally:
            tree.stop()


def test_up_on_a_full_runtime_dir_names_the_lock_and_leaves_nothing_there(tmp_path):
    config = tmp_path / "moorage.toml"
    config.write_text(terminal_tree())
    with small_tmpfs(256) as fs:
        runtime = fs / "rt"
        runtime.mkdir(mode=0o700)
        fill(fs)
        r = subprocess.run(
            [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(runtime),
             "up", "--config", str(config), "--parent", str(os.getpid())],
            capture_output=True, text=True, cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 1, r
        said = json.loads(r.stdout.strip().splitlines()[-1])
        assert said["moorage"] == "failed" and said["error"]["name"] == "start_failed"
        assert str(runtime / "lock") in said["error"]["message"]
        assert "No space left" in said["error"]["message"]
        assert sorted(p.name for p in runtime.iterdir()) == []
