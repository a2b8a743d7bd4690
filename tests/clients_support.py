"""The tree that every client's live conformance suite runs against (protocol/conformance/),
started once per test module and always taken down, and what the drivers share."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Tree

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / "protocol" / "conformance"
CASES: dict[str, Any] = json.loads((CONFORMANCE / "cases.json").read_text(encoding="utf-8"))


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
