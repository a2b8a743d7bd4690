"""The Rust client in remote mode learns which ops are resumable: term.exec, whose terminal is
killed while it runs, is resent unpinned over the new tcp connection and answered by the
terminal's successor, which took the command over (PROTOCOL.md section 10, "Resumable ops");
pinned, the successor would refuse it `outcome_unknown`.

A real terminal tree on loopback tcp with CURVE, called by
protocol/rust/examples/remote_exec.rs; the test kills the terminal once the command runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from moorage.protocol import curve
from moorage.protocol.client import Client
from tests.conftest import ROOT
from tests.remote_support import CRATE, NetnsTree, free_port_block, rust_example
from tests.terminal_support import make_home, terminal_tree
from tests.test_remote import keys  # noqa: F401  (a fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

PROGRAM = CRATE / "target" / "debug" / "examples" / "remote_exec"
PORTS = 20  # two for each actor of the tree and metrics' `in`, with room to spare


@pytest.fixture(scope="module")
def built() -> None:
    rust_example("remote_exec")


def test_a_remote_rust_clients_exec_is_answered_by_the_terminals_successor(
        built: None, runtime_dir: Path, keys: tuple, tmp_path: Path) -> None:  # noqa: F811
    _, client_dir, _ = keys
    listen = f'[listen]\nendpoint = "tcp://127.0.0.1:{free_port_block(PORTS)}"\n'
    tree = NetnsTree(runtime_dir, listen + terminal_tree(), None)
    try:
        tree.start()
        assert "terminal" in tree.connection_file()["remote"]["endpoints"]
        home = make_home(tmp_path)
        (home / "go").write_text("")
        victim = tree.child("terminal")["pid"]
        proc = subprocess.Popen(
            [str(PROGRAM), str(runtime_dir / "tree.json"), str(home),
             "touch ~/started; while [ -e ~/go ]; do sleep 0.05; done; echo R$((6*7))"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, curve.KEYS_ENV: str(client_dir)})
        try:
            assert proc.stdout is not None
            made = proc.stdout.readline()
            assert made, proc.communicate(timeout=60)[1][-3000:]
            assert json.loads(made)["resumable"] is True  # learned from sys.info
            wait_for(lambda: (home / "started").exists(), "the command running", 30)
            os.kill(victim, signal.SIGKILL)
            with Client(tree.runtime_dir, timeout=10.0) as other:
                wait_for(lambda: other.call("terminal", "sys.info")["pid"] != victim,
                         "the successor", 30)
            (home / "go").unlink()  # the same loop, in the same shell, ends now
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"exit_code": 0, "output": "R42"}
        assert tree.child("terminal")["pid"] != victim
    finally:
        tree.stop()
