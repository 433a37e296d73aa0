"""The input probe: how a policy's first chunk moves when its proprio or its images change."""
import pytest

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.config import Config  # noqa: E402
from specprune_ros.sim.probe import first_chunk_sensitivity  # noqa: E402

TINY = Config().replace(model_path="tiny-random", device="cpu")


def test_a_policy_that_reads_its_proprio_and_images_moves_with_them():
    moved = first_chunk_sensitivity(TINY, [101000, 101001], shift=0.05)
    assert moved["proprio_change_mm"] > 0 and moved["image_change_mm"] > 0    # random weights read everything
    assert 0 < moved["target_change_mm"] < 1000 * 2 * 0.015 * 2 ** 0.5       # the named object's jitter
    still = first_chunk_sensitivity(TINY, [101000, 101001], shift=0.0)
    assert still["proprio_change_mm"] == 0.0                                 # deterministic: only the shift moves it
    assert still["image_change_mm"] == pytest.approx(moved["image_change_mm"])


def test_one_seed_is_refused():
    with pytest.raises(ValueError, match="at least 2 seeds, got 1"):
        first_chunk_sensitivity(TINY, [101000])


def test_the_probe_moves_the_named_object_against_the_expert_and_measures_the_layouts_need():
    from specprune_ros.sim.probe import layout_need
    moved = first_chunk_sensitivity(TINY, [101000, 101001], layout="scattered", object_shift=0.015)
    assert moved["expert_object_change_mm"] > 5.0         # the expert goes where the object is
    assert moved["object_change_mm"] > 0 and moved["object_follow"] == pytest.approx(
        moved["object_change_mm"] / moved["expert_object_change_mm"])
    still = first_chunk_sensitivity(TINY, [101000, 101001], layout="scattered", object_shift=0.0)
    assert still["object_change_mm"] == 0.0 and still["expert_object_change_mm"] == 0.0
    need = layout_need([101000, 101001], "scattered")
    assert need["episodes"] == 2 and need["object_successes"] == 2 and need["layout_mean_successes"] <= 1


def test_attention_on_the_target_is_a_share_of_the_vision_attention_against_the_targets_area():
    from specprune_ros.sim.probe import attention_on_target, rule_layers
    p = TINY.pruning
    assert rule_layers(TINY) == sorted({*range(1, p.local_layers + 1), *p.global_layers, p.fastv_layer})
    looks = attention_on_target(TINY, [101000], "scattered")
    assert looks["layers"] == rule_layers(TINY) and list(looks["per_layer"]) == [str(n) for n in looks["layers"]]
    assert looks["queries"] >= 2
    for shares in looks["per_layer"].values():
        for part in ("all", "first"):
            s = shares[part]
            assert 0 < s["target_patches"] < 0.2 and 0 <= s["target_attention"] <= 1
            assert s["target_lift"] == pytest.approx(s["target_attention"] / s["target_patches"])
            assert 0 <= s["primary_attention"] <= 1
