"""R10: levels and quality over time while a memory hog in a terminal session grows past the
tree's budget, is killed, and the tree comes back.

The default tree is brought up by `moorage up` with a small PSS budget; a `python3` in a bash
session of the terminal actor allocates (and touches) `--step` more MB every `--period`
seconds until the resource actor kills it. Every `--every` seconds `resource.level` is asked
(time, pressure, level, quality); the `resource.level` and `resource.alert` streams give the
changes and what each actor did (the action column). The run ends once the level is back to
normal at quality 3 after the kill, or after `--max-seconds`.

    python -m perf.r10_levels [--budget 500] [--step 40] [--period 0.5] [--every 0.25]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moorage.protocol.envelope import StreamMessage
from perf._report import Report, Row
from perf._tree import BenchTree

MB = 1024 * 1024
HOG = ("import sys; held = []\n"
       "for line in sys.stdin:\n"
       "    held.append(b'x' * (int(line) << 20))\n")


def config(budget: int, interval: float) -> str:
    return f"""
[actor.terminal]
shells = ["bash"]

[actor.resource]
interval_s = {interval}
memory_budget_mb = {budget}
memory_metric = "pss"
down_samples = 3
quality_up_samples = 2
kill_after_samples = 2
"""


def summarize(did: Any) -> str:
    """One actor's `sys.pressure` answer, only what it changed."""
    if not isinstance(did, dict):
        return str(did)
    parts = []
    for k, v in did.items():
        if isinstance(v, dict):
            freed = v.get("bytes_freed")
            if freed:
                parts.append(f"{k} -{freed // 1024} KB")
        elif k == "integration":
            parts.append("integration " + ("on" if v else "off"))
        elif v and k != "noted":
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def actions(body: dict) -> str:
    told = body.get("actions", {})
    done = [f"{a}: {s}" for a, did in sorted(told.items()) if (s := summarize(did))]
    off = body.get("features_off") or []
    return "; ".join(([f"off: {'+'.join(off)}"] if off else ["all features on"]) + done)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tree = BenchTree(config(args.budget, args.interval))
    tree.start()
    home = Path(tempfile.mkdtemp(prefix="r10-home-"))
    (home / ".bashrc").write_text("")
    rows: list[tuple[float, int, str, int, str]] = []
    try:
        with tree.client(timeout=30.0) as c:
            levels = c.subscribe("resource", ["resource.level"], from_seq=1)
            alerts = c.subscribe("resource", ["resource.alert"], from_seq=1)
            sid = c.call("terminal", "term.create", {
                "shell": "bash", "env": {"HOME": str(home), "PATH": "/usr/bin:/bin"}})["session"]
            status = c.call("resource", "resource.status", {"fresh": True})
            idle = status["totals"]["memory"] / MB
            c.call("terminal", "term.write", {
                "session": sid,
                "data": f"{sys.executable} -c \"$(cat <<'EOF'\n{HOG}EOF\n)\"\r"})
            # Lines typed before the hog runs would go to bash's readline: wait for it.
            while not any(r["role"] == "descendant" and r["name"].startswith("python")
                          for r in c.call("resource", "resource.status",
                                          {"fresh": True})["processes"]):
                pass
            t0 = time.monotonic()
            next_step = t0
            next_poll = t0
            held = 0
            killed_at = back_at = critical_at = None
            while time.monotonic() - t0 < args.max_seconds:
                now = time.monotonic()
                if killed_at is None and now >= next_step:
                    c.call("terminal", "term.write", {"session": sid, "data": f"{args.step}\r"})
                    held += args.step
                    rows.append((now - t0, -1, "", -1, f"hog +{args.step} MB (asked {held})"))
                    next_step += args.period
                if now >= next_poll:
                    lv = c.call("resource", "resource.level")
                    rows.append((now - t0, lv["pressure"], lv["level"], lv["quality"], ""))
                    next_poll += args.every
                for sub in (levels, alerts):
                    ev = sub.next(timeout=0.01)
                    while isinstance(ev, StreamMessage):
                        b, t = ev.body, time.monotonic() - t0
                        if "kind" in b:
                            what = (f"ALERT {b['kind']}/{b['action']}" +
                                    (f" pid {b['pid']} ({b.get('memory', 0) // MB} MB)"
                                     if "pid" in b else ""))
                            rows.append((t, b["pressure"], b["level"], -1, what))
                            if b["action"] == "killed":
                                killed_at = t
                        else:
                            rows.append((t, b["pressure"], b["level"], b["quality"],
                                         f"-> {b['level']}/q{b['quality']}: {actions(b)}"))
                            if b["level"] == "critical" and critical_at is None:
                                critical_at = t
                            if killed_at is not None and (b["level"], b["quality"]) == (
                                    "normal", 3):
                                back_at = t
                        ev = sub.next(timeout=0)
                if back_at is not None and time.monotonic() - t0 > back_at + args.tail:
                    break
                time.sleep(0.005)  # a benchmark's pacing, not synchronisation
            final = c.call("resource", "resource.status")
    finally:
        tree.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {"rows": rows, "idle_mb": idle, "critical_at": critical_at, "killed_at": killed_at,
            "back_at": back_at, "kills": final["counters"].get("kills", 0),
            "final": {k: final[k] for k in ("level", "pressure", "quality")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=500, help="MB of PSS")
    ap.add_argument("--step", type=int, default=40, help="MB the hog adds per step")
    ap.add_argument("--period", type=float, default=0.5, help="seconds between steps")
    ap.add_argument("--interval", type=float, default=0.25, help="the sampler's interval")
    ap.add_argument("--every", type=float, default=0.25, help="seconds between polls")
    ap.add_argument("--tail", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    got = run(args)
    print(f"\nR10: default tree, budget {args.budget} MB PSS (idle {got['idle_mb']:.0f} MB), "
          f"hog +{args.step} MB every {args.period} s, sampled every {args.interval} s")
    print(f"{'time':>7} {'pressure':>8}  {'level':<9} {'quality':>7}  action")
    for t, p, lvl, q, what in sorted(got["rows"], key=lambda r: r[0]):
        ps = "" if p < 0 else str(p)
        qs = "" if q < 0 else str(q)
        print(f"{t:6.2f}s {ps:>8}  {lvl:<9} {qs:>7}  {what}")
    report = Report("r10_levels")
    back = got["back_at"]
    ok = back is not None and got["kills"] == 1 and got["final"]["level"] == "normal"
    report.add(Row("R10", "kill -> normal level and quality 3", "s",
                   "level returns after", (back - got["killed_at"]) if ok else float("nan"),
                   None, ok, note=f"critical at {got['critical_at']}, killed at "
                                  f"{got['killed_at']}, back at {back}; final {got['final']}"))
    report.extra = {"args": vars(args), "rows": got["rows"], "idle_mb": got["idle_mb"]}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
