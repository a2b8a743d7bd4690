"""The pressure formula, levels, quality and escalation, fed numbers and a fake clock."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import pytest

from moorage.actors.resource import (
    ENTER,
    LEVELS,
    Escalation,
    LevelTracker,
    PressureModel,
    QualityTracker,
    Reading,
    Shedder,
    pick_runaway,
    raw_level,
)
from moorage.actors.resource.levels import CRITICAL, HIGH, MODERATE, NORMAL
from moorage.actors.resource.override_file import OverrideFile

pytestmark = pytest.mark.timeout(30)

MB = 1024 * 1024
GB = 1024 * MB


def reading(memory_mb: float = 0, cores: float = 0.0, total_gb: float = 16,
            available_gb: float = 12) -> Reading:
    return Reading(int(memory_mb * MB), cores, int(total_gb * GB), int(available_gb * GB))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed_all(tracker: LevelTracker, pressures: list[float]) -> list[int]:
    return [tracker.feed(p) for p in pressures]


def transitions(levels: list[int]) -> int:
    """Changes of level, counting from the tracker's start at normal."""
    return sum(1 for a, b in itertools.pairwise([NORMAL, *levels]) if a != b)


# --- the formula -------------------------------------------------------------------------------


def test_memory_term_is_the_share_of_the_budget():
    m = PressureModel(1000 * MB, 2.0)
    p = m.feed(reading(memory_mb=450))
    assert p.value == 45 and p.memory == pytest.approx(45.0)
    assert p.cpu == 0 and p.system == 0


def test_pressure_is_the_largest_term_and_is_clamped_to_100():
    m = PressureModel(100 * MB, 2.0)
    assert m.feed(reading(memory_mb=250)).value == 100
    m = PressureModel(1000 * MB, 2.0, cpu_weight=0.8)
    p = m.feed(reading(memory_mb=100, cores=1.0))  # memory 10, cpu 0.8 * 50 = 40
    assert p.value == 40 and p.components() == {"memory": 10.0, "cpu": 40.0, "system": 0.0}


def test_cpu_alone_never_reaches_critical_with_the_default_weight():
    m = PressureModel(1000 * MB, 2.0)
    values = [m.feed(reading(cores=8.0)).value for _ in range(10)]
    assert max(values) == 80 and raw_level(80) == HIGH


def test_cpu_is_averaged_over_the_last_samples_so_one_burst_is_not_a_level():
    m = PressureModel(1000 * MB, 2.0, cpu_samples=5)
    for _ in range(4):
        m.feed(reading(cores=0.0))
    burst = m.feed(reading(cores=2.0))  # one sample with both cores busy
    assert burst.cpu == pytest.approx(80 / 5) and raw_level(burst.value) == NORMAL


def test_the_machine_running_out_of_memory_raises_pressure_below_the_reserve():
    m = PressureModel(1000 * MB, 2.0, system_reserve=0.10)
    assert m.feed(reading(total_gb=10, available_gb=2)).system == 0
    assert m.feed(reading(total_gb=10, available_gb=0.5)).value == 50
    assert m.feed(reading(total_gb=10, available_gb=0.0)).value == 100
    off = PressureModel(1000 * MB, 2.0, system_reserve=0.0)
    assert off.feed(reading(total_gb=10, available_gb=0.0)).value == 0


@pytest.mark.parametrize("kw", [{"cpu_weight": 1.5}, {"system_reserve": 1.0},
                                {"cpu_samples": 0}])
def test_a_model_that_cannot_work_is_refused(kw):
    with pytest.raises(ValueError):
        PressureModel(1000 * MB, 2.0, **kw)


# --- levels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pressure", "level"), [
    (0, "normal"), (30, "normal"), (31, "moderate"), (60, "moderate"), (61, "high"),
    (80, "high"), (81, "critical"), (100, "critical")])
def test_levels_follow_the_seed_boundaries(pressure, level):
    assert LEVELS[raw_level(pressure)] == level
    assert LEVELS[LevelTracker().feed(pressure)] == level  # going up is immediate


def test_levels_can_jump_straight_to_critical_and_back_down_in_one_step():
    t = LevelTracker(margin=5, down_samples=3)
    assert t.feed(95) == CRITICAL
    assert feed_all(t, [10, 10, 10]) == [CRITICAL, CRITICAL, NORMAL]


def test_a_level_is_left_only_below_its_boundary_minus_the_margin():
    t = LevelTracker(margin=5, down_samples=1)
    t.feed(70)
    assert t.feed(ENTER[HIGH] - 5) == HIGH  # 56: within the margin, held
    assert t.feed(ENTER[HIGH] - 6) == MODERATE  # 55: below it


def test_leaving_needs_consecutive_samples_and_one_high_sample_restarts_the_count():
    t = LevelTracker(margin=5, down_samples=3)
    t.feed(85)
    assert feed_all(t, [50, 50, 90, 50, 50]) == [CRITICAL] * 5
    assert t.feed(50) == MODERATE


def test_going_down_lands_on_the_highest_level_seen_over_the_streak():
    t = LevelTracker(margin=5, down_samples=3)
    t.feed(90)
    assert feed_all(t, [10, 65, 10]) == [CRITICAL, CRITICAL, HIGH]


def test_up_samples_require_the_pressure_to_stay_up_and_enter_the_lowest_level_seen():
    t = LevelTracker(up_samples=2)
    assert feed_all(t, [90, 10, 90]) == [NORMAL, NORMAL, NORMAL]
    assert t.feed(65) == HIGH


@pytest.mark.parametrize("boundary", [ENTER[MODERATE], ENTER[HIGH], ENTER[CRITICAL]])
def test_pressure_hovering_at_a_boundary_does_not_flap(boundary):
    rng = random.Random(boundary)
    t = LevelTracker(margin=5, up_samples=1, down_samples=3)
    noisy = [boundary + rng.choice([-4, -3, -2, -1, 0, 1, 2, 3]) for _ in range(500)]
    levels = feed_all(t, noisy)
    assert transitions(levels) == 1  # entered once, never left
    assert levels[-1] == raw_level(boundary)
    # Without hysteresis the same input changes level on most samples.
    assert transitions([raw_level(p) for p in noisy]) > 100


def test_alternating_across_a_boundary_every_sample_does_not_flap():
    t = LevelTracker()
    assert t.feed(79) == HIGH
    levels = feed_all(t, [82, 79] * 50)
    assert set(levels) == {CRITICAL}


@pytest.mark.parametrize("kw", [{"margin": -1}, {"up_samples": 0}, {"down_samples": 0}])
def test_a_level_tracker_that_cannot_work_is_refused(kw):
    with pytest.raises(ValueError):
        LevelTracker(**kw)


# --- quality -----------------------------------------------------------------------------------


def test_quality_drops_at_once_with_the_level():
    q = QualityTracker(up_samples=3, clock=Clock())
    assert [q.feed(lvl) for lvl in (NORMAL, MODERATE, HIGH, CRITICAL)] == [3, 2, 1, 0]


def test_quality_comes_back_one_step_per_up_samples():
    q = QualityTracker(up_samples=3, clock=Clock())
    q.feed(CRITICAL)
    got = [q.feed(NORMAL) for _ in range(9)]
    assert got == [0, 0, 1, 1, 1, 2, 2, 2, 3]


def test_quality_recovery_restarts_when_the_level_rises_again():
    q = QualityTracker(up_samples=2, clock=Clock())
    q.feed(HIGH)
    assert [q.feed(lvl) for lvl in (NORMAL, HIGH, NORMAL, NORMAL)] == [1, 1, 1, 2]


def test_quality_does_not_flap_when_the_level_does():
    q = QualityTracker(up_samples=3, clock=Clock())
    got = [q.feed(lvl) for lvl in [NORMAL, MODERATE] * 20]
    assert sum(1 for a, b in itertools.pairwise(got) if a != b) == 1 and got[-1] == 2


def test_an_override_wins_until_it_expires_and_the_derived_quality_is_kept_underneath():
    clock = Clock()
    q = QualityTracker(up_samples=1, clock=clock)
    q.set_override(0, 30)
    assert q.feed(NORMAL) == 0 and q.derived == 3
    assert q.override_left() == pytest.approx(30)
    clock.now += 29.9
    assert q.effective() == 0
    clock.now += 0.2
    assert q.effective() == 3 and q.override_left() is None


def test_an_override_of_zero_seconds_removes_it():
    q = QualityTracker(clock=Clock())
    q.set_override(1, 60)
    q.set_override(3, 0)
    assert q.effective() == 3 and q.override_left() is None
    with pytest.raises(ValueError):
        q.set_override(4, 10)


# --- escalation ----------------------------------------------------------------------------------


@dataclass
class R:
    pid: int
    role: str
    memory: int


def test_the_runaway_is_the_largest_descendant_never_an_actor_and_never_a_small_one():
    rows = [R(1, "supervisor", 900), R(2, "zygote", 800), R(3, "actor", 700),
            R(4, "descendant", 300), R(5, "descendant", 500), R(6, "descendant", 20)]
    assert pick_runaway(rows, 100).pid == 5
    assert pick_runaway(rows, 600) is None
    assert pick_runaway(rows[:3], 0) is None


def test_critical_alerts_first_then_kills_after_kill_after_samples():
    e = Escalation(kill_after=2, persist_after=100)
    cand = R(7, "descendant", 10)
    assert [d.kind for d in e.feed(HIGH, cand)] == []
    assert [(d.kind, d.pid) for d in e.feed(CRITICAL, cand)] == [("warn", 7)]
    assert [(d.kind, d.pid) for d in e.feed(CRITICAL, cand)] == [("kill", 7)]
    # Critical persists with a new candidate: alerted, and killed only after 2 more samples.
    nxt = R(8, "descendant", 5)
    assert [d.kind for d in e.feed(CRITICAL, nxt)] == ["warn"]
    assert [d.kind for d in e.feed(CRITICAL, nxt)] == ["kill"]


def test_leaving_critical_before_the_grace_runs_out_kills_nothing():
    e = Escalation(kill_after=2)
    cand = R(7, "descendant", 10)
    assert [d.kind for d in e.feed(CRITICAL, cand)] == ["warn"]
    assert e.feed(HIGH, cand) == []
    assert e.feed(CRITICAL, cand) == []  # a new episode: its streak starts again, no kill
    assert [d.kind for d in e.feed(CRITICAL, cand)] == ["kill"]


def test_a_pressure_wavering_at_the_threshold_alerts_once_until_it_has_been_quiet():
    """80, 81, 80, 81...: the same runaway is warned of once, not at every return; after
    `forget_after` samples under critical it is news again."""
    e = Escalation(kill_after=5, forget_after=3)
    cand = R(7, "descendant", 10)
    kinds = [d.kind for lvl in [CRITICAL, HIGH] * 6 for d in e.feed(lvl, cand)]
    assert kinds == ["warn"]
    for _ in range(3):
        e.feed(HIGH, cand)
    assert [d.kind for d in e.feed(CRITICAL, cand)] == ["warn"]
    e2 = Escalation(forget_after=3)
    kinds = [d.kind for lvl in [CRITICAL, HIGH] * 6 for d in e2.feed(lvl, None)]
    assert kinds == ["no_runaway"]


def test_critical_without_a_runaway_alerts_once_and_persisting_alerts_once():
    e = Escalation(kill_after=2, persist_after=3)
    kinds = [[d.kind for d in e.feed(CRITICAL, None)] for _ in range(6)]
    assert kinds == [["no_runaway"], [], ["persisting"], [], [], []]


def test_with_killing_off_the_runaway_is_only_alerted():
    e = Escalation(kill_after=1, kill=False)
    cand = R(7, "descendant", 10)
    kinds = [d.kind for _ in range(5) for d in e.feed(CRITICAL, cand)]
    assert kinds == ["warn"]


# --- shedding the non-essential actors --------------------------------------------------------


def run_shedder(sh: Shedder, e: Escalation, levels: list[int]) -> list[str | None]:
    """Feed each level as both the raw and the held level; a decision is taken as done."""
    out = []
    for lvl in levels:
        e.feed(lvl, None)
        d = sh.feed(e.episode, lvl)
        if d is not None:
            sh.shed = d == "shed"
        out.append(d)
    return out


def test_shedding_waits_for_critical_to_persist_and_a_dip_starts_the_count_again():
    sh, e = Shedder(persist_after=3, restore_after=2), Escalation(persist_after=3)
    got = run_shedder(sh, e, [CRITICAL, CRITICAL, HIGH, CRITICAL, CRITICAL, CRITICAL])
    assert got == [None, None, None, None, None, "shed"]


def test_shed_actors_come_back_after_calm_samples_in_a_row_at_or_below_restore_level():
    sh, e = Shedder(persist_after=1, restore_after=3, restore_level="moderate"), Escalation()
    got = run_shedder(sh, e, [CRITICAL, HIGH, MODERATE, MODERATE, HIGH, NORMAL, MODERATE,
                              NORMAL, NORMAL])
    # HIGH is not calm enough, and one HIGH sample restarts the count.
    assert got == ["shed", None, None, None, None, None, None, "restore", None]


def test_a_pressure_hovering_at_the_critical_boundary_sheds_once_and_does_not_flap():
    sh, e = Shedder(persist_after=2, restore_after=3), Escalation(persist_after=2)
    levels = LevelTracker()
    held = []
    for p in [82, 79, 83, 85, 80, 81, 79, 82, 80, 83] * 3:
        lvl = levels.feed(p)
        e.feed(raw_level(p), None)
        d = sh.feed(e.episode, lvl)
        if d is not None:
            sh.shed = d == "shed"
        held.append(d)
    assert [d for d in held if d] == ["shed"]


def test_a_disabled_shedder_never_sheds_and_a_bad_one_is_refused():
    sh, e = Shedder(persist_after=1, enabled=False), Escalation()
    assert run_shedder(sh, e, [CRITICAL] * 5) == [None] * 5
    for kw in ({"persist_after": 0}, {"restore_after": 0}, {"restore_level": "critical"},
               {"restore_level": "calm"}):
        with pytest.raises(ValueError):
            Shedder(**kw)


# --- the quality override on disk -------------------------------------------------------------


def test_a_saved_override_loads_with_what_is_left_and_is_removed_when_cleared(tmp_path):
    f = OverrideFile(tmp_path / "resource.quality")
    assert f.load() is None
    f.save(1, 3600)
    quality, left = f.load()
    assert quality == 1 and 3600 - 600 < left <= 3600  # the test's timeout bounds the drift
    f.save(2, 0)  # a duration of 0 removes the override
    assert not f.path.exists() and f.load() is None


@pytest.mark.parametrize("text", ["{", "[]", '{"quality": 7, "until": 9e99}',
                                  '{"quality": 1, "until": "soon"}',
                                  '{"quality": 1, "until": 1}'])
def test_an_unreadable_malformed_or_expired_override_file_is_dropped(tmp_path, text):
    f = OverrideFile(tmp_path / "resource.quality")
    f.path.write_text(text)
    assert f.load() is None
    assert not f.path.exists()
