"""The terminal's parse hop (actors/terminal/parsehop.py) driven in this process, against a
real parser actor: the hop's loop turns are run here, one at a time, so what it answers
between two of them is what a term.exec arriving then would see."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.runtime import Actor
from moorage.actors.terminal.parsehop import ParseHop, ParserLink
from moorage.protocol.client import Client
from tests.test_parser_actor import start

pytestmark = pytest.mark.timeout(30)
NONCE = "N0NCE0123456789"


def test_markers_held_back_after_inert_output_are_applied_before_when_parsed_answers(
        spawn_actor: Any, client: Client, runtime_dir: Path) -> None:
    """Plain output (inert: it waits, to go as a count), then a chunk with the session's
    command-start markers (held back to go with what follows it): a `when_parsed` asked
    for then, as term.exec asks before it decides whether the session is busy, answers
    only once those markers are applied, not at once on the strength of the inert run."""
    start(spawn_actor, client)
    actor = Actor("hoptest", runtime_dir)
    link = ParserLink(actor, {})
    seen: list[Any] = []
    hop = ParseHop(link, "s1", NONCE, 0, lambda events, via: seen.extend(
        e.kind for e in events), lambda: None)
    try:
        hop.take(b"plain output of the command before\r\n")
        assert hop.inert  # waits, to go as a count
        hop.take(b"\x1b]633;E;make;%s\x07\x1b]633;C;%s\x07" % (NONCE.encode(), NONCE.encode()))
        hop.when_parsed(hop.end, lambda: seen.append("answered"))
        assert seen == []  # not at once: the markers are on their way
        deadline = time.monotonic() + 10
        while "answered" not in seen and time.monotonic() < deadline:
            actor.loop.run_once(100)
        assert seen == ["command_line", "output_start", "answered"]
        stats = client.call("parser", "parse.stats")
        assert stats["bytes_inert"] == len(b"plain output of the command before\r\n")
    finally:
        link.close()
        actor.close()
