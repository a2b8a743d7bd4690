"""What needs a thread, when none can be made (the user's RLIMIT_NPROC reached: every task of
the uid counts, so a busy machine's other programs can take the last one).

Each case runs in a child process that drops to an unprivileged uid with RLIMIT_NPROC at 1,
where the kernel refuses every new thread (a real clone failing with EAGAIN, which CPython
raises as RuntimeError); the modules are imported before the drop. Root only (only root may
change its uid), skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")

DROP = """
import os, resource, threading
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))
try:
    threading.Thread(target=lambda: None).start()
except RuntimeError:
    pass
else:
    raise SystemExit("a thread was made: the limit does not hold here")
"""


def run_limited(imports: str, body: str) -> str:
    """`body` run after `imports` with no thread to be had; its stdout."""
    code = textwrap.dedent(imports) + DROP + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_inotify_observer_whose_threads_cannot_start_closes_its_instance():
    """(Each refused fs.watch left an inotify instance and a pipe pair open: the user's 128
    instances, shared with every program of theirs, ran out.)"""
    out = run_limited("""
        import os
        from moorage.actors.watcher.guarded import InotifyObserver
    """, """
        before = sorted(os.listdir("/proc/self/fd"))
        for _ in range(5):
            try:
                InotifyObserver(object, 1.0)
            except RuntimeError as exc:
                print("refused:", exc)
        print("left:", sorted(os.listdir("/proc/self/fd")) == before)
    """)
    assert out.count("refused: can't start new thread") == 5, out
    assert "left: True" in out, out


def test_an_slo_save_that_gets_no_thread_is_kept_for_the_next_save():
    """(The record was marked saved before its writer thread failed to start: that save was
    skipped in silence, and the failure came back as a traceback every 5 s.)"""
    # (a folder the unprivileged uid can reach: pytest's tmp_path is under a 0700 one)
    where = tempfile.mkdtemp()
    os.chmod(where, 0o777)
    try:
        out = run_limited(f"""
            from pathlib import Path
            from moorage.actors.metrics.record import SloRecord
            from moorage.actors.metrics.settings import Settings
            where = Path({where!r})
        """, """
            rec = SloRecord(where / "slo.msgpack", Settings.from_config({}))
            rec.dirty = True
            rec.save(1.0)
            print("dirty:", rec.dirty, "saves:", rec.saves)
            rec.save(2.0, force=True)  # (on this thread: no thread needed)
            print("dirty:", rec.dirty, "saves:", rec.saves)
        """)
        assert "dirty: True saves: 0" in out and "dirty: False saves: 1" in out, out
    finally:
        shutil.rmtree(where, ignore_errors=True)
