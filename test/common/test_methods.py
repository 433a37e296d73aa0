"""The rules an evaluation compares, parsed and checked (common/methods.py)."""
import pytest

from specprune_ros.common.methods import PAPER, VARIANTS, parse_budgets, parse_methods, parse_seeds
from specprune_ros.config import Config, ConfigError


def test_methods_are_parsed_into_configurations():
    methods = parse_methods("none, specprune@0.6,random,specprune-nolayer@1,specprune@0.8,fastv@0.8")
    assert [m.label for m in methods] == ["none", "specprune@0.6", "random", "specprune-nolayer@1",
                                          "specprune@0.8", "fastv@0.8"]
    base = Config()
    assert methods[0].config(base).pruning.enabled is False
    assert methods[1].config(base).pruning.alpha == 0.6 and methods[1].config(base).pruning.method == "specprune"
    random = methods[2].config(base.replace(**{"pruning.alpha": 2.5})).pruning
    assert random.method == "random" and random.alpha == 2.5          # no alpha: the configured one
    nolayer = methods[3].config(base).pruning
    assert nolayer.dynamic_layers == () and nolayer.method == "specprune" and nolayer.alpha == 1.0
    fastv = methods[5].config(base, fastv_tokens=123).pruning
    assert fastv.method == "fastv" and fastv.fastv_tokens == 123 and methods[5].matched_to == "specprune@0.8"
    assert parse_methods("specprune,fastv")[1].matched_to == "specprune"


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


def test_every_variant_is_a_valid_configuration_and_the_paper_rule_is_one_of_them():
    for name, knobs in VARIANTS.items():
        Config().replace(**knobs)
    paper = parse_methods("specprune-paper@0.8")[0].config(Config()).pruning
    assert all(getattr(paper, k.split(".")[1]) == v for k, v in PAPER.items())
