"""What the logs say of a failure: its traceback, never the values of its frames' variables
(loguru's `diagnose` would write them: a CURVE secret, a file's contents)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent("""
    from loguru import logger
    from moorage.actors.runtime.logs import install_handlers

    install_handlers()

    def fail(secret):
        raise ValueError("boom" + secret[:0])

    try:
        fail("s3cr3t-" + "value")
    except ValueError:
        logger.exception("it failed")
    """)


def test_a_logged_failure_has_its_traceback_and_not_its_variables_values(tmp_path: Path):
    script = tmp_path / "failing.py"  # (a file: its lines show in the traceback)
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=50, env={**os.environ, "MOORAGE_STATE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "it failed" in out.stderr and "ValueError: boom" in out.stderr
    assert 'fail("s3cr3t-" + "value")' in out.stderr  # (the line, as written)
    assert "s3cr3t-value" not in out.stderr
