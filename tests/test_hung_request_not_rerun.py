"""A request that hangs an actor's loop costs one kill, not one per resend.

The supervisor kills a child whose loop stopped beating; a client resends an idempotent call
that was in flight to the successor. Without the dying actor's last words
(actors/runtime/last_words.py) the successor runs the same request, hangs and is killed in
turn, for as long as the call's deadline lasts. Here the successor refuses the resend
`internal` (not retryable, so the client gives up at once), and serves everything else.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import zmq

from moorage.actors.runtime import last_words
from moorage.actors.runtime.loop import Loop
from moorage.protocol import endpoints
from moorage.protocol.envelope import Reply, decode_reply, encode_request
from moorage.protocol.errors import MoorageError
from tests.conftest import Tree

pytestmark = pytest.mark.timeout(120)

SPINNER = """
[supervisor]
heartbeat = { interval_ms = 50, misses = 2 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[[children]]
id = "spinner"
start = "tests.fakes:FakeActor"
"""


def test_a_resend_of_the_request_that_hung_the_actor_is_refused_after_one_kill(make_tree):
    tree: Tree = make_tree(SPINNER).start()
    old = tree.child("spinner")["pid"]
    # A minute of spinning on the loop, idempotent: the client resends it on the drop.
    with pytest.raises(MoorageError) as err:
        tree.call("spinner", "fake.spin", {"ms": 60_000}, timeout=15)
    # The successor serves other calls: so it was restarted, and only once.
    new = tree.call("spinner", "fake.spin", {"ms": 1})["pid"]
    assert new != old
    child = tree.child("spinner")
    assert child["restarts"] == 1, f"{child['restarts']} kills for one request ({err.value})"
    assert child["last_exit"] == "killed by signal 9 (missed heartbeats)"
    error = err.value.error
    assert (error.name, error.retryable) == ("internal", False), str(err.value)
    assert error.detail["op"] == "fake.spin"
    assert error.detail["ran_ms"] > 0
    assert "killed as hung" in error.message
    assert tree.call("spinner", "sys.info")["refused"].get("internal", 0) >= 1

    # One hang, one `hung` event, one exit: and the event names the op, the client and the
    # loop's stack (the spin's own frame in it).
    seen: list[dict] = []
    tree.wait_event(lambda e: seen.append(e) or (
        e["event"] == "restarted" and e["child"] == "spinner"))
    hung = [e for e in seen if e["event"] == "hung"]
    exited = [e for e in seen if e["event"] == "exited"]
    assert [e["pid"] for e in hung] == [old] and [e["pid"] for e in exited] == [old]
    assert exited[0]["signal"] == signal.SIGKILL
    assert hung[0]["op"] == "fake.spin" and hung[0]["client"] == tree.client.sid
    assert hung[0]["ran_ms"] > 0
    assert "in spin" in hung[0]["stack"] and "fakes.py" in hung[0]["stack"]
    # The actor logged its stack too; its successor took the record away.
    log = (tree.state_dir / "logs" / "spinner.log").read_text(errors="replace")
    assert "killed as hung while running fake.spin" in log and "in spin" in log
    assert not last_words.record_path(tree.runtime_dir, "spinner").exists()


def test_only_the_same_sid_and_id_are_refused_and_a_call_that_may_have_had_effect_is_unknown(
        make_tree):
    """A resend of the identical frames of an op that is not idempotent (as a client resends
    a resumable op to a successor) hears `outcome_unknown`: its effect may have happened
    before the loop stuck. The same op under another id, or from another session, runs."""
    tree: Tree = make_tree(SPINNER).start()
    old = tree.child("spinner")["pid"]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoints.rpc(tree.runtime_dir, "spinner"))
        deadline = int(time.time() * 1000) + 60_000
        frames = encode_request(1, "raw", "fake.burn", {"ms": 60_000}, deadline_ms=deadline)
        sock.send_multipart(frames)
        hung = tree.wait_event(lambda e: e["event"] == "hung" and e["child"] == "spinner")
        assert (hung["pid"], hung["op"], hung["client"], hung["request_id"]) == (
            old, "fake.burn", "raw", 1)
        tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "spinner")
        sock.send_multipart(frames)  # (queued for the successor, as a client's resend is)
        refused = answer(sock)
        assert (refused.id, refused.ok, refused.body["name"]) == (1, False, "outcome_unknown")
        assert refused.body["detail"]["op"] == "fake.burn"
        assert refused.body["retryable"] is False
        for rid, sid in ((2, "raw"), (1, "other")):
            sock.send_multipart(encode_request(rid, sid, "fake.burn", {"ms": 1},
                                               deadline_ms=deadline))
            ran = answer(sock)
            assert (ran.id, ran.ok, ran.body) == (rid, True, {"burnt_ms": 1})
        # A second hostile request kills the successor: its own successor refuses both.
        second = encode_request(3, "raw", "fake.spin", {"ms": 60_000}, deadline_ms=deadline)
        sock.send_multipart(second)
        tree.wait_event(lambda e: e["event"] == "hung" and e.get("request_id") == 3)
        tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "spinner")
        for msg, name in ((second, "internal"), (frames, "outcome_unknown")):
            sock.send_multipart(msg)
            refused = answer(sock)
            assert (refused.ok, refused.body["name"]) == (False, name)
    finally:
        sock.close(0)
        ctx.term()
    assert tree.child("spinner")["restarts"] == 2


def answer(sock: zmq.Socket) -> Reply:
    assert sock.poll(20_000), "no reply"
    return decode_reply(sock.recv_multipart())


def test_a_record_gives_its_successor_only_the_requests_within_their_deadlines(
        runtime_dir: Path):
    """What `take` keeps of a record: entries whose time is not over, and the record is
    removed; one unreadable is dropped (the successor starts as it would without it)."""
    path = last_words.record_path(runtime_dir, "w")
    path.parent.mkdir()
    now_ms = int(time.time() * 1000)
    live = {"sid": "s1", "id": 7, "op": "fs.stat", "ran_ms": 900, "keep_until_ms": now_ms + 60_000}
    over = {"sid": "s1", "id": 6, "op": "fs.list", "ran_ms": 800, "keep_until_ms": now_ms - 1}
    path.write_text(json.dumps({"actor": "w", "pid": 1, "time": now_ms / 1000, "request": live,
                                "stack": "", "poisoned": [over, live]}))
    loop = Loop()
    try:
        assert last_words.take(runtime_dir, "w", loop) == {("s1", 7): live}
        assert not path.exists()
        assert last_words.take(runtime_dir, "w", loop) == {}
        path.write_bytes(b"{not json")
        assert last_words.take(runtime_dir, "w", loop) == {}
        assert not path.exists()
    finally:
        loop.close()
