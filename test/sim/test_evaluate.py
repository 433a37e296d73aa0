"""`specprune sim eval`: methods parsed and checked, a 2-episode smoke evaluation of two methods
with every output, failure modes from the episode's object heights."""
import csv
import json

import pytest

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.config import Config, ConfigError  # noqa: E402
from specprune_ros.sim.env import seed_range  # noqa: E402
from specprune_ros.sim.evaluate import evaluate, parse_methods  # noqa: E402
from specprune_ros.sim.rollout import EpisodeResult, wilson_interval  # noqa: E402


def test_methods_are_parsed_into_configurations():
    methods = parse_methods("none, specprune@0.6,random,specprune-nolayer@1,specprune@0.8,fastv@0.8")
    assert [m.label for m in methods] == ["none", "specprune@0.6", "random@0.8", "specprune-nolayer@1",
                                          "specprune@0.8", "fastv@0.8"]
    base = Config()
    assert methods[0].config(base).pruning.enabled is False
    assert methods[1].config(base).pruning.alpha == 0.6 and methods[1].config(base).pruning.method == "specprune"
    assert methods[2].config(base).pruning.method == "random"
    nolayer = methods[3].config(base).pruning
    assert nolayer.dynamic_layers == () and nolayer.method == "specprune" and nolayer.alpha == 1.0
    fastv = methods[5].config(base, fastv_tokens=123).pruning
    assert fastv.method == "fastv" and fastv.fastv_tokens == 123 and methods[5].matched_to == "specprune@0.8"


@pytest.mark.parametrize("text, message", [
    ("none,magic@0.8", "unknown method 'magic'"),
    ("none@0.5", "none takes no alpha"),
    ("specprune@0.8,specprune@0.8", "listed twice"),
    ("none,fastv@0.8", "fastv@0.8 keeps as many tokens as specprune@0.8 did in this run; list specprune@0.8 "
                       "before it"),
    ("specprune@x", "is not name\\[@alpha\\]"),
    ("specprune@9", "pruning.alpha"),
])
def test_bad_methods_are_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_methods(text)


def test_failure_modes():
    def episode(success, **lifted):
        return EpisodeResult(0, "put the red cube on the plate", success, 10, lifted=lifted, target="cube")
    assert episode(True, cube=0.1).failure == ""
    assert episode(False, cube=0.0, box=0.08).failure == "wrong object"
    assert episode(False, cube=0.01, box=0.0).failure == "missed grasp"
    assert episode(False, cube=0.12, box=0.0).failure == "not placed"


def test_a_smoke_evaluation_writes_every_output(tmp_path):
    seeds = list(seed_range("test"))[:2]
    config = Config().replace(model_path="tiny-random", device="cpu")
    result = evaluate(config, parse_methods("none,specprune@0.8"), seeds, tmp_path, workers=1, max_steps=32)
    methods = result["methods"]
    assert list(methods) == ["none", "specprune@0.8"]
    assert methods["none"]["speedup"] == 1.0 and methods["none"]["flops_ratio_mean"] == 1.0
    pruned = methods["specprune@0.8"]
    assert pruned["flops_ratio_mean"] < 1.0 and pruned["kept_tokens_mean"] < 512 and pruned["speedup"] > 0
    for s in methods.values():
        assert s["episodes"] == 2 and s["episode_steps_mean"] == 32
        assert s["success_ci95"] == list(wilson_interval(s["successes"], 2))
        assert sum(s["failures"].values()) == 2 - s["successes"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"]["specprune@0.8"]["kept_tokens_mean"] == pytest.approx(pruned["kept_tokens_mean"])
    with (tmp_path / "episodes.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], int(r["seed"])) for r in rows] == [(m, s) for m in methods for s in seeds]
    for name in ("success_vs_flops.png", "success_vs_speedup.png", "kept_tokens.png", "kept_patches.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "specprune@0.8" in (tmp_path / "report.html").read_text()
