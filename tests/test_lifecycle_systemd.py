"""The shipped systemd user unit: what it asks of systemd, and that systemd accepts it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "systemd" / "moorage@.service"


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT)
    return cp


def test_the_unit_is_type_notify_with_a_watchdog_and_mixed_kill_mode():
    s = unit()["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert int(s["WatchdogSec"]) > 0 and s["KillMode"] == "mixed"
    assert s["ExecStart"].endswith("moorage --instance %i up")
    assert s["ExecStop"].endswith("moorage --instance %i down")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    moorage = Path(sys.executable).with_name("moorage")
    (tmp_path / UNIT.name).write_text(UNIT.read_text().replace("%h/.local/bin/moorage",
                                                               str(moorage)))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / UNIT.name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
