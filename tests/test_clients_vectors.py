"""protocol/vectors/client.json's stream scenarios, run against the Python client's tracker.

The TypeScript and Rust clients run the same file (their own test runners); this keeps the
reference client to it too. The `calls` scenarios (early failure on a dead actor) are run by
the TypeScript and Rust suites; the Python client's early failure is the reliability work's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol.client._streams import Loss, Reset, StreamEvent, StreamTracker
from moorage.protocol.envelope import StreamMessage

pytestmark = pytest.mark.timeout(10)

DOC = json.loads((Path(__file__).resolve().parents[1] / "protocol" / "vectors" / "client.json")
                 .read_text(encoding="utf-8"))


def message(d: dict[str, Any]) -> StreamMessage:
    return StreamMessage(d["topic"], d["seq"], d["ep"], d["body"],
                         [bytes.fromhex(a) for a in d["attachments"]], d.get("welcome", False))


def as_json(ev: StreamEvent) -> dict[str, Any]:
    if isinstance(ev, Loss):
        return {"loss": {"topic": ev.topic, "first": ev.first, "last": ev.last, "ep": ev.epoch}}
    if isinstance(ev, Reset):
        return {"reset": {"topic": ev.topic, "old_epoch": ev.old_epoch,
                          "new_epoch": ev.new_epoch}}
    return {"message": {"topic": ev.topic, "seq": ev.seq, "ep": ev.epoch, "body": ev.body,
                        "attachments": [a.hex() for a in ev.attachments]}}


@pytest.mark.parametrize("scenario", DOC["streams"], ids=[s["name"] for s in DOC["streams"]])
def test_the_tracker_follows_each_stream_scenario(scenario: dict[str, Any]) -> None:
    sub = scenario["subscription"]
    t = StreamTracker(sub["from_seq"], sub["prefixes"])
    for i, step in enumerate(scenario["steps"]):
        need = None
        if "message" in step:
            events, need = t.on_message(message(step["message"]))
        elif "replay_answer" in step:
            a = step["replay_answer"]
            events, need = t.on_replay(a["topic"], a["answer"],
                                       [bytes.fromhex(x) for x in a["attachments"]])
        else:
            events = t.on_replay_failed(step["replay_failed"]["topic"])
        got = {"events": [as_json(e) for e in events],
               "replay": None if need is None else {"topic": need.topic,
                                                    "from_seq": need.from_seq}}
        assert got == step["expect"], f"step {i}: {step}"
