"""Where the vision and instruction tokens sit in the LLM input sequence.

Derived from the actual prompt and camera count by the model (never hard-coded positions):
OpenVLA-OFT's sequence is ``[BOS] [cam 0 patches] ... [cam C-1 patches] [proprio] [prompt]
[action slots] [</s>]``, each camera contributing a contiguous block of ``grid_h * grid_w``
patch tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    seq_len: int
    vision_start: int
    num_cameras: int
    text_positions: tuple[int, ...]
    grid: tuple[int, int] = (16, 16)
    # The positions the action head reads (OFT: the last prompt token and the action slots but
    # the last), decoded in the same forward: their queries over the vision keys are what the
    # actions are made from. Empty for a layout without action slots.
    action_positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_cameras < 1:
            raise ValueError(f"num_cameras must be >= 1, got {self.num_cameras}")
        if self.vision_start < 0 or self.vision_end > self.seq_len:
            raise ValueError(f"vision tokens [{self.vision_start}, {self.vision_end}) do not fit in a "
                             f"sequence of {self.seq_len}")
        if not self.text_positions:
            raise ValueError("at least one instruction token is needed to score vision tokens")
        for name, positions in (("text", self.text_positions), ("action", self.action_positions)):
            bad = [p for p in positions if not 0 <= p < self.seq_len or self.vision_start <= p < self.vision_end]
            if bad:
                raise ValueError(f"{name} positions {bad} fall outside the sequence or inside the vision block")

    @property
    def tokens_per_camera(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_vision(self) -> int:
        return self.num_cameras * self.tokens_per_camera

    @property
    def vision_end(self) -> int:
        return self.vision_start + self.num_vision

    def camera_range(self, camera: int) -> tuple[int, int]:
        """[start, stop) sequence positions of one camera's patch tokens."""
        start = self.vision_start + camera * self.tokens_per_camera
        return start, start + self.tokens_per_camera

    def vision_positions(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(num_cameras, tokens_per_camera) sequence positions of the patch tokens."""
        return torch.arange(self.vision_start, self.vision_end, device=device).view(
            self.num_cameras, self.tokens_per_camera)

    def text_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.text_positions, dtype=torch.long, device=device)

    def query_index(self, queries: str, device: torch.device | str | None = None) -> torch.Tensor:
        """Sorted positions whose attention scores the vision tokens (``pruning.score_queries``):
        the instruction (the paper), the action-head positions, or both."""
        if queries == "instruction":
            return self.text_index(device)
        if not self.action_positions:
            raise ValueError(f"score_queries {queries!r}: this sequence has no action positions")
        chosen = set(self.action_positions) | (set(self.text_positions) if queries == "both" else set())
        if queries not in ("action", "both"):
            raise ValueError(f"unknown score_queries {queries!r} (instruction, action, both)")
        return torch.tensor(sorted(chosen), dtype=torch.long, device=device)

    def kept_positions(self, kept: torch.Tensor) -> torch.Tensor:
        """Sorted sequence positions to keep: every non-vision token plus the kept patches.

        ``kept`` is a (num_cameras, tokens_per_camera) bool mask on the model's device. The
        result's length depends on the data, so this is the step's one device->host sync.
        """
        if kept.shape != (self.num_cameras, self.tokens_per_camera):
            raise ValueError(f"kept mask has shape {tuple(kept.shape)}, expected "
                             f"{(self.num_cameras, self.tokens_per_camera)}")
        full = torch.ones(self.seq_len, dtype=torch.bool, device=kept.device)
        full[self.vision_start:self.vision_end] = kept.reshape(-1)
        return full.nonzero().squeeze(1)
