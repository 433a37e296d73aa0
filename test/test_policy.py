import math

import numpy as np
import pytest

from specprune_ros.config import Config, ConfigError
from specprune_ros.model.checkpoint import load_tiny_random
from specprune_ros.model.processing import ObservationError
from specprune_ros.policy import Observation, SpecPrunePolicy
from specprune_ros.synthetic import INSTRUCTION, episode

EPISODE = episode(8)


@pytest.fixture(scope="module")
def loaded():
    return load_tiny_random("cpu")


@pytest.fixture
def policy(loaded):
    return SpecPrunePolicy(loaded, Config())


def obs(i, **kw):
    s = EPISODE[i]
    return Observation([s.primary, s.wrist], s.proprio, INSTRUCTION, stamp=float(i), **kw)


def test_first_step_unpruned_then_pruned_with_consistent_stats(policy):
    first = policy.step(obs(0))
    assert first.actions.shape == (8, 7) and first.actions.dtype == np.float32
    s = first.stats
    assert s.step == 0 and s.fallback_reason == "no prior (first step)"
    assert s.vision_tokens_kept == s.vision_tokens_total == 512 and s.flops_ratio == pytest.approx(1.0)
    assert math.isnan(s.global_recall)

    out = policy.step(obs(1))
    s = out.stats
    k = policy.config.pruning
    assert s.step == 1 and s.fallback_reason == "" and s.pruning_enabled and s.alpha == Config().pruning.alpha
    non_vision = s.tokens_per_layer[0] - 512
    assert len(s.tokens_per_layer) == 32 and s.tokens_per_layer[2] == non_vision + s.vision_tokens_kept
    assert s.vision_tokens_kept == int(out.kept_mask.sum()) < 512
    kg = round(k.alpha * k.k_global * (k_scale := (40 / 24 if s.fine_mode else 1.0)))
    assert s.global_selected <= 2 * 2 * kg                          # 2 global layers x 2 cameras
    assert s.local_selected <= 2 * 2 * round(k.alpha * k.k_local * k_scale)
    assert s.dynamic_selected <= 2 * round(k.alpha * k.k_dynamic * k_scale)
    assert max(s.global_selected, s.local_selected, s.dynamic_selected) <= s.vision_tokens_kept
    assert 0 < s.flops_ratio < 1 and 0 <= s.global_recall <= 1
    assert s.history_frames == 1 and s.latency_ms > s.overhead_ms > 0
    # Actions are un-normalized with the statistics: gripper (mask false) passes through.
    np.testing.assert_allclose(out.actions[:, 6], out.actions_normalized[:, 6], rtol=1e-6)


def test_live_changes_apply_from_the_next_step(policy):
    policy.step(obs(0))
    policy.set_config(policy.config.replace(**{"pruning.alpha": 0.4}))
    assert policy.config.pruning.alpha == Config().pruning.alpha     # not yet: between steps only
    s = policy.step(obs(1)).stats
    assert s.alpha == 0.4
    policy.set_config(policy.config.replace(**{"pruning.enabled": False}))
    s = policy.step(obs(2)).stats
    assert not s.pruning_enabled and s.vision_tokens_kept == 512 and s.flops_ratio == pytest.approx(1.0)


def test_read_only_parameters_cannot_change_while_running(policy):
    with pytest.raises(ConfigError, match="model_path cannot change while running"):
        policy.set_config(policy.config.replace(model_path="/other"))


def test_reset_and_a_new_instruction_drop_the_prior(policy):
    policy.step(obs(0))
    assert policy.step(obs(1)).stats.fallback_reason == ""
    policy.reset()
    s = policy.step(obs(2)).stats
    assert s.step == 0 and s.fallback_reason == "no prior (first step)"
    policy.step(obs(3))
    other = obs(4)
    other.instruction = "open the drawer"
    assert policy.step(other).stats.fallback_reason == "no prior (first step)"


def test_measured_motion_drives_the_controller(policy):
    policy.step(obs(0))
    slow_down = np.array([0.05, 0.0, -0.05, 0.0, 0.0, 0.0])
    s = policy.step(obs(1, motion=slow_down)).stats
    assert s.fine_mode and s.translation_speed == pytest.approx(np.linalg.norm([0.05, 0.05]))


def test_axes_the_dataset_never_moves_do_not_count_as_motion(loaded):
    """A planar dataset (roll and pitch constant, q01 == q99) trains the model towards -1 there;
    read as motion, that is a rotation speed of 1.4 and the controller never enters fine mode."""
    import dataclasses

    stats = loaded.stats
    planar = dataclasses.replace(stats, action_low=np.r_[stats.action_low[:3], 0.0, 0.0, stats.action_low[5:]],
                                 action_high=np.r_[stats.action_high[:3], 0.0, 0.0, stats.action_high[5:]])
    np.testing.assert_array_equal(planar.constant_action_dims, [False] * 3 + [True, True] + [False] * 2)
    policy = SpecPrunePolicy(dataclasses.replace(loaded, stats=planar), Config())
    policy.step(obs(0))
    slow_down = np.array([0.05, 0.0, -0.05, -1.0, -1.0, 0.1])     # roll, pitch as the model outputs them
    s = policy.step(obs(1, motion=slow_down)).stats
    assert s.fine_mode and s.rotation_speed == pytest.approx(0.1)
    moving = SpecPrunePolicy(loaded, Config())             # statistics where every axis moves
    moving.step(obs(0))
    s = moving.step(obs(1, motion=slow_down)).stats
    assert not s.fine_mode and s.rotation_speed == pytest.approx(np.linalg.norm([1.0, 1.0, 0.1]))


@pytest.mark.parametrize("change, message", [
    (lambda o: o.images.pop(), "got 1 images, num_images is 2"),
    (lambda o: o.images.__setitem__(0, np.zeros((10, 10, 3), np.uint8)), "too small"),
    (lambda o: o.images.__setitem__(1, np.zeros((64, 64, 4), np.uint8)), "expected an HxWx3 uint8 RGB"),
    (lambda o: o.images.__setitem__(1, np.zeros((64, 64, 3), np.float32)), "expected an HxWx3 uint8 RGB"),
    (lambda o: setattr(o, "proprio", np.full(8, np.nan)), "non-finite"),
    (lambda o: setattr(o, "proprio", np.zeros(5)), "proprio has 5 values, the model needs 8"),
    (lambda o: setattr(o, "proprio", None), "needs the proprio state"),
])
def test_malformed_observations_produce_no_action_and_no_state_change(policy, change, message):
    policy.step(obs(0))
    bad = obs(1)
    bad.images = list(bad.images)
    change(bad)
    with pytest.raises(ObservationError, match=message):
        policy.step(bad)
    assert policy.step(obs(1)).stats.step == 1           # the bad one was not counted


def test_empty_instruction_is_rejected(policy):
    with pytest.raises(ObservationError, match="instruction is empty"):
        policy.step(Observation([EPISODE[0].primary, EPISODE[0].wrist], EPISODE[0].proprio, ""))


def test_non_finite_actions_are_never_returned_and_reset_the_episode(loaded):
    import copy

    import torch
    broken = copy.copy(loaded)
    broken.model = copy.deepcopy(loaded.model)
    with torch.no_grad():
        broken.model.action_head.model.fc2.bias.fill_(float("nan"))
    policy = SpecPrunePolicy(broken, Config())
    with pytest.raises(ObservationError, match="non-finite actions"):
        policy.step(obs(0))
    assert policy._previous_action is None and policy._step == 0


def test_layer_knobs_beyond_the_model_are_rejected_before_they_apply(policy):
    with pytest.raises(ValueError, match=r"pruning.global_layers = \[15, 40\]: the model has 32 layers"):
        policy.set_config(policy.config.replace(**{"pruning.global_layers": [15, 40]}))
    with pytest.raises(ValueError, match=r"pruning.dynamic_layers = \[5, 32\].*range \[3, 31\]"):
        policy.set_config(policy.config.replace(**{"pruning.dynamic_layers": [5, 32]}))
    assert policy.step(obs(0)).stats.alpha == Config().pruning.alpha


def test_bad_motion_is_an_observation_error(policy):
    policy.step(obs(0))
    with pytest.raises(ObservationError, match="motion must hold rows of 6 finite values"):
        policy.step(obs(1, motion=np.array([np.nan] * 6)))


@pytest.mark.parametrize("layers", [16, 24])
def test_a_shallower_model_runs_unpruned_and_refuses_pruning_until_the_layer_knobs_fit(tmp_path, layers):
    from specprune_ros.model.checkpoint import load_checkpoint, write_tiny_checkpoint

    loaded = load_checkpoint(write_tiny_checkpoint(tmp_path / "ckpt", llm_layers=layers), device="cpu")
    assert len(loaded.model.llm.layers) == layers
    off = Config().replace(**{"pruning.enabled": False})
    policy = SpecPrunePolicy(loaded, off)
    out = policy.step(obs(0))
    assert np.all(np.isfinite(out.actions)) and len(out.stats.tokens_per_layer) == layers

    with pytest.raises(ValueError, match=rf"pruning.global_layers = \[15, 32\]: the model has {layers} layers "
                                         rf"\(range \[3, {layers}\]"):
        SpecPrunePolicy(loaded, Config())                                   # at start
    with pytest.raises(ValueError, match=rf"the model has {layers} layers \(range \[3, {layers}\]"):
        policy.set_config(off.replace(**{"pruning.enabled": True}))        # live
    assert policy.step(obs(1)).stats.pruning_enabled is False               # the old config stays

    fitting = off.replace(**{"pruning.enabled": True, "pruning.global_layers": [layers // 2, layers],
                             "pruning.dynamic_layers": [5, 10]})
    policy.set_config(fitting)
    policy.step(obs(2))
    pruned = policy.step(obs(3)).stats
    assert pruned.pruning_enabled and pruned.vision_tokens_kept < pruned.vision_tokens_total


def test_a_gap_in_the_inputs_starts_afresh(policy):
    policy.step(obs(0))
    assert policy.step(obs(1)).stats.fallback_reason == ""                    # pruned with the prior
    late = obs(2)
    late.stamp = 1.0 + policy.config.node.episode_gap_s + 0.5                 # nothing for 1.5 s
    stats = policy.step(late).stats
    assert stats.fallback_reason == "input gap" and stats.step == 0
    assert stats.vision_tokens_kept == stats.vision_tokens_total             # no prior: unpruned
    assert policy.step(_later(late.stamp + 0.1)).stats.step == 1


def _later(stamp):
    o = obs(3)
    o.stamp = stamp
    return o
