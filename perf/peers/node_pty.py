"""X5: node-pty 1.1 (VS Code's pty host library) beside moorage's terminal, in one run.

A user who wants a shell on a pseudo-terminal driven from their own process would otherwise
pick node-pty, as VS Code's pty host does. Both drive bash here, with the same start-up files
(Debian's /etc/bash.bashrc, then a home whose .bashrc sets only PS1), each warm (a few hundred
commands first), and each comparison alternates between them in blocks, so both see the
machine's load of the moment:

  echo test    one command and its answer, one at a time. node-pty (perf/peers/node_pty/
               bench.js): `echo test\\r` written to a bare bash, the clock stopped in the
               onData callback that brings "test" on a line of its own (the command's
               output: where ours is answered), the prompt after it awaited off the clock
               before the next command. Ours: `term.exec "echo test"` through the Python
               client on the default tree (the parser actor on the path), answered at the
               command's end marker, as P3; the next command waits for the prompt on the
               session's stream, as P3's do.
               Beside them, informative, on a PTY read by this process: our integrated bash
               alone (P3's limit without its zmq part: what the shell integration costs
               before moorage does anything; to its end marker, as term.exec), and node-pty's
               bare bash (to its output line, as bench.js: node-pty's own cost is the
               difference).
  cat          `cat` of a file of `--mb` MB of "Q" at the prompt: the time from the command
               written until the file's last byte has arrived (node-pty: in onData; ours: in
               a subscriber of the session's output stream, as P4), then the prompt awaited
               off the clock; the best of `--rounds`, in turn. Both sides do the same work on
               the way: the file's first "Q" found once, then the chunks' lengths added up
               (no scan of every byte).

The "limit" column is node-pty's figure; the ratio is ours / node-pty's. Targets
(shared/targets.md X5): term.exec p50 <= 4x node-pty's round trip (our integrated bash alone
costs about 2x a bare one), cat >= node-pty's rate.

Install the peer, once (Node.js 18 or later; node-pty builds its addon with node-gyp on
Linux, so a C++ compiler, make and python3 too):

    cd perf/peers/node_pty && npm ci

Without node or the package this prints how to install it, then one SKIP line, and exits 0.

    python -m perf.peers.node_pty [--n 3000] [--mb 50] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from moorage.actors.terminal.keeper.spawn import spawn_on_pty
from perf._report import Report, Row, percentiles, plot_percentiles
from perf._tree import BenchTree
from perf.p3_p4_terminal import TREE, RawPty, bench_env, exec_us, streamed_mb_s

PEER_DIR = Path(__file__).parent / "node_pty"
INSTALL = f"cd {PEER_DIR} && npm ci   (Node.js 18+, and a C++ toolchain for node-gyp)"
PROMPT = "x5$ "  # bash's PS1 on both sides; no "Q" in it, nor in the paths (the cat's first
# "Q" is where the file starts)


def peer_missing() -> str | None:
    """Why the peer cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    package = PEER_DIR / "node_modules" / "node-pty"
    if not package.is_dir():
        return "node-pty is not installed"
    # where node-pty's loader looks for its addon (lib/utils.js); an install without its
    # build step (npm ci --ignore-scripts, or no compiler) has the package but not this
    if not any((package / d / "pty.node").is_file() for d in ("build/Release", "build/Debug")) \
            and not list((package / "prebuilds").glob("linux-*/pty.node")):
        return "node-pty's native addon is not built (its install script needs a C++ toolchain)"
    return None


class BarePty:
    """The bash node-pty runs (same flags, files, environment and window), on a PTY read by
    this process: node-pty's round trip without node-pty, and the integrated bash's without
    the integration, to tell the three costs apart."""

    def __init__(self, home: Path) -> None:
        argv = ["bash", "--init-file", str(home / ".bashrc"), "-i"]
        self.sp = spawn_on_pty("/bin/bash", argv, bench_env(home), str(home), 80, 24)
        self.prompt = PROMPT.encode()
        self.read_until(lambda buf: self.prompt in buf)

    def read_until(self, done: Callable[[bytes], bool], buf: bytes = b"",
                   timeout: float = 10.0) -> bytes:
        """Read until `done` holds of what was read (after `buf`, read before); all of it."""
        end = time.monotonic() + timeout
        while not done(buf):
            if not select.select([self.sp.master], [], [], max(0, end - time.monotonic()))[0]:
                raise TimeoutError(f"bare bash: not done in {timeout} s: {buf[-200:]!r}")
            buf += os.read(self.sp.master, 1 << 16)
        return buf

    def round_trip(self) -> float:
        """As bench.js's: `echo test` written, timed until "test" on a line of its own (the
        command's output), then the prompt after it awaited off the clock."""
        def output(buf: bytes) -> int:
            return max(buf.find(b"\ntest\r\n"), buf.find(b"\rtest\r\n"))

        t0 = time.perf_counter()
        os.write(self.sp.master, b"echo test\r")
        buf = self.read_until(lambda b: output(b) >= 0)
        took = (time.perf_counter() - t0) * 1e6
        self.read_until(lambda b: self.prompt in b, buf[output(buf) + 7:])
        return took

    def close(self) -> None:
        os.close(self.sp.master)
        os.waitpid(self.sp.pid, 0)


class NodePty:
    """bench.js in a process of its own, with its warm bash: one JSON line per command."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            ["node", str(PEER_DIR / "bench.js"), "--home", str(home), "--prompt", PROMPT],
            cwd=PEER_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        self.buf = b""
        ready = self._line(60)
        self.version: str = ready["version"]

    def _line(self, timeout: float) -> dict:
        """The next JSON line bench.js prints, within `timeout` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if not select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
                raise TimeoutError(f"bench.js: no answer in {timeout} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._gone()
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        doc = json.loads(line)
        if "error" in doc:
            raise RuntimeError(f"bench.js: {doc['error']}")
        return doc

    def _gone(self) -> RuntimeError:
        """bench.js has ended: the error that says how, with the end of its stderr."""
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        return RuntimeError(f"bench.js ended ({self.proc.wait()}): {err.strip()[-2000:]}")

    def ask(self, command: str, timeout: float = 300) -> dict:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._gone() from None
        return self._line(timeout)

    def echo_us(self, n: int) -> list[float]:
        return self.ask(f"echo {n}")["echo_us"]

    def cat_mb_s(self, path: Path, size: int) -> float:
        got = self.ask(f"cat {path} {size}")
        assert got["boundary"], f"the output's length did not end where the file does: {got}"
        return size / got["cat_s"] / 1e6

    def close(self) -> None:
        """End of file on its stdin ends it (the pty killed first); killed if it lingers."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="echo test round trips per side")
    ap.add_argument("--mb", type=int, default=50, help="size of the file for the cat, MB")
    ap.add_argument("--rounds", type=int, default=5, help="cat runs per side")
    ap.add_argument("--quick", action="store_true",
                    help="a run of a few seconds: --n 300 --mb 5 --rounds 2")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.mb, args.rounds = 300, 5, 2
    print(f"peer: node-pty, install with: {INSTALL}")
    why = peer_missing()
    if why is not None:
        print(f"SKIP X5: {why}; nothing measured")
        return 0
    report = Report("peer_node_pty")
    warm = min(300, args.n)
    blocks = 10
    per_block = max(1, args.n // blocks)
    work = Path(tempfile.mkdtemp(prefix="x5-"))  # the cat's file: $TMPDIR, removed at the end
    tree = BenchTree(TREE)
    node = raw_pty = bare_pty = client = None
    try:
        home = work / "home"
        home.mkdir()
        (home / ".bashrc").write_text(f"PS1='{PROMPT}'\n")
        tree.start()
        client = tree.client(timeout=60.0)
        node = NodePty(home)
        raw_pty = RawPty(home)
        bare_pty = BarePty(home)
        sid = client.call("terminal", "term.create",
                          {"shell": "bash", "env": bench_env(home)})["session"]
        print(f"node-pty {node.version} (bench.js, pid {node.proc.pid}); moorage tree "
              f"{tree.dir}, session {sid}")

        # echo test: blocks in turn, after a warm-up of each
        sub = client.subscribe("terminal", [f"term.out.{sid}"], from_seq=1)
        node.echo_us(warm)
        exec_us(client, sub, sid, warm, "actor")
        for _ in range(warm):
            raw_pty.round_trip()
            bare_pty.round_trip()
        theirs: list[float] = []
        ours: list[float] = []
        raw: list[float] = []
        bare: list[float] = []
        for _ in range(blocks):
            theirs += node.echo_us(per_block)
            ours += exec_us(client, sub, sid, per_block, "actor")
            raw += [raw_pty.round_trip() for _ in range(per_block)]
            bare += [bare_pty.round_trip() for _ in range(per_block)]
        sub.close()
        po, pn, pr = percentiles(ours), percentiles(theirs), percentiles(raw)
        pb = percentiles(bare)
        report.add(Row("X5", "echo test p50: term.exec vs node-pty", "µs", "<= 4x node-pty",
                       po[50], pn[50], po[50] <= 4 * pn[50],
                       note=f"n={len(ours)} each, {blocks} blocks in turn; warm bash; ours "
                            "through the parser actor (default tree)"))
        report.add(Row("X5", "echo test p99: term.exec vs node-pty", "µs", "(informative)",
                       po[99], pn[99], True))
        report.add(Row("X5", "echo test p50: integrated bash, raw PTY", "µs",
                       "(informative)", pr[50], pn[50], True,
                       note=f"our bash integration alone, read by this process; p99 "
                            f"{pr[99]:.0f} µs"))
        report.add(Row("X5", "echo test p50: bare bash, raw PTY", "µs", "(informative)",
                       pb[50], pn[50], True,
                       note=f"node-pty's bash read by this process; p99 {pb[99]:.0f} µs"))
        plot_percentiles("peer_node_pty_echo", {
            "moorage term.exec (parser actor)": ours,
            f"node-pty {node.version}, bare bash": theirs,
            "integrated bash on a raw PTY": raw,
            "bare bash on a raw PTY": bare})

        # cat: one of each in turn
        size = args.mb * 1_000_000
        data = work / "cat.dat"
        data.write_bytes(b"Q" * size)
        rates_ours, rates_node = [], []
        for _ in range(args.rounds):
            rates_node.append(node.cat_mb_s(data, size))
            rates_ours.append(streamed_mb_s(client, sid, data, size))
        ro, rn = max(rates_ours), max(rates_node)
        report.add(Row("X5", f"cat {args.mb} MB, last byte", "MB/s", ">= node-pty",
                       ro, rn, ro >= rn,
                       note=f"best of {args.rounds}; ours {[round(r, 1) for r in rates_ours]}, "
                            f"node-pty {[round(r, 1) for r in rates_node]}"))
        report.extra = {
            "node_pty": node.version,
            "echo_us": {"ours": po, "node_pty": pn, "raw_pty_integrated": pr,
                        "raw_pty_bare": pb},
            "cat_mb_s": {"ours": rates_ours, "node_pty": rates_node},
        }
    finally:
        if node is not None:
            node.close()
        if raw_pty is not None:
            raw_pty.close()
        if bare_pty is not None:
            bare_pty.close()
        if client is not None:
            client.close()
        tree.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
