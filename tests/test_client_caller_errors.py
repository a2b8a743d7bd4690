"""A client's latency pushes say which of its errors were the caller's (the push body's
`caller`, PROTOCOL.md section 2), by the error table's `fault` column as the actors count their
own, so that the metrics actor's failure rate for a `client.<name>` row counts only the
service's failures: an editor probing for files that are not there raises no tree-wide alert,
and a service that fails still does.

The book and the push bodies are fed values and read by the metrics actor's own decoder; the
call plan is given each error of the table; the rest runs a real tree (metrics, watcher, a fake
actor), a real client pushing as `client.editor`, and real `fs.stat` calls of missing files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from moorage.actors.metrics.push import decode_push
from moorage.protocol.client import Client
from moorage.protocol.client._core import CallPlan, ClientCore, ClientOptions
from moorage.protocol.client._latency import LatencyBook, encode_pending
from moorage.protocol.envelope import TAG, Reply, packb
from moorage.protocol.errors import KINDS, Fault, MoorageError, WireError
from moorage.protocol.limits import MAX_OP_LEN
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

TREE = """
[supervisor]
heartbeat = {{ interval_ms = 100, misses = 3 }}
[[children]]
id = "metrics"
start = "moorage.actors.metrics.actor:MetricsActor"
[[children]]
id = "watcher"
start = "moorage.actors.watcher.actor:WatcherActor"
[[children]]
id = "alpha"
start = "tests.fakes:FakeActor"
[actor.watcher]
roots = ["{root}"]
"""


def pushed(book: LatencyBook) -> dict[str, tuple[int, int, int]]:
    """What the metrics actor takes of the book's pending pushes: op -> (ok, error, caller),
    through its own decoder (which refuses a push whole, e.g. `caller` past `error`)."""
    got: dict[str, tuple[int, int, int]] = {}
    for body in encode_pending(book.take()):
        push = decode_push([TAG, packb({"actor": "client.editor", "pid": 1, "ep": "s"}),
                            packb(body)])
        for s in push.ops:
            got[s.op] = (s.ok, s.error, s.caller)
    return got


# --- the book and its push bodies --------------------------------------------------------------


def test_caller_errors_are_counted_apart_and_pushed_as_caller():
    book = LatencyBook(pushing=True)
    for _ in range(40):
        book.record("watcher", "fs.stat", 80, ok=False, caller=True)
    for _ in range(3):
        book.record("watcher", "fs.stat", 90, ok=False)  # e.g. a timeout: the service's
    book.record("watcher", "fs.stat", 70, ok=True)
    book.record("alpha", "fake.work", 70, ok=True)
    bodies = list(encode_pending(book.take()))
    assert bodies[0]["watcher/fs.stat"]["caller"] == 40
    assert "caller" not in bodies[0]["alpha/fake.work"]  # absent = 0, as an actor's push
    book.put_back(bodies[0])  # a push that could not be sent keeps its caller count
    assert pushed(book) == {"watcher/fs.stat": (1, 43, 40), "alpha/fake.work": (1, 0, 0)}


def test_an_ok_call_marked_caller_is_still_just_ok():
    """`caller` qualifies an error; on an ok call it means nothing (the push would be refused
    whole if `caller` came to exceed `error`)."""
    book = LatencyBook(pushing=True)
    book.record("watcher", "fs.stat", 80, ok=True, caller=True)
    assert pushed(book) == {"watcher/fs.stat": (1, 0, 0)}


def test_names_cut_to_the_same_op_merge_their_caller_counts():
    long_op = "x" * MAX_OP_LEN
    book = LatencyBook(pushing=True)
    book.record("alpha", long_op + "a", 10, ok=False, caller=True)
    book.record("alpha", long_op + "b", 10, ok=False, caller=True)
    book.record("alpha", long_op + "c", 10, ok=False)
    ((_, figures),) = pushed(book).items()
    assert figures == (0, 3, 2)


# --- the call plan: each error of the table, as the actors classify it -------------------------


def _outcome(core: ClientCore, error: WireError | MoorageError) -> tuple[int, int, int]:
    plan = CallPlan(core, "watcher", "fs.stat", {"path": "/x"}, 5.0, True)
    plan.done(plan.started, error=error)
    return pushed(core.latency)["watcher/fs.stat"]


def test_a_calls_error_counts_as_the_callers_exactly_when_the_table_says_so(tmp_path: Path):
    core = ClientCore(tmp_path, options=ClientOptions(metrics_name="editor"))  # (no pusher)
    for name, kind in KINDS.items():
        want = (0, 1, int(kind.fault is Fault.CALLER))
        assert _outcome(core, WireError.of(name)) == want, name
        # (as an error reply, read from the wire, and as the client's own exception)
        assert _outcome(core, WireError.from_wire(WireError.of(name).to_wire())) == want, name
        assert _outcome(core, MoorageError(WireError.of(name))) == want, name
    # A code this client does not know (a newer actor's) counts as the service's.
    newer = WireError.from_wire({"code": 450, "name": "quota_exceeded", "category": "x",
                                 "severity": "critical", "retryable": False,
                                 "fallback_available": False, "message": "m"})
    assert _outcome(core, newer) == (0, 1, 0)
    plan = CallPlan(core, "watcher", "fs.stat", {"path": "/x"}, 5.0, True)
    plan.done(plan.started, reply=Reply(plan.id, True, "ep", {}, []))
    assert pushed(core.latency)["watcher/fs.stat"] == (1, 0, 0)


# --- a real client, a real tree ----------------------------------------------------------------


def client_rows(c: Client) -> dict[str, dict[str, Any]]:
    q = c.call("metrics", "metrics.query", {"actor": "client.editor"}, idempotent=True)
    return {r["op"]: r for r in q["ops"]}


def test_an_editor_probing_missing_files_raises_no_alert_and_a_failing_service_does(
        make_tree, data: Path):
    tree = make_tree(TREE.format(root=data)).start()
    # An interval longer than the test: only the push below sends, so both ops arrive in one
    # push and are evaluated by the same merge.
    with Client(tree.runtime_dir, timeout=10.0, metrics_name="editor",
                metrics_interval=3600) as c:
        for i in range(40):  # an editor looking for .editorconfig up a tree of directories
            with pytest.raises(MoorageError) as e:
                c.call("watcher", "fs.stat", {"path": str(data / f"d{i}" / ".editorconfig")})
            assert e.value.name == "not_found", e.value
        for _ in range(40):  # a handler that raises: `internal`, the service's failure
            with pytest.raises(MoorageError) as e:
                c.call("alpha", "fake.fail")
            assert e.value.name == "internal", e.value
        assert c.push_latency() >= 1
        rows = wait_for(lambda: (r := client_rows(c)).get("watcher/fs.stat")
                        and r.get("alpha/fake.fail") and r, "the client's pushed rows")
        stat, fail = rows["watcher/fs.stat"]["lifetime"], rows["alpha/fake.fail"]["lifetime"]
        assert (stat["error"], stat["caller_errors"]) == (40, 40)
        assert (fail["error"], fail["caller_errors"]) == (40, 0)
        alerts = c.call("metrics", "metrics.alerts", idempotent=True)
    raised = {(e["kind"], e["actor"], e["op"]) for e in alerts["recent"]
              if e["state"] == "raised"}
    assert ("failure_rate", "client.editor", "alpha/fake.fail") in raised, alerts
    assert ("failure_rate", "client.editor", "watcher/fs.stat") not in raised, alerts
    # The watcher's own row: the same 40 calls, the caller's, as it pushed them.
    own = wait_for(lambda: [r["lifetime"] for r in tree.call(
        "metrics", "metrics.query", {"actor": "watcher", "op": "fs.stat"})["ops"]
        if r["lifetime"]["error"] == 40], "the watcher's own 40 fs.stat errors")
    assert own[0]["caller_errors"] == 40
