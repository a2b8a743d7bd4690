"""A client that found its tree by instance, once that tree has ended, is told `not_running`
at the call's first unanswered attempt or dropped connection, not `unavailable` (or
`timeout`) at its whole budget; a call not safe to repeat that was in flight as the tree
ended may have run there: `outcome_unknown`. On a real tree."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.protocol.client import Client
from moorage.protocol.errors import MoorageError
from tests.conftest import Tree
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[supervisor]
[[children]]
id = "one"
start = "tests.fakes:FakeActor"
"""


@pytest.fixture
def gone_tree(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    """A tree of instance `gone` (found by name, as an editor's client finds it), stopped at
    the end however the test went."""
    xdg = Path(tempfile.mkdtemp(prefix="nr-", dir="/tmp"))  # (short: socket paths)
    tree = None
    try:
        os.chmod(xdg, 0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
        monkeypatch.delenv("MOORAGE_RUNTIME_DIR", raising=False)
        rdir = xdg / "moorage" / "gone"
        rdir.mkdir(parents=True, mode=0o700)
        os.chmod(rdir.parent, 0o700)
        tree = Tree(rdir, CONFIG).start()
        yield tree
    finally:
        if tree is not None:
            tree.stop()
        shutil.rmtree(xdg, ignore_errors=True)


def test_a_client_of_a_tree_that_ended_is_told_not_running(gone_tree):
    tree = gone_tree
    with Client(instance="gone", timeout=20.0) as c:
        assert c.call("one", "sys.ping")
        down = tree.cli("down")
        assert down.returncode == 0, (down.stdout, down.stderr)
        with pytest.raises(MoorageError) as gone:
            c.call("one", "sys.ping")
        assert gone.value.name == "not_running", gone.value
        with pytest.raises(MoorageError) as again:  # (not circuit_open)
            c.call("one", "sys.ping")
        assert again.value.name == "not_running", again.value


def test_a_call_not_safe_to_repeat_in_flight_as_the_tree_ended_may_have_run(gone_tree):
    """fake.held (not idempotent; it counts a side effect, its reply held) is under way when
    the tree's root is killed: it may have run, so `outcome_unknown`, not `not_running`; one
    begun after its client saw the tree gone reached none: `not_running`."""
    ended: list[BaseException] = []

    def held() -> None:
        with Client(instance="gone", timeout=20.0) as h:
            try:
                h.call("one", "fake.held")
            except BaseException as exc:  # (kept for the test's thread)
                ended.append(exc)

    with Client(instance="gone", timeout=20.0) as c:
        t = threading.Thread(target=held)
        t.start()
        try:
            wait_for(lambda: c.call("one", "fake.count")["held"] == 1, "fake.held under way")
            # (SIGKILL: a stop would answer the held call itself; the root's lock is let go
            # as it dies, before its children learn of its death and end, with their links)
            os.kill(gone_tree.pid, signal.SIGKILL)
        finally:
            t.join(60)
        assert len(ended) == 1 and isinstance(ended[0], MoorageError), ended
        assert ended[0].name == "outcome_unknown", ended[0]
        assert "ended" in str(ended[0]), ended[0]
        with pytest.raises(MoorageError) as seen:  # (this client sees the tree gone)
            c.call("one", "sys.ping")
        assert seen.value.name == "not_running", seen.value
        with pytest.raises(MoorageError) as after:
            c.call("one", "fake.effect")
        assert after.value.name == "not_running", after.value
        again = Tree(gone_tree.runtime_dir, CONFIG).start()  # (the instance taken again)
        try:
            assert c.call("one", "fake.effect") == {"effects": 1}
            assert c.call("one", "sys.ping")
        finally:
            again.stop()


def test_a_breakers_probe_that_timed_out_on_an_ended_tree_is_given_back(runtime_dir):
    """A half-open breaker's probe whose attempt timed out once the tree had ended told
    nothing of the actor: it is given back, so a tree started again takes calls at once, not
    `circuit_open` until the probe's lease (30 s) runs out. The lock looked at is real (no
    tree holds this runtime dir's)."""
    from moorage.protocol.client._core import CallPlan, ClientCore, Done
    from moorage.protocol.client.connection import Connection
    from moorage.protocol.recovery import BreakerState

    core = ClientCore(runtime_dir)
    core.connection = Connection(runtime_dir, -1)  # (as one found by its instance)
    br = core.breaker("one")
    now = time.monotonic()
    for _ in range(br.threshold):
        br.record_failure(now)
    later = now + br.cooldown + 1
    plan = CallPlan(core, "one", "fake.effect", None, 5.0, False, ())
    assert not isinstance(plan.start(later), Done)  # (the half-open breaker's one probe)
    assert br.current(later) is BreakerState.HALF_OPEN and not br.allow(later)
    ended = plan.on_timeout(later + 1)
    assert isinstance(ended, Done) and ended.error is not None
    assert ended.error.name == "outcome_unknown", ended.error
    assert br.allow(later + 1)  # (the probe free again for the next call)
