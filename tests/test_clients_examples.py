"""The editor examples run as CI runs them: examples/typescript/extension_host.mjs and
examples/rust (`editor`), each once adopting a running tree and once starting its own (and
stopping it, leaving no process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from moorage.supervisor.cli.common import tree_pid
from tests.clients_support import ROOT, conformance_tree  # noqa: F401  (a fixture)
from tests.conftest import Tree

pytestmark = pytest.mark.timeout(900)

TS = ROOT / "examples" / "typescript"
RUST = ROOT / "examples" / "rust"
MOORAGE = Path(sys.executable).with_name("moorage")
TARGET = str(ROOT / "protocol" / "rust" / "target")  # one build for the crate and the example


def run(cmd: list[str], cwd: Path, runtime_dir: Path, timeout: float = 120) -> str:
    env = {**os.environ, "MOORAGE_RUNTIME_DIR": str(runtime_dir), "MOORAGE_BIN": str(MOORAGE),
           "CARGO_TARGET_DIR": TARGET}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    return done.stdout


@pytest.fixture(scope="module")
def built() -> None:
    for tool in ("node", "npm", "cargo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: .ci/run installs what the examples need")
    ts = ROOT / "protocol" / "typescript"
    if not (ts / "node_modules" / "zeromq").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ts, check=True, timeout=300)
    subprocess.run(["npm", "run", "build"], cwd=ts, check=True, timeout=300,
                   capture_output=True)
    if not (TS / "node_modules" / "moorage-client").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=TS, check=True, timeout=300)
    subprocess.run(["cargo", "build", "--locked", "--bin", "editor"], cwd=RUST, check=True,
                   timeout=800, capture_output=True,
                   env={**os.environ, "CARGO_TARGET_DIR": TARGET})


@pytest.fixture
def empty_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="me-", dir="/tmp"))
    try:
        yield d
    finally:
        pid = tree_pid(d)
        if pid is not None and pid > 0 and psutil.pid_exists(pid):
            os.kill(pid, 9)  # an example that failed half way: nothing may stay behind
        shutil.rmtree(d, ignore_errors=True)


COMMANDS = {
    "typescript": (["node", "extension_host.mjs"], TS),
    "rust": (["cargo", "run", "--locked", "--quiet", "--bin", "editor"], RUST),
}


def check_session(out: str) -> None:
    assert 'exit 0: "hello from moorage"' in out, out
    assert "the command's line among them" in out, out
    assert "watched: " in out and "notes.txt" in out, out
    assert out.rstrip().endswith("ok"), out


@pytest.mark.parametrize("language", sorted(COMMANDS))
def test_the_example_adopts_a_running_tree(language: str, built: None,
                                           conformance_tree: Tree) -> None:  # noqa: F811
    cmd, cwd = COMMANDS[language]
    out = run(cmd, cwd, conformance_tree.runtime_dir)
    assert out.startswith("adopted the tree"), out
    check_session(out)
    assert conformance_tree.call("supervisor", "sys.ping")  # left running: it was adopted


@pytest.mark.parametrize("language", sorted(COMMANDS))
def test_the_example_starts_a_tree_and_stops_it(language: str, built: None,
                                                empty_dir: Path) -> None:
    cmd, cwd = COMMANDS[language]
    out = run(cmd, cwd, empty_dir)
    assert out.startswith("started the tree"), out
    check_session(out)
    assert "stopped the tree it started" in out
    pid = int(out.split("(pid ")[1].split(")")[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert tree_pid(empty_dir) is None
