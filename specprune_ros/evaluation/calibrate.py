"""`specprune calibrate`: pruning knobs for a lab's own checkpoint, from its own recordings.

The paper's layer choices were made for one 32-layer model on LIBERO; a fine-tune of another
depth, or on another robot, attends to its task elsewhere. Calibration runs the offline proxy
(evaluation/proxy.py) on the user's observations and picks, one knob group at a time, the candidate
whose action chunks stay closest to the unpruned ones at a target LLM FLOPs ratio:

1. the layers whose scores form the next step's prior (``pruning.global_layers``);
2. whose attention scores the tokens (``pruning.score_queries``);
3. the static stage's extensions (``coverage_grid``, ``refresh_period``, ``frame_rule``; the
   frame rule at the configured thresholds, not the ``specprune-static`` variant's 0.986);
4. the budget: the alpha that meets the target, by interpolation along the chosen rule's curve.

Each candidate runs at a few alphas; its gap at the target is read off its (FLOPs, gap) curve,
so rules are compared at equal compute, never at equal alpha. The result is a ROS parameter file
the node, ``replay`` and ``sim eval`` read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import yaml

from ..common.methods import Method
from ..common.stats import interpolate_curve
from ..config import Config, ConfigError
from ..model.checkpoint import LoadedPolicyModel
from ..pruning.strategy import check_layers
from .proxy import Episode, action_gap, unpruned_chunks

ALPHAS = (0.6, 1.5, 3.0)               # where each candidate's curve is sampled
# What the written file holds: the chosen knobs and the model's other layer knobs, so the file
# alone fits the model.
KNOBS = ("pruning.local_layers", "pruning.global_layers", "pruning.dynamic_layers", "pruning.score_queries",
         "pruning.coverage_grid", "pruning.coverage_dynamic", "pruning.refresh_period", "pruning.frame_rule",
         "pruning.frame_similarity_threshold", "pruning.frame_similarity_threshold_wrist",
         "pruning.static_max_removed", "pruning.alpha")


@dataclass
class Candidate:
    knobs: dict[str, Any]
    points: list[tuple[float, float]] = field(default_factory=list)    # (FLOPs, L1) by alpha
    gap_at_target: float | None = None


def layer_candidates(n_layers: int, local_layers: int, current: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The configured choice first (it wins ties), then single prior layers spread over the depth."""
    first = local_layers + 1
    spread = sorted({int(round(first + (n_layers - first) * f)) for f in (0.0, 0.15, 0.3, 0.5, 0.75, 1.0)})
    options = [(layer,) for layer in spread]
    if current not in options:
        options.insert(0, tuple(current))
    return options


def gap_at(points: list[tuple[float, float]], target: float) -> float | None:
    """The L1 gap interpolated at ``target`` FLOPs (None if the curve does not reach it)."""
    points = sorted(points)
    return interpolate_curve([p[0] for p in points], [p[1] for p in points], target)


def calibrate(loaded: LoadedPolicyModel, config: Config, episodes: list[Episode], target_flops: float,
              progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Choose the knobs; returns the chosen configuration's knobs, its proxy figures, and every
    candidate tried (for the report)."""
    if not 0.05 <= target_flops <= 1.0:
        raise ConfigError(f"--target-flops {target_flops:g}: must lie in [0.05, 1] (a share of the unpruned "
                          f"LLM FLOPs)")
    n_layers = loaded.model.config.llm.layers
    base = config.replace(**{"pruning.enabled": True, "pruning.method": "specprune"})
    try:
        check_layers(base.pruning, n_layers)
    except ValueError as exc:
        raise ConfigError(f"{exc}") from None
    groups: list[tuple[str, list[dict[str, Any]]]] = [
        ("prior layers", [{"pruning.global_layers": list(ls)} for ls in
                          layer_candidates(n_layers, base.pruning.local_layers, base.pruning.global_layers)]),
        ("scoring queries", _options(base, "pruning.score_queries", ("instruction", "action", "both"))),
        ("coverage floor", _options(base, "pruning.coverage_grid", (0, 4, 8))),
        ("prior refresh", _options(base, "pruning.refresh_period", (0, 3))),
        ("frame rule", _options(base, "pruning.frame_rule", ("changed", "drop_static"))),
    ]
    total = sum(len(c) for _, c in groups) * len(ALPHAS) + 1
    done = [0]

    def tick(*_: Any) -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    reference = unpruned_chunks(loaded, base, episodes)
    chosen: dict[str, Any] = {}
    tried: list[dict[str, Any]] = []
    best: Candidate | None = None
    for group, options in groups:
        best = None
        for knobs in options:
            candidate = Candidate({**chosen, **knobs})
            methods = [Method(f"specprune@{a:g}", "specprune", a, candidate.knobs) for a in ALPHAS]
            points = action_gap(loaded, base, episodes, methods, tick, reference)
            candidate.points = [(p["flops_ratio_mean"], p["l1"]) for p in points.values()]
            candidate.gap_at_target = gap_at(candidate.points, target_flops)
            tried.append({"group": group, "knobs": candidate.knobs, "points": candidate.points,
                          "gap_at_target": candidate.gap_at_target})
            if _better(candidate, best, target_flops):
                best = candidate
        chosen = best.knobs
    alpha = alpha_for(best.points, target_flops)
    final = Method(f"specprune@{alpha:g}", "specprune", alpha, chosen)
    point = action_gap(loaded, base, episodes, [final], tick, reference)[final.label]
    flat = base.flat()
    knobs = {**{k: flat[k] for k in KNOBS}, **chosen, "pruning.alpha": alpha}
    return {"knobs": knobs, "target_flops": target_flops, "l1": point["l1"],
            "l1_first": point["l1_first"], "flops_ratio": point["flops_ratio_mean"],
            "kept_tokens": point["kept_tokens_mean"], "steps": sum(len(e) for e in episodes), "tried": tried}


def _options(config: Config, name: str, values: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The candidates of one knob: ``values`` and the configured value (first: it wins ties)."""
    current = config.flat()[name]
    return [{name: v} for v in (current, *(v for v in values if v != current))]


def _better(candidate: Candidate, best: Candidate | None, target: float) -> bool:
    """Lower gap at the target; a candidate whose curve misses the target ranks by its distance."""
    if best is None:
        return True
    return _key(candidate, target) < _key(best, target)


def _key(c: Candidate, target: float) -> tuple[float, float]:
    if c.gap_at_target is not None:
        return (0.0, c.gap_at_target)
    nearest = min(c.points, key=lambda p: abs(p[0] - target))
    return (abs(nearest[0] - target), nearest[1])


def alpha_for(points: list[tuple[float, float]], target: float) -> float:
    """The alpha whose FLOPs meet the target, from a candidate's curve sampled at ``ALPHAS``:
    FLOPs grow with alpha, so interpolate (clamped to the sampled range)."""
    flops = np.maximum.accumulate([f for f, _ in points])
    return round(float(np.interp(target, flops, ALPHAS)), 2)


def params_yaml(result: dict[str, Any], model: str) -> str:
    """The ROS parameter file of the chosen knobs (``/**`` matches the node in any namespace)."""
    knobs = {k: result["knobs"][k] for k in KNOBS if k in result["knobs"]}
    header = (f"# Pruning knobs calibrated for {model} by `specprune calibrate` on {result['steps']} recorded steps:\n"
              f"# target {result['target_flops']:.2f} of the LLM FLOPs; reached {result['flops_ratio']:.3f} with a "
              f"mean action gap of {result['l1']:.4f} (normalized units) from the unpruned chunks.\n"
              f"# Use: --params <this file> (sim eval, replay) or --ros-args --params-file <this file> (the node).\n")
    return header + yaml.safe_dump({"/**": {"ros__parameters": knobs}}, sort_keys=False)

