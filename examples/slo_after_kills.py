"""A session of kills, then the SLO report: what `moorage slo` says after the tree recovered.

    moorage --instance slo-demo up --detach
    python examples/slo_after_kills.py --instance slo-demo
    moorage --instance slo-demo slo

Runs a few commands and file reads, SIGKILLs parser, watcher, terminal and ptykeeper (a
command after each), SIGSTOPs the resource actor (a hang the supervisor must see), SIGKILLs
the metrics actor (the SLO record must survive it), and runs a few more commands.
"""

from __future__ import annotations

import argparse
import os
import signal

from moorage.protocol.client import Client
from moorage.supervisor.cli.commands import all_children_running


def pid_of(c: Client, cid: str) -> int | None:
    def walk(t: dict) -> int | None:
        for ch in t["children"]:
            if ch["id"] == cid:
                return ch["pid"]
            if "tree" in ch and (p := walk(ch["tree"])):
                return p
        return None
    return walk(c.call("supervisor", "sup.status"))


def replaced(c: Client, cid: str, old: int) -> None:
    """Until `cid` runs under a new pid and the whole tree is up again."""
    while pid_of(c, cid) in (old, None) or \
            not all_children_running(c.call("supervisor", "sup.status")):
        pass


def prompt_session(c: Client) -> str:
    """The (single) session, once its shell is at a prompt (after a keeper death it is
    started again)."""
    while True:
        [s] = c.call("terminal", "term.list")["sessions"]
        if s["state"] == "prompt":
            return s["session"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instance", help="a named instance (default: the one "
                    "$MOORAGE_RUNTIME_DIR names, else the default instance)")
    args = ap.parse_args()
    with Client(instance=args.instance, timeout=30) as c:
        sid = c.call("terminal", "term.create", {"shell": "bash"})["session"]
        for i in range(5):
            c.call("terminal", "term.exec", {"session": sid, "command": f"echo {i}"})
        for _ in range(3):
            c.call("watcher", "fs.read", {"path": "/etc/hostname"})
        for actor in ("parser", "watcher", "terminal", "ptykeeper"):
            old = pid_of(c, actor)
            assert old is not None
            os.kill(old, signal.SIGKILL)
            replaced(c, actor, old)
            sid = prompt_session(c)
            c.call("terminal", "term.exec", {"session": sid, "command": "echo after"})
            print(f"killed {actor} (pid {old}); replaced, and a command ran after it")
        for actor, sig in (("resource", signal.SIGSTOP), ("metrics", signal.SIGKILL)):
            old = pid_of(c, actor)
            assert old is not None
            os.kill(old, sig)
            replaced(c, actor, old)
            print(f"{signal.Signals(sig).name} to {actor} (pid {old}); replaced")
        for i in range(3):
            c.call("terminal", "term.exec", {"session": sid, "command": f"echo again {i}"})
    print("now: moorage --instance", args.instance, "slo")


if __name__ == "__main__":
    main()
