"""X4: watchman beside moorage's watcher, in one run, on the same kind of work.

Each side watches its own copy of the work (same names, same sizes), one side at a time, so
neither's CPU spills into the other's figures:

  create -> event   one file created, the time until the subscriber has its event; at the
                    default settle (ours 20 ms fixed window, watchman's `settle` 20 ms) and
                    at the smallest (ours 0, watchman's `settle` 0); p50 and p99; the sides
                    take turns, one create each, after 20 uncounted ones
  burst             10,000 files created as fast as a loop can, a consumer reading each side's
                    events in a process of its own meanwhile: the tail from the last create to
                    the last event delivered, the watching process's CPU seconds from the
                    first create to then, and that every file was delivered; three bursts a
                    side, taking turns, medians compared
  rename burst      the same, the files made first in a directory neither side watches and
                    renamed in (an IN_MOVED_TO each: the move's path through each side)
  directory burst   the same number of empty directories made (as an unpacked archive or a
                    package install makes them): each side watches each new directory and
                    reads it for what was made in it before its watch
  crawl             a tree of 100,000 files: from the watch request until the tree is known
                    (ours: fs.watch answers after its base walk; watchman: `watch`, then a
                    `clock` with sync_timeout, which waits for its crawl)
  full query        every file of that tree, names only, from memory (ours: fs.query and its
                    pages; watchman: `query` with fields [name])
  RSS               of each watching process once the tree is watched and queried, and
                    quiet: ours gives its free heap back a second after its last big reply
                    (actors/runtime/heap.py), so it is read once that is done (at most 10 s
                    later: an older watcher without `heap` in sys.info is read at once);
                    beside it, informative, PSS and private memory (RSS counts in full the
                    interpreter's pages our watcher shares with its zygote) and the RSS
                    grown from idle per path watched

The "limit" column is watchman's figure, so the ratio is ours / watchman's and a row passes
when ours is not worse. Watchman is talked to over its Unix socket in its JSON encoding (no
client library needed); it runs as a private server (its own socket, state and log files in
a temporary directory) and is shut down at the end.

Install the peer: `apt-get install -y watchman` (Debian; 4.9). Without it this prints how,
and skips.

    python -m perf.peers.watchman [--samples 200] [--burst 10000] [--bursts 3] [--files 100000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from perf._report import Report, Row, percentiles
from perf._tree import BenchTree

CONFIG = """
[supervisor]
heartbeat = {{ interval_ms = 1000, misses = 10 }}
start_timeout_ms = 60000
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[[children]]
id = "watcher0"
start = "moorage.actors.watcher.actor:WatcherActor"
[actor.watcher]
roots = ["{data}"]
push_metrics = false
list_max = 200000
[actor.watcher0]
roots = ["{data}"]
settle_ms = 0
push_metrics = false
"""

pc = time.perf_counter
INSTALL = "apt-get install -y watchman"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pss_private_mib(pid: int) -> tuple[float, float]:
    """(PSS, private) of `pid` in MiB: RSS counts in full the pages our actors share with
    the zygote that forked them (its imports), PSS a fair share of them, private none."""
    got = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                got[parts[0].rstrip(":")] = int(parts[1])
    private = got.get("Private_Clean", 0) + got.get("Private_Dirty", 0)
    return got.get("Pss", 0) / 1024, private / 1024


def at_rest(client: Client, timeout: float = 10.0) -> None:
    """Until our watcher has handed back the free heap its last big replies left (its trim
    runs once big work has been quiet for a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        heap = client.call("watcher", "sys.info").get("heap")
        if heap is None or heap["noted_bytes"] == 0:
            return
        time.sleep(0.1)


def touch(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def make_tree(root: Path, files: int) -> None:
    dirs = max(1, files // 1000)
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(files // dirs):
            touch(sub / f"f{i:04d}")


# --- watchman --------------------------------------------------------------------------------


class Watchman:
    """A private watchman server (`start`), or another connection to one (`connect`), in
    watchman's JSON encoding."""

    def __init__(self, sock: Path, proc: subprocess.Popen | None = None) -> None:
        self.path = sock
        self.proc = proc
        deadline = time.monotonic() + 20
        while True:  # the server binds its socket when it is ready: connect until it is
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(sock))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
                    raise RuntimeError("watchman did not start") from None
                time.sleep(0.02)  # sleep-ok: polling for a server's socket to appear
        self.file = self.sock.makefile("rwb")
        self.unilateral: deque[dict] = deque()
        self.pid = proc.pid if proc is not None else 0

    @classmethod
    def start(cls, work: Path) -> Watchman:
        sock = work / "sock"
        proc = subprocess.Popen(
            ["watchman", "--foreground", f"--sockname={sock}", f"--logfile={work / 'log'}",
             f"--statefile={work / 'state'}", f"--pidfile={work / 'pid'}", "--no-save-state"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        return cls(sock, proc)

    def connect(self) -> Watchman:
        """Another connection to the same server (one per thread)."""
        return Watchman(self.path)

    def _read(self, timeout: float | None) -> dict | None:
        self.sock.settimeout(timeout)
        try:
            line = self.file.readline()
        except TimeoutError:
            return None
        if not line:
            raise RuntimeError("watchman closed the connection")
        return json.loads(line)

    def cmd(self, *args: Any, timeout: float = 120) -> dict:
        self.file.write(json.dumps(list(args)).encode() + b"\n")
        self.file.flush()
        while True:
            pdu = self._read(timeout)
            if pdu is None:
                raise TimeoutError(f"watchman: no answer to {args[0]}")
            if pdu.get("unilateral"):
                self.unilateral.append(pdu)
                continue
            if "error" in pdu:
                raise RuntimeError(f"watchman {args[0]}: {pdu['error']}")
            return pdu

    def next_pdu(self, timeout: float) -> dict | None:
        if self.unilateral:
            return self.unilateral.popleft()
        return self._read(timeout)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.cmd("shutdown-server", timeout=10)
            except (OSError, RuntimeError, TimeoutError):
                pass
        self.file.close()
        self.sock.close()
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def watchman_root(wm: Watchman, root: Path, settle: int) -> str:
    """Watch `root` with its settle, subscribed to its changes from now; returns the name."""
    (root / ".watchmanconfig").write_text(json.dumps({"settle": settle}))
    wm.cmd("watch", str(root))
    clock = wm.cmd("clock", str(root), {"sync_timeout": 60_000})["clock"]
    name = f"s{root.name}"
    wm.cmd("subscribe", str(root), name, {"fields": ["name"], "since": clock,
                                          "expression": ["type", "f"]})
    return name


def watchman_wait(wm: Watchman, names: set[str], timeout: float = 60) -> float:
    """Until every name in `names` was in a subscription PDU; returns when that was."""
    deadline = time.monotonic() + timeout
    while names:
        pdu = wm.next_pdu(max(0.001, deadline - time.monotonic()))
        if pdu is None:
            raise TimeoutError(f"watchman: {len(names)} files never delivered")
        names.difference_update(pdu.get("files", ()))
    return pc()


# --- ours ------------------------------------------------------------------------------------


class Ours:
    """One of the tree's watcher actors and a subscription to its fs.event."""

    def __init__(self, tree: BenchTree, actor: str) -> None:
        self.client = tree.client(timeout=120.0)
        self.actor = actor
        self.pid = self.client.call(actor, "sys.hello")["pid"]
        self.sub = None

    def watch(self, root: Path) -> None:
        self.client.call(self.actor, "fs.watch", {"path": str(root)}, timeout=120)
        if self.sub is None:
            self.sub = self.client.subscribe(self.actor, ["fs.event"])
            self.client.call(self.actor, "fs.sync")
            self.drain(0.05)

    def drain(self, quiet: float) -> None:
        assert self.sub is not None
        while self.sub.next(timeout=quiet) is not None:
            pass

    def wait(self, paths: set[str], timeout: float = 60) -> float:
        assert self.sub is not None
        deadline = time.monotonic() + timeout
        while paths:
            m = self.sub.next(timeout=max(0.001, deadline - time.monotonic()))
            if m is None:
                raise TimeoutError(f"ours: {len(paths)} files never delivered")
            if isinstance(m, StreamMessage):
                for e in m.body["events"]:
                    p = e.get("path")
                    if p is not None and e["kind"] != "deleted":
                        paths.discard(p)
        return pc()

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()
        self.client.close()


# --- the rows ----------------------------------------------------------------------------------


WARMUP = 20  # creates per side before the counted ones (first events run cold code)


def create_to_event(samples: int, sides: dict[str, tuple[Path, Any, Any]]
                    ) -> dict[str, list[float]]:
    """ms from each create to its event, per side (`sides`: name -> (root, wait, key), where
    `key(path)` is how the side names the file in its events). One file at a time, the sides
    taking turns and which goes first alternating, so that both see the same machine: on
    this VM the creation of a file alone moves between 0.15 and 1 ms within minutes."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(WARMUP + samples):
        for name in order if i % 2 else order[::-1]:
            root, wait, key = sides[name]
            path = root / f"c{i:05d}"
            t0 = pc()
            touch(path)
            t1 = wait({key(path)})
            if i >= WARMUP:
                out[name].append((t1 - t0) * 1000)
    return out


def consume_ours(runtime_dir: str, actor: str, names: set[str], conn: Any) -> None:
    """In a process of its own: subscribe to `actor`'s fs.event, say "ready", then report
    when the last of `names` was delivered."""
    client = Client(Path(runtime_dir), timeout=60.0)
    sub = client.subscribe(actor, ["fs.event"])
    try:
        client.call(actor, "fs.sync")  # the subscription is live once this is published
        while sub.next(timeout=0.05) is not None:
            pass
        conn.send("ready")
        while names:
            m = sub.next(timeout=60)
            if m is None:
                raise TimeoutError(f"ours: {len(names)} files never delivered")
            if isinstance(m, StreamMessage):
                for e in m.body["events"]:
                    if e["kind"] != "deleted":
                        names.discard(e.get("path"))
        conn.send(pc())
    except BaseException as exc:
        conn.send(repr(exc))
    finally:
        sub.close()
        client.close()


def consume_watchman(sock: str, root: str, names: set[str], conn: Any,
                     kind: str = "f") -> None:
    """`consume_ours` for watchman: a subscription on its own connection, to files (`kind`
    "f") or directories ("d")."""
    c = Watchman(Path(sock))
    try:
        clock = c.cmd("clock", root, {"sync_timeout": 60_000})["clock"]
        c.cmd("subscribe", root, "burst", {"fields": ["name"], "since": clock,
                                           "expression": ["type", kind]})
        conn.send("ready")
        conn.send(watchman_wait(c, names))
    except BaseException as exc:
        conn.send(repr(exc))
    finally:
        c.close()


def burst(n: int, root: Path, consume: Any, args: tuple, pid: int, name: Any,
          stage: Path | None = None, dirs: bool = False) -> dict[str, float]:
    """`n` files created as fast as one loop can (with `stage`, a directory no side
    watches, made there first and renamed into `root`; with `dirs`, empty directories
    made instead, as an unpacked archive or a package install makes them), while a
    consumer in another process (`consume(*args, names, conn)`) reads the side's events as
    a client would: the writer's process does not slow it, nor it the writer."""
    root.mkdir()
    paths = [root / f"b{i:05d}" for i in range(n)]
    sources = []
    if stage is not None:
        stage.mkdir(parents=True)
        sources = [stage / p.name for p in paths]
        for src in sources:
            touch(src)
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=consume, args=(*args, {name(p) for p in paths}, theirs,
                                             *(("d",) if dirs and consume is consume_watchman
                                               else ())))
    proc.start()
    try:
        if not mine.poll(60) or mine.recv() != "ready":
            raise RuntimeError("the consumer did not start")
        cpu0 = cpu_seconds(pid)
        t0 = pc()
        if sources:
            for src, p in zip(sources, paths, strict=True):
                os.rename(src, p)
        elif dirs:
            for p in paths:
                os.mkdir(p)
        else:
            for p in paths:
                touch(p)
        last = pc()
        if not mine.poll(120):
            raise RuntimeError("burst not delivered in 120 s")
        done = mine.recv()
        if not isinstance(done, float):
            raise RuntimeError(f"burst not delivered: {done}")
        return {"tail_ms": (done - last) * 1000, "cpu_s": cpu_seconds(pid) - cpu0,
                "writer_s": last - t0}
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def full_query(client: Client, root: Path) -> tuple[int, str]:
    """Every name under `root` from our watcher: fs.query and its pages, or, from a watcher
    that has no fs.query (an older one, for a before/after), fs.list's walk of the disk."""
    try:
        got = client.call("watcher", "fs.query", {"path": str(root), "fields": ["name"],
                                                  "max": 100_000})
    except MoorageError as exc:
        if exc.name != "unknown_op":
            raise
        listed = client.call("watcher", "fs.list", {"path": str(root), "recursive": True},
                             timeout=300)
        return len(listed["entries"]), "by fs.list recursive (a walk of the disk: no fs.query)"
    n = len(got["files"])
    while got["more"]:
        got = client.call("watcher", "fs.query", {"cursor": got["cursor"], "max": 100_000})
        n += len(got["files"])
    return n, "from memory by fs.query in pages of 100,000"


def _relative_to_burst_parent(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"  # (a function: what a spawned process is given)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200, help="create -> event samples")
    ap.add_argument("--burst", type=int, default=10_000)
    ap.add_argument("--bursts", type=int, default=3, help="bursts a side (medians compared)")
    ap.add_argument("--files", type=int, default=100_000, help="files in the crawled tree")
    args = ap.parse_args(argv)
    if shutil.which("watchman") is None:
        print(f"SKIP X4: watchman is not installed; install it with `{INSTALL}` "
              "(Debian's package, 4.9) and run again")
        return 0
    report = Report("x4_watchman")
    work = Path(os.path.realpath(tempfile.mkdtemp(prefix="x4-", dir="/tmp")))
    ours_dir, theirs_dir = work / "ours", work / "watchman"
    for d in (ours_dir, theirs_dir):
        for sub in ("settle", "fast", "burst-parent", "big"):
            (d / sub).mkdir(parents=True)
    tree = BenchTree(CONFIG.format(data=ours_dir))
    tree.start()
    (work / "wm-state").mkdir()
    wm = Watchman.start(work / "wm-state")
    ours = {"default": Ours(tree, "watcher"), "smallest": Ours(tree, "watcher0")}
    try:
        version = wm.cmd("version")["version"]
        idle = (rss_mib(ours["default"].pid), rss_mib(wm.pid))
        # create -> event, at the default settle and the smallest
        for label, actor, sub, settle in (("default", "default", "settle", 20),
                                          ("smallest", "smallest", "fast", 0)):
            o = ours[actor]
            o.watch(ours_dir / sub)
            watchman_root(wm, theirs_dir / sub, settle)
            both = create_to_event(args.samples, {
                "ours": (ours_dir / sub, o.wait, str),
                "watchman": (theirs_dir / sub, lambda names: watchman_wait(wm, names),
                             lambda p: p.name)})
            mine, theirs = both["ours"], both["watchman"]
            pm, pt = percentiles(mine), percentiles(theirs)
            for p in (50, 99):
                report.add(Row("X4", f"one create -> event p{p}, {label} settle", "ms",
                               "<= watchman", pm[p], pt[p], pm[p] <= pt[p],
                               note=f"ours settle_ms {20 if label == 'default' else 0} "
                                    f"(fixed window), watchman settle {settle}; "
                                    f"n={args.samples}" if p == 50 else ""))
            report.extra[f"create_{label}_ms"] = {"ours": pm, "watchman": pt}
        # the burst, each side's consumer reading in a thread of its own meanwhile
        o = ours["default"]
        o.watch(ours_dir / "burst-parent")
        (theirs_dir / "burst-parent" / ".watchmanconfig").write_text('{"settle": 20}')
        wm.cmd("watch", str(theirs_dir / "burst-parent"))
        # One burst is at the mercy of the moment (a tail read 16 ms in one run, 71 in the
        # next): `--bursts` each, the sides taking turns, and the medians compared. Then the
        # same number of files renamed in from a directory neither side watches (on the
        # same file system): each an IN_MOVED_TO, which takes watchdog's move grouper. Then
        # as many empty directories made, each of which the watcher must watch and read.
        for verb in ("create", "rename", "mkdir"):
            runs: dict[str, list[dict[str, float]]] = {"ours": [], "watchman": []}
            for k in range(args.bursts):
                for side in ("ours", "watchman")[::1 if k % 2 else -1]:
                    base = ours_dir if side == "ours" else theirs_dir
                    stage = base / "stage" / f"{verb}{k}" if verb == "rename" else None
                    if side == "ours":
                        runs[side].append(burst(
                            args.burst, base / "burst-parent" / f"{verb}{k}", consume_ours,
                            (str(tree.dir), "watcher"), o.pid, str, stage, verb == "mkdir"))
                    else:
                        runs[side].append(burst(
                            args.burst, base / "burst-parent" / f"{verb}{k}",
                            consume_watchman, (str(wm.path), str(base / "burst-parent")),
                            wm.pid, _relative_to_burst_parent, stage, verb == "mkdir"))

            def mid(side: str, key: str, runs: dict = runs) -> float:
                return statistics.median(r[key] for r in runs[side])

            def each(side: str, key: str, fmt: str, runs: dict = runs) -> str:
                return "/".join(format(r[key], fmt) for r in runs[side])

            label = {"create": f"{args.burst:,}-file burst",
                     "rename": f"{args.burst:,}-file rename burst",
                     "mkdir": f"{args.burst:,}-directory burst"}[verb]
            t_o, t_w = mid("ours", "tail_ms"), mid("watchman", "tail_ms")
            report.add(Row("X4", f"{label}: tail after the last {verb}", "ms",
                           "<= watchman", t_o, t_w, t_o <= t_w,
                           note=f"median of {args.bursts} bursts a side, taking turns: ours "
                                f"{each('ours', 'tail_ms', '.1f')} ms, watchman "
                                f"{each('watchman', 'tail_ms', '.1f')}; every "
                                f"{'directory' if verb == 'mkdir' else 'file'} delivered; "
                                f"writer loops {each('ours', 'writer_s', '.2f')} s"
                                f" (ours) / {each('watchman', 'writer_s', '.2f')} s"))
            c_o, c_w = mid("ours", "cpu_s"), mid("watchman", "cpu_s")
            report.add(Row("X4", f"{label}: CPU of the watching process", "s",
                           "<= watchman", c_o, c_w, c_o <= c_w,
                           note=f"user+system, first {verb} to last event delivered, "
                                f"median: ours {each('ours', 'cpu_s', '.2f')} s, watchman "
                                f"{each('watchman', 'cpu_s', '.2f')}"))
            report.extra[{"create": "burst", "rename": "rename_burst",
                          "mkdir": "mkdir_burst"}[verb]] = runs
        # the crawl and the full query
        make_tree(ours_dir / "big", args.files)
        make_tree(theirs_dir / "big", args.files)
        t0 = pc()
        o.client.call("watcher", "fs.watch", {"path": str(ours_dir / "big")}, timeout=300)
        crawl_ours = pc() - t0
        t0 = pc()
        wm.cmd("watch", str(theirs_dir / "big"), timeout=300)
        wm.cmd("clock", str(theirs_dir / "big"), {"sync_timeout": 300_000}, timeout=300)
        crawl_theirs = pc() - t0
        report.add(Row("X4", f"crawl of {args.files:,} files: watch answered", "s",
                       "<= watchman", crawl_ours, crawl_theirs, crawl_ours <= crawl_theirs,
                       note="ours: fs.watch (inotify watches placed, base walked); watchman: "
                            "watch + clock with sync_timeout (its crawl done)"))
        q_ours, q_theirs = [], []
        n_ours = n_theirs = 0
        how = ""
        for _ in range(3):
            t0 = pc()
            n_ours, how = full_query(o.client, ours_dir / "big")
            q_ours.append(pc() - t0)
            t0 = pc()
            n_theirs = len(wm.cmd("query", str(theirs_dir / "big"),
                                  {"fields": ["name"]})["files"])
            q_theirs.append(pc() - t0)
        qo, qt = min(q_ours), min(q_theirs)
        report.add(Row("X4", f"full query of the {args.files:,}-file tree", "s", "<= watchman",
                       qo, qt, qo <= qt,
                       note=f"names only, best of 3; ours {n_ours:,} entries (files and "
                            f"directories) {how}, watchman {n_theirs:,} from memory"))
        at_rest(o.client)
        ro, rt = rss_mib(o.pid), rss_mib(wm.pid)
        (po, uo), (pt, ut) = pss_private_mib(o.pid), pss_private_mib(wm.pid)
        report.add(Row("X4", "RSS of the watching process after all this", "MiB",
                       "<= watchman", ro, rt, ro <= rt,
                       note=f"ours: the watcher actor that holds the {args.files:,}-file "
                            f"watch; PSS {po:.1f} vs {pt:.1f} MiB, private {uo:.1f} vs "
                            f"{ut:.1f} MiB; at the start, idle: RSS ours {idle[0]:.1f} MiB, "
                            f"watchman {idle[1]:.1f} MiB; watchman {version}"))
        # Informative, beside it: RSS counts in full the interpreter's pages our watcher
        # shares with its zygote and siblings (P14 judges the tree by PSS for that reason);
        # PSS splits them, private leaves them out; and what each path watched costs.
        report.add(Row("X4", "PSS of the watching process (shared pages split)", "MiB",
                       "(informative)", po, pt, True))
        report.add(Row("X4", "private memory of the watching process", "MiB",
                       "(informative)", uo, ut, True))
        paths = o.client.call("watcher", "fs.stats")["index_entries"]
        per_o = (ro - idle[0]) * 1024 * 1024 / paths
        per_t = (rt - idle[1]) * 1024 * 1024 / paths
        report.add(Row("X4", "RSS grown from idle, per path watched", "B", "(informative)",
                       per_o, per_t, True,
                       note=f"{paths:,} paths in our index (the same trees on both sides)"))
        report.extra["memory_mib"] = {"rss": [ro, rt], "pss": [po, pt], "private": [uo, ut],
                                      "idle_rss": list(idle), "paths": paths}
        report.extra["crawl"] = {"ours_s": crawl_ours, "watchman_s": crawl_theirs,
                                 "query_ours_s": q_ours, "query_watchman_s": q_theirs}
    finally:
        for o in ours.values():
            o.close()
        wm.close()
        tree.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
