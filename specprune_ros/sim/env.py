"""A simulated tabletop task on MuJoCo behind the Gymnasium ``Env`` API, with LIBERO's conventions.

* Action (7): end-effector delta ``dx dy dz`` (metres per step), ``droll dpitch dyaw`` (radians per
  step) and the gripper (+1 close, -1 open); clipped to ``MAX_TRANSLATION`` / ``MAX_ROTATION``.
  One step is one action period (``ACTION_DT`` = 0.1 s, 50 physics steps).
* Observation: ``primary`` and ``wrist`` camera images (224 x 224 RGB uint8), ``proprio`` (8) = eef
  position (3) + axis-angle of the eef orientation (3) + the two finger positions (2), and the
  instruction (``"put the red cube on the plate"``).
* Success: the named object resting on the plate / in the bowl (inside its rim, low, still) with
  the gripper open, within ``max_steps``.
* Resets are seeded and deterministic; seeds are split into train / validation / test ranges.

Rendering is headless through EGL (``MUJOCO_GL=egl``, set here unless the caller chose another).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402

from . import DEFAULT_LAYOUT, LAYOUTS  # noqa: E402
from .scene import BOWL_RADIUS, COLORS, FINGER_OPEN, GRIPPER_HOME, OBJECT_HALF_HEIGHT, OBJECTS, PLATE_RADIUS, scene_xml  # noqa: E402

ACTION_DT = 0.1
PHYSICS_STEPS = 50                     # 0.1 s at the 2 ms timestep
MAX_TRANSLATION = 0.02                 # m per step (0.2 m/s)
MAX_ROTATION = 0.15                    # rad per step
IMAGE_SIZE = 224
MAX_STEPS = 160                        # the task's step limit (16 s)
CHUNK_EXECUTED = 8                       # actions of each chunk executed before the next query (OFT on LIBERO)
RECEPTACLES = ("plate", "bowl")
SEED_SPLITS = {"train": (0, 100_000), "validation": (100_000, 101_000), "test": (101_000, 102_000)}
# What a patch label says (``TabletopEnv.patch_labels``); an object counts 5x its pixels.
PATCH_CLASSES = ("table", *OBJECTS, *RECEPTACLES, "gripper")
PATCH_CLASS_WEIGHT = np.array([1] + [5] * len(OBJECTS) + [2] * len(RECEPTACLES) + [1])
WORKSPACE_LOW = np.array([0.28, -0.26, 0.02])
WORKSPACE_HIGH = np.array([0.66, 0.26, 0.35])


def seed_range(split: str) -> range:
    if split not in SEED_SPLITS:
        raise ValueError(f"unknown seed split {split!r} (one of {', '.join(SEED_SPLITS)})")
    return range(*SEED_SPLITS[split])


@dataclass(frozen=True)
class Task:
    """What one episode asks for, and where things are (all from the seed)."""

    target: str                       # object body name (shape)
    color: str
    receptacle: str                   # plate | bowl
    colors: dict[str, str]            # object -> colour name
    positions: dict[str, tuple[float, float]]   # object and receptacle xy
    yaws: dict[str, float]

    @property
    def instruction(self) -> str:
        verb = "on" if self.receptacle == "plate" else "in"
        return f"put the {self.color} {self.target} {verb} the {self.receptacle}"


# A LIBERO-like layout: four object slots and a side for each receptacle, each jittered per episode
# (LIBERO's tasks vary object placements by a few centimetres around a fixed layout). A first
# layout with objects anywhere in a 26 x 15 cm area was too hard for a model trained from scratch
# on this CPU (0 % after 600 steps x 16 samples: it learned to descend, never where).
# Layouts: "fixed-start" (the default, the shipped model's task): "fixed" with the gripper starting
# at one pose, as LIBERO's robot does (its init states vary the objects, not the arm).
# "fixed": every shape has its slot, so the instruction tells where the target is and vision is
# needed only for the jitter; the gripper starts within +-3 cm of its home. A model trained on it
# ignored that start (the same first chunk from every start: 48 % succeed from a jittered start,
# 72 % from the home pose). "shuffled": the shapes are shuffled among the slots, so the target must
# be found in the image by its colour and shape; no model trained here has learned that (0 %).
# "fixed" and "fixed-start" draw the same numbers from a seed: the same objects, colours and
# instruction ("shuffled" draws one more permutation, so its seeds give other scenes).
OBJECT_SLOTS = ((0.40, -0.05), (0.40, 0.05), (0.52, -0.05), (0.52, 0.05))
RECEPTACLE_SLOTS = {"plate": (0.47, -0.185), "bowl": (0.47, 0.185)}
OBJECT_JITTER = 0.015                  # m, uniform in x and y
RECEPTACLE_JITTER = 0.015
HOME_JITTER = 0.03                     # m, uniform in x, y and z around GRIPPER_HOME
OBJECT_YAW = 0.2                       # rad either way; the 9 cm block then spans 6.1 cm across the fingers
# "scattered": no slots - the four objects lie anywhere in a 26 x 26 cm area, at least
# SCATTER_MIN_GAP apart (the fingers have room beside a neighbour) and clear of the plate and bowl
# (moved out to make room), so the named object's place comes only from the images (found by its
# colour or shape). A policy aiming where the layout puts it on average (the area's middle) fails
# nearly always: the scripted expert aiming there succeeds in 1 of 40 test episodes.
SCATTER_AREA_LOW, SCATTER_AREA_HIGH = np.array([0.33, -0.13]), np.array([0.59, 0.13])
SCATTER_RECEPTACLE_SLOTS = {"plate": (0.47, -0.205), "bowl": (0.47, 0.205)}
SCATTER_MIN_GAP = 0.085                # m between object centres (a 9 cm block, 1 cm fingers)
SCATTER_RECEPTACLE_CLEARANCE = 0.03    # m between an object's centre and a receptacle's rim
FIXED_HOME_LAYOUTS = ("fixed-start", "scattered")     # the gripper starts at its home pose


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    return layout


def sample_task(rng: np.random.Generator, layout: str = DEFAULT_LAYOUT) -> Task:
    """Shapes at their jittered slots (``layout`` "shuffled": at shuffled slots; "scattered":
    anywhere in the object area, drawn again until apart) with shuffled colours, plate left and
    bowl right (jittered), a random target and receptacle. The fixed and fixed-start layouts draw
    the same numbers, so a seed gives the same scene in both."""
    check_layout(layout)
    names = list(OBJECTS)
    colors = dict(zip(names, rng.permutation(list(COLORS))))
    order = rng.permutation(len(OBJECT_SLOTS)) if layout == "shuffled" else range(len(OBJECT_SLOTS))
    slots = dict(zip(names, (OBJECT_SLOTS[int(i)] for i in order)))
    positions: dict[str, tuple[float, float]] = {}
    for name, (x, y) in _receptacle_slots(layout).items():
        dx, dy = rng.uniform(-RECEPTACLE_JITTER, RECEPTACLE_JITTER, 2)
        positions[name] = (float(x + dx), float(y + dy))
    if layout == "scattered":
        placed = _scattered(rng, len(names), [positions[name] for name in RECEPTACLES])
    else:
        placed = np.array([np.asarray(slots[name]) + rng.uniform(-OBJECT_JITTER, OBJECT_JITTER, 2) for name in names])
    positions.update({name: (float(x), float(y)) for name, (x, y) in zip(names, placed)})
    yaws = {name: float(rng.uniform(-OBJECT_YAW, OBJECT_YAW)) for name in names}
    target = names[int(rng.integers(len(names)))]
    return Task(target, colors[target], str(rng.choice(RECEPTACLES)), colors, positions, yaws)


def _receptacle_slots(layout: str) -> dict[str, tuple[float, float]]:
    return SCATTER_RECEPTACLE_SLOTS if layout == "scattered" else RECEPTACLE_SLOTS


def _scattered(rng: np.random.Generator, count: int, receptacles: list[tuple[float, float]]) -> np.ndarray:
    """(count, 2) object places anywhere in the area, apart and clear of the receptacles."""
    rims = np.array(receptacles)
    clearance = max(PLATE_RADIUS, BOWL_RADIUS) + SCATTER_RECEPTACLE_CLEARANCE
    while True:
        xy = rng.uniform(SCATTER_AREA_LOW, SCATTER_AREA_HIGH, (count, 2))
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(count)
        if gaps.min() >= SCATTER_MIN_GAP and np.linalg.norm(xy[:, None] - rims[None], axis=-1).min() >= clearance:
            return xy


def layout_mean_positions(layout: str) -> dict[str, tuple[float, float]]:
    """Where the layout puts each object and receptacle on average (its slot; "shuffled": the
    middle of the slots; "scattered": the middle of the area): what a policy blind to the scene
    can know."""
    check_layout(layout)
    if layout == "scattered":
        middle = tuple(float(v) for v in (SCATTER_AREA_LOW + SCATTER_AREA_HIGH) / 2)
        objects = {name: middle for name in OBJECTS}
    elif layout == "shuffled":
        middle = tuple(float(v) for v in np.mean(OBJECT_SLOTS, axis=0))
        objects = {name: middle for name in OBJECTS}
    else:
        objects = {name: tuple(map(float, slot)) for name, slot in zip(OBJECTS, OBJECT_SLOTS)}
    return {**objects, **{name: tuple(map(float, xy)) for name, xy in _receptacle_slots(layout).items()}}


def all_instructions() -> tuple[str, ...]:
    """Every instruction the task can give (the sim model's tokenizer learns their words)."""
    return tuple(Task(shape, color, receptacle, {}, {}, {}).instruction
                 for color in COLORS for shape in OBJECTS for receptacle in RECEPTACLES)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(w, x, y, z) -> axis * angle, angle in [0, pi] (LIBERO's proprio convention)."""
    w, xyz = float(quat[0]), np.asarray(quat[1:], dtype=np.float64)
    if w < 0:
        w, xyz = -w, -xyz
    s = np.linalg.norm(xyz)
    if s < 1e-9:
        return np.zeros(3)
    return xyz / s * 2.0 * np.arctan2(s, w)


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": int(1 / ACTION_DT)}

    def __init__(self, max_steps: int = MAX_STEPS, image_size: int = IMAGE_SIZE, render: bool = True,
                 layout: str = DEFAULT_LAYOUT) -> None:
        self.layout = check_layout(layout)          # refused here, not at the first reset
        self.model = mujoco.MjModel.from_xml_string(scene_xml(image_size))
        self.data = mujoco.MjData(self.model)
        self.max_steps = max_steps
        self.image_size = image_size
        self._render = render
        self._renderer = mujoco.Renderer(self.model, image_size, image_size) if render else None
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)
        image = gym.spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = gym.spaces.Dict({
            "primary": image, "wrist": image,
            "proprio": gym.spaces.Box(-np.inf, np.inf, shape=(8,), dtype=np.float64),
        })
        m = self.model
        self._body = {name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
                      for name in (*OBJECTS, *RECEPTACLES, "gripper", "target")}
        self._geom = {name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"{name}_geom") for name in OBJECTS}
        self._qpos = {name: m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"{name}_joint")]
                      for name in (*OBJECTS, "gripper")}
        self._qvel = {name: m.jnt_dofadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"{name}_joint")]
                      for name in OBJECTS}
        self._fingers = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, f"finger_{s}_joint")]
                         for s in ("left", "right")]
        self._mocap = m.body_mocapid[self._body["target"]]
        # geom id -> patch class, through the body each geom belongs to
        body_class = {self._body[name]: PATCH_CLASSES.index(name) for name in (*OBJECTS, *RECEPTACLES)}
        gripper_bodies = {self._body["gripper"], *(mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, f"finger_{s}")
                                                  for s in ("left", "right"))}
        self._geom_class = np.array([body_class.get(int(b), PATCH_CLASSES.index("gripper") if b in gripper_bodies
                                                    else 0) for b in m.geom_bodyid], np.uint8)
        self._patch_cells: np.ndarray | None = None
        self.task: Task | None = None
        self.steps = 0
        self._grip = -1.0

    # ---- Gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self.task = task = sample_task(self.np_random, self.layout)
        for name in RECEPTACLES:
            m.body_pos[self._body[name]][:2] = task.positions[name]
        for name in OBJECTS:
            x, y = task.positions[name]
            a = self._qpos[name]
            d.qpos[a:a + 3] = (x, y, OBJECT_HALF_HEIGHT[name] + 0.001)
            yaw = task.yaws[name]
            d.qpos[a + 3:a + 7] = (np.cos(yaw / 2), 0, 0, np.sin(yaw / 2))
            m.geom_rgba[self._geom[name]][:3] = COLORS[task.colors[name]]
        # drawn in every layout (fixed and fixed-start then draw alike), applied in all but fixed-start
        jitter = self.np_random.uniform(-HOME_JITTER, HOME_JITTER, 3)
        home = np.array(GRIPPER_HOME) + (0.0 if self.layout in FIXED_HOME_LAYOUTS else jitter)
        g = self._qpos["gripper"]
        d.qpos[g:g + 3] = home
        d.qpos[g + 3:g + 7] = (1, 0, 0, 0)
        d.mocap_pos[self._mocap] = home
        d.mocap_quat[self._mocap] = (1, 0, 0, 0)
        d.ctrl[:] = FINGER_OPEN
        for f in self._fingers:
            d.qpos[f] = FINGER_OPEN
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=PHYSICS_STEPS)        # let the objects settle
        self.steps = 0
        self._grip = -1.0
        return self._observation(), self._info()

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 7 finite values (dx dy dz droll dpitch dyaw gripper), got {a}")
        m, d = self.model, self.data
        target = np.clip(d.mocap_pos[self._mocap] + np.clip(a[:3], -MAX_TRANSLATION, MAX_TRANSLATION),
                         WORKSPACE_LOW, WORKSPACE_HIGH)
        d.mocap_pos[self._mocap] = target
        rotation = np.clip(a[3:6], -MAX_ROTATION, MAX_ROTATION)
        if np.any(rotation):
            delta = np.zeros(4)
            mujoco.mju_axisAngle2Quat(delta, rotation / (np.linalg.norm(rotation) or 1.0), np.linalg.norm(rotation))
            quat = np.zeros(4)
            mujoco.mju_mulQuat(quat, delta, d.mocap_quat[self._mocap])
            d.mocap_quat[self._mocap] = quat / np.linalg.norm(quat)
        self._grip = float(np.clip(a[6], -1, 1))
        d.ctrl[:] = 0.0 if self._grip > 0 else FINGER_OPEN
        mujoco.mj_step(m, d, nstep=PHYSICS_STEPS)
        self.steps += 1
        success = self.success()
        truncated = not success and self.steps >= self.max_steps
        return self._observation(), float(success), success, truncated, self._info()

    def render(self):
        return self._camera("primary")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ---- state -------------------------------------------------------------------------------------
    def object_position(self, name: str) -> np.ndarray:
        return self.data.xpos[self._body[name]].copy()

    def receptacle_position(self, name: str) -> np.ndarray:
        return self.data.xpos[self._body[name]].copy()

    def gripper_position(self) -> np.ndarray:
        return self.data.xpos[self._body["gripper"]].copy()

    def finger_opening(self) -> float:
        return float(sum(self.data.qpos[f] for f in self._fingers))

    def privileged_state(self) -> np.ndarray:
        """(12,): xy of every object (``OBJECTS`` order), then of the plate and the bowl, now -
        simulator state a policy never sees, recorded with demonstrations as auxiliary training
        targets (``sim train``)."""
        return np.concatenate([self.data.xpos[self._body[name]][:2] for name in (*OBJECTS, *RECEPTACLES)])

    def move_object(self, name: str, offset: tuple[float, float]) -> dict:
        """Move object ``name`` by ``offset`` (m, xy) where it rests and render again: the
        observation a policy would have seen had the scene put it there (``sim probe``)."""
        a = self._qpos[name]
        self.data.qpos[a:a + 2] += offset
        mujoco.mj_forward(self.model, self.data)
        return self._observation()

    def patch_labels(self, patch: int = 14) -> np.ndarray:
        """(cameras, patches) uint8: what lies under each ``patch`` px patch of the primary and
        wrist images, from MuJoCo's segmentation render - 0 table / background, 1.. the objects
        (``OBJECTS`` order), then the plate, the bowl and the gripper (``PATCH_CLASSES``). An object
        covering a fifth of a patch names it (objects are 1-2 patches across in the primary view).
        Simulator truth for the grounding losses of ``sim train``, never a model input."""
        if self._renderer is None:
            raise RuntimeError("patch labels need a rendering environment")
        grid = self.image_size // patch
        size = grid * patch
        if self._patch_cells is None or len(self._patch_cells) != size * size:
            rows, cols = np.divmod(np.arange(size * size), size)
            self._patch_cells = ((rows // patch) * grid + cols // patch) * len(PATCH_CLASSES)   # pixel -> patch
        cell = self._patch_cells
        labels = np.zeros((2, grid * grid), np.uint8)
        self._renderer.enable_segmentation_rendering()
        try:
            for camera, name in enumerate(("primary", "wrist")):
                self._renderer.update_scene(self.data, name)
                seg = self._renderer.render()[:size, :size, 0].reshape(-1)
                classes = np.where(seg >= 0, self._geom_class[np.clip(seg, 0, None)], 0)
                counts = np.bincount(cell + classes, minlength=grid * grid * len(PATCH_CLASSES))
                labels[camera] = (counts.reshape(grid * grid, -1) * PATCH_CLASS_WEIGHT).argmax(-1)
        finally:
            self._renderer.disable_segmentation_rendering()
        return labels

    def proprio(self) -> np.ndarray:
        d = self.data
        g = self._body["gripper"]
        return np.concatenate([d.xpos[g], quat_to_axis_angle(d.xquat[g]),
                               [d.qpos[f] for f in self._fingers]]).astype(np.float64)

    def success(self) -> bool:
        """The target object on the plate / in the bowl, low, still, and let go."""
        task = self.task
        if task is None:
            return False
        obj = self.object_position(task.target)
        place = self.receptacle_position(task.receptacle)
        radius = PLATE_RADIUS - 0.02 if task.receptacle == "plate" else BOWL_RADIUS - 0.015
        a = self._qvel[task.target]
        speed = float(np.linalg.norm(self.data.qvel[a:a + 3]))
        return bool(np.linalg.norm(obj[:2] - place[:2]) < radius and obj[2] < 0.07 and speed < 0.05
                    and self.finger_opening() > 1.5 * FINGER_OPEN and self._grip < 0)

    # ---- helpers -------------------------------------------------------------------------------------
    def _camera(self, name: str) -> np.ndarray:
        if self._renderer is None:
            return np.zeros((self.image_size, self.image_size, 3), np.uint8)
        self._renderer.update_scene(self.data, name)
        return self._renderer.render().copy()

    def _observation(self) -> dict:
        return {"primary": self._camera("primary"), "wrist": self._camera("wrist"), "proprio": self.proprio()}

    def _info(self) -> dict:
        return {"instruction": self.task.instruction if self.task else "", "success": self.success(),
                "steps": self.steps}
