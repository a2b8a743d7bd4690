"""Pressure in a real tree, told to the terminal the way the resource actor tells it
(`sys.pressure`): high and critical trim the scrollback, critical closes idle sessions,
published and counted, and refuses new sessions; quality 1 turns shell integration off."""

from __future__ import annotations

import pytest

from moorage.protocol.envelope import StreamMessage
from moorage.protocol.errors import MoorageError
from tests.pressure_support import TELLER, tell
from tests.terminal_support import Commands, env_for, make_home, terminal_tree

pytestmark = pytest.mark.timeout(120)

TREE = terminal_tree(terminal="""
idle_close_s = 0       # any session not running a command counts as idle
scrollback_bytes = 65536""") + TELLER


def pressure(tree, level: str, quality: int) -> dict:
    return tell(tree, "terminal", level, quality)["done"]


def create(tree, home) -> str:
    return tree.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                     timeout=30)["session"]


def session_events(sub, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        ev = sub.next(timeout=30)
        assert ev is not None, f"only {out} on term.session"
        if isinstance(ev, StreamMessage):
            out.append(ev.body)
    return out


def test_high_pressure_trims_scrollback_and_critical_closes_idle_sessions_counted(
        make_tree, tmp_path):
    """High (where a build's CPU alone can bring the tree) trims scrollback and closes no
    session: closing kills a shell with its cwd, environment and history. Critical (only
    memory gets there) closes the sessions nothing uses or runs in: not one running a
    command, nor one with a job in the background."""
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    idle, busy, jobs = create(tree, home), create(tree, home), create(tree, home)
    events = tree.client.subscribe("terminal", ["term.session"], from_seq=1)
    cmds = Commands(tree.client, busy)
    r = tree.call("terminal", "term.exec", {"session": busy, "command": "seq 1 30000"})
    assert r["exit_code"] == 0
    cmds.next_event("end")
    tree.call("terminal", "term.write", {"session": busy, "data": "cat\r"})
    cmds.next_event("start")  # `cat` runs: the session is not idle
    r = tree.call("terminal", "term.exec", {"session": jobs, "command": "sleep 600 &"})
    assert r["exit_code"] == 0  # a job in the background: not idle either
    before = tree.call("terminal", "term.scrollback", {"session": busy, "max_bytes": 1})

    high = pressure(tree, "high", 2)
    assert "idle_sessions_closed" not in high and high["scrollback_trimmed"] > 0
    assert high["creating"] is True
    after = tree.call("terminal", "term.scrollback", {"session": busy, "max_bytes": 1})
    assert after["first"] > before["first"] and after["end"] == before["end"]
    assert after["end"] - after["first"] == 65536 // 8  # an eighth is kept
    assert len(tree.call("terminal", "term.list")["sessions"]) == 3

    critical = pressure(tree, "critical", 2)
    assert critical["idle_sessions_closed"] == [idle]
    (closed,) = session_events(events, 1)
    assert closed == {"session": idle, "event": "closed", "reason": "pressure"}
    shed = tree.call("terminal", "sys.info")["pressure_shed"]
    assert shed == {"scrollback_bytes": high["scrollback_trimmed"] +
                    critical["scrollback_trimmed"], "idle_sessions_closed": 1}
    assert sorted(s["session"] for s in tree.call("terminal", "term.list")["sessions"]) == \
        sorted([busy, jobs])
    assert sorted(s["s"] for s in tree.call("ptykeeper", "pty.list")["sessions"]) == \
        sorted([busy, jobs])

    pressure(tree, "normal", 3)
    tree.call("terminal", "term.write", {"session": busy, "data": "\x04"})  # EOF: cat ends
    assert cmds.next_event("end")["exit_code"] == 0
    r = tree.call("terminal", "term.exec", {"session": busy, "command": "echo still"})
    assert (r["exit_code"], r["output"]) == (0, "still")
    assert tree.call("terminal", "term.exec", {"session": jobs, "command": "kill %1"})[
        "exit_code"] == 0
    cmds.sub.close()
    events.close()


def test_critical_pressure_refuses_new_sessions_with_busy_until_it_passes(make_tree,
                                                                         tmp_path):
    tree = make_tree(TREE).start()
    home = make_home(tmp_path)
    done = pressure(tree, "critical", 2)
    assert done["creating"] is False
    with pytest.raises(MoorageError) as e:
        create(tree, home)
    assert e.value.name == "busy" and e.value.error.retry_after_ms
    assert e.value.error.retryable
    assert pressure(tree, "moderate", 3)["creating"] is True
    sid = create(tree, home)
    r = tree.call("terminal", "term.exec", {"session": sid, "command": "echo back"})
    assert (r["exit_code"], r["output"], r["mode"]) == (0, "back", "integration")


def test_quality_one_turns_integration_off_and_the_exec_reports_the_fallback(make_tree,
                                                                            tmp_path):
    tree = make_tree(TREE).start()
    sid = create(tree, make_home(tmp_path))
    assert pressure(tree, "normal", 1)["integration"] is False
    r = tree.call("terminal", "term.exec", {"session": sid, "command": "echo degraded"})
    assert (r["exit_code"], r["output"], r["mode"], r["trusted"]) == \
        (None, "degraded", "no_integration", False)
    assert pressure(tree, "normal", 3)["integration"] is True
    r = tree.call("terminal", "term.exec", {"session": sid, "command": "echo whole"})
    assert (r["exit_code"], r["output"], r["mode"], r["parser"]) == \
        (0, "whole", "integration", "actor")
