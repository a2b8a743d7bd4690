"""The parser actor on a real actor process, real sockets and a real client; its stream table
on an injected clock; and the actor killed and replaced inside a real tree.

Nothing waits on a sleep: a test waits for a reply, a `parse.evicted` event, or a supervisor
event.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import zmq

from moorage.actors.parser.actor import Options, ParserActor, Settings, Stream, StreamTable
from moorage.actors.parser.packing import PACK_CORE
from moorage.actors.vtparse import CORE, MAX_HEADER, Parser, RecoveryMode
from moorage.actors.vtparse._scan import SCANNERS
from moorage.protocol import endpoints
from moorage.protocol.client import Client
from moorage.protocol.envelope import TAG, StreamMessage, decode_reply, encode_request, packb
from moorage.protocol.errors import MoorageError
from tests.pressure_support import told

pytestmark = pytest.mark.timeout(120)

ENTRY = "moorage.actors.parser.actor:ParserActor"
VECTORS = json.loads((Path(__file__).parent / "vectors" / "vtparse.json").read_text())["vectors"]
A = b"\x1b]633;A\x07"
B = b"\x1b]633;B\x07"


# --- helpers -----------------------------------------------------------------------------------


def start(spawn_actor: Any, client: Client, name: str = "parser", **config: Any) -> Any:
    actor = spawn_actor(ENTRY, name, **config)
    client.hello(name)  # waits until it serves
    return actor


def feed(client: Client, stream: str, offset: int, data: bytes, actor: str = "parser",
         **kw: Any) -> dict[str, Any]:
    reply = client.request(actor, "parse.feed", {"stream": stream, "offset": offset},
                           attachments=[data], **kw)
    return reply.body


def error(fn: Any, *args: Any, **kw: Any) -> MoorageError:
    with pytest.raises(MoorageError) as info:
        fn(*args, **kw)
    return info.value


def as_bytes(value: str | dict[str, str]) -> bytes:
    return bytes.fromhex(value["hex"]) if isinstance(value, dict) else value.encode("latin-1")


def jsonable(value: Any) -> Any:
    """A wire value as the vectors write it: bytes as latin-1 strings."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


def next_event(sub: Any, timeout: float = 10.0) -> dict[str, Any]:
    ev = sub.next(timeout=timeout)
    assert isinstance(ev, StreamMessage), ev
    return ev.body


@pytest.fixture
def parser(spawn_actor, client):
    return start(spawn_actor, client)


# --- the issue's vectors, through the actor ------------------------------------------------------


def run_vector(client: Client, actor: str, stream: str, vector: dict[str, Any]) -> None:
    spec = vector["parser"]
    client.call(actor, "parse.open", {"stream": stream, "nonce": spec["nonce"],
                                      "mode": spec["mode"], "tokens": spec["tokens"],
                                      "text": spec["text"]})
    events: list[dict[str, Any]] = []
    offset = 0
    reply: dict[str, Any] = {}
    for chunk in map(as_bytes, vector["chunks"]):
        reply = feed(client, stream, offset, chunk, actor)
        assert reply["offset"] == offset + len(chunk) and reply["unparsed"] == 0
        offset = reply["offset"]
        events += reply["events"]
    closed = client.call(actor, "parse.close", {"stream": stream})
    if vector.get("flush"):
        events += closed["events"]
    elif "mode_after" in vector:
        assert reply["mode"] == vector["mode_after"], vector["name"]
    got = [jsonable(e) for e in events]
    assert len(got) == len(vector["events"]), (vector["name"], got)
    for have, want in zip(got, vector["events"], strict=True):
        assert {k: have.get(k, "<missing>") for k in want} == want, (vector["name"], have)


def test_every_library_vector_fed_through_the_actor_gives_the_expected_events(spawn_actor,
                                                                             client):
    start(spawn_actor, client)
    start(spawn_actor, client, "parser16", max_buffer=16)
    assert any(v["name"] == "a marker split across chunks gives exactly one event"
               for v in VECTORS)
    for i, vector in enumerate(VECTORS):
        actor = "parser16" if vector["parser"].get("max_buffer") == 16 else "parser"
        run_vector(client, actor, f"v{i}", vector)


def test_issue_vectors_nonce_and_cwd_come_back_with_their_offsets(parser, client):
    client.call("parser", "parse.open", {"stream": "s", "nonce": "N0NCE"})
    data = (b"\x1b]633;E;echo\\x20a\\x3bb;N0NCE\x07" + b"\x1b]633;E;echo a;b\x07"
            + b"\x1b]633;P;Cwd=/tmp/a\\x3bb\x07" + b"\x1b]7;file://h/home/u/my%20dir\x1b\\"
            + b"\x1b]7;/x\x07" + b"\x1b]1337;CurrentDir=/srv\x07" + b"\x1b]633;D;130\x07")
    reply = feed(client, "s", 0, data)
    ev = reply["events"]
    assert kinds(ev) == ["command_line", "command_line", "cwd", "cwd", "rejected", "cwd",
                         "command_finished"]
    assert (ev[0]["command"], ev[0]["trusted"]) == ("echo a;b", True)
    assert (ev[1]["command"], ev[1]["nonce"], ev[1]["trusted"]) == ("echo a", "b", False)
    assert [ev[i]["path"] for i in (2, 3, 5)] == ["/tmp/a;b", "/home/u/my dir", "/srv"]
    assert ev[6]["exit_code"] == 130 and ev[6]["end"] == len(data) == reply["offset"]
    assert reply["mode"] == "skip_invalid"


# --- offsets: split, resent, overlapping, gaps, unknown streams ----------------------------------


def sample_stream(rng: random.Random) -> bytes:
    parts = [as_bytes(c) for v in VECTORS for c in v["chunks"]]
    parts += [b"\x1b[1;31merror\x1b[0m: x.c:%d\r\n" % i for i in range(50)]
    rng.shuffle(parts)
    return b"".join(parts)


def test_a_stream_fed_in_pieces_across_calls_gives_the_same_events_as_fed_whole(parser,
                                                                                client):
    rng = random.Random(3)
    data = sample_stream(rng)
    for name in ("whole", "cut"):
        client.call("parser", "parse.open", {"stream": name, "nonce": "N0NCE", "tokens": True})
    whole = feed(client, "whole", 0, data)
    cuts = sorted(rng.sample(range(1, len(data)), 300))
    pieces: list[dict[str, Any]] = []
    offset = 0
    for end in [*cuts, len(data)]:
        reply = feed(client, "cut", offset, data[offset:end])
        assert reply["offset"] == end
        pieces += reply["events"]
        offset = end
    assert whole["offset"] == len(data)
    assert len(whole["events"]) > 200
    assert pieces == whole["events"]


def test_a_feed_larger_than_a_slice_gives_the_library_s_events_for_the_whole(parser, client):
    data = sample_stream(random.Random(4)) * 120  # a few hundred KiB: several slices
    assert len(data) > 4 * 64 * 1024
    client.call("parser", "parse.open", {"stream": "big", "nonce": "N0NCE"})
    events, offset = [], 0
    while offset < len(data):  # (a feed the time budget cut short is sent on from its offset)
        reply = feed(client, "big", offset, data[offset:])
        assert reply["offset"] + reply["unparsed"] == len(data) and reply["offset"] > offset
        events += reply["events"]
        offset = reply["offset"]
    want = [e.to_wire() for e in Parser("N0NCE").feed(data)]
    assert len(want) > 1000 and events == want


def test_escape_dense_bytes_are_answered_in_parts_by_time_and_others_are_served_between(
        parser, client):
    """`ESC ]` over and over: the library's Python machine takes a few µs a byte, so 1 MiB
    in one go held the loop for seconds (its heartbeat missed, the actor killed as hung and
    every stream lost). A feed now answers what its time budget covered, far less than all
    of it on any machine; the caller sends the rest."""
    data = b"\x1b]" * (512 * 1024)
    client.call("parser", "parse.open", {"stream": "osc", "nonce": "N0NCE"})
    offset, feeds = 0, 0
    while offset < len(data):
        reply = feed(client, "osc", offset, data[offset:])
        assert reply["offset"] > offset
        offset, feeds = reply["offset"], feeds + 1
        assert client.call("parser", "sys.ping")  # answered between the parts
    assert feeds > 1


def test_a_new_feed_of_read_bytes_skips_them_and_an_overlapping_one_parses_its_new_bytes(
        parser, client):
    """(A resend of the same call is another matter: the RawCaller tests below.)"""
    first = feed(client, "s", 0, A)
    assert kinds(first["events"]) == ["prompt_start"] and first["offset"] == 8
    again = feed(client, "s", 0, A)  # a new call
    assert again["events"] == [] and again["offset"] == 8 and again["skipped"] == 8
    overlap = feed(client, "s", 0, A + B)
    assert kinds(overlap["events"]) == ["prompt_end"]
    assert overlap["events"][0]["start"] == 8 and overlap["skipped"] == 8
    assert overlap["offset"] == 16
    stats = client.call("parser", "parse.stats")
    assert stats["duplicate_bytes"] == 16 and stats["bytes_parsed"] == 16
    assert stats["feeds_resent"] == 0


class RawCaller:
    """Requests as frames on a real DEALER, so that a test can send one twice: what a
    client's resend of a call whose reply it lost is (the identical frames)."""

    def __init__(self, runtime_dir: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoints.rpc(runtime_dir, "parser"))

    def reply(self, id: int, op: str, args: dict[str, Any], attachments: list[bytes] = ()
              ) -> Any:
        self.sock.send_multipart(encode_request(id, "sid-raw", op, args,
                                                attachments=attachments))
        assert self.sock.poll(10_000), f"no reply to {op}"
        return decode_reply(self.sock.recv_multipart())

    def call(self, id: int, op: str, args: dict[str, Any], attachments: list[bytes] = (),
             times: int = 1) -> list[Any]:
        answers = []
        for _ in range(times):
            reply = self.reply(id, op, args, attachments)
            assert reply.ok, reply.body
            answers.append(reply.body)
        return answers

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def raw(parser, runtime_dir):
    r = RawCaller(runtime_dir)
    yield r
    r.close()


def test_a_feed_resent_with_its_request_id_gets_its_answer_again(raw):
    first, again = raw.call(41, "parse.feed", {"stream": "s", "offset": 0}, [A + B], times=2)
    assert kinds(first["events"]) == ["prompt_start", "prompt_end"] and again == first
    [new] = raw.call(42, "parse.feed", {"stream": "s", "offset": 0}, [A + B])  # a new call
    assert new["events"] == [] and new["skipped"] == 16
    [stats] = raw.call(43, "parse.stats", {})
    assert stats["feeds_resent"] == 1


def test_a_resent_feed_whose_answer_was_too_big_to_keep_is_outcome_unknown_not_skipped(raw):
    raw.call(1, "parse.open", {"stream": "t", "text": True})
    text = b"word " * 40_000  # 200 KB of text events: an answer over what is kept
    [first] = raw.call(2, "parse.feed", {"stream": "t", "offset": 0}, [text])
    assert first["events"] and first["offset"] > 0
    again = raw.reply(2, "parse.feed", {"stream": "t", "offset": 0}, [text])
    assert not again.ok and again.body["name"] == "outcome_unknown"
    assert again.body["detail"] == {"stream": "t", "offset": first["offset"]}


def test_a_close_resent_with_its_request_id_gets_its_flush_events_again(raw):
    raw.call(1, "parse.open", {"stream": "cut", "text": True})
    raw.call(2, "parse.feed", {"stream": "cut", "offset": 0}, [b"ab\xe2\x82"])  # a cut char
    closed, again = raw.call(3, "parse.close", {"stream": "cut"}, times=2)
    assert closed["closed"] and [e["text"] for e in closed["events"]] == ["\ufffd"]
    assert again == closed
    [other] = raw.call(4, "parse.close", {"stream": "cut"})  # another close: not open
    assert other == {"stream": "cut", "closed": False, "offset": None, "events": []}


def test_events_from_leaves_out_the_events_before_it_and_the_stream_parses_them_still(
        parser, client):
    data = sample_stream(random.Random(5))
    client.call("parser", "parse.open", {"stream": "all", "nonce": "N0NCE"})
    client.call("parser", "parse.open", {"stream": "late", "nonce": "N0NCE"})
    want = feed(client, "all", 0, data)["events"]
    cut = want[len(want) // 2]["start"]
    reply = client.call("parser", "parse.feed", {"stream": "late", "offset": 0,
                                                 "events_from": cut}, attachments=[data])
    assert reply["events"] == [e for e in want if e["start"] >= cut]
    assert 0 < len(reply["events"]) < len(want) and reply["offset"] == len(data)
    # the stream was in the same state at the end either way
    assert feed(client, "late", len(data), A)["events"] == feed(client, "all", len(data),
                                                                A)["events"]


def test_an_inert_count_moves_a_markers_stream_unseen_and_is_refused_where_it_cannot(
        parser, client):
    """`inert`: bytes with no ESC, not sent; the stream goes on as if it had read them."""
    client.call("parser", "parse.open", {"stream": "s", "nonce": "N0NCE"})
    client.call("parser", "parse.open", {"stream": "fed", "nonce": "N0NCE"})
    plain = b"x" * 5000
    feed(client, "fed", 0, A + plain)
    want = feed(client, "fed", 8 + len(plain), B)["events"]
    feed(client, "s", 0, A)
    skip = client.call("parser", "parse.feed", {"stream": "s", "offset": 8, "create": False,
                                                "inert": len(plain)})
    assert (skip["events"], skip["offset"], skip["skipped"], skip["buffered"]) == (
        [], 8 + len(plain), 0, 0)
    again = client.call("parser", "parse.feed", {"stream": "s", "offset": 8, "inert": 100})
    assert (again["offset"], again["skipped"]) == (8 + len(plain), 100)  # behind: a no-op
    assert feed(client, "s", 8 + len(plain), B)["events"] == want  # the same offsets
    stats = client.call("parser", "parse.stats")
    assert stats["bytes_inert"] == len(plain)
    # a stream holding a cut sequence, or one that reports text: the bytes must come
    cut = b"\x1b]633;D;0"
    at = 16 + len(plain) + len(cut)
    assert feed(client, "s", 16 + len(plain), cut)["buffered"] == len(cut)
    err = error(client.call, "parser", "parse.feed", {"stream": "s", "offset": at, "inert": 3})
    assert err.name == "bad_args" and err.error.detail == {"expected": at}
    client.call("parser", "parse.open", {"stream": "t", "text": True})
    assert error(client.call, "parser", "parse.feed",
                 {"stream": "t", "offset": 0, "inert": 3}).name == "bad_args"
    [t] = [x for x in client.call("parser", "parse.list")["streams"] if x["stream"] == "t"]
    assert t["offset"] == 0
    for bad in ({"inert": 3, "data": b"abc"}, {"inert": -1}):
        assert error(client.call, "parser", "parse.feed",
                     {"stream": "s", "offset": 0, **bad}).name == "bad_args"


def test_a_feed_ahead_of_the_stream_is_a_stream_gap_naming_the_expected_offset(parser, client):
    feed(client, "s", 0, A)
    err = error(feed, client, "s", 9, B)
    assert (err.name, err.code, err.error.category) == ("stream_gap", 603, "parser")
    assert err.error.detail == {"expected": 8}
    assert kinds(feed(client, "s", 8, B)["events"]) == ["prompt_end"]


def test_a_feed_to_an_unknown_stream_opens_it_at_offset_zero_only(parser, client):
    err = error(feed, client, "new", 5, A)
    assert (err.name, err.code) == ("stream_not_found", 601)
    assert client.call("parser", "parse.list")["streams"] == []
    assert kinds(feed(client, "new", 0, A)["events"]) == ["prompt_start"]
    [state] = client.call("parser", "parse.list")["streams"]
    assert (state["stream"], state["offset"], state["mode"]) == ("new", 8, "skip_invalid")


def test_a_feed_with_create_false_never_opens_a_default_stream(parser, client):
    err = error(client.request, "parser", "parse.feed",
                {"stream": "mine", "offset": 0, "create": False}, attachments=[A])
    assert err.name == "stream_not_found"
    assert client.call("parser", "parse.list")["streams"] == []


def test_sys_info_says_which_scan_core_the_actor_runs(parser, client):
    info = client.call("parser", "sys.info")
    assert info["core"] == CORE and info["core"] in SCANNERS
    assert info["pack_core"] == PACK_CORE and info["pack_core"] in ("compiled", "python")


def test_a_feed_says_how_many_bytes_of_a_cut_sequence_the_stream_holds(parser, client):
    client.call("parser", "parse.open", {"stream": "s", "nonce": "N0NCE"})
    first = feed(client, "s", 0, b"text" + b"\x1b]633;D;0;N0")
    assert (first["events"], first["offset"], first["buffered"]) == ([], 16, 12)
    # a new parser started that many bytes earlier (at the ESC) finds the marker whole
    local = Parser(nonce="N0NCE", offset=16 - first["buffered"])
    [done] = local.feed(b"\x1b]633;D;0;N0" + b"NCE\x07")
    second = feed(client, "s", 16, b"NCE\x07")
    [marker] = second["events"]
    assert (marker["kind"], marker["start"], marker["exit_code"], marker["trusted"]) == \
        ("command_finished", done.start, 0, True)
    assert second["buffered"] == 0


def test_streams_belong_to_the_client_session_that_opened_them(parser, client, runtime_dir):
    feed(client, "s", 0, A)
    with Client(runtime_dir, sid="another-session", timeout=10.0) as other:
        assert error(feed, other, "s", 8, B).name == "stream_not_found"
        assert other.call("parser", "parse.list")["streams"] == []
        assert feed(other, "s", 0, B)["events"][0]["kind"] == "prompt_end"
    assert kinds(feed(client, "s", 8, B)["events"]) == ["prompt_end"]
    assert client.call("parser", "parse.stats")["sessions"] == 2


def test_reopening_with_the_same_options_is_harmless_and_with_others_is_refused(parser,
                                                                              client):
    args = {"stream": "s", "nonce": "N0NCE", "tokens": True, "offset": 1000}
    opened = client.call("parser", "parse.open", args)
    assert opened["opened"] and opened["offset"] == 1000
    assert opened["options"] == {"nonce": True, "policy": "skip_invalid", "tokens": True,
                                 "text": False}
    assert feed(client, "s", 1000, A)["events"][0]["start"] == 1000
    again = client.call("parser", "parse.open", args)
    assert not again["opened"] and again["offset"] == 1008
    err = error(client.call, "parser", "parse.open", {**args, "tokens": False})
    assert err.name == "bad_args" and err.error.detail["options"]["tokens"] is True


def test_reset_drops_the_held_sequence_and_keeps_the_offset(parser, client):
    held = feed(client, "s", 0, b"\x1b]633;")
    assert held["events"] == [] and held["mode"] == "buffer_partial"
    reset = client.call("parser", "parse.reset", {"stream": "s"})
    assert reset == {"stream": "s", "offset": 6, "mode": "skip_invalid", "dropped": 6}
    assert feed(client, "s", 6, b"A\x07")["events"] == []  # the start was dropped
    assert error(client.call, "parser", "parse.reset", {"stream": "x"}).name == \
        "stream_not_found"


def test_close_flushes_what_the_stream_held_and_a_second_close_says_so(parser, client):
    client.call("parser", "parse.open", {"stream": "s", "text": True})
    assert feed(client, "s", 0, b"ok \xe2\x82")["events"][0]["text"] == "ok "
    closed = client.call("parser", "parse.close", {"stream": "s"})
    assert closed["closed"] and closed["offset"] == 5
    assert [e["text"] for e in closed["events"]] == ["\ufffd"]
    assert client.call("parser", "parse.close", {"stream": "s"})["closed"] is False
    assert error(feed, client, "s", 5, A).name == "stream_not_found"


# --- bounds ------------------------------------------------------------------------------------


def test_opening_past_max_streams_closes_the_least_recently_used_with_an_event(spawn_actor,
                                                                              client):
    start(spawn_actor, client, max_streams=3)
    sub = client.subscribe("parser", ["parse.evicted"], from_seq=1)
    for name in "abc":
        feed(client, name, 0, A)
    feed(client, "a", 8, B)  # a is now the most recently used; b the least
    client.call("parser", "parse.open", {"stream": "d"})
    ev = next_event(sub)
    assert ev["sid"] == client.sid and ev["stream"] == "b" and ev["reason"] == "lru"
    assert ev["offset"] == 8
    assert [s["stream"] for s in client.call("parser", "parse.list")["streams"]] == \
        ["c", "a", "d"]
    assert error(feed, client, "b", 8, B).name == "stream_not_found"
    assert client.call("parser", "parse.stats")["evictions"] == 1


def test_a_session_over_its_own_cap_evicts_its_own_streams_not_another_sessions(spawn_actor,
                                                                              client,
                                                                              runtime_dir):
    start(spawn_actor, client, max_streams=10, max_streams_per_session=2)
    sub = client.subscribe("parser", ["parse.evicted"], from_seq=1)
    feed(client, "mine", 0, A)
    with Client(runtime_dir, sid="greedy", timeout=10.0) as greedy:
        for name in ("g1", "g2", "g3"):
            feed(greedy, name, 0, A)
        ev = next_event(sub)
        assert (ev["sid"], ev["stream"], ev["reason"]) == ("greedy", "g1", "lru")
    assert kinds(feed(client, "mine", 8, B)["events"]) == ["prompt_end"]


def test_a_stream_left_unused_is_reaped_and_announced(spawn_actor, client):
    start(spawn_actor, client, idle_timeout_s=0.2)
    sub = client.subscribe("parser", ["parse.evicted"], from_seq=1)
    feed(client, "forgotten", 0, A)
    ev = next_event(sub)
    assert (ev["stream"], ev["reason"], ev["offset"]) == ("forgotten", "idle", 8)
    assert ev["idle_s"] >= 0.2
    assert client.call("parser", "parse.list")["streams"] == []
    assert client.call("parser", "parse.stats")["reaped"] == 1
    assert error(feed, client, "forgotten", 8, B).name == "stream_not_found"


def test_a_feed_over_the_cap_is_message_too_large_and_leaves_the_stream_as_it_was(spawn_actor,
                                                                                 client):
    start(spawn_actor, client, max_feed_bytes=1024)
    feed(client, "s", 0, A)
    err = error(feed, client, "s", 8, b"x" * 1025)
    assert err.name == "message_too_large" and err.error.detail == {"limit": 1024, "size": 1025}
    assert feed(client, "s", 8, b"x" * 1024)["offset"] == 8 + 1024


def test_a_stream_never_holds_more_than_max_buffer(spawn_actor, client):
    start(spawn_actor, client, max_buffer=64)
    reply = feed(client, "s", 0, b"\x1b]633;P;Cwd=" + b"x" * 1000)
    assert kinds(reply["events"]) == ["overflow"] and reply["events"][0]["limit"] == 64
    feed(client, "t", 0, b"\x1b]633;P;Cwd=" + b"x" * 40)
    buffered = {s["stream"]: s["buffered"] for s in client.call("parser", "parse.list")["streams"]}
    # s is discarding the rest of a dropped marker (nothing to read again); t holds one whole
    assert buffered == {"s": 0, "t": 12 + 40}
    # the rest of the dropped one is not text, and the marker after its end is found
    reply = feed(client, "s", 1012, b"x" * 500 + b"\x07\x1b]633;A\x07")
    assert kinds(reply["events"]) == ["prompt_start"]


def test_buffered_counts_a_held_marker_from_its_esc_so_a_new_parser_finds_it(parser, client):
    """The terminal's parse hop starts its local parser `buffered` bytes before the stream's
    offset; before, `buffered` left out the `ESC ]` of a marker the byte machine held (one
    longer than the 64 bytes kept raw), and only the hop's slack hid the miss."""
    client.call("parser", "parse.open", {"stream": "s", "nonce": "N0NCE"})
    marker = b"\x1b]633;E;" + b"make\\x20" * 12 + b";N0NCE\x07"
    first = feed(client, "s", 0, b"$ " + marker[:-3])
    held = first["buffered"]
    assert (first["events"], held) == ([], len(marker) - 3)
    local = Parser(nonce="N0NCE", offset=first["offset"] - held)
    [found] = local.feed(marker)
    [reply] = feed(client, "s", first["offset"], marker[-3:])["events"]
    assert (reply["kind"], reply["start"], reply["end"]) == (found.kind, found.start, found.end)


def test_a_feed_with_more_events_than_its_budget_is_answered_in_parts(spawn_actor, client):
    """A token stream (a byte can be an event) is parsed in slices no bigger than the events
    left in the budget, so each answer holds exactly the budget's events."""
    start(spawn_actor, client, max_events_per_feed=1000)
    client.call("parser", "parse.open", {"stream": "s", "tokens": True})
    data = b"\x07" * 65536
    offset, sizes = 0, []
    while offset < len(data):
        reply = feed(client, "s", 0, data)  # resent whole: the parsed part is skipped
        assert reply["skipped"] == offset
        assert reply["unparsed"] == len(data) - reply["offset"]
        sizes.append(len(reply["events"]))
        offset = reply["offset"]
    assert sizes == [1000] * 65 + [536]


# --- failures, pressure, fallback --------------------------------------------------------------

TRIGGER = b"\x1b]666;raise\x07"


class _BrittleParser(Parser):
    """A parser with a bug: it raises on TRIGGER."""

    def feed(self, data: bytes) -> list:
        if TRIGGER in data:
            raise RuntimeError("injected parser bug")
        return super().feed(data)


class BrittleParserActor(ParserActor):
    def make_parser(self, options: Options, offset: int) -> Parser:
        return _BrittleParser(options.nonce, options.tokens, options.policy,
                              text=options.text, max_buffer=self.settings.max_buffer,
                              offset=offset)


def test_a_parser_that_raises_answers_parse_error_and_the_stream_is_reset(spawn_actor, client):
    spawn_actor("tests.test_parser_actor:BrittleParserActor", "parser")
    client.hello("parser")
    assert feed(client, "s", 0, b"\x1b]633;")["mode"] == "buffer_partial"
    bad = b"A\x07" + TRIGGER
    err = error(feed, client, "s", 6, bad)
    end = 6 + len(bad)
    assert (err.name, err.code, err.error.category) == ("parse_error", 600, "parser")
    assert err.error.detail == {"stream": "s", "offset": end, "dropped": [6, end]}
    [state] = client.call("parser", "parse.list")["streams"]
    assert (state["offset"], state["buffered"]) == (end, 0)
    reply = feed(client, "s", end, B)
    assert reply["events"][0]["start"] == end and reply["mode"] == "skip_invalid"
    assert client.call("parser", "parse.stats")["parse_errors"] == 1


def test_under_high_pressure_idle_streams_are_closed_and_announced(spawn_actor, client):
    start(spawn_actor, client, pressure_idle_s=0.0)
    sub = client.subscribe("parser", ["parse.evicted"], from_seq=1)
    feed(client, "a", 0, A)
    feed(client, "b", 0, A)
    calm = client.call("parser", "sys.pressure", told("moderate", 3))
    assert "streams_closed" not in calm["done"]
    high = client.call("parser", "sys.pressure", told("high", 2))
    assert high["done"]["streams_closed"] == 2
    assert {next_event(sub)["reason"], next_event(sub)["reason"]} == {"pressure"}
    assert client.call("parser", "parse.stats")["pressure_closed"] == 2


def test_default_pressure_reaction_spares_streams_used_in_the_last_ten_seconds(parser, client):
    feed(client, "a", 0, A)
    done = client.call("parser", "sys.pressure", told("critical", 0))["done"]
    assert done["streams_closed"] == 0
    assert len(client.call("parser", "parse.list")["streams"]) == 1


def test_the_raw_passthrough_fallback_parses_nothing_and_every_reply_says_so(spawn_actor,
                                                                           client):
    start(spawn_actor, client, fallback="raw_passthrough")
    opened = client.call("parser", "parse.open", {"stream": "s", "mode": "skip_invalid"})
    assert opened["mode"] == "raw_passthrough"
    assert opened["options"]["policy"] == "raw_passthrough"
    reply = feed(client, "s", 0, A + B)
    assert reply == {"events": [], "offset": 16, "mode": "raw_passthrough", "skipped": 0,
                     "unparsed": 0, "buffered": 0}
    assert feed(client, "auto", 0, A)["mode"] == "raw_passthrough"
    assert client.call("parser", "sys.info")["fallback"] == "raw_passthrough"


BAD_REQUESTS: list[tuple[str, Any, list[bytes], str]] = [
    ("parse.feed", {"stream": "s", "offset": 0}, [], "bad_args"),  # no bytes
    ("parse.feed", {"stream": "s", "offset": 0, "data": b"x"}, [b"y"], "bad_args"),  # both
    ("parse.feed", {"stream": "s", "offset": 0}, [b"x", b"y"], "bad_args"),
    ("parse.feed", {"stream": "s", "offset": -1}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": "s", "offset": 2**60}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": "s", "offset": "0"}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": "s", "offset": True}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": 7, "offset": 0}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": "", "offset": 0}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": "s" * 257, "offset": 0}, [b"x"], "bad_args"),
    ("parse.feed", {"stream": "s", "offset": 0, "data": "text"}, [], "bad_args"),
    ("parse.feed", {"stream": "s", "offset": 0, "extra": 1}, [b"x"], "bad_args"),
    ("parse.feed", ["s", 0], [b"x"], "bad_args"),
    ("parse.open", {"stream": "s", "mode": "fast"}, [], "bad_args"),
    ("parse.open", {"stream": "s", "nonce": ""}, [], "bad_args"),
    ("parse.open", {"stream": "s", "nonce": "a;b"}, [], "bad_args"),
    ("parse.open", {"stream": "s", "tokens": 1}, [], "bad_args"),
    ("parse.open", {"stream": "s", "offset": -5}, [], "bad_args"),
    ("parse.open", {}, [], "bad_args"),
    ("parse.close", {"stream": None}, [], "bad_args"),
    ("parse.reset", {"stream": "nope"}, [], "stream_not_found"),
    ("parse.list", {"sid": "someone-else"}, [], "bad_args"),
    ("parse.nothing", {}, [], "unknown_op"),
]


@pytest.mark.parametrize(("op", "args", "atts", "name"), BAD_REQUESTS,
                         ids=[f"{i}-{r[0]}" for i, r in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_classified_errors(parser, client, op, args, atts, name):
    err = error(client.request, "parser", op, args, attachments=atts)
    assert err.name == name, err
    assert client.call("parser", "parse.stats")["streams"] == 0


def test_a_bad_config_fails_the_start() -> None:
    for bad in ({"max_streams": 0}, {"max_buffer": 8}, {"idle_timeout_s": 0},
                {"fallback": "local"}, {"max_feed_bytes": 2**40}):
        with pytest.raises(ValueError):
            Settings.from_config(bad)
    assert Settings.from_config({}) == Settings()


# --- garbage ---------------------------------------------------------------------------------

ALPHABETS = (
    bytes(range(256)),
    b"\x1b\x07\x18\x1a\\[];PAB0123456789:?<=>$ -/\x9c\x90\x9d" + b"633;1337;7;133;",
    b"\x1b]633;\x07\x1b\\abcdefgh\r\n\xe2\x82\xac\xff",
)
MODES_BAD = ["", "SKIP_INVALID", "raw", "\x00", "reset_on_error "]
FUZZ_OPTIONS = (
    {"nonce": "N0NCE"},
    {"tokens": True},
    {"text": True, "mode": "reset_on_error"},
    {"tokens": True, "text": True, "nonce": "k"},
)


def garbage(rng: random.Random) -> bytes:
    alphabet = rng.choice(ALPHABETS)
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))


def test_survives_garbage_streams_and_malformed_requests_and_still_answers(spawn_actor, client,
                                                                          runtime_dir):
    actor = start(spawn_actor, client, max_buffer=256)
    rng = random.Random(11)
    local: dict[str, Parser] = {}
    calls: list[tuple[str, Any]] = []
    offsets: dict[str, int] = {}
    for i, opts in enumerate(FUZZ_OPTIONS):
        name = f"f{i}"
        client.call("parser", "parse.open", {"stream": name, **opts})
        local[name] = Parser(opts.get("nonce"), opts.get("tokens", False),
                             RecoveryMode(opts.get("mode", "skip_invalid")),
                             text=opts.get("text", False), max_buffer=256)
        offsets[name] = 0
    want: list[list[dict[str, Any]]] = []
    for _ in range(3000):
        name = rng.choice(sorted(local))
        data = garbage(rng)
        calls.append(("parse.feed", {"stream": name, "offset": offsets[name], "data": data}))
        want.append([e.to_wire() for e in local[name].feed(data)])
        offsets[name] += len(data)
    replies = client.pipeline("parser", calls, window=64)
    for reply, expected in zip(replies, want, strict=True):
        assert not isinstance(reply, MoorageError), reply
        assert reply["events"] == expected
    for name, parser_ in local.items():
        [state] = [s for s in client.call("parser", "parse.list")["streams"]
                   if s["stream"] == name]
        assert state["offset"] == offsets[name]
        assert state["buffered"] == parser_.buffered_bytes() <= 256 + MAX_HEADER

    # malformed requests through the client: each gets a classified error
    bad: list[tuple[str, Any]] = []
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:
            bad.append(("parse.feed", {"stream": rng.choice(["f0", "zz"]),
                                       "offset": rng.randint(10**9, 10**12), "data": b"x"}))
        elif kind == 1:
            bad.append((rng.choice(["parse.open", "parse.feed", "parse.reset"]),
                        {rng.choice(["stream", "offset", "mode", "x"]):
                         rng.choice([None, 1.5, [1], {"a": 1}, b"\xff", -1, "s" * 300])}))
        elif kind == 2:
            bad.append(("parse.open", {"stream": "f0", "mode": rng.choice(MODES_BAD)}))
        else:
            bad.append((rng.choice(["parse", "parse.", "parse.feed2", "p" * 60]), {}))
    results = client.pipeline("parser", bad, window=64)
    classified = {"bad_args", "unknown_op", "stream_gap", "stream_not_found"}
    for (op, args), result in zip(bad, results, strict=True):
        assert isinstance(result, MoorageError) and result.name in classified, (op, args, result)

    # and frames the client would never send, straight at the socket
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(endpoints.rpc(runtime_dir, "parser"))
    try:
        for i in range(200):
            if i % 2:
                raw.send_multipart([rng.randbytes(rng.randint(0, 64)) for _ in range(3)])
            else:
                raw.send_multipart([TAG, packb({"id": i + 1, "sid": "raw", "op": "parse.feed"}),
                                    rng.randbytes(rng.randint(1, 40)), b"\x1b]633;A\x07"])
        for _ in range(200):
            assert raw.poll(10_000), "a frame got no reply"
            assert not decode_reply(raw.recv_multipart()).ok
    finally:
        raw.close(0)
        ctx.term()

    # still the same process, still answering correctly
    assert client.call("parser", "sys.info")["pid"] == actor.pid
    run_vector(client, "parser", "after", VECTORS[0])
    final = feed(client, "f0", offsets["f0"], b"\x1b]633;D;0;N0NCE\x07")
    assert final["events"][-1]["kind"] == "command_finished"
    assert final["events"][-1]["trusted"] is True



# --- the stream table, on an injected clock ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stream(sid: str, name: str) -> Stream:
    return Stream(sid, name, Options(None, RecoveryMode.SKIP_INVALID, False, False), Parser(),
                  0.0)


def test_the_table_keeps_least_recently_used_order_in_all_and_per_session() -> None:
    clock = Clock()
    table = StreamTable(3, 2, clock)
    for sid, name in (("x", "a"), ("y", "b"), ("x", "c")):
        assert table.add(stream(sid, name)) == []
        clock.now += 1
    table.touch(table.get("x", "a"))
    # x is at its cap of 2: its least recently used stream (c) goes, not y's b
    assert [(s.sid, s.name) for s in table.add(stream("x", "d"))] == [("x", "c")]
    assert [(s.sid, s.name) for s in table] == [("y", "b"), ("x", "a"), ("x", "d")]
    # the table is full: the least recently used of all (y's b) goes
    assert [(s.sid, s.name) for s in table.add(stream("z", "e"))] == [("y", "b")]
    assert table.sessions == 2 and len(table) == 3


def test_the_table_finds_unused_streams_from_the_front_only() -> None:
    clock = Clock()
    table = StreamTable(10, 10, clock)
    for name in "abc":
        table.add(stream("x", name))
        clock.now += 10
    table.touch(table.get("x", "a"))
    gone = table.unused_since(clock.now - 15)
    assert [s.name for s in gone] == ["b"]
    assert [s.name for s in table.session("x")] == ["c", "a"]


# --- in the tree -------------------------------------------------------------------------------

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }

[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
restart = "permanent"

[[children]]
id = "parser"
start = "moorage.actors.parser.actor:ParserActor"
restart = "permanent"
shutdown_ms = 2000
fallbacks = ["raw_passthrough"]

[actor.parser]
max_streams = 256
max_streams_per_session = 64
max_buffer = 65536
max_feed_bytes = 4194304
max_events_per_feed = 20000
idle_timeout_s = 300
pressure_idle_s = 10
"""


def test_in_a_tree_a_killed_parser_is_replaced_and_a_reopened_stream_goes_on(make_tree):
    tree = make_tree(TREE).start()
    client = tree.client
    assert kinds(feed(client, "t", 0, A)["events"]) == ["prompt_start"]
    old = tree.child("parser")["pid"]
    os.kill(old, signal.SIGKILL)
    ev = tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "parser")
    assert ev["pid"] != old
    # the streams died with the process: the terminal reopens at its own offset
    assert error(feed, client, "t", 8, B).name == "stream_not_found"
    opened = client.call("parser", "parse.open", {"stream": "t", "offset": 8})
    assert opened["opened"] and opened["offset"] == 8
    reply = feed(client, "t", 8, B)
    assert kinds(reply["events"]) == ["prompt_end"] and reply["events"][0]["start"] == 8
    assert tree.child("parser")["restarts"] == 1


class ParserThatFailsUntilItsFallback(ParserActor):
    """Dies at every start until the supervisor engages a fallback."""

    def on_start(self) -> None:
        if self.settings.fallback is None:
            raise RuntimeError("injected start failure")
        super().on_start()


FALLBACK_TREE = """
[supervisor]
intensity = 1
period_s = 30
backoff = { initial_ms = 10, factor = 1.0, max_ms = 10 }

[[children]]
id = "parser"
start = "tests.test_parser_actor:ParserThatFailsUntilItsFallback"
restart = "permanent"
fallbacks = ["raw_passthrough"]
"""


def test_in_a_tree_the_supervisors_fallback_turns_parsing_into_raw_passthrough(make_tree):
    tree = make_tree(FALLBACK_TREE).start(wait=False)
    ev = tree.wait_event(lambda e: e["event"] == "fallback" and e["child"] == "parser")
    assert ev["fallback"] == "raw_passthrough"
    tree.wait_all_running()
    reply = feed(tree.client, "t", 0, A)
    assert reply["events"] == [] and reply["mode"] == "raw_passthrough"
    assert tree.child("parser")["fallback"] == "raw_passthrough"


def test_a_feed_that_would_take_a_stream_past_2_to_the_53_is_refused(parser, client):
    """Offsets stay within the protocol's integers: a stream opened near 2^53 - 1 takes
    feeds up to it, and a feed past it is `bad_args`, the stream left where it was (before, it
    went past, and its answers carried offsets no client may send back)."""
    top = (1 << 53) - 1
    client.call("parser", "parse.open", {"stream": "edge", "offset": top - 4})
    assert feed(client, "edge", top - 4, b"abcd")["offset"] == top
    err = error(feed, client, "edge", top, b"e")
    assert err.name == "bad_args" and "2^53" in str(err), err
    err = error(client.call, "parser", "parse.feed",
                {"stream": "edge", "offset": top, "inert": 1})
    assert err.name == "bad_args", err
    streams = client.call("parser", "parse.list")["streams"]
    assert [s["offset"] for s in streams if s["stream"] == "edge"] == [top]
