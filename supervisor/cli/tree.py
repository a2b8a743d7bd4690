"""`moorage down|status|restart|kill|config`: the tree's life and its run-time settings.

Every call here is bounded by the command's one budget (`--timeout`, Budget), and the
read-only ones are sent as idempotent: they are retried while the budget lasts and end as
`timeout`, never as `outcome_unknown` (which would claim that reading could have changed
something).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from moorage.actors.resource.levels import FEATURES_OFF
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from moorage.supervisor.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    Budget,
    CliError,
    check_actor,
    connect,
    followed,
    print_table,
    read,
    tree_pid,
)

UNKNOWN = "unknown"


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the tree and wait for its root to be gone; a tree that is not running is already
    where `down` would put it (0, as `systemctl stop` of a stopped unit), once what a root
    that died (SIGKILL) left is removed. A root that does not answer (wedged, stopped) gets
    SIGTERM, then SIGKILL, through a pidfd: never a process that reused its pid; so does
    one that cannot be reached (its socket gone) or that refuses. Its children follow it
    (PR_SET_PDEATHSIG)."""
    pid = tree_pid(args.runtime_dir)
    if pid is None:
        print(f"moorage: not running ({args.runtime_dir})")
        clean_up_after(args.runtime_dir)
        return EXIT_OK
    fd = root_pidfd(args.runtime_dir, pid)
    if fd is not None and stopped_whole(pid):
        # continued, then asked: the root continues what is its own, each supervisor its
        # children (supervisor.py: Supervisor._continue_all)
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, signal.SIGCONT)
    try:
        try:
            with Client(args.runtime_dir, timeout=args.timeout) as c:
                c.call("supervisor", "sup.stop")
        except MoorageError as exc:
            if exc.name in ("stopping", "not_running"):  # (on its way down; gone)
                pass
            elif fd is not None:
                # The lock names a live root that did not stop when asked: it did not answer
                # (wedged), could not be reached (its socket removed from the runtime dir),
                # or refused. It is stopped all the same (as long to stop after SIGTERM as
                # after an answer: a busy root's clean stop is not cut short).
                force_stop(fd, pid, args.timeout + 30)
            else:
                raise
        # It answered: its own stop asks, waits for and kills every child; wait for it.
        if fd is not None and not gone(fd, args.timeout + 30):
            raise CliError(f"the tree (pid {pid}) is still stopping", EXIT_ERROR)
    finally:
        if fd is not None:
            os.close(fd)
    clean_up_after(args.runtime_dir)
    print("moorage tree stopped")
    return EXIT_OK


def clean_up_after(runtime_dir: Path) -> None:
    from moorage.supervisor.launch import remove_dead_tree

    left = remove_dead_tree(runtime_dir)
    if left:
        print(f"moorage: removed what a tree that died left: {', '.join(left)}",
              file=sys.stderr)


def root_pidfd(runtime_dir: Path, pid: int) -> int | None:
    """A pidfd of the tree's root: the lock is held under this pid once it is open, so it is
    the holder (alive at the same time, so the same process) and not one that took over a
    reused pid. None: no pid yet (the tree is starting), or the root is gone already."""
    if pid <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if tree_pid(runtime_dir) != pid:
        os.close(fd)
        return None
    return fd


def gone(pidfd: int, timeout: float) -> bool:
    """Whether the process exits within `timeout` (a pidfd turns readable when it does)."""
    from moorage.supervisor.zygote import readable  # (down's clean-up imports it anyway)

    return readable(pidfd, timeout)


def stopped_whole(pid: int) -> bool:
    """Whether the tree of root `pid` is stopped whole (Ctrl-Z on `moorage up`, a `kill
    -STOP` of its group): the root and a process of its group below it. A root stopped
    alone is one that does not answer: SIGTERM's turn (force_stop)."""
    import psutil  # (a dependency; only `down` needs it here)

    try:
        root = psutil.Process(pid)
        if root.status() != psutil.STATUS_STOPPED:
            return False
        group = os.getpgid(pid)
        below = root.children(recursive=True)
    except (psutil.Error, ProcessLookupError):
        return False
    for p in below:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == group and p.status() == psutil.STATUS_STOPPED:
                return True
    return False


def force_stop(pidfd: int, pid: int, grace: float) -> None:
    """SIGTERM (and SIGCONT, so a stopped root can act on it), `grace` seconds to exit, then
    SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        print(f"moorage: the tree (pid {pid}) did not stop when asked: {sig.name}",
              file=sys.stderr)
        try:
            signal.pidfd_send_signal(pidfd, sig)
            if sig == signal.SIGTERM:  # (continued, the root continues its children too)
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
        except ProcessLookupError:
            return
        if gone(pidfd, wait):
            return
    raise CliError(f"the tree (pid {pid}) is still there after SIGKILL", EXIT_ERROR)


# --- status ----------------------------------------------------------------------------------


def state_text(ch: dict[str, Any]) -> str:
    """A child's state, with when its planned start is due and whether that is a
    last-resort retry: `backoff` alone would read the same 20 ms or 60 s from a start."""
    if "retry_in_s" not in ch:
        return str(ch["state"])
    given_up = "past intensity, " if ch.get("past_intensity") else ""
    return f"{ch['state']} ({given_up}retry in {ch['retry_in_s']:.1f}s)"


def status_rows(tree: dict[str, Any], depth: int = 0) -> list[list[str]]:
    """One row per child, nested supervisors' children indented under them; a nested
    supervisor that did not answer is `unknown`, and so are its last known children."""
    rows = []
    for ch in tree.get("children", []):
        sub = ch.get("tree") if isinstance(ch.get("tree"), dict) else None
        state = UNKNOWN if sub is not None and "error" in sub else state_text(ch)
        rows.append([
            "  " * depth + ch["id"], ch["type"], state, str(ch["pid"] or "-"),
            f"{ch['uptime_s']:.1f}s", str(ch["restarts"]), ch["last_exit"] or "-",
            ch.get("fallback") or "-",
        ])
        if sub is not None:
            rows.extend(status_rows(sub, depth + 1))
    return rows


def unknown_children(tree: dict[str, Any]) -> list[str]:
    """Ids of the children whose state is not known now."""
    out = []
    for ch in tree.get("children", []):
        sub = ch.get("tree") if isinstance(ch.get("tree"), dict) else None
        if ch["state"] == UNKNOWN or (sub is not None and "error" in sub):
            out.append(ch["id"])
        if sub is not None:
            out.extend(unknown_children(sub))
    return out


def has_child(tree: dict[str, Any], cid: str) -> bool:
    return any(ch["id"] == cid or has_child(ch.get("tree") or {}, cid)
               for ch in tree.get("children", []))


def resource_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"resource: not answering ({r['error']})"
    off = FEATURES_OFF.get(r["quality"], ())
    return (f"pressure {r['pressure']}/100  level {r['level']}  quality {r['quality']}/3"
            + (f" (off: {', '.join(off)})" if off else ""))


def lifecycle_line(life: dict[str, Any]) -> str:
    if life["state"] == "orphaned":
        # (lifecycle.py: orphaned with no parent is the end of file on stdin)
        why = (f"parent {life['parent']} is gone" if life["parent"] is not None
               else "end of file on stdin (the editor's pipe closed)")
        return (f"ORPHANED: {why}; stopping in {life.get('stops_in_s', 0):.1f} s unless "
                "adopted (`moorage adopt`)")
    if life["state"] == "attached":
        return f"{followed(life)} (grace {life['grace_s']:g} s)"
    return "following no parent (runs until `moorage down`)"


def cmd_status(args: argparse.Namespace) -> int:
    budget = Budget(args.timeout)
    with connect(args) as c:
        where = c.runtime_dir  # (a tree elsewhere: its runtime dir on its host)
        tree = read(c, "supervisor", "sup.status", budget=budget)
        level = None
        if has_child(tree, "resource"):
            try:
                level = read(c, "resource", "resource.level", budget=budget, cap=1.0)
            except MoorageError as exc:
                level = {"error": exc.name}
    unknown = unknown_children(tree)
    if args.json:
        out = {**tree, "runtime_dir": str(where)}
        if level is not None:
            out["resource"] = level
        print(json.dumps(out, indent=2))
    else:
        print(f"supervisor pid {tree['pid']}  strategy {tree['strategy']}  "
              f"runtime dir {where}")
        if "lifecycle" in tree:
            print(lifecycle_line(tree["lifecycle"]))
        if level is not None:
            print(resource_line(level))
        print_table(["ID", "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT",
                     "FALLBACK"], status_rows(tree))
    if unknown:
        raise CliError(f"not answering, state unknown: {', '.join(unknown)}", EXIT_ERROR)
    return EXIT_OK


# --- restart, kill ---------------------------------------------------------------------------


def check_child(c: Client, actor: str, budget: Budget) -> None:
    if actor == "supervisor":
        raise CliError("the root supervisor is the tree itself, not one of its children: "
                       "`moorage down` stops it")
    check_actor(c, actor, budget)


def cmd_restart(args: argparse.Namespace) -> int:
    budget = Budget(args.timeout)
    with connect(args) as c:
        check_child(c, args.actor, budget)
        c.call("supervisor", "sup.restart", {"child": args.actor}, timeout=budget.left())
    print(f"restarting {args.actor}")
    return EXIT_OK


def parse_signal(text: str) -> int:
    """`KILL`, `SIGKILL`, `sigkill` or `9`."""
    t = text.strip()
    if t.isdigit():
        n = int(t)
        if n in {int(s) for s in signal.Signals}:
            return n
        raise CliError(f"no signal number {n}")
    name = t.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise CliError(f"no signal named {text!r} (use a name like TERM or SIGKILL, or a "
                       "number)") from None


def cmd_kill(args: argparse.Namespace) -> int:
    sig = parse_signal(args.signal)
    budget = Budget(args.timeout)
    with connect(args) as c:
        check_child(c, args.actor, budget)
        r = c.call("supervisor", "sup.kill", {"child": args.actor, "signal": sig},
                   timeout=budget.left())
    print(f"sent signal {r['signal']} ({signal.Signals(r['signal']).name}) to {args.actor} "
          f"(pid {r['pid']})")
    return EXIT_OK


# --- config ----------------------------------------------------------------------------------

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000}
MAX_TIMEOUT_MS = 3_600_000


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
        value = float(num) * scale
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # (inf and nan are floats; 1e400 reads as inf)
        raise CliError(f"not a duration: {text!r} (use 500ms, 10s, 2m or plain ms)")
    ms = round(value)
    if ms <= 0:
        raise CliError(f"a timeout must be positive, got {text!r}")
    if ms > MAX_TIMEOUT_MS:
        raise CliError(f"a timeout of more than an hour is a mistake, got {text!r}")
    return ms


def tree_ops(c: Client, budget: Budget) -> dict[str, dict[str, Any]]:
    """op -> {actors: [...], timeout_ms: {actor: ms}} for every op of every actor answering
    sys.info now (their effective timeouts, run-time overrides applied)."""
    names = read(c, "supervisor", "sup.endpoints", budget=budget)
    ops: dict[str, dict[str, Any]] = {}
    for actor in names:
        try:
            info = read(c, actor, "sys.info", budget=budget, cap=2.0)
        except MoorageError:
            continue  # down now: its ops are missing from the table, said by the caller
        for name, spec in info["ops"].items():
            o = ops.setdefault(name, {"actors": [], "timeout_ms": {}})
            o["actors"].append(actor)
            o["timeout_ms"][actor] = spec["timeout_ms"]
    return ops


def cmd_config(args: argparse.Namespace) -> int:
    budget = Budget(args.timeout)
    if args.action == "set":
        if args.key is None or args.value is None:
            raise CliError("usage: moorage config set timeout.<op> VALUE (500ms, 10s, 2m)")
        if not args.key.startswith("timeout.") or args.key == "timeout.":
            raise CliError(f"unknown key {args.key!r}; known: timeout.<op>")
        ms = parse_duration_ms(args.value)
    with connect(args) as c:
        ops = tree_ops(c, budget)
        if args.action == "set":
            op = args.key.removeprefix("timeout.")
            if op not in ops:
                raise CliError(f"no actor of this tree has an op {op!r}; `moorage ops` lists "
                               "them")
            r = c.call("supervisor", "sup.config.set", {"key": args.key, "value": ms},
                       timeout=budget.left())
            if args.json:
                print(json.dumps(r, indent=2))
                return EXIT_OK
            print(f"{r['key']} = {r['value']} ms (until the tree stops); told "
                  f"{len(r['told'])} actors, applied by: {', '.join(r['applied']) or 'none'}")
            for actor, err in sorted(r["failed"].items()):
                print(f"  not told: {actor} ({err}); it gets it when it restarts")
            return EXIT_ERROR if r["failed"] else EXIT_OK
        r = read(c, "supervisor", "sup.config.get", budget=budget)
    rows = []
    for op, o in sorted(ops.items()):
        key = f"timeout.{op}"
        source = ("override (config set)" if key in r["overrides"]
                  else "[timeouts] in the config" if key in r["defaults"] else "the op's own")
        values = sorted(set(o["timeout_ms"].values()))
        rows.append({"key": key, "op": op, "timeout_ms": values[0] if len(values) == 1
                     else o["timeout_ms"], "source": source, "actors": o["actors"]})
    if args.key is not None:
        rows = [x for x in rows if x["key"] == args.key or x["op"] == args.key]
        if not rows:
            raise CliError(f"no op {args.key!r} in this tree; `moorage ops` lists them")
    if args.json:
        print(json.dumps({**r, "ops": rows}, indent=2))
        return EXIT_OK
    print_table(["KEY", "TIMEOUT_MS", "FROM", "ACTORS"],
                [[x["key"], str(x["timeout_ms"]) if isinstance(x["timeout_ms"], int) else
                  ", ".join(f"{a} {v}" for a, v in sorted(x["timeout_ms"].items())),
                  x["source"], ", ".join(x["actors"])] for x in rows])
    return EXIT_OK
