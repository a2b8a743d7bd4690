"""SIGKILL the terminal actor, then the pty keeper, then both at once, while a command runs in
a session: the shell, the command and every byte of its output survive each, and the session
goes on serving.

    moorage up --detach && python examples/terminal_survives_restart.py [--instance NAME]

A bash loop prints 20 ticks 0.3 s apart. After tick 5 the terminal actor is killed: its
successor gets the PTY master back from the keeper and the output from the shared ring. After
tick 10 the keeper is killed: the terminal holds the master meanwhile, so the shell never sees
a hangup, and the keeper's successor adopts the same shell (same pid) and goes on reading it
into the same ring. After tick 15 both are killed at once: the terminals supervisor holds a
third copy of the master and the ring, and hands them to the new keeper, which hands them to
the new terminal actor. The loop finishes, the next `term.exec` is answered with integration,
and the scrollback holds every tick exactly once.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import time

from moorage.protocol.client import Client

LOOP = "for i in $(seq 1 20); do echo tick $i; sleep 0.3; done; echo LOOP $((40+2))\n"
ESCAPES = re.compile(r"\x1b\][^\x07]*\x07|\x1b\[[0-9;?]*[A-Za-z]")


def now() -> str:
    return time.strftime("%H:%M:%S")


def pid_of(c: Client, child: str) -> int:
    """The pid of a child of the terminals supervisor (`terminal` or `ptykeeper`)."""
    st = c.call("supervisor", "sup.status")
    terms = next(ch for ch in st["children"] if ch["id"] == "terminals")
    return next(ch for ch in terms["tree"]["children"] if ch["id"] == child)["pid"]


def kill_after(c: Client, sid: str, tick: int, children: tuple[str, ...],
               shell_pid: int) -> None:
    """SIGKILL `children` at once when `tick` is printed; report the shell once it is served
    again."""
    while f"tick {tick}\r\n".encode() not in scrollback(c, sid):
        pass
    pids = {child: pid_of(c, child) for child in children}
    print(f"{now()} 'tick {tick}' printed; SIGKILL " +
          " and ".join(f"{child} pid {pid}" for child, pid in pids.items()))
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    for child, pid in pids.items():
        while pid_of(c, child) in (pid, None):  # the supervisor reports its successor
            pass
    x = session(c, sid)  # answered once the session is restored
    print(f"{now()} " + " and ".join(f"{child} pid {pid_of(c, child)}" for child in pids) +
          f" serve{'s' if len(pids) == 1 else ''}; session {sid}: shell pid {x['pid']} "
          f"({'same' if x['pid'] == shell_pid else 'NOT the same'}), state {x['state']}, "
          f"offset {x['offset']}")


def scrollback(c: Client, sid: str) -> bytes:
    return c.request("terminal", "term.scrollback", {"session": sid}).attachments[0]


def session(c: Client, sid: str) -> dict:
    return next(x for x in c.call("terminal", "term.list")["sessions"] if x["session"] == sid)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instance", help="a named instance (default: the one "
                    "$MOORAGE_RUNTIME_DIR names, else the default instance)")
    args = ap.parse_args()
    with Client(instance=args.instance, timeout=30) as c:
        s = c.call("terminal", "term.create", {"shell": "bash", "cols": 80, "rows": 24})
        sid = s["session"]
        print(f"{now()} session {sid}: shell pid {s['pid']}, mode {s['mode']}")
        c.call("terminal", "term.write", {"session": sid, "data": LOOP})
        kill_after(c, sid, 5, ("terminal",), s["pid"])
        kill_after(c, sid, 10, ("ptykeeper",), s["pid"])
        kill_after(c, sid, 15, ("ptykeeper", "terminal"), s["pid"])
        while session(c, sid)["state"] != "prompt":
            pass
        print(f"{now()} the loop finished in the same shell, back at its prompt")
        r = c.call("terminal", "term.exec",
                   {"session": sid, "command": "echo after the loop in $PWD"})
        print(f"{now()} next term.exec: {r['output']!r} exit {r['exit_code']} mode {r['mode']} "
              f"parser {r.get('parser')}")
        text = ESCAPES.sub("", scrollback(c, sid).decode(errors="replace")).replace("\r", "")
        lines = [ln for ln in text.splitlines() if ln.startswith("tick") or ln == "LOOP 42"]
        ticks = [int(ln.split()[1]) for ln in lines if ln.startswith("tick")]
        print(f"{now()} scrollback: {len(lines)} lines: {lines[0]} .. {lines[-1]}; "
              f"every tick once: {ticks == list(range(1, 21))}")
        c.call("terminal", "term.close", {"session": sid})


if __name__ == "__main__":
    main()
