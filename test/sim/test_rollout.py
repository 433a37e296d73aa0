"""Closed-loop episodes: chunks executed open loop, the frames in between reach the history."""
import numpy as np
import pytest

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.config import Config  # noqa: E402
from specprune_ros.model.checkpoint import load_tiny_random  # noqa: E402
from specprune_ros.policy import SpecPrunePolicy  # noqa: E402
from specprune_ros.sim.env import TabletopEnv  # noqa: E402
from specprune_ros.sim.rollout import run_policy_episode, wilson_interval  # noqa: E402


def watched_episode(**options):
    """A 24-step tiny-model episode of seed 3 and every observation its policy was shown."""
    env = TabletopEnv(max_steps=24)
    policy = SpecPrunePolicy(load_tiny_random("cpu"), Config())
    seen = []
    step = policy.step

    def recording(obs):
        seen.append(obs)
        return step(obs)
    policy.step = recording
    try:
        return run_policy_episode(env, policy, seed=3, **options), seen
    finally:
        env.close()


def test_an_episode_queries_once_per_chunk_and_feeds_the_history():
    result, seen = watched_episode()
    assert result.steps == 24 and not result.success and len(seen) == 3
    assert [o.stamp for o in seen] == pytest.approx([0.0, 0.8, 1.6])
    assert [len(o.history) for o in seen] == [0, 7, 7]                  # the periods in between
    assert result.kept_tokens[0] == 512 and result.kept_tokens[1] < 512   # unpruned first step, then pruned


def test_wilson_interval():
    low, high = wilson_interval(40, 50)
    assert low == pytest.approx(0.670, abs=1e-3) and high == pytest.approx(0.888, abs=1e-3)
    assert wilson_interval(50, 50)[1] == 1.0 and wilson_interval(0, 50)[0] == 0.0
    # rounding must not push the rate outside its own interval (6/6 did: the plot's error bar failed)
    for n in range(1, 61):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n)


def test_recorded_closed_loop_episodes_replay(tmp_path):
    from specprune_ros.common.bags import BagReader
    from specprune_ros.evaluation.replay import run_replay
    from specprune_ros.sim.record import record

    config = Config.from_dict({"device": "cpu"})
    result = record(tmp_path / "sim", config, episodes=1)
    steps = result["episodes"][0]["steps"]
    with BagReader(tmp_path / "sim") as reader:
        counts = {c.topic: c.msgcount for c in reader.reader.connections}
    assert counts["/image_primary"] == counts["/image_wrist"] == counts["/expert_action"] == steps
    assert counts["/instruction"] == 1
    run = run_replay(tmp_path / "sim", config.replace(max_observation_age_s=5.0), compare=False, motion="recorded",
                     max_steps=6)
    assert len(run.steps) == 6 and run.instruction == result["episodes"][0]["instruction"]


def test_a_frozen_camera_shows_the_episodes_first_frame_to_every_query_and_the_history():
    _, seen = watched_episode(frozen=("wrist",))
    with pytest.raises(ValueError, match="frozen camera 'side': not one of primary, wrist"):
        watched_episode(frozen=("side",))
    first_primary, first_wrist = seen[0].images
    wrists = [o.images[1] for o in seen] + [f.images[1] for o in seen for f in o.history]
    primaries = [o.images[0] for o in seen] + [f.images[0] for o in seen for f in o.history]
    assert len(seen) == 3 and all(np.array_equal(w, first_wrist) for w in wrists)
    assert not all(np.array_equal(p, first_primary) for p in primaries)   # the live camera sees the arm move


def test_the_delay_clock_executes_the_old_chunk_while_the_answer_is_on_its_way():
    from specprune_ros.latency import LatencyModel
    result, seen = watched_episode(latency=LatencyModel("250 ms", 250.0, 0.0, "fixed"))
    stamps = [round(o.stamp / 0.1) for o in seen]
    # 250 ms = 3 periods: each answer is used from its 4th action (the first it can still reach), and
    # the next query goes out 3 periods before the chunk's 8 actions run out, so it lands in time
    assert stamps == [0, 5, 10, 15, 20] and [len(o.history) for o in seen] == [0, 4, 4, 4, 4]
    assert result.holds == 3                                   # only before the first answer
    assert result.skipped == 3 * 5                             # actions 0-2 of every chunk executed
    assert result.chunk_age_s == pytest.approx([0.1 * k for k in (3, 4, 5, 6, 7)] * 4 + [0.3])
    assert result.steps == 24 and len(result.chunk_age_s) + result.holds == 24


def test_re_planning_keeps_the_old_chunk_running_while_the_query_is_on_its_way():
    from specprune_ros.latency import LatencyModel
    result, seen = watched_episode(latency=LatencyModel("250 ms", 250.0, 0.0, "fixed"), execute=4)
    # a query every 4 actions (the chunk's 8 leave slack for the 3-period answer): each new chunk
    # takes over at its action 3, the first it can still reach, while the old one runs meanwhile
    assert [round(o.stamp / 0.1) for o in seen] == [0, 4, 8, 12, 16, 20]
    assert [len(o.history) for o in seen] == [0, 3, 3, 3, 3, 3]
    assert result.holds == 3 and result.skipped == 3 * 6
    assert result.chunk_age_s == pytest.approx([0.3, 0.4, 0.5, 0.6] * 5 + [0.3])
    assert len(result.handover_step_m) == 5 and len(result.within_step_m) == 21 - 1 - 5


def test_a_delay_longer_than_half_a_chunk_holds_and_zero_delay_is_chunk_rate():
    from specprune_ros.latency import LatencyModel, parse_latency
    policy = SpecPrunePolicy(load_tiny_random("cpu"), Config())
    env = TabletopEnv(max_steps=24)
    slow = run_policy_episode(env, policy, seed=3, latency=parse_latency("500"))
    instant = run_policy_episode(env, policy, seed=3, latency=LatencyModel("0 ms", 0.0, 0.0, "fixed"))
    env.close()
    # 5 periods: queries at 0, 5, 10, ... (one in flight); each chunk runs actions 5-7, then 2 holds
    assert slow.holds == 5 + 2 * 3 + 1 and len(slow.latency_ms) == 5
    assert slow.chunk_age_s == pytest.approx([0.5, 0.6, 0.7] * 4)
    assert instant.holds == 0 and instant.skipped == 0 and len(instant.latency_ms) == 3
    assert instant.chunk_age_s == pytest.approx([0.1 * k for k in range(8)] * 3)
    for bad in ("-5", "fast", "nan"):
        with pytest.raises(ValueError, match=f"latency '{bad}'"):
            parse_latency(bad)
