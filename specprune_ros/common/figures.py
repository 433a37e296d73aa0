"""Small helpers shared by the reports' matplotlib figures (no matplotlib import of their own)."""
from __future__ import annotations

from ..observation import CAMERA_LABELS

PRUNED_PATCHES = "grey, hatched = pruned"     # how PolicyOutput.overlay marks pruned patches


def label_cameras(ax, image) -> None:
    """Name each camera under a kept-patch strip (square frames side by side, primary first)."""
    side = image.shape[0]
    for k, name in enumerate(CAMERA_LABELS[:image.shape[1] // side]):
        ax.text((k + 0.5) * side, side + 4, name, ha="center", va="top", fontsize=8)
