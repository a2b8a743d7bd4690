"""`moorage top` on a real tree, run in a real terminal (tmux) and read off its screen.

Each tmux server has its own socket name and is killed at teardown, whatever happened. The
screen is read with `capture-pane` until it shows the fact or a deadline passes; the facts
themselves are caused through the tree (a kill through the supervisor) and confirmed by its
events, so the only thing polled is the screen, which announces nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import ROOT

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")]

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "resource"
start = "moorage.actors.resource.actor:ResourceActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[actor.resource]
interval_s = 0.2
[targets]
"fake.work" = [100000, 200000, 400000]
"""

# The metrics actor is not restarted when it dies: top must go on without it.
TEMPORARY_METRICS = TREE.replace('id = "metrics"\n', 'id = "metrics"\nrestart = "temporary"\n')


class Screen:
    """One tmux server (its own socket) running one command in a 160x50 pane."""

    def __init__(self, status_dir: Path) -> None:
        self.socket = f"moorage-top-{uuid.uuid4().hex[:10]}"
        self.status = status_dir / "top.status"
        self.started = False

    def tmux(self, *args: str) -> str:
        # The server's environment is the pane's: pytest's COLUMNS/LINES (80x24) would make
        # rich draw for a smaller terminal than the pane.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        out = subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                             capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)
        assert out.returncode == 0, f"tmux {args}: {out.stderr}"
        return out.stdout

    def run(self, argv: list[str], size: tuple[int, int] = (160, 50)) -> None:
        # A placeholder first, so remain-on-exit (the screen stays readable after the command
        # ends) is set before the real command can exit. The exit status is written by a shell
        # around the command: tmux itself sometimes reaps its pane's process late.
        self.tmux("new-session", "-d", "-s", "top", "-x", str(size[0]), "-y", str(size[1]),
                  "-c", str(ROOT), "cat")
        self.started = True
        self.tmux("set-option", "-t", "top", "remain-on-exit", "on")
        tmp = f"{self.status}.tmp"
        # `trap : INT`: Ctrl-C reaches the command (the trap is reset for it) while the shell
        # waits it out and still writes the status.
        wrapped = ["sh", "-c", f'trap : INT; "$@"; echo $? > {shlex.quote(tmp)} && '
                   f'mv {shlex.quote(tmp)} {shlex.quote(str(self.status))}', "sh", *argv]
        self.tmux("respawn-pane", "-k", "-t", "top", shlex.join(wrapped))

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def history(self) -> str:
        """The screen and what scrolled off it."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", "top")

    def wait(self, pred: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        """Until the captured screen satisfies `pred`, or fail showing the last screen."""
        end = time.monotonic() + timeout
        while True:
            text = self.text()
            if pred(text):
                return text
            if time.monotonic() > end:
                pytest.fail(f"the screen never showed {what} within {timeout}s:\n{text}")
            time.sleep(0.05)  # sleep-ok: a bounded poll of a screen, which announces nothing

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The command's exit status, once the shell around it has written it."""
        end = time.monotonic() + timeout
        while not self.status.exists():
            if time.monotonic() > end:
                pytest.fail(f"top did not exit within {timeout}s:\n{self.history()}")
            time.sleep(0.05)  # sleep-ok: a bounded poll of a file nothing announces
        return int(self.status.read_text())

    def close(self) -> None:
        if self.started:
            subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                           timeout=30)
        # The server leaves its socket file behind (tmux 3.3): one per test, for ever.
        tmux_dir = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (tmux_dir / self.socket).unlink(missing_ok=True)


@pytest.fixture
def screen(tmp_path: Path) -> Iterator[Screen]:
    s = Screen(tmp_path)
    yield s
    s.close()


def top_argv(runtime_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "moorage.supervisor.cli",
            "--instance-dir", str(runtime_dir), "top",
            *extra]


def row(text: str, cid: str) -> list[str] | None:
    """The cells of the tree table's row for `cid`: id, type, state, pid, uptime, restarts."""
    for line in text.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[0] == cid and cells[1] in ("worker", "supervisor"):
            return cells
    return None


def restarts_of(text: str, cid: str) -> int | None:
    cells = row(text, cid)
    return int(cells[5]) if cells and cells[5].isdigit() else None


# --- one frame -----------------------------------------------------------------------------------


def test_top_without_a_tree_says_so_and_exits_4(runtime_dir):
    out = subprocess.run(top_argv(runtime_dir, "--once"), capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 4
    assert "no moorage tree is running" in out.stderr and out.stdout == ""


def test_a_bad_interval_is_a_usage_error(make_tree):
    tree = make_tree(TREE).start()
    out = tree.cli("top", "--interval", "0")
    assert out.returncode == 2 and "--interval" in out.stderr


def test_top_once_prints_the_tree_pressure_ops_and_alerts(make_tree):
    tree = make_tree(TREE).start()
    for _ in range(30):
        tree.call("alpha", "fake.work")
    # The actor pushes about once a second; the frame shows what metrics has merged.
    end = time.monotonic() + 20
    while not tree.call("metrics", "metrics.query", {"actor": "alpha", "op": "fake.work"},
                        idempotent=True)["ops"]:
        assert time.monotonic() < end, "alpha's ops never reached metrics"
    out = subprocess.run(top_argv(tree.runtime_dir, "--once", "--config",
                                  str(tree.config_path)),
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "\x1b[?1049h" not in text  # no alternate screen
    for cid in ("metrics", "resource", "alpha"):
        assert row(text, cid)[2] == "running", text
    assert re.search(r"pressure \d+/100\s+level \w+\s+quality \d/3", text), text
    (ops,) = [ln.split() for ln in text.splitlines() if ln.split()[:2] == ["alpha", "fake.work"]]
    assert ops[2] == f"{30 / 60:.1f}"  # calls per second over the 60 s window
    assert ops[4].endswith("/100,000") and ops[5].endswith("/200,000")  # value/target


# --- live, in a terminal -------------------------------------------------------------------------


def test_top_shows_a_killed_actors_restart_count_go_up_and_q_quits(make_tree, screen):
    tree = make_tree(TREE).start()
    screen.run(top_argv(tree.runtime_dir, "--interval", "0.5"))
    text = screen.wait(lambda t: restarts_of(t, "alpha") == 0, "alpha running with 0 restarts")
    old_pid = row(text, "alpha")[3]
    assert "pressure" in text

    tree.call("supervisor", "sup.kill", {"child": "alpha", "signal": "SIGKILL"})
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    # The count goes up when the death is handled, the new pid once the successor is ready.
    text = screen.wait(lambda t: restarts_of(t, "alpha") == 1 and row(t, "alpha")[2] == "running",
                       "alpha running again with a restart count of 1")
    assert row(text, "alpha")[3] == str(ev["pid"]) != old_pid
    assert "restarted" in text  # the event, in the alerts and events panel

    screen.tmux("send-keys", "-t", "top", "q")
    assert screen.wait_exit() == 0


def test_top_keeps_running_with_an_actor_down_and_ctrl_c_quits(make_tree, screen):
    tree = make_tree(TEMPORARY_METRICS).start()
    screen.run(top_argv(tree.runtime_dir, "--interval", "0.3"))
    screen.wait(lambda t: (row(t, "metrics") or [""] * 3)[2] == "running", "metrics running")

    tree.call("supervisor", "sup.kill", {"child": "metrics", "signal": "SIGKILL"})
    tree.wait_event(lambda e: e["event"] == "exited" and e["child"] == "metrics")
    text = screen.wait(lambda t: "metrics: not answering" in t
                       and (row(t, "metrics") or [""] * 3)[2] in ("failed", "stopped"),
                       "metrics down")
    assert row(text, "alpha")[2] == "running"
    assert not screen.status.exists()  # still drawing

    # Still refreshing: another kill shows up too.
    tree.call("supervisor", "sup.kill", {"child": "alpha", "signal": "SIGKILL"})
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "alpha")
    screen.wait(lambda t: restarts_of(t, "alpha") == 1, "alpha's restart count at 1")

    screen.tmux("send-keys", "-t", "top", "C-c")
    assert screen.wait_exit() == 0


def test_top_leaves_with_a_clear_message_when_the_tree_stops(make_tree, screen):
    tree = make_tree(TREE).start()
    screen.run(top_argv(tree.runtime_dir, "--interval", "0.3"))
    screen.wait(lambda t: restarts_of(t, "alpha") == 0, "the tree")
    with Client(tree.runtime_dir, timeout=10.0) as c:
        c.call("supervisor", "sup.stop")
    assert screen.wait_exit() == 4
    assert "moorage: the tree in" in screen.history()


# --- small and large terminals -------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_top_stays_readable_in_80x24_and_uses_200x50(make_tree, screen, size):
    tree = make_tree(TREE).start()
    # many ops (about 30 with traffic), and an alert raised on one of them
    for actor in ("metrics", "resource", "alpha", "supervisor"):
        for op in ("sys.ping", "sys.info", "sys.hello"):
            for _ in range(3):
                tree.call(actor, op)
    for _ in range(25):
        with pytest.raises(MoorageError):
            tree.call("alpha", "fake.work", {"fail": True})
    for n in range(12):
        tree.call("alpha", "fake.publish", {"topic": f"t{n}", "n": 1})
    tree.wait_event(lambda e: e["event"] == "alert" and e["alert"]["state"] == "raised")
    screen.run(top_argv(tree.runtime_dir, "--interval", "0.5"), size)
    text = screen.wait(lambda t: "active failure_rate" in t and "fake.work" in t
                       and row(t, "alpha") is not None, "the tree, the ops and the alert")
    lines = text.splitlines()
    assert len(lines) <= size[1] and all(len(line) <= size[0] for line in lines)
    assert "…" not in text  # columns drop whole; none is cut
    for cid in ("metrics", "resource", "alpha"):
        assert row(text, cid)[2] == "running", text
    if size == (80, 24):
        assert "quieter ops" in text  # cut to what fits, the busiest kept
    else:
        assert "FALLBACK" in text and "CLIENT P99" in text
    screen.tmux("send-keys", "-t", "top", "q")
    assert screen.wait_exit() == 0


def test_rows_of_dropped_columns_only_are_not_printed_as_blank_lines():
    """An op with two clients is two rows, the second with its CLIENT cells only: where the
    CLIENT columns do not fit (a narrow screen), that row printed as a blank line, and took
    one of the screen's few."""
    from rich.console import Console

    from moorage.supervisor.cli.top_view import OPS_COLS, table

    rows = [["watcher", "fs.read", "9.0", "0.0%", "24", "427", "editor", "30", "500"],
            ["", "", "", "", "", "", "cli", "40", "600"],
            ["metrics", "metrics.query", "0.1", "0.0%", "687", "851", "-", "-", "-"]]
    for width, rows_shown in ((60, 2), (200, 3)):  # (60: no CLIENT column fits)
        with open(os.devnull, "w") as null:
            console = Console(width=width, record=True, file=null)
            console.print(table("ops", OPS_COLS, rows, width))
        lines = console.export_text().splitlines()[3:]  # (below the title and the header)
        assert len(lines) == rows_shown and all(ln.strip() for ln in lines), lines
