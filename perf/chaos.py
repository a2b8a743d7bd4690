"""The tree under chaos and abuse, on the shipped default configuration: R1, R2, R5, R12, R14.

    python -m perf.chaos [--duration 60] [--interval 0.2] [--frames 100000] [--short]

  R1   a random non-root process (actors, the nested supervisor, both zygotes) SIGKILLed every
       `interval` for `duration` seconds, under a mixed load of calls and a streaming session
  R2   the same with SIGSTOP of a random actor (the supervisor sees the hang and replaces it)
  R5   `frames` fuzzed frames at every actor: random bytes, wrong types, huge declared lengths,
       deep nesting, unknown ops, hostile bodies; every well-framed one must get an error reply
  R12  local abuse: 1 MB subscription topics on every publisher, forged metrics pushes, a
       stranger on the keeper's socket, 4 MiB hostile bodies, token streams of NULs (an event
       a byte) fed to the parser, 100 term.create in flight; every actor's sys.ping within
       PING_MS throughout (the row fails past it)
  R14  (within R1) the sessions' original shells: alive at the end unless the terminals
       supervisor itself was killed (a row of R1 spares it: "R1 kill -terminals"), and no
       output byte lost or doubled; and on its own, the keeper, the terminal actor and both
       at once SIGKILLed in turn during 50 MB of output in each of 3 sessions

Each row: calls, ok, errors by name, hung (a call that came back after its deadline), wrong
(a result that is not what was asked for), gaps unreported (output missing without a Loss),
orphans (a process of the tree alive after `moorage down`), RSS before/after, and the time
from the end of the chaos to every actor answering again. `--short` is the version the test
suite runs (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: the repository root is what `-m` would have put first
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import psutil
import zmq

from moorage.protocol import endpoints
from moorage.protocol.client import BytesLost, Client, Loss, Reset
from moorage.protocol.envelope import TAG, StreamMessage, decode_reply, encode_request, packb
from moorage.protocol.errors import MoorageError
from perf._report import RESULTS_DIR

ROOT = Path(__file__).resolve().parent.parent
WORKERS = ("ping", "files", "term", "query")
MIN_SUCCESS = 0.999  # R1, R2: calls answered right within the deadline, with retries
PING_MS = 50.0  # R12: every loop answers sys.ping within this throughout the abuse
TICKER = "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.02; done"


# --- the tree ---------------------------------------------------------------------------------


class DefaultTree:
    """`moorage up` on the embedded default configuration (no config file can reach it: a
    private XDG_CONFIG_HOME), in its own runtime and state dirs."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
        self.dir = self.base / "run"
        self.env = dict(os.environ, XDG_CONFIG_HOME=str(self.base / "config"),
                        XDG_STATE_HOME=str(self.base / "state"),
                        HOME=str(self.base / "home"))
        (self.base / "home").mkdir()
        (self.base / "home" / ".bashrc").write_text("")
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()  # every pid of the tree ever seen (orphan check)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir", str(self.dir),
             "up", "--log-level", "WARNING", "--parent", str(os.getpid())],
            cwd=ROOT, env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        with Client(self.dir, timeout=30.0) as c:
            wait_all_running(c, 60)

    def client(self, **kw: Any) -> Client:
        return Client(self.dir, **kw)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen.update(p.pid for p in procs)
        return procs

    def rss(self) -> int:
        total = 0
        for p in self.processes():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def stop(self) -> list[int]:
        """`moorage down`; returns the pids of the tree still alive afterwards (orphans)."""
        self.processes()
        with contextlib.suppress(subprocess.TimeoutExpired):  # a root that does not answer
            subprocess.run([sys.executable, "-m", "moorage.supervisor.cli", "--instance-dir",
                            str(self.dir), "down"], cwd=ROOT, env=self.env, timeout=60,
                           capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        alive = [pid for pid in self.seen if pid != self.pid and psutil.pid_exists(pid)
                 and _same_tree(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return alive

    def keep_logs(self, name: str) -> Path:
        """The tree's log files, copied where the run's results go (a failed scenario's: the
        tree's own account of it outlives the temporary folder)."""
        import shutil

        dest = RESULTS_DIR / "chaos-logs" / name.replace(" ", "_")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.base / "state" / "moorage" / "run" / "logs", dest,
                        dirs_exist_ok=True)
        return dest

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.base, ignore_errors=True)


def _same_tree(pid: int) -> bool:
    """A pid we saw is still ours (not reused): its process is not a zombie of someone else."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def all_running(tree: dict[str, Any]) -> bool:
    return all(c["state"] in ("running", "shed") and all_running(c.get("tree") or {})
               for c in tree.get("children", []))


def wait_all_running(c: Client, timeout: float) -> float:
    """Seconds until every child reports running and every actor answers sys.ping."""
    t0 = time.monotonic()
    last: Any = None
    while time.monotonic() - t0 < timeout:
        try:
            last = c.call("supervisor", "sup.status", timeout=2.0)
            if all_running(last):
                for name in c.call("supervisor", "sup.endpoints", timeout=2.0):
                    last = f"{name} does not answer sys.ping"
                    c.call(name, "sys.ping", timeout=2.0)
                return time.monotonic() - t0
        except MoorageError as e:
            last = str(e)
        time.sleep(0.02)  # polling the tree's own answers: nothing to wait on instead
    raise TimeoutError(f"the tree is not all running after {timeout:.0f} s; last seen: {last}")


def victims(c: Client, stop_only: bool) -> list[tuple[str, int]]:
    """(what, pid) of every process that may be hit: actors, and unless `stop_only` the
    nested supervisor and the zygotes (both supervisors', and their spares)."""
    out: list[tuple[str, int]] = []

    def walk(tree: dict[str, Any]) -> None:
        if not stop_only:
            zygote = tree.get("zygote", {})
            out.extend((f"zygote:{tree['id']}", zygote[k]) for k in ("pid", "spare")
                       if zygote.get(k))
        for ch in tree.get("children", []):
            if ch.get("pid") and (ch["type"] != "supervisor" or not stop_only):
                out.append((ch["id"], ch["pid"]))
            if ch.get("tree"):
                walk(ch["tree"])

    walk(c.call("supervisor", "sup.status", timeout=5.0))
    return out


# --- the load -------------------------------------------------------------------------------


@dataclass
class Tally:
    calls: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error_ops: Counter[str] = field(default_factory=Counter)
    hung: int = 0
    wrong: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, started: float, timeout: float, error: str | None = None,
               wrong: str | None = None, what: str = "") -> None:
        with self.lock:
            self.calls += 1
            if time.monotonic() - started > timeout + 2.0:
                self.hung += 1
            if wrong is not None:
                self.wrong += 1
                if len(self.wrong_examples) < 5:
                    self.wrong_examples.append(wrong)
            elif error is not None:
                self.errors[error] += 1
                self.error_ops[f"{error} {what}"] += 1
            else:
                self.ok += 1


class Load:
    """Client threads calling the tree, each checking what it gets back."""

    def __init__(self, tree: DefaultTree, sessions: list[str]) -> None:
        self.tree = tree
        self.sessions = sessions
        self.tally = Tally()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(kind, i), daemon=True)
                        for i, kind in enumerate(WORKERS)]
        self.files = tree.base / "files"
        self.files.mkdir(exist_ok=True)
        self.written: set[str] = set()  # files a write was answered for: they exist

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> Tally:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return self.tally

    def _call(self, c: Client, actor: str, op: str, args: Any, timeout: float,
              check: Any = None, right: tuple[str, ...] = ()) -> bool:
        """One call, tallied; True when it was answered. An error in `right` is the right
        answer here, tallied as one."""
        t0 = time.monotonic()
        try:
            r = c.call(actor, op, args, timeout=timeout)
        except MoorageError as exc:
            if exc.name in right:
                self.tally.record(t0, timeout)
                return True
            self.tally.record(t0, timeout, error=exc.name, what=f"{actor} {op}")
            return False
        wrong = check(r) if check is not None else None
        self.tally.record(t0, timeout, wrong=wrong)
        return True

    def _run(self, kind: str, n: int) -> None:
        rng = random.Random(n)
        with self.tree.client(timeout=10.0) as c:
            while not self.stop.is_set():
                if kind == "ping":
                    actor = rng.choice(["metrics", "resource", "parser", "watcher", "terminal",
                                        "ptykeeper", "supervisor"])
                    self._call(c, actor, "sys.ping", None, 5.0)
                elif kind == "files":
                    path = str(self.files / f"f{rng.randrange(20)}")
                    body = secrets.token_hex(rng.randrange(1, 200))
                    if self._call(c, "watcher", "fs.write",
                                  {"path": path, "data": body.encode()}, 10.0):
                        self.written.add(path)
                    # A file no write was answered for may not be there (a write cut short
                    # by a kill, outcome_unknown, may not have run): not_found is then right;
                    # for one that was, it would be a lost file.
                    self._call(c, "watcher", "fs.read", {"path": path}, 10.0,
                               check=lambda r, path=path: None if isinstance(r, dict) else
                               f"fs.read {path}: {r!r:.60}",
                               right=() if path in self.written else ("not_found",))
                elif kind == "term":
                    sid = rng.choice(self.sessions)
                    token = secrets.token_hex(4)
                    self._call(c, "terminal", "term.exec",
                               {"session": sid, "command": f"echo {token}"}, 30.0,
                               check=lambda r, token=token: None if r.get("output") == token
                               or r.get("mode") != "integration"
                               else f"term.exec echo {token}: {r.get('output')!r:.60}")
                else:
                    self._call(c, "metrics", "metrics.query", {"op": "sys.ping"}, 5.0)
                    self._call(c, "resource", "resource.status", None, 5.0)


class SessionFollower:
    """A thread that follows one session's output through its own client's Subscription
    (`_run` says what it does with it); closed with everything it opened."""

    def __init__(self, tree: DefaultTree, sid: str) -> None:
        self.client = tree.client(timeout=10.0)
        self.sid = sid
        self.sub = self.client.subscribe("terminal", [f"term.out.{sid}"], from_seq=1)
        self.losses = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sub.close()
        self.client.close()


class StreamCheck(SessionFollower):
    """One session's output through the client's Subscription, put together by offset: a
    byte missing without a Loss is an unreported gap; a recreated session starts over."""

    def __init__(self, tree: DefaultTree, sid: str) -> None:
        super().__init__(tree, sid)
        self.events = self.client.subscribe("terminal", ["term.session"], from_seq=1)
        self.have = 0
        self.unreported = 0
        self.resets = 0
        self.recreated = 0
        self.moved = threading.Condition()

    def _run(self) -> None:
        loss_since = False
        while not self.stop.is_set():
            self._session_events()
            ev = self.sub.next(timeout=0.2)
            if isinstance(ev, (Loss, BytesLost)):  # (bytes the scrollback no longer held)
                self.losses += 1
                loss_since = True
            elif isinstance(ev, Reset):
                self.resets += 1
            elif isinstance(ev, StreamMessage):
                off = ev.body["offset"]
                end = off + sum(len(a) for a in ev.attachments)
                # a recreated session's new shell starts at the next multiple of 2^40: not a
                # gap, whichever of its first output and its `recreated` event comes first
                new_shell = off >> 40 > self.have >> 40 and off % (1 << 40) == 0
                if off > self.have and not loss_since and not new_shell:
                    self.unreported += 1
                with self.moved:
                    self.have = max(self.have, end)
                    self.moved.notify_all()
                loss_since = False

    def _session_events(self) -> None:
        ev = self.events.next(timeout=0)
        while ev is not None:
            if isinstance(ev, StreamMessage) and ev.body.get("session") == self.sid and \
                    ev.body.get("event") == "recreated":
                self.recreated += 1
            ev = self.events.next(timeout=0)

    def settle(self, c: Client, timeout: float = 10.0) -> None:
        """Waits until the stream has reached where the session's output stands now, so a
        count taken after it misses none of the run's messages."""
        listed = {s["session"]: s for s in c.call("terminal", "term.list")["sessions"]}
        target = listed.get(self.sid, {}).get("offset", 0)
        with self.moved:
            self.moved.wait_for(lambda: self.have >= target, timeout)

    def close(self) -> None:
        super().close()
        self.events.close()


# --- the scenarios ---------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    calls: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    hung: int = 0
    wrong: int = 0
    gaps_unreported: int = 0
    orphans: int = 0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    recovery_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def success(self) -> float:
        return self.ok / self.calls if self.calls else 1.0

    def passed(self, min_success: float) -> bool:
        return (self.hung == 0 and self.wrong == 0 and self.gaps_unreported == 0
                and self.orphans == 0 and self.success >= min_success
                and self.recovery_s <= 2.0 and not self.notes.get("failures"))


def _sessions(c: Client, n: int) -> list[dict[str, Any]]:
    return [c.call("terminal", "term.create", {"shell": "bash"}, timeout=30) for _ in range(n)]


def _sessions_answer(c: Client, sids: list[str]) -> list[str]:
    """After the chaos, every session runs a command and gives back its output: a stall
    that outlived the kills shows here, whatever the calls during them met."""
    failures = []
    for sid in sids:
        token = secrets.token_hex(4)
        try:
            r = c.call("terminal", "term.exec", {"session": sid, "command": f"echo {token}"},
                       timeout=30)
        except MoorageError as exc:
            failures.append(f"term.exec on {sid} after the chaos: {exc.name}")
            continue
        if r.get("output") != token and r.get("mode") == "integration":
            failures.append(f"term.exec on {sid} after the chaos: {r.get('output')!r:.60}")
    return failures


# A hit custodian is out from its signal until its successor serves: a SIGSTOP is seen
# after heartbeat.misses beats (about 1 s by default) and the successor then starts.
CUSTODIAN_OUT_S = 3.0


def both_custodians_hit(hits: list[tuple[float, str]]) -> int:
    """How often the keeper and the terminal actor were hit within CUSTODIAN_OUT_S of each
    other: both out at once, when the terminals supervisor (the third holder of every PTY
    master: actors.runtime.custody) is what keeps the shells."""
    return sum(1 for (t1, a), (t2, b) in itertools.pairwise(hits)
               if a != b and t2 - t1 < CUSTODIAN_OUT_S)


def chaos(duration: float, interval: float, signal_kind: str,
          spare: tuple[str, ...] = ()) -> Result:
    """R1 (SIGKILL of any non-root process) or R2 (SIGSTOP of an actor), with R14's checks;
    the processes named in `spare` are never hit (R14 in R1: every death but the terminals
    supervisor's keeps every shell)."""
    name = "R1 kill" if signal_kind == "kill" else "R2 stop"
    res = Result(name + "".join(f" -{s}" for s in spare))
    tree = DefaultTree()
    tree.start()
    try:
        with tree.client(timeout=30.0) as c:
            made = _sessions(c, 3)
            sids = [s["session"] for s in made]
            c.call("terminal", "term.write", {"session": sids[0], "data": TICKER + "\r"})
            res.rss_before_mb = tree.rss() / 1e6
            stream = StreamCheck(tree, sids[0])
            stream.thread.start()
            load = Load(tree, sids[1:])
            load.start()
            rng = random.Random(7)
            hits: Counter[str] = Counter()
            custodians: list[tuple[float, str]] = []  # (when, keeper | terminal) hit
            end = time.monotonic() + duration
            while time.monotonic() < end:
                time.sleep(interval)  # the chaos' own pace
                try:
                    pool = [v for v in victims(c, stop_only=signal_kind == "stop")
                            if v[0] not in spare]
                except MoorageError:
                    continue  # the root is busy: the next tick picks again
                if not pool:
                    continue
                what, pid = rng.choice(pool)
                tree.processes()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if signal_kind == "kill" else signal.SIGSTOP)
                    hits[what.split(":")[0] if what.startswith("zygote") else what] += 1
                    if what in ("ptykeeper", "terminal"):
                        custodians.append((time.monotonic(), what))
            tally = load.finish()
            res.recovery_s = round(wait_all_running(c, 60), 3)
            stream.settle(c)
            stream.close()
            res.calls, res.ok, res.hung, res.wrong = (tally.calls, tally.ok, tally.hung,
                                                      tally.wrong)
            res.errors = dict(tally.errors)
            res.gaps_unreported = stream.unreported
            listed = {s["session"]: s for s in c.call("terminal", "term.list")["sessions"]}
            original = sum(1 for s in made if listed.get(s["session"], {}).get("pid")
                           == s["pid"])
            together = both_custodians_hit(custodians)
            res.notes = {"kills": dict(hits), "original_shells": f"{original}/{len(made)}",
                         "terminals_supervisor_hit": hits.get("terminals", 0),
                         "keeper_and_terminal_hit_together": together,
                         "stream": {"losses": stream.losses, "resets": stream.resets},
                         "wrong_examples": tally.wrong_examples,
                         "errors_by_op": dict(tally.error_ops)}
            failures = []
            if not hits.get("terminals") and original != len(made):
                failures.append("an original shell died while the terminals supervisor, "
                                "which holds every session, lived")
            failures += _sessions_answer(c, sids[1:])
            if failures:
                res.notes["failures"] = failures
            res.rss_after_mb = tree.rss() / 1e6
    finally:
        res.orphans = len(tree.stop())
        if not res.passed(MIN_SUCCESS):
            with contextlib.suppress(OSError):
                res.notes["logs"] = str(tree.keep_logs(res.scenario))
        tree.cleanup()
    return res


def fuzz(frames: int) -> Result:
    """R5: hostile frames at every actor; each well-framed one answered, no actor dies."""
    res = Result("R5 fuzz")
    tree = DefaultTree()
    tree.start()
    rng = random.Random(5)
    try:
        with tree.client(timeout=30.0) as c:
            names = list(c.call("supervisor", "sup.endpoints"))
            before = {n: c.call(n, "sys.info")["pid"] for n in names}
            res.rss_before_mb = tree.rss() / 1e6
            ctx = zmq.Context()
            try:
                for name in names:
                    sent, answered = _fuzz_one(ctx, tree.dir, name, frames, rng)
                    res.calls += sent
                    res.ok += answered
            finally:
                ctx.destroy(linger=0)
            after = {n: c.call(n, "sys.info")["pid"] for n in names}
            res.notes["restarted"] = [n for n in names if before[n] != after[n]]
            if res.notes["restarted"]:
                res.notes["failures"] = "an actor died under fuzzing"
            res.rss_after_mb = tree.rss() / 1e6
            res.recovery_s = round(wait_all_running(c, 60), 3)
    finally:
        res.orphans = len(tree.stop())
        tree.cleanup()
    return res


def _hostile_body(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64))
    if kind == 1:  # many empty arrays
        n = rng.choice([10, 10_000, 1 << 20])
        return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * min(n, 1 << 16)
    if kind == 2:  # a declared length far past the data
        return b"\xdb" + (1 << 31).to_bytes(4, "big") + b"x"
    if kind == 3:  # deep nesting
        return b"\x91" * 200 + b"\xc0"
    if kind == 4:  # wrong types
        return packb(rng.choice([[1, 2], "x", 3.5, {"n": "not an int"}, {1: 2}]))
    return packb({"path": "/" * rng.randrange(1, 100)})


def _fuzz_one(ctx: zmq.Context, rd: Path, name: str, n: int,
              rng: random.Random) -> tuple[int, int]:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoints.rpc(rd, name))
    sent = answered = 0
    window = 64
    ops = ["sys.ping", "nope.nope", "fs.read", "term.exec", "sup.kill", "parse.feed",
           "metrics.query", "x" * 60]
    while sent < n:
        batch = min(window, n - sent)
        for i in range(batch):
            frames = encode_request(sent + i + 1, "fuzz-1", rng.choice(ops), None)
            kind = rng.randrange(4)
            if kind == 0:
                frames[2] = _hostile_body(rng)
            elif kind == 1:
                frames[1] = rng.randbytes(rng.randrange(1, 40))  # a header of garbage
                frames[1] = packb({"id": sent + i + 1, "sid": "fuzz-1",
                                   "op": rng.choice(ops), "junk": frames[1]})
            elif kind == 2:
                frames[0] = b"MOOR9"  # another protocol
            else:
                frames[2] = packb({"n": rng.randrange(-5, 5)})
            s.send_multipart(frames)
        sent += batch
        deadline = time.monotonic() + 30
        got = 0
        while got < batch and time.monotonic() < deadline:
            if s.poll(1000):
                with contextlib.suppress(Exception):
                    decode_reply(s.recv_multipart())
                got += 1
        answered += got
    s.close(0)
    return sent, answered


def abuse(big: bool) -> Result:
    """R12: local abuse on every actor; a pinger measures every actor's sys.ping meanwhile."""
    res = Result("R12 local abuse")
    tree = DefaultTree()
    tree.start()
    try:
        with tree.client(timeout=30.0) as c:
            names = list(c.call("supervisor", "sup.endpoints"))
            before = {n: c.call(n, "sys.info")["pid"] for n in names}
            res.rss_before_mb = tree.rss() / 1e6
            worst: dict[str, float] = {}
            stop = threading.Event()

            def pinger() -> None:
                with tree.client(timeout=10.0) as p:
                    while not stop.is_set():
                        for n in names:
                            t0 = time.perf_counter()
                            with contextlib.suppress(MoorageError):
                                p.call(n, "sys.ping", timeout=5.0)
                                worst[n] = max(worst.get(n, 0.0),
                                               (time.perf_counter() - t0) * 1000)
                        stop.wait(0.01)

            pt = threading.Thread(target=pinger, daemon=True)
            pt.start()
            forged = _forge_pushes(tree)
            _big_topics(tree, names)
            _stranger(tree)
            _hostile_bodies(tree, names)
            fed = _hostile_feeds(tree, (4 << 20) if big else (256 << 10))
            creates = _creates_in_flight(tree, 100 if big else 20)
            stop.set()
            pt.join(10)
            after = {n: c.call(n, "sys.info")["pid"] for n in names}
            res.notes = {"max_ping_ms": {n: round(v, 1) for n, v in sorted(worst.items())},
                         "restarted": [n for n in names if before[n] != after[n]],
                         "token_bytes_parsed": fed,
                         "forged_pushes_refused": forged,
                         "creates_ok": creates,
                         "keeper_strangers_refused":
                             c.call("ptykeeper", "sys.info")["strangers_refused"]}
            slow = {n: round(v, 1) for n, v in worst.items() if v > PING_MS}
            if res.notes["restarted"]:
                res.notes["failures"] = "an actor died under abuse"
            elif slow:
                res.notes["failures"] = f"sys.ping over {PING_MS:.0f} ms under abuse: {slow}"
            slo = c.call("metrics", "metrics.slo")
            lost = sum(slo.get("data_loss", {}).get("30d", {}).values()) \
                if isinstance(slo.get("data_loss"), dict) else 0
            res.notes["slo_data_lost"] = lost
            res.calls = res.ok = len(names)
            res.rss_after_mb = tree.rss() / 1e6
            res.recovery_s = round(wait_all_running(c, 60), 3)
    finally:
        res.orphans = len(tree.stop())
        tree.cleanup()
    return res


FORGED = 50


def _forge_pushes(tree: DefaultTree) -> int:
    """Pushes naming the watcher with 1000 lost messages, from a process outside the tree;
    how many the metrics actor refused. They reach its PULL socket on a connection of their
    own, which nothing orders against the sys.info request on its ROUTER: on a busy machine
    the request is answered before the pushes are read, so the count is asked again until
    it has them all or 30 s passed."""
    # (the context terminated before the process exits: pyzmq skips that at interpreter
    # exit, and pushes still waiting for the connection on a busy machine were lost with
    # it: the metrics actor counted none of the 50 once)
    code = ("import zmq, msgpack; ctx = zmq.Context(); s = ctx.socket(zmq.PUSH); "
            f"s.connect({endpoints.metrics_in(tree.dir)!r}); "
            "[s.send_multipart([b'MOOR1', msgpack.packb({'actor': 'watcher', 'pid': 1, "
            "'ep': 'e', 'loss': {'stream_lost': 1000}}), msgpack.packb({})]) "
            f"for _ in range({FORGED})]; s.close(linger=-1); ctx.term()")  # (all out)
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
    deadline = time.monotonic() + 30
    with tree.client(timeout=10.0) as c:
        while True:
            refused = int(c.call("metrics", "sys.info")["bad_pushes"])
            if refused >= FORGED or time.monotonic() > deadline:
                return refused
            time.sleep(0.01)  # sleep-ok: polling a count the metrics actor keeps


def _big_topics(tree: DefaultTree, names: list[str]) -> None:
    code = ("import sys, zmq; ctx = zmq.Context(); socks = []\n"
            f"for ep in {[endpoints.pub(tree.dir, n) for n in names]!r}:\n"
            "    for i in range(10):\n"
            "        s = ctx.socket(zmq.SUB); s.setsockopt(zmq.LINGER, 0); s.connect(ep)\n"
            "        s.setsockopt(zmq.SUBSCRIBE, bytes([65 + i]) * (1 << 20)); socks.append(s)\n"
            "import os, time; time.sleep(2); os._exit(0)\n")  # (libzmq's teardown of them
    subprocess.run([sys.executable, "-c", code], timeout=120)  # can crash: not ours)


def _stranger(tree: DefaultTree) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(tree.dir / "ptykeeper.sock"))
        body = msgpack.packb({"t": "hello", "tok": "0" * 32})
        s.sendall(struct.pack(">I", len(body)) + body)
        s.settimeout(10)
        with contextlib.suppress(OSError):
            s.recv(1)


def _hostile_bodies(tree: DefaultTree, names: list[str]) -> None:
    ctx = zmq.Context()
    try:
        for name in names:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, 30_000)
            s.connect(endpoints.rpc(tree.dir, name))
            for i in range(6):
                frames = encode_request(i + 1, "abuser-1", "sys.ping", None)
                frames[2] = b"\xdd" + (4 << 20).to_bytes(4, "big") + b"\x90" * (4 << 20)
                s.send_multipart(frames)
                with contextlib.suppress(zmq.Again):
                    s.recv_multipart()
            s.close(0)
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(endpoints.metrics_in(tree.dir))
        for _ in range(6):
            push.send_multipart([TAG, packb({"actor": "client.x", "pid": 1, "ep": "e"}),
                                 b"\xdd" + (4 << 20).to_bytes(4, "big") + b"\x90" * (4 << 20)])
        push.close()
    finally:
        ctx.destroy(linger=0)


def _hostile_feeds(tree: DefaultTree, size: int) -> int:
    """`size` NULs on a parser stream that reads tokens: an event a byte, so each feed's
    answer is as big as the parser's budget lets it be; the bytes parsed."""
    data = b"\0" * size
    with tree.client(timeout=30.0) as c:
        c.call("parser", "parse.open", {"stream": "abuse", "tokens": True})
        offset = 0
        while offset < size:
            offset = c.request("parser", "parse.feed", {"stream": "abuse", "offset": offset},
                               attachments=[data[offset:]]).body["offset"]
        c.call("parser", "parse.close", {"stream": "abuse"})
        return offset


def _creates_in_flight(tree: DefaultTree, n: int) -> int:
    with tree.client(timeout=60.0) as c:
        results = c.pipeline("terminal", [("term.create", {"shell": "sh"})] * n, window=n,
                             timeout=60.0)
        ok = [r for r in results if isinstance(r, dict)]
        for r in ok:
            with contextlib.suppress(MoorageError):
                c.call("terminal", "term.close", {"session": r["session"]})
        return len(ok)


class Collector(SessionFollower):
    """One session's output as a consumer takes it: through the client's Subscription (gaps
    repaired by replay, bytes seen twice dropped by offset), acknowledged as it goes
    (`term.ack`: the session's shell never runs more than a window ahead of it)."""

    ACK_EVERY = 256 << 10

    def __init__(self, tree: DefaultTree, sid: str) -> None:
        super().__init__(tree, sid)
        self.data = bytearray()
        self.acked = 0
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            ev = self.sub.next(timeout=0.2)
            if isinstance(ev, (Loss, BytesLost)):
                self.losses += 1
            elif isinstance(ev, StreamMessage):
                self.data += b"".join(ev.attachments)
                if len(self.data) - self.acked >= self.ACK_EVERY:
                    self.acked = len(self.data)
                    with contextlib.suppress(MoorageError):
                        self.client.call("terminal", "term.ack",
                                         {"session": self.sid, "offset": self.acked})


def expected_seq(n: int) -> bytes:
    return b"".join(b"%d\r\n" % i for i in range(1, n + 1))


def _rss_mb(c: Client, actor: str) -> list[float]:
    """An actor's resident memory in MB as [its own (anonymous: heap, stacks), the shared
    memory it maps (the sessions' rings)], [0, 0] if it is between two lives at this moment.
    Split because a ring's pages count in the RSS of every process that touched them: a
    terminal that has read all of three sessions' output has RSS a ring's size larger per
    session without owning a byte more, while a leak across restarts shows in the first."""
    try:
        pid = c.call(actor, "sys.info", timeout=5.0)["pid"]
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status")
                      .read_text().splitlines() if line.startswith(("RssAnon", "RssShmem")))
    except (MoorageError, OSError, ValueError):
        return [0.0, 0.0]
    return [round(int(fields[k].split()[0]) * 1024 / 1e6, 1) for k in ("RssAnon", "RssShmem")]


KILL_TURNS = (("ptykeeper",), ("terminal",), ("ptykeeper", "terminal"))


def custody(sessions: int, lines: int, kills: int, gap_s: float = 0.3) -> Result:
    """R14: SIGKILL of the keeper, of the terminal actor, and of both at once, in turn,
    `kills` times, while `sessions` sessions each print `seq 1 lines`: the same shells,
    every byte once, and the next exec of each integrated."""
    res = Result("R14 custody")
    tree = DefaultTree()
    tree.start()
    try:
        with tree.client(timeout=30.0) as c:
            made = _sessions(c, sessions)
            sids = [s["session"] for s in made]
            res.rss_before_mb = tree.rss() / 1e6
            collectors = [Collector(tree, sid) for sid in sids]
            for sid in sids:
                c.call("terminal", "term.write",
                       {"session": sid, "data": f"seq 1 {lines}; echo seq-''done\r"})
            hit: Counter[str] = Counter()
            rss: list[list[list[float]]] = []  # after each kill: each one's [own, rings] MB
            for i in range(kills):
                turn = KILL_TURNS[i % len(KILL_TURNS)]
                pids = {victim: c.call(victim, "sys.info")["pid"] for victim in turn}
                for pid in pids.values():
                    os.kill(pid, signal.SIGKILL)
                hit["+".join(turn)] += 1
                t0 = time.monotonic()
                for victim, pid in pids.items():
                    while time.monotonic() - t0 < 30:
                        with contextlib.suppress(MoorageError):
                            if c.call(victim, "sys.info", timeout=2.0)["pid"] != pid:
                                break
                        time.sleep(0.01)  # polling the successor's own answer
                time.sleep(gap_s)  # sleep-ok: the pace of the kills
                rss.append([_rss_mb(c, name) for name in ("ptykeeper", "terminal", "terminals")])
            whole = expected_seq(lines)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300 and not all(
                    b"seq-done\r\n" in col.data for col in collectors):
                time.sleep(0.05)  # the outputs' own progress, looked at
            settled = [_rss_mb(c, name) for name in ("ptykeeper", "terminal", "terminals")]
            listed = {s["session"]: s for s in c.call("terminal", "term.list")["sessions"]}
            same = sum(1 for s in made if listed.get(s["session"], {}).get("pid") == s["pid"])
            exact = sum(1 for col in collectors if whole in col.data
                        and col.data.count(b"\r\n%d\r\n" % (lines // 2)) == 1)
            integrated = 0
            for sid in sids:
                r = c.call("terminal", "term.exec", {"session": sid, "command": "echo ok"},
                           timeout=30)
                integrated += r["output"] == "ok" and r["mode"] == "integration"
            res.calls = sessions
            res.ok = min(same, exact, integrated)
            res.wrong = sessions - exact
            res.notes = {"kills": dict(hit), "same_shells": f"{same}/{sessions}",
                         "every_byte_once": f"{exact}/{sessions}",
                         "integrated_after": f"{integrated}/{sessions}",
                         "bytes_each": len(whole),
                         "losses": sum(col.losses for col in collectors),
                         # bounded memory: the successors after the last kill against
                         # those after the first (MB, [own, rings mapped], of the keeper,
                         # the terminal, and the terminals supervisor, which holds every
                         # session's descriptors)
                         "rss_after_first_kill_mb": rss[0] if rss else None,
                         "rss_after_last_kill_mb": rss[-1] if rss else None,
                         # once every output has ended (the last successors at rest)
                         "rss_at_end_mb": settled}
            if same != sessions or exact != sessions or integrated != sessions:
                res.notes["failures"] = "a shell, a byte or the integration was lost"
            for col in collectors:
                col.close()
            res.rss_after_mb = tree.rss() / 1e6
            res.recovery_s = round(wait_all_running(c, 60), 3)
    finally:
        res.orphans = len(tree.stop())
        tree.cleanup()
    return res


# --- the table ---------------------------------------------------------------------------------


def table(results: list[Result], min_success: float) -> str:
    head = (f"{'scenario':<16} {'calls':>7} {'ok':>7} {'success':>8} {'hung':>5} {'wrong':>5} "
            f"{'gaps':>5} {'orphans':>7} {'RSS MB before/after':>20} {'running in':>10}  ok")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.scenario:<16} {r.calls:>7} {r.ok:>7} {r.success:>8.4%} {r.hung:>5} "
            f"{r.wrong:>5} {r.gaps_unreported:>5} {r.orphans:>7} "
            f"{r.rss_before_mb:>9.0f}/{r.rss_after_mb:<10.0f} {r.recovery_s:>9.3f}s  "
            f"{'PASS' if r.passed(min_success) else 'FAIL'}")
        if r.errors:
            lines.append(f"{'':<16} errors: {dict(sorted(r.errors.items()))}")
        if r.notes:
            lines.append(f"{'':<16} {r.notes}")
    return "\n".join(lines)


def run(duration: float, interval: float, frames: int, short: bool) -> list[Result]:
    return [chaos(duration, interval, "kill"), chaos(duration / 2, 0.5, "stop"),
            chaos(duration / 2, interval, "kill", spare=("terminals",)),
            custody(3, 300_000 if short else 6_000_000, 6 if short else 21),
            fuzz(frames), abuse(big=not short)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--short", action="store_true", help="the test suite's version")
    a = ap.parse_args(argv)
    if a.short:
        a.duration, a.frames = min(a.duration, 10.0), min(a.frames, 2000)
    min_success = MIN_SUCCESS
    results = run(a.duration, a.interval, a.frames, a.short)
    print(f"\n== chaos (duration {a.duration:g} s, every {a.interval:g} s) ==")
    print(table(results, min_success))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    import json

    (RESULTS_DIR / "chaos.json").write_text(json.dumps(
        [asdict(r) | {"success": r.success, "passed": r.passed(min_success)} for r in results],
        indent=2))
    return 0 if all(r.passed(min_success) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
