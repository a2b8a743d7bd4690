"""protocol/conformance/cases.json driven by the Python client against a real tree: the same
cases the TypeScript and Rust suites run (tests/test_clients_typescript.py, _rust.py)."""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from moorage.protocol import limits
from moorage.protocol.client import Client, Loss, Reset
from moorage.protocol.envelope import StreamMessage, decode_reply, encode_request
from moorage.protocol.errors import MoorageError
from moorage.protocol.wire import recv_frames, send_frames
from tests.clients_support import CASES, conformance_tree  # noqa: F401  (a fixture)
from tests.conftest import Tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

RUN = secrets.token_hex(4)
BY_KIND: dict[str, Any] = {}


def case(kind: str) -> Any:
    def register(fn: Any) -> Any:
        BY_KIND[kind] = fn
        return fn
    return register


def until_live(sub: Any, timeout: float = 10.0) -> list[Any]:
    """Read until every subscribed prefix's welcome round has ended; events meanwhile kept."""
    early: list[Any] = []
    end = time.monotonic() + timeout
    while not sub.tracker.prefixes <= sub.tracker.live:
        assert time.monotonic() < end, "subscription not live"
        ev = sub.next(timeout=0.05)
        if ev is not None:
            early.append(ev)
    return early


@case("hello_every_actor")
def hello_every_actor(c: Client, tree: Tree, spec: dict) -> None:
    actors = ["supervisor", *c.call("supervisor", "sup.endpoints")]
    assert {"metrics", "resource", "parser", "watcher", "terminal", "conf"} <= set(actors)
    for actor in actors:
        h = c.hello(actor)
        assert (h["proto"], h["max_msg"], h["actor"]) == (1, 64 * 1024 * 1024, actor)
        assert re.fullmatch(r"[0-9a-f]{16}", h["ep"])
        assert c.core.epochs[actor] == h["ep"]


@case("one_op_per_actor")
def one_op_per_actor(c: Client, tree: Tree, spec: dict, tmp_path: Path) -> None:
    probe = tmp_path / "probe.txt"
    probe.write_text(spec["probe_text"])
    for call in spec["calls"]:
        args = call["args"]
        if isinstance(args, dict):
            args = {k: v.replace("$dir", str(tmp_path)) if isinstance(v, str) else v
                    for k, v in args.items()}
        got = c.call(call["actor"], call["op"], args)
        want = call["expect"]
        assert isinstance(got, dict if want["type"] == "map" else list), (call, got)
        for k in want.get("keys", []):
            assert k in got, (call["op"], k)
        for k, v in want.get("equals", {}).items():
            assert got[k] == v, (call["op"], k)
        if call["op"] == "fs.stat":
            st = os.stat(probe)
            assert (got["mtime_ns"], got["ino"]) == (st.st_mtime_ns, st.st_ino)


@case("errors")
def errors(c: Client, tree: Tree, spec: dict) -> None:
    for call in spec["calls"]:
        with pytest.raises(MoorageError) as e:
            c.call(call["actor"], call["op"], call["args"])
        wire = e.value.error
        for k, v in call["error"].items():
            assert getattr(wire, k) == v, (call["op"], k, wire)
        for k in call.get("detail_keys", []):
            assert k in wire.detail
        assert e.value.attempts == 1
        assert c.call(call["actor"], "sys.ping")["ep"]


@case("retry_same_id")
def retry_same_id(c: Client, tree: Tree, spec: dict) -> None:
    before = c.call(spec["actor"], spec["count_op"])["effects"]
    # The client's own DEALER, a request sent twice with one id (what a resend is).
    conn = c._conn(spec["actor"], spec["op"])
    rid = c.core.next_id()
    frames = encode_request(rid, c.sid, spec["op"], None, int((time.time() + 5) * 1000))
    replies = []
    for _ in range(2):
        send_frames(conn.sock, frames)
        while True:
            reply = wait_for(lambda: _recv(conn.sock), "the reply", 5)
            if reply.id == rid:
                replies.append(reply)
                break
    assert replies[0].ok and replies[0].body == replies[1].body
    assert c.call(spec["actor"], spec["count_op"])["effects"] == before + 1


def _recv(sock: Any) -> Any:
    try:
        return decode_reply(recv_frames(sock))
    except Exception:  # zmq.Again from the RCVTIMEO slice: not yet
        return None


@case("gap_repaired")
def gap_repaired(c: Client, tree: Tree, spec: dict) -> None:
    topic = f"{spec['topic']}.{RUN}"
    import zmq
    sub = c.subscribe(spec["actor"], [topic], rcvhwm=spec["rcvhwm"])  # (null: the default)
    try:
        assert sub.sock.getsockopt(zmq.RCVHWM) == (spec["rcvhwm"] if spec["rcvhwm"] is not None
                                                   else limits.STREAM_HWM)
        assert until_live(sub) == []
        c.call(spec["actor"], spec["publish_op"], {"topic": topic, "n": spec["n"],
                                                   "size": spec["size"]})
        for seq in range(1, spec["n"] + 1):
            ev = sub.next(timeout=spec["quiet_s"])
            if ev is None:  # quiet before the end: the tail was lost at the high-water mark
                sub.catch_up()
                ev = sub.next(timeout=10)
            assert isinstance(ev, StreamMessage), ev
            assert (ev.seq, ev.body, len(ev.attachments[0])) == (seq, {"i": seq - 1},
                                                                  spec["size"])
        assert sub.tracker.replays_asked >= 1
    finally:
        sub.close()


@case("loss_reported")
def loss_reported(c: Client, tree: Tree, spec: dict) -> None:
    topic = f"{spec['topic']}.{RUN}"
    c.call(spec["actor"], spec["publish_op"], {"topic": topic, "n": spec["n"]})
    sub = c.subscribe(spec["actor"], [topic], from_seq=1)
    try:
        first, last = spec["lost"]
        assert sub.next(timeout=10) == Loss(topic, first, last, c.core.epochs[spec["actor"]])
        for seq in range(last + 1, spec["n"] + 1):
            ev = sub.next(timeout=10)
            assert isinstance(ev, StreamMessage) and ev.seq == seq, ev
        assert sub.next(timeout=0.2) is None
    finally:
        sub.close()


@case("killed_mid_call")
def killed_mid_call(c: Client, tree: Tree, spec: dict) -> None:
    actor = spec["actor"]
    old = c.hello(actor)["ep"]
    outcome: dict[str, Any] = {}

    def slow() -> None:
        with Client(c.runtime_dir) as mine:
            mine.hello(actor)
            try:
                mine.call(actor, spec["op"], spec["args"], timeout=spec["timeout_s"])
            except MoorageError as exc:
                outcome["error"] = exc
            outcome["at"] = time.monotonic()

    t = threading.Thread(target=slow)
    t.start()
    try:
        wait_for(lambda: c.call(actor, "sys.info")["pending"] == 1, "the call in flight", 10)
        killed = time.monotonic()
        c.call("supervisor", "sup.kill", {"child": actor})
    finally:
        t.join(spec["timeout_s"] + 5)
    err = outcome["error"]
    assert err.name == "outcome_unknown"
    assert outcome["at"] - killed <= spec["within_s"], "not ended at once"
    assert err.error.detail["old_epoch"] == old


@case("restart_epoch")
def restart_epoch(c: Client, tree: Tree, spec: dict) -> None:
    actor, topic = spec["actor"], f"{spec['topic']}.{RUN}"
    a = c.hello(actor)["ep"]
    seen = c.core.restarts_seen.get(actor, 0)
    sub = c.subscribe(actor, [topic])
    try:
        assert until_live(sub) == []
        c.call(actor, spec["publish_op"], {"topic": topic, "n": 1})
        ev = sub.next(timeout=10)
        assert isinstance(ev, StreamMessage) and (ev.seq, ev.epoch) == (1, a)
        c.call("supervisor", "sup.restart", {"child": actor})
        b = wait_for(lambda: _hello_epoch(c, actor, a), "a new epoch", 20)
        assert b != a and c.core.restarts_seen[actor] == seen + 1
        c.call(actor, spec["publish_op"], {"topic": topic, "n": 1})
        assert sub.next(timeout=10) == Reset(topic, a, b)
        ev = sub.next(timeout=10)
        assert isinstance(ev, StreamMessage) and (ev.seq, ev.epoch) == (1, b)
    finally:
        sub.close()


def _hello_epoch(c: Client, actor: str, old: str) -> str | None:
    try:
        ep = c.hello(actor)["ep"]
    except MoorageError:
        return None
    return ep if ep != old else None


@pytest.mark.parametrize("spec", CASES["cases"], ids=[s["name"] for s in CASES["cases"]])
def test_the_python_client_passes_each_conformance_case(
        spec: dict, conformance_tree: Tree, tmp_path: Path) -> None:  # noqa: F811
    fn = BY_KIND[spec["kind"]]
    with Client(conformance_tree.runtime_dir, timeout=10.0) as c:
        if spec["kind"] == "one_op_per_actor":
            fn(c, conformance_tree, spec, tmp_path)
        else:
            fn(c, conformance_tree, spec)
