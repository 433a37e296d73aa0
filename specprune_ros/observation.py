"""What the robot shows the policy at one control step: light types, no torch, no model.

Shared by the sensing code (messages -> observations), the policy and the offline tools, so
the ROS-facing layers can build observations without importing the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

CAMERA_LABELS = ("third-person camera", "wrist camera", "third camera")   # the model's image order


class ObservationError(ValueError):
    """An observation that must not produce an action (malformed image, bad proprio, ...)."""


Images = Sequence[np.ndarray]


@dataclass(frozen=True)
class HistoryFrame:
    """Camera frames seen between two steps, kept for frame differencing only (one per action period).

    ``images`` may be a function that decodes them: a step compares with one past frame at most,
    so the others are never decoded.
    """

    stamp: float                                      # seconds (stamp of the primary image)
    images: Images | Callable[[], Images]             # HxWx3 uint8 RGB, one per camera, primary first

    def load(self) -> Images:
        """The images (decoded now if given as a function; may raise ObservationError)."""
        return self.images() if callable(self.images) else self.images


@dataclass
class Observation:
    images: Sequence[np.ndarray]          # HxWx3 uint8 RGB, primary camera first
    proprio: np.ndarray | None = None     # raw robot state (normalized with the dataset statistics)
    instruction: str = ""
    stamp: float = 0.0                    # seconds (ROS time of the primary image)
    stamp_ns: int | None = None           # the same stamp exactly, for message headers
    # Measured end-effector motion since the previous step (rows of dx dy dz droll dpitch dyaw,
    # normalized action units, one per executed action period; a single row is one period) for
    # the controller and the history rule; None uses the executed part of the previous
    # predicted chunk, as the paper does.
    motion: np.ndarray | None = None
    # Frames that arrived since the previous step, older than this one, oldest first.
    history: Sequence[HistoryFrame] = ()
