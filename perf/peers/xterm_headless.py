"""X6: parse throughput beside xterm.js (`@xterm/headless` 6.0), the parser VS Code runs.

    python -m perf.peers.xterm_headless [--mb 4] [--commands 20000] [--repeat 5]

The peer, once (Node.js 18 or later):

    cd perf/peers/xterm && npm ci

Without node or the package this prints how to install it, then one SKIP line, and exits 0.

The inputs are perf/p5_parser's four, targets.md X6's A to D: A coloured compiler-like output,
B plain text, C prompt-dense shell-integration output (our bash integration on a real PTY for
`--commands` short commands), D a TUI redraw. They are written to a temporary directory (gone
afterwards) and parsed in 64 KiB chunks by, one input after the other, so each comparison
shares the machine's load of the moment:

  xterm full    xterm.js' headless Terminal, 120 x 40, scrollback 1000, with the OSC 633, 133
                and 7 handlers VS Code registers, every chunk given to write(), timed to the
                callback of the last (perf/peers/xterm/bench.js); a JIT warm-up run first
  xterm parser  its EscapeSequenceParser and UTF-8 decoder alone, with the same handlers
  ours          `vtparse.Parser` in the parser actor's configuration: markers only, the session
                nonce; the core it runs ("compiled" or "python") is printed

Each figure is the median of `--repeat` runs. The target (X6) is ours >= xterm full on every
input; the ratio printed is ours / xterm full, and the parser alone stands beside it. The
markers we find and the OSCs xterm's handlers saw are both printed: on these inputs every such
OSC is a marker, so the two must agree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from moorage.actors.vtparse import Parser
from perf._report import Report, Row
from perf.p5_parser import CHUNK, Corpus, chunks_of, corpora

PEER_DIR = Path(__file__).parent / "xterm"
INSTALL = f"cd {PEER_DIR} && npm ci   (Node.js 18+; installs @xterm/headless 6.0.0)"


def core_name() -> str:
    try:
        from moorage.actors.vtparse._scan import CORE
    except ImportError:  # a library older than the compiled scan
        return "python"
    return CORE


def peer_missing() -> str | None:
    """Why the peer cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (PEER_DIR / "node_modules" / "@xterm" / "headless").is_dir():
        return "@xterm/headless is not installed"
    return None


def xterm(files: list[Path], repeat: int) -> dict[str, dict]:
    """bench.js on `files`: {file: its result line}."""
    proc = subprocess.run(
        ["node", str(PEER_DIR / "bench.js"), "--repeat", str(repeat), "--chunk", str(CHUNK),
         *map(str, files)],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench.js failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {r["file"]: r for r in map(json.loads, proc.stdout.splitlines())}


def ours(corpus: Corpus, repeat: int) -> tuple[float, int]:
    """Median seconds of a markers-only parse of the whole input, and the markers found."""
    chunks = chunks_of(corpus.data, CHUNK)
    times, found = [], 0
    for _ in range(repeat):
        feed = Parser(corpus.nonce).feed
        t0 = time.perf_counter()
        found = sum(len(feed(c)) for c in chunks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=4.0, help="size of inputs A, B and D, MB")
    ap.add_argument("--commands", type=int, default=20_000, help="commands run for input C")
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure")
    args = ap.parse_args(argv)
    print(f"peer: xterm.js (@xterm/headless), install with: {INSTALL}")
    why = peer_missing()
    if why is not None:
        print(f"SKIP X6: {why}; nothing measured")
        return 0
    report = Report("peer_xterm_headless")
    print(f"ours: vtparse markers-only scan, {core_name()} core")
    extra: dict[str, dict] = {}
    with corpora(args.mb, args.commands) as inputs, \
            tempfile.TemporaryDirectory(prefix="x6-") as tmp:
        for corpus in inputs.values():
            path = Path(tmp) / f"{corpus.letter}-{corpus.name}.bin"
            path.write_bytes(corpus.data)
            peer = xterm([path], args.repeat)[str(path)]
            seconds, found = ours(corpus, args.repeat)
            mb = len(corpus.data) / 1e6
            full = mb / statistics.median(peer["full"])
            alone = mb / statistics.median(peer["alone"])
            mine = mb / seconds
            agree = found == peer["oscs_full"] == peer["oscs_alone"] == corpus.markers
            report.add(Row(
                "X6", f"{corpus.letter} {corpus.name} ({mb:.1f} MB), markers mode", "MB/s",
                ">= xterm full terminal", mine, full, mine >= full and agree,
                note=f"xterm {peer['version']} full {full:.1f} MB/s, parser alone "
                     f"{alone:.1f} MB/s (ours x{mine / alone:.2f}); markers: ours {found}, "
                     f"xterm OSC handlers {peer['oscs_full']}"))
            extra[corpus.name] = {"ours_mb_s": mine, "xterm_full_mb_s": full,
                                  "xterm_parser_mb_s": alone, "markers": found,
                                  "xterm_oscs": peer["oscs_full"], "bytes": len(corpus.data)}
    report.extra = {"inputs": extra, "core": core_name(), "xterm": peer["version"]}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
