"""`moorage slo`: the metrics actor's SLO report (`metrics.slo`) as tables, or as JSON."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from moorage.supervisor.cli.common import EXIT_OK, Budget, connect, read

WINDOWS = ("1h", "24h", "30d")


def _pct(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v * 100:.{digits}f}%"


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 1_000_000:
        return f"{v / 1_000_000:.2f}s"
    if v >= 1000:
        return f"{v / 1000:.1f}ms"
    return f"{v:.0f}us"


def _ms(v: float) -> str:
    return _us(v * 1000)


def _met(m: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "no data"}[m]


def _objective_value(o: dict[str, Any]) -> tuple[str, str]:
    name, v, t = o["name"], o["value"], o["target"]
    if name == "availability":
        return f">= {_pct(t, 1)}", _pct(v)
    if name == "error_rate":
        return f"< {_pct(t, 1)}", _pct(v)
    if name == "p99_latency_us":
        return f"< {_us(t)}", _us(v) if v else "-"
    if name == "recovery_time_s":
        return f"<= {t:g}s per incident", (f"worst {_ms(v * 1000)}, {o['over_rto']} over RTO"
                                           if o["met"] is not None else "-")
    return "0", str(v)


def table_lines(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [head, *rows]]


def render(r: dict[str, Any]) -> list[str]:
    """The report as lines of text."""
    out = []
    since = r.get("since")
    age = f"{(r['now'] - since) / 3600:.2f} h of record" if since else "no record yet"
    out.append(f"SLO report ({age}; kept in {r.get('file', '?')})")
    out.append("error rate and availability count the service's errors only; the caller's "
               "(bad arguments, unknown ops, missing files) are shown beside them")
    out.append("")
    rows = []
    for o in r["slo"]:
        target, value = _objective_value(o)
        rows.append([o["name"], target, o["window"], value, _met(o["met"])])
    out += table_lines(["OBJECTIVE", "TARGET", "OVER", "VALUE", ""], rows)

    w = r["windows"]
    out.append("")
    rows = [["requests"] + [str(w[n]["requests"]) for n in WINDOWS],
            ["service errors"] + [f"{w[n]['errors']} ({_pct(w[n]['error_rate'])})"
                                  for n in WINDOWS],
            ["caller errors"] + [str(w[n].get("caller_errors", 0)) for n in WINDOWS],
            ["p99 (ops of ours)"] + [_us(w[n]["p99_us"]) if w[n]["requests"] else "-"
                                for n in WINDOWS],
            ["availability"] + [_pct(w[n]["availability"]) for n in WINDOWS],
            ["watched"] + [f"{w[n]['observed_s'] / 60:.1f} min" for n in WINDOWS],
            ["child down time"] + [_ms(sum(w[n]["down_s"].values()) * 1000) for n in WINDOWS],
            ["incidents"] + [str(w[n]["recovery"]["count"]) for n in WINDOWS],
            ["data lost"] + [str(w[n]["loss_total"]) for n in WINDOWS]]
    out += table_lines(["WINDOW", *WINDOWS], rows)

    out.append("")
    out.append("recovery, exit seen -> first good reply, against each child's recovery time "
               "objective (RTO), last 30 d:")
    rec = w["30d"]["recovery"]
    rows = [[kind, str(g["count"]), _ms(g["p50_ms"]), _ms(g["max_ms"]), str(g["over_rto"]),
             ", ".join(g["children"])] for kind, g in rec["by_type"].items()]
    if rows:
        out += table_lines(["FAILURE TYPE", "COUNT", "P50", "MAX", "OVER RTO", "CHILDREN"],
                           rows)
    else:
        out.append("  no incidents")
    rto = ", ".join(f"{k} {v:g}s" for k, v in sorted(r["rto_s"].items()))
    out.append(f"  RTO: {rto}")
    for inc in r["open_incidents"]:
        out.append(f"  STILL DOWN: {inc['child']} ({inc['type']}) for "
                   f"{_ms((r['now'] - inc['exited_at']) * 1000)}")

    out.append("")
    out.append("data loss counters (claim: zero):")
    rows = [[name] + [str(w[n]["loss"].get(name, 0)) for n in WINDOWS]
            for name in sorted(r["loss_counters"])]
    out += table_lines(["COUNTER", *WINDOWS], rows)

    out.append("")
    out.append("per op, last hour (p99 against the op's latency target, [targets]):")
    rows = []
    for op in w["1h"]["ops"]:
        target = op["target_p99_us"]
        rows.append([op["op"], str(op["requests"]), _pct(op["error_rate"], 2),
                     str(op.get("caller_errors", 0)),
                     _us(op["p50_us"]), _us(op["p99_us"]), _us(target),
                     "-" if op["met"] is None else ("ok" if op["met"] else "OVER")])
    if rows:
        out += table_lines(["OP", "REQUESTS", "SERVICE ERRORS", "CALLER ERRORS", "P50", "P99",
                            "TARGET P99", ""], rows)
    else:
        out.append("  no requests in the last hour")
    if r["recent_incidents"]:
        out.append("")
        out.append("recent incidents:")
        rows = [[time.strftime("%H:%M:%S", time.localtime(i["exited_at"])), i["child"],
                 i["type"], _ms(i["recovery_ms"]), i["how"],
                 f"{i.get('ready_ms', 0):.1f}ms", str(i["deaths"])]
                for i in r["recent_incidents"]]
        out += table_lines(["EXITED", "CHILD", "TYPE", "RECOVERY", "TIMED BY", "READY AFTER",
                            "DEATHS"], rows)
    return out


def cmd_slo(args: argparse.Namespace) -> int:
    with connect(args) as c:
        r = read(c, "metrics", "metrics.slo", budget=Budget(args.timeout))
    if args.json:
        print(json.dumps(r, indent=2))
        return EXIT_OK
    print("\n".join(render(r)))
    return EXIT_OK


def add_slo_command(sub: Any, parents: list[Any]) -> None:
    """Add `slo` to the CLI's subcommands (`sub`: argparse's subparsers action; `parents`:
    the global options)."""
    s = sub.add_parser("slo", help="the SLO report: availability, error rate, p99, recovery "
                                   "times, data loss over 1 h, 24 h and 30 d", parents=parents)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_slo)
