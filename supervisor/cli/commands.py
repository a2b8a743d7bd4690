"""`moorage`: bring a tree up, look at it, and drive it.

The argument parser and `main`: global options anywhere on the line, one exit-code table for
every command (common.EXIT_TABLE), and no traceback for any input: a usage error, a bad value
or an error from the tree is one line on stderr and its exit code; a reader that closed the
pipe early ends the command quietly. The commands themselves are in up.py (up, adopt),
tree.py (down, status, restart, kill, config), calls.py (call, ops, subscribe, events, logs),
here (metrics, top), slo_view.py (slo) and completion.py (shell completion).

This module is where both entry points come in (the `moorage` console script imports it, and
`python -m moorage.supervisor.cli` through __main__), so the first thing it does is take the
working directory off sys.path (`keep_workspace_off_path`), before anything else is imported:
the imports below included, the standard library's too.
"""

# ruff: noqa: E402 (the imports come after keep_workspace_off_path, on purpose)

from __future__ import annotations

import os
import sys


def implicit_entries(pythonpath: str | None, cwd: str | None) -> set[str]:
    """The sys.path entries the interpreter made of the working directory without being told
    its name: `""`, and PYTHONPATH's empty and relative elements (`:/x`, `/x:`, `.`, `src`)
    both as given and as site.py makes them absolute. A directory PYTHONPATH names by its
    absolute path stays, even the working directory: that one was named on purpose."""
    elements = pythonpath.split(os.pathsep) if pythonpath else []
    named = {os.path.normpath(e) for e in elements if os.path.isabs(e)}
    implicit = {""}
    for e in elements:
        if not os.path.isabs(e):
            implicit.add(e)
            if cwd is not None:
                implicit.add(os.path.normpath(os.path.join(cwd, e)))
    return implicit - named


def keep_workspace_off_path() -> None:
    """Take the working directory (an editor's workspace) off sys.path, and what lies under
    it: the entries `implicit_entries` names, and any other relative entry that names a file
    or directory there. A relative entry naming nothing there stays: it is an import hook's
    key (an editable install's finder), not a place. The tree's own new programs are given
    this path as it is then (zygote.new_interpreter)."""
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # a working directory removed: no entry resolves to it any more
        cwd = None
    drop = implicit_entries(os.environ.get("PYTHONPATH"), cwd)
    sys.path[:] = [p for p in sys.path
                   if p not in drop and os.path.normpath(p) not in drop
                   and (os.path.isabs(p) or not os.path.exists(p))]


keep_workspace_off_path()

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn

from moorage.protocol import endpoints
from moorage.protocol.client.connection import read_connection_file
from moorage.protocol.envelope import PROTO_VERSION
from moorage.protocol.errors import Fault, MoorageError, fault_of
from moorage.supervisor.cli.calls import cmd_call, cmd_events, cmd_logs, cmd_ops, cmd_subscribe
from moorage.supervisor.cli.common import (
    EXIT_ERROR,
    EXIT_NO_TREE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    connect,
    exit_table_text,
    need_tree,
    print_table,
)
from moorage.supervisor.cli.completion import (
    actor_completer,
    add_completion_command,
    autocomplete,
    op_completer,
    topic_completer,
)
from moorage.supervisor.cli.keys import add_keys_command, keys_after_options
from moorage.supervisor.cli.slo_view import add_slo_command
from moorage.supervisor.cli.tree import (
    cmd_config,
    cmd_down,
    cmd_kill,
    cmd_restart,
    cmd_status,
    parse_duration_ms,
    tree_ops,
)
from moorage.supervisor.cli.up import StartFailed, cmd_adopt, cmd_up, package_version
from moorage.supervisor.cli.up import refuse as refuse_start
from moorage.supervisor.spec import ConfigError

__all__ = ["all_children_running", "main", "parse_duration_ms", "parser"]

DEFAULT_TIMEOUT = 5.0  # seconds: a command's whole time when --timeout is not given


def all_children_running(tree: dict[str, Any]) -> bool:
    """Every child up, or held down on purpose by a shed (sup.shed)."""
    for ch in tree.get("children", []):
        if ch["state"] not in ("running", "shed"):
            return False
        if "tree" in ch and not all_children_running(ch["tree"]):
            return False
    return True


# --- metrics, top ----------------------------------------------------------------------------


def cmd_metrics(args: argparse.Namespace) -> int:
    """Service time per (actor, op), with the end-to-end time of clients that push theirs
    (`client.<name>` rows, op `<actor>/<op>`) beside it."""
    from moorage.supervisor.cli.common import Budget, read
    from moorage.supervisor.cli.frame import join_clients

    budget = Budget(args.timeout)
    with connect(args) as c:
        if args.prometheus:
            from moorage.supervisor.prom import gather

            print(gather(c, budget.left()), end="")
            return EXIT_OK
        # Unfiltered: a client's row for `op` is named `<actor>/<op>`, so the filter is ours.
        q = join_clients(read(c, "metrics", "metrics.query", budget=budget), args.op)
        # (no row: an op not called yet, or one no actor answering now declares)
        if args.op is not None and not q["services"] and args.op not in tree_ops(c, budget):
            raise CliError(f"no actor of the tree has an op {args.op!r} (moorage ops)")
    if args.op is not None:
        q["ops"] = [r for r in q["ops"] if r["op"] == args.op]
    if args.json:
        print(json.dumps(q, indent=2))
        return EXIT_OK
    rows = []
    for r in q["services"]:
        lt, w = r["lifetime"], r["window"]
        row = [r["actor"], r["op"], str(lt["count"]), f"{lt['error_rate']:.2%}",
               str(lt.get("caller_errors", 0)),
               f"{lt['p50']}", f"{lt['p90']}", f"{lt['p99']}", f"{lt['p999']}",
               f"{lt['max']}", str(w["count"])]
        clients = sorted(r["clients"].items()) or [("-", None)]
        for i, (name, cl) in enumerate(clients):
            client = [name, "-", "-"] if cl is None else [
                name, f"{cl['lifetime']['p50']}", f"{cl['lifetime']['p99']}"]
            rows.append((row if i == 0 else [""] * len(row)) + client)
    print_table(["ACTOR", "OP", "COUNT", "ERRORS", "OF THEM CALLER'S", "P50us", "P90us",
                 "P99us", "P99.9us", "MAXus", f"LAST {q['window_s']}s", "CLIENT",
                 "CLIENT_P50us", "CLIENT_P99us"], rows)
    for r in q["clients"]:
        if r["matched"]:
            continue
        lt = r["lifetime"]
        print(f"client {r['client']}: {r['target_actor']} {r['target_op']} count {lt['count']} "
              f"p50 {lt['p50']}us p99 {lt['p99']}us (no service time recorded)")
    return EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    from moorage.supervisor.cli.top import config_targets, run

    try:
        targets = config_targets(args.config)
    except ConfigError as exc:
        raise CliError(f"bad configuration: {exc}") from None
    need_tree(args.runtime_dir)
    return run(args.runtime_dir, args.interval, args.once, targets)


# --- parsing ---------------------------------------------------------------------------------


def global_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, anywhere on the line (before or after the
    subcommand): the subparsers get them without defaults, so a value given after the
    subcommand is not overwritten by the top level's default."""
    p = argparse.ArgumentParser(add_help=False)

    def default(v: Any) -> dict[str, Any]:
        return {"default": v} if defaults else {"default": argparse.SUPPRESS}

    g = p.add_argument_group("global options (anywhere on the line)")
    g.add_argument("--instance", help="instance name (default: $MOORAGE_RUNTIME_DIR's, "
                   "else 'default')", **default(None))
    g.add_argument("--instance-dir", help=argparse.SUPPRESS, **default(None))
    g.add_argument("--timeout", type=seconds, metavar="SECONDS",
                   help=f"the whole command's time budget (default {DEFAULT_TIMEOUT:g}; "
                   "`call`: the op's own timeout, as `config get` shows it)", **default(None))
    g.add_argument("--connection", metavar="FILE",
                   help="drive the tree elsewhere that FILE (its tree.json, copied here) "
                   "describes, over tcp with CURVE (" + ", ".join(sorted(REMOTE_COMMANDS))
                   + ")", **default(None))
    g.add_argument("--keys", metavar="DIR", help="with --connection: the keys directory "
                   "holding this user's client pair (default: $MOORAGE_KEYS_DIR, else "
                   "$XDG_CONFIG_HOME/moorage/keys, as `moorage keys init` made it)",
                   **default(None))
    g.add_argument("--host", help="with --connection: reach the tree at HOST rather than the "
                   "address it bound (0.0.0.0, or a forwarded port)", **default(None))
    return p


# The commands that only talk to the tree through its sockets, so they drive a tree elsewhere
# as well (--connection); the others need its host: its lock, pid, log files or processes.
REMOTE_COMMANDS = frozenset({"status", "restart", "kill", "call", "ops", "subscribe",
                             "events", "metrics", "config", "slo"})


MAX_SECONDS = 86_400.0  # a day: a longer wait is a mistake (and inf no time at all to a poll)


def seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < v <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds and at most a day "
                                         f"({MAX_SECONDS:g}), got {text!r}")
    return v


def log_level(text: str) -> str:
    level = text.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level (use {', '.join(x.lower() for x in LOG_LEVELS)})")
    return level


LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


class BadArguments(Exception):
    """A command line argparse would print its usage for and exit 2 on, raised instead: for
    `up` that is a start refused, said on the failed line where the ready line would have
    gone (an editor reads that line, not the usage on stderr)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str,
                 command: str | None = None) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message
        words = parser.prog.split()
        self.command = command or (words[1] if len(words) > 1 else None)


class Parser(argparse.ArgumentParser):
    """argparse's parser, its usage errors raised (BadArguments); its subparsers are too."""

    def error(self, message: str) -> NoReturn:
        raise BadArguments(self, message)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="moorage", description=__doc__.split("\n")[0],
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
    up.add_argument("--listen", metavar="tcp://HOST:PORT",
                    help="serve over tcp too, CURVE always, to the keys allowed by `moorage "
                    "keys allow`: actor i on PORT+2i and PORT+2i+1 (see `moorage keys`)")
    up.set_defaults(func=cmd_up)

    ad = command("adopt", "cancel an orphaned tree's shutdown; with --parent, hold the tree "
                 "beside its other holders (it runs while one of them does); without, let "
                 "every holder go (it runs until `moorage down`)")
    ad.add_argument("--parent", type=int, metavar="PID", help="the process to follow from now "
                    "on (default: none; the tree then runs until `moorage down`)")
    ad.add_argument("--json", action="store_true")
    ad.set_defaults(func=cmd_adopt)

    command("down", "stop the tree (0 if it is not running)").set_defaults(func=cmd_down)

    st = command("status", "the tree: state, pid, uptime, restarts (exit 1 if a child's state "
                 "is unknown)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rs = command("restart", "restart one actor")
    rs.add_argument("actor").completer = actor_completer  # type: ignore[attr-defined]
    rs.set_defaults(func=cmd_restart)

    k = command("kill", "send a signal to an actor (default SIGKILL)")
    k.add_argument("actor").completer = actor_completer  # type: ignore[attr-defined]
    k.add_argument("--signal", default="SIGKILL", help="a name (TERM, SIGTERM) or a number")
    k.set_defaults(func=cmd_kill)

    c = command("call", "call an op: moorage call ACTOR OP '{\"json\": 1}'")
    c.add_argument("actor").completer = actor_completer  # type: ignore[attr-defined]
    c.add_argument("op").completer = op_completer  # type: ignore[attr-defined]
    c.add_argument("json", nargs="?", help="the arguments, a JSON object")
    c.add_argument("--attach", action="append", metavar="FILE",
                   help="send FILE's bytes as an attachment (repeatable; - is stdin)")
    c.add_argument("--data", metavar="@FILE|TEXT",
                   help="the bytes argument `data`: a file's bytes (@FILE, @- for stdin) or "
                   "TEXT as the command line gave its bytes")
    c.add_argument("--raw", action="store_true",
                   help="the reply's attachments to stdout as they are (the body to stderr)")
    c.add_argument("--out", metavar="FILE", help="the reply's attachments to FILE")
    c.set_defaults(func=cmd_call)

    o = command("ops", "the ops of the tree's actors (sys.info): arguments, idempotency, "
                "timeout, what each does")
    o.add_argument("actor", nargs="?").completer = actor_completer  # type: ignore[attr-defined]
    o.add_argument("op", nargs="?").completer = op_completer  # type: ignore[attr-defined]
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_ops)

    sb = command("subscribe", "follow an actor's stream (term.out.<session>, fs.event, ...) "
                 "with gap repair, until the tree stops")
    sb.add_argument("actor").completer = actor_completer  # type: ignore[attr-defined]
    sb.add_argument("topic", help="a topic, or a prefix of topics (--from-seq replays a whole "
                    "topic's retention, so it wants a whole name)").completer = \
        topic_completer  # type: ignore[attr-defined]
    sb.add_argument("--from-seq", type=int, metavar="N",
                    help="start with the retained messages from seq N")
    sb.add_argument("--json", action="store_true", help="one JSON object per line")
    sb.add_argument("--raw", action="store_true",
                    help="the messages' bytes (attachments) to stdout as they are")
    sb.set_defaults(func=cmd_subscribe)

    ev = command("events", "follow supervisor events, until the tree stops")
    ev.add_argument("--count", type=int, help="exit after this many events")
    ev.add_argument("--replay", action="store_true", help="start with the retained events")
    ev.set_defaults(func=cmd_events)

    lg = command("logs", "print an actor's log (default: the supervisor's)")
    lg.add_argument("actor", nargs="?").completer = actor_completer  # type: ignore[attr-defined]
    lg.add_argument("-f", "--follow", action="store_true", help="until the tree stops")
    lg.set_defaults(func=cmd_logs)

    m = command("metrics", "per-op counts and latency percentiles")
    m.add_argument("op", nargs="?")
    m.add_argument("--prometheus", action="store_true",
                   help="Prometheus text, the same as --metrics-http serves")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_metrics)

    tp = command("top", "live view: tree, pressure, op latency, alerts (q quits)")
    tp.add_argument("--interval", type=seconds, default=1.0, help="seconds between refreshes")
    tp.add_argument("--once", action="store_true", help="print one frame and exit")
    tp.add_argument("--config", help="the tree's moorage.toml, for its p50 targets "
                    "(default: as `moorage up` finds it; p99 targets come from the tree)")
    tp.set_defaults(func=cmd_top)

    cf = command("config", "run-time settings: `config get` shows every op's timeout and where "
                 "it comes from; `config set timeout.term.exec 10s` changes one until the tree "
                 "stops")
    cf.add_argument("action", choices=["get", "set"])
    cf.add_argument("key", nargs="?")
    cf.add_argument("value", nargs="?")
    cf.add_argument("--json", action="store_true")
    cf.set_defaults(func=cmd_config)

    add_slo_command(sub, common)
    add_completion_command(sub, common)
    add_keys_command(sub, common)
    return p


# --- main ------------------------------------------------------------------------------------


def running_state_dir(runtime_dir: Path) -> Path | None:
    """The state dir a running tree says it uses (its connection file), if it says."""
    try:
        info = read_connection_file(runtime_dir / endpoints.CONNECTION_FILE)
    except (OSError, ValueError):
        return None
    return Path(info["state_dir"]) if info.get("state_dir") else None


def error_exit(exc: MoorageError) -> tuple[str, int]:
    """The one line and the exit code for an error the tree (or the client) answered."""
    msg = str(exc)
    if exc.name in ("unknown_op", "bad_args") and exc.actor:
        msg += f"; see `moorage ops {exc.actor}`"
    if exc.name == "not_running":
        return msg, EXIT_NO_TREE
    return msg, EXIT_USAGE if fault_of(exc.name) is Fault.CALLER else EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    p = parser()
    autocomplete(p)
    try:
        return run(p, argv)
    except BrokenPipeError:
        # The reader went away (`moorage status | head`): nothing more to say to anyone.
        quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


def refuse(args: argparse.Namespace, message: str) -> int:
    """A command refused before it runs (its arguments or the environment): one line on
    stderr and exit 2; for `up`, its failed line too, where the ready line would have gone."""
    if args.command == "up":
        return refuse_start(StartFailed("bad_config", message, EXIT_USAGE),
                            None if args.detach else args.ready_fd)
    print(f"moorage: {message}", file=sys.stderr)
    return EXIT_USAGE


def bad_arguments(exc: BadArguments, argv: list[str]) -> int:
    """argparse's usage and error on stderr, exit 2; for `up` the failed line as well, on
    --ready-fd as given (an fd that is not open, or --detach: stdout)."""
    exc.parser.print_usage(sys.stderr)
    if exc.command != "up":
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    ready_fd = None
    for i, word in enumerate(argv):
        given = (word.partition("=")[2] if word.startswith("--ready-fd=")
                 else argv[i + 1] if word == "--ready-fd" and i + 1 < len(argv) else None)
        if given is not None:
            ready_fd = int(given) if given.isdigit() else None
    if "--detach" in argv:
        ready_fd = None
    return refuse_start(StartFailed("bad_config", exc.message, EXIT_USAGE), ready_fd)


def given_instance(args: argparse.Namespace) -> None:
    """ValueError for an empty `--instance` or `--instance-dir` (what an editor passes for a
    setting left unset: `--instance "$name"`). Taken for the default instance, it would
    drive the user's default tree, and `down` it, in place of the editor's own, even over
    $MOORAGE_RUNTIME_DIR. An instance's name is never empty (PROTOCOL.md section 2): the
    default is asked for by leaving the option out."""
    if args.instance is not None:
        try:
            endpoints.check_instance(args.instance)
        except ValueError as exc:
            raise ValueError(f"--instance: {exc}: a name is never empty, has no '/' and is "
                             "neither . nor ..; leave --instance out for the default "
                             "instance") from None
    if args.instance_dir == "":
        raise ValueError("--instance-dir '': an empty path names no directory")


def run(p: argparse.ArgumentParser, argv: list[str] | None) -> int:
    words = keys_after_options(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = p.parse_known_args(words)
        if extra:  # (argparse's parse_args says so with the top level's usage, as here)
            raise BadArguments(p, f"unrecognized arguments: {' '.join(extra)}", args.command)
    except BadArguments as exc:
        return bad_arguments(exc, words)
    # Absolute: the ready line, the connection file and every endpoint name them to
    # processes that do not share our working directory (endpoints ignores a relative
    # $XDG_*, as the XDG spec says).
    try:
        given_instance(args)
        args.runtime_dir = Path(os.path.abspath(
            args.instance_dir if args.instance_dir is not None
            else endpoints.runtime_dir(args.instance)))
        args.state_dir = Path(os.path.abspath(
            running_state_dir(args.runtime_dir)
            or endpoints.state_dir(args.runtime_dir, args.instance)))
    except ValueError as exc:  # a bad instance name; no home to find the state dir in
        return refuse(args, str(exc))
    if (args.connection or args.keys or args.host) and args.command not in REMOTE_COMMANDS:
        given = "--connection" if args.connection else "--keys" if args.keys else "--host"
        return refuse(args, f"{given}: `{args.command}` works on this host's trees only; "
                      f"with --connection: {', '.join(sorted(REMOTE_COMMANDS))}")
    if (args.keys or args.host) and not args.connection:
        return refuse(args, "--keys and --host go with --connection FILE")
    # Without --timeout a command has DEFAULT_TIMEOUT, and `call` gives its op the op's own
    # timeout (the client's choice for a call given none).
    args.timeout_given = args.timeout is not None
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe is found here, not at exit
        return code
    except CliError as exc:
        sys.stdout.flush()
        print(f"moorage: {exc}", file=sys.stderr)
        return exc.code
    except MoorageError as exc:
        msg, code = error_exit(exc)
        print(f"moorage: {msg}", file=sys.stderr)
        return code
    except (BrokenPipeError, KeyboardInterrupt):
        raise
    except OSError as exc:
        print(f"moorage: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug of ours: one line, and how to see more
        if os.environ.get("MOORAGE_DEBUG"):
            raise
        print(f"moorage: unexpected {type(exc).__name__}: {exc} (this is a bug; "
              "MOORAGE_DEBUG=1 shows where)", file=sys.stderr)
        return EXIT_ERROR


def quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's own flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


