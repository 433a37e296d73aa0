"""Frame differencing for the dynamic token set (Eq. 2) and the velocity-adaptive history.

Frames are the model-resolution images (after resize / rotation / crop, before per-backbone
normalization), uint8 or float, shape (cameras, 3, H, W). Similarity is per 14 x 14 patch on
raw pixels, as in the authors' code. The history stores each frame's unit patch vectors, so
a step normalizes only its own frame and a comparison is one multiply-sum.

The history is kept by time, not by policy step: the method's T counts action periods, and the
compared frame is the one closest to ``t - T * action_dt``, whatever the control rate.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

EPS = 1e-8


def patch_unit_vectors(frames: torch.Tensor, patch: int = 14) -> torch.Tensor:
    """(cameras, grid_h * grid_w, 3 * patch^2) unit vectors of the row-major patches.

    Pixels are offset by one grey level first, so an all-black patch has a direction (the
    uniform one) and black vs black compares as identical instead of 0/0; raw-pixel cosine
    similarity cannot tell black from uniform grey anyway.
    """
    if frames.dim() != 4:
        raise ValueError(f"expected frames (cameras, channels, H, W), got {tuple(frames.shape)}")
    cams, chans, height, width = frames.shape
    if height % patch or width % patch:
        raise ValueError(f"frame size {height}x{width} is not a multiple of the {patch}px patch")
    gh, gw = height // patch, width // patch
    x = frames.float().view(cams, chans, gh, patch, gw, patch)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(cams, gh * gw, chans * patch * patch)
    return torch.nn.functional.normalize(x.add_(1.0), dim=-1)


def patch_cosine_similarity(current: torch.Tensor, past: torch.Tensor, patch: int = 14) -> torch.Tensor:
    """Cosine similarity of co-located patches of two frame batches: (cameras, grid_h * grid_w)."""
    if current.shape != past.shape:
        raise ValueError(f"frames differ in shape: {tuple(current.shape)} vs {tuple(past.shape)}")
    return (patch_unit_vectors(current, patch) * patch_unit_vectors(past, patch)).sum(-1)


def history_periods(speed: float, base: float, slope: float, offset: int) -> int:
    """T = floor(base + slope * speed) + offset action periods back, at least 1.

    ``speed`` is the arm's translation speed scaled to a chunk horizon (``executed_translation``),
    so a fast transport phase compares with a recent frame and a slow grasp with an older one.
    """
    if not math.isfinite(speed):
        speed = 0.0
    return max(1, int(math.floor(base + slope * speed)) + offset)


def executed_translation(motion: np.ndarray | None, horizon: float = 8.0) -> float:
    """The history rule's v: ||sum of (dx, dy, dz)|| / executed actions * ``horizon``.

    A speed, not a displacement: the net translation per executed action period, scaled to
    ``horizon`` periods (8 = OFT's chunk, where v is the translation of one executed chunk, the
    paper's setting). A node re-planning every period and a policy queried once per chunk then
    compare frames the same time apart for the same arm motion; a displacement summed since the
    previous step would shrink eightfold at 10 Hz re-planning and pin T to its maximum.
    """
    if motion is None:
        return 0.0
    rows = np.atleast_2d(np.asarray(motion, dtype=np.float64))
    if not len(rows):
        return 0.0
    return float(np.linalg.norm(rows[:, :3].sum(axis=0))) / len(rows) * horizon


def executed_actions(chunk: np.ndarray, elapsed_s: float, action_dt: float) -> np.ndarray:
    """The actions of the previous chunk the robot had time to execute since it was predicted.

    k = round(elapsed / action_dt), clamped to 1..chunk_size: a policy queried once per chunk
    (OFT on LIBERO) executed the whole chunk; one queried every action period, its first action.
    """
    chunk = np.atleast_2d(chunk)
    periods = round(elapsed_s / action_dt) if math.isfinite(elapsed_s) and elapsed_s > 0 else 1
    return chunk[:min(max(int(periods), 1), len(chunk))]


class FrameHistory:
    """Past frames by time: at most one per ``action_dt`` period, preallocated on the device.

    Items are whatever the caller compares (here all cameras' unit patch vectors). A frame is
    kept if it is the first of its action period (``floor(stamp / action_dt)``), so frames that
    arrive at any camera rate are downsampled to one per period; ``closest(t)`` returns the kept
    frame whose stamp is nearest to ``t``, which clamps a look-back to what the buffer holds.
    ``capacity`` periods are kept (``PruningConfig.history_capacity()`` covers the longest T).

    An item may be given as a function that makes it: it is called only if that frame is ever
    the one compared (a policy queried once per chunk sees 7 frames in between and compares one).
    """

    def __init__(self, capacity: int, item_shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items = torch.zeros((capacity, *item_shape), dtype=dtype, device=device)
        self.stamps: list[float] = []     # oldest first; slot of stamps[i] is _slots[i]
        self._slots: list[int] = []
        self._pending: dict[int, Callable[[], torch.Tensor]] = {}   # slot -> makes its item

    def reset(self) -> None:
        self.stamps, self._slots, self._pending = [], [], {}

    def __len__(self) -> int:
        return len(self.stamps)

    def add(self, stamp: float, item: torch.Tensor | Callable[[], torch.Tensor], action_dt: float) -> bool:
        """Keep ``item`` (or the function making it) if it is the first frame of a later action
        period; True if kept."""
        if isinstance(item, torch.Tensor) and item.shape != self.items.shape[1:]:
            raise ValueError(f"item has shape {tuple(item.shape)}, the history holds {tuple(self.items.shape[1:])}")
        if self.stamps and _period(stamp, action_dt) <= _period(self.stamps[-1], action_dt):
            return False
        if len(self.stamps) == self.capacity:
            slot = self._slots.pop(0)
            self.stamps.pop(0)
        else:                         # a free slot (forgotten frames leave holes anywhere)
            slot = next(i for i in range(self.capacity) if i not in self._slots)
        self._pending.pop(slot, None)
        if isinstance(item, torch.Tensor):
            self.items[slot].copy_(item, non_blocking=True)
        else:
            self._pending[slot] = item
        self.stamps.append(stamp)
        self._slots.append(slot)
        return True

    def closest(self, target: float, before: float) -> tuple[torch.Tensor, float] | None:
        """(item, stamp) of the kept frame nearest to ``target`` among those older than ``before``."""
        best = None
        for stamp, slot in zip(self.stamps, self._slots):
            if stamp < before and (best is None or abs(stamp - target) < abs(best[1] - target)):
                best = (slot, stamp)
        if best is None:
            return None
        make = self._pending.pop(best[0], None)
        if make is not None:
            try:
                item = make()
                if item.shape != self.items.shape[1:]:
                    raise ValueError(f"item has shape {tuple(item.shape)}, the history holds "
                                     f"{tuple(self.items.shape[1:])}")
            except ValueError:        # a frame that cannot be prepared is forgotten; try the next
                index = self._slots.index(best[0])
                del self._slots[index], self.stamps[index]
                return self.closest(target, before)
            self.items[best[0]].copy_(item, non_blocking=True)
        return self.items[best[0]], best[1]


def _period(stamp: float, action_dt: float) -> int:
    """The action period a stamp falls in; 1 ns of slack so 0.3 / 0.1 = 2.9999999999999996 is period 3."""
    return math.floor(stamp / action_dt + 1e-9)
