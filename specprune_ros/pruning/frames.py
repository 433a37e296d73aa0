"""Frame differencing for the dynamic token set (Eq. 2) and the velocity-adaptive history.

Frames are the model-resolution images (after resize / rotation / crop, before per-backbone
normalization), uint8 or float, shape (cameras, 3, H, W). Similarity is per 14 x 14 patch on
raw pixels, as in the authors' code.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-8


def patch_cosine_similarity(current: torch.Tensor, past: torch.Tensor, patch: int = 14) -> torch.Tensor:
    """Cosine similarity of co-located patches: (cameras, grid_h * grid_w), row-major grid."""
    if current.shape != past.shape:
        raise ValueError(f"frames differ in shape: {tuple(current.shape)} vs {tuple(past.shape)}")
    if current.dim() != 4:
        raise ValueError(f"expected frames (cameras, channels, H, W), got {tuple(current.shape)}")
    cams, chans, height, width = current.shape
    if height % patch or width % patch:
        raise ValueError(f"frame size {height}x{width} is not a multiple of the {patch}px patch")
    gh, gw = height // patch, width // patch

    def patches(x: torch.Tensor) -> torch.Tensor:
        x = x.float().view(cams, chans, gh, patch, gw, patch)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(cams, gh * gw, chans * patch * patch)

    a, b = patches(current), patches(past)
    dot = (a * b).sum(-1)
    norm = a.norm(dim=-1) * b.norm(dim=-1)
    # Two black patches are identical: similarity 1, not 0/0.
    both_zero = norm <= EPS
    return torch.where(both_zero, torch.ones_like(dot), dot / norm.clamp_min(EPS))


def history_steps(speed: float, base: float, slope: float, offset: int, available: int) -> int:
    """T = floor(base + slope * speed) + offset, clamped to [1, available]; 0 if nothing is stored."""
    if available <= 0:
        return 0
    if not math.isfinite(speed):
        speed = 0.0
    t = math.floor(base + slope * speed) + offset
    return max(1, min(int(t), available))


class FrameRingBuffer:
    """The last ``capacity`` frames of every camera, one slot per inference step, on the device.

    Preallocated: pushing never allocates, and the look-back frame is an index into the buffer.
    ``capacity`` must cover the longest look-back plus the current frame
    (``PruningConfig.history_capacity()``).
    """

    def __init__(self, capacity: int, num_cameras: int, frame_shape: tuple[int, int, int] = (3, 224, 224),
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.uint8) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2 (current frame + one past), got {capacity}")
        self.capacity = capacity
        self.frames = torch.zeros((capacity, num_cameras, *frame_shape), dtype=dtype, device=device)
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
            raise ValueError(f"frame batch has shape {tuple(frames.shape)}, buffer holds "
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
