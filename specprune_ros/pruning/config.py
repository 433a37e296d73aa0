"""The pruning engine's own configuration: SpecPrune's knobs, the controller's, and the settings
a strategy is built from (``PruningSettings``: these two sections and the action period, passed
in by the application, whose ``Config`` holds them next to its node, executor and topic knobs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..knobs import ConfigError, knob, validate_section

METHODS = ("specprune", "random", "fastv")     # the rules ``strategy.STRATEGIES`` implements


@dataclass(frozen=True)
class PruningConfig:
    """SpecPrune-VLA knobs: the paper's (and the authors' code's) values, plus the coverage floor and
    alpha the sim testbed's validation sweep chose (docs/pruning-results.md)."""

    enabled: bool = knob(True, "Prune vision tokens with pruning.method; false runs the plain OpenVLA-OFT forward.")
    method: str = knob("specprune", "Pruning rule: specprune (this method); random (SpecPrune's per-camera, "
                       "per-layer token counts, tokens chosen at random: a matched-budget baseline); fastv "
                       "(FastV: after layer fastv_layer keep the fastv_tokens vision tokens the instruction "
                       "attends to most).", choices=METHODS)
    fastv_layer: int = knob(2, "FastV's K: the 1-based LLM layer after which it prunes (FastV: 2).",
                            low=1, high=1024)
    fastv_tokens: int = knob(160, "FastV's R: vision tokens kept over all cameras (sim eval matches it to "
                             "SpecPrune's mean kept count).", low=1, high=8192)
    alpha: float = knob(1.6, "Global pruning strength: every K is scaled by alpha (paper main table: 0.8; 1.6 with "
                        "the coverage floor is the lowest budget within 3 points of unpruned on the sim testbed's "
                        "validation sweep).", low=0.05, high=4.0)
    k_global: int = knob(30, "K_G: tokens per camera taken from the previous step's global-layer scores.",
                         low=0, high=4096)
    k_local: int = knob(24, "K_L: tokens per camera taken from the current step's first layers.",
                        low=0, high=4096)
    k_dynamic: int = knob(20, "K_D: most-changed patches per camera taken from frame differencing.",
                          low=0, high=4096)
    global_layers: tuple[int, ...] = knob((15, 32), "1-based LLM layers whose scores form the next step's prior "
                                          "(paper: a middle and the last layer).", low=1, high=1024,
                                          min_len=1, max_len=8)
    local_layers: int = knob(2, "Leading LLM layers run on all tokens to score the local set (paper: 2).",
                             low=1, high=16)
    frame_similarity_threshold: float = knob(
        0.990, "Patch cosine similarity below which a primary-camera patch counts as changed (tau).",
        low=0.0, high=1.0)
    frame_similarity_threshold_wrist: float = knob(
        0.992, "Same threshold for the wrist (and further) cameras (an older note of the authors: 0.992; their "
        "released code uses 0.986 for both cameras).", low=0.0, high=1.0)
    history_base: float = knob(7.0, "b of the history rule T = floor(b + k*v) + offset (T in action periods, v the "
                               "arm's translation speed over pruning.history_horizon action periods).",
                               low=0.0, high=64.0)
    history_slope: float = knob(-1.0, "k of the history rule; <= 0 so faster motion compares closer frames.",
                                low=-64.0, high=0.0)
    history_offset: int = knob(4, "Offset of the history rule (paper: 4).", low=0, high=64)
    history_horizon: float = knob(
        8.0, "Action periods the history rule's speed is scaled to: v = ||net translation per executed action|| x "
        "this (8 = OFT's chunk: v is one executed chunk's translation, as in the paper), so the same arm motion "
        "gives the same T whether the node re-plans every period or once per chunk.", low=1.0, high=1024.0)
    scene_cut_fraction: float = knob(
        0.6, "Share of primary-camera patches changed (below tau) since the previous step above which "
        "the temporal prior is distrusted and the step keeps every token (1 disables).", low=0.0, high=1.0)
    dynamic_layers: tuple[int, ...] = knob((5, 10, 15, 20), "1-based LLM layers after which the "
                                           "lowest-importance vision tokens are dropped (empty: none).",
                                           low=1, high=1024, min_len=0, max_len=64)
    dynamic_drop_ratio: float = knob(0.2, "Share of the remaining vision tokens dropped at each dynamic layer "
                                     "(paper: ~10 %; the authors' code has this stage off by default and, "
                                     "switched on, keeps 80 % of the whole sequence).", low=0.0, high=0.9)
    ema_beta: float = knob(0.2, "beta of the importance EMA over layers: S = (1-beta) S + beta s.",
                           low=0.0, high=1.0)
    rank_sharpness: float = knob(0.05, "k of the rank weight sigmoid(-k * rank) (not given in the paper).",
                                 low=0.0, high=10.0)
    confidence: str = knob("entropy", "Layer confidence for the EMA: 1/entropy (paper default) or mean/std.",
                           choices=("entropy", "mean_std"))
    score_queries: str = knob(
        "instruction", "Whose attention scores the vision tokens, for SpecPrune and FastV alike: instruction (the "
        "paper: the prompt's tokens), "
        "action (the positions the action head reads, decoded in the same forward), or both.",
        choices=("instruction", "action", "both"))
    coverage_grid: int = knob(
        8, "Static stage: split each camera's patch grid into coverage_grid x coverage_grid blocks and keep every "
        "block's best-scoring patch (this step's local layers), so no region of an image is left empty (0: off, "
        "the paper; 8: every 2 x 2 patch block of the 16 x 16 grid keeps one).", low=0, high=64)
    coverage_pick: str = knob(
        "best", "Which patch of each coverage block is kept: best (this step's local scores) or random (a seeded "
        "draw at every step, so the floor re-samples each block as random pruning does).",
        choices=("best", "random"))
    coverage_dynamic: bool = knob(
        False, "Keep the coverage floor through the dynamic layers too: each block's most important remaining "
        "patch is dropped only when nothing else is left to drop.")
    refresh_period: int = knob(
        0, "After this many pruned steps one step runs unpruned and scores every token again, so a patch the "
        "prior dropped can come back (0: never, the paper).", low=0, high=100000)
    frame_rule: str = knob(
        "changed", "How frame differencing enters the static stage: changed (the paper: add the k_dynamic most "
        "changed patches) or drop_static (the authors' released code: start from every patch and remove only "
        "those at least as similar as the threshold to the compared frame, at most static_max_removed per "
        "camera; the prior and local sets are kept as well).", choices=("changed", "drop_static"))
    static_max_removed: int = knob(200, "frame_rule drop_static: most patches removed per camera (authors' code: "
                                   "200 of 256).", low=0, high=4096)

    def __post_init__(self) -> None:
        validate_section(self, "pruning")
        if self.global_layers and min(self.global_layers) <= self.local_layers:
            raise ConfigError(
                f"pruning.global_layers = {list(self.global_layers)}: global layers must come after the "
                f"{self.local_layers} local layers (range [{self.local_layers + 1}, num_layers])")
        if self.dynamic_layers and min(self.dynamic_layers) <= self.local_layers:
            raise ConfigError(
                f"pruning.dynamic_layers = {list(self.dynamic_layers)}: dynamic layers must come after the "
                f"{self.local_layers} local layers (range [{self.local_layers + 1}, num_layers])")

    def history_capacity(self) -> int:
        """Action periods the frame history must hold: the longest look-back T (v = 0) plus one."""
        return max(int(math.floor(self.history_base)) + self.history_offset, 1) + 1


@dataclass(frozen=True)
class ControllerConfig:
    """Action-aware coarse/fine controller (speeds in normalized action units)."""

    enabled: bool = knob(True, "Scale K up in slow, descending (fine) phases; off = always coarse.")
    translation_threshold: float = knob(0.4, "Enter fine mode only below this translation speed.",
                                        low=0.0, high=100.0)
    rotation_threshold: float = knob(0.2, "Enter fine mode only below this rotation speed.",
                                     low=0.0, high=100.0)
    exit_dz_threshold: float = knob(0.2, "Leave fine mode when dz rises above this (hysteresis).",
                                    low=0.0, high=100.0)
    exit_rotation_threshold: float = knob(0.3, "Leave fine mode when rotation speed rises above this.",
                                          low=0.0, high=100.0)
    exit_translation_threshold: float = knob(
        0.6, "Leave fine mode when translation speed rises above this (our addition; the authors' rule "
        "only has the dz and rotation exits).", low=0.0, high=100.0)
    fine_k_scale: float = knob(40.0 / 24.0, "Factor on every K in fine mode (paper: 40/24).",
                               low=1.0, high=16.0)

    def __post_init__(self) -> None:
        validate_section(self, "controller")


@dataclass(frozen=True)
class PruningSettings:
    """What a pruning strategy reads: its two sections and the action period (seconds) that the
    frame history and the executed-motion estimate count in."""

    pruning: PruningConfig
    controller: ControllerConfig
    action_dt: float
