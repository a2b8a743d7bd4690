"""`moorage`: bring a tree up, look at it, and drive it.

Exit codes: 0 done; 1 the tree answered with an error; 2 usage error, no tree running,
unknown actor, bad JSON or bad config; 3 the tree gave up (a supervisor escalated).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from moorage.actors.resource.levels import FEATURES_OFF
from moorage.protocol import endpoints
from moorage.protocol.client import Client, Loss, Reset
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import (
    EXIT_ERROR,
    EXIT_ESCALATED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    check_actor,
    connect,
    need_tree,
    tree_pid,
)
from moorage.supervisor.cli.slo_view import add_slo_command
from moorage.supervisor.spec import ConfigError

# --- commands ------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from moorage.supervisor.config import load
    from moorage.supervisor.launch import AlreadyRunning, run_root

    try:
        doc, spec = load(args.config)
    except ConfigError as exc:
        raise CliError(f"bad configuration: {exc}") from None
    if args.metrics_http:
        from moorage.supervisor.prom import parse_listen

        try:
            parse_listen(args.metrics_http)
        except ValueError as exc:
            raise CliError(f"--metrics-http: {exc}") from None
        doc["metrics_http"] = args.metrics_http
    if tree_pid(args.runtime_dir) is not None:
        raise CliError(f"a moorage tree is already running in {args.runtime_dir} "
                       f"(pid {tree_pid(args.runtime_dir)}); `moorage down` stops it")
    if args.detach:
        return detach(args)
    try:
        code = run_root(doc, spec, args.runtime_dir, args.log_level)
    except AlreadyRunning as exc:
        raise CliError(str(exc)) from None
    if code == EXIT_ESCALATED:
        print("moorage: the tree gave up (a child kept dying; see `moorage logs`)",
              file=sys.stderr)
    return code


def detach(args: argparse.Namespace) -> int:
    """Start `up` in a new session, wait until every child is running, then return."""
    endpoints.ensure_private_dir(args.runtime_dir)
    out = args.runtime_dir / "up.out"
    cmd = [sys.executable, "-m", "moorage.supervisor.cli",
           "--instance-dir", str(args.runtime_dir), "up",
           "--log-level", args.log_level]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    if args.metrics_http:
        cmd += ["--metrics-http", args.metrics_http]
    with open(out, "ab") as f:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                start_new_session=True, cwd=os.getcwd())
    deadline = time.monotonic() + args.timeout + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = out.read_text(errors="replace")[-2000:]
            raise CliError(f"the tree exited during start-up (code {proc.returncode}):\n{tail}",
                           EXIT_ERROR)
        if tree_pid(args.runtime_dir) is not None and all_running(args.runtime_dir):
            print(f"moorage tree up (pid {proc.pid}) in {args.runtime_dir}")
            return EXIT_OK
        time.sleep(0.05)
    raise CliError("the tree did not come up in time; see `moorage logs`", EXIT_ERROR)


def all_running(runtime_dir: Path) -> bool:
    with Client(runtime_dir, timeout=1.0) as c:
        try:
            tree = c.call("supervisor", "sup.status")
        except MoorageError:
            return False
    return all_children_running(tree)


def all_children_running(tree: dict) -> bool:
    """Every child up, or held down on purpose by a shed (sup.shed)."""
    for ch in tree.get("children", []):
        if ch["state"] not in ("running", "shed"):
            return False
        if "tree" in ch and not all_children_running(ch["tree"]):
            return False
    return True


def cmd_down(args: argparse.Namespace) -> int:
    pid = need_tree(args.runtime_dir)
    with Client(args.runtime_dir, timeout=args.timeout) as c:
        c.call("supervisor", "sup.stop")
    # Wait for the root to be gone (its pidfd becomes readable when it exits).
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        fd = None
    if fd is not None:
        ready, _, _ = select.select([fd], [], [], args.timeout + 30)
        os.close(fd)
        if not ready:
            raise CliError(f"the tree (pid {pid}) is still stopping", EXIT_ERROR)
    while tree_pid(args.runtime_dir) is not None:
        time.sleep(0.02)
    print("moorage tree stopped")
    return EXIT_OK


def status_rows(tree: dict, depth: int = 0) -> list[list[str]]:
    rows = []
    for ch in tree.get("children", []):
        rows.append([
            "  " * depth + ch["id"], ch["type"], ch["state"], str(ch["pid"] or "-"),
            f"{ch['uptime_s']:.1f}s", str(ch["restarts"]), ch["last_exit"] or "-",
            ch.get("fallback") or "-",
        ])
        if "tree" in ch and "children" in ch["tree"]:
            rows.extend(status_rows(ch["tree"], depth + 1))
    return rows


def print_table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def has_child(tree: dict, cid: str) -> bool:
    return any(ch["id"] == cid or has_child(ch.get("tree", {}), cid)
               for ch in tree.get("children", []))


def resource_level(c: Client, tree: dict) -> dict | None:
    """The resource actor's {level, pressure, quality}, an {error} if it does not answer,
    or None when the tree has no resource actor."""
    if not has_child(tree, "resource"):
        return None
    try:
        return c.call("resource", "resource.level", timeout=1.0)
    except MoorageError as exc:
        return {"error": exc.name}


def resource_line(r: dict) -> str:
    if "error" in r:
        return f"resource: not answering ({r['error']})"
    off = FEATURES_OFF.get(r["quality"], ())
    return (f"pressure {r['pressure']}/100  level {r['level']}  quality {r['quality']}/3"
            + (f" (off: {', '.join(off)})" if off else ""))


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as c:
        tree = c.call("supervisor", "sup.status")
        level = resource_level(c, tree)
    if args.json:
        print(json.dumps(tree if level is None else {**tree, "resource": level}, indent=2))
        return EXIT_OK
    print(f"supervisor pid {tree['pid']}  strategy {tree['strategy']}  "
          f"runtime dir {args.runtime_dir}")
    if level is not None:
        print(resource_line(level))
    print_table(["ID", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "FALLBACK"],
                status_rows(tree))
    return EXIT_OK


def cmd_restart(args: argparse.Namespace) -> int:
    with connect(args) as c:
        check_actor(c, args.actor)
        c.call("supervisor", "sup.restart", {"child": args.actor})
    print(f"restarting {args.actor}")
    return EXIT_OK


def cmd_kill(args: argparse.Namespace) -> int:
    with connect(args) as c:
        check_actor(c, args.actor)
        r = c.call("supervisor", "sup.kill", {"child": args.actor, "signal": args.signal})
    print(f"sent signal {r['signal']} to {args.actor} (pid {r['pid']})")
    return EXIT_OK


def cmd_call(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.json) if args.json else None
    except json.JSONDecodeError as exc:
        raise CliError(f"bad JSON for the arguments: {exc}") from None
    with connect(args) as c:
        check_actor(c, args.actor)
        reply = c.request(args.actor, args.op, payload)
    print(json.dumps(reply.body, indent=2, default=_jsonable))
    for i, a in enumerate(reply.attachments):
        print(f"[attachment {i}: {len(a)} bytes]", file=sys.stderr)
    return EXIT_OK


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode(errors="replace")
    return repr(obj)


def cmd_events(args: argparse.Namespace) -> int:
    with connect(args) as c:
        sub = c.subscribe("supervisor", ["sup.event"], from_seq=1 if args.replay else None)
        seen = 0
        try:
            while args.count is None or seen < args.count:
                ev = sub.next(timeout=None)
                if isinstance(ev, StreamMessage):
                    print(json.dumps({"seq": ev.seq, **ev.body}, default=_jsonable), flush=True)
                elif isinstance(ev, Loss):
                    print(json.dumps({"lost": [ev.first, ev.last]}), flush=True)
                elif isinstance(ev, Reset):
                    print(json.dumps({"reset": ev.new_epoch}), flush=True)
                seen += 1
        except KeyboardInterrupt:
            pass
        finally:
            sub.close()
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    logs = args.runtime_dir / "logs"
    name = args.actor or "supervisor"
    path = logs / f"{name}.log"
    if not path.exists():
        have = sorted(p.stem for p in logs.glob("*.log")) if logs.exists() else []
        raise CliError(f"no log for {name!r} in {logs}" +
                       (f"; there are: {', '.join(have)}" if have else ""))
    with open(path, errors="replace") as f:
        sys.stdout.write(f.read())
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        try:
            while True:
                line = f.readline()
                if line:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """Service time per (actor, op), with the end-to-end time of clients that push theirs
    (`client.<name>` rows, op `<actor>/<op>`) beside it."""
    from moorage.supervisor.cli.frame import join_clients

    with connect(args) as c:
        if args.prometheus:
            print(c.call("metrics", "metrics.prometheus")["text"], end="")
            return EXIT_OK
        # Unfiltered: a client's row for `op` is named `<actor>/<op>`, so the filter is ours.
        q = join_clients(c.call("metrics", "metrics.query"), args.op)
    if args.op is not None:
        q["ops"] = [r for r in q["ops"] if r["op"] == args.op]
    if args.json:
        print(json.dumps(q, indent=2))
        return EXIT_OK
    rows = []
    for r in q["services"]:
        lt, w = r["lifetime"], r["window"]
        row = [r["actor"], r["op"], str(lt["count"]), f"{lt['error_rate']:.2%}",
               f"{lt['p50']}", f"{lt['p90']}", f"{lt['p99']}", f"{lt['p999']}",
               f"{lt['max']}", str(w["count"])]
        clients = sorted(r["clients"].items()) or [("-", None)]
        for i, (name, cl) in enumerate(clients):
            client = [name, "-", "-"] if cl is None else [
                name, f"{cl['lifetime']['p50']}", f"{cl['lifetime']['p99']}"]
            rows.append((row if i == 0 else [""] * len(row)) + client)
    print_table(["ACTOR", "OP", "COUNT", "ERRORS", "P50us", "P90us", "P99us", "P99.9us",
                 "MAXus", f"LAST {q['window_s']}s", "CLIENT", "CLIENT_P50us", "CLIENT_P99us"],
                rows)
    for r in q["clients"]:
        if r["matched"]:
            continue
        lt = r["lifetime"]
        print(f"client {r['client']}: {r['target_actor']} {r['target_op']} count {lt['count']} "
              f"p50 {lt['p50']}us p99 {lt['p99']}us (no service time recorded)")
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    from moorage.supervisor.cli.top import config_targets, run

    if not args.interval > 0:
        raise CliError(f"--interval must be a positive number of seconds, not {args.interval}")
    try:
        targets = config_targets(args.config)
    except ConfigError as exc:
        raise CliError(f"bad configuration: {exc}") from None
    need_tree(args.runtime_dir)
    return run(args.runtime_dir, args.interval, args.once, targets)


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000}


def parse_duration_ms(text: str) -> int:
    """`500ms`, `10s`, `2m` or plain milliseconds, as a whole number of ms > 0."""
    t = text.strip().lower()
    for unit in ("ms", "s", "m"):  # "ms" before "s" and "m"
        if t.endswith(unit):
            num, scale = t[: -len(unit)], _UNITS_MS[unit]
            break
    else:
        num, scale = t, 1
    try:
        ms = round(float(num) * scale)
    except ValueError:
        raise CliError(f"not a duration: {text!r} (use 500ms, 10s, 2m or plain ms)") from None
    if ms <= 0:
        raise CliError(f"a timeout must be positive, got {text!r}")
    return ms


def cmd_config(args: argparse.Namespace) -> int:
    with connect(args) as c:
        if args.action == "set":
            if args.key is None or args.value is None:
                raise CliError("usage: moorage config set timeout.<op> VALUE (500ms, 10s, 2m)")
            if not args.key.startswith("timeout."):
                raise CliError(f"unknown key {args.key!r}; known: timeout.<op>")
            r = c.call("supervisor", "sup.config.set",
                       {"key": args.key, "value": parse_duration_ms(args.value)})
            if args.json:
                print(json.dumps(r, indent=2))
                return EXIT_OK
            print(f"{r['key']} = {r['value']} ms (until the tree stops); told "
                  f"{len(r['told'])} actors, applied by: {', '.join(r['applied']) or 'none'}")
            for actor, err in sorted(r["failed"].items()):
                print(f"  not told: {actor} ({err}); it gets it when it restarts")
            return EXIT_ERROR if r["failed"] else EXIT_OK
        r = c.call("supervisor", "sup.config.get")
    if args.json:
        print(json.dumps(r, indent=2))
        return EXIT_OK
    keys = sorted(set(r["defaults"]) | set(r["overrides"]))
    if args.key is not None:
        keys = [k for k in keys if k == args.key]
    rows = [[k, str(r["defaults"].get(k, "-")), str(r["overrides"].get(k, "-"))] for k in keys]
    print_table(["KEY", "DEFAULT_MS", "OVERRIDE_MS"], rows)
    return EXIT_OK


# --- parsing ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moorage", description=__doc__.split("\n")[0])
    p.add_argument("--instance", help="instance name (default: 'default')")
    p.add_argument("--instance-dir", help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per call (default 5)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the tree (foreground unless --detach)")
    up.add_argument("--config", help="a moorage.toml (default: ./moorage.toml if present)")
    up.add_argument("--detach", action="store_true", help="run in the background")
    up.add_argument("--log-level", default="INFO")
    up.add_argument("--metrics-http", metavar="127.0.0.1:PORT",
                    help="serve Prometheus metrics over HTTP on this loopback address")
    up.set_defaults(func=cmd_up)

    sub.add_parser("down", help="stop the tree").set_defaults(func=cmd_down)

    st = sub.add_parser("status", help="the tree: state, pid, uptime, restarts")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rs = sub.add_parser("restart", help="restart one actor")
    rs.add_argument("actor")
    rs.set_defaults(func=cmd_restart)

    k = sub.add_parser("kill", help="send a signal to an actor (default SIGKILL)")
    k.add_argument("actor")
    k.add_argument("--signal", default="SIGKILL")
    k.set_defaults(func=cmd_kill)

    c = sub.add_parser("call", help="call an op: moorage call ACTOR OP '{\"json\": 1}'")
    c.add_argument("actor")
    c.add_argument("op")
    c.add_argument("json", nargs="?")
    c.set_defaults(func=cmd_call)

    ev = sub.add_parser("events", help="follow supervisor events")
    ev.add_argument("--count", type=int, help="exit after this many events")
    ev.add_argument("--replay", action="store_true", help="start with the retained events")
    ev.set_defaults(func=cmd_events)

    lg = sub.add_parser("logs", help="print an actor's log (default: the supervisor's)")
    lg.add_argument("actor", nargs="?")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=cmd_logs)

    m = sub.add_parser("metrics", help="per-op counts and latency percentiles")
    m.add_argument("op", nargs="?")
    m.add_argument("--prometheus", action="store_true")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_metrics)

    tp = sub.add_parser("top", help="live view: tree, pressure, op latency, alerts (q quits)")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")
    tp.add_argument("--config", help="the tree's moorage.toml, for its p50 targets "
                    "(default: ./moorage.toml if present; p99 targets come from the tree)")
    tp.set_defaults(func=cmd_top)

    cf = sub.add_parser("config", help="run-time settings: config set timeout.term.exec 10s")
    cf.add_argument("action", choices=["get", "set"])
    cf.add_argument("key", nargs="?")
    cf.add_argument("value", nargs="?")
    cf.add_argument("--json", action="store_true")
    cf.set_defaults(func=cmd_config)

    add_slo_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.runtime_dir = (Path(args.instance_dir) if args.instance_dir
                            else endpoints.runtime_dir(args.instance))
    except ValueError as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except CliError as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return exc.code
    except MoorageError as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return EXIT_ERROR

