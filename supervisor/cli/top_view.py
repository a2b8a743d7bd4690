"""How `moorage top` draws a frame (supervisor/top.py gathers it): plain data in, rich out.

Everything here is a pure function of a `Frame`, so a frame can be printed once (`--once`) or
redrawn live with the same code.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from moorage.actors.resource.levels import FEATURES_OFF
from moorage.supervisor.cli.frame import Frame, join_clients
from moorage.supervisor.cli.tree import state_text

STATE_STYLE = {"running": "green", "starting": "yellow", "backoff": "yellow",
               "stopping": "yellow", "stopped": "red", "failed": "bold red", "shed": "magenta",
               "unknown": "bold red"}
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


# --- columns that drop (by priority) instead of being cut ----------------------------------


@dataclass(frozen=True)
class Col:
    """A column: `priority` 0 is always shown; higher numbers drop first when the terminal
    is too narrow for all of them (a column is shown whole or not at all)."""

    name: str
    priority: int = 0
    right: bool = False


Cell = str | Text


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def fit(cols: list[Col], rows: list[list[Cell]], width: int | None) -> list[int]:
    """Indices of the columns to show in `width` cells (None: all of them)."""
    keep = list(range(len(cols)))
    if width is None:
        return keep
    widths = [max([_width(c.name), *(_width(r[i]) for r in rows)]) for i, c in enumerate(cols)]
    # each column: its cells, one cell of padding on each side, and a separator cell
    while sum(widths[i] + 3 for i in keep) > width:
        droppable = [i for i in keep if cols[i].priority > 0]
        if not droppable:
            break
        keep.remove(max(droppable, key=lambda i: (cols[i].priority, i)))
    return keep


def table(title: str, cols: list[Col], rows: list[list[Cell]], width: int | None,
          more: str = "") -> Table:
    keep = fit(cols, rows, width)
    t = Table(box=box.SIMPLE_HEAD, title=title or None, title_justify="left", expand=False,
              caption=more or None, caption_justify="left", show_edge=False)
    for i in keep:
        t.add_column(cols[i].name, no_wrap=True, justify="right" if cols[i].right else "left")
    for r in rows:
        cells = [r[i] for i in keep]
        if any(str(c) for c in cells):  # (a row of dropped columns only, a second client's
            t.add_row(*cells)           # of an op without its CLIENT columns: not a blank)
    return t


# --- the panels --------------------------------------------------------------------------------

TREE_COLS = [Col("ID"), Col("TYPE", 2), Col("STATE"), Col("PID", 1), Col("UPTIME", 3),
             Col("RESTARTS", 1), Col("LAST EXIT", 4), Col("FALLBACK", 5)]


def _tree_rows(tree: dict[str, Any], depth: int) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for ch in tree.get("children", []):
        sub = ch.get("tree") if isinstance(ch.get("tree"), dict) else None
        state = "unknown" if sub is not None and "error" in sub else ch["state"]
        # (given up on for now, down until its last-resort retry: shown as a failure)
        style = "bold red" if ch.get("past_intensity") else STATE_STYLE.get(state, "")
        text = state_text(ch) if state == ch["state"] else state
        restarts = Text(str(ch["restarts"]), style="bold yellow" if ch["restarts"] else "")
        rows.append(["  " * depth + ch["id"], ch["type"], Text(text, style=style),
                     str(ch["pid"] or "-"), f"{ch['uptime_s']:.1f}s", restarts,
                     ch["last_exit"] or "-",
                     ch.get("fallback") or "-"])
        if sub is not None:
            rows.extend(_tree_rows(sub, depth + 1))
    return rows


def tree_table(f: Frame, width: int | None = None) -> RenderableType:
    if f.tree is None:
        return Text(f"supervisor: not answering ({f.errors.get('supervisor', '?')})",
                    style="bold red")
    return table("", TREE_COLS, _tree_rows(f.tree, 0), width)


OPS_COLS = [Col("ACTOR"), Col("OP"), Col("RATE/s", right=True), Col("ERRORS", 2, right=True),
            Col("P50", 3, right=True), Col("P99", 1, right=True), Col("CLIENT", 4),
            Col("CLIENT P50", 5, right=True), Col("CLIENT P99", 5, right=True)]


def ops_rows(f: Frame) -> list[tuple[float, list[list[Cell]]]]:
    """(rate, rows) per (actor, op) with traffic in the window, busiest first."""
    assert f.metrics is not None
    joined = join_clients(f.metrics)
    window = float(f.metrics["window_s"])
    out = []
    for row in joined["services"]:
        w = row["window"]
        if not w["count"] and not any(c["window"]["count"] for c in row["clients"].values()):
            continue  # nothing in the window: lifetime figures are `moorage metrics`'s
        p50_t, p99_t = f.targets.get(row["op"], [None, None])
        # the service's errors (a caller's typo is not the service failing)
        service = w["error"] - w.get("caller_errors", 0)
        rate = service / w["count"] if w["count"] else 0.0
        err = Text(f"{rate:.1%}", style="red" if rate > 0.1 else "")
        cells: list[Cell] = [row["actor"], row["op"], f"{w['count'] / window:.1f}", err,
                             latency_cell(w["p50"] if w["count"] else None, p50_t,
                                          f.latency_factor),
                             latency_cell(w["p99"] if w["count"] else None, p99_t,
                                          f.latency_factor)]
        group: list[list[Cell]] = []
        clients = sorted(row["clients"].items()) or [("-", None)]
        for i, (name, c) in enumerate(clients):
            cw = c["window"] if c else None
            got = cw is not None and cw["count"] > 0
            group.append([*(cells if i == 0 else [""] * len(cells)), name,
                          latency_cell(cw["p50"] if got else None, p50_t, f.latency_factor),
                          latency_cell(cw["p99"] if got else None, p99_t, f.latency_factor)])
        out.append((w["count"] / window, group))
    out.sort(key=lambda x: -x[0])
    return out


def ops_table(f: Frame, width: int | None = None, max_rows: int | None = None) -> RenderableType:
    if "metrics" in f.errors:
        return Text(f"metrics: not answering ({f.errors['metrics']})", style="red")
    if f.metrics is None:
        return Text("metrics: not in this tree", style="dim")
    window = float(f.metrics["window_s"])
    groups = ops_rows(f)
    if not groups:
        return Text(f"ops: nothing recorded in the last {window:g}s", style="dim")
    rows: list[list[Cell]] = []
    shown = 0
    for _, group in groups:
        if max_rows is not None and len(rows) + len(group) > max_rows:
            break
        rows.extend(group)
        shown += 1
    more = f"+{len(groups) - shown} quieter ops (moorage metrics)" if shown < len(groups) else ""
    return table(f"ops, busiest first, last {window:g}s (latency µs, value/target)", OPS_COLS,
                 rows, width, more)


def _ago(at: Any, now: float) -> str:
    return f"{now - at:5.0f}s ago" if isinstance(at, (int, float)) else "      ?"


ALERT_COLS = [Col("WHEN"), Col("WHAT"), Col("WHERE", 1), Col("DETAIL", 2)]


def alert_rows(f: Frame) -> tuple[list[list[Cell]], list[list[Cell]]]:
    """(active alerts, recent events, newest first) as rows."""
    active: list[list[Cell]] = []
    for a in (f.alerts or {}).get("active", []):
        active.append([_ago(a.get("time"), f.at), Text(f"active {a['kind']}", style="bold red"),
                       f"{a['actor']} {a['op']}",
                       f"{a['value']:.4g} over threshold {a['threshold']:.4g}"])
    events: list[list[Cell]] = []
    for ev in reversed(f.events):
        what = ev["event"]
        where = ev.get("child") or ev.get("source") or ev.get("supervisor", "")
        detail = ev.get("detail") or ev.get("reason") or ""
        if what == "alert" and isinstance(ev.get("alert"), dict):
            al = ev["alert"]
            detail = " ".join(str(al[k]) for k in ("kind", "state", "actor", "op", "sessions")
                              if al.get(k) is not None)
        elif what == "restarted":
            detail = f"pid {ev.get('pid')}"
        elif what == "exited":
            how = f"signal {ev['signal']}" if ev.get("signal") else f"code {ev.get('code')}"
            detail = f"{ev.get('reason', '')} {how} {ev.get('detail') or ''}".strip()
        events.append([_ago(ev.get("time"), f.at), Text(what, style=EVENT_STYLE.get(what, "")),
                       str(where), str(detail)])
    return active, events


def alerts_table(f: Frame, width: int | None = None,
                 max_events: int | None = None) -> RenderableType:
    active, events = alert_rows(f)
    if max_events is not None and len(events) > max_events:
        more = f"+{len(events) - max_events} older events (moorage events --replay)"
        events = events[:max_events]
    else:
        more = ""
    rows = active + events
    if not rows:
        return Text("alerts: none active, no recent events", style="dim")
    return table("alerts and events", ALERT_COLS, rows, width, more)


def render(f: Frame, width: int | None = None, height: int | None = None) -> RenderableType:
    """The frame for a terminal of `width` x `height` cells (None: no limit). Columns drop by
    priority instead of being cut; the tree is shown whole and the active alerts always; the
    busiest ops, then the newest events, fill the rest."""
    head = [header(f), pressure_line(f), tree_table(f, width)]
    if height is None:
        return Group(*head, ops_table(f, width), alerts_table(f, width))
    console = Console(width=width or 200, height=height, file=io.StringIO(),
                      color_system=None)

    def lines(r: RenderableType) -> int:
        return len(console.render_lines(r, console.options.update(height=None), pad=False))

    used = sum(lines(r) for r in head)
    n_ops = sum(len(g) for _, g in ops_rows(f)) if f.metrics is not None else 0
    _, events = alert_rows(f)
    n_events = len(events)
    while True:
        ops = ops_table(f, width, n_ops)
        alerts = alerts_table(f, width, n_events)
        if used + lines(ops) + lines(alerts) <= height or (n_ops == 0 and n_events == 0):
            return Group(*head, ops, alerts)
        if n_ops > 0 and (n_events <= 3 or n_ops >= n_events):
            n_ops -= 1  # the quietest op goes first
        else:
            n_events -= 1
