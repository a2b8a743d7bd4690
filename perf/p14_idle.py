"""P14: the idle tree's total RSS and CPU, with the resource actor sampling it; and the cost
of one sample.

Two trees are brought up in turn by `moorage up`: the default tree plus the resource actor
(defaults: one sample a second, one per 5 s once the tree is calm), and the default tree
without it, the reference measured in the same run. Each is left alone for a warm-up, then
every process of it (found from the root's pid) is measured over `--seconds`: CPU from the
scheduler's run time of each of its threads (/proc/<pid>/task/*/schedstat, in ns:
cpu_times' 10 ms ticks are 0.1% of a core over 10 s, the size of an idle actor's whole
figure) at both ends, RSS (the target's figure) and PSS (what the tree really costs: forked
actors share the interpreter's pages) at the end.
The cost of one sample is the resource actor's own, over the same window: the CPU time its
sampler reports spent on the samples it took then (`resource.status` `sampler`), a sample
once a second or once per 5 s, with what caches went cold in between. For information, the
same `TreeSampler.sample` is then run back to back in this process against the running tree
(its caches warm: cheaper than the actor's), beside one psutil `children(recursive=True)` of
the root, the naive way of finding the tree.

    python -m perf.p14_idle [--seconds 10] [--warmup 3] [--samples 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from typing import Any

import psutil

from moorage.actors.resource.sampler import TreeSampler, roles_from_status
from moorage.supervisor.config import default_document
from perf._report import Report, Row, percentiles
from perf._tree import BenchTree

RESOURCE = {"id": "resource", "start": "moorage.actors.resource.actor:ResourceActor",
            "restart": "permanent", "shutdown_ms": 2000}
MB = 1024 * 1024


# --- a config: the default tree's children, with or without the resource actor -------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot render {v!r} as TOML")


def _children(children: list[dict], prefix: str = "children") -> list[str]:
    out = []
    for c in children:
        out.append(f"[[{prefix}]]")
        out += [f"{k} = {_value(v)}" for k, v in c.items() if k != "children"]
        if "children" in c:
            out += _children(c["children"], prefix + ".children")
    return out


def tree_config(with_resource: bool) -> str:
    """The default document's tree, the resource actor added (or removed); `[actor.*]`
    tables stay as the default has them."""
    children = [c for c in default_document()["children"] if c["id"] != "resource"]
    if with_resource:
        children.append(RESOURCE)
    text = "\n".join(_children(children)) + "\n"
    assert tomllib.loads(text)["children"] == children  # the rendering is faithful
    return text


# --- measuring an idle tree --------------------------------------------------------------------


def tree_processes(root: int) -> list[psutil.Process]:
    p = psutil.Process(root)
    return [p, *p.children(recursive=True)]


def cpu_seconds(p: psutil.Process) -> float:
    """Run time of the process's threads now alive, in seconds."""
    total = 0
    for tid in os.listdir(f"/proc/{p.pid}/task"):
        try:
            with open(f"/proc/{p.pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just exited
    return total / 1e9


def measure_idle(with_resource: bool, seconds: float, warmup: float,
                 samples: int) -> dict[str, Any]:
    tree = BenchTree(tree_config(with_resource))
    tree.start()
    try:
        with tree.client(timeout=10.0) as c:
            status = c.call("supervisor", "sup.status")
            roles = roles_from_status(status)
            time.sleep(warmup)  # a benchmark, not a test: start-up work settles first
            start = c.call("resource", "resource.status")["sampler"] if with_resource \
                else None
            procs = tree_processes(status["pid"])
            before = {p.pid: cpu_seconds(p) for p in procs}
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            rows = []
            for p in procs:
                with p.oneshot():
                    full = p.memory_full_info()
                    cpu = cpu_seconds(p) - before[p.pid]
                name = roles.actors.get(p.pid) or roles.supervisors.get(p.pid) or "zygote"
                rows.append({"pid": p.pid, "name": name, "rss_mb": full.rss / MB,
                             "pss_mb": full.pss / MB, "cpu_pct": 100 * cpu / elapsed})
            resource = c.call("resource", "resource.status") if with_resource else None
            in_actor = window_cost(start, resource["sampler"]) if resource else None
            sampler = measure_sampler(status, samples) if with_resource else None
    finally:
        tree.stop()
    return {
        "rows": rows,
        "rss_mb": sum(r["rss_mb"] for r in rows),
        "pss_mb": sum(r["pss_mb"] for r in rows),
        "cpu_pct": sum(r["cpu_pct"] for r in rows),
        "seconds": elapsed,
        "resource": resource,
        "in_actor": in_actor,
        "sampler": sampler,
    }


# --- the sampler's own cost ----------------------------------------------------------------------


def window_cost(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The resource actor's samples between two `resource.status` `sampler` tables: how many,
    their mean cost (the actor's own CPU time per sample, from its running mean) and the PSS
    reads among them. A mean over no sample is NaN."""
    samples = end["samples"] - start["samples"]
    spent = end["mean_cost_us"] * end["samples"] - start["mean_cost_us"] * start["samples"]
    return {"samples": samples, "mean_us": spent / samples if samples else float("nan"),
            "pss_reads": end["pss_reads"] - start["pss_reads"],
            "lifetime_mean_us": end["mean_cost_us"], "interval_s": end["interval_s"],
            "calm": end["calm"]}


def measure_sampler(status: dict, n: int) -> dict[str, Any]:
    roles = roles_from_status(status)
    out: dict[str, Any] = {}
    for metric in ("rss", "pss_tracked", "pss"):
        s = TreeSampler(metric)
        s.sample(roles)  # the first sample reads every pid's parent
        costs = [s.sample(roles).cost_us for _ in range(n)]
        out[metric] = percentiles(costs)
        out[metric]["mean"] = sum(costs) / len(costs)
    root = psutil.Process(status["pid"])
    naive = []
    for _ in range(n):
        t0 = time.thread_time_ns()
        root.children(recursive=True)
        naive.append((time.thread_time_ns() - t0) / 1000)
    out["children_recursive"] = percentiles(naive)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args(argv)
    report = Report("p14_idle")
    ref = measure_idle(False, args.seconds, args.warmup, args.samples)
    got = measure_idle(True, args.seconds, args.warmup, args.samples)
    n = len(got["rows"])
    report.add(Row("P14", f"idle tree PSS summed ({n} processes)", "MB", "<= 64 MB",
                   got["pss_mb"], ref["pss_mb"], got["pss_mb"] <= 64,
                   note=f"limit: the same tree without the resource actor; RSS summed "
                        f"(the zygotes' shared pages once per process) {got['rss_mb']:.1f} MB "
                        f"vs {ref['rss_mb']:.1f} MB"))
    report.add(Row("P14", f"idle tree CPU over {got['seconds']:.0f} s", "%",
                   "<= 0.3% of a core", got["cpu_pct"], ref["cpu_pct"], got["cpu_pct"] <= 0.3,
                   note="% of one core; limit: the same tree without the resource actor"))
    res = next(r for r in got["rows"] if r["name"] == "resource")
    report.add(Row("P14", "resource actor alone: CPU (calm: 1 sample / 5 s)", "%",
                   "(part of P14)",
                   res["cpu_pct"], None, res["cpu_pct"] <= 1.0,
                   note=f"RSS {res['rss_mb']:.1f} MB, PSS {res['pss_mb']:.1f} MB; "
                        f"in-actor mean sample cost since its start "
                        f"{got['resource']['sampler']['mean_cost_us']:.0f} us"))
    s, own = got["sampler"], got["in_actor"]
    metric = got["resource"]["budget"]["memory_metric"]
    report.add(Row("P14", f"one sample of the tree ({metric}), in the actor, mean", "us",
                   "<= 2 ms (0.2%/s)", own["mean_us"], s[metric]["mean"],
                   own["mean_us"] <= 2000,  # (False for NaN: no sample in the window)
                   note=f"the resource actor's own CPU time per sample, over the "
                        f"{got['seconds']:.0f} s measured: {own['samples']} samples (calm "
                        f"{own['calm']}), {own['pss_reads']} PSS reads among them; lifetime "
                        f"mean {own['lifetime_mean_us']:.0f} us; limit: the same sampler "
                        f"back to back in this process, mean"))
    report.add(Row("P14", "one sample of the tree (rss), back to back, p50", "us",
                   "(informative: warm)", s["rss"][50], s["children_recursive"][50], True,
                   note=f"in this process, {args.samples} in a row; p99 {s['rss'][99]:.0f} us; "
                        f"limit: psutil children(recursive) of the root alone, p50"))
    report.add(Row("P14", "one sample of the tree (pss_tracked), back to back, mean", "us",
                   "(informative: warm)", s["pss_tracked"]["mean"],
                   s["children_recursive"][50], True,
                   note=f"in this process, {args.samples} in a row; p50 "
                        f"{s['pss_tracked'][50]:.0f} us (RSS only), p99 "
                        f"{s['pss_tracked'][99]:.0f} us (the PSS read every 30th sample)"))
    report.add(Row("P14", "one sample of the tree (pss), p50", "us", "(informative)",
                   s["pss"][50], s["children_recursive"][50], True,
                   note=f"p99 {s['pss'][99]:.0f} us: smaps_rollup costs ~0.35 ms per process"))
    print("\nper process, with the resource actor (idle):")
    for r in got["rows"]:
        print(f"  {r['pid']:>7}  {r['name']:<12} rss {r['rss_mb']:6.1f} MB  pss "
              f"{r['pss_mb']:6.1f} MB  cpu {r['cpu_pct']:5.2f}%")
    print(f"resource.status: level {got['resource']['level']}, pressure "
          f"{got['resource']['pressure']}, quality {got['resource']['quality']}, totals "
          f"{got['resource']['totals']['memory'] / MB:.1f} MB "
          f"({got['resource']['budget']['memory_metric']}; RSS "
          f"{got['resource']['totals']['rss'] / MB:.1f} MB) over "
          f"{got['resource']['totals']['processes']} processes")
    report.extra = {"with_resource": {k: got[k] for k in ("rows", "rss_mb", "pss_mb",
                                                          "cpu_pct", "seconds", "in_actor",
                                                          "sampler")},
                    "reference": {k: ref[k] for k in ("rows", "rss_mb", "pss_mb", "cpu_pct",
                                                      "seconds")}}
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
