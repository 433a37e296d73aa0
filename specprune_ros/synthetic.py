"""A deterministic synthetic pick-and-place episode (no simulator, no dataset).

A third-person camera looks at a textured table with a few coloured objects; a gripper moves
along an arm-like trajectory: fast transport phases and slow descending grasp / place phases
(so the controller sees both modes), carrying the picked object between grasp and release. A
wrist camera looks down from the gripper and moves with it. Each step also has joint
positions, the proprio state, and the commanded action (normalized deltas) for the controller.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INSTRUCTION = "pick up the red block and place it on the blue plate"
JOINT_NAMES = tuple(f"joint{i}" for i in range(1, 8)) + ("gripper",)


@dataclass
class EpisodeStep:
    primary: np.ndarray        # HxWx3 uint8 RGB
    wrist: np.ndarray          # HxWx3 uint8 RGB
    joints: np.ndarray         # (8,) 7 arm joint positions (rad) + gripper opening (m)
    proprio: np.ndarray        # (8,) eef xyz, axis-angle, gripper qpos x2
    action: np.ndarray         # (7,) commanded normalized deltas + gripper (1 open, -1 closed)
    phase: str


def _waypoints() -> list[tuple[str, np.ndarray, float, int]]:
    """(phase, target xyz in metres, gripper, steps to reach it)."""
    pick, place = np.array([0.35, -0.15, 0.02]), np.array([0.45, 0.18, 0.04])
    home = np.array([0.30, 0.0, 0.30])
    return [
        ("transport", pick + [0, 0, 0.20], 1.0, 8),
        ("descend", pick, 1.0, 10),
        ("grasp", pick, -1.0, 8),
        ("lift", pick + [0, 0, 0.20], -1.0, 6),
        ("transport", place + [0, 0, 0.20], -1.0, 8),
        ("descend", place, -1.0, 10),
        ("release", place, 1.0, 8),
        ("retreat", home, 1.0, 8),
    ]


def _trajectory(steps: int) -> list[tuple[str, np.ndarray, float]]:
    pos = np.array([0.30, 0.0, 0.30])
    out = []
    for phase, target, grip, n in _waypoints():
        start = pos.copy()
        for i in range(1, n + 1):
            s = 0.5 - 0.5 * np.cos(np.pi * i / n)      # smooth in and out
            pos = start + (target - start) * s
            out.append((phase, pos.copy(), grip))
    while len(out) < steps:                             # repeat the task with a mirrored layout
        out += [(ph, p * [1, -1, 1], g) for ph, p, g in out[: steps - len(out)]]
    return out[:steps]


class SyntheticScene:
    def __init__(self, seed: int = 0, size: int = 256) -> None:
        self.rng = np.random.default_rng(seed)
        self.size = size
        noise = self.rng.integers(0, 24, (size, size, 1), dtype=np.int16)
        yy, xx = np.mgrid[0:size, 0:size]
        wood = (np.sin(xx / 9.0 + np.sin(yy / 23.0) * 2.0) * 18).astype(np.int16)[..., None]
        base = np.array([150, 118, 84], dtype=np.int16)
        self.table = np.clip(base + wood + noise, 0, 255).astype(np.uint8)
        self.plate = (np.array([0.45, 0.18]), (60, 90, 220))
        self.distractors = [(np.array([0.25, 0.20]), (60, 170, 70)), (np.array([0.50, -0.05]), (220, 200, 40))]

    def _to_px(self, xy: np.ndarray) -> tuple[int, int]:
        # Table region x in [0.15, 0.6] m (image rows), y in [-0.3, 0.3] m (columns).
        r = int((xy[0] - 0.15) / 0.45 * (self.size - 1))
        c = int((xy[1] + 0.3) / 0.6 * (self.size - 1))
        return r, c

    def render(self, gripper: np.ndarray, block: np.ndarray, grip_closed: bool) -> tuple[np.ndarray, np.ndarray]:
        img = self.table.copy()
        s = self.size
        r, c = self._to_px(self.plate[0])
        yy, xx = np.ogrid[0:s, 0:s]
        img[(yy - r) ** 2 + (xx - c) ** 2 < (s // 12) ** 2] = self.plate[1]
        for xy, colour in self.distractors:
            r, c = self._to_px(xy)
            img[max(r - 8, 0):r + 8, max(c - 8, 0):c + 8] = colour
        # The block, drawn larger when lifted (closer to the camera).
        r, c = self._to_px(block[:2])
        half = 7 + int(block[2] * 20)
        img[max(r - half, 0):r + half, max(c - half, 0):c + half] = (210, 40, 40)
        # The gripper: a dark bar with two fingers; its shadow grows with height.
        r, c = self._to_px(gripper[:2])
        spread = 4 if grip_closed else 9
        img[max(r - 14, 0):r - 4, max(c - 3, 0):c + 3] = (40, 40, 48)
        for side in (-spread, spread):
            img[max(r - 4, 0):r + 6, max(c + side - 2, 0):c + side + 2] = (70, 70, 80)
        primary = img
        # Wrist view: the table around the gripper, zoomed in by height, fingers at the bottom.
        half_view = int(20 + gripper[2] * 260)
        r0, c0 = r - half_view, c - half_view
        pad = np.pad(img, ((s, s), (s, s), (0, 0)), mode="edge")
        crop = pad[r0 + s:r0 + s + 2 * half_view, c0 + s:c0 + s + 2 * half_view]
        idx = np.linspace(0, crop.shape[0] - 1, s).astype(int)
        wrist = crop[idx][:, idx].copy()
        wrist[-40:, s // 2 - 30 - spread * 3:s // 2 - 18 - spread * 3] = (70, 70, 80)
        wrist[-40:, s // 2 + 18 + spread * 3:s // 2 + 30 + spread * 3] = (70, 70, 80)
        return primary, wrist


def episode(steps: int = 60, seed: int = 0, size: int = 256) -> list[EpisodeStep]:
    """The synthetic episode; identical for the same (steps, seed, size)."""
    scene = SyntheticScene(seed, size)
    traj = _trajectory(steps)
    block = np.array([0.35, -0.15, 0.02])
    out = []
    previous = traj[0][1]
    carried = False
    for phase, pos, grip in traj:
        closed = grip < 0
        if closed and not carried and np.linalg.norm(block[:2] - pos[:2]) < 0.03:
            carried = True                         # grasped: carried until the gripper opens
        carried = carried and closed
        if carried:
            block = pos.copy()
        primary, wrist = scene.render(pos, block, closed)
        delta = pos - previous
        previous = pos
        # Normalized like BOUNDS_Q99 deltas: 0.04 m per step is full scale.
        action = np.concatenate([np.clip(delta / 0.04, -1, 1), np.zeros(3), [grip]])
        joints = np.array([np.arctan2(pos[1], pos[0]), 0.6 - pos[2], 1.2 - pos[0], 0.1 * pos[1],
                           0.9 + pos[2], 0.0, 0.04 if closed else 0.0, 0.0 if closed else 0.04])
        proprio = np.concatenate([pos, [np.pi, 0.0, 0.0], [0.0, 0.0] if closed else [0.04, -0.04]])
        out.append(EpisodeStep(primary, wrist, joints, proprio, action, phase))
    return out
