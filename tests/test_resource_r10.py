"""R10 end to end on the default tree: a memory hog in a terminal session drives the tree
through moderate, high and critical, and every actor's reaction is seen from outside.

The hog is `python3` in a shell of the terminal actor (so a descendant of the pty keeper,
which the resource actor finds by itself); it reads a number of MB per line from its PTY and
allocates and touches that much more. Each step waits on the `resource.level` stream or on
`supervisor.pub` (the resource actor's alerts, republished), never on a sleep:

  normal    cache warm, exec in `integration` mode
  moderate  the watcher's cache halved (fs.stats), command records off
  high      the cache cleared, shell integration off: an exec answers `no_integration`
  critical  quality 0 (watching paused), the hog alerted on supervisor.pub, then killed
  after     the level and quality come back; the exec is `integration` again, the
            watcher watches again, the hog's shell is alive and serves
"""

from __future__ import annotations

import sys
import time

import pytest

from tests.terminal_support import env_for, make_home
from tests.test_resource_tree import MB, Watch, timeline
from tests.test_tree_shed import Events

pytestmark = pytest.mark.timeout(180)

BUDGET_MB = 500
# Allocate (and touch: bytes are written) the MB asked on each line; say so; hold it all.
HOG = ("import sys; held = []\n"
       "for line in sys.stdin:\n"
       "    held.append(b'x' * (int(line) << 20)); print('held', sum(map(len, held)) >> 20,"
       " flush=True)\n")
FILES = 8
FILE_BYTES = 64 * 1024


def config(watched: str) -> str:
    # The default tree (no `children` here), with test heartbeats and a small PSS budget.
    return f"""
[supervisor]
heartbeat = {{ interval_ms = 200, misses = 5 }}

[actor.terminal]
shells = ["bash"]

[actor.watcher]
watch = ["{watched}"]

[actor.resource]
interval_s = 0.2
calm_interval_s = 1.0  # a calm tree: a hog is seen within a second
memory_budget_mb = {BUDGET_MB}
memory_metric = "pss"
# Memory alone moves the level here: a loaded machine makes the starting tree busy, and a
# level entered by CPU before the cache is warm trims nothing (bytes_freed 0 at moderate).
cpu_weight = 0.0
down_samples = 2
quality_up_samples = 1
kill_after_samples = 2
"""


def test_r10_a_memory_hog_in_a_session_degrades_the_tree_is_killed_and_all_comes_back(
        make_tree, tmp_path):
    watched = tmp_path / "w"
    watched.mkdir()
    tree = make_tree(config(str(watched))).start()
    w, ev = Watch(tree), Events(tree)
    home = make_home(tmp_path)
    c = tree.client

    def session() -> str:
        return c.call("terminal", "term.create", {"shell": "bash", "env": env_for(home)},
                      timeout=30)["session"]

    def exec_mode(sid: str) -> str:
        r = c.call("terminal", "term.exec", {"session": sid, "command": "echo r10"},
                   timeout=60)
        # Without integration there are no markers: the output, but no exit code.
        code = 0 if r["mode"] == "integration" else None
        assert (r["exit_code"], r["output"].strip()) == (code, "r10"), r
        return r["mode"]

    def cache() -> dict:
        return c.call("watcher", "fs.stats")["cache"]

    hog_sid, probe = session(), session()
    assert exec_mode(probe) == "integration"
    for i in range(FILES):
        (watched / f"f{i}").write_bytes(bytes([65 + i]) * FILE_BYTES)
        c.call("watcher", "fs.read", {"path": str(watched / f"f{i}")})
    warm = cache()
    assert warm["entries"] == FILES and warm["bytes"] == FILES * FILE_BYTES

    status = c.call("resource", "resource.status", {"fresh": True})
    baseline = status["totals"]["memory"] / MB
    assert baseline < 0.22 * BUDGET_MB, f"the idle tree alone is at {baseline:.0f} MB"
    roles = {r["id"] for r in status["processes"] if r["role"] == "actor"}
    assert {"terminal", "ptykeeper", "watcher", "parser", "metrics", "resource"} <= roles

    c.call("terminal", "term.write", {"session": hog_sid,
                                      "data": f"{sys.executable} -c \"$(cat <<'EOF'\n{HOG}"
                                              "EOF\n)\"\r"})

    # Typed ahead of the hog's start, a line would reach bash's readline, not the hog: wait
    # until a sample shows it (each fresh status answers after the next sample).
    end = time.monotonic() + 30
    while not any(r["role"] == "descendant" and r["name"].startswith("python")
                  for r in c.call("resource", "resource.status", {"fresh": True})["processes"]):
        assert time.monotonic() < end, "the hog did not start"

    def grow_to(share: float) -> None:
        now = c.call("resource", "resource.status", {"fresh": True})["totals"]["memory"] / MB
        c.call("terminal", "term.write", {"session": hog_sid,
                                          "data": f"{int(share * BUDGET_MB - now)}\r"})

    # Moderate (45% of the budget): the cache is halved, command records go.
    grow_to(0.45)
    moderate = w.level(lambda b: b["level"] == "moderate")
    assert moderate["quality"] == 2 and moderate["features_off"] == ["decorations"]
    trimmed = moderate["actions"]["watcher"]["cache"]
    assert trimmed["bytes_freed"] >= FILES * FILE_BYTES // 2
    assert cache()["bytes"] <= FILES * FILE_BYTES // 2

    # High (70%): the cache is cleared, shell integration goes: the exec says so.
    grow_to(0.70)
    high = w.level(lambda b: b["level"] == "high")
    assert high["quality"] == 1 and "shell_integration" in high["features_off"]
    assert high["actions"]["terminal"]["integration"] is False
    assert cache()["bytes"] == 0
    assert exec_mode(probe) == "no_integration"

    # Critical (past the budget): quality 0 pauses watching; the hog is alerted, then killed.
    m = ev.mark()
    grow_to(1.10)
    critical = w.level(lambda b: b["level"] == "critical")
    assert critical["quality"] == 0
    assert critical["actions"]["watcher"].get("watching") == "paused"
    warn = ev.alert("runaway", "warn", m)
    killed = ev.alert("runaway", "killed", m)
    assert warn["pid"] == killed["pid"] and killed["name"].startswith("python")
    assert killed["id"] == "ptykeeper"  # found under the keeper that owns the shells
    assert killed["memory"] > 0.4 * BUDGET_MB * MB

    # The hog is gone: level and quality return, features come back on.
    back = w.level(lambda b: b["level"] == "normal" and b["quality"] == 3)
    assert back["features_off"] == []
    after = w.seen[w.seen.index(critical) + 1:]
    resumed = [e for e in after if e["actions"]["watcher"].get("watching") == "resumed"]
    assert [e["quality"] for e in resumed] == [1]  # watching is back as quality leaves 0
    assert c.call("watcher", "fs.stats")["mode"] != "paused"
    assert exec_mode(probe) == "integration"
    assert exec_mode(hog_sid) in ("integration", "no_integration")  # its shell survived
    print(f"\nR10 on the default tree, budget {BUDGET_MB} MB PSS, idle {baseline:.0f} MB:\n"
          + timeline(w.seen, [warn, killed], w.first["time"]))

    levels = [e["level"] for e in w.seen]
    assert levels.index("moderate") < levels.index("high") < levels.index("critical")
    status = c.call("resource", "resource.status")
    assert status["counters"]["kills"] == 1 and status["level"] == "normal"
    assert killed["pid"] not in [p["pid"] for p in status["processes"]]
    assert all(tree.child(a)["restarts"] == 0 for a in ("terminal", "ptykeeper", "watcher"))
