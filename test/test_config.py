from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from specprune_ros.config import (
    Config,
    ConfigError,
    iter_specs,
    layer_knobs,
    model_config,
    model_depth,
    parameter_table,
    spec_of,
)

ROOT = Path(__file__).resolve().parents[1]

INTERFACE_PARAMETERS = [
    "model_path", "device", "dtype", "unnorm_key", "num_images", "compressed_images",
    "instruction", "control_rate_hz", "max_observation_age_s",
    "pruning.enabled", "pruning.alpha", "pruning.k_global", "pruning.k_local", "pruning.k_dynamic",
    "pruning.frame_similarity_threshold", "pruning.dynamic_layers", "pruning.dynamic_drop_ratio",
    "controller.enabled", "controller.translation_threshold", "controller.rotation_threshold",
]
READ_ONLY = {"model_path", "device", "dtype", "unnorm_key", "num_images", "compressed_images"}


def test_every_interface_parameter_exists_with_its_mutability():
    names = dict(iter_specs())
    for name in INTERFACE_PARAMETERS:
        assert name in names, name
        assert names[name].read_only == (name in READ_ONLY), name
        assert names[name].description


def test_defaults_are_the_papers_with_the_coverage_floor_at_the_validated_budget():
    p = Config().pruning
    assert (p.k_global, p.k_local, p.k_dynamic, p.alpha, p.coverage_grid) == (30, 24, 20, 1.6, 8)
    assert (p.score_queries, p.refresh_period, p.frame_rule, p.coverage_dynamic) == ("instruction", 0, "changed", False)
    assert p.global_layers == (15, 32) and p.local_layers == 2
    assert p.dynamic_layers == (5, 10, 15, 20) and p.ema_beta == 0.2 and p.confidence == "entropy"
    assert (p.frame_similarity_threshold, p.frame_similarity_threshold_wrist) == (0.990, 0.992)
    assert (p.history_base, p.history_slope, p.history_offset) == (7.0, -1.0, 4)
    c = Config().controller
    assert (c.translation_threshold, c.rotation_threshold) == (0.4, 0.2)
    assert (c.exit_dz_threshold, c.exit_rotation_threshold) == (0.2, 0.3)
    assert c.fine_k_scale == pytest.approx(40 / 24)


def test_nested_and_dotted_keys():
    a = Config.from_dict({"pruning": {"alpha": 0.5, "k_global": 10}, "controller.enabled": False})
    assert a.pruning.alpha == 0.5 and a.pruning.k_global == 10 and not a.controller.enabled
    assert a.replace(**{"pruning.alpha": 0.6}).pruning.alpha == 0.6
    assert a.pruning.alpha == 0.5      # immutable


@pytest.mark.parametrize("values, message", [
    ({"pruning.alpha": 9.0}, r"pruning.alpha = 9.0 is out of range \[0.05, 4\]"),
    ({"pruning.alpha": "high"}, r"pruning.alpha = 'high': expected a number \(range \[0.05, 4\]\)"),
    ({"pruning.alpha": float("nan")}, r"pruning.alpha = nan: expected a finite number"),
    ({"pruning": {"k_global": -1}}, r"pruning.k_global = -1 is out of range \[0, 4096\]"),
    ({"pruning.k_local": 2.5}, r"pruning.k_local = 2.5: expected an integer"),
    ({"pruning.enabled": "yes"}, r"pruning.enabled = 'yes': expected true or false$"),
    ({"pruning.confidence": "max"}, r"one of 'entropy', 'mean_std'"),
    ({"pruning.dynamic_drop_ratio": 0.95}, r"pruning.dynamic_drop_ratio = 0.95 is out of range \[0, 0.9\]"),
    ({"pruning.dynamic_layers": [2, 5]}, r"dynamic layers must come after the 2 local layers"),
    ({"pruning.global_layers": []}, r"needs 1 to 8 distinct entries"),
    ({"pruning.global_layers": [0, 4]}, r"pruning.global_layers = 0 is out of range"),
    ({"pruning.dynamic_layers": "5"}, r"expected a list of integers"),
    ({"device": "tpu"}, r"device = 'tpu' is not allowed \(one of 'auto', 'cuda', 'cpu'\)"),
    ({"num_images": 4}, r"num_images = 4 is out of range \[1, 3\]"),
    ({"controller.translation_threshold": -0.1}, r"controller.translation_threshold = -0.1 is out of range"),
    ({"pruning.alhpa": 0.5}, r"unknown parameter 'pruning.alhpa'"),
    ({"planner.alpha": 0.5}, r"unknown parameter 'planner.alpha'"),
])
def test_bad_values_name_the_field_and_range(values, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(values)


def test_a_rejected_change_leaves_the_old_config():
    cfg = Config()
    with pytest.raises(ConfigError):
        cfg.replace(**{"pruning.alpha": 0.5, "pruning.k_global": -3})
    assert cfg.pruning.alpha == Config().pruning.alpha and cfg.pruning.k_global == 30


def test_integral_floats_and_lists_are_normalized():
    cfg = Config.from_dict({"pruning.k_global": 12.0, "pruning.dynamic_layers": [20, 5, 5]})
    assert cfg.pruning.k_global == 12 and isinstance(cfg.pruning.k_global, int)
    assert cfg.pruning.dynamic_layers == (5, 20)
    assert Config.from_dict({"pruning.dynamic_layers": []}).pruning.dynamic_layers == ()


def test_the_robot_parameter_file_loads_and_round_trips(tmp_path):
    cfg = Config.from_yaml(ROOT / "config" / "rizon4.yaml")
    assert cfg.pruning == Config().pruning and cfg.node.num_images == 2      # the defaults, spelled out
    out = tmp_path / "p.yaml"
    out.write_text(cfg.to_ros_yaml())
    assert Config.from_yaml(out) == cfg


def test_parameter_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"action_node": {"ros__parameters": {"pruning.alpha": 7}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: pruning.alpha = 7.0 is out of range"):
        Config.from_yaml(bad)
    with pytest.raises(ConfigError, match="parameter file not found"):
        Config.from_yaml(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("action_node: [unclosed")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 1, column \d+: [^\n]+$"):
        Config.from_yaml(broken)
    empty = tmp_path / "empty.yaml"
    for text in ("", "# only a comment\n", "{}\n"):
        empty.write_text(text)
        with pytest.raises(ConfigError, match="empty.yaml: the parameter file is empty"):
            Config.from_yaml(empty)
    other = tmp_path / "other.yaml"
    other.write_text("chunk_executor:\n  ros__parameters:\n    pruning.alpha: 0.5\n")
    with pytest.raises(ConfigError, match=r"other.yaml: none of its node keys \['chunk_executor'\] names"):
        Config.from_yaml(other)


@pytest.mark.parametrize("name, suggestion", [("pruning.alpah", "'pruning.alpha'"), ("alpha", "'pruning.alpha'"),
                                              ("controler.fine_k_scale", "'controller.fine_k_scale'"),
                                              ("flux_capacitor", None)])
def test_an_unknown_knob_is_one_short_line_with_the_closest_names(name, suggestion):
    with pytest.raises(ConfigError) as info:
        Config().replace(**{name: 1})
    message = str(info.value)
    assert message.startswith(f"unknown parameter '{name}'") and len(message) < 200 and "\n" not in message
    assert (f"did you mean {suggestion}" in message) if suggestion else "did you mean" not in message


def test_wildcard_and_node_blocks_merge(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"pruning": {"alpha": 0.6, "k_local": 10}}},
        "action_node": {"ros__parameters": {"pruning.alpha": 0.7}},
        "other_node": {"ros__parameters": {"pruning.alpha": 3.9}},
    }))
    cfg = Config.from_yaml(f)
    assert cfg.pruning.alpha == 0.7 and cfg.pruning.k_local == 10


@given(alpha=st.floats(-10, 10, allow_nan=False))
def test_alpha_accepted_exactly_inside_its_range(alpha):
    spec = spec_of("pruning.alpha")
    inside = spec.low <= alpha <= spec.high
    try:
        assert Config.from_dict({"pruning.alpha": alpha}).pruning.alpha == alpha
        assert inside
    except ConfigError:
        assert not inside


def test_the_parameter_doc_is_the_generated_table():
    doc = (ROOT / "docs" / "parameters.md").read_text()
    assert parameter_table() in doc, "docs/parameters.md is stale: regenerate it from config.parameter_table()"
    missing = [name for name, _ in iter_specs() if f"`{name}`" not in doc]
    assert not missing


def test_parameter_files_layer_knob_by_knob(tmp_path):
    model = tmp_path / "model.yaml"
    model.write_text("action_node:\n  ros__parameters:\n    pruning.local_layers: 1\n"
                     "    pruning.global_layers: [8, 16]\n    pruning.dynamic_layers: [3, 5]\n    pruning.alpha: 2.0\n")
    paper = ROOT / "config" / "pruning-paper.yaml"
    cfg = Config.from_yaml_files([model, paper])
    assert cfg.pruning.global_layers == (8, 16) and cfg.pruning.local_layers == 1     # the model's layers
    assert cfg.pruning.alpha == 0.8 and cfg.pruning.score_queries == "instruction"    # the paper's rule
    # the cross-field rules see the merged result: a file with only global [2] fits local_layers 1
    low = tmp_path / "low.yaml"
    low.write_text("/**:\n  ros__parameters:\n    pruning.global_layers: [2]\n")
    assert Config.from_yaml_files([model, low]).pruning.global_layers == (2,)
    with pytest.raises(ConfigError, match="low.yaml: pruning.global_layers"):
        Config.from_yaml_files([low])


def test_layer_knobs_map_the_paper_choices_in_proportion():
    assert layer_knobs(32) == {"pruning.local_layers": 2, "pruning.global_layers": [15, 32],
                               "pruning.dynamic_layers": [5, 10, 15, 20]}
    assert layer_knobs(16) == {"pruning.local_layers": 1, "pruning.global_layers": [8, 16],
                               "pruning.dynamic_layers": [3, 5, 8, 10]}
    Config().replace(**layer_knobs(8))                   # still a valid configuration when shallower


def _model_dir(path, layers, own=None):
    path.mkdir()
    (path / "config.json").write_text(f'{{"text_config": {{"num_hidden_layers": {layers}}}}}')
    if own is not None:
        (path / "specprune.yaml").write_text(own)
    return path


def test_a_model_brings_its_depths_layer_knobs_then_its_own_file(tmp_path):
    deep = _model_dir(tmp_path / "deep", 32)
    assert model_depth(str(deep)) == 32 and model_config(str(deep)) == Config()
    assert model_depth("tiny-random") is None and model_config("tiny-random") == Config()
    mid = model_config(str(_model_dir(tmp_path / "mid", 24)))
    assert mid.pruning.global_layers == (12, 24) and mid.pruning.dynamic_layers == (4, 8, 12, 15)
    own = model_config(str(_model_dir(tmp_path / "own", 16, "/**:\n  ros__parameters:\n    pruning.k_local: 12\n")))
    assert own.pruning.global_layers == (8, 16) and own.pruning.k_local == 12   # the depth's, then the file's
    assert model_config(str(_model_dir(tmp_path / "two", 2))) == Config()       # too shallow: the policy refuses
    assert model_config(str(tmp_path / "missing")) == Config()


def test_the_robot_file_and_the_model_knobs_layer_in_the_tools(tmp_path):
    from specprune_ros.cli import build_parser
    from specprune_ros.cli.shared import config_from_args
    model = _model_dir(tmp_path / "model", 16)
    args = build_parser().parse_args(["flops", "--params", str(ROOT / "config" / "rizon4.yaml"),
                                      "-p", f"model_path:={model}", "-p", "pruning.alpha:=0.9"])
    cfg = config_from_args(args)
    assert cfg.pruning.global_layers == (8, 16) and cfg.pruning.alpha == 0.9
    assert cfg.node.max_observation_age_s == 0.3                                 # the robot file's


def test_the_paper_file_is_the_paper_variant():
    from specprune_ros.common.methods import PAPER
    paper = Config.from_yaml(ROOT / "config" / "pruning-paper.yaml").flat()
    assert all(paper[name] == value for name, value in PAPER.items())
    assert (paper["pruning.alpha"], paper["pruning.k_global"], paper["pruning.k_local"], paper["pruning.k_dynamic"]) \
        == (0.8, 30, 24, 20)
