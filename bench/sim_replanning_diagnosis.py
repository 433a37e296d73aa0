"""Why pruning that holds at one query per chunk fails when re-planning: per query, the pruning
state and how the pruned chunk departs from the unpruned one on the same observation.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sim_replanning_diagnosis.py --seeds 100000:100020 \
        --out bench/results/sim_replanning_diagnosis_validation_cpu.json

For each query rate (every 8 actions, every 4) and seed, the model's default pruning drives the
episode in process (lockstep); at every query the unpruned policy is asked on the same
observation. Per query: the gripper's distance to the target, fine mode, kept tokens, the history
rule's T and the compared frame's age, the arm speed v, the prior's recall, the mean |difference|
of the executed actions (translation, gripper; normalized units) and where in each chunk the
gripper is first commanded to close. The JSON has every query and the summary by rate and phase.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from specprune_ros.common.device import cpu_name
from specprune_ros.common.jsonout import finite
from specprune_ros.common.methods import parse_seeds
from specprune_ros.config import model_config
from specprune_ros.policy import load_model, make_policy
from specprune_ros.sim.env import ACTION_DT, TabletopEnv
from specprune_ros.sim.rollout import run_policy_episode

NEAR_M = 0.05            # the grasp phase: the gripper this near the target


def first_close(actions: np.ndarray) -> int:
    """Index of the chunk's first closing gripper command (-1: none)."""
    closing = actions[:, 6] > 0
    return int(np.argmax(closing)) if closing.any() else -1


class _Shadowed:
    """The pruned policy that drives the episode, asking the unpruned one on every observation
    it is shown and recording both answers with the scene at that moment."""

    def __init__(self, pruned, dense, env, execute: int, rows: list[dict]) -> None:
        self.pruned, self.dense, self.env, self.execute, self.rows = pruned, dense, env, execute, rows

    def reset(self) -> None:
        self.pruned.reset()
        self.dense.reset()

    def step(self, observation):
        out, ref = self.pruned.step(observation), self.dense.step(observation)
        diff = np.abs(out.actions_normalized[:self.execute] - ref.actions_normalized[:self.execute])
        s, env = out.stats, self.env
        self.rows.append({"execute": self.execute, "period": env.steps,
                          "distance_m": float(np.linalg.norm(env.gripper_position()
                                                             - env.object_position(env.task.target))),
                          "fine_mode": s.fine_mode, "kept_tokens": s.vision_tokens_kept,
                          "history_frames": s.history_frames, "history_age_s": s.history_age_s,
                          "translation_speed": s.translation_speed, "recall": s.global_recall,
                          "translation_difference": float(diff[:, :3].mean()),
                          "gripper_difference": float(diff[:, 6].mean()),
                          "first_close_pruned": first_close(out.actions),
                          "first_close_unpruned": first_close(ref.actions)})
        return out


def run(model: str, seeds: list[int], execute: int) -> list[dict]:
    config = model_config(model).replace(model_path=model, control_rate_hz=1 / (execute * ACTION_DT))
    loaded, env, rows = load_model(config), TabletopEnv(), []
    try:
        for seed in seeds:
            start = len(rows)
            policy = _Shadowed(make_policy(config, loaded),
                               make_policy(config.replace(**{"pruning.enabled": False}), loaded), env, execute, rows)
            result = run_policy_episode(env, policy, seed, execute=execute)
            for row in rows[start:]:
                row["seed"] = seed
            rows[-1]["episode_success"] = result.success
    finally:
        env.close()
    return rows


def summarize(rows: list[dict]) -> dict:
    def mean(key, sel):
        values = [r[key] for r in sel if r[key] == r[key]]          # NaN recall on unpruned fallbacks
        return float(np.mean(values)) if values else float("nan")

    out = {}
    for execute in sorted({r["execute"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["execute"] == execute]
        episodes = [r for r in mine if "episode_success" in r]
        out[f"every {execute}"] = {"episodes": len(episodes),
                                   "successes": sum(r["episode_success"] for r in episodes)}
        for phase, sel in (("far", [r for r in mine if r["distance_m"] > NEAR_M]),
                           ("near", [r for r in mine if r["distance_m"] <= NEAR_M])):
            both = [r for r in sel if r["first_close_pruned"] > 0 and r["first_close_unpruned"] > 0]
            out[f"every {execute}"][phase] = {
                "queries": len(sel), **{k: mean(k, sel) for k in (
                    "fine_mode", "kept_tokens", "history_frames", "history_age_s", "translation_speed", "recall",
                    "translation_difference", "gripper_difference")},
                # queries where both close later in the chunk: whose close comes later
                "close_later_in_chunk_queries": len(both),
                "first_close_pruned_mean": mean("first_close_pruned", both),
                "first_close_unpruned_mean": mean("first_close_unpruned", both),
                "pruned_closes_later": sum(r["first_close_pruned"] > r["first_close_unpruned"] for r in both),
                "pruned_closes_earlier": sum(r["first_close_pruned"] < r["first_close_unpruned"] for r in both),
                "close_beyond_executed": sum(r["first_close_unpruned"] >= execute for r in both)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/sim-tabletop")
    parser.add_argument("--seeds", default="100000:100020")
    parser.add_argument("--out", default="bench/results/sim_replanning_diagnosis_validation_cpu.json")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    rows = [row for execute in (8, 4) for row in run(args.model, seeds, execute)]
    result = {"what": __doc__.splitlines()[0], "model": args.model, "seeds": [seeds[0], seeds[-1]],
              "device": cpu_name(), "near_m": NEAR_M, "summary": summarize(rows), "queries": rows}
    Path(args.out).write_text(json.dumps(finite(result), indent=1, allow_nan=False))
    print(json.dumps(finite(result["summary"]), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
