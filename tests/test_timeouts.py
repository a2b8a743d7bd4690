"""Timeouts (seed 9.1): per-op defaults from config, run-time overrides kept until the tree
stops, deadlines carried from a client through one actor to the next, and the client's
Timeout ladder (attempt timeout doubled, at most 2 retries, then `timeout`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import pytest
import zmq

from moorage.actors.runtime import DEFERRED, Actor, Call, op
from moorage.actors.runtime.outbound import Outbound
from moorage.protocol import endpoints
from moorage.protocol.client._core import CallPlan, ClientCore, ClientOptions, Done, Resend, Wait
from moorage.protocol.envelope import decode_reply, encode_request
from moorage.protocol.errors import MoorageError, WireError
from moorage.protocol.recovery import recovery_for
from moorage.supervisor import overrides
from moorage.supervisor.cli.commands import parse_duration_ms, seconds
from moorage.supervisor.cli.common import CliError
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


# --- small actors for these tests ------------------------------------------------------------


class HangActor(Actor):
    """`hang.wait` never answers by itself: only the runtime's guard timer answers it."""

    name = "hang"

    @op("hang.wait", idempotent=True, timeout_ms=60_000)
    def _op_wait(self, call: Call) -> object:
        """Hold the call; the runtime answers `timeout` when its time is up."""
        return DEFERRED


class SinkActor(Actor):
    """B: says which deadline reached it."""

    name = "sink"

    @op("sink.echo", idempotent=True)
    def _op_echo(self, call: Call) -> dict[str, Any]:
        """The deadline this request carried."""
        return {"deadline_ms": call.deadline_ms}


class RelayActor(Actor):
    """A: calls B with the caller's deadline, at once or after that deadline has passed."""

    name = "relay"

    def on_start(self) -> None:
        self.out = Outbound(self)

    @op("relay.echo", args={"late": (bool, False)})
    def _op_echo(self, call: Call, late: bool) -> object:
        """Ask sink.echo with this call's deadline; `late`: only once that deadline passed."""

        def done(reply: Any, err: WireError | None) -> None:
            if err is not None:
                call.fail(err)
            else:
                call.reply({"mine": call.deadline_ms, "sink": reply.body})

        def forward() -> None:
            self.out.call("sink", "sink.echo", timeout=30.0, on_done=done,
                          deadline_ms=call.deadline_ms)

        if late:
            self.loop.call_later((call.remaining_ms() or 0) / 1000 + 0.05, forward)
        else:
            forward()
        return DEFERRED


# --- the ladder, on a fake clock -----------------------------------------------------------


def plan(timeout: float = 100.0, attempt: float = 1.0, idempotent: bool = True) -> CallPlan:
    core = ClientCore("/tmp/moorage-nowhere", options=ClientOptions(
        timeout=timeout, attempt_timeout=attempt, breaker_threshold=100))
    return CallPlan(core, "x", "x.op", None, None, idempotent)


def test_an_idempotent_call_that_times_out_is_retried_twice_with_the_wait_doubled():
    """Two resends, each attempt twice as long as the last; the last lasts to the call's
    deadline (a slow op answers late, and any copy's reply ends the call), which ends it
    `timeout`."""
    p = plan()
    t = p.started
    waits = []
    v: Any = p.start(t)
    while isinstance(v, Wait):
        waits.append(round(v.until - t, 6))
        t = v.until
        r = p.on_timeout(t)
        if isinstance(r, Done):
            v = r
            break
        t += r.delay
        v = p.resend(t)
    assert waits[:2] == [1.0, 2.0] and len(waits) == 3
    assert t == pytest.approx(p.deadline)
    assert isinstance(v, Done) and v.error is not None and v.error.name == "timeout"
    assert p.attempts == 3
    assert p.timeout_retries == recovery_for("timeout", "recoverable").max_retries == 2


def test_the_ladder_never_waits_past_the_call_deadline():
    p = plan(timeout=2.5, attempt=1.0)
    t = p.started
    v = p.start(t)
    assert isinstance(v, Wait) and v.until == pytest.approx(t + 1.0)
    t = v.until
    r = p.on_timeout(t)
    assert isinstance(r, Resend)
    t += r.delay
    v2 = p.resend(t)
    assert isinstance(v2, Wait) and v2.until == pytest.approx(p.deadline)  # not t + 2
    done = p.on_timeout(v2.until)
    assert isinstance(done, Done) and done.error.name == "timeout"


def test_a_reply_on_the_second_rung_ends_the_call_with_it():
    from moorage.protocol.envelope import Reply

    p = plan()
    t = p.start(p.started).until
    t += p.on_timeout(t).delay
    assert p.resend(t).until - t == pytest.approx(2.0)
    done = p.on_reply(Reply(p.id, "ep", True, {"ok": 1}, []), t + 0.5)
    assert isinstance(done, Done) and done.reply.body == {"ok": 1} and p.attempts == 2


def test_a_non_idempotent_call_is_not_retried_on_timeout():
    p = plan(idempotent=False)
    v = p.start(p.started)
    assert v.until == pytest.approx(p.deadline)
    done = p.on_timeout(p.started + 1.0)
    assert isinstance(done, Done) and done.error.name == "outcome_unknown"


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("10s", 10_000), ("2m", 120_000),
                                          ("750", 750), ("1.5s", 1500)])
def test_durations_are_read_in_ms_s_m_or_plain_milliseconds(text, ms):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "ten", "0", "-1s", "5h", "inf", "infs", "nanms",
                                  "1e400ms", "1e300"])
def test_a_bad_duration_is_a_usage_error(text):
    with pytest.raises(CliError):
        parse_duration_ms(text)


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "1e300", "86401", "0"])
def test_a_time_budget_is_finite_and_at_most_a_day(text):
    with pytest.raises(argparse.ArgumentTypeError):
        seconds(text)
    assert seconds("86400") == 86400.0


# --- one actor ----------------------------------------------------------------------------


def raw_call(runtime_dir, actor: str, op_name: str, args: Any = None,
             wait_s: float = 30.0) -> tuple[Any, float]:
    """A request with no deadline at all (a Client always sends one), and how long it took."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoints.rpc(runtime_dir, actor))
    try:
        t0 = time.monotonic()
        s.send_multipart(encode_request(1, "raw-test", op_name, args, None, ()))
        assert s.poll(int(wait_s * 1000)), "no reply"
        reply = decode_reply(s.recv_multipart())
        return reply, time.monotonic() - t0
    finally:
        s.close(0)
        ctx.term()


def test_config_timeouts_override_the_declared_one_and_bound_a_deferred_call(
        spawn_actor, client, runtime_dir):
    spawn_actor("tests.test_timeouts:HangActor", "hang", timeouts={"hang.wait": 300, "x.y": 1})
    info = client.call("hang", "sys.info")
    assert info["ops"]["hang.wait"]["timeout_ms"] == 300  # declared: 60 000
    reply, took = raw_call(runtime_dir, "hang", "hang.wait")
    assert not reply.ok and WireError.from_wire(reply.body).name == "timeout"
    assert 0.3 <= took < 30


def test_sys_config_changes_a_timeout_at_run_time_and_refuses_nonsense(spawn_actor, client):
    spawn_actor("tests.test_timeouts:HangActor", "hang")
    assert client.call("hang", "sys.info")["ops"]["hang.wait"]["timeout_ms"] == 60_000
    r = client.call("hang", "sys.config", {"timeouts": {"hang.wait": 250, "other.op": 9}})
    assert r == {"actor": "hang", "timeouts": {"hang.wait": 250}}
    assert client.call("hang", "sys.info")["ops"]["hang.wait"]["timeout_ms"] == 250
    for bad in ({"hang.wait": 0}, {"hang.wait": "10s"}, {"hang.wait": True}):
        with pytest.raises(MoorageError) as e:
            client.call("hang", "sys.config", {"timeouts": bad})
        assert e.value.name == "bad_args"
    assert client.call("hang", "sys.info")["ops"]["hang.wait"]["timeout_ms"] == 250


# --- deadline propagation across two actors ------------------------------------------------


def test_a_client_deadline_reaches_the_actor_called_on_its_behalf(spawn_actor, client):
    spawn_actor("tests.test_timeouts:SinkActor", "sink")
    spawn_actor("tests.test_timeouts:RelayActor", "relay")
    r = client.call("relay", "relay.echo", timeout=20.0)
    # The relay's own timeout for the call is 30 s; the sink saw the client's 20 s deadline.
    assert r["sink"]["deadline_ms"] == r["mine"]
    assert r["mine"] - time.time() * 1000 < 20_000


def test_an_expired_deadline_is_refused_by_the_second_actor(spawn_actor, client):
    spawn_actor("tests.test_timeouts:SinkActor", "sink")
    spawn_actor("tests.test_timeouts:RelayActor", "relay")
    assert client.call("sink", "sink.echo")  # both up
    client.call("relay", "sys.ping")
    assert client.call("sink", "sys.info")["refused"] == {}
    with pytest.raises(MoorageError) as e:
        client.call("relay", "relay.echo", {"late": True}, timeout=0.3)
    assert e.value.name in ("timeout", "outcome_unknown")
    # The relay sent sink.echo once its deadline had passed: the sink refused it unrun.
    wait_for(lambda: client.call("sink", "sys.info")["refused"].get("deadline_expired") == 1,
             "the sink's refusal")
    assert client.call("sink", "sys.info")["refused"] == {"deadline_expired": 1}


# --- a tree: override, restart, expiry ---------------------------------------------------------

TREE = """
[supervisor]
heartbeat = { interval_ms = 100, misses = 3 }
backoff = { initial_ms = 20, factor = 2.0, max_ms = 400 }
[timeouts]
"hang.wait" = 5000
[[children]]
id = "hang"
start = "tests.test_timeouts:HangActor"
[[children]]
id = "inner"
type = "supervisor"
[[children.children]]
id = "hang2"
start = "tests.test_timeouts:HangActor"
"""


def timeout_of(tree: Any, actor: str) -> int:
    return tree.call(actor, "sys.info")["ops"]["hang.wait"]["timeout_ms"]


def test_an_override_holds_across_restarts_and_is_gone_with_the_tree(make_tree):
    tree = make_tree(TREE).start()
    assert timeout_of(tree, "hang") == timeout_of(tree, "hang2") == 5000
    out = tree.cli("config", "set", "timeout.hang.wait", "300ms")
    assert out.returncode == 0, out.stderr
    assert "300 ms" in out.stdout
    r = tree.call("supervisor", "sup.config.get")
    assert r["defaults"]["timeout.hang.wait"] == 5000  # beside the default tree's table
    assert r["overrides"] == {"timeout.hang.wait": 300}
    assert timeout_of(tree, "hang") == timeout_of(tree, "hang2") == 300
    got = tree.cli("config", "get")
    assert got.returncode == 0 and "timeout.hang.wait" in got.stdout and "300" in got.stdout

    # A restarted worker, and a restarted nested supervisor's worker, still have it.
    tree.call("supervisor", "sup.kill", {"child": "hang"})
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "hang")
    assert timeout_of(tree, "hang") == 300
    tree.call("supervisor", "sup.kill", {"child": "inner"})
    tree.wait_event(lambda e: e["event"] == "restarted" and e["child"] == "inner")
    tree.wait_all_running()
    # told to the new `inner` once it is up, and by it to its new worker
    wait_for(lambda: timeout_of(tree, "hang2") == 300, "the override at the new worker")
    assert tree.call("inner", "sup.config.get")["overrides"] == {"timeout.hang.wait": 300}

    # A new tree starts from the config again.
    tree.stop()
    again = make_tree(TREE).start()
    assert timeout_of(again, "hang") == timeout_of(again, "hang2") == 5000
    assert again.call("supervisor", "sup.config.get")["overrides"] == {}


def test_a_bad_config_key_or_value_is_refused(make_tree):
    tree = make_tree(TREE).start()
    for args in ({"key": "retries.x", "value": 5}, {"key": "timeout.", "value": 5},
                 {"key": "timeout.x", "value": 0}, {"key": "timeout." + "x" * 65, "value": 5},
                 {"key": "timeout.a\nb", "value": 5}):
        with pytest.raises(MoorageError) as e:
            tree.call("supervisor", "sup.config.set", args)
        assert e.value.name == "bad_args"
    # Each override is kept, told to every child and merged into every spawn: so many that
    # no tree has as many ops are refused, and a set one can still be changed.
    for i in range(overrides.MAX_OVERRIDES - 1):
        tree.call("supervisor", "sup.config.set", {"key": f"timeout.op{i}", "value": 100})
    tree.call("supervisor", "sup.config.set", {"key": "timeout.hang.wait", "value": 4000})
    with pytest.raises(MoorageError) as e:
        tree.call("supervisor", "sup.config.set", {"key": "timeout.one.more", "value": 100})
    assert e.value.name == "bad_args"
    tree.call("supervisor", "sup.config.set", {"key": "timeout.hang.wait", "value": 5000})
    assert len(tree.call("inner", "sup.config.get")["overrides"]) == overrides.MAX_OVERRIDES
    bad = tree.cli("config", "set", "timeout.hang.wait", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    assert timeout_of(tree, "hang") == 5000
