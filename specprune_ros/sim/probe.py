"""Which inputs move a trained policy's first chunk (``specprune sim probe``).

A policy that grasps what it is asked for must move differently when the gripper starts elsewhere
(the proprio) and when the objects lie elsewhere (the images). At the first query of each probed
episode this compares the chunk's summed xy motion on the observation as it is with

* the proprio moved by ``shift`` metres along +-x and +-y (the expert's motion would change by
  ``shift``: it goes to the object from wherever it starts), and
* every other probed episode's camera images, with this episode's instruction and proprio (the
  expert's motion would change by how far the named object lies from where it lies here), and
* the named object itself moved ``object_shift`` metres along +-x and +-y in the simulator and
  rendered again, against what the noise-free scripted expert's first 8 actions change by on the
  same moved scenes: their ratio (``object_follow``) says how much of the object's move the
  policy follows (1: as much as the expert).

``layout_need`` runs the scripted expert aiming where the layout puts the named object on average
instead of where it lies: how often a policy blind to the target can still succeed.

A model trained on the ``fixed`` layout showed < 1 mm of change for a 5 cm proprio shift - it
played one first chunk per instruction, whatever the start - which is why its success fell from
72 % (home start) to 48 % (jittered start). Unpruned, always: the question is what the model
uses, not what pruning leaves it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..config import Config
from ..observation import Observation
from .env import DEFAULT_LAYOUT, TabletopEnv
from .expert import AIMS, EXPERT_SEED_OFFSET, ScriptedExpert, run_expert_episode
from .rollout import CHUNK_EXECUTED
from .scene import OBJECTS

SHIFT_M = 0.05
OBJECT_SHIFT_M = 0.015


def first_chunk_sensitivity(config: Config, seeds: Sequence[int], layout: str = DEFAULT_LAYOUT,
                            shift: float = SHIFT_M, progress: Callable[[int, int], None] | None = None,
                            object_shift: float = OBJECT_SHIFT_M) -> dict[str, Any]:
    """Mean changes (mm) of the first chunk's xy motion under moved proprio and swapped images,
    next to what the expert's motion would change by. Needs two seeds or more (images are swapped
    between them)."""
    from ..policy import SpecPrunePolicy, load_model

    if len(seeds) < 2:
        raise ValueError(f"the probe swaps images between episodes: it needs at least 2 seeds, got {len(seeds)}")
    config = config.replace(**{"pruning.enabled": False})
    loaded = load_model(config)
    policy = SpecPrunePolicy(loaded, config)

    def motion(images: list[np.ndarray], proprio: np.ndarray, instruction: str) -> np.ndarray:
        policy.reset()                                     # every query a first one: no history, step 0
        return policy.step(Observation(images, proprio, instruction)).actions[:, :2].sum(0)

    def expert_motion(seed: int, offset: tuple[float, float]) -> np.ndarray:
        """The noise-free expert's first chunk (summed xy) with the named object moved by ``offset``."""
        env.reset(seed=seed)
        env.move_object(env.task.target, offset)
        expert = ScriptedExpert(env, seed=seed + EXPERT_SEED_OFFSET, noise=0.0)
        total = np.zeros(2)
        for _ in range(CHUNK_EXECUTED):
            action = expert.act()
            total += action[:2]
            env.step(action)
        return total

    env = TabletopEnv(layout=layout)
    try:
        scenes = []
        for seed in seeds:
            obs, info = env.reset(seed=seed)
            where = {name: env.object_position(name)[:2] for name in OBJECTS}
            scenes.append((obs, info["instruction"], env.task.target, where))
        proprio_change, image_change, target_change, object_change, expert_change = [], [], [], [], []
        for i, (seed, (obs, instruction, target, where)) in enumerate(zip(seeds, scenes)):
            images = [obs["primary"], obs["wrist"]]
            base = motion(images, obs["proprio"], instruction)
            for offset in ((shift, 0.0), (-shift, 0.0), (0.0, shift), (0.0, -shift)):
                moved = obs["proprio"].copy()
                moved[:2] += offset
                proprio_change.append(np.linalg.norm(motion(images, moved, instruction) - base))
            for j, (other, _, _, other_where) in enumerate(scenes):
                if j != i:
                    swapped = motion([other["primary"], other["wrist"]], obs["proprio"], instruction)
                    image_change.append(np.linalg.norm(swapped - base))
                    target_change.append(np.linalg.norm(other_where[target] - where[target]))
            # against the scene re-rendered unmoved: a render after mj_forward, as every moved one
            env.reset(seed=seed)
            unmoved = env.move_object(target, (0.0, 0.0))
            rendered_base = motion([unmoved["primary"], unmoved["wrist"]], obs["proprio"], instruction)
            expert_base = expert_motion(seed, (0.0, 0.0))
            for offset in ((object_shift, 0.0), (-object_shift, 0.0), (0.0, object_shift), (0.0, -object_shift)):
                env.reset(seed=seed)
                seen = env.move_object(target, offset)
                object_change.append(np.linalg.norm(motion([seen["primary"], seen["wrist"]], obs["proprio"],
                                                           instruction) - rendered_base))
                expert_change.append(np.linalg.norm(expert_motion(seed, offset) - expert_base))
            if progress:
                progress(i + 1, len(scenes))
    finally:
        env.close()
    return {"model": config.node.model_path, "layout": layout, "seeds": list(seeds), "shift_mm": 1000 * shift,
            "proprio_change_mm": 1000 * float(np.mean(proprio_change)),
            "image_change_mm": 1000 * float(np.mean(image_change)),
            "target_change_mm": 1000 * float(np.mean(target_change)),
            "object_shift_mm": 1000 * object_shift,
            "object_change_mm": 1000 * float(np.mean(object_change)),
            "expert_object_change_mm": 1000 * float(np.mean(expert_change)),
            "object_follow": float(np.mean(object_change) / max(np.mean(expert_change), 1e-9))}


def layout_need(seeds: Sequence[int], layout: str = DEFAULT_LAYOUT) -> dict[str, Any]:
    """The scripted expert's success aiming at the named object, and aiming where the layout puts
    it on average (same seeds, its own noise): how much the layout needs the images."""
    env = TabletopEnv(layout=layout, render=False)
    try:
        success = {aim: sum(run_expert_episode(env, seed, aim=aim)["success"] for seed in seeds) for aim in AIMS}
    finally:
        env.close()
    return {"layout": layout, "seeds": list(seeds), "episodes": len(seeds),
            **{f"{aim.replace('-', '_')}_successes": n for aim, n in success.items()}}
