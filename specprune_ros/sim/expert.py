"""A scripted expert with state access: approach, descend, grasp, lift, transport, lower, release.

Closed loop on the simulator's state, so the small errors its own noise makes are corrected at
the next step; a grasp that slips is retried. Each episode draws its own approach and transport
heights, speeds and noise (the variation a policy must learn from). Coarse phases move fast,
fine phases (descend, lower) slowly: the controller's coarse/fine split has something to find.
"""
from __future__ import annotations

import numpy as np

from .env import MAX_ROTATION, MAX_TRANSLATION, TabletopEnv, layout_mean_positions
from .scene import OBJECT_HALF_HEIGHT

FINGERTIP_BELOW_ORIGIN = 0.03        # fingertips are 3 cm below the gripper body's origin
ALIGNED_M = 0.008                    # the expert closes its fingers only this near the object's axis
EXPERT_SEED_OFFSET = 7919            # an episode's expert draws its heights / speeds / noise from seed + this


def _yaw(quat: np.ndarray) -> float:
    w, x, y, z = quat
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _wrap(angle: float, period: float) -> float:
    """The smallest rotation equivalent to ``angle`` for a shape symmetric every ``period``."""
    return float((angle + period / 2) % period - period / 2)


AIMS = ("object", "layout-mean")
SYMMETRY = {"cube": np.pi / 2, "box": np.pi / 2, "block": np.pi, "cylinder": 2 * np.pi}


class ScriptedExpert:
    """``aim``: "object" (where the named object lies) or "layout-mean" (where the layout puts it
    on average, turned as on average: what a policy blind to the images could aim at; how often
    that still succeeds says how much the layout needs vision)."""

    def __init__(self, env: TabletopEnv, seed: int = 0, noise: float = 1.0, aim: str = "object") -> None:
        if aim not in AIMS:
            raise ValueError(f"unknown aim {aim!r} (one of {', '.join(AIMS)})")
        self.env = env
        self.rng = np.random.default_rng(seed)
        self.noise = noise
        self.aim = aim
        self.reset()

    def reset(self) -> None:
        rng = self.rng
        self.phase = "approach"
        self.timer = 0
        self.retries = 0
        self.approach_height = rng.uniform(0.09, 0.15)
        self.transport_height = rng.uniform(0.13, 0.19)
        self.fast = rng.uniform(0.75, 1.0) * MAX_TRANSLATION
        self.slow = rng.uniform(0.3, 0.45) * MAX_TRANSLATION
        self.sigma = self.noise * rng.uniform(0.0005, 0.0015)

    # ---- one action ------------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        env, task = self.env, self.env.task
        obj = env.object_position(task.target)
        if self.aim == "layout-mean" and self.phase in ("approach", "descend", "grasp"):
            obj[:2] = layout_mean_positions(env.layout)[task.target]
        place = env.receptacle_position(task.receptacle)
        grip_pos = env.gripper_position()
        grasp_z = max(obj[2] + 0.008, FINGERTIP_BELOW_ORIGIN + 0.003)
        release_z = (0.03 if task.receptacle == "bowl" else 0.016) + 2 * OBJECT_HALF_HEIGHT[task.target] \
            + FINGERTIP_BELOW_ORIGIN - 0.005
        gripper, yaw = -1.0, 0.0
        phase = self.phase
        if phase == "approach":
            goal, speed = np.r_[obj[:2], self.approach_height], self.fast
            yaw = self._yaw_to(task.target)
            if np.linalg.norm(grip_pos[:2] - obj[:2]) < 0.006 and abs(grip_pos[2] - goal[2]) < 0.02 \
                    and abs(yaw) < 0.03:
                self._enter("descend")
        elif phase == "descend":
            goal, speed = np.r_[obj[:2], grasp_z], self.slow
            # Close only when over the object: the expert's own descent is aligned by then; when it
            # labels a policy's states (``run_labeled_episode``), it first corrects the offset.
            if abs(grip_pos[2] - grasp_z) < 0.004 and np.linalg.norm(grip_pos[:2] - obj[:2]) < ALIGNED_M:
                self._enter("grasp")
        elif phase == "grasp":
            goal, speed, gripper = np.r_[obj[:2], grasp_z], self.slow, 1.0
            if self.timer >= 4:
                self._enter("lift")
        elif phase == "lift":
            goal, speed, gripper = np.r_[grip_pos[:2], self.transport_height], self.slow * 1.5, 1.0
            if grip_pos[2] - obj[2] > 0.06:                    # it slipped: open and try again
                self.retries += 1
                self._enter("approach")
                gripper = -1.0
            elif grip_pos[2] > self.transport_height - 0.02:
                self._enter("transport")
        elif phase == "transport":
            goal, speed, gripper = np.r_[place[:2], self.transport_height], self.fast, 1.0
            if grip_pos[2] - obj[2] > 0.06:
                self.retries += 1
                self._enter("approach")
                gripper = -1.0
            elif np.linalg.norm(grip_pos[:2] - place[:2]) < 0.008:
                self._enter("lower")
        elif phase == "lower":
            goal, speed, gripper = np.r_[place[:2], release_z], self.slow, 1.0
            if grip_pos[2] < release_z + 0.005:
                self._enter("release")
        elif phase == "release":
            goal, speed = np.r_[place[:2], release_z], self.slow
            if self.timer >= 4:
                self._enter("retreat")
        else:  # retreat, then hold
            goal, speed = np.r_[grip_pos[:2], self.transport_height], self.slow * 1.5
        self.timer += 1
        delta = goal - grip_pos
        distance = np.linalg.norm(delta)
        step = delta if distance <= speed else delta / distance * speed
        step = step + self.rng.normal(0.0, self.sigma, 3)
        rotation = np.array([0.0, 0.0, np.clip(yaw, -MAX_ROTATION * 0.6, MAX_ROTATION * 0.6)])
        return np.r_[np.clip(step, -MAX_TRANSLATION, MAX_TRANSLATION), rotation, gripper]

    def _enter(self, phase: str) -> None:
        self.phase, self.timer = phase, 0

    def _yaw_to(self, name: str) -> float:
        env = self.env
        object_yaw = 0.0 if self.aim == "layout-mean" else _yaw(env.data.xquat[env._body[name]])
        gripper_yaw = _yaw(env.data.xquat[env._body["gripper"]])
        return _wrap(object_yaw - gripper_yaw, SYMMETRY[name])


# a demonstration's per-step arrays
RECORDED = ("primary", "wrist", "proprio", "actions", "privileged", "patch_labels")


def record_step(frames: dict[str, list], env: TabletopEnv, obs: dict, action: np.ndarray) -> None:
    """One row of a demonstration (``frames``: a list per name in ``RECORDED``): what the model
    sees at this step, the action taken there, and the privileged simulator state of that moment."""
    for key in ("primary", "wrist", "proprio"):
        frames[key].append(obs[key])
    frames["actions"].append(action)
    frames["privileged"].append(env.privileged_state())
    frames["patch_labels"].append(env.patch_labels())


def run_expert_episode(env: TabletopEnv, seed: int, record: bool = False, noise: float = 1.0,
                       aim: str = "object") -> dict:
    """One episode of the expert on ``seed``: success, steps and (``record``) the demonstration."""
    obs, info = env.reset(seed=seed)
    expert = ScriptedExpert(env, seed=seed + EXPERT_SEED_OFFSET, noise=noise, aim=aim)
    frames: dict[str, list] = {key: [] for key in RECORDED}
    success = False
    for _ in range(env.max_steps):
        action = expert.act()
        if record:
            record_step(frames, env, obs, action)
        obs, _, success, truncated, info = env.step(action)
        if success or truncated:
            break
    result = {"seed": seed, "success": bool(success), "steps": env.steps, "instruction": env.task.instruction,
              "retries": expert.retries}
    if record:
        result.update({k: np.asarray(v) for k, v in frames.items()})
    return result
