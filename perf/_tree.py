"""Start and stop a real tree for a benchmark (the same `moorage up` a user runs)."""

from __future__ import annotations

import compileall
import functools
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("moorage.actors", "moorage.protocol", "moorage.supervisor")
NOT_OURS = re.compile(r"/(node_modules|target)/")  # the clients' packages and builds


@functools.cache
def compile_package() -> bool:
    """Write the package's bytecode, as `pip install` does, and say whether it is all there
    (once a process: every tree a benchmark starts, BenchTree.start, asks first).

    A tree started from a checkout whose bytecode is not written (an editable install with
    PYTHONDONTWRITEBYTECODE set, as some CI images and containers have it) compiles every
    module from source in every interpreter it starts: `moorage up` took 1.6 s that way
    against 0.9 with bytecode. A benchmark of a start measures what an install runs, and
    says so when it cannot (a read-only install without bytecode)."""
    ok = True
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for where in (spec.submodule_search_locations or []) if spec else []:
            try:
                ok = compileall.compile_dir(where, quiet=2, rx=NOT_OURS) and ok
            except OSError:
                ok = False
    return bool(ok)


class BenchTree:
    def __init__(self, config: str | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args  # more `moorage up` options
        self.dir = Path(tempfile.mkdtemp(prefix="mp-", dir="/tmp"))
        self.config = None
        if config is not None:
            self.config = self.dir / "moorage.toml"
            self.config.write_text(config)
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start `moorage up`; returns seconds until every actor answered sys.ping."""
        cmd = [sys.executable, "-m", "moorage.supervisor.cli",
               "--instance-dir", str(self.dir), "up",
               "--log-level", "WARNING",
               # a benchmark killed before it stops the tree leaves none behind for long
               "--parent", str(os.getpid())]
        if self.config:
            cmd += ["--config", str(self.config)]
        cmd += self.extra_args
        compile_package()
        t0 = time.perf_counter()
        # (its logs and SLO record in its own dir, removed with it: not one more
        # ~/.local/state/moorage/mp-* a run)
        env = dict(os.environ, MOORAGE_STATE_DIR=str(self.dir / "state"))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        with Client(self.dir, timeout=30.0) as c:
            names = c.call("supervisor", "sup.endpoints")
            for name in names:
                c.call(name, "sys.ping")
        took = time.perf_counter() - t0
        # The connection file is written with the ready line, a moment after every actor
        # answers: a benchmark that reads it (remote mode) waits for it.
        conn = self.dir / "tree.json"
        deadline = time.monotonic() + 30
        while not conn.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no {conn} from `moorage up`")
            time.sleep(0.01)
        return took

    def client(self, **kw: object) -> Client:
        return Client(self.dir, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with Client(self.dir, timeout=5.0) as c:
                try:
                    c.call("supervisor", "sup.stop")
                except MoorageError:
                    os.killpg(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> BenchTree:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
