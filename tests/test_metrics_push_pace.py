"""Pushes that come close together are taken together, in paced turns, and none is lost.

A steady pusher (a client pushing every 10 ms) woke the metrics actor once a push, each push
taken cold; now a push that comes within PUSH_PACE_S of the last turn waits for the next paced
turn with those after it, until a turn finds none and the actor reads each push as it comes
again. The tree is real, the pushes go through its real socket, and what is merged is read
back through metrics.query.
"""

from __future__ import annotations

from typing import Any

import pytest
import zmq

from moorage.protocol import endpoints
from moorage.protocol.envelope import TAG, packb
from moorage.protocol.histogram import Recorder
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
"""


def push_frames(values: list[int]) -> list[bytes]:
    r = Recorder()
    for v in values:
        r.record(v)
    return [TAG, packb({"actor": "client.paced", "pid": 1, "ep": "s"}),
            packb({"parser/sys.ping": {"ok": len(values), "error": 0, "hist": r.encode()}})]


def lifetime(tree: Any) -> dict[str, Any] | None:
    rows = tree.call("metrics", "metrics.query", {"actor": "client.paced"})["ops"]
    return rows[0]["lifetime"] if rows else None


def test_close_pushes_are_taken_in_paced_turns_and_each_later_one_as_it_comes(make_tree):
    tree = make_tree(CONFIG).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoints.metrics_in(tree.runtime_dir))
    try:
        sent = 0

        def paced() -> bool:
            # a push between two looks: they come closer together than the pace, as a
            # steady pusher's do, until the actor has taken some in a paced turn
            nonlocal sent
            sock.send_multipart(push_frames([100, 150, 200]))
            sent += 1
            return tree.call("metrics", "sys.info")["push_paced_turns"] >= 1

        wait_for(paced, "a paced turn", timeout=60)
        row = wait_for(lambda: (r := lifetime(tree)) and r["count"] == 3 * sent and r,
                       f"the {sent} pushes merged", timeout=30)
        assert (row["ok"], row["error"], row["p50"], row["max"]) == (3 * sent, 0, 150, 200)

        # Once a turn finds none, the actor reads each push as it comes again: a lone push
        # is taken without another after it to start a turn.
        wait_for(lambda: tree.call("metrics", "sys.info")["received_pushes"] == sent,
                 "every push received")
        sock.send_multipart(push_frames([250]))
        row = wait_for(lambda: (r := lifetime(tree)) and r["count"] == 3 * sent + 1 and r,
                       "the lone push merged", timeout=30)
        assert row["max"] == 250  # (values under 256 are exact)
        info = tree.call("metrics", "sys.info")
        assert info["received_pushes"] == sent + 1 and info["bad_pushes"] == 0
    finally:
        sock.close()
        ctx.term()
