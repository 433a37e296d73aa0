"""The chunk executor's rules: time alignment, hand-over, hold, limits, stop."""
import numpy as np
import pytest

from specprune_ros.config import Config, ConfigError
from specprune_ros.execution import Chunk, ChunkExecutor

DT = 0.1


def ns(seconds):
    """Times go to the executor in integer nanoseconds, as header stamps are."""
    return round(seconds * 1e9)


def chunk(stamp, step, size=8, base=0.0):
    """Action k of chunk `step` moves x by 1 mm * (k + 1) + base (so every action is recognisable)."""
    actions = np.zeros((size, 7))
    actions[:, 0] = 0.001 * (np.arange(size) + 1) + base
    actions[:, 6] = 1.0
    return Chunk(actions, ns(stamp), step)


def executor(**knobs):
    cfg = Config().replace(**{f"executor.{k}": v for k, v in knobs.items()})
    return ChunkExecutor(cfg.executor, DT)


def test_actions_follow_the_clock_and_a_late_chunk_skips_the_past():
    ex = executor()
    ex.submit(chunk(10.0, 1))
    first = ex.command(ns(10.0))
    assert first.index == 0 and first.skipped == 0 and first.action[0] == pytest.approx(0.001)
    assert ex.command(ns(10.1)).index == 1
    # a slow step: the next chunk (observation at 10.2) arrives at 10.55 - actions 0-2 are past
    ex.submit(chunk(10.2, 2, base=0.01))
    late = ex.command(ns(10.55))
    assert late.chunk.step == 2 and late.index == 3 and late.skipped == 3
    assert late.action[0] == pytest.approx(0.01 + 0.004)
    assert ex.counters.skipped == 3
    # the next period continues from there: nothing replayed, nothing skipped
    nxt = ex.command(ns(10.65))
    assert nxt.index == 4 and nxt.skipped == 0


def test_period_boundaries_are_exact_on_nanosecond_stamps():
    ex = executor()
    ex.submit(chunk(1.2, 1))
    assert [ex.command(ns(1.2 + k * DT)).index for k in range(8)] == list(range(8))


def test_hold_once_when_the_chunk_runs_out_then_act_again():
    ex = executor()
    ex.submit(chunk(0.0, 1, size=2))
    assert not ex.command(ns(0.0)).hold and not ex.command(ns(0.1)).hold
    hold = ex.command(ns(0.2))
    assert hold.hold and "ran out" in hold.reason
    assert ex.command(ns(0.3)) is None                       # one hold command, not one per period
    ex.submit(chunk(0.3, 2))
    assert not ex.command(ns(0.35)).hold
    assert ex.counters.holds == 1


def test_no_chunk_and_old_chunks_hold_with_the_reason():
    ex = executor(max_chunk_age_s=0.5)
    assert "no chunk yet" in ex.command(ns(0.0)).reason
    ex.submit(chunk(1.0, 1, size=50))
    assert not ex.command(ns(1.4)).hold
    old = ex.command(ns(1.6))
    assert old.hold and "max_chunk_age_s" in old.reason


def test_reordered_and_malformed_chunks_are_refused():
    ex = executor()
    assert ex.submit(chunk(2.0, 2))
    assert not ex.submit(chunk(1.0, 1))                  # reordered delivery: never go back in time
    assert not ex.submit(Chunk(np.full((8, 7), np.nan), ns(3.0), 3))
    assert not ex.submit(Chunk(np.zeros((8, 3)), ns(3.0), 3))
    assert ex.counters.rejected == {"not newer than the chunk in use": 1, "malformed": 2}
    assert ex.command(ns(2.0)).chunk.step == 2


def test_replace_takes_the_newest_and_ensemble_averages_with_acts_weights():
    replace = executor(handover="replace")
    ensemble = executor(handover="ensemble", ensemble_decay=0.5)
    for ex in (replace, ensemble):
        ex.submit(chunk(0.0, 1, base=0.0))
        ex.submit(chunk(0.1, 2, base=0.01))
    assert replace.command(ns(0.15)).action[0] == pytest.approx(0.01 + 0.001)
    # old chunk: action 1 (0.002), new chunk: action 0 (0.011); weights exp(-0.5 * [0, 1])
    w = np.exp(-0.5 * np.arange(2))
    expected = (w[0] * 0.002 + w[1] * 0.011) / w.sum()
    assert ensemble.command(ns(0.15)).action[0] == pytest.approx(expected)


def test_limits_clamp_translation_rotation_and_the_workspace_box():
    ex = executor(max_translation=0.02, max_rotation=0.1, workspace_min=[0.0, -1.0, 0.1],
                  workspace_max=[1.0, 1.0, 1.0])
    action = np.array([0.03, 0.04, 0.0, 0.3, 0.0, 0.4, 1.0])
    limited, clamped = ex.limit(action)
    assert clamped
    assert np.linalg.norm(limited[:3]) == pytest.approx(0.02)
    assert limited[:3] / np.linalg.norm(limited[:3]) == pytest.approx(action[:3] / np.linalg.norm(action[:3]))
    assert np.linalg.norm(limited[3:6]) == pytest.approx(0.1) and limited[6] == 1.0
    # 5 mm above the floor of the box, commanded 1 cm down: stops at the floor
    down, clamped = ex.limit(np.array([0.0, 0.0, -0.01, 0, 0, 0, 1.0]), position=np.array([0.5, 0.0, 0.105]))
    assert clamped and down[2] == pytest.approx(-0.005)
    # outside the box already (z 0.05): may move back in, never further out
    back, _ = ex.limit(np.array([0.0, 0.0, 0.01, 0, 0, 0, 1.0]), position=np.array([0.5, 0.0, 0.05]))
    out, _ = ex.limit(np.array([0.0, 0.0, -0.01, 0, 0, 0, 1.0]), position=np.array([0.5, 0.0, 0.05]))
    assert back[2] == pytest.approx(0.01) and out[2] == pytest.approx(0.0)
    inside, clamped = ex.limit(np.array([0.001, 0, 0, 0, 0, 0, -1.0]), position=np.array([0.5, 0.0, 0.5]))
    assert not clamped and inside[0] == pytest.approx(0.001)


def test_stop_holds_at_once_and_drops_the_chunks_in_hand():
    ex = executor()
    ex.submit(chunk(0.0, 1))
    assert not ex.command(ns(0.0)).hold
    ex.stop("estop", "e-stop pressed")
    hold = ex.command(ns(0.1))
    assert hold.hold and "e-stop pressed" in hold.reason
    assert not ex.submit(chunk(0.15, 2))                 # planned during the stop: never executed
    ex.release("estop")
    assert ex.command(ns(0.2)) is None                       # still holding: the old chunk is gone
    ex.submit(chunk(0.2, 2))
    assert not ex.command(ns(0.25)).hold


def test_workspace_needs_both_corners():
    with pytest.raises(ConfigError, match="workspace"):
        Config().replace(**{"executor.workspace_min": [0.0, 0.0, 0.0]})
    with pytest.raises(ConfigError, match="below"):
        Config().replace(**{"executor.workspace_min": [0.0, 0.0, 1.0], "executor.workspace_max": [1.0, 1.0, 0.5]})


def test_the_query_schedule_moves_a_query_per_chunk_earlier_by_the_p95_latency():
    from specprune_ros.execution import QuerySchedule
    schedule = QuerySchedule()
    assert schedule.lead_s == 0.0 and schedule.interval_s(0.8, 0.8) == 0.8        # nothing measured yet
    for latency in [0.05] * 40 + [0.12] * 9 + [2.0]:        # 50 latencies, one outlier
        schedule.observe(latency)
    assert schedule.lead_s == 0.12                           # the p95: the steady tail covered, the outlier not
    assert schedule.interval_s(0.8, 0.8) == pytest.approx(0.68)     # one query per 8-action chunk: 0.12 s early
    assert schedule.interval_s(0.4, 0.8) == 0.4                     # re-planning with slack: not moved
    assert schedule.interval_s(0.1, 0.8) == 0.12                    # never two queries in flight
    for _ in range(50):
        schedule.observe(0.5)                                # over half the horizon: one query in flight
    assert schedule.lead_s == 0.5 and schedule.interval_s(0.8, 0.8) == 0.5
    schedule.observe(float("nan"))
    schedule.observe(-1.0)
    assert len(schedule.latencies) == 50 and schedule.lead_s == 0.5
    with pytest.raises(ValueError, match="quantile"):
        QuerySchedule(quantile=0.0)


def test_the_delay_clock_plans_the_next_query_before_the_chunk_runs_out_and_after_the_answer():
    """In whole periods: one query per 8-action chunk answered 3 periods later goes out again 5
    periods on (its answer lands as the chunk runs out); re-planning every 4 keeps its 4; an
    answer later than the interval holds the next query back until it is in (one in flight)."""
    from specprune_ros.execution import QuerySchedule

    chunk = QuerySchedule()
    assert chunk.plan(10, 3, 8, 8) == 15
    replanning = QuerySchedule()
    assert replanning.plan(10, 1, 4, 8) == 14
    slow = QuerySchedule()
    assert slow.plan(0, 6, 8, 8) == 6 and slow.plan(6, 7, 4, 8) == 13    # p95 of (6, 7) is 7
