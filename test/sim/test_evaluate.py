"""`specprune sim eval`: methods parsed and checked, a 2-episode smoke evaluation of two methods
with every output, failure modes from the episode's object heights."""
import csv
import json

import pytest

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.config import Config, ConfigError  # noqa: E402
from specprune_ros.sim.env import seed_range  # noqa: E402
from specprune_ros.sim.evaluate import (  # noqa: E402
    budget_curves,
    evaluate,
    paired_comparisons,
    parse_budgets,
    parse_methods,
    parse_seeds,
)
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
                       "too"),
    ("specprune@x", "is not name\\[@alpha\\]"),
    ("specprune@9", "pruning.alpha"),
])
def test_bad_methods_are_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_methods(text)


def test_a_budget_sweep_runs_every_unpinned_rule_at_every_alpha():
    methods = parse_methods("none,fastv,specprune,random@0.8", parse_budgets("1,2.5"))
    # fastv is matched to specprune at the same alpha, so it runs after it whatever the order given
    assert [m.label for m in methods] == ["none", "specprune@1", "specprune@2.5", "random@0.8", "fastv@1",
                                          "fastv@2.5"]
    assert [m.matched_to for m in methods if m.name == "fastv"] == ["specprune@1", "specprune@2.5"]


@pytest.mark.parametrize("text, message", [("1,x", "comma-separated list"), ("1,1", "distinct"),
                                           ("", "one or more"), ("9", "pruning.alpha")])
def test_bad_budgets_are_one_clear_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_budgets(text)


def test_seed_ranges_are_half_open():
    assert parse_seeds("100000:100003") == [100000, 100001, 100002]
    for bad in ("5:5", "7:3", "a:b", "100"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_paired_comparisons_count_discordant_seeds():
    def runs(outcomes):
        return [{"seed": i, "success": bool(o)} for i, o in enumerate(outcomes)]
    episodes = {"none": runs([1, 1, 1, 1, 0, 1]), "specprune@1": runs([1, 0, 0, 1, 0, 1]),
                "random@1": runs([0, 1, 1, 1, 1, 1])}
    summary = {"none": {"alpha": None}, "specprune@1": {"alpha": 1.0}, "random@1": {"alpha": 1.0}}
    got = {(c["a"], c["b"]): c for c in paired_comparisons(episodes, summary)}
    assert set(got) == {("specprune@1", "none"), ("random@1", "none"), ("specprune@1", "random@1")}
    vs_none = got[("specprune@1", "none")]
    assert (vs_none["a_only"], vs_none["b_only"], vs_none["difference"]) == (0, 2, pytest.approx(-2 / 6))
    assert vs_none["p_value"] == pytest.approx(0.5)          # 2 discordant pairs, both one way: 2 * 1/4
    between = got[("specprune@1", "random@1")]
    assert (between["a_only"], between["b_only"]) == (1, 3)


def test_curves_compare_rules_at_equal_flops():
    def point(flops, success):
        return {"alpha": 1.0, "flops_ratio_mean": flops, "success_rate": success, "success_ci95": [0, 1]}
    summary = {"none": point(1.0, 0.9), "specprune@2": point(0.4, 0.8), "specprune@1": point(0.2, 0.4),
               "random@1": point(0.3, 0.5), "random@2": point(0.5, 0.7)}
    curves = budget_curves(summary)
    assert [p["label"] for p in curves["families"]["specprune"]] == ["specprune@1", "specprune@2"]
    # random at specprune's FLOPs: below its curve's range (None), then halfway between 0.5 and 0.7
    assert curves["at_equal_flops"]["specprune"]["random"] == [None, pytest.approx(0.6)]
    assert curves["at_equal_flops"]["random"]["specprune"] == [pytest.approx(0.6), None]


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
