"""Action-aware controller: coarse (prune hard) vs fine (keep more) from the previous action.

Runs on the host on the previous step's action, which the policy already holds on the host,
so it costs no device sync. Speeds are in the units of the action given to it (the policy
passes normalized actions, where the authors' thresholds 0.4 / 0.2 apply).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import ControllerConfig, PruningConfig


@dataclass(frozen=True)
class Motion:
    translation_speed: float
    rotation_speed: float
    dz: float

    @classmethod
    def from_action(cls, action: np.ndarray) -> "Motion":
        """v_t = ||(dx, dy, dz)||, v_r = ||(droll, dpitch, dyaw)|| of a 6+ dim delta action.

        A chunk (steps, dims) is averaged over its steps first.
        """
        a = np.asarray(action, dtype=np.float64)
        if a.ndim == 2:
            a = a.mean(axis=0)
        if a.ndim != 1 or a.shape[0] < 6:
            raise ValueError(f"need an action with >= 6 dims (dx dy dz droll dpitch dyaw), got {a.shape}")
        if not np.all(np.isfinite(a[:6])):
            raise ValueError("previous action contains non-finite values")
        return cls(float(np.linalg.norm(a[:3])), float(np.linalg.norm(a[3:6])), float(a[2]))


@dataclass(frozen=True)
class Decision:
    fine: bool
    entered_fine: bool   # coarse -> fine this step: the node may drop the queued chunk and re-plan
    motion: Motion


class ActionAwareController:
    """Fine mode when slow and descending; leaves it with hysteresis (rising, rotating or fast)."""

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.config = config or ControllerConfig()
        self.fine = False

    def reset(self) -> None:
        self.fine = False

    def update(self, motion: Motion | None) -> Decision:
        """Decide from the previous action's motion; None (no action yet) keeps the mode."""
        cfg = self.config
        was_fine = self.fine
        if motion is None:
            motion = Motion(0.0, 0.0, 0.0)
            self.fine = was_fine and cfg.enabled
        elif not cfg.enabled:
            self.fine = False
        elif was_fine:
            self.fine = not (motion.dz > cfg.exit_dz_threshold or motion.rotation_speed > cfg.exit_rotation_threshold
                             or motion.translation_speed > cfg.exit_translation_threshold)
        else:
            self.fine = (motion.translation_speed < cfg.translation_threshold
                         and motion.rotation_speed < cfg.rotation_threshold and motion.dz <= 0.0)
        return Decision(self.fine, self.fine and not was_fine, motion)


@dataclass(frozen=True)
class KBudget:
    """Per-camera K values in force for one step."""

    k_global: int
    k_local: int
    k_dynamic: int


def scaled_k(base: int, alpha: float, fine: bool, fine_scale: float, limit: int) -> int:
    """round(alpha * base * (fine_scale if fine else 1)), clamped to [0, limit]."""
    k = alpha * base * (fine_scale if fine else 1.0)
    return max(0, min(limit, int(math.floor(k + 0.5))))


def k_budget(pruning: PruningConfig, controller: ControllerConfig, fine: bool, limit: int) -> KBudget:
    scale = controller.fine_k_scale
    return KBudget(*(scaled_k(k, pruning.alpha, fine, scale, limit)
                     for k in (pruning.k_global, pruning.k_local, pruning.k_dynamic)))
