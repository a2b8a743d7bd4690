"""The peer scripts of perf/peers/ on a machine without their peer: one SKIP line saying what
is missing, how to install it, exit 0, nothing started and nothing written, so that a
`python -m perf` run of every script goes on. Their figures are the scripts' own business
(perf/, not the suite); where the peer is installed, one short run checks the script still
runs end to end, writes its rows and removes its temporary directory (no figure is judged
here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from perf.peers import node_pty

ROOT = Path(__file__).resolve().parent.parent


def run_script(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
               timeout: float = 50) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOORAGE_PERF_DIR": str(tmp_path / "results"), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def assert_skipped(proc: subprocess.CompletedProcess[str], ids: str, why: str,
                   install: str, tmp_path: Path) -> None:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert install in lines[0], lines
    assert lines[1:] == [f"SKIP {ids}: {why}; nothing measured"], lines
    assert not (tmp_path / "results").exists()


def test_node_pty_script_skips_when_node_is_not_on_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = run_script(["-m", "perf.peers.node_pty", "--quick"], tmp_path,
                      env={"PATH": str(empty)})
    assert_skipped(proc, "X5", "node is not installed", "npm ci", tmp_path)


def test_ray_script_skips_when_ray_cannot_be_imported(tmp_path: Path) -> None:
    # None in sys.modules is Python's own "this module is not importable"
    proc = run_script(["-c", "import sys; sys.modules['ray'] = None; "
                             "from perf.peers.ray_actors import main; "
                             "sys.exit(main(['--quick']))"], tmp_path)
    assert_skipped(proc, "X1-X3", "ray is not installed", "pip install ray", tmp_path)


@pytest.mark.timeout(300)
@pytest.mark.skipif(node_pty.peer_missing() is not None,
                    reason=f"node-pty is not installed: {node_pty.INSTALL}")
def test_node_pty_script_runs_both_sides_and_writes_its_rows(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"  # the script's own temporary directory goes here
    tmp.mkdir()
    proc = run_script(["-m", "perf.peers.node_pty", "--quick"], tmp_path,
                      env={"TMPDIR": str(tmp)}, timeout=280)
    # exit 1 is a row that missed its target: a figure, not this test's business
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    doc = json.loads((tmp_path / "results" / "peer_node_pty.json").read_text())
    rows = {r["what"]: r for r in doc["rows"]}
    assert set(rows) == {"echo test p50: term.exec vs node-pty",
                         "echo test p99: term.exec vs node-pty",
                         "echo test p50: integrated bash, raw PTY",
                         "echo test p50: bare bash, raw PTY",
                         "cat 5 MB, last byte"}, rows
    assert all(r["measured"] > 0 and r["limit"] > 0 for r in rows.values()), rows
    assert doc["extra"]["node_pty"] == "1.1.0"
    assert list(tmp.glob("x5-*")) == [], "the script left its temporary directory"
