"""`moorage sub`'s line for each kind of stream event that is not a message: a gap the
subscription could not repair is said, never skipped (in --json, and beside --raw's bytes on
stderr)."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from moorage.protocol.client import BytesLost, Loss, Reset
from moorage.supervisor.cli.calls import emit_stream

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(("ev", "line", "text"), [
    (Loss("t", 2, 5, "e1"), {"lost": [2, 5], "topic": "t"}, "LOSS: messages 2-5 of t"),
    (Reset("t", "e1", "e2"), {"reset": "e2"}, "RESET: the publisher restarted (epoch e2)"),
    (BytesLost("term.out.s1", 3, 10), {"lost_bytes": [3, 10], "topic": "term.out.s1"},
     "LOSS: bytes 3-10 of term.out.s1 are gone"),
])
def test_each_event_that_is_not_a_message_is_a_line(capsys, ev, line, text):
    emit_stream(ev, Namespace(raw=False, json=True))
    assert json.loads(capsys.readouterr().out) == line
    emit_stream(ev, Namespace(raw=True, json=False))  # (stdout carries the bytes alone)
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith(text)
    emit_stream(ev, Namespace(raw=False, json=False))
    assert capsys.readouterr().out.startswith(text)
