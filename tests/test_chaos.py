"""A short run of perf/chaos.py on the shipped default tree: kills of any non-root process
under load, fuzzed frames, local abuse. The perf script is the measurement (`python -m
perf.chaos`: 60 s, 100,000 frames, the success rate); this checks what must never happen."""

from __future__ import annotations

import pytest

from moorage.protocol.errors import KINDS, Fault
from perf import chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_kills_of_any_process_but_the_root_leave_no_hang_no_wrong_result_no_silent_gap():
    r = chaos.chaos(duration=8.0, interval=0.2, signal_kind="kill")
    assert (r.hung, r.wrong, r.gaps_unreported, r.orphans) == (0, 0, 0, 0), r
    # every failure is classified and says what it means: a call that may have run, or a
    # transient failure of the service that a retry can cure (a deadline passed on a starved
    # machine, an actor between two lives); what is still stuck after the kills is a failure
    transient = {n for n, k in KINDS.items() if k.retryable and k.fault is Fault.SERVICE}
    assert set(r.errors) <= {"outcome_unknown"} | transient, r.notes["errors_by_op"]
    assert r.calls > 100 and r.recovery_s < 30, r
    assert not r.notes.get("failures"), r.notes


def test_kills_of_any_process_but_the_root_and_the_terminals_supervisor_keep_every_shell():
    """R14 within R1: the keeper, the terminal actor, the zygotes and the other actors
    SIGKILLed at random, two at once among them: the sessions' original shells are all
    alive at the end (PROTOCOL.md section 14: only the terminals supervisor's death loses
    them)."""
    r = chaos.chaos(duration=8.0, interval=0.2, signal_kind="kill", spare=("terminals",))
    assert (r.hung, r.wrong, r.gaps_unreported, r.orphans) == (0, 0, 0, 0), r
    assert r.notes["original_shells"] == "3/3" and not r.notes.get("failures"), r.notes
    assert "terminals" not in r.notes["kills"] and r.notes["stream"]["losses"] == 0, r.notes


def test_fuzzed_frames_at_every_actor_are_each_answered_and_kill_nobody():
    r = chaos.fuzz(frames=400)
    assert r.calls == r.ok and r.notes["restarted"] == [] and r.orphans == 0, r


def test_local_abuse_kills_no_actor_and_forges_nothing():
    r = chaos.abuse(big=False)
    assert r.notes["restarted"] == [] and r.orphans == 0, r
    assert r.notes["forged_pushes_refused"] >= 50 and r.notes["slo_data_lost"] == 0, r.notes
    assert r.notes["keeper_strangers_refused"] == 1 and r.notes["creates_ok"] == 20, r.notes
    assert r.notes["token_bytes_parsed"] == 256 << 10, r.notes


def test_kills_of_the_keeper_the_terminal_and_both_at_once_keep_every_shell_and_every_byte():
    """R14, short: three sessions printing; the keeper, the terminal actor, and both at once
    SIGKILLed in turn, six times: the same shells, each output whole and once, integration
    after (`python -m perf.chaos` runs it on 53 MB a session and 21 kills)."""
    r = chaos.custody(sessions=3, lines=300_000, kills=6)
    n = r.notes
    assert (n["same_shells"], n["every_byte_once"], n["integrated_after"]) == (
        "3/3", "3/3", "3/3"), n
    # (not n["losses"]: a gap open when the terminal is killed cannot be replayed by the
    # publisher that is gone, and is told as a Loss; the successor sends those bytes again
    # from the offset last acknowledged, so each output is still whole and once. Seen once
    # on a loaded machine.)
    assert (r.wrong, r.orphans) == (0, 0), r
    assert n["kills"] == {"ptykeeper": 2, "terminal": 2, "ptykeeper+terminal": 2}
