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

``attention_on_target`` follows closed-loop episodes and says where the unpruned model's scoring
queries put their attention at the layers the pruning rules read: the share of the vision
attention on the named object's patches against the share of the patches they are (1x: no
preference; a model that found its target puts many times its area there).

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
from .env import DEFAULT_LAYOUT, PATCH_CLASSES, TabletopEnv
from .expert import AIMS, EXPERT_SEED_OFFSET, ScriptedExpert, run_expert_episode
from .rollout import CHUNK_EXECUTED, run_policy_episode
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


def rule_layers(config: Config) -> list[int]:
    """The LLM layers whose text-to-image attention a rule reads: SpecPrune's local and global
    layers and FastV's layer."""
    p = config.pruning
    return sorted({*range(1, p.local_layers + 1), *p.global_layers, p.fastv_layer})


class _Looking:
    """A policy that, before each step, records the unpruned attention at ``layers`` and what lies
    under each patch (the environment is at the observation's state when the policy is asked)."""

    def __init__(self, policy: Any, env: TabletopEnv, layers: list[int]) -> None:
        self.policy, self.env, self.layers, self.queries = policy, env, layers, []

    def reset(self) -> None:
        self.policy.reset()

    def step(self, obs: Observation):
        maps = self.policy.attention(obs, self.layers)                  # (layers, cameras, patches)
        labels = self.env.patch_labels()
        named = [PATCH_CLASSES.index(self.env.task.target), PATCH_CLASSES.index(self.env.task.receptacle)]
        self.queries.append((maps, labels, named))
        return self.policy.step(obs)


def _shares(queries: list[tuple[np.ndarray, np.ndarray, list[int]]], layer: int) -> dict[str, float]:
    """Mean over queries of the attention share and the patch share of the target, the receptacle
    and the scene camera; ``*_lift``: attention share / patch share."""
    out: dict[str, list[float]] = {}
    for maps, labels, (target, receptacle) in queries:
        attention = maps[layer] / maps[layer].sum()
        for name, where in (("target", labels == target), ("receptacle", labels == receptacle)):
            out.setdefault(f"{name}_attention", []).append(float(attention[where].sum()))
            out.setdefault(f"{name}_patches", []).append(float(where.mean()))
        out.setdefault("primary_attention", []).append(float(attention[0].sum()))
    means = {key: float(np.mean(values)) for key, values in out.items()}
    for name in ("target", "receptacle"):
        area = means[f"{name}_patches"]
        means[f"{name}_lift"] = means[f"{name}_attention"] / area if area > 0 else float("nan")
    return means


def attention_on_target(config: Config, seeds: Sequence[int], layout: str = DEFAULT_LAYOUT,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Per layer a rule reads: the unpruned model's vision attention on the named object and the
    named receptacle against their share of the patches, over every query of closed-loop episodes
    (``all``) and over the episodes' first queries (``first``: the scene before the arm moves)."""
    from ..policy import SpecPrunePolicy, load_model

    config = config.replace(**{"pruning.enabled": False})
    layers = rule_layers(config)
    policy = SpecPrunePolicy(load_model(config), config)
    env = TabletopEnv(layout=layout)
    firsts, queries = [], []
    try:
        for i, seed in enumerate(seeds):
            looking = _Looking(policy, env, layers)
            run_policy_episode(env, looking, seed)
            firsts.append(looking.queries[0])
            queries += looking.queries
            if progress:
                progress(i + 1, len(seeds))
    finally:
        env.close()
    return {"layout": layout, "seeds": list(seeds), "queries": len(queries), "layers": layers,
            "per_layer": {str(n): {"all": _shares(queries, k), "first": _shares(firsts, k)}
                          for k, n in enumerate(layers)}}
