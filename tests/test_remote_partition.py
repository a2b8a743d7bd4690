"""Partitions (R9): a tree in one network namespace, its client in another, a veth pair
between them (addresses on the pair only), the link downed for 100 ms, 1 s and 10 s while
the client calls and follows a stream over tcp with CURVE. Idempotent calls are answered
after the heal; non-idempotent ones succeed once or end `outcome_unknown`, never run twice;
the stream resumes with replay and nothing is missing; no call outlives its deadline.
Skipped, saying why, where network namespaces cannot be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.protocol import curve
from tests.conftest import ROOT
from tests.remote_support import FAKE_TREE, NetnsTree, make_keys

pytestmark = pytest.mark.timeout(180)

CUTS = ("0.1", "1", "10")
PORT = 47000
DEADLINE_SLACK_S = 2.0  # a loaded machine's scheduling on top of a call's own timeout


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns_pair() -> Iterator[dict[str, str]]:
    """Two namespaces joined by a veth pair: the tree's (.1) and the client's (.2)."""
    tag = f"{os.getpid() % 100000}"
    names = {"server": f"mrs{tag}", "client": f"mrc{tag}", "server_if": f"mvs{tag}",
             "client_if": f"mvc{tag}"}
    made = ip("netns", "add", names["server"])
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here (`ip netns add`: "
                    f"{made.stderr.strip()}); partition tests need root or CAP_SYS_ADMIN")
    try:
        a, b = divmod(os.getpid() % 16000, 250)
        net = f"10.{100 + a % 100}.{b}"
        names.update(server_ip=f"{net}.1", client_ip=f"{net}.2")
        steps = [
            ("netns", "add", names["client"]),
            ("link", "add", names["server_if"], "type", "veth", "peer", "name",
             names["client_if"]),
            ("link", "set", names["server_if"], "netns", names["server"]),
            ("link", "set", names["client_if"], "netns", names["client"]),
            ("-n", names["server"], "addr", "add", f"{names['server_ip']}/30", "dev",
             names["server_if"]),
            ("-n", names["client"], "addr", "add", f"{names['client_ip']}/30", "dev",
             names["client_if"]),
            ("-n", names["server"], "link", "set", names["server_if"], "up"),
            ("-n", names["client"], "link", "set", names["client_if"], "up"),
            ("-n", names["server"], "link", "set", "lo", "up"),
            ("-n", names["client"], "link", "set", "lo", "up"),
        ]
        for step in steps:
            out = ip(*step)
            assert out.returncode == 0, f"ip {' '.join(step)}: {out.stderr}"
        yield names
    finally:
        ip("netns", "del", names["client"])
        ip("netns", "del", names["server"])


def test_cuts_of_100_ms_1_s_and_10_s_answer_idempotent_calls_after_the_heal_and_run_nothing_twice(
        netns_pair: dict[str, str], runtime_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    server_dir, client_dir, _ = make_keys(tmp_path)
    monkeypatch.setenv(curve.KEYS_ENV, str(server_dir))
    tree = NetnsTree(runtime_dir, FAKE_TREE.format(host=netns_pair["server_ip"], port=PORT),
                     netns_pair["server"])
    try:
        tree.start()
        driver = subprocess.run(
            ["ip", "netns", "exec", netns_pair["client"], sys.executable, "-m",
             "tests.remote_partition", str(runtime_dir / "tree.json"), str(client_dir),
             str(runtime_dir), netns_pair["client_if"], *CUTS],
            capture_output=True, text=True, cwd=ROOT, timeout=150)
        assert driver.returncode == 0, driver.stderr[-3000:]
        rows = [json.loads(line) for line in driver.stdout.splitlines()]
    finally:
        tree.stop()
    with capsys.disabled():
        print()
        for r in rows:
            print(json.dumps(r))
    assert [r["cut_s"] for r in rows] == [float(c) for c in CUTS]
    for r in rows:
        idem, eff, stream = r["idempotent"], r["non_idempotent"], r["stream"]
        # every idempotent call was answered: the cut only delayed it
        assert idem["answered"] == idem["made"], r
        # a non-idempotent call ran once (ok) or may have run (outcome_unknown), never twice;
        # circuit_open ones were never sent, and deadline_expired ones were held by the cut
        # past their deadline and refused unrun by the actor (its first attempt: a pinned
        # resend past its deadline is outcome_unknown)
        assert set(eff["outcomes"]) <= {"ok", "outcome_unknown", "circuit_open",
                                        "deadline_expired"}, r
        assert eff["duplicates"] == 0, r
        assert eff["ok"] <= eff["effects_performed"] <= eff["ok"] + eff["outcome_unknown"], r
        assert stream["duplicates"] == 0 and stream["missing"] == 0, r
        assert r["max_overrun_s"] <= DEADLINE_SLACK_S, r
    long_cut = rows[-1]
    # 10 s is past the heartbeat's 3 s: the link was seen dead, calls in flight were resent
    # (idempotent) or ended outcome_unknown (not), and the breaker opened on the failures
    assert long_cut["idempotent"]["answered_across_cut"] >= 1, long_cut
    assert long_cut["non_idempotent"]["outcome_unknown"] >= 1, long_cut
    breaker = long_cut["non_idempotent"]["breaker"]
    assert breaker.get("open", 0) >= 1 and breaker.get("half_open", 0) >= 1, long_cut
    assert long_cut["non_idempotent"]["outcomes"].get("circuit_open", 0) >= 1, long_cut
