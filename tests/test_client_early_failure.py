"""A call in flight when its actor dies ends at once: `outcome_unknown` for one that may have
run (with what the caller needs to go and look), a resend for one that is safe to repeat."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from moorage.protocol import limits
from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

ONE = """
[[children]]
id = "a"
start = "tests.fakes:FakeActor"
"""


def kill_when_pending(tree, actor: str) -> threading.Thread:
    """SIGKILL `actor` once it holds a call (its own sys.info says so)."""

    def run() -> None:
        with Client(tree.runtime_dir, timeout=10.0) as c:
            info = wait_for(lambda: (i := c.call(actor, "sys.info"))["pending"] >= 1 and i,
                            "the call in flight")
            os.kill(info["pid"], signal.SIGKILL)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_call_that_may_have_run_ends_outcome_unknown_when_its_actor_dies(make_tree):
    tree = make_tree(ONE).start()
    epoch = tree.client.hello("a")["ep"]
    killer = kill_when_pending(tree, "a")
    with pytest.raises(MoorageError) as e:
        tree.call("a", "fake.slow", {"ms": 60_000, "session": "t42"}, timeout=60)
    killer.join()
    err = e.value.error
    assert err.name == "outcome_unknown" and "connection dropped" in err.message
    assert err.detail["old_epoch"] == epoch and err.detail["session"] == "t42"


def test_a_call_safe_to_repeat_is_resent_to_the_successor(make_tree):
    tree = make_tree(ONE).start()
    first = tree.child("a")["pid"]
    killer = kill_when_pending(tree, "a")
    r = tree.call("a", "fake.slow", {"ms": 50}, timeout=60, idempotent=True)
    killer.join()
    assert r == {"slept_ms": 50} and tree.child("a")["pid"] != first


def test_a_frame_over_what_an_actor_takes_is_refused_unsent_not_told_outcome_unknown(
        make_tree):
    """Over MAXMSGSIZE the actor's socket drops the connection unread, which would end the
    call `outcome_unknown` ("may have run"): it is refused before it is sent, as not run, and
    the connection and the actor's life are as they were."""
    tree = make_tree(ONE).start()
    with Client(tree.runtime_dir, timeout=10.0) as c:
        epoch = c.call("a", "sys.info")["ep"]
        with pytest.raises(MoorageError) as e:
            c.call("a", "fake.effect", attachments=[b"\0" * (limits.MAX_MESSAGE_SIZE + 1)])
        assert e.value.name == "message_too_large" and e.value.attempts == 0, e.value
        assert str(limits.MAX_MESSAGE_SIZE + 1) in str(e.value)
        assert c.call("a", "sys.info")["ep"] == epoch
        assert c.call("a", "fake.count")["effects"] == 0



def test_a_reply_over_the_frame_limit_is_refused_by_its_actor_and_the_next_call_is_served(
        make_tree):
    """(The actor sent it: the client's socket dropped the connection on the frame over
    MAXMSGSIZE and libzmq did not connect it again, so the call, and every later one of that
    client to the actor, waited in vain.)"""
    tree = make_tree(ONE).start()
    c = tree.client
    assert c.call("a", "fake.attach", {"size": 1000}) == {"size": 1000}
    with pytest.raises(MoorageError) as e:
        c.call("a", "fake.attach", {"size": limits.MAX_MESSAGE_SIZE + 1}, timeout=30)
    err = e.value.error
    assert err.name == "message_too_large", err
    assert err.detail == {"bytes": limits.MAX_MESSAGE_SIZE + 1,
                          "limit": limits.MAX_MESSAGE_SIZE}
    assert c.call("a", "fake.attach", {"size": 1000}, timeout=10) == {"size": 1000}
    c.call("a", "sys.ping", timeout=10)
