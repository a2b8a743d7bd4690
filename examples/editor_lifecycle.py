"""An editor's life with a moorage tree: start it, lose it, adopt it again.

    python examples/editor_lifecycle.py [--instance NAME] [--grace S]
    python examples/editor_lifecycle.py --no-adopter --grace 1   # time the tree's own end

1. The first "editor" (a child process of this script) starts `moorage up --parent <its pid>`
   as an editor does, reads the ready line, opens a terminal session from the connection file
   alone, runs a command in it, starts one more without waiting, and dies: SIGKILL of itself.
2. The tree sees the death through the editor's pidfd and is orphaned for the grace period;
   the shell keeps running.
3. A second "editor" finds the tree from the connection file, adopts it (`sys.hello {adopt:
   true}`), finds the session with term.list, and prints its output from offset 0 with
   term.scrollback: every byte once, the output made while nobody was there included.

With --no-adopter nobody comes: the script prints how long the tree took from the editor's
death to no process of it left (the grace period, then a clean stop).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.client.connection import adopt

FIRST = b"first-editor-was-here"
WHILE_AWAY = b"made-while-nobody-was-there"


def first_editor(instance: str, config: str) -> None:
    """Start the tree, open a session, start a command, die."""
    up = subprocess.Popen(
        [sys.executable, "-m", "moorage.supervisor.cli", "--instance", instance, "up",
         "--parent", str(os.getpid()), "--config", config],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    assert up.stdout is not None
    ready = json.loads(up.stdout.readline())
    print(f"editor 1: ready line: {json.dumps(ready)[:160]}...", flush=True)
    with Client.from_connection_file(ready["connection_file"], timeout=30) as c:
        s = c.call("terminal", "term.create", {"shell": "bash"})
        r = c.call("terminal", "term.exec",
                   {"session": s["session"],
                    "command": f"echo {FIRST.decode()[:5]}''{FIRST.decode()[5:]}"})
        print(f"editor 1: session {s['session']} (shell pid {s['pid']}): "
              f"{r['output'].strip()!r}", flush=True)
        # Still running when this editor dies: its output lands while nobody is there.
        c.call("terminal", "term.write", {"session": s["session"], "data":
               f"seq 1 3; echo {WHILE_AWAY.decode()[:10]}''{WHILE_AWAY.decode()[10:]}\r"})
    print(f"editor 1 (pid {os.getpid()}): SIGKILL", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def second_editor(rdir: Path) -> None:
    """Adopt the orphaned tree and read the session from offset 0."""
    with Client.from_connection_file(rdir / endpoints.CONNECTION_FILE, timeout=30) as c:
        st = c.call("supervisor", "sup.status")["lifecycle"]
        print(f"editor 2: the tree is {st['state']}, stopping in {st.get('stops_in_s')} s",
              flush=True)
        life = adopt(c)["lifecycle"]
        print(f"editor 2 (pid {os.getpid()}): adopted; now {life['state']}, following "
              f"pid {life['parent']}", flush=True)
        (s,) = c.call("terminal", "term.list")["sessions"]
        data, offset = b"", 0
        while WHILE_AWAY + b"\r\n" not in data:
            rep = c.request("terminal", "term.scrollback",
                            {"session": s["session"], "from_offset": offset})
            data += b"".join(rep.attachments)
            offset = rep.body["to"]
            if WHILE_AWAY + b"\r\n" not in data:  # not printed yet: wait for its prompt
                c.call("terminal", "term.exec", {"session": s["session"], "command": "true"})
        print(f"editor 2: session {s['session']} (shell pid {s['pid']}), {len(data)} bytes "
              "from offset 0:", flush=True)
        sys.stdout.write(data.decode(errors="replace").replace("\x1b", "\\e"))
        print(flush=True)
        once = data.count(FIRST + b"\r\n") == 1 and data.count(WHILE_AWAY + b"\r\n") == 1
        print(f"editor 2: each output line once: {once}", flush=True)
        c.call("supervisor", "sup.stop")


def tree_processes(instance: str) -> list[psutil.Process]:
    tag = f"moorage[{instance}]:"
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if (p.info["cmdline"] or [""])[0].startswith(tag):
            out.append(p)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instance", help="a named instance (default: one of this run's own, "
                    "its runtime and state directories removed at the end)")
    ap.add_argument("--grace", type=float, default=30.0, help="[lifecycle] grace_s")
    ap.add_argument("--no-adopter", action="store_true")
    ap.add_argument("--role", choices=["first", "second"], help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role is None and a.instance is None:
        a.instance = f"editor-demo-{os.getpid()}"
        try:
            return demo(a)
        finally:
            for d in (endpoints.runtime_dir(a.instance), endpoints.state_dir(
                    endpoints.runtime_dir(a.instance), a.instance)):
                shutil.rmtree(d, ignore_errors=True)
    return demo(a)


def demo(a: argparse.Namespace) -> int:
    rdir = endpoints.runtime_dir(a.instance)
    if a.role == "first":
        first_editor(a.instance, a.config)
        return 0
    if a.role == "second":
        second_editor(rdir)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "moorage.toml"
        config.write_text(f"[lifecycle]\ngrace_s = {a.grace}\n")
        me = [sys.executable, __file__, "--instance", a.instance, "--config", str(config)]
        editor = subprocess.Popen([*me, "--role", "first"])
        editor.wait()
        died = time.monotonic()
        print(f"editor 1 exited: {signal.Signals(-editor.returncode).name}", flush=True)
        if a.no_adopter:
            root = json.loads((rdir / endpoints.CONNECTION_FILE).read_text())["pid"]
            fd = os.pidfd_open(root)
            select.select([fd], [], [], a.grace + 60)  # readable when the root has exited
            os.close(fd)
            while tree_processes(a.instance) or (rdir / endpoints.LOCK_FILE).exists():
                time.sleep(0.005)  # polls a fact (the process table) for the figure only
            gone = time.monotonic() - died
            left = sorted(p.name for p in rdir.iterdir()) if rdir.exists() else []
            print(f"grace_s = {a.grace:g}: from the editor's death to no process of the tree "
                  f"left: {gone:.3f} s; left in {rdir}: {left}")
            return 0
        return subprocess.run([*me, "--role", "second"]).returncode


if __name__ == "__main__":
    sys.exit(main())
