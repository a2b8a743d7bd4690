"""How `moorage top` draws a frame (supervisor/top.py gathers it): plain data in, rich out.

Everything here is a pure function of a `Frame`, so a frame can be printed once (`--once`) or
redrawn live with the same code.
"""

from __future__ import annotations

import time
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from moorage.actors.resource.levels import FEATURES_OFF
from moorage.supervisor.cli.frame import Frame, join_clients

STATE_STYLE = {"running": "green", "starting": "yellow", "backoff": "yellow",
               "stopping": "yellow", "stopped": "red", "failed": "bold red", "shed": "magenta"}
LEVEL_STYLE = {"normal": "green", "moderate": "yellow", "high": "red", "critical": "bold red"}
EVENT_STYLE = {"restarted": "yellow", "exited": "red", "hung": "red", "escalated": "bold red",
               "fallback": "magenta", "alert": "red", "lost": "red", "relay_loss": "red"}


def latency_cell(value: float | None, target: float | None, factor: float) -> Text:
    """`value` µs, coloured against `target`: green within it, yellow up to `factor` times
    it (the alert threshold), red beyond; plain when there is no target or no value."""
    if value is None:
        return Text("-", style="dim")
    text = f"{value:,.0f}" if target is None else f"{value:,.0f}/{target:,.0f}"
    if target is None or value == 0:
        return Text(text)
    style = "green" if value <= target else "yellow" if value <= factor * target else "red"
    return Text(text, style=style)


def header(f: Frame) -> Text:
    t = Text()
    t.append("moorage top", style="bold")
    pid = f.tree["pid"] if f.tree else "?"
    t.append(f"  {f.runtime_dir}  root pid {pid}  ")
    t.append(time.strftime("%H:%M:%S", time.localtime(f.at)))
    t.append(f"  every {f.interval:g}s  q quits", style="dim")
    return t


def pressure_line(f: Frame) -> Text:
    if "resource" in f.errors:
        return Text(f"resource: not answering ({f.errors['resource']})", style="red")
    if f.level is None:
        return Text("resource: not in this tree", style="dim")
    lv = f.level
    t = Text("pressure ")
    t.append(f"{lv['pressure']}/100", style=LEVEL_STYLE.get(lv["level"], ""))
    t.append("  level ")
    t.append(str(lv["level"]), style=LEVEL_STYLE.get(lv["level"], ""))
    t.append(f"  quality {lv['quality']}/3")
    off = FEATURES_OFF.get(lv["quality"], ())
    if off:
        t.append(f" (off: {', '.join(off)})", style="yellow")
    return t


def _tree_rows(table: Table, tree: dict[str, Any], depth: int) -> None:
    for ch in tree.get("children", []):
        restarts = Text(str(ch["restarts"]), style="bold yellow" if ch["restarts"] else "")
        table.add_row("  " * depth + ch["id"], ch["type"],
                      Text(ch["state"], style=STATE_STYLE.get(ch["state"], "")),
                      str(ch["pid"] or "-"), f"{ch['uptime_s']:.1f}s", restarts,
                      ch["last_exit"] or "-", ch.get("fallback") or "-")
        if "tree" in ch and "children" in ch["tree"]:
            _tree_rows(table, ch["tree"], depth + 1)


def tree_table(f: Frame) -> RenderableType:
    if f.tree is None:
        return Text(f"supervisor: not answering ({f.errors.get('supervisor', '?')})",
                    style="bold red")
    table = Table(box=box.SIMPLE_HEAD, title="tree", title_justify="left", expand=False)
    for name in ("ID", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "FALLBACK"):
        table.add_column(name, no_wrap=True)
    _tree_rows(table, f.tree, 0)
    return table


def ops_table(f: Frame) -> RenderableType:
    if "metrics" in f.errors:
        return Text(f"metrics: not answering ({f.errors['metrics']})", style="red")
    if f.metrics is None:
        return Text("metrics: not in this tree", style="dim")
    joined = join_clients(f.metrics)
    window = float(f.metrics["window_s"])
    table = Table(box=box.SIMPLE_HEAD, expand=False, title_justify="left",
                  title=f"ops, last {window:g}s (latency µs, value/target)")
    for name in ("ACTOR", "OP", "RATE/s", "ERRORS", "P50", "P99", "CLIENT", "CLIENT P50",
                 "CLIENT P99"):
        table.add_column(name, no_wrap=True, justify="left" if name[0] in "AOC" else "right")
    for row in joined["services"]:
        w = row["window"]
        if not w["count"] and not any(c["window"]["count"] for c in row["clients"].values()):
            continue  # nothing in the window: lifetime figures are `moorage metrics`'s
        p50_t, p99_t = f.targets.get(row["op"], [None, None])
        err = Text(f"{w['error_rate']:.1%}", style="red" if w["error_rate"] > 0.1 else "")
        cells: list[Any] = [row["actor"], row["op"], f"{w['count'] / window:.1f}", err,
                            latency_cell(w["p50"] if w["count"] else None, p50_t,
                                         f.latency_factor),
                            latency_cell(w["p99"] if w["count"] else None, p99_t,
                                         f.latency_factor)]
        clients = sorted(row["clients"].items()) or [("-", None)]
        for i, (name, c) in enumerate(clients):
            cw = c["window"] if c else None
            got = cw is not None and cw["count"] > 0
            table.add_row(*(cells if i == 0 else [""] * len(cells)), name,
                          latency_cell(cw["p50"] if got else None, p50_t, f.latency_factor),
                          latency_cell(cw["p99"] if got else None, p99_t, f.latency_factor))
    if not table.rows:
        return Text(f"ops: nothing recorded in the last {window:g}s", style="dim")
    return table


def _ago(at: Any, now: float) -> str:
    return f"{now - at:5.0f}s ago" if isinstance(at, (int, float)) else "      ?"


def alerts_table(f: Frame) -> RenderableType:
    table = Table(box=box.SIMPLE_HEAD, title="alerts and events", title_justify="left",
                  expand=False)
    for name in ("WHEN", "WHAT", "WHERE", "DETAIL"):
        table.add_column(name, no_wrap=True)
    for a in (f.alerts or {}).get("active", []):
        table.add_row(_ago(a.get("time"), f.at), Text(f"active {a['kind']}", style="bold red"),
                      f"{a['actor']} {a['op']}",
                      f"{a['value']:.4g} over threshold {a['threshold']:.4g}")
    for ev in reversed(f.events):
        what = ev["event"]
        where = ev.get("child") or ev.get("source") or ev.get("supervisor", "")
        detail = ev.get("detail") or ev.get("reason") or ""
        if what == "alert" and isinstance(ev.get("alert"), dict):
            al = ev["alert"]
            detail = f"{al.get('kind')} {al.get('state')} {al.get('actor')} {al.get('op')}"
        elif what == "restarted":
            detail = f"pid {ev.get('pid')}"
        elif what == "exited":
            how = f"signal {ev['signal']}" if ev.get("signal") else f"code {ev.get('code')}"
            detail = f"{ev.get('reason', '')} {how} {ev.get('detail') or ''}".strip()
        table.add_row(_ago(ev.get("time"), f.at), Text(what, style=EVENT_STYLE.get(what, "")),
                      str(where), str(detail))
    if not table.rows:
        return Text("alerts: none active, no recent events", style="dim")
    return table


def render(f: Frame) -> RenderableType:
    return Group(header(f), pressure_line(f), tree_table(f), ops_table(f), alerts_table(f))
