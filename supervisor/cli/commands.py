"""`moorage`: bring a tree up, look at it, and drive it.

Exit codes are one table for every command: supervisor/cli/common.py's EXIT_TABLE.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from pathlib import Path
from typing import Any

from moorage.actors.resource.levels import FEATURES_OFF
from moorage.protocol import endpoints
from moorage.protocol.client import Client, Loss, Reset
from moorage.protocol.client.connection import read_connection_file
from moorage.protocol.envelope import PROTO_VERSION, StreamMessage
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import (
    EXIT_ERROR,
    EXIT_NO_TREE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    check_actor,
    connect,
    exit_table_text,
    need_tree,
    tree_pid,
)
from moorage.supervisor.cli.slo_view import add_slo_command
from moorage.supervisor.cli.up import cmd_adopt, cmd_up, package_version
from moorage.supervisor.spec import ConfigError

# --- commands ------------------------------------------------------------------------------


def all_children_running(tree: dict) -> bool:
    """Every child up, or held down on purpose by a shed (sup.shed)."""
    for ch in tree.get("children", []):
        if ch["state"] not in ("running", "shed"):
            return False
        if "tree" in ch and not all_children_running(ch["tree"]):
            return False
    return True


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the tree and wait for its root to be gone; a tree that is not running is already
    where `down` would put it (0, as `systemctl stop` of a stopped unit)."""
    pid = tree_pid(args.runtime_dir)
    if pid is None:
        print(f"moorage: not running ({args.runtime_dir})")
        return EXIT_OK
    with Client(args.runtime_dir, timeout=args.timeout) as c:
        try:
            c.call("supervisor", "sup.stop")
        except MoorageError as exc:
            if exc.name != "stopping":  # already on its way down: wait for it below
                raise
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
    logs = args.state_dir / "logs"
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
            from moorage.supervisor.prom import gather

            print(gather(c, args.timeout), end="")
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


def global_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, anywhere on the line (before or after the
    subcommand): the subparsers get them without defaults, so a value given after the
    subcommand is not overwritten by the top level's default."""
    p = argparse.ArgumentParser(add_help=False)
    kw: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("global options")
    g.add_argument("--instance", help="instance name (default: $MOORAGE_RUNTIME_DIR's, "
                   "else 'default')", **({"default": None} if defaults else kw))
    g.add_argument("--instance-dir", help=argparse.SUPPRESS,
                   **({"default": None} if defaults else kw))
    g.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="the whole command's time budget (default 5)",
                   **({"default": 5.0} if defaults else kw))
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moorage", description=__doc__.split("\n")[0],
                                parents=[global_options(True)], epilog=exit_table_text(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version",
                   version=f"moorage {package_version()} (protocol {PROTO_VERSION})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [global_options(False)]

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=common,
                              epilog=exit_table_text(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    up = command("up", "start the tree (foreground unless --detach); one JSON line on stdout "
                 "once it is ready")
    up.add_argument("--config", help="a moorage.toml (default: $MOORAGE_CONFIG, else "
                    "$XDG_CONFIG_HOME/moorage/moorage.toml; never the working directory)")
    up.add_argument("--detach", action="store_true", help="run in the background; print the "
                    "ready line once it is up")
    up.add_argument("--log-level", default="INFO", type=log_level,
                    help="debug, info, warning, error (any case)")
    up.add_argument("--metrics-http", metavar="127.0.0.1:PORT",
                    help="serve Prometheus metrics over HTTP on this loopback address")
    up.add_argument("--parent", type=int, metavar="PID", help="follow this process (the "
                    "editor): when it dies the tree is orphaned for [lifecycle] grace_s, then "
                    "stops unless adopted")
    up.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="end of file on stdin counts as the editor's death (as --parent)")
    up.add_argument("--ready-fd", type=int, metavar="FD",
                    help="write the ready (or failed) line to this fd instead of stdout")
    up.add_argument("--allow-external-actors", action="store_true",
                    help="let `start =` name modules outside the moorage package (found on "
                    "PYTHONPATH, never in the working directory)")
    up.set_defaults(func=cmd_up)

    ad = command("adopt", "take an orphaned tree over: cancel its shutdown and follow --parent")
    ad.add_argument("--parent", type=int, metavar="PID", help="the process to follow from now "
                    "on (default: none; the tree then runs until `moorage down`)")
    ad.add_argument("--json", action="store_true")
    ad.set_defaults(func=cmd_adopt)

    command("down", "stop the tree (0 if it is not running)").set_defaults(func=cmd_down)

    st = command("status", "the tree: state, pid, uptime, restarts")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rs = command("restart", "restart one actor")
    rs.add_argument("actor")
    rs.set_defaults(func=cmd_restart)

    k = command("kill", "send a signal to an actor (default SIGKILL)")
    k.add_argument("actor")
    k.add_argument("--signal", default="SIGKILL", help="a name (TERM, SIGTERM) or a number")
    k.set_defaults(func=cmd_kill)

    c = command("call", "call an op: moorage call ACTOR OP '{\"json\": 1}'")
    c.add_argument("actor")
    c.add_argument("op")
    c.add_argument("json", nargs="?")
    c.set_defaults(func=cmd_call)

    ev = command("events", "follow supervisor events")
    ev.add_argument("--count", type=int, help="exit after this many events")
    ev.add_argument("--replay", action="store_true", help="start with the retained events")
    ev.set_defaults(func=cmd_events)

    lg = command("logs", "print an actor's log (default: the supervisor's)")
    lg.add_argument("actor", nargs="?")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=cmd_logs)

    m = command("metrics", "per-op counts and latency percentiles")
    m.add_argument("op", nargs="?")
    m.add_argument("--prometheus", action="store_true")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_metrics)

    tp = command("top", "live view: tree, pressure, op latency, alerts (q quits)")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")
    tp.add_argument("--config", help="the tree's moorage.toml, for its p50 targets "
                    "(default: as `moorage up` finds it; p99 targets come from the tree)")
    tp.set_defaults(func=cmd_top)

    cf = command("config", "run-time settings: config set timeout.term.exec 10s")
    cf.add_argument("action", choices=["get", "set"])
    cf.add_argument("key", nargs="?")
    cf.add_argument("value", nargs="?")
    cf.add_argument("--json", action="store_true")
    cf.set_defaults(func=cmd_config)

    add_slo_command(sub, common)
    return p


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level (use {', '.join(x.lower() for x in LOG_LEVELS)})")
    return level


LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def running_state_dir(runtime_dir: Path) -> Path | None:
    """The state dir a running tree says it uses (its connection file), if it says."""
    try:
        info = read_connection_file(runtime_dir / endpoints.CONNECTION_FILE)
    except (OSError, ValueError):
        return None
    return Path(info["state_dir"]) if info.get("state_dir") else None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.runtime_dir = (Path(args.instance_dir) if args.instance_dir
                            else endpoints.runtime_dir(args.instance))
        args.state_dir = running_state_dir(args.runtime_dir) or endpoints.state_dir(
            args.runtime_dir, args.instance)
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
        return EXIT_NO_TREE if exc.name == "not_running" else EXIT_ERROR
