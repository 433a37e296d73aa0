"""The pruning rules an evaluation compares, by name: ``name[@alpha]``.

* ``none`` - the plain forward (``pruning.enabled: false``);
* ``specprune@A`` - the configured SpecPrune at ``pruning.alpha`` A (``specprune``: at the
  configured alpha);
* ``random@A`` - SpecPrune@A's token counts (per camera, per dynamic layer), random tokens;
* ``fastv@A`` - FastV keeping R = SpecPrune@A's mean kept vision tokens in the same run;
* variants of SpecPrune through its own knobs (``VARIANTS``): ablations (``-noglobal``,
  ``-nodiff``, ``-nolayer``, ``-nocontroller``, ``-meanstd``), the paper's literal rule
  (``specprune-paper``) and the extensions (``-action`` / ``-both`` scoring queries, ``-cover`` /
  ``-cover8`` coverage floor of 4 x 4 / 8 x 8 blocks, ``-refresh`` periodic dense step,
  ``-static`` the released code's frame rule) and their combinations.

Used by ``sim eval`` (closed loop), the offline proxy and calibration, so a label means the
same configuration everywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..config import Config, ConfigError

# The paper's rule, whatever the configured defaults: instruction queries, no coverage floor,
# no refresh, changed-patch frame differencing (layer knobs stay the model's).
PAPER: dict[str, Any] = {"pruning.score_queries": "instruction", "pruning.coverage_grid": 0,
                         "pruning.coverage_dynamic": False, "pruning.coverage_pick": "best",
                         "pruning.refresh_period": 0, "pruning.frame_rule": "changed"}
VARIANTS: dict[str, dict[str, Any]] = {
    "specprune-noglobal": {"pruning.k_global": 0},
    "specprune-nodiff": {"pruning.k_dynamic": 0},
    "specprune-nolayer": {"pruning.dynamic_layers": []},
    "specprune-nocontroller": {"controller.enabled": False},
    "specprune-meanstd": {"pruning.confidence": "mean_std"},
    "specprune-paper": PAPER,
    "specprune-action": {**PAPER, "pruning.score_queries": "action"},
    "specprune-both": {**PAPER, "pruning.score_queries": "both"},
    "specprune-cover": {**PAPER, "pruning.coverage_grid": 4},
    "specprune-cover8": {**PAPER, "pruning.coverage_grid": 8},
    "specprune-action-cover8": {**PAPER, "pruning.score_queries": "action", "pruning.coverage_grid": 8},
    "specprune-cover8-dyn": {**PAPER, "pruning.coverage_grid": 8, "pruning.coverage_dynamic": True},
    "specprune-cover8-rand": {**PAPER, "pruning.coverage_grid": 8, "pruning.coverage_pick": "random"},
    "specprune-cover-dyn": {**PAPER, "pruning.coverage_grid": 4, "pruning.coverage_dynamic": True},
    "specprune-refresh": {**PAPER, "pruning.refresh_period": 3},
    "specprune-static": {**PAPER, "pruning.frame_rule": "drop_static", "pruning.frame_similarity_threshold": 0.986,
                         "pruning.frame_similarity_threshold_wrist": 0.986},
}
PAPER_ALPHA = 0.8                      # the paper's main table
BASE_METHODS = ("none", "specprune", "random", "fastv")


def paper_config(base: Config | None = None) -> Config:
    """``base`` (default: the defaults) with the paper's literal rule at its alpha: what
    config/pruning-paper.yaml gives, for code and tests about the paper's mechanics."""
    return (base or Config()).replace(**PAPER, **{"pruning.alpha": PAPER_ALPHA})


def family(label: str) -> str:
    """A rule's name without its budget: ``specprune@0.8`` -> ``specprune``."""
    return label.split("@")[0]


@dataclass(frozen=True)
class Method:
    label: str                          # as given: "specprune@0.8"
    name: str                           # none | specprune | random | fastv | a variant
    alpha: float | None
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)

    def config(self, base: Config, fastv_tokens: int | None = None) -> Config:
        if self.name == "none":
            return base.replace(**{"pruning.enabled": False})
        knobs: dict[str, Any] = {"pruning.enabled": True, **self.overrides}
        knobs["pruning.method"] = self.name if self.name in BASE_METHODS else "specprune"
        if self.alpha is not None:
            knobs["pruning.alpha"] = self.alpha
        if fastv_tokens is not None:
            knobs["pruning.fastv_tokens"] = fastv_tokens
        return base.replace(**knobs)

    @property
    def matched_to(self) -> str | None:
        """The method whose kept-token count sets this one's budget (fastv only)."""
        if self.name != "fastv":
            return None
        return "specprune" if self.alpha is None else f"specprune@{self.alpha:g}"


def parse_methods(text: str, budgets: list[float] | None = None) -> list[Method]:
    """``none,specprune@0.8,fastv@0.8`` -> methods, checked (names, alphas, fastv's partner).

    ``budgets``: alphas a rule listed without one runs at, each (``specprune,random`` with
    budgets 1,2 -> specprune@1, specprune@2, random@1, random@2): a budget sweep on paired seeds.
    FastV's partners come first whatever the order given.
    """
    methods: list[Method] = []
    for item in (part.strip() for part in text.split(",")):
        match = re.fullmatch(r"([a-z][a-z0-9-]*)(?:@(\d+(?:\.\d*)?|\.\d+))?", item)
        if not match:
            raise ConfigError(f"--methods: {item!r} is not name[@alpha] (e.g. specprune@0.8)")
        name, alpha_text = match.groups()
        if name not in BASE_METHODS and name not in VARIANTS:
            known = ", ".join(BASE_METHODS + tuple(VARIANTS))
            raise ConfigError(f"--methods: unknown method {name!r} (one of {known})")
        if name == "none" and alpha_text:
            raise ConfigError("--methods: none takes no alpha")
        if name == "none":
            alphas: list[float | None] = [None]
        elif alpha_text:
            alphas = [float(alpha_text)]
        else:
            alphas = list(budgets) if budgets else [None]         # the configured alpha
        for alpha in alphas:
            label = name if alpha is None else f"{name}@{alpha:g}"
            if any(m.label == label for m in methods):
                raise ConfigError(f"--methods: {label} is listed twice")
            methods.append(Method(label, name, alpha, dict(VARIANTS.get(name, {}))))
    methods.sort(key=lambda m: m.name == "fastv")          # stable: fastv after the rules it is matched to
    labels = [m.label for m in methods]
    for m in methods:
        if m.matched_to and m.matched_to not in labels:
            raise ConfigError(f"--methods: {m.label} keeps as many tokens as {m.matched_to} did in this run; "
                              f"list {m.matched_to} too")
    for m in methods:
        m.config(Config())                         # every knob valid before any episode runs
    return methods


def parse_budgets(text: str) -> list[float]:
    """``0.5,1,2`` -> alphas, each a valid pruning.alpha."""
    try:
        budgets = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--budgets: {text!r} is not a comma-separated list of alphas (e.g. 0.5,1,2,3.5)") from None
    if not budgets or len(set(budgets)) != len(budgets):
        raise ConfigError(f"--budgets: {text!r} must name one or more distinct alphas")
    for alpha in budgets:
        Config().replace(**{"pruning.alpha": alpha})
    return budgets


def parse_seeds(text: str) -> list[int]:
    """``100000:100050`` -> the seeds 100000 .. 100049 (half-open, as a Python range)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or int(match.group(1)) >= int(match.group(2)):
        raise ConfigError(f"--seeds: {text!r} is not A:B with A < B (seeds A .. B-1, e.g. 100000:100050)")
    return list(range(int(match.group(1)), int(match.group(2))))
