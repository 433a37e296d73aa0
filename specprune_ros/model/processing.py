"""Observation -> model inputs: image preprocessing, proprio and action (un)normalization.

Images, per camera, on the host (``image_ops``: the reference's exact arithmetic): optional
rotation (multiples of 90 degrees; LIBERO frames are rotated 180), the resize to 224 of frames
that are not 224 x 224 (``reference``: JPEG round trip + lanczos3 + round, as the OFT deploy code
and the RLDS builder do; ``bicubic``: an antialiased bicubic resize, for models trained on such
frames), then the reference's 90 % center crop for models trained with image augmentation. The
uint8 frames go to the model's device once; they feed the frame-difference history, and the
6-channel pixels (DINOv2-normalized, then SigLIP-normalized) feed the vision backbone.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..observation import ObservationError
from . import image_ops

# The released processor's constants (ImageNet values rounded to bf16) and SigLIP's.
DINO_MEAN = (0.484375, 0.455078125, 0.40625)
DINO_STD = (0.228515625, 0.2236328125, 0.224609375)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
RESIZE_METHODS = ("reference", "bicubic")


def check_image(image: Any, name: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"{name}: expected an HxWx3 uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ObservationError(f"{name}: expected an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}")
    if image.shape[0] < 14 or image.shape[1] < 14:
        raise ObservationError(f"{name}: image of {image.shape[1]}x{image.shape[0]} px is too small")
    return image


def bicubic_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize, rounded (for models trained with torchvision-style resizing)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp_(0, 255).round_().to(torch.uint8)[0].permute(1, 2, 0).numpy()


@lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _single_threaded_blas():
    """A context in which numpy's BLAS runs on the calling thread only."""
    return _blas_controller().limit(limits=1, user_api="blas")


class ImageProcessor:
    def __init__(self, size: int = 224, center_crop: bool = True, rotations: Sequence[int] = (),
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 resize: str = "reference") -> None:
        for r in rotations:
            if r % 90:
                raise ValueError(f"camera rotation must be a multiple of 90 degrees, got {r}")
        if resize not in RESIZE_METHODS:
            raise ValueError(f"image_resize {resize!r} is not one of {', '.join(RESIZE_METHODS)}")
        self.size, self.center_crop, self.rotations = size, center_crop, tuple(rotations)
        self.resize = image_ops.reference_resize if resize == "reference" else bicubic_resize
        self.device, self.dtype = torch.device(device), dtype
        self._pool: ThreadPoolExecutor | None = None
        mean = torch.tensor(DINO_MEAN + SIGLIP_MEAN, device=self.device).view(1, 6, 1, 1)
        std = torch.tensor(DINO_STD + SIGLIP_STD, device=self.device).view(1, 6, 1, 1)
        # pixels = (frame / 255 - mean) / std  ==  frame * scale + shift
        self._scale = (1.0 / (255.0 * std)).to(dtype)
        self._shift = (-mean / std).to(dtype)

    def frame(self, image: np.ndarray, camera: int = 0) -> np.ndarray:
        """One camera's HxWx3 uint8 RGB frame -> size x size x 3 uint8, as the model saw in training."""
        image = check_image(image, f"camera {camera}")
        rotation = self.rotations[camera] if camera < len(self.rotations) else 0
        if rotation % 360:
            image = np.rot90(image, k=(rotation // 90) % 4)
        if image.shape[:2] != (self.size, self.size):
            image = self.resize(np.ascontiguousarray(image), self.size)
        if self.center_crop:
            image = image_ops.center_crop(image, self.size)
        return image

    def frames(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(cameras, 3, size, size) uint8 frames at model resolution, on the model's device.

        Cameras are prepared in parallel threads (JPEG coding and numpy release the GIL), with
        BLAS held to one thread meanwhile: its own threads would fight over the same cores
        (measured here: two 480x640 frames 9.6 ms that way, ~5 ms this way, 8.6 ms one by one).
        """
        if len(images) > 1 and os.cpu_count() and os.cpu_count() > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=len(images), thread_name_prefix="preprocess")
            with _single_threaded_blas():
                host = np.stack(list(self._pool.map(self.frame, images, range(len(images)))))
        else:
            host = np.stack([self.frame(image, camera) for camera, image in enumerate(images)])
        return torch.from_numpy(host).permute(0, 3, 1, 2).to(self.device, non_blocking=True)

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """(cameras, 6, size, size): each frame normalized for DINOv2 (0-2) and SigLIP (3-5)."""
        x = frames.to(self.dtype).repeat(1, 2, 1, 1)
        return x * self._scale + self._shift


@dataclass(frozen=True)
class NormStats:
    """BOUNDS_Q99 statistics of one dataset key (dataset_statistics.json)."""

    action_low: np.ndarray
    action_high: np.ndarray
    action_mask: np.ndarray
    proprio_low: np.ndarray | None
    proprio_high: np.ndarray | None
    key: str = ""

    @classmethod
    def from_statistics(cls, stats: Mapping[str, Any], key: str, source: str, action_dim: int,
                        proprio_dim: int | None) -> "NormStats":
        if not isinstance(stats, Mapping) or not stats:
            raise ValueError(f"{source}: no dataset statistics")
        if not key:
            if len(stats) != 1:
                raise ValueError(f"{source}: {len(stats)} dataset keys ({', '.join(sorted(stats))}); "
                                 f"choose one with unnorm_key")
            key = next(iter(stats))
        if key not in stats:
            raise ValueError(f"{source}: unnorm_key {key!r} not found (available: {', '.join(sorted(stats))})")
        entry = stats[key]

        def vec(section: str, name: str, dim: int) -> np.ndarray:
            try:
                v = np.asarray(entry[section][name], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{source}: {key}.{section}.{name} is missing or not numeric") from None
            if v.shape != (dim,):
                raise ValueError(f"{source}: {key}.{section}.{name} has {v.size} values, the model needs {dim}")
            return v

        mask = entry.get("action", {}).get("mask")
        mask = np.ones(action_dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (action_dim,):
            raise ValueError(f"{source}: {key}.action.mask has {mask.size} values, the model needs {action_dim}")
        proprio = proprio_dim is not None and "proprio" in entry
        if proprio_dim is not None and not proprio:
            raise ValueError(f"{source}: {key}.proprio statistics are missing (the model uses proprio)")
        return cls(vec("action", "q01", action_dim), vec("action", "q99", action_dim), mask,
                   vec("proprio", "q01", proprio_dim) if proprio else None,
                   vec("proprio", "q99", proprio_dim) if proprio else None, key)

    def normalize_proprio(self, proprio: np.ndarray) -> np.ndarray:
        p = np.asarray(proprio, dtype=np.float64)
        if self.proprio_low is None:
            raise ObservationError("no proprio statistics")
        if p.shape != self.proprio_low.shape:
            raise ObservationError(f"proprio has {p.size} values, the model needs {self.proprio_low.size}")
        if not np.all(np.isfinite(p)):
            raise ObservationError("proprio contains non-finite values")
        return np.clip(2 * (p - self.proprio_low) / (self.proprio_high - self.proprio_low + 1e-8) - 1, -1, 1)

    @cached_property
    def constant_action_dims(self) -> np.ndarray:
        """Normalized dims the dataset never moves (q01 == q99): un-normalizing maps any prediction
        there to the constant, so the model's raw value is meaningless. The reference trains them
        towards 0 (its data pipeline zeroes dims with min == max), a model trained towards -1 (one
        trained without that zeroing) reads there as a full-scale motion. Computed once (per step use)."""
        return self.action_mask & (self.action_high - self.action_low <= 0)

    def motion_units(self, normalized: np.ndarray) -> np.ndarray:
        """Normalized actions as the controller and the history rule measure motion: the dims the
        dataset never moves count as still (a LIBERO dataset has none; the authors' thresholds
        apply unchanged)."""
        a = np.array(normalized, dtype=np.float64)
        n = min(a.shape[-1], self.action_mask.size)      # measured motion may have 6 columns only
        a[..., :n][..., self.constant_action_dims[:n]] = 0.0
        return a

    def unnormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        real = 0.5 * (a + 1) * (self.action_high - self.action_low + 1e-8) + self.action_low
        return np.where(self.action_mask, real, a)
