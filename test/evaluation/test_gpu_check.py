"""The prepared GPU run, dry: the same script end to end on the CPU at the tiny geometry."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([str(ROOT / "bench" / "gpu" / "run.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert list(sections) == ["step", "syncs", "scoring", "sdpa", "compile", "cuda_graphs"]
    assert not [name for name, s in sections.items() if "error" in s], sections
    assert result["model_config"] == "tiny" and result["device"] == "cpu" and result["device_name"]
    step = sections["step"]
    assert step["pruned_ms"]["median"] > 0 and step["unpruned_ms"]["median"] > 0
    assert 0 < step["llm_flops_ratio"] < 1
    # the m x n scoring is the full attention map's text rows, without the map (float32 here)
    assert sections["scoring"]["score_correlation"] == pytest.approx(1.0, abs=1e-4)
    assert sections["sdpa"]["math"]["median"] > 0 and sections["compile"]["backend"] == "eager"
    assert "skipped" in sections["syncs"] and "skipped" in sections["cuda_graphs"]    # CUDA only


def test_the_gpu_script_refuses_to_run_without_a_gpu_unless_dry(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real run would start")
    done = subprocess.run([str(ROOT / "bench" / "gpu" / "run.sh"), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr
