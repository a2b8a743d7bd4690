"""A remote session, from the editor's side: a tree elsewhere (started with `moorage up
--listen tcp://HOST:PORT`), reached from a copy of its connection file and this user's key
pair (`moorage keys init`, allowed there by `moorage keys allow`). A terminal command and its
output stream, a file watch and the event of a file written through the tree.

    python examples/remote_session.py tree.json [--host HOST] [--dir /path/on/the/tree/host]
"""

from __future__ import annotations

import argparse
import time

from moorage.protocol.client import Client
from moorage.protocol.envelope import StreamMessage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("connection_file")
    ap.add_argument("--host", help="the tree's host as this machine reaches it")
    ap.add_argument("--dir", default="/tmp", help="a directory on the tree's host to watch")
    args = ap.parse_args()
    with Client.remote(args.connection_file, host=args.host, timeout=10.0) as c:
        t0 = time.monotonic()
        ping = c.call("supervisor", "sys.ping")
        print(f"connected: supervisor epoch {ping['ep']} "
              f"({(time.monotonic() - t0) * 1000:.1f} ms, handshake included)")

        # A terminal: its output as a stream, a command and its result.
        session = c.call("terminal", "term.create", {})["session"]
        out = c.subscribe("terminal", [f"term.out.{session}"], from_seq=1)  # all of it
        done = c.call("terminal", "term.exec", {"session": session,
                                                "command": "echo hello from $(hostname)"})
        print(f"term.exec: exit {done['exit_code']} in {done['duration_ms']:.1f} ms: "
              f"{done['output'].strip()!r}")
        streamed = b""
        while b"hello from" not in streamed:
            ev = out.next(timeout=10)
            if ev is None:
                raise SystemExit("no terminal output streamed within 10 s")
            if isinstance(ev, StreamMessage) and ev.attachments:
                streamed += ev.attachments[0]
        print(f"term.out.{session}: {len(streamed)} bytes streamed, the command's among them")

        # A file watch: a file written through the tree arrives as an fs.event.
        events = c.subscribe("watcher", ["fs.event"])
        watch = c.call("watcher", "fs.watch", {"path": args.dir})
        path = f"{args.dir.rstrip('/')}/moorage-remote-{session}.txt"
        c.call("watcher", "fs.write", {"path": path, "data": b"written from afar\n"})
        while True:
            ev = events.next(timeout=10)
            if ev is None:
                raise SystemExit("no fs.event within 10 s")
            if isinstance(ev, StreamMessage) and any(
                    e.get("path") == path for e in ev.body.get("events", [])):
                print(f"fs.event for {path} (watch {watch['watch']} via {watch['via']})")
                break
        # (what the demo made goes with it: the file, by the shell there; the watch)
        c.call("terminal", "term.exec", {"session": session, "command": f"rm -f '{path}'"})
        c.call("watcher", "fs.unwatch", {"watch": watch["watch"]})
        c.call("terminal", "term.close", {"session": session})


if __name__ == "__main__":
    main()
