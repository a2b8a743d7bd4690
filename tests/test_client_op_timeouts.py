"""A call given no timeout lasts as long as its op's own declared timeout (sys.info's
`timeout_ms`, run-time overrides included), and `session_busy`, a refusal before anything ran,
is resent as a new request within its budget (PROTOCOL.md sections 9 and 10).

The shared vectors (protocol/vectors/client.json, `deadlines` and `refusals`) are run here
against the Python client's core; the TypeScript and Rust suites run the same file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from moorage.actors.runtime import Actor, Call, op
from moorage.protocol.client import AsyncClient, Client
from moorage.protocol.client._core import CallPlan, ClientCore, ClientOptions, Resend
from moorage.protocol.envelope import Reply
from moorage.protocol.errors import MoorageError, WireError, fail
from moorage.protocol.recovery import max_retries_for
from tests.conftest import Tree, module_tree
from tests.terminal_support import env_for, make_home, terminal_tree

pytestmark = pytest.mark.timeout(120)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "protocol" / "vectors"
                      / "client.json").read_text(encoding="utf-8"))
EPOCH = "aaaaaaaaaaaaaaaa"


class RefusingActor(Actor):
    """`refuse.run` refuses `session_busy` (as the terminal does while a session's command has
    not given its prompt back) the first `refusals` times a key is asked for, then runs."""

    name = "refuser"

    def __init__(self, name: str | None, runtime_dir: Any, config: dict | None = None) -> None:
        super().__init__(name, runtime_dir, config)
        self.refused: dict[str, int] = {}
        self.runs: dict[str, int] = {}

    @op("refuse.run", args={"key": str})
    def run(self, call: Call, key: str) -> dict[str, int]:
        """Refuse `key` its first `refusals` times (config), then count one run of it."""
        n = self.refused.get(key, 0)
        if n < int(self.config.get("refusals", 2)):
            self.refused[key] = n + 1
            raise fail("session_busy", f"{key}: refused {n + 1} times")
        self.runs[key] = self.runs.get(key, 0) + 1
        return {"refused": n, "runs": self.runs[key]}


# --- the shared vectors ------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS["deadlines"], ids=[v["name"] for v in VECTORS["deadlines"]])
def test_a_calls_deadline_follows_each_deadline_vector(v: dict[str, Any], tmp_path: Path) -> None:
    core = ClientCore(tmp_path, options=ClientOptions(timeout=v["client_timeout"]))
    if v["ops"] is not None:
        core.learn("terminal", {"ops": v["ops"]})
    plan = CallPlan(core, "terminal", v["op"], {}, v["timeout"], None)
    assert plan.timeout == pytest.approx(v["expect_s"])
    assert plan.deadline_ms - int(time.time() * 1000) <= v["expect_s"] * 1000


@pytest.mark.parametrize("v", VECTORS["refusals"], ids=[v["name"] for v in VECTORS["refusals"]])
def test_an_error_reply_is_resent_as_each_refusal_vector_says(v: dict[str, Any],
                                                              tmp_path: Path) -> None:
    core = ClientCore(tmp_path)
    core.note_epoch("terminal", EPOCH)
    plan = CallPlan(core, "terminal", v["op"], {"session": "s1"}, 10.0, v["idempotent"])
    first = plan.id
    deadline_ms = plan.deadline_ms
    now = time.monotonic()
    plan.start(now)
    err = WireError.of(v["error"], "refused")
    verdict = plan.on_reply(Reply(first, False, EPOCH, err.to_wire(), []), now)
    got = {"resend": isinstance(verdict, Resend), "new_id": plan.id != first,
           "budget": max_retries_for(err)}
    assert got == v["expect"]
    assert plan.deadline_ms == deadline_ms  # a new request, the same deadline


# --- per-op timeouts, live ---------------------------------------------------------------------


def test_a_call_given_no_timeout_waits_for_its_ops_declared_timeout(spawn_actor, runtime_dir):
    spawn_actor()  # fake.slow declares the runtime's default, 5 s
    with Client(runtime_dir, timeout=1.0) as c:
        assert c.call("fake", "fake.slow", {"ms": 1500}) == {"slept_ms": 1500}
        assert c.core.op_timeouts["fake"]["fake.slow"] == 5.0


def test_a_given_timeout_is_kept_as_given(spawn_actor, runtime_dir):
    spawn_actor()
    with Client(runtime_dir, timeout=10.0) as c:
        with pytest.raises(MoorageError) as e:
            c.call("fake", "fake.slow", {"ms": 3000}, timeout=0.3)
        assert e.value.name == "outcome_unknown"


def test_a_run_time_override_of_an_ops_timeout_bounds_a_new_clients_calls(spawn_actor,
                                                                          runtime_dir):
    """fake.slow declares 5 s; set to 2 s, a new client's call of it (given no timeout, its
    own default 1 s) waits 2.5 s, never less than its own default."""
    spawn_actor()
    with Client(runtime_dir, timeout=10.0) as c:
        c.call("fake", "sys.config", {"timeouts": {"fake.slow": 2000}})
    with Client(runtime_dir, timeout=1.0) as c:
        with pytest.raises(MoorageError) as e:
            c.call("fake", "fake.slow", {"ms": 4000})
        assert e.value.name == "outcome_unknown"
        assert c.core.call_timeout("fake", "fake.slow") == pytest.approx(2.5)
    with Client(runtime_dir, timeout=3.0) as c:
        c.learn_ops("fake")
        assert c.core.call_timeout("fake", "fake.slow") == pytest.approx(3.0)


def test_an_actor_not_asked_for_its_ops_leaves_the_clients_timeout(spawn_actor, runtime_dir):
    spawn_actor()
    with Client(runtime_dir, timeout=0.3, learn_ops=False) as c:
        with pytest.raises(MoorageError) as e:
            c.call("fake", "fake.slow", {"ms": 3000})
        assert e.value.name == "outcome_unknown"


def test_the_asyncio_client_gives_a_call_its_ops_declared_timeout(spawn_actor, runtime_dir):
    spawn_actor()

    async def main() -> Any:
        async with AsyncClient(runtime_dir, timeout=1.0) as c:
            return await c.call("fake", "fake.slow", {"ms": 1500})

    assert asyncio.run(main()) == {"slept_ms": 1500}


def test_a_pipeline_given_no_timeout_gives_each_call_its_ops_timeout(spawn_actor, runtime_dir):
    spawn_actor()
    with Client(runtime_dir, timeout=1.0) as c:
        got = c.pipeline("fake", [("fake.slow", {"ms": 1500}), ("fake.count", None)])
    assert got[0] == {"slept_ms": 1500} and got[1]["effects"] == 0


# --- session_busy, live ------------------------------------------------------------------------


def test_session_busy_is_resent_as_a_new_request_until_it_runs(spawn_actor, runtime_dir):
    spawn_actor("tests.test_client_op_timeouts:RefusingActor", "refuser", refusals=2)
    with Client(runtime_dir, timeout=10.0) as c:
        r = c.request("refuser", "refuse.run", {"key": "a"})
    assert r.body == {"refused": 2, "runs": 1}


def test_session_busy_past_its_budget_ends_the_call_with_it(spawn_actor, runtime_dir):
    spawn_actor("tests.test_client_op_timeouts:RefusingActor", "refuser", refusals=10)
    with Client(runtime_dir, timeout=10.0) as c, pytest.raises(MoorageError) as e:
        c.call("refuser", "refuse.run", {"key": "a"})
    assert e.value.name == "session_busy"
    assert e.value.attempts == 1 + max_retries_for(e.value.error)


def test_the_asyncio_client_resends_session_busy_as_a_new_request(spawn_actor, runtime_dir):
    spawn_actor("tests.test_client_op_timeouts:RefusingActor", "refuser", refusals=2)

    async def main() -> Any:
        async with AsyncClient(runtime_dir, timeout=10.0) as c:
            return await c.call("refuser", "refuse.run", {"key": "a"})

    assert asyncio.run(main()) == {"refused": 2, "runs": 1}


def test_a_pipeline_resends_session_busy_as_new_requests(spawn_actor, runtime_dir):
    spawn_actor("tests.test_client_op_timeouts:RefusingActor", "refuser", refusals=1)
    with Client(runtime_dir, timeout=10.0) as c:
        got = c.pipeline("refuser", [("refuse.run", {"key": k}) for k in "abc"])
    assert got == [{"refused": 1, "runs": 1}] * 3


# --- a tree: the terminal, and the CLI ---------------------------------------------------------

TREE = terminal_tree() + """
[[children]]
id = "fake"
start = "tests.fakes:FakeActor"
"""


@pytest.fixture(scope="module")
def tree() -> Iterator[Tree]:
    yield from module_tree(TREE)


def test_a_slow_shell_is_created_by_a_call_given_no_timeout(tree: Tree, tmp_path: Path) -> None:
    # A .bashrc slower than the client's own timeout: term.create declares 30 s.
    env = env_for(make_home(tmp_path, bashrc="sleep 2\n"))
    with Client(tree.runtime_dir, timeout=1.0) as c:
        made = c.call("terminal", "term.create", {"shell": "bash", "env": env})
        assert made["session"] in {s["session"] for s in
                                   c.call("terminal", "term.list")["sessions"]}
        assert c.core.call_timeout("terminal", "term.exec") == 60.0  # a day's, capped
        c.call("terminal", "term.close", {"session": made["session"]})


def test_the_cli_gives_a_call_the_ops_timeout_that_config_set_made(tree: Tree) -> None:
    done = tree.cli("config", "set", "timeout.fake.slow", "9s")
    assert done.returncode == 0, done.stderr
    # Longer than the CLI's default 5 s for a command
    done = tree.cli("call", "fake", "fake.slow", '{"ms": 5500}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"slept_ms": 5500}


def test_the_cli_keeps_a_given_timeout(tree: Tree) -> None:
    done = tree.cli("--timeout", "0.5", "call", "fake", "fake.slow", '{"ms": 3000}')
    assert done.returncode == 1 and "outcome_unknown" in done.stderr, done.stderr
