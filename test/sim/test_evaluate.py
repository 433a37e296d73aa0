"""`specprune sim eval`: paired comparisons and curves, a 2-episode smoke evaluation of two methods
with every output, failure modes from the episode's object heights."""
import csv
import json

import pytest

pytest.importorskip("specprune_ros.sim.env", reason="mujoco and gymnasium are installed by make setup")

from specprune_ros.common.methods import parse_methods  # noqa: E402
from specprune_ros.config import Config  # noqa: E402
from specprune_ros.sim.env import seed_range  # noqa: E402
from specprune_ros.sim.evaluate import budget_curves, evaluate, paired_comparisons  # noqa: E402
from specprune_ros.sim.rollout import EpisodeResult, wilson_interval  # noqa: E402


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
    report = (tmp_path / "report.html").read_text()
    assert "specprune@0.8" in report and "recall: the share" in report
    assert set(saved["host"]) == {"cpus", "load_avg_1m", "loaded"}
    assert (saved["timing_note"] != "") == saved["host"]["loaded"]        # one worker: only a busy host


def test_the_speed_up_says_when_it_is_not_an_idle_single_runs():
    from specprune_ros.sim.evaluate import timing_note
    idle = {"cpus": 2, "load_avg_1m": 0.3, "loaded": False}
    assert timing_note({"workers": 1, "host": idle}) == ""
    shared = timing_note({"workers": 2, "host": idle})
    assert "not comparable" in shared and "2 workers ran at once on 2 CPUs" in shared
    busy = timing_note({"workers": 1, "host": {**idle, "load_avg_1m": 5.2, "loaded": True}})
    assert "busy (load 5.2 on 2 CPUs)" in busy and "workers" not in busy


def test_the_split_is_named_from_every_seed():
    from specprune_ros.sim.evaluate import seed_split
    assert seed_split(list(range(101000, 101200))) == "test"
    assert seed_split(list(range(101500, 102500))) == "mixed"          # half outside every split
    assert seed_split([99_999, 100_000]) == "mixed"


def test_the_delay_clock_reports_its_emulated_latency_holds_and_ages(tmp_path):
    from types import SimpleNamespace

    from specprune_ros.latency import parse_latency
    config = Config().replace(model_path="tiny-random", device="cpu")
    seeds = list(seed_range("test"))[:1]
    result = evaluate(config, parse_methods("none"), seeds, tmp_path, max_steps=16, latency=parse_latency("250"))
    none = result["methods"]["none"]
    assert result["emulated_latency"] == {"name": "250 ms", "fixed_ms": 250.0, "llm_ms": 0.0, "source": "fixed"}
    assert none["emulated_latency_ms_mean"] == 250.0 and none["holds_per_episode"] == 3.0   # before the 1st answer
    assert none["chunk_age_s_mean"] >= 0.3 and none["skipped_actions_per_episode"] == 9.0  # 3 chunks from action 3
    assert result["actions_per_query"] == 8 and none["handover_step_mm_mean"] >= 0
    replanning = evaluate(config, parse_methods("none"), seeds, tmp_path, max_steps=16, latency=parse_latency("250"),
                          execute=4)
    assert replanning["actions_per_query"] == 4
    assert replanning["methods"]["none"]["skipped_actions_per_episode"] == 12.0     # 4 chunks from action 3
    with pytest.raises(ValueError, match=r"an emulated latency \(250 ms\): give it to the x runner"):
        evaluate(config, parse_methods("none"), seeds, tmp_path, latency=parse_latency("250"),
                 runner=SimpleNamespace(name="x"))


def _sim_eval_output(path, methods, seeds=(5, 6, 7, 8), layout="scattered"):
    """A `sim eval --out` directory: ``methods`` maps a label to (alpha, FLOPs, per-seed outcomes)."""
    path.mkdir()
    summary = {label: {"alpha": alpha, "episodes": len(wins), "flops_ratio_mean": flops,
                       "success_rate": sum(wins) / len(wins),
                       "success_ci95": list(wilson_interval(sum(wins), len(wins))), "latency_ms_mean": 10.0 * flops}
               for label, (alpha, flops, wins) in methods.items()}
    result = {"model": "m", "seeds": [seeds[0], seeds[-1]], "max_steps": 160, "layout": layout, "frozen_cameras": [],
              "emulated_latency": None, "actions_per_query": 8, "runner": "in-process", "episodes_per_method": 4,
              "split": "validation", "device": "a CPU", "methods": summary}
    (path / "results.json").write_text(json.dumps(result))
    with (path / "episodes.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "success"])
        for label, (_, _, wins) in methods.items():
            writer.writerows([label, seed, int(win)] for seed, win in zip(seeds, wins))


def test_a_sweep_made_in_parts_merges_into_one(tmp_path):
    from specprune_ros.sim.evaluate import merge_evaluations
    _sim_eval_output(tmp_path / "a", {"none": (None, 1.0, [1, 1, 1, 0]), "specprune@1": (1.0, 0.3, [1, 0, 1, 0]),
                                      "random@1": (1.0, 0.35, [0, 0, 1, 0])})
    _sim_eval_output(tmp_path / "b", {"specprune@2": (2.0, 0.4, [1, 1, 1, 0]), "random@2": (2.0, 0.45, [0, 1, 0, 0])})
    merged = merge_evaluations([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")
    assert list(merged["methods"]) == ["none", "specprune@1", "random@1", "specprune@2", "random@2"]
    pairs = {(c["a"], c["b"]): (c["a_only"], c["b_only"]) for c in merged["paired"]}
    # against none across runs, and the rules of one alpha against each other - never across alphas
    assert pairs[("random@2", "none")] == (0, 2) and pairs[("specprune@2", "random@2")] == (2, 0)
    assert ("specprune@1", "random@2") not in pairs and ("specprune@1", "specprune@2") not in pairs
    assert merged["methods"]["specprune@2"]["vs_none"]["difference"] == 0.0
    assert merged["methods"]["random@2"]["speedup"] == pytest.approx(10.0 / 4.5)
    assert [p["label"] for p in merged["curves"]["families"]["specprune"]] == ["specprune@1", "specprune@2"]
    saved = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert saved["paired"] == merged["paired"] and (tmp_path / "merged" / "success_vs_flops_curves.png").exists()


def test_runs_of_other_episodes_or_a_repeated_method_are_not_merged(tmp_path):
    from specprune_ros.sim.evaluate import merge_evaluations
    _sim_eval_output(tmp_path / "a", {"none": (None, 1.0, [1, 1, 1, 0])})
    _sim_eval_output(tmp_path / "b", {"random@1": (1.0, 0.3, [1, 0, 1, 0])}, layout="fixed-start")
    _sim_eval_output(tmp_path / "c", {"none": (None, 1.0, [1, 1, 1, 1])})
    with pytest.raises(ValueError, match="has layout 'fixed-start'.*not the same episodes"):
        merge_evaluations([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    with pytest.raises(ValueError, match="method 'none' is in .*c and in an earlier run"):
        merge_evaluations([tmp_path / "a", tmp_path / "c"], tmp_path / "out")
    with pytest.raises(ValueError, match="is not a `sim eval` output"):
        merge_evaluations([tmp_path / "a", tmp_path / "missing"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
