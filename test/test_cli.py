import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specprune_ros.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_shipped_model_closed_loop_and_replays_its_recording(capsys, tmp_path):
    pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")
    assert main(["demo", "--json", "--episodes", "1", "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    closed = out["closed_loop"]["methods"]
    assert set(closed) == {"none", "specprune", "specprune-paper@0.8", "random"}
    assert closed["none"]["episodes"] == 1 and all(closed[m]["kept_tokens_mean"] < 512 for m in set(closed) - {"none"})
    assert closed["specprune-paper@0.8"]["knobs"]["pruning.coverage_grid"] == 0
    assert out["replay"]["steps"] > 10 and "unpruned" in out["replay"]["latency_ms"]
    assert (tmp_path / "closed_loop" / "report.html").is_file() and (tmp_path / "replay" / "report.html").is_file()


def test_params_validates_a_file(capsys, tmp_path):
    assert main(["params", str(ROOT / "config" / "rizon4.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pruning.alpha"] == 1.6
    bad = tmp_path / "bad.yaml"
    bad.write_text("action_node:\n  ros__parameters:\n    pruning.k_local: -5\n")
    assert main(["params", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pruning.k_local = -5 is out of range [0, 4096]" in err[0]
    assert main(["params", str(ROOT / "config" / "rizon4.yaml")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("/**:\n  ros__parameters:\n")          # keyed as the shipped files are
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert main(["params", str(again), "--json"]) == 0 and json.loads(capsys.readouterr().out)["pruning.alpha"] == 1.6


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "specprune_ros", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "demo" in out and "params" in out


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "specprune_ros", *args], capture_output=True, text=True)


def test_bench_json_has_the_interface_keys():
    out = run_cli("bench", "--model-config", "tiny", "--device", "cpu", "--steps", "3", "--warmup", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("device", "model_config", "speedup", "flops_ratio"):
        assert key in result
    assert result["device"] == "cpu" and result["model_config"] == "tiny" and result["steps"] == 3
    for arm in ("pruned", "unpruned"):
        assert result["latency_ms"][arm]["median"] > 0
    assert result["overhead_ms"]["median"] > 0
    assert 0 < result["flops_ratio"] < 1


def test_flops_json_has_the_interface_keys(capsys):
    assert main(["flops", "--steps", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["flops_ratio"] < 1 and result["model_config"] == "openvla-7b"
    assert 0 < result["vision_tokens"]["kept_mean"] < result["vision_tokens"]["total"] == 512
    assert result["unpruned_steps"] == 1           # the first step has no prior
    assert result["tflops_unpruned"] == pytest.approx(7.96, rel=0.05)   # ~600 tokens through Llama-2-7B


def test_write_tiny_checkpoint_then_bench_it(tmp_path, capsys):
    assert main(["write-tiny-checkpoint", str(tmp_path / "ckpt"), "--json"]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert "model.safetensors.index.json" in files
    out = run_cli("bench", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--steps", "2", "--warmup", "1",
                  "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model_config"] == str(tmp_path / "ckpt")


def test_errors_are_one_line_without_traceback(tmp_path):
    out = run_cli("bench", "--model", str(tmp_path / "missing"), "--device", "cpu")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint directory not found" in lines[0] and "Traceback" not in out.stderr


def test_a_frozen_camera_is_refused_through_ros_and_an_unknown_camera_by_the_parser(capsys, tmp_path):
    assert main(["sim", "eval", "--model", "tiny-random", "--through-ros", "--freeze-camera", "wrist",
                 "--episodes", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--freeze-camera: in process only" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        main(["sim", "eval", "--model", "tiny-random", "--freeze-camera", "side"])
    err = capsys.readouterr().err                  # a parser error is one line, as every other error
    assert "invalid choice: 'side'" in err and "(see specprune sim eval --help)" in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err


def test_an_emulated_latency_is_refused_on_the_wall_clock_and_a_bad_one_named(capsys, tmp_path):
    for args, message in ((["--through-ros", "--clock", "realtime", "--latency", "90"],
                           "--latency: the delay clock runs on simulated time"),
                          (["--latency", "fast"], "latency 'fast': milliseconds (e.g. 250) or one of 7b-a800")):
        assert main(["sim", "eval", "--model", "tiny-random", *args, "--episodes", "1",
                     "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_in_process_query_rate_must_be_a_whole_number_of_actions(capsys, tmp_path):
    assert main(["sim", "eval", "--model", "tiny-random", "-p", "control_rate_hz:=3", "--episodes", "1",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "control_rate_hz 3: in process a query every whole number of actions, 1 to 8" in err
    assert "this is every 3.33" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_reader_that_leaves_early_is_not_an_error():
    """`specprune params --json | head`: the pipe closes before the output is written."""
    read, write = os.pipe()
    os.close(read)                                   # nobody will read: every write is EPIPE
    proc = subprocess.run([sys.executable, "-m", "specprune_ros", "params", "--json"], stdout=write,
                          stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
