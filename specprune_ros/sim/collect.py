"""Expert demonstrations on disk, and the environment's speed.

Format of a demonstration directory (``specprune sim collect OUT --episodes N``):

    OUT/index.json                  {"format": "specprune-sim-demos/1", "split": "train", "episodes":
                                     [{"file", "seed", "instruction", "steps"}, ...], "attempted", "failed"}
    OUT/episode_<seed>.npz          primary (T,224,224,3) uint8, wrist (T,224,224,3) uint8,
                                    proprio (T,8) float64, actions (T,7) float64, instruction (str), seed,
                                    privileged (T,12) float64, colors (4,) str, patch_labels
                                    (T,2,256) uint8 (the last three optional when reading)

Row t holds the observation the expert saw and the action it took at step t (action units as the
environment takes them: metres / radians per step, gripper +1 close / -1 open). ``privileged`` row t
is the simulator's xy of every object (``scene.OBJECTS`` order), the plate and the bowl at step t,
and ``colors`` each object's colour name; ``patch_labels`` row t says what lies under each image
patch of both cameras (``env.TabletopEnv.patch_labels``): never model inputs, training targets of
``sim train``'s auxiliary and grounding losses (``train.Trainer``). Only successful
episodes are kept. Collection resumes: episodes already in the index are not collected again.

With ``--policy MODEL`` (DAgger), a trained model drives each episode and the expert labels every
state it visits (``rollout.run_labeled_episode``): row t is the model's observation and the
expert's action there. Every episode is kept (a failed one holds the recoveries the model lacks);
``index.json`` names the model under ``"driver"`` (``"expert"`` otherwise). Train on several
directories at once: ``specprune sim train demos dagger1 ...``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .env import DEFAULT_LAYOUT, RECEPTACLES, TabletopEnv, seed_range
from .expert import run_expert_episode
from .scene import OBJECTS

FORMAT = "specprune-sim-demos/1"
PATCHES_PER_IMAGE = 256                  # 16 x 16 patches of 14 px at 224 px
ARRAYS = ("primary", "wrist", "proprio", "actions")
PRIVILEGED = ("privileged", "colors", "patch_labels")    # optional: older demonstration directories lack them


class DemoError(ValueError):
    """A demonstration directory or file that cannot be used as asked."""


def collect(out: str | Path, episodes: int, split: str = "train", start: int = 0,
            progress: Callable[[int, int], None] | None = None, policy: str | None = None,
            layout: str = DEFAULT_LAYOUT) -> dict[str, Any]:
    """``policy``: a checkpoint that drives the episodes while the expert labels them (DAgger).
    ``layout``: the task's object layout (``env.LAYOUTS``), kept in the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    driver = policy or "expert"
    index = read_index(out) if index_path.exists() else {"format": FORMAT, "split": split, "driver": driver,
                                                          "layout": layout, "episodes": [], "attempted": 0,
                                                          "failed": []}
    if index.get("layout", "fixed") != layout:
        raise DemoError(f"{index_path}: holds episodes of the {index.get('layout', 'fixed')} layout, "
                        f"asked for {layout}")
    if index["split"] != split:
        raise DemoError(f"{index_path}: holds {index['split']} episodes, asked for {split}")
    if index.get("driver", "expert") != driver:
        raise DemoError(f"{index_path}: holds episodes driven by {index.get('driver', 'expert')}, asked for {driver}")
    done = {e["seed"] for e in index["episodes"]} | set(index["failed"])
    seeds = (s for s in seed_range(split)[start:] if s not in done)
    env = TabletopEnv(layout=layout)
    run = _labeled_runner(policy) if policy else (lambda env, seed: run_expert_episode(env, seed, record=True))
    try:
        while len(index["episodes"]) < episodes:
            seed = next(seeds)
            result = run(env, seed)
            index["attempted"] += 1
            if result["success"] or policy:
                name = f"episode_{seed}.npz"
                colors = np.array([env.task.colors[name] for name in OBJECTS])
                np.savez_compressed(out / name, **{k: result[k] for k in ARRAYS}, privileged=result["privileged"],
                                    colors=colors, patch_labels=result["patch_labels"],
                                    instruction=np.array(result["instruction"]), seed=np.array(seed))
                index["episodes"].append({"file": name, "seed": seed, "instruction": result["instruction"],
                                          "steps": int(result["steps"]), "success": bool(result["success"])})
            else:
                index["failed"].append(seed)
            index_path.write_text(json.dumps(index, indent=1))     # after every episode: resumable
            if progress:
                progress(len(index["episodes"]), episodes)
    finally:
        env.close()
    return index


def _labeled_runner(model: str) -> Callable[[TabletopEnv, int], dict[str, Any]]:
    """Episodes driven by ``model`` (unpruned, CPU or GPU as the config resolves) and labeled by the expert."""
    from ..config import Config
    from ..policy import load_model, make_policy
    from .rollout import run_labeled_episode

    config = Config().replace(**{"model_path": model, "pruning.enabled": False})
    loaded = load_model(config)
    return lambda env, seed: run_labeled_episode(env, make_policy(config, loaded), seed)


def read_index(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise DemoError(f"{path}: not found (make demonstrations with `specprune sim collect`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DemoError(f"{path}: unreadable ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DemoError(f"{path}: not a {FORMAT} index")
    return index


def load_episode(directory: str | Path, entry: dict[str, Any]) -> dict[str, Any]:
    """One demonstration, checked: every array present, the same length, the right shapes."""
    path = Path(directory) / entry["file"]
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = {k: data[k] for k in (*ARRAYS, "instruction")}
            episode.update({k: data[k] if k in data.files else None for k in PRIVILEGED})
    except FileNotFoundError:
        raise DemoError(f"{path}: listed in index.json but missing") from None
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise DemoError(f"{path}: corrupt demonstration ({type(exc).__name__}: {exc})") from None
    steps = len(episode["actions"])
    shapes = {"primary": (steps, 224, 224, 3), "wrist": (steps, 224, 224, 3), "proprio": (steps, 8),
              "actions": (steps, 7)}
    if episode["privileged"] is not None:
        shapes.update(privileged=(steps, 2 * (len(OBJECTS) + len(RECEPTACLES))), colors=(len(OBJECTS),))
    if episode["patch_labels"] is not None:
        shapes.update(patch_labels=(steps, 2, PATCHES_PER_IMAGE))
    for key, shape in shapes.items():
        if episode[key].shape != shape:
            raise DemoError(f"{path}: {key} has shape {episode[key].shape}, expected {shape}")
    episode["instruction"] = str(episode["instruction"])
    if episode["colors"] is not None:
        episode["colors"] = [str(c) for c in episode["colors"]]
    return episode


def bench(steps: int = 200, seed: int = 0) -> dict[str, Any]:
    """Environment steps per second with both cameras rendered, and physics alone."""
    rng = np.random.default_rng(seed)
    result = {}
    for label, render in (("with_cameras", True), ("physics_only", False)):
        env = TabletopEnv(render=render, max_steps=10**9)
        env.reset(seed=seed)
        start = time.perf_counter()
        for _ in range(steps):
            env.step(np.r_[rng.uniform(-0.01, 0.01, 3), 0, 0, 0, rng.choice([-1.0, 1.0])])
        result[f"steps_per_s_{label}"] = steps / (time.perf_counter() - start)
        env.close()
    result.update({"steps": steps, "image_size": 224, "cameras": 2})
    return result
