"""SpecPrune-VLA's state across control steps, without the model.

The model calls it in this order every step:

    plan = engine.begin_step(frames, previous_action)    # controller, K, history T, frame diff
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

import numpy as np
import torch

from ..config import Config
from .controller import ActionAwareController, Decision, KBudget, Motion, k_budget
from .frames import FrameRingBuffer, history_steps, patch_unit_vectors
from .layout import TokenLayout
from .static import StaticSelection, detect_scene_cut, select_static, union_topk_mask


PATCH = 14


@dataclass
class StepPlan:
    prune: bool                       # False: run this step unpruned (first step / disabled)
    reason: str                       # why not pruned ("" when pruned)
    decision: Decision
    k: KBudget
    history_frames: int               # T used for frame differencing (0 = none available)
    similarity: torch.Tensor | None   # (C, N) patch similarity to the frame T steps back
    scene_cut: torch.Tensor | None    # () bool


class SpecPruneEngine:
    """Holds the previous step's global scores, the frame history and the controller."""

    def __init__(self, config: Config, layout: TokenLayout, frame_shape: tuple[int, int, int] = (3, 224, 224),
                 device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.device = torch.device(device)
        self.frame_shape = frame_shape
        self.frames = self._history(config)
        self.controller = ActionAwareController(config.controller)
        self.config = config
        self.prior: torch.Tensor | None = None            # (G, C, N) scores, -inf = no score
        self.prior_selected: torch.Tensor | None = None   # (C, N) V_global chosen this step
        self._tau_key: tuple[float, float] | None = None
        self._tau = torch.empty(0)

    # ---- configuration and episodes -----------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Take new knobs between steps (ToMe-style: plain state, read at the next step)."""
        if config.pruning.history_capacity() != self.frames.capacity:
            self.frames = self._history(config)
        if config.pruning.global_layers != self.config.pruning.global_layers:
            self.prior = None
        self.controller.config = config.controller
        self.config = config

    def _history(self, config: Config) -> FrameRingBuffer:
        """Unit patch vectors of the last frames: each step normalizes only its own frame."""
        _, height, width = self.frame_shape
        patches = (height // PATCH) * (width // PATCH)
        return FrameRingBuffer(config.pruning.history_capacity(),
                               (self.layout.num_cameras, patches, self.frame_shape[0] * PATCH * PATCH),
                               device=self.device)

    def reset(self) -> None:
        """Episode start: no prior, no history, coarse mode."""
        self.prior = None
        self.prior_selected = None
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

    def begin_step(self, frames: torch.Tensor, previous_action: np.ndarray | None) -> StepPlan:
        """Push this step's frames, decide the mode and the K values, compute frame differences."""
        p = self.config.pruning
        self.frames.push(patch_unit_vectors(frames, PATCH))
        motion = None if previous_action is None else Motion.from_action(previous_action)
        decision = self.controller.update(motion)
        budget = k_budget(p, self.config.controller, decision.fine, self.layout.tokens_per_camera)
        history = history_steps(decision.motion.translation_speed, p.history_base, p.history_slope,
                                p.history_offset, self.frames.available_history)
        similarity = scene_cut = None
        if history:
            current = self.frames.latest()
            similarity = (current * self.frames.lookback(history)).sum(-1)
            step_change = similarity[:1] if history == 1 else (current[:1] * self.frames.lookback(1)[:1]).sum(-1)
            scene_cut = detect_scene_cut(step_change, p.frame_similarity_threshold, p.scene_cut_fraction)
        if not p.enabled:
            reason = "disabled"
        elif self.prior is None:
            reason = "no prior (first step)"
        else:
            reason = ""
        return StepPlan(not reason, reason, decision, budget, history, similarity, scene_cut)

    def select(self, plan: StepPlan, local_scores: torch.Tensor) -> StaticSelection:
        """Static selection from this step's local-layer scores (L, C, N)."""
        if not plan.prune or self.prior is None:
            raise RuntimeError(f"static selection requested on an unpruned step ({plan.reason})")
        selection = select_static(self.prior, local_scores, plan.similarity, self.thresholds(),
                                  plan.k.k_global, plan.k.k_local, plan.k.k_dynamic, plan.scene_cut)
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
