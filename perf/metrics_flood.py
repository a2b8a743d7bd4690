"""The metrics actor's memory under a flood of clients' latency pushes (R12: forged metrics
pushes, memory back to its baseline).

Anyone who can reach `metrics.in` may push as `client.<name>`, with no token. Each push built
here is about 1 KB on the wire and within every bound of PROTOCOL.md section 2: 9 ops, each a
histogram of every HDR bucket (3,327 non-zero counts), op names cycling over 500. A default
tree is brought up by `moorage up`; `--pushes` of them are sent in one burst; the metrics
actor's resident memory (/proc: VmRSS, and VmHWM for its peak) is read before, once every
push is taken, and again once its window has gone by, with the tree's level and
the actor's own account of what it holds (`sys.info`). Two R12 rows a flood: the tree stays
at `normal` with the actor serving throughout, and the actor's memory once the flood is
taken stays within MEMORY_ROOM_MB of its baseline (the budget of held latency values bounds
it; 150 pushes took it from 32 to 331 MB before there was one).

    python -m perf.metrics_flood [--pushes 150 525] [--names 1] [--after-s 75]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import TAG
from moorage.protocol.errors import MoorageError
from moorage.protocol.histogram import new_histogram
from perf._report import Report, Row

OPS_PER_PUSH = 9
OP_NAMES = 500
MEMORY_ROOM_MB = 32.0  # above the baseline, what a flood may leave held (R12's bound)


def every_bucket_hist() -> tuple[bytes, int]:
    """An encoded histogram holding one value in every HDR bucket, and how many values."""
    h = new_histogram()
    values = sorted({h.get_highest_equivalent_value(h.get_value_from_index(i))
                     for i in range(h.counts_len)} - {0})
    for v in values:
        h.record_value(v)
    return h.encode(), len(values)


def flood_frames(n: int, name: str = "flood", names: int = 1) -> list[list[bytes]]:
    """`n` pushes as `client.<name>`, as the review's flood made them; with `names` > 1,
    push i is `client.<name><i % names>`'s."""
    enc, count = every_bucket_hist()
    headers = [msgpack.packb({"actor": f"client.{name}{i if names > 1 else ''}",
                              "pid": os.getpid(), "ep": "x"}) for i in range(names)]
    return [[TAG, headers[i % names], msgpack.packb({
        f"a/op{(i * OPS_PER_PUSH + k) % OP_NAMES}": {"ok": count, "error": 0, "hist": enc}
        for k in range(OPS_PER_PUSH)})] for i in range(n)]


def send(runtime_dir: Path, frames: list[list[bytes]]) -> None:
    """Every push handed to ZeroMQ and flushed to the metrics actor's socket."""
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 0)  # the whole burst queued, as a flood would be
        s.setsockopt(zmq.LINGER, 30_000)
        s.connect(endpoints.metrics_in(runtime_dir))
        for f in frames:
            s.send_multipart(f)
        s.close()  # (lingers until every push is on the wire)
    finally:
        ctx.term()


def proc_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def metrics_pid(c: Client) -> int:
    tree = c.call("supervisor", "sup.status")
    (pid,) = [ch["pid"] for ch in tree["children"] if ch["id"] == "metrics"]
    return int(pid)


def level(c: Client) -> str:
    """The tree's level and quality, and above normal what drives it (the resource actor's
    largest pressure component)."""
    try:
        r = c.call("resource", "resource.status", timeout=5.0)
    except MoorageError as exc:
        return f"? ({exc.error.name})"
    out = f"{r['level']}/q{r['quality']}"
    if r["level"] != "normal" and r.get("components"):
        top = max(r["components"].items(), key=lambda kv: kv[1])
        out += f"[{top[0]} {top[1]:.0f}]"
    return out


HELD_KEYS = ("held_values", "client_held_values", "client_budget", "over_budget_pushes",
             "folded_series", "latencies_dropped_series", "client_pushes_extra",
             "client_pushes_counts_only")


def held(info: dict[str, Any]) -> str:
    return ", ".join(f"{k} {info[k]}" for k in HELD_KEYS if k in info) or "(not reported)"


def rss_kb(pid: int) -> int | None:
    """VmRSS of `pid`, or None once it is gone."""
    try:
        return proc_kb(pid, "VmRSS")
    except (OSError, KeyError):
        return None


def watch(c: Client, pid: int, seconds: float, out: dict[str, Any], key: str) -> bool:
    """Read `pid`'s RSS and the tree's level once a second for `seconds`; the highest RSS
    and the worst level seen go into `out`. False if the actor went away meanwhile."""
    end = time.monotonic() + seconds
    worst = out.setdefault(f"levels_{key}", [])
    while time.monotonic() < end:
        kb = rss_kb(pid)
        if kb is None:
            out["note"] = f"the metrics actor was stopped (shed or killed) during {key}"
            return False
        out[f"rss_max_{key}_mb"] = max(out.get(f"rss_max_{key}_mb", 0), kb / 1024)
        lv = level(c)
        if lv not in worst:
            worst.append(lv)
        time.sleep(1.0)  # pacing the readings
    return True


def flood_pushes(c: Client) -> int:
    """The pushes of `client.flood*` the metrics actor took."""
    actors = c.call("metrics", "metrics.query", {"op": "-"})["actors"]
    return sum(d["pushes"] for a, d in actors.items() if a.startswith("client.flood"))


def run(n: int, after_s: float, names: int = 1) -> dict[str, Any]:
    from perf._tree import BenchTree

    with BenchTree() as tree, Client(tree.dir, timeout=30.0) as c:
        pid = metrics_pid(c)
        info0 = c.call("metrics", "sys.info")
        base = proc_kb(pid, "VmRSS")
        out: dict[str, Any] = {"pushes": n, "rss_before_mb": base / 1024,
                               "level_before": level(c)}
        frames = flood_frames(n, names=names)
        t0 = time.monotonic()
        send(tree.dir, frames)
        while True:  # until every push is taken
            if rss_kb(pid) is None:
                out["note"] = "the metrics actor was stopped (shed or killed) while taking"
                break
            out["rss_max_taking_mb"] = max(out.get("rss_max_taking_mb", 0),
                                           (rss_kb(pid) or 0) / 1024)
            info = c.call("metrics", "sys.info")
            if info["received_pushes"] - info0["received_pushes"] >= n and flood_pushes(c) >= n:
                break
            time.sleep(0.2)  # pacing the reads
        out["taken_s"] = time.monotonic() - t0
        if "note" in out:
            return out
        out["rss_taken_mb"] = proc_kb(pid, "VmRSS") / 1024
        out["level_taken"] = level(c)
        out["held_taken"] = held(c.call("metrics", "sys.info"))
        if watch(c, pid, after_s, out, "after"):
            out["rss_after_mb"] = proc_kb(pid, "VmRSS") / 1024
            out["rss_peak_mb"] = proc_kb(pid, "VmHWM") / 1024
            out["level_after"] = level(c)
            out["held_after"] = held(c.call("metrics", "sys.info"))
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pushes", type=int, nargs="+", default=[150, 525])
    p.add_argument("--names", type=int, default=1,
                   help="client names the pushes are spread over (at most 500)")
    p.add_argument("--after-s", type=float, default=75.0,
                   help="how long to wait after the flood before the last reading")
    args = p.parse_args(argv)
    report = Report("metrics_flood")
    for n in args.pushes:
        r = run(n, args.after_s, args.names)
        print(f"{n} pushes: metrics RSS {r['rss_before_mb']:.1f} MB before "
              f"({r['level_before']}); taken in {r['taken_s']:.1f} s", end="")
        if "rss_taken_mb" in r:
            print(f", then {r['rss_taken_mb']:.1f} MB ({r['level_taken']})", end="")
        print(f"; at most {r.get('rss_max_taking_mb', 0):.1f} MB while taking")
        if "rss_max_after_mb" in r:
            print(f"  next {args.after_s:g} s: at most {r['rss_max_after_mb']:.1f} MB, "
                  f"levels {' '.join(r['levels_after'])}")
        if "rss_after_mb" in r:
            print(f"  {args.after_s:g} s later: {r['rss_after_mb']:.1f} MB "
                  f"({r['level_after']}); peak {r['rss_peak_mb']:.1f} MB (VmHWM)")
            print(f"  held once taken: {r['held_taken']}")
            print(f"  held after:      {r['held_after']}")
        if "note" in r:
            print(f"  {r['note']}")
        sys.stdout.flush()
        rows(report, r, args.after_s)
    return report.finish()


def rows(report: Report, r: dict[str, Any], after_s: float) -> None:
    """R12's two rows for one flood `r` (run's answer)."""
    n, base = r["pushes"], r["rss_before_mb"]
    levels = [r.get("level_taken"), *r.get("levels_after", [])]
    served = "note" not in r
    above = [lv for lv in levels if not str(lv).startswith("normal/")]
    report.add(Row("R12", f"{n} forged metrics pushes: levels above normal", "readings",
                   "0, actor serving", float(len(above)), None, served and not above,
                   note=r.get("note", f"levels seen: {' '.join(map(str, levels))}")))
    held = r.get("rss_after_mb", r.get("rss_taken_mb", float("nan")))
    report.add(Row("R12", f"{n} forged metrics pushes: metrics RSS {after_s:g} s later", "MB",
                   f"<= baseline + {MEMORY_ROOM_MB:g} MB", held, base,
                   served and held <= base + MEMORY_ROOM_MB,
                   note=f"baseline {base:.1f} MB, {r.get('rss_max_taking_mb', 0):.1f} MB at "
                        f"most while taking, {r.get('rss_taken_mb', float('nan')):.1f} once "
                        f"taken"))


if __name__ == "__main__":
    sys.exit(main())
