"""A process a benchmark runs beside its subject, to measure what the machine charges for it.

    python -m perf._beside sink ENDPOINT   a PULL bound at ENDPOINT, reading every message
    python -m perf._beside tick            wakes every 10 ms and does nothing else

Each prints `ready` once it is set up and runs until killed. The sink stands in for the
metrics actor (a receiver that takes a push and does no work with it); the tick is the least
any 100 Hz activity costs: a process woken a hundred times a second. On a 2-core VM a round
trip between two other processes pays for both in its median (client_latency_overhead's C2
rows measure them beside the pushing clients).
"""

from __future__ import annotations

import sys
import time

import zmq

TICK_S = 0.01


def sink(endpoint: str) -> None:
    sock = zmq.Context.instance().socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    print("ready", flush=True)
    while True:
        sock.recv_multipart(copy=False)


def tick() -> None:
    print("ready", flush=True)
    due = time.monotonic()
    while True:
        due += TICK_S
        left = due - time.monotonic()
        if left > 0:
            time.sleep(left)


def main(argv: list[str]) -> int:
    if argv[:1] == ["sink"] and len(argv) == 2:
        sink(argv[1])
    elif argv == ["tick"]:
        tick()
    print("usage: python -m perf._beside sink ENDPOINT | tick", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
