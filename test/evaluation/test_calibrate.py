"""`specprune calibrate` (evaluation/calibrate.py): knobs for a checkpoint from its own recording, end
to end on a real rosbag2 file and the real tiny model; bad inputs are one clear error."""
import subprocess
import sys
from pathlib import Path

import pytest

from specprune_ros.common.bags import write_synthetic_bag
from specprune_ros.config import Config
from specprune_ros.evaluation.calibrate import alpha_for, gap_at, layer_candidates

REAL_BAGS = Path(__file__).resolve().parents[2].parent / "shared" / "real-bags"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "specprune_ros", *args], capture_output=True, text=True)


def one_line_error(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and message in lines[0], result.stderr


def test_curves_are_read_at_the_target():
    assert gap_at([(0.4, 0.1), (0.2, 0.3)], 0.3) == pytest.approx(0.2)
    assert gap_at([(0.4, 0.1), (0.2, 0.3)], 0.5) is None
    assert alpha_for([(0.2, 0.3), (0.3, 0.2), (0.5, 0.1)], 0.4) == pytest.approx(2.25)   # alphas 0.6, 1.5, 3
    assert alpha_for([(0.2, 0.3), (0.3, 0.2), (0.5, 0.1)], 0.9) == pytest.approx(3.0)     # clamped
    assert layer_candidates(16, 1, (8, 16)) == [(8, 16), (2,), (4,), (6,), (9,), (12,), (16,)]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return write_synthetic_bag(tmp_path_factory.mktemp("calibrate") / "episode", 24, "mcap")


def test_calibration_writes_a_params_file_the_tools_load(bag, tmp_path):
    out = tmp_path / "calibrated.yaml"
    result = cli("calibrate", "--bag", str(bag), "-p", "control_rate_hz:=2.5", "--target-flops", "0.35",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    config = Config.from_yaml(out)
    assert config.pruning.alpha != Config().pruning.alpha or config.pruning.global_layers != (15, 32)
    replayed = cli("replay", str(bag), "--out", str(tmp_path / "replay"), "--params", str(out), "--no-compare",
                   "-p", "control_rate_hz:=2.5")
    assert replayed.returncode == 0, replayed.stderr
    assert "0.35" in out.read_text()                      # the header says what it was calibrated for


def test_bad_inputs_are_one_clear_error(bag, tmp_path):
    one_line_error(cli("calibrate", "--bag", str(bag), "--target-flops", "2", "--out", str(tmp_path / "x.yaml")),
                   "--target-flops 2: must lie in [0.05, 1]")
    one_line_error(cli("calibrate", "--bag", str(bag), "-p", "pruning.global_layers:=[40]",
                       "--out", str(tmp_path / "x.yaml")), "pruning.global_layers = [40]: the model has 32 layers")
    assert not (tmp_path / "x.yaml").exists()


@pytest.mark.skipif(not REAL_BAGS.is_dir(), reason="../shared/real-bags is not beside this checkout")
def test_a_real_recording_without_cameras_is_one_clear_error(tmp_path):
    one_line_error(cli("calibrate", "--bag", str(REAL_BAGS / "abitobot-jointstates-imu-mcap"),
                       "--out", str(tmp_path / "x.yaml")), "cannot be replayed")
