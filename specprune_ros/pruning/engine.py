"""SpecPrune-VLA's state across control steps, without the model.

The model calls it in this order every step:

    engine.observe(stamp, frames)                        # frames seen between steps (history only)
    plan = engine.begin_step(frames, motion, stamp)      # controller, K, history T, frame diff
    ... layers 1..local_layers on all tokens, collect their scores ...
    selection = engine.select(plan, local_scores)         # static pruning (or the fallback)
    ... remaining layers; LayerImportance drops tokens at the dynamic layers ...
    recall = engine.end_step(plan, global_scores)         # prior for the next step

``plan.prune`` is False on the first step of an episode (no prior yet) or with pruning
disabled: the model then runs unpruned and still records the global scores. A scene cut,
detected on the device, keeps every token through ``selection.fallback``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import PruningSettings
from .controller import ActionAwareController, Decision, KBudget, Motion, k_budget
from .frames import FrameHistory, executed_translation, history_periods, patch_unit_vectors
from .layout import TokenLayout
from .static import FrameRule, StaticSelection, block_ids, detect_scene_cut, select_static, union_topk_mask

PATCH = 14
COVERAGE_SEED = 0                     # coverage_pick random: every episode draws the same sequence


@dataclass
class StepPlan:
    prune: bool                       # False: run this step unpruned (first step / disabled)
    reason: str                       # why not pruned ("" when pruned)
    decision: Decision
    k: KBudget
    history_frames: int               # T (action periods) of the history rule (0 = no frame stored)
    history_age_s: float              # age of the frame compared (closest to t - T * action_dt), 0 if none
    similarity: torch.Tensor | None   # (C, N) patch similarity to the compared frame
    scene_cut: torch.Tensor | None    # () bool


class SpecPruneEngine:
    """Holds the previous step's global scores, the frame history and the controller."""

    def __init__(self, config: PruningSettings, layout: TokenLayout, frame_shape: tuple[int, int, int] = (3, 224, 224),
                 device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.device = torch.device(device)
        self.frame_shape = frame_shape
        self.frames = self._history(config)
        self.controller = ActionAwareController(config.controller)
        self.config = config
        self.prior: torch.Tensor | None = None            # (G, C, N) scores, -inf = no score
        self.prior_selected: torch.Tensor | None = None   # (C, N) V_global chosen this step
        self.previous_vectors: torch.Tensor | None = None  # the previous step's frame, for scene cuts
        self._tau_key: tuple[float, float] | None = None
        self._tau = torch.empty(0)
        self._rule: FrameRule | None = None
        self._picks = torch.Generator(device=self.device)   # coverage_pick random: re-seeded per episode
        self._picks.manual_seed(COVERAGE_SEED)
        self.steps_since_dense = 0     # steps planned pruned since the last unpruned one (scene cuts count)

    # ---- configuration and episodes -----------------------------------------------------------
    def configure(self, config: PruningSettings) -> None:
        """Take new knobs between steps (ToMe-style: plain state, read at the next step)."""
        if config.pruning.history_capacity() != self.frames.capacity:
            self.frames = self._history(config)
        if config.pruning.global_layers != self.config.pruning.global_layers:
            self.prior = None
        self.controller.config = config.controller
        self.config = config

    def _history(self, config: PruningSettings) -> FrameHistory:
        """Unit patch vectors of past frames: each frame is normalized once, when it arrives."""
        _, height, width = self.frame_shape
        patches = (height // PATCH) * (width // PATCH)
        return FrameHistory(config.pruning.history_capacity(),
                            (self.layout.num_cameras, patches, self.frame_shape[0] * PATCH * PATCH),
                            device=self.device)

    def reset(self) -> None:
        """Episode start: no prior, no history, coarse mode."""
        self.prior = None
        self.prior_selected = None
        self.previous_vectors = None
        self.steps_since_dense = 0
        self._picks.manual_seed(COVERAGE_SEED)
        self.frames.reset()
        self.controller.reset()

    # ---- the step ---------------------------------------------------------------------------------
    def thresholds(self) -> torch.Tensor:
        """Per-camera tau on the device (made once per configuration)."""
        p = self.config.pruning
        key = (p.frame_similarity_threshold, p.frame_similarity_threshold_wrist)
        if self._tau_key != key:
            tau = [key[0]] + [key[1]] * (self.layout.num_cameras - 1)
            self._tau = torch.tensor(tau, dtype=torch.float32, device=self.device)
            self._tau_key = key
        return self._tau

    def frame_rule(self) -> FrameRule:
        """The static stage's frame rule and coverage floor (block ids on the device once)."""
        p = self.config.pruning
        if (self._rule is None or (self._rule.name, self._rule.max_removed, self._rule.coverage_blocks)
                != (p.frame_rule, p.static_max_removed, p.coverage_grid)):
            ids = block_ids(self.layout.grid, p.coverage_grid, self.device) if p.coverage_grid else None
            self._rule = FrameRule(p.frame_rule, p.static_max_removed, p.coverage_grid, ids)
        return self._rule

    def observe(self, stamp: float, frames: torch.Tensor | Callable[[], torch.Tensor]) -> None:
        """A frame seen between steps (model resolution, all cameras), for the history only; given
        as a function, it is prepared only if it is ever the frame compared."""
        if isinstance(frames, torch.Tensor):
            item: torch.Tensor | Callable[[], torch.Tensor] = patch_unit_vectors(frames, PATCH)
        else:
            def item(make=frames) -> torch.Tensor:
                return patch_unit_vectors(make(), PATCH)
        self.frames.add(stamp, item, self.config.action_dt)

    def begin_step(self, frames: torch.Tensor, motion: np.ndarray | None, stamp: float) -> StepPlan:
        """Decide the mode and the K values, compare with the history, then store this frame.

        ``motion``: the actions executed since the previous step (rows of dx dy dz droll dpitch
        dyaw ..., normalized units), or None at an episode start. The controller takes their
        mean; the history rule takes their translation speed over ``pruning.history_horizon``.
        """
        p, action_dt = self.config.pruning, self.config.action_dt
        current = patch_unit_vectors(frames, PATCH)
        decision = self.controller.update(None if motion is None else Motion.from_action(motion))
        budget = k_budget(p, self.config.controller, decision.fine, self.layout.tokens_per_camera)
        periods, age = 0, 0.0
        similarity = scene_cut = None
        past = None
        if len(self.frames):
            periods = history_periods(executed_translation(motion, p.history_horizon), p.history_base, p.history_slope,
                                      p.history_offset)
            past = self.frames.closest(stamp - periods * action_dt, before=stamp)
        if past is not None:
            similarity = (current * past[0]).sum(-1)
            age = stamp - past[1]
            previous = self.previous_vectors if self.previous_vectors is not None else past[0]
            step_change = (current[:1] * previous[:1]).sum(-1)
            scene_cut = detect_scene_cut(step_change, p.frame_similarity_threshold, p.scene_cut_fraction)
        else:
            periods = 0
        self.frames.add(stamp, current, action_dt)
        self.previous_vectors = current
        if not p.enabled:
            reason = "disabled"
        elif self.prior is None:
            reason = "no prior (first step)"
        elif p.refresh_period and self.steps_since_dense >= p.refresh_period:
            reason = "prior refresh"
        else:
            reason = ""
        self.steps_since_dense = self.steps_since_dense + 1 if not reason else 0
        return StepPlan(not reason, reason, decision, budget, periods, age, similarity, scene_cut)

    def select(self, plan: StepPlan, local_scores: torch.Tensor) -> StaticSelection:
        """Static selection from this step's local-layer scores (L, C, N)."""
        if not plan.prune or self.prior is None:
            raise RuntimeError(f"static selection requested on an unpruned step ({plan.reason})")
        picks = None
        if self.config.pruning.coverage_grid and self.config.pruning.coverage_pick == "random":
            picks = torch.rand(local_scores.shape[1:], generator=self._picks, device=local_scores.device)
        selection = select_static(self.prior, local_scores, plan.similarity, self.thresholds(),
                                  plan.k.k_global, plan.k.k_local, plan.k.k_dynamic, plan.scene_cut,
                                  self.frame_rule(), picks)
        self.prior_selected = selection.global_mask
        return selection

    def end_step(self, plan: StepPlan, global_scores: torch.Tensor) -> torch.Tensor:
        """Record this step's global-layer scores (G, C, N) as the next prior; return the recall.

        Recall = share of this step's global top-K also in the V_global it was pruned with
        (NaN on unpruned steps, which had no prior selection).
        """
        current_top = union_topk_mask(global_scores, plan.k.k_global)
        if plan.prune and self.prior_selected is not None:
            hits = (current_top & self.prior_selected).sum()
            recall = hits.float() / current_top.sum().clamp_min(1).float()
        else:
            recall = torch.full((), float("nan"), device=global_scores.device)
        self.prior = global_scores.detach()
        self.prior_selected = None
        return recall
