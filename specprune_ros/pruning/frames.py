"""Frame differencing for the dynamic token set (Eq. 2) and the velocity-adaptive history.

Frames are the model-resolution images (after resize / rotation / crop, before per-backbone
normalization), uint8 or float, shape (cameras, 3, H, W). Similarity is per 14 x 14 patch on
raw pixels, as in the authors' code. The history stores each frame's unit patch vectors, so
a step normalizes only its own frame and a comparison is one multiply-sum.
"""
from __future__ import annotations

import math

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


def history_steps(speed: float, base: float, slope: float, offset: int, available: int) -> int:
    """T = floor(base + slope * speed) + offset, clamped to [1, available]; 0 if nothing is stored."""
    if available <= 0:
        return 0
    if not math.isfinite(speed):
        speed = 0.0
    t = math.floor(base + slope * speed) + offset
    return max(1, min(int(t), available))


class FrameRingBuffer:
    """The last ``capacity`` per-step items (all cameras' frames or patch vectors) on the device.

    Preallocated: pushing never allocates, and a look-back is an index into the buffer.
    ``capacity`` must cover the longest look-back plus the current step
    (``PruningConfig.history_capacity()``).
    """

    def __init__(self, capacity: int, item_shape: tuple[int, ...], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (current frame + one past), got {capacity}")
        self.capacity = capacity
        self.frames = torch.zeros((capacity, *item_shape), dtype=dtype, device=device)
        self._count = 0
        self._head = -1  # slot of the newest frame

    def reset(self) -> None:
        self._count, self._head = 0, -1

    def __len__(self) -> int:
        return self._count

    @property
    def available_history(self) -> int:
        """How many steps back a look-up can go from the newest frame."""
        return max(0, self._count - 1)

    def push(self, frames: torch.Tensor) -> None:
        if frames.shape != self.frames.shape[1:]:
            raise ValueError(f"item has shape {tuple(frames.shape)}, buffer holds "
                             f"{tuple(self.frames.shape[1:])}")
        self._head = (self._head + 1) % self.capacity
        self.frames[self._head].copy_(frames, non_blocking=True)
        self._count = min(self._count + 1, self.capacity)

    def latest(self) -> torch.Tensor:
        return self.lookback(0)

    def lookback(self, steps: int) -> torch.Tensor:
        """The frames pushed ``steps`` pushes before the newest (0 = newest)."""
        if not 0 <= steps <= self.available_history:
            raise IndexError(f"cannot look {steps} steps back: {self.available_history} available")
        return self.frames[(self._head - steps) % self.capacity]
