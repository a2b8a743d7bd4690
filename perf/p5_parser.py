"""P5 (parser throughput and per-KB latency) and P9 (in-process event dispatch).

    python -m perf.p5_parser [--mb 4] [--commands 20000] [--repeat 5]

P5: `actors.vtparse.Parser` in the parser actor's configuration (markers only, with a nonce),
on four inputs of a few MB each (targets.md X6 calls them A to D):

  coloured  (A) compiler-like output, SGR-heavy, with a shell-integration cycle every 40 lines
  plain     (B) the same text without a single escape sequence
  prompts   (C) prompt-dense shell-integration output: what our own bash integration
            (actors/terminal/shell/bash.sh) prints around `--commands` short commands
            (true, echo x, cd), run by a real bash on a real PTY (`shell_corpus`), 6 markers
            per command; generated in a temporary directory each run, removed after. Its
            density is what that shell prints, below targets.md's "about 80 markers per
            2 KB" (80 markers carrying the session's 32-hex nonce, 41 bytes each at the
            least, would not fit in 2 KB): each row's label says the density the parse found
  dense     (D) a full-screen TUI redraw: cursor moves, 256-colour and truecolour SGR, DEC
            modes, titles and hyperlinks (OSC), one or two characters between sequences

A, B and D are generated from a fixed seed. The limit, on the same bytes in the same chunks and
the same run, is pyte's `ByteStream` with a listener whose every method does nothing (pyte's
parser, no screen). Throughput is the median of `--repeat` runs over the whole input fed in
64 KiB chunks; per-KB latency is each 1 KiB feed timed on its own. The markers found are
checked against the count expected, so a fast parser that misses markers fails. Which core
the markers-only scan runs ("compiled" or "python", `vtparse._scan.CORE`) is printed, and the
Python one is measured beside it for information, as are the other configurations (text,
tokens, clean()). perf/peers/xterm_headless.py puts the same inputs beside xterm.js.

P9: one parsed event delivered through `Dispatcher.dispatch` to a registered callback, each
delivery timed on its own (the timer's own cost included); the limit is a direct call of the
same callback, timed the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import secrets
import select
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from moorage.actors.terminal.keeper.spawn import spawn_on_pty
from moorage.actors.terminal.shell import prepare
from moorage.actors.vtparse import Dispatcher, Event, Parser, clean
from moorage.actors.vtparse._scan import CORE
from perf._report import Report, Row, percentiles, plot_percentiles

NONCE = "perf-nonce-1234"
CHUNK = 64 * 1024
WORDS = [
    "error", "warning", "note", "expected", "declaration", "identifier", "unused", "variable",
    "function", "argument", "pointer", "struct", "return", "type", "incompatible", "implicit",
    "conversion", "from", "to", "in", "of",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def marker_cycle(rnd: random.Random) -> bytes:
    """What our bash integration prints around one command: 6 markers."""
    n = NONCE.encode()
    return (
        b"\x1b]633;D;%d;%s\x07\x1b]633;P;Cwd=/home/u/src\\x3bx;%s\x07\x1b]633;A;%s\x07"
        b"\x1b[1;32mu@h\x1b[0m:\x1b[1;34m~/src\x1b[0m$ \x1b]633;B;%s\x07"
        b"\x1b]633;E;make\\x20-j4;%s\x07\x1b]633;C;%s\x07"
    ) % (rnd.randint(0, 2), n, n, n, n, n, n)


def coloured(size: int, rnd: random.Random) -> tuple[bytes, int]:
    parts: list[bytes] = []
    total = markers = 0
    line = 0
    while total < size:
        if line % 40 == 0:
            part = marker_cycle(rnd)
            markers += 6
        else:
            f = f"src/{rnd.choice(WORDS)}_{rnd.randint(1, 99)}.c"
            msg = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 9)))
            kind = rnd.choice(["\x1b[1;31merror", "\x1b[1;35mwarning", "\x1b[1;36mnote"])
            code = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 8)))
            text = (
                f"\x1b[1m{f}:{rnd.randint(1, 999)}:{rnd.randint(1, 80)}: \x1b[0m{kind}: \x1b[0m"
                f"\x1b[1m{msg} [\x1b[0;1;35m-W{rnd.choice(WORDS)}\x1b[0m\x1b[1m]\x1b[0m\r\n"
                f"  {rnd.randint(1, 999):>4} | {code};\r\n"
                f"       | \x1b[0;1;32m{'~' * rnd.randint(1, 6)}^\x1b[0m\r\n"
            )
            part = text.encode()
        parts.append(part)
        total += len(part)
        line += 1
    return b"".join(parts), markers


def plain(size: int, rnd: random.Random) -> tuple[bytes, int]:
    parts: list[bytes] = []
    total = 0
    while total < size:
        words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 14)))
        part = f"{time.strftime('%H:%M:%S', time.gmtime(total))} INFO {words} é→✓\r\n".encode()
        parts.append(part)
        total += len(part)
    return b"".join(parts), 0


def dense(size: int, rnd: random.Random) -> tuple[bytes, int]:
    parts: list[bytes] = [b"\x1b[?1049h\x1b[?25l\x1b[2J"]
    total = markers = 0
    while total < size:
        r = rnd.random()
        if r < 0.35:
            part = b"\x1b[%d;%dH" % (rnd.randint(1, 50), rnd.randint(1, 200))
        elif r < 0.55:
            part = b"\x1b[38;5;%dm\x1b[48;5;%dm" % (rnd.randint(0, 255), rnd.randint(0, 255))
        elif r < 0.7:
            part = b"\x1b[38;2;%d;%d;%dm" % (rnd.randint(0, 255), rnd.randint(0, 255), 9)
        elif r < 0.75:
            part = b"\x1b[?2026h\x1b[K\x1b(B\x1b[m"
        elif r < 0.78:
            part = b"\x1b]0;vim - file%d.c\x07" % rnd.randint(0, 99)
        elif r < 0.80:
            part = b"\x1b]8;;file:///src/x%d.c\x1b\\x\x1b]8;;\x1b\\" % rnd.randint(0, 99)
        elif r < 0.801:
            part = b"\x1b]7;file://host/home/u/dir%d\x1b\\" % rnd.randint(0, 9)
            markers += 1
        else:
            part = rnd.choice(["a", "│", "█", " ", "xy", "─"]).encode()
        parts.append(part)
        total += len(part)
    return b"".join(parts), markers


# Debian's colour prompt, as a user's ~/.bashrc sets it
BASHRC = (
    "PS1='\\[\\e[01;32m\\]\\u@\\h\\[\\e[00m\\]:\\[\\e[01;34m\\]\\w\\[\\e[00m\\]\\$ '\n"
    "HISTFILE=/dev/null\n"
)
COMMANDS = ("true", "echo x", "cd src", "true", "echo x", "cd ..")
MARKERS_PER_COMMAND = 6  # P;Cwd, D, A, B (the prompt after it), C, E
BATCH = 50  # commands typed ahead at once: readline echoes and runs them one by one


def shell_corpus(count: int, workdir: Path, timeout: float = 120.0) -> tuple[bytes, int, str]:
    """C: what bash with our integration prints for `count` short commands on a real PTY.

    The shell is started as the terminal starts it (`shell.prepare`, the keeper's
    `spawn_on_pty`, a 32-hex nonce as the terminal makes), in a HOME of its own under
    `workdir`, 120 x 40. Commands go in batches of BATCH, each batch once the previous one's
    prompts (633 B) are all back. Returns the bytes up to the last prompt, the markers in
    them, and the nonce. Raises TimeoutError if the shell stops answering."""
    home = workdir / "home"
    (home / "src").mkdir(parents=True, exist_ok=True)
    (home / ".bashrc").write_text(BASHRC)
    nonce = secrets.token_hex(16)
    env = {"HOME": str(home), "TERM": "xterm-256color", "PATH": os.defpath, "LANG": "C.UTF-8",
           "USER": "u"}
    launch = prepare("/bin/bash", [], env, nonce)
    child = spawn_on_pty(launch.path, launch.argv, launch.env, str(home), 120, 40)
    prompt = b"\x1b]633;B;" + nonce.encode()
    buf = bytearray()
    deadline = time.monotonic() + timeout
    try:
        def wait_for_prompts(n: int) -> None:
            while buf.count(prompt) < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([child.master], [], [], left)[0]:
                    raise TimeoutError(f"bash gave {buf.count(prompt)} prompts of {n}")
                try:
                    buf.extend(os.read(child.master, 1 << 16))
                except BlockingIOError:
                    continue

        wait_for_prompts(1)
        sent = 0
        while sent < count:
            batch = [COMMANDS[(sent + k) % len(COMMANDS)] for k in range(min(BATCH, count - sent))]
            os.write(child.master, "".join(c + "\r" for c in batch).encode())
            sent += len(batch)
            wait_for_prompts(1 + sent)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        os.waitpid(child.pid, 0)
        os.close(child.master)
    data = bytes(buf[: buf.rfind(prompt) + len(prompt) + 1])
    return data, 2 + MARKERS_PER_COMMAND * count, nonce


@dataclass(frozen=True)
class Corpus:
    name: str
    letter: str  # targets.md X6's name for it
    data: bytes
    markers: int  # how many the markers-only parse must find
    nonce: str  # the session nonce the markers carry


@contextmanager
def corpora(mb: float, commands: int) -> Iterator[dict[str, Corpus]]:
    """The four inputs; C's shell runs in a temporary directory that is gone afterwards."""
    size = int(mb * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="p5-prompts-") as tmp:
        prompts, markers, nonce = shell_corpus(commands, Path(tmp))
    yield {
        "coloured": Corpus("coloured", "A", *coloured(size, random.Random(5)), NONCE),
        "plain": Corpus("plain", "B", *plain(size, random.Random(6)), NONCE),
        "prompts": Corpus("prompts", "C", prompts, markers, nonce),
        "dense": Corpus("dense", "D", *dense(size, random.Random(7)), NONCE),
    }


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


class NullListener:
    """A pyte listener on which every event is a no-op: pyte's parser cost alone."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _noop


def _noop(*args: object, **kwargs: object) -> None:
    return None


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def ours_factory(nonce: str, **kw: object) -> Callable[[], Callable[[bytes], object]]:
    return lambda: Parser(nonce, **kw).feed  # type: ignore[arg-type]


def pyte_factory() -> Callable[[bytes], object]:
    import pyte  # the perf extra; only this script's limit needs it

    return pyte.ByteStream(NullListener()).feed


def throughput(
    make: Callable[[], Callable[[bytes], object]], chunks: list[bytes], repeat: int
) -> float:
    """Median MB/s over `repeat` runs, each with a fresh parser."""
    size = sum(map(len, chunks))
    rates = []
    for _ in range(repeat):
        feed = make()
        t0 = time.perf_counter()
        for c in chunks:
            feed(c)
        rates.append(size / (time.perf_counter() - t0) / 1e6)
    return statistics.median(rates)


def per_kb(make: Callable[[], Callable[[bytes], object]], data: bytes, limit: int) -> list[float]:
    """Microseconds for each 1 KiB feed, over the first `limit` bytes."""
    feed = make()
    clock = time.perf_counter_ns
    out = []
    for c in chunks_of(data[:limit], 1024):
        t0 = clock()
        feed(c)
        out.append((clock() - t0) / 1000)
    return out


def count_markers(corpus: Corpus) -> int:
    parser = Parser(corpus.nonce)
    chunks = chunks_of(corpus.data, CHUNK)
    return sum(1 for c in chunks for e in parser.feed(c) if e.kind != "rejected")


def dispatch_latency(events: list[Event], rounds: int) -> tuple[list[float], list[float]]:
    """Per-delivery µs through a Dispatcher, and for a direct call (the limit)."""
    sink: list[int] = []

    def handler(event: Event) -> None:
        sink.append(event.end)

    dispatcher = Dispatcher()
    for kind in {e.kind for e in events}:
        dispatcher.on(kind, handler)
    dispatch = dispatcher.dispatch
    clock = time.perf_counter_ns
    via: list[float] = []
    direct: list[float] = []
    for _ in range(rounds):
        for e in events:
            t0 = clock()
            dispatch(e)
            t1 = clock()
            handler(e)
            t2 = clock()
            via.append((t1 - t0) / 1000)
            direct.append((t2 - t1) / 1000)
        sink.clear()
    return via, direct


# ---------------------------------------------------------------------------------------------


FLOORS = {"coloured": 100.0, "plain": 1000.0, "prompts": 50.0, "dense": 0.0}  # targets.md P5


def p5(report: Report, corpus: Corpus, repeat: int) -> dict[str, list]:
    """P5 rows for one input; returns its per-KB latency series for the plot."""
    name, data = corpus.name, corpus.data
    found = count_markers(corpus)
    if found != corpus.markers:
        raise SystemExit(f"{name}: found {found} markers, expected {corpus.markers}")
    chunks = chunks_of(data, CHUNK)
    ours = throughput(ours_factory(corpus.nonce), chunks, repeat)
    peer = throughput(pyte_factory, chunks, max(1, repeat // 2))
    floor = FLOORS[name]
    density = found / len(data) * 2048  # (found: what the parse counted, checked above)
    report.add(
        Row(
            "P5",
            f"parser, {corpus.letter} {name} ({len(data) / 1e6:.1f} MB, {found} markers, "
            f"{density:.1f} per 2 KB)",
            "MB/s",
            ">= 5x pyte" + (f", >= {floor:g} MB/s" if floor else ""),
            ours,
            peer,
            ours >= floor and ours >= 5 * peer,
            note=f"limit: pyte ByteStream, null listener; x{ours / peer:.1f}; "
                 f"{density:.1f} markers per 2 KB, as the parse found them; core {CORE}",
        )
    )
    make = ours_factory(corpus.nonce)
    lat = per_kb(make, data, 2_000_000)
    lat_peer = per_kb(pyte_factory, data, 500_000)
    p, pp = percentiles(lat), percentiles(lat_peer)
    for q, seed in ((50, 10), (99, 50)):
        report.add(
            Row("P5", f"per KB p{q}, {name}", "µs", f"<= {seed} µs (seed)", p[q], pp[q],
                p[q] <= seed, note="limit: pyte, 1 KiB feeds")
        )  # fmt: skip
    return {f"vtparse {name}": lat, f"pyte {name}": lat_peer}


def p9(report: Report, data: bytes) -> list[float]:
    """P9 rows: deliveries of the tokens and markers parsed from `data`."""
    parser = Parser(NONCE, tokens=True)
    events = [e for c in chunks_of(data, CHUNK) for e in parser.feed(c)][:20_000]
    via, direct = dispatch_latency(events, 10)
    pv, pd = percentiles(via), percentiles(direct)
    note = "limit: a direct call of the handler; the timer's cost is in both"
    report.add(
        Row("P9", f"event dispatch p50 ({len(via)} deliveries)", "µs", "<= 1 µs", pv[50],
            pd[50], pv[50] <= 1.0, note=note)
    )  # fmt: skip
    report.add(
        Row("P9", "event dispatch p99", "µs", "<= 10 µs (seed)", pv[99], pd[99], pv[99] <= 10)
    )
    return via


def info(corpus: Corpus, repeat: int) -> dict[str, float]:
    """Throughput of the other configurations, for information (no target): the Python
    core's markers-only scan (the median of `repeat` runs, as the row's), text and tokens
    (one run each)."""
    chunks = chunks_of(corpus.data, CHUNK)
    name = corpus.name
    configurations: list[tuple[str, dict, int]] = [("text", {"text": True}, 1),
                                                   ("tokens", {"tokens": True}, 1)]
    if CORE != "python":
        configurations.insert(0, ("markers, python core", {"core": "python"}, repeat))
    out = {f"{name} {label} MB/s": throughput(ours_factory(corpus.nonce, **kw), chunks, runs)
           for label, kw, runs in configurations}  # fmt: skip
    t0 = time.perf_counter()
    clean(corpus.data)
    out[f"{name} clean() MB/s"] = len(corpus.data) / (time.perf_counter() - t0) / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=4.0, help="size of inputs A, B and D, MB")
    ap.add_argument("--commands", type=int, default=20_000, help="commands run for input C")
    ap.add_argument("--repeat", type=int, default=5, help="runs per throughput figure")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("pyte") is None:
        print("skipped: P5's limit is pyte, not installed (pip install '.[perf]')")
        return 0
    report = Report("p5_parser")
    print(f"markers-only scan: {CORE} core")
    series: dict[str, list[float]] = {}
    extra: dict[str, float] = {}
    with corpora(args.mb, args.commands) as inputs:
        for corpus in inputs.values():
            series |= p5(report, corpus, args.repeat)
            extra |= info(corpus, args.repeat)
        series["dispatch"] = p9(report, inputs["coloured"].data)
    report.extra["info_mb_s"] = extra
    report.extra["core"] = CORE
    print("\ninformation only (not targets):")
    for key, value in extra.items():
        print(f"  {key:<40} {value:10.1f}")
    plot_percentiles("p5_parser_latency", series)
    return report.finish()


if __name__ == "__main__":
    raise SystemExit(main())
