"""The tree that every client's live conformance suite runs against (protocol/conformance/),
started once per test module and always taken down, and what the drivers share."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Tree

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "protocol" / "conformance"
CASES: dict[str, Any] = json.loads((CONFORMANCE / "cases.json").read_text(encoding="utf-8"))


def run_tool(tool: str, cwd: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 500) -> str:
    """`tool args...` (npm, cargo) in `cwd`, its output; the test fails with the output's
    tail when it does."""
    done = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{tool} {' '.join(args)} failed:\n{out[-8000:]}"
    return out


@pytest.fixture(scope="module")
def conformance_tree() -> Iterator[Tree]:
    # Short paths: a Unix socket path must fit in 107 bytes.
    rdir = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    tree = Tree(rdir, (CONFORMANCE / "tree.toml").read_text(encoding="utf-8"))
    try:
        tree.start()
        yield tree
    finally:
        tree.stop()
        shutil.rmtree(rdir, ignore_errors=True)
