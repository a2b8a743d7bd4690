"""The tree that every client's live conformance suite runs against (protocol/conformance/),
started once per test module and always taken down, and what the drivers share."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Tree, module_tree

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
    assert done.returncode == 0, f"{tool} {' '.join(args)} failed:\n{failures(out)}{out[-4000:]}"
    return out


def failures(out: str) -> str:
    """What a long run says of its failures, before its tail: node's `not ok` entries with
    the lines after each, cargo's `panicked` and `---- ... stdout ----` ones."""
    lines = out.splitlines()
    picked: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("not ok") or "panicked at" in line or line.startswith("---- "):
            picked += [*lines[i:i + 40], "..."]
    return "\n".join(picked)[:12000] + ("\n" if picked else "")


@pytest.fixture(scope="module")
def conformance_tree() -> Iterator[Tree]:
    yield from module_tree((CONFORMANCE / "tree.toml").read_text(encoding="utf-8"), "mc-")
