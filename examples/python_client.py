"""A short moorage client: who is there, a call, an error, and the supervisor's events.

    moorage up --detach        # in one terminal (or plain `moorage up` in another one)
    python examples/python_client.py [--instance NAME]
"""

from __future__ import annotations

import argparse

from moorage.protocol.client import Client, Loss, Reset
from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instance")
    args = ap.parse_args()
    with Client(instance=args.instance, timeout=3.0) as client:
        # Every actor answers sys.hello; a new `ep` (epoch) means it restarted meanwhile.
        tree = client.call("supervisor", "sup.status")
        for child in tree["children"]:
            hello = client.hello(child["id"]) if child["type"] == "worker" else None
            print(f"{child['id']:<10} {child['state']:<8} pid {child['pid']}"
                  + (f"  epoch {hello['ep']}" if hello else ""))

        # A call: per-op latency figures from the metrics actor.
        for row in client.call("metrics", "metrics.query")["ops"]:
            lt = row["lifetime"]
            print(f"{row['actor']}/{row['op']}: {lt['count']} calls, p50 {lt['p50']} µs")

        # Errors are classified: a code, a category, whether a retry can help.
        try:
            client.call("metrics", "metrics.query", {"no_such_arg": 1})
        except MoorageError as exc:
            print(f"error {exc.code} {exc.name} ({exc.error.category}, "
                  f"retryable={exc.retryable}): {exc.error.message}")

        # Streams: every supervisor event retained so far, then live ones for two seconds.
        sub = client.subscribe("supervisor", ["sup.event"], from_seq=1)
        while (ev := sub.next(timeout=2.0)) is not None:
            if isinstance(ev, StreamMessage):
                print(f"event #{ev.seq}: {ev.body['event']} {ev.body.get('child', '')}")
            elif isinstance(ev, Loss):
                print(f"events {ev.first}..{ev.last} no longer retained")
            elif isinstance(ev, Reset):
                print("the supervisor restarted")


if __name__ == "__main__":
    main()
