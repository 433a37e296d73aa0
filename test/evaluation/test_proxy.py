"""The offline proxy (evaluation/proxy.py): chunks of every rule against the unpruned chunks, on the
observations of a real rosbag2 file, through the real tiny model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specprune_ros.common.bags import write_synthetic_bag
from specprune_ros.common.methods import parse_methods
from specprune_ros.config import Config
from specprune_ros.evaluation.proxy import action_gap, observations_from_bag, rank_agreement, spearman
from specprune_ros.model.checkpoint import load_tiny_random

REAL_BAGS = Path(__file__).resolve().parents[2].parent / "shared" / "real-bags"


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_synthetic_bag(tmp_path_factory.mktemp("proxy") / "episode", 24, "mcap")


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)        # ties share a rank
    assert np.isnan(spearman([1, 2], [1, 2])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_the_gap_grows_as_the_budget_shrinks(bag):
    loaded = load_tiny_random("cpu")
    config = Config().replace(**{"control_rate_hz": 5.0})
    episodes = observations_from_bag(bag, config, uses_proprio=True)
    assert len(episodes) == 1 and len(episodes[0]) >= 8
    methods = parse_methods("specprune,random,fastv,specprune-nolayer@4", [0.3, 4.0])
    points = action_gap(loaded, config, episodes, methods)
    assert list(points) == [m.label for m in methods]
    # with every K at 4x and no dynamic layer, the static stage keeps most tokens: the smallest gap
    assert points["specprune-nolayer@4"]["flops_ratio_mean"] > 0.8
    for name in ("specprune", "random"):
        small, large = points[f"{name}@0.3"], points[f"{name}@4"]
        assert small["flops_ratio_mean"] < large["flops_ratio_mean"]
        assert small["l1"] > points["specprune-nolayer@4"]["l1"] >= 0
    assert points["fastv@0.3"]["fastv_tokens"] == round(points["specprune@0.3"]["kept_tokens_mean"])
    closed = {label: {"success_rate": 1.0 - p["l1"]} for label, p in points.items()}
    assert rank_agreement(points, closed)["rho_l1"] == pytest.approx(1.0)


def test_the_proxy_command_writes_its_json(bag, tmp_path):
    out = tmp_path / "proxy.json"
    result = subprocess.run([sys.executable, "-m", "specprune_ros", "proxy", "--bag", str(bag), "--methods",
                             "specprune@0.8,random@0.8", "-p", "control_rate_hz:=2.5", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    saved = json.loads(out.read_text())
    assert set(saved["methods"]) == {"specprune@0.8", "random@0.8"} and saved["steps"] >= 4
    assert "random@0.8" in result.stdout


@pytest.mark.skipif(not REAL_BAGS.is_dir(), reason="../shared/real-bags is not beside this checkout")
def test_a_recording_without_cameras_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "specprune_ros", "proxy", "--bag",
                             str(REAL_BAGS / "abitobot-jointstates-imu-mcap")], capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "cannot be replayed" in lines[0], result.stderr


def test_kept_patterns_measure_runs_rows_cameras_and_turnover():
    from specprune_ros.evaluation.proxy import kept_pattern
    stripes = np.zeros((2, 16), bool)
    stripes[0, :4] = True                                   # primary: the first row of its 4 x 4 grid
    moved = np.zeros((2, 16), bool)
    moved[0, 2:6] = True                                    # half of it moved on
    got = kept_pattern([[None, stripes, stripes, moved]])   # the unpruned first step is left out
    assert got["camera_share"] == [1.0, 0.0]
    assert got["row_share"][0] > got["row_share"][2] == 0.0
    assert got["run_ratio"] > 4                              # density 1/8, every kept token's neighbour kept
    assert got["turnover"] == pytest.approx((0 + (1 - 2 / 6)) / 2)
    assert kept_pattern([[None]]) == {}


def test_the_oracle_ratio_rewards_keeping_what_the_action_depends_on():
    from specprune_ros.evaluation.proxy import oracle_ratio
    importance = np.zeros((1, 4))
    importance[0, 0] = 1.0                                   # only the top-left quarter matters
    top_left = np.zeros((1, 16), bool)
    top_left[0, [0, 1, 4, 5]] = True                         # a 4 x 4 grid's top-left 2 x 2 block
    bottom_right = np.zeros((1, 16), bool)
    bottom_right[0, [10, 11, 14, 15]] = True
    assert oracle_ratio([[top_left]], [[importance]]) == pytest.approx(4.0)     # all of it at 1/4 density
    assert oracle_ratio([[bottom_right]], [[importance]]) == 0.0
    assert np.isnan(oracle_ratio([[None]], [[importance]]))


def test_the_occlusion_oracle_runs_on_the_real_model(bag):
    from specprune_ros.evaluation.proxy import occlusion_importance
    loaded = load_tiny_random("cpu")
    config = Config().replace(**{"control_rate_hz": 2.5})
    episodes = [observations_from_bag(bag, config, uses_proprio=True)[0][:2]]
    maps = occlusion_importance(loaded, config, episodes, blocks=2)
    assert len(maps[0]) == 2 and maps[0][0].shape == (2, 4)
    assert np.all(maps[0][0] >= 0) and maps[0][0].sum() > 0          # blanking a region moves the chunk


def test_oracle_blocks_must_divide_the_patch_grid():
    from specprune_ros.config import ConfigError
    from specprune_ros.evaluation.proxy import occlusion_importance
    with pytest.raises(ConfigError, match="--oracle-blocks 3: must divide the model's 16 x 16 patch grid"):
        occlusion_importance(load_tiny_random("cpu"), Config(), [[]], blocks=3)
