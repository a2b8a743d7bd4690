"""X1-X3: Ray actors beside moorage's actors, in one run, on the same calls.

A user who wants Python code in another process, called like a method, would otherwise pick
a Ray actor. Both run at once here (a local Ray instance started by `ray.init`, a moorage
tree started by `moorage up`), and each comparison alternates between them, so both see the
machine's load of the moment:

  X1 call p50/p99   one call and its reply, one at a time: a Ray actor method that returns
                    None (`ray.get(actor.ping.remote())`) against `sys.ping` to the parser
                    actor (an idle one, as P1) through the Python client; `--block` calls
                    of each in turn (one of each in turn put each of ours right after a Ray
                    call, while Ray's raylet and worker threads still worked on it: our p50
                    there was 199 us against 114 alone, on a quiet machine)
  X2 pipelined      many calls in flight: Ray's `--futures` `.remote()` calls, then one
                    `ray.get` of them all; moorage's `client.pipeline` of as many sys.ping
                    with its default window (256); best of `--rounds`, in turn
  X3 restart        SIGKILL of the actor's process -> the first good reply from its successor:
                    Ray's actor has `max_restarts=-1` and the call after the kill
                    `max_task_retries=-1` (Ray resends it to the restarted actor: its fastest
                    way back), until one answers from another pid; moorage's metrics actor
                    (as P11) on a tree whose supervisor lets a benchmark kill the same actor
                    many times (P11's configuration), the client resending until a reply
                    carries the successor's epoch; one kill of each in turn

The "limit" column is Ray's figure; the ratio is ours / Ray's. Targets (shared/targets.md):
X1 ours >= 5x faster at p50 (ratio <= 0.2), X2 >= 8x Ray's rate, X3 >= 20x faster.

Install the peer (into the venv that runs this; it is not a moorage dependency, 80 MB wheel,
240 MB installed): `pip install ray` (the minimal wheel, enough for local actors; `ray[default]`
adds the dashboard and is not needed). Without it this prints how, and skips.

Ray runs here with its defaults except: 2 CPUs, no dashboard, worker logs not forwarded,
its session directory in a temporary directory removed at the end, and its authentication
token (Ray 2.60 turns token authentication on for a local instance and would write one to
~/.ray) given in RAY_AUTH_TOKEN for this run only.

    python -m perf.peers.ray_actors [--n 5000] [--futures 5000] [--rounds 3] [--kills 10] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from perf._report import Report, Row, percentiles, plot_percentiles
from perf._tree import BenchTree
from perf.p11_p12_recovery import KILL_CONFIG, signal_to_successor_ms

INSTALL = "pip install ray   (into this venv; 'ray[default]' works too)"
PING_ACTOR = "parser"  # an idle actor, as P1
KILL_ACTOR = "metrics"  # as P11

pc = time.perf_counter


def ray_missing() -> str | None:
    """Why Ray cannot run here, or None."""
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed"
    return None


class RaySide:
    """A local Ray instance and one restartable actor in it."""

    def __init__(self, work: str) -> None:
        # Before Ray's first import (its constants read the environment then): the local
        # instance on the loopback address, as Ray does on macOS and Windows, instead of the
        # machine's first interface; and a token of this run's, not a file in ~/.ray. Both
        # are taken out again in close(), for a runner that calls main() in its own process.
        # (RAY_AUTH_MODE=token is its default for a local instance, said aloud so that it
        # does not warn.)
        self.env_set: list[str] = []
        for k, v in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "token"),
                     ("RAY_AUTH_TOKEN", secrets.token_hex(32))):
            if k not in os.environ:
                os.environ[k] = v
                self.env_set.append(k)
        import ray

        self.ray = ray
        self.work = work
        self.version = ray.__version__
        self.pid = 0

    def start(self) -> None:
        ray = self.ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _temp_dir=self.work, logging_level="WARNING")

        @ray.remote(max_restarts=-1, max_task_retries=0)
        class Pinger:
            def ping(self) -> None:
                return None

            def pid(self) -> int:
                return os.getpid()

        self.actor = Pinger.remote()
        self.pid = ray.get(self.actor.pid.remote(), timeout=120)

    def latencies(self, n: int) -> list[float]:
        get, ping = self.ray.get, self.actor.ping
        out = []
        for _ in range(n):
            t0 = pc()
            get(ping.remote())
            out.append((pc() - t0) * 1e6)
        return out

    def pipelined(self, n: int) -> float:
        ping = self.actor.ping
        t0 = pc()
        got = self.ray.get([ping.remote() for _ in range(n)])
        rate = n / (pc() - t0)
        assert len(got) == n and all(g is None for g in got)
        return rate

    def kill_to_reply_ms(self) -> float:
        """SIGKILL the actor's process; ms until a call answers from its successor."""
        from ray.exceptions import GetTimeoutError, RayActorError

        old = self.pid
        # A call that Ray itself resends to the restarted actor: about 1 s here, where a call
        # without retries waits about 2 s for ActorUnavailableError before the next can go.
        probe = self.actor.pid.options(max_task_retries=-1)
        t0 = pc()
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            try:
                pid = self.ray.get(probe.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                if time.monotonic() > deadline:
                    raise TimeoutError("the Ray actor did not come back in 120 s") from None
                continue
            if pid != old:
                self.pid = pid
                return (pc() - t0) * 1000

    def close(self) -> None:
        """Stop the local instance (its processes too); safe when it never started. A run
        killed before this (SIGKILL) takes Ray's GCS server and raylet with it (Ray starts
        them with PR_SET_PDEATHSIG on Linux); Ray's two agents, the raylet's children, see it
        gone and exit by themselves about a minute later (seen here: 60-100 s); the moorage
        tree goes by its --parent, and the temporary directories stay."""
        self.ray.shutdown()
        for k in self.env_set:
            os.environ.pop(k, None)


def moorage_latencies(call: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = pc()
        call(PING_ACTOR, "sys.ping")
        out.append((pc() - t0) * 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="single calls per side (X1)")
    ap.add_argument("--block", type=int, default=100,
                    help="single calls of one side before the other's (X1)")
    ap.add_argument("--futures", type=int, default=5000, help="calls in flight (X2)")
    ap.add_argument("--rounds", type=int, default=3, help="pipelined runs per side (X2)")
    ap.add_argument("--kills", type=int, default=10, help="kills per side (X3)")
    ap.add_argument("--quick", action="store_true",
                    help="small counts: --n 300 --futures 2000 --rounds 2 --kills 2 (Ray's "
                         "start and its restarts, about 1 s each, still take most of it)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.futures, args.rounds, args.kills = 300, 2000, 2, 2
    print(f"peer: Ray actors, install with: {INSTALL}")
    why = ray_missing()
    if why is not None:
        print(f"SKIP X1-X3: {why}; nothing measured")
        return 0
    report = Report("peer_ray_actors")
    # Ray's unix sockets live under its temp dir: keep the path short (108-byte limit).
    work = tempfile.mkdtemp(prefix="x1-", dir="/tmp")
    tree = BenchTree(KILL_CONFIG)
    ray_side = RaySide(work)
    client = None
    try:
        tree.start()
        client = tree.client(timeout=10.0, attempt_timeout=0.5)
        ray_side.start()
        print(f"Ray {ray_side.version} local instance; moorage tree {tree.dir} "
              "(P11's supervisor settings)")
        call = client.call
        for _ in range(min(1000, args.n)):  # warm-up, both sides
            ray_side.latencies(1)
            call(PING_ACTOR, "sys.ping")

        # X1: a block of each in turn
        theirs: list[float] = []
        ours: list[float] = []
        block = max(1, min(args.block, args.n))
        for _ in range(max(1, args.n // block)):
            theirs += ray_side.latencies(block)
            ours += moorage_latencies(call, block)
        po, pr = percentiles(ours), percentiles(theirs)
        report.add(Row("X1", "one call p50: sys.ping vs Ray actor method", "µs",
                       "<= 0.2x Ray (5x faster)", po[50], pr[50], po[50] <= 0.2 * pr[50],
                       note=f"Ray / ours = {pr[50] / po[50]:.1f}x; n={len(ours)} each, "
                            f"alternated in blocks of {block}"))
        report.add(Row("X1", "one call p99: sys.ping vs Ray actor method", "µs",
                       "(informative)", po[99], pr[99], True,
                       note=f"Ray / ours = {pr[99] / po[99]:.1f}x"))
        plot_percentiles("peer_ray_call", {"moorage sys.ping (Python client)": ours,
                                           f"Ray {ray_side.version} actor call": theirs})

        # X2: pipelined, in turn
        rates_ours, rates_ray = [], []
        for _ in range(args.rounds):
            rates_ray.append(ray_side.pipelined(args.futures))
            t0 = pc()
            got = client.pipeline(PING_ACTOR, [("sys.ping", None)] * args.futures)
            rates_ours.append(args.futures / (pc() - t0))
            assert len(got) == args.futures and not any(isinstance(g, Exception) for g in got)
        ro, rr = max(rates_ours), max(rates_ray)
        report.add(Row("X2", f"pipelined calls, {args.futures:,} in flight", "/s",
                       ">= 8x Ray", ro, rr, ro >= 8 * rr,
                       note=f"best of {args.rounds}; ours {[round(r) for r in rates_ours]}, "
                            f"Ray {[round(r) for r in rates_ray]}"))

        # X3: one kill of each in turn
        print(f"X3: {args.kills} kills of each side's actor (Ray prints a notice of each)",
              flush=True)
        kills_ours, kills_ray = [], []
        for _ in range(args.kills):
            kills_ray.append(ray_side.kill_to_reply_ms())
            kills_ours.append(signal_to_successor_ms(client, KILL_ACTOR, signal.SIGKILL))
        ko, kr = percentiles(kills_ours), percentiles(kills_ray)
        report.add(Row("X3", "SIGKILL -> successor's first reply p50", "ms",
                       "<= 0.05x Ray (20x faster)", ko[50], kr[50], ko[50] <= 0.05 * kr[50],
                       note=f"Ray / ours = {kr[50] / ko[50]:.0f}x; {args.kills} kills each; "
                            f"max ours {max(kills_ours):.1f} ms, Ray {max(kills_ray):.0f} ms"))
        report.extra = {
            "ray": ray_side.version,
            "x1_us": {"ours": po, "ray": pr},
            "x2_per_s": {"ours": rates_ours, "ray": rates_ray},
            "x3_ms": {"ours": kills_ours, "ray": kills_ray},
        }
    finally:
        if client is not None:
            client.close()
        ray_side.close()
        tree.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
