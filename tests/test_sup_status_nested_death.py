"""A nested supervisor that dies while the root asks it for its status: `sup.status` says so
at its death (`unavailable`), and a supervisor's other calls to a child that died are
answered then too, not at their timeouts. On a real tree."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from moorage.protocol.client import Client
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(90)

NESTED = """
[supervisor]
[[children]]
id = "group"
type = "supervisor"
[[children.children]]
id = "inner"
start = "tests.fakes:FakeActor"
"""


def group_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["children"] if c["id"] == "group")


def test_a_nested_supervisor_killed_while_asked_is_told_unavailable_at_its_death(make_tree):
    tree = make_tree(NESTED).start()
    pid = group_of(tree.status())["pid"]
    answer: list[dict[str, Any]] = []
    # Stopped, it takes the root's question and cannot answer it: the root's call to it is
    # certainly out when it is killed.
    os.kill(pid, signal.SIGSTOP)
    try:
        with Client(tree.runtime_dir, timeout=30.0) as asker:
            t = threading.Thread(target=lambda: answer.append(
                asker.call("supervisor", "sup.status", timeout=30.0)))
            t.start()
            try:
                wait_for(lambda: tree.call("supervisor", "sys.info")["pending"] >= 1,
                         "the root's sup.status waiting on the nested supervisor")
                os.kill(pid, signal.SIGKILL)
            finally:
                t.join(60)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert answer, "sup.status did not answer"
    group = group_of(answer[0])
    error = group["tree"]["error"]
    # (before: `timeout`, 2 s later, the request lost with the process)
    assert error["name"] == "unavailable", error
    assert "group" in error["message"] and "ended" in error["message"], error
    assert all(c["state"] == "unknown" for c in group["tree"]["children"]), group
    # and the next status finds the group started again, answering
    wait_for(lambda: group_of(tree.status()).get("pid") not in (None, pid)
             and "error" not in group_of(tree.status()).get("tree", {}),
             "the group back, and answering the root")
