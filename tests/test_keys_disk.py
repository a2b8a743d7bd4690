"""`moorage keys init` on a nearly full disk (a real tmpfs this test mounts): the run that
fails names the file and leaves no part of one; a run once space is back completes the
pairs, the server's public key included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moorage.protocol import curve
from tests.conftest import ROOT
from tests.test_terminal_specs_disk import fill, small_tmpfs

pytestmark = pytest.mark.timeout(120)

PAGE = 4096  # what tmpfs gives out at a time: room for one certificate, not two


def keys_init(keys: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "moorage.supervisor.cli", "keys", "init"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "MOORAGE_KEYS_DIR": str(keys)})


def test_keys_init_on_a_full_disk_leaves_no_part_of_a_file_and_a_later_run_completes():
    with small_tmpfs(256) as fs:
        keys = fs / "keys"
        server_secret = keys / f"{curve.SERVER}{curve.SECRET_SUFFIX}"
        server_public = keys / f"{curve.SERVER}{curve.PUBLIC_SUFFIX}"
        filler = fill(fs, leave=PAGE)

        failed = keys_init(keys)
        assert failed.returncode == 1, failed
        assert "No space left on device" in failed.stderr
        assert str(server_public) in failed.stderr  # the file that could not be written
        # the disk took the server's secret, not its public half; nothing else is there
        assert sorted(p.name for p in keys.iterdir()) == sorted(
            [curve.ALLOWED, server_secret.name])

        filler.unlink()
        done = keys_init(keys)
        assert done.returncode == 0, done
        public = curve.read_certificate(server_public, secret=False).public
        assert public == curve.read_certificate(server_secret, secret=True).public
        for name in (curve.SERVER, curve.CLIENT):
            curve.load_pair(keys, name)
        assert not [p.name for p in keys.iterdir() if p.name.endswith(".tmp")]
