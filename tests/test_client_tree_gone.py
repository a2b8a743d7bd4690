"""A client that found its tree by instance, once that tree has ended, is told `not_running`
at the call's first unanswered attempt or dropped connection, not `unavailable` (or
`timeout`) at its whole budget. On a real tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import Tree

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[supervisor]
[[children]]
id = "one"
start = "tests.fakes:FakeActor"
"""


def test_a_client_of_a_tree_that_ended_is_told_not_running(monkeypatch):
    xdg = Path(tempfile.mkdtemp(prefix="nr-", dir="/tmp"))  # (short: socket paths)
    tree = None
    try:
        os.chmod(xdg, 0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        monkeypatch.delenv("MOORAGE_RUNTIME_DIR", raising=False)
        rdir = xdg / "moorage" / "gone"
        rdir.mkdir(parents=True, mode=0o700)
        os.chmod(rdir.parent, 0o700)
        tree = Tree(rdir, CONFIG).start()
        with Client(instance="gone", timeout=20.0) as c:
            assert c.call("one", "sys.ping")
            down = tree.cli("down")
            assert down.returncode == 0, (down.stdout, down.stderr)
            with pytest.raises(MoorageError) as gone:
                c.call("one", "sys.ping")
            assert gone.value.name == "not_running", gone.value
            with pytest.raises(MoorageError) as again:  # (not circuit_open)
                c.call("one", "sys.ping")
            assert again.value.name == "not_running", again.value
    finally:
        if tree is not None:
            tree.stop()
        shutil.rmtree(xdg, ignore_errors=True)
