import json
import subprocess
import sys
from pathlib import Path

from specprune_ros.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_exits_zero_and_json_is_one_object(capsys):
    assert main(["demo", "--json"]) == 0
    out = capsys.readouterr().out
    assert isinstance(json.loads(out), dict)


def test_params_validates_a_file(capsys, tmp_path):
    assert main(["params", str(ROOT / "config" / "rizon4.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pruning.alpha"] == 0.8
    bad = tmp_path / "bad.yaml"
    bad.write_text("action_node:\n  ros__parameters:\n    pruning.k_local: -5\n")
    assert main(["params", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruning.k_local = -5 is out of range [0, 4096]" in err[0]


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "specprune_ros", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "demo" in out and "params" in out
